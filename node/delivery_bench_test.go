package node_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coattail/coattail/datastore"
	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// Durable delivery benchmarks (issue 5, "Benchmarks"): publish → subscriber
// ack throughput between real nodes on loopback, with pebble datastores on
// both sides, measured beside a raw libp2p stream between the same hosts in
// the same run. Run them with `make bench` or
//
//	go test -run '^$' -bench 'Delivery' -benchtime 2x ./node/
//
// -benchtime Nx sets how many times deliveryBatch messages each case
// publishes; results are recorded in docs/PERFORMANCE.md.

const (
	// deliveryBatch is the largest number of messages per PublishBatch
	// call and per write of the raw baseline; see batchFor.
	deliveryBatch = 256
	// deliveryBatchBytes bounds a batch in payload bytes, so a 64 KiB
	// publication is published 16 at a time rather than 16 MiB per call.
	deliveryBatchBytes = 1 << 20
	// deliveryWindow is how many payload bytes a paced publisher keeps
	// published but not yet processed by every subscriber, as an
	// application bounding its outstanding publications would (and as a
	// raw stream's flow control does for the baseline).
	deliveryWindow = 8 << 20
	// deliveryPublishers is how many goroutines of the publishing program
	// call PublishBatch at once, so that group commit has something to
	// merge, as an application publishing from several handlers would.
	deliveryPublishers = 16
	// deliveryRawProto is the baseline: a bare libp2p protocol registered
	// for the duration of a benchmark.
	deliveryRawProto = protocol.ID("/coattail-bench/raw/1.0.0")
	deliverySubject  = "bench.delivery"
	deliveryTimeout  = 10 * time.Minute
)

// withDurableStore gives the node a pebble datastore in a temporary
// directory instead of the in-memory one: delivery is only durable on disk.
func withDurableStore(tb testing.TB) nodeOption {
	return func(o *node.Options) {
		db, err := datastore.Open(tb.TempDir())
		if err != nil {
			tb.Fatalf("open datastore: %v", err)
		}
		o.DB = db
	}
}

// unlimitedRate lifts the per-peer rate limit, which is about hostile peers,
// not throughput.
var unlimitedRate = withLimits(func(l *node.LimitsConfig) { l.RateLimit = 1e9; l.RateBurst = 1 << 30 })

// deliveryCount is an in-process receiver that counts publications and
// closes done when it has seen target of them.
type deliveryCount struct {
	target int64
	n      atomic.Int64
	done   chan struct{}
}

func (c *deliveryCount) handler(context.Context, json.RawMessage) (json.RawMessage, error) {
	if c.n.Add(1) == c.target {
		close(c.done)
	}
	return nil, nil
}

// deliveryPayload returns a JSON string of exactly size bytes.
func deliveryPayload(size int) json.RawMessage {
	return json.RawMessage(`"` + strings.Repeat("x", size-2) + `"`)
}

// deliveryCluster is a publisher and its subscriber nodes.
type deliveryCluster struct {
	pub  *node.Node
	subs []*node.Node
}

// newDeliveryCluster starts a publisher and n subscribers on loopback,
// each subscriber subscribed to bench.> with receiver.
func newDeliveryCluster(b *testing.B, n int, receiver string, setup func(sub *node.Node)) deliveryCluster {
	b.Helper()
	c := deliveryCluster{pub: newTestNode(b, withQuietLog(), unlimitedRate, withDurableStore(b))}
	for range n {
		sub := newTestNode(b, withQuietLog(), unlimitedRate, withDurableStore(b))
		setup(sub)
		pid, _ := connectPeers(b, c.pub, sub, localapi.IssueRequest{Subscribe: []string{"bench.>"}})
		if _, err := sub.Subscribe(testCtx(b), localapi.SubscribeRequest{Peer: pid, Pattern: "bench.>", Receiver: receiver}); err != nil {
			b.Fatalf("Subscribe: %v", err)
		}
		c.subs = append(c.subs, sub)
	}
	return c
}

// batchFor returns the number of messages of size bytes per batch.
func batchFor(size int) int {
	return max(1, min(deliveryBatch, deliveryBatchBytes/size))
}

// publishAll publishes total messages of payload in batches of
// batchFor(len(payload)) from deliveryPublishers goroutines. If processed
// is not nil, a publisher waits before each batch until the batch would
// leave at most window messages published but not yet processed.
func publishAll(b *testing.B, pub *node.Node, total int, payload json.RawMessage, window int64, processed func() int64) {
	b.Helper()
	size := int64(batchFor(len(payload)))
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, deliveryPublishers)
	for range deliveryPublishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msgs := make([]node.Message, size)
			for i := range msgs {
				msgs[i] = node.Message{Subject: deliverySubject, Data: payload}
			}
			for {
				end := next.Add(size)
				start := end - size
				if start >= int64(total) {
					return
				}
				end = min(end, int64(total))
				for processed != nil && end-processed() > window {
					time.Sleep(100 * time.Microsecond)
				}
				if _, err := pub.PublishBatch(context.Background(), msgs[:end-start]); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatalf("PublishBatch: %v", err)
	}
}

// rawStreamRate sends total length-prefixed payloads from one host to each
// of the others, all at once, over one libp2p stream each, a batch per
// write, and returns messages per second per destination until every
// reader has counted them all: the same payloads between the same hosts as
// the durable case, with nothing stored, routed or acknowledged.
func rawStreamRate(b *testing.B, from *node.Node, to []*node.Node, total int, payload []byte) float64 {
	b.Helper()
	counted := make(chan error, len(to))
	for _, dst := range to {
		dst.Host().SetStreamHandler(deliveryRawProto, func(s network.Stream) {
			defer s.Close()
			br := bufio.NewReaderSize(s, 256<<10)
			buf := make([]byte, len(payload))
			for i := 0; i < total; i++ {
				n, err := binary.ReadUvarint(br)
				if err == nil && n != uint64(len(payload)) {
					err = fmt.Errorf("raw frame of %d bytes, want %d", n, len(payload))
				}
				if err == nil {
					_, err = io.ReadFull(br, buf)
				}
				if err != nil {
					counted <- err
					_ = s.Reset()
					return
				}
			}
			_, err := s.Write([]byte{1})
			counted <- err
		})
		defer dst.Host().RemoveStreamHandler(deliveryRawProto)
	}

	frame := append(binary.AppendUvarint(nil, uint64(len(payload))), payload...)
	per := batchFor(len(payload))
	batch := make([]byte, 0, len(frame)*per)
	for range per {
		batch = append(batch, frame...)
	}
	ctx := testCtx(b)
	errs := make(chan error, len(to))
	start := time.Now()
	for _, dst := range to {
		go func() {
			errs <- func() error {
				s, err := from.Host().NewStream(ctx, dst.ID(), deliveryRawProto)
				if err != nil {
					return fmt.Errorf("raw stream: %w", err)
				}
				defer s.Close()
				for sent := 0; sent < total; sent += per {
					n := min(per, total-sent)
					if _, err := s.Write(batch[:n*len(frame)]); err != nil {
						return fmt.Errorf("raw write: %w", err)
					}
				}
				var ack [1]byte
				if _, err := io.ReadFull(s, ack[:]); err != nil {
					return fmt.Errorf("raw ack: %w", err)
				}
				return nil
			}()
		}()
	}
	for range to {
		if err := <-counted; err != nil {
			b.Fatalf("raw reader: %v", err)
		}
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	return float64(total) / time.Since(start).Seconds()
}

// diskRate writes total payloads to a file in the benchmark's temporary
// directory, a batch per write and one fdatasync per deliveryPublishers
// batches (what one group commit of the paced publisher covers), and
// returns messages per second: the most any durable queue on this disk
// can accept, measured in the same run as the delivery it bounds.
func diskRate(b *testing.B, total int, payload []byte) float64 {
	b.Helper()
	f, err := os.Create(filepath.Join(b.TempDir(), "disk-baseline"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	per := batchFor(len(payload))
	buf := make([]byte, 0, per*len(payload))
	for range per {
		buf = append(buf, payload...)
	}
	start := time.Now()
	for sent, writes := 0, 0; sent < total; sent += per {
		n := min(per, total-sent)
		if _, err := f.Write(buf[:n*len(payload)]); err != nil {
			b.Fatal(err)
		}
		if writes++; writes%deliveryPublishers == 0 || sent+n >= total {
			if err := syscall.Fdatasync(int(f.Fd())); err != nil {
				b.Fatal(err)
			}
		}
	}
	return float64(total) / time.Since(start).Seconds()
}

// BenchmarkDelivery measures durable publish → subscriber-ack throughput
// of 128 B and 64 KiB publications from one publisher node to 1 and to 10
// subscriber nodes, each with an in-process Go receiver; it publishes
// b.N × deliveryBatch messages. In the same run it measures a raw libp2p
// stream carrying the same payloads with the same batching from the
// publisher host to every subscriber host at once, and reports the ratio
// of the two rates per subscriber host as x-raw. It also measures how fast
// this disk takes the same bytes with the same syncs (diskRate): a durable
// queue cannot accept publications faster than that, and x-disk is the
// ratio to it.
//
// Two modes: "burst" publishes everything as fast as the publisher
// accepts it, so the subscribers fall behind and the backlog is read back
// from the datastore (catching up after an outage looks like this);
// "paced" keeps at most deliveryWindow bytes published but not yet
// processed, the steady state of subscribers that keep up, which is also
// what the raw stream's flow control does to the baseline.
func BenchmarkDelivery(b *testing.B) {
	var results []deliveryResult
	for _, mode := range []string{"paced", "burst"} {
		for _, size := range []int{128, 64 << 10} {
			for _, subs := range []int{1, 10} {
				name := fmt.Sprintf("%s/size=%d/subs=%d", mode, size, subs)
				b.Run(name, func(b *testing.B) {
					r := benchDelivery(b, mode == "paced", size, subs)
					r.name = name
					if len(results) > 0 && results[len(results)-1].name == name {
						results[len(results)-1] = r // b.Run calls again with a larger b.N
					} else {
						results = append(results, r)
					}
				})
			}
		}
	}
	b.Logf("durable delivery, one publisher node, batches of min(%d messages, %d KiB), %d publishing goroutines, paced window %d MiB; rates per subscriber host", deliveryBatch, deliveryBatchBytes>>10, deliveryPublishers, deliveryWindow>>20)
	b.Logf("%-28s %12s %10s %12s %10s %7s %11s %7s", "case", "msgs/s", "MB/s", "raw msgs/s", "raw MB/s", "x-raw", "disk MB/s", "x-disk")
	for _, r := range results {
		b.Logf("%-28s %12.0f %10.1f %12.0f %10.1f %7.2f %11.1f %7.2f", r.name, r.rate, r.mbs, r.raw, r.rMB, r.rate/r.raw, r.disk*float64(r.mbs/r.rate), r.rate/r.disk)
	}
}

// deliveryResult is one case of BenchmarkDelivery.
type deliveryResult = struct {
	name                      string
	rate, raw, disk, mbs, rMB float64
}

// benchDelivery runs one case of BenchmarkDelivery and reports its metrics.
func benchDelivery(b *testing.B, paced bool, size, subs int) deliveryResult {
	total := b.N * deliveryBatch
	counts := make([]*deliveryCount, 0, subs)
	c := newDeliveryCluster(b, subs, "bench.count", func(sub *node.Node) {
		cnt := &deliveryCount{target: int64(total), done: make(chan struct{})}
		counts = append(counts, cnt)
		if err := sub.RegisterReceiver("bench.count", cnt.handler); err != nil {
			b.Fatal(err)
		}
	})
	payload := deliveryPayload(size)
	var processed func() int64
	window := max(int64(deliveryPublishers*batchFor(size)), deliveryWindow/int64(size))
	if paced {
		processed = func() int64 {
			least := int64(total)
			for _, cnt := range counts {
				least = min(least, cnt.n.Load())
			}
			return least
		}
	}

	b.ResetTimer()
	cpu0 := cpuTime(b)
	start := time.Now()
	publishAll(b, c.pub, total, payload, window, processed)
	timeout := time.NewTimer(deliveryTimeout)
	defer timeout.Stop()
	for i, cnt := range counts {
		select {
		case <-cnt.done:
		case <-timeout.C:
			b.Fatalf("subscriber %d processed %d of %d publications", i, cnt.n.Load(), total)
		}
	}
	elapsed := time.Since(start)
	cores := (cpuTime(b) - cpu0).Seconds() / elapsed.Seconds()
	b.StopTimer()

	raw := rawStreamRate(b, c.pub, c.subs, total, payload)
	disk := diskRate(b, total, payload)
	rate := float64(total) / elapsed.Seconds()
	r := deliveryResult{rate: rate, raw: raw, disk: disk, mbs: rate * float64(size) / 1e6, rMB: raw * float64(size) / 1e6}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(r.rate, "msgs/s")
	b.ReportMetric(r.mbs, "MB/s")
	b.ReportMetric(r.raw, "raw-msgs/s")
	b.ReportMetric(r.rate/r.raw, "x-raw")
	b.ReportMetric(r.disk*float64(size)/1e6, "disk-MB/s")
	b.ReportMetric(r.rate/r.disk, "x-disk")
	b.ReportMetric(cores, "cores")
	return r
}

// cpuTime returns the CPU time (user and system) this process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// deliveryExecReceiver is a minimal executable receiver: it reads its
// input and succeeds.
const deliveryExecReceiver = "#!/bin/sh\ncat >/dev/null\n"

// BenchmarkDeliveryExecReceiver measures durable delivery to an executable
// receiver, which costs one process start per publication (and one
// progress sync each, so a crash re-runs at most the one in flight). b.N
// is the number of publications; they are published in batches.
func BenchmarkDeliveryExecReceiver(b *testing.B) {
	c := newDeliveryCluster(b, 1, "bench.exec", func(sub *node.Node) {
		path := filepath.Join(sub.Dir(), "receivers", "bench.exec")
		if err := os.WriteFile(path, []byte(deliveryExecReceiver), 0o755); err != nil {
			b.Fatal(err)
		}
	})
	payload := deliveryPayload(128)
	b.ResetTimer()
	start := time.Now()
	publishAll(b, c.pub, b.N, payload, 0, nil)
	checkFor(b, deliveryTimeout, time.Millisecond, func() error {
		st := c.pub.Subscribers()
		if len(st) != 1 || st[0].Acked < uint64(b.N) {
			return fmt.Errorf("subscriber acked %+v of %d", st, b.N)
		}
		return nil
	})
	elapsed := time.Since(start)
	b.StopTimer()
	rate := float64(b.N) / elapsed.Seconds()
	b.ReportMetric(rate, "msgs/s")
	b.ReportMetric(float64(elapsed.Microseconds())/float64(b.N), "us/msg")
	b.Logf("executable receiver: %d publications in %v, %.0f msgs/s", b.N, elapsed.Round(time.Millisecond), rate)
}
