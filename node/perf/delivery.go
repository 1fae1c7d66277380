// Package perf measures Coattail against baselines taken in the same run,
// for `coattail bench` and the node benchmarks (`make bench`): durable
// publish → subscriber-ack throughput between real instances on loopback,
// beside a raw libp2p stream between the same hosts, the disk the
// publisher's queue is written to, and a datastore of the kind the queues
// use, alone. It owns nothing else; the instances it
// starts (in this process, or the subscribers in processes of their own:
// ServeSubscriber) live in a temporary directory and are stopped when it
// returns.
package perf

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coattail/coattail/datastore"
	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	ds "github.com/ipfs/go-datastore"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// Defaults and bounds of DeliveryOptions.
const (
	// DefaultWindow is how many payload bytes a paced publisher keeps
	// published but not yet processed by every subscriber.
	DefaultWindow = 8 << 20
	// DefaultPublishers is how many goroutines publish at once, so that
	// group commit has something to merge, as an application publishing
	// from several handlers would.
	DefaultPublishers = 16
	// MaxBatch is the largest number of messages per PublishBatch call
	// and per write of the raw baseline; BatchBytes bounds a batch in
	// payload bytes.
	MaxBatch   = 256
	BatchBytes = 1 << 20
	// MinSize and MaxSize bound the payload: a JSON string of Size bytes,
	// no larger than an instance's default limits.max_payload.
	MinSize = 8
	MaxSize = 1 << 20
	// MaxSubscribers bounds the subscriber instances of one run.
	MaxSubscribers = 64
)

// Receiver kinds.
const (
	ReceiverInProcess  = "inprocess"  // a Go function in the subscriber's process
	ReceiverExecutable = "executable" // a shell script: a process per publication
)

// rawProto is the raw baseline's protocol, registered only during a run.
const rawProto = protocol.ID("/coattail-bench/raw/1.0.0")

const (
	benchSubject  = "bench.delivery"
	benchPattern  = "bench.>"
	benchReceiver = "bench.count"
	execReceiver  = "#!/bin/sh\ncat >/dev/null\n"
)

// ErrOptions is returned for unusable options.
var ErrOptions = errors.New("perf: invalid options")

// DeliveryOptions configures Delivery. Zero values select the defaults.
type DeliveryOptions struct {
	Size        int  // payload bytes (MinSize..MaxSize)
	Subscribers int  // subscriber instances, one subscription each (1..MaxSubscribers)
	Messages    int  // publications
	Paced       bool // keep at most Window bytes outstanding; else publish all at once
	// Window (paced) is the most payload bytes outstanding (default
	// DefaultWindow), or one batch per publishing goroutine when that is
	// more (DeliveryResult.Window says what was kept).
	Window     int
	Publishers int    // publishing goroutines (default DefaultPublishers)
	Transport  string // node.PreferTCP (default) or node.PreferQUIC
	Receiver   string // ReceiverInProcess (default) or ReceiverExecutable
	// Dir is where the instances are created (default: a new temporary
	// directory, removed afterwards). A given Dir is left in place.
	Dir string
	// Timeout bounds the whole run (default 10 minutes).
	Timeout time.Duration
	// CPUProfile, if set, receives a CPU profile (pprof format) of the
	// durable run only, without the baselines (of this process only).
	CPUProfile io.Writer
	// Spawn, if set, runs every subscriber instance in a process of its
	// own, as separate services are: it returns the command of a process
	// that calls ServeSubscriber with its stdin and stdout (the bench
	// starts it and kills it when the run ends). The publisher stays in
	// this process; a paced publisher then counts publications not yet
	// acknowledged (processed and durably recorded) as outstanding. When
	// the run ends the bench closes the process's stdin and waits for it
	// to exit (killing it after 30 s); one that exits before fails the run.
	Spawn func(ctx context.Context) *exec.Cmd

	died context.CancelCauseFunc // set by Delivery: ends the run
}

// DeliveryResult is what Delivery measured. Rates are per subscriber
// host, i.e. per publication.
type DeliveryResult struct {
	Size        int     `json:"size"`
	Subscribers int     `json:"subscribers"`
	Messages    int     `json:"messages"`
	Mode        string  `json:"mode"`                   // paced or burst
	Window      int     `json:"window_bytes,omitempty"` // paced: the most payload bytes kept outstanding
	Batch       int     `json:"batch"`
	Publishers  int     `json:"publishers"`
	Transport   string  `json:"transport"`
	Receiver    string  `json:"receiver"`
	Processes   bool    `json:"processes"` // subscribers in processes of their own (Spawn)
	Seconds     float64 `json:"seconds"`
	MsgsPerSec  float64 `json:"msgs_per_sec"`
	MBPerSec    float64 `json:"mb_per_sec"`
	Cores       float64 `json:"cores"` // CPU the bench's processes used during the durable run
	// Raw: the same payloads and batching over one libp2p stream from the
	// publisher host to every subscriber host at once, nothing stored.
	// It runs once before and once after the durable run (RawRuns); the
	// faster of the two is the baseline, so neither a cold connection nor
	// whatever the durable run leaves behind flatters the ratio.
	RawRuns       [2]float64 `json:"raw_runs_msgs_per_sec"`
	RawMsgsPerSec float64    `json:"raw_msgs_per_sec"`
	RawMBPerSec   float64    `json:"raw_mb_per_sec"`
	XRaw          float64    `json:"x_raw"`
	// Disk: the same bytes written to a file in the publisher's
	// directory, one fdatasync per Publishers batches.
	DiskMBPerSec float64 `json:"disk_mb_per_sec"`
	XDisk        float64 `json:"x_disk"`
	// Store: the same bytes written to a datastore of the kind an instance
	// keeps its queues in (pebble, the same options), in a new directory
	// beside the publisher's, with nothing else running: a batch per key
	// (the fewest keys, pebble's most favourable shape) and per commit,
	// synced by group commit as the queues are, each batch deleted once it
	// is the paced window behind (what acknowledgements do). Durable
	// delivery stores every byte it delivers, so it cannot be faster than
	// this: StoreXRaw, the store's rate over the raw stream's, bounds XRaw
	// for this machine.
	StoreMBPerSec float64 `json:"store_mb_per_sec"`
	XStore        float64 `json:"x_store"`
	StoreXRaw     float64 `json:"store_x_raw"`
	// With Processes, the CPU of the bench's own process alone: it holds
	// the publisher (with the publishing goroutines) and, in the raw runs,
	// only the sending end. What a publisher costs apart from its
	// subscribers, per publication (to every subscriber host), beside what
	// the raw stream's sender costs per message (the lower of its two
	// runs); XRawCPU is the raw cost over the publisher's.
	PublisherCores     float64 `json:"publisher_cores,omitempty"`
	PublisherCPUPerMsg float64 `json:"publisher_cpu_us_per_msg,omitempty"`
	RawSenderCPUPerMsg float64 `json:"raw_sender_cpu_us_per_msg,omitempty"`
	XRawCPU            float64 `json:"x_raw_cpu,omitempty"`
}

// BatchFor returns the number of messages of size bytes per batch.
func BatchFor(size int) int {
	return max(1, min(MaxBatch, BatchBytes/max(size, 1)))
}

// Check reports what Delivery would refuse in o (an error wrapping
// ErrOptions), without running anything.
func (o DeliveryOptions) Check() error { return o.defaults() }

func (o *DeliveryOptions) defaults() error {
	if o.Window == 0 {
		o.Window = DefaultWindow
	}
	if o.Publishers == 0 {
		o.Publishers = DefaultPublishers
	}
	if o.Transport == "" {
		o.Transport = node.PreferTCP
	}
	if o.Receiver == "" {
		o.Receiver = ReceiverInProcess
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Minute
	}
	var errs []error
	bad := func(f string, a ...any) { errs = append(errs, fmt.Errorf(f, a...)) }
	if o.Size < MinSize || o.Size > MaxSize {
		bad("size %d is out of range (%d..%d bytes)", o.Size, MinSize, MaxSize)
	}
	if o.Subscribers < 1 || o.Subscribers > MaxSubscribers {
		bad("subscribers %d is out of range (1..%d)", o.Subscribers, MaxSubscribers)
	}
	if o.Messages < 1 {
		bad("messages %d: need at least 1", o.Messages)
	}
	if o.Window < o.Size {
		bad("window %d is smaller than one message (%d bytes)", o.Window, o.Size)
	}
	if o.Publishers < 1 || o.Publishers > 1024 {
		bad("publishers %d is out of range (1..1024)", o.Publishers)
	}
	if o.Transport != node.PreferTCP && o.Transport != node.PreferQUIC {
		bad("transport %q is not %q or %q", o.Transport, node.PreferTCP, node.PreferQUIC)
	}
	if o.Receiver != ReceiverInProcess && o.Receiver != ReceiverExecutable {
		bad("receiver %q is not %q or %q", o.Receiver, ReceiverInProcess, ReceiverExecutable)
	}
	if o.Timeout < 0 {
		bad("timeout %v is negative", o.Timeout)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrOptions, errors.Join(errs...))
	}
	return nil
}

// counter is the in-process receiver: it counts publications.
type counter struct{ n atomic.Int64 }

// testHookFirstReceived, when set (by tests, before any node starts), runs
// when a counter's receiver gets its first publication.
var testHookFirstReceived func()

func (c *counter) handle(context.Context, json.RawMessage) (json.RawMessage, error) {
	if c.n.Add(1) == 1 && testHookFirstReceived != nil {
		testHookFirstReceived()
	}
	return nil, nil
}

// cluster is a publisher and its subscribers, in this process (subs) or
// in processes of their own (procs).
type cluster struct {
	pub    *node.Node
	subs   []*node.Node
	procs  []*subProcess
	counts []*counter // the in-process receivers of subs
	// acked is the fewest publications any subscription has acknowledged,
	// refreshed by pollAcked when the receivers cannot be counted here.
	acked    atomic.Int64
	stopPoll func()
}

func (c *cluster) close() error {
	if c.stopPoll != nil {
		c.stopPoll()
	}
	var errs []error
	for _, n := range append([]*node.Node{c.pub}, c.subs...) {
		if n != nil {
			errs = append(errs, n.Close())
		}
	}
	for _, p := range c.procs {
		errs = append(errs, p.close())
	}
	return errors.Join(errs...)
}

// subIDs returns the peer ids of the subscriber instances.
func (c *cluster) subIDs() []peer.ID {
	ids := make([]peer.ID, 0, len(c.subs)+len(c.procs))
	for _, n := range c.subs {
		ids = append(ids, n.ID())
	}
	for _, p := range c.procs {
		ids = append(ids, p.id)
	}
	return ids
}

// startNode creates and starts an instance in dir, listening on loopback.
func startNode(ctx context.Context, dir string, o DeliveryOptions) (*node.Node, error) {
	l, err := node.CreateInstance(dir, node.CreateOptions{Port: 0, Loopback: true})
	if err != nil {
		return nil, err
	}
	cfg := node.LoopbackConfig(0)
	cfg.Network.PreferTransport = o.Transport
	// The per-peer rate limit is about hostile peers, not throughput; a
	// burst must fit in the queue bound.
	cfg.Limits.RateLimit = 1e9
	cfg.Limits.RateBurst = 1 << 30
	cfg.Limits.QueueBound = max(cfg.Limits.QueueBound, o.Messages)
	n, err := node.New(node.Options{Dir: l.Dir, Config: cfg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, err
	}
	if err := n.Start(ctx); err != nil {
		return nil, errors.Join(err, n.Close())
	}
	return n, nil
}

// addReceiver gives a subscriber instance the bench's receiver; the
// counter counts an in-process receiver's calls (nil for an executable).
func addReceiver(sub *node.Node, kind string) (*counter, error) {
	if kind == ReceiverExecutable {
		path := filepath.Join(sub.Dir(), "receivers", benchReceiver)
		if err := os.WriteFile(path, []byte(execReceiver), 0o755); err != nil {
			return nil, fmt.Errorf("perf: receiver: %w", err)
		}
		return nil, nil
	}
	cnt := &counter{}
	if err := sub.RegisterReceiver(benchReceiver, cnt.handle); err != nil {
		return nil, fmt.Errorf("perf: receiver: %w", err)
	}
	return cnt, nil
}

// subscribe makes sub a peer of the token's issuer (the publisher) and
// subscribes its receiver to the bench's subjects there.
func subscribe(ctx context.Context, sub *node.Node, token string) error {
	p, err := sub.AddPeer(ctx, token)
	if err != nil {
		return fmt.Errorf("perf: peer add: %w", err)
	}
	if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: p.ID, Pattern: benchPattern, Receiver: benchReceiver}); err != nil {
		return fmt.Errorf("perf: subscribe: %w", err)
	}
	return nil
}

func newCluster(ctx context.Context, dir string, o DeliveryOptions) (c *cluster, err error) {
	c = &cluster{}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.close())
			c = nil
		}
	}()
	if c.pub, err = startNode(ctx, filepath.Join(dir, "publisher"), o); err != nil {
		return c, fmt.Errorf("perf: publisher: %w", err)
	}
	for i := range o.Subscribers {
		subDir := filepath.Join(dir, fmt.Sprintf("subscriber-%d", i))
		var join func(token string) error
		if o.Spawn != nil {
			p, err := startSubProcess(ctx, o.Spawn, subConfig{Dir: subDir, Transport: o.Transport,
				Receiver: o.Receiver, Messages: o.Messages, Size: o.Size}, o.died)
			if err != nil {
				return c, fmt.Errorf("perf: subscriber %d: %w", i, err)
			}
			c.procs = append(c.procs, p)
			join = p.subscribe
		} else {
			sub, cnt, err := startSubscriber(ctx, subDir, o)
			if err != nil {
				return c, fmt.Errorf("perf: subscriber %d: %w", i, err)
			}
			c.subs = append(c.subs, sub)
			if cnt != nil {
				c.counts = append(c.counts, cnt)
			}
			serveRaw(sub, o.Messages, o.Size)
			join = func(token string) error { return subscribe(ctx, sub, token) }
		}
		tok, err := c.pub.IssueToken(ctx, localapi.IssueRequest{Subscribe: []string{benchPattern}})
		if err != nil {
			return c, fmt.Errorf("perf: token: %w", err)
		}
		if err := join(tok.Token); err != nil {
			return c, fmt.Errorf("perf: subscriber %d: %w", i, err)
		}
	}
	if len(c.counts) == 0 {
		c.pollAcked()
	}
	return c, nil
}

// pollAcked refreshes c.acked from the publisher's queues until close.
// One poller, not every publishing goroutine: reading the queues' status
// takes each queue's lock, which the delivery path takes too.
func (c *cluster) pollAcked() {
	stop := make(chan struct{})
	done := make(chan struct{})
	c.stopPoll = func() { close(stop); <-done }
	every := 500 * time.Microsecond
	if c.procs == nil {
		every = 2 * time.Millisecond // an executable receiver takes ~2 ms a run
	}
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			c.acked.Store(c.leastAcked())
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
}

// leastAcked returns the fewest publications any subscription at the
// publisher has acknowledged.
func (c *cluster) leastAcked() int64 {
	st := c.pub.Subscribers()
	if len(st) < len(c.subs)+len(c.procs) {
		return 0
	}
	least := int64(-1)
	for _, s := range st {
		if v := int64(s.Acked); least < 0 || v < least {
			least = v
		}
	}
	return max(least, 0)
}

// processed returns the fewest publications any subscriber has processed:
// counted by the in-process receivers here, else acked (processed and
// durably recorded).
func (c *cluster) processed() int64 {
	if len(c.counts) == 0 {
		return c.acked.Load()
	}
	least := int64(-1)
	for _, cnt := range c.counts {
		if v := cnt.n.Load(); least < 0 || v < least {
			least = v
		}
	}
	return least
}

// pollEvery is how often waiting on processed() polls: an atomic read
// either way.
func (c *cluster) pollEvery() time.Duration {
	return 100 * time.Microsecond
}

// payload returns a JSON string of exactly size bytes.
func payload(size int) json.RawMessage {
	return json.RawMessage(`"` + strings.Repeat("x", size-2) + `"`)
}

// Delivery starts a publisher and o.Subscribers subscriber instances on
// loopback, publishes o.Messages publications and waits until every
// subscriber has processed them all, then measures the raw stream and disk
// baselines with the same payloads.
func Delivery(ctx context.Context, o DeliveryOptions) (DeliveryResult, error) {
	if err := o.defaults(); err != nil {
		return DeliveryResult{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	// A subscriber process that exits during the run ends it at once,
	// with its exit status and stderr as the cause.
	ctx, died := context.WithCancelCause(ctx)
	defer died(nil)
	o.died = died
	dir := o.Dir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "coattail-bench-")
		if err != nil {
			return DeliveryResult{}, fmt.Errorf("perf: %w", err)
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	c, err := newCluster(ctx, dir, o)
	if err == nil {
		var r DeliveryResult
		r, err = runDelivery(ctx, c, o)
		err = errors.Join(err, c.close())
		if err == nil {
			return r, nil
		}
	}
	switch cause := context.Cause(ctx); {
	case cause == nil:
	case errors.Is(cause, context.DeadlineExceeded):
		err = fmt.Errorf("%w (gave up after %v)", err, o.Timeout)
	default:
		err = errors.Join(cause, err)
	}
	return DeliveryResult{}, err
}

func runDelivery(ctx context.Context, c *cluster, o DeliveryOptions) (DeliveryResult, error) {
	r := DeliveryResult{Size: o.Size, Subscribers: o.Subscribers, Messages: o.Messages, Mode: "burst",
		Batch: BatchFor(o.Size), Publishers: o.Publishers, Transport: o.Transport, Receiver: o.Receiver,
		Processes: o.Spawn != nil}
	data := payload(o.Size)
	var processed func() int64
	window := int64(0)
	if o.Paced {
		// Every publishing goroutine may have a batch out, so that group
		// commit has batches to merge: the window is o.Window, or that
		// when it is more (payloads over 2 KiB at the defaults), and the
		// result says which. It said o.Window whatever was kept.
		window = max(int64(o.Publishers*r.Batch), int64(o.Window/o.Size))
		r.Mode, r.Window = "paced", max(o.Window, o.Publishers*r.Batch*o.Size)
		processed = c.processed
	}

	var rawCPU [2]time.Duration // this process's CPU in each raw run
	raw := func(i int) error {
		s0, err := selfCPU()
		if err != nil {
			return err
		}
		if r.RawRuns[i], err = rawStreamRate(ctx, c.pub, c.subIDs(), o.Messages, data); err != nil {
			return err
		}
		s1, err := selfCPU()
		rawCPU[i] = s1 - s0
		return err
	}
	if err := raw(0); err != nil {
		return r, err
	}
	cpu0, err := c.cpuTime()
	if err != nil {
		return r, err
	}
	self0, err := selfCPU()
	if err != nil {
		return r, err
	}
	if o.CPUProfile != nil {
		if err := pprof.StartCPUProfile(o.CPUProfile); err != nil {
			return r, fmt.Errorf("perf: CPU profile: %w", err)
		}
	}
	start := time.Now()
	err = waitDelivered(ctx, c, o, data, window, processed)
	elapsed := time.Since(start)
	if o.CPUProfile != nil {
		pprof.StopCPUProfile()
	}
	if err != nil {
		return r, err
	}
	self1, err := selfCPU()
	if err != nil {
		return r, err
	}
	cpu1, err := c.cpuTime()
	if err != nil {
		return r, err
	}
	if err := c.checkExactlyOnce(int64(o.Messages)); err != nil {
		return r, err
	}
	r.Seconds = elapsed.Seconds()
	r.MsgsPerSec = float64(o.Messages) / r.Seconds
	r.MBPerSec = r.MsgsPerSec * float64(o.Size) / 1e6
	r.Cores = (cpu1 - cpu0).Seconds() / r.Seconds

	if err := raw(1); err != nil {
		return r, err
	}
	best := max(r.RawRuns[0], r.RawRuns[1])
	r.RawMsgsPerSec, r.RawMBPerSec, r.XRaw = best, best*float64(o.Size)/1e6, r.MsgsPerSec/best
	if c.procs != nil {
		perMsg := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(o.Messages) }
		r.PublisherCores = (self1 - self0).Seconds() / r.Seconds
		r.PublisherCPUPerMsg = perMsg(self1 - self0)
		r.RawSenderCPUPerMsg = perMsg(min(rawCPU[0], rawCPU[1]))
		if r.PublisherCPUPerMsg > 0 {
			r.XRawCPU = r.RawSenderCPUPerMsg / r.PublisherCPUPerMsg
		}
	}
	disk, err := diskRate(ctx, c.pub.Dir(), o.Messages, data, o.Publishers)
	if err != nil {
		return r, err
	}
	r.DiskMBPerSec, r.XDisk = disk*float64(o.Size)/1e6, r.MsgsPerSec/disk
	lag := window
	if lag == 0 { // burst: the window a paced run keeps
		lag = max(int64(o.Publishers*r.Batch), int64(o.Window/o.Size))
	}
	store, err := storeRate(ctx, filepath.Dir(c.pub.Dir()), o.Messages, data, int(lag))
	if err != nil {
		return r, err
	}
	r.StoreMBPerSec, r.XStore, r.StoreXRaw = store*float64(o.Size)/1e6, r.MsgsPerSec/store, store/best
	return r, nil
}

// waitDelivered publishes o.Messages publications and waits until the
// subscribers have processed them all.
func waitDelivered(ctx context.Context, c *cluster, o DeliveryOptions, data json.RawMessage, window int64, processed func() int64) error {
	if err := publishAll(ctx, c.pub, o, data, window, processed, c.pollEvery()); err != nil {
		return err
	}
	for c.processed() < int64(o.Messages) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("perf: subscribers processed %d of %d publications: %w", c.processed(), o.Messages, ctx.Err())
		case <-time.After(c.pollEvery()):
		}
	}
	return nil
}

// publishAll publishes o.Messages messages in batches of BatchFor(size)
// from o.Publishers goroutines. If processed is not nil, a publisher waits
// before each batch until the batch would leave at most window messages
// published but not yet processed, checking every poll.
func publishAll(ctx context.Context, pub *node.Node, o DeliveryOptions, data json.RawMessage, window int64, processed func() int64, poll time.Duration) error {
	size := int64(BatchFor(len(data)))
	total := int64(o.Messages)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, o.Publishers)
	for range o.Publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msgs := make([]node.Message, size)
			for i := range msgs {
				msgs[i] = node.Message{Subject: benchSubject, Data: data}
			}
			for {
				end := next.Add(size)
				start := end - size
				if start >= total {
					return
				}
				end = min(end, total)
				for processed != nil && end-processed() > window {
					select {
					case <-ctx.Done():
						errs <- ctx.Err()
						return
					case <-time.After(poll):
					}
				}
				if _, err := pub.PublishBatch(ctx, msgs[:end-start]); err != nil {
					errs <- fmt.Errorf("perf: publish: %w", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// serveRaw makes n the receiving end of the raw baseline: each raw stream
// must carry total length-prefixed payloads of size bytes; once all are
// read the reader answers one byte (a stream that carries anything else is
// reset, which fails the run).
func serveRaw(n *node.Node, total, size int) {
	n.Host().SetStreamHandler(rawProto, func(s network.Stream) {
		defer s.Close()
		br := bufio.NewReaderSize(s, 256<<10)
		buf := make([]byte, size)
		for i := 0; i < total; i++ {
			n, err := binary.ReadUvarint(br)
			if err == nil && n != uint64(size) {
				err = fmt.Errorf("raw frame of %d bytes, want %d", n, size)
			}
			if err == nil {
				_, err = io.ReadFull(br, buf)
			}
			if err != nil {
				_ = s.Reset()
				return
			}
		}
		_, _ = s.Write([]byte{1})
	})
}

// rawStreamRate sends total length-prefixed payloads from one host to each
// of the others (each serving serveRaw), all at once, over one libp2p
// stream each, a batch per write, and returns messages per second per
// destination until every reader has counted them all.
func rawStreamRate(ctx context.Context, from *node.Node, to []peer.ID, total int, data []byte) (float64, error) {
	frame := append(binary.AppendUvarint(nil, uint64(len(data))), data...)
	per := BatchFor(len(data))
	batch := make([]byte, 0, len(frame)*per)
	for range per {
		batch = append(batch, frame...)
	}
	sent := make(chan error, len(to))
	start := time.Now()
	for _, dst := range to {
		go func() {
			sent <- func() error {
				s, err := from.Host().NewStream(ctx, dst, rawProto)
				if err != nil {
					return err
				}
				defer s.Close()
				// Cancelling the run (Ctrl-C, --timeout) resets the
				// stream, which ends the writes below.
				defer context.AfterFunc(ctx, func() { _ = s.Reset() })()
				for n := 0; n < total; n += per {
					k := min(per, total-n)
					if _, err := s.Write(batch[:k*len(frame)]); err != nil {
						_ = s.Reset()
						return err
					}
				}
				var ack [1]byte
				_, err = io.ReadFull(s, ack[:])
				return err
			}()
		}()
	}
	var errs []error
	for range to {
		errs = append(errs, <-sent)
	}
	if err := errors.Join(errs...); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return 0, fmt.Errorf("perf: raw stream: %w", err)
	}
	return float64(total) / time.Since(start).Seconds(), nil
}

// diskRate writes total payloads to a file in dir, a batch per write and
// one fdatasync per syncEvery batches (what one group commit of the paced
// publisher covers), and returns messages per second: what this disk
// takes with the syncs a durable queue needs. The file is removed.
func diskRate(ctx context.Context, dir string, total int, data []byte, syncEvery int) (float64, error) {
	f, err := os.CreateTemp(dir, "disk-baseline-")
	if err != nil {
		return 0, fmt.Errorf("perf: disk baseline: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	per := BatchFor(len(data))
	buf := make([]byte, 0, per*len(data))
	for range per {
		buf = append(buf, data...)
	}
	start := time.Now()
	for sent, writes := 0, 0; sent < total; sent += per {
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("perf: disk baseline: %w", err)
		}
		n := min(per, total-sent)
		if _, err := f.Write(buf[:n*len(data)]); err != nil {
			return 0, fmt.Errorf("perf: disk baseline: %w", err)
		}
		if writes++; writes%syncEvery == 0 || sent+n >= total {
			if err := fdatasync(f); err != nil {
				return 0, fmt.Errorf("perf: disk baseline: fdatasync: %w", err)
			}
		}
	}
	return float64(total) / time.Since(start).Seconds(), nil
}

// storeRate writes total payloads to a new datastore (datastore.Open, as
// an instance opens its own) in a new directory inside parent, a batch of
// BatchFor(len(data)) payloads per key and per commit, and deletes each
// batch in the commit that writes the batch lag messages after it, while
// another goroutine syncs whatever was committed since its last sync, as
// the queues' group commit does (so syncs overlap writes instead of
// stalling them); it returns messages per second until the last payload
// is synced. The directory is removed.
func storeRate(ctx context.Context, parent string, total int, data []byte, lag int) (float64, error) {
	dir, err := os.MkdirTemp(parent, "store-baseline-")
	if err != nil {
		return 0, fmt.Errorf("perf: store baseline: %w", err)
	}
	defer os.RemoveAll(dir)
	db, err := datastore.Open(dir)
	if err != nil {
		return 0, fmt.Errorf("perf: store baseline: %w", err)
	}
	defer db.Close()
	store, ok := db.Batching().(datastore.SizedBatcher)
	if !ok {
		return 0, errors.New("perf: store baseline: the datastore has no sized batches")
	}
	per := BatchFor(len(data))
	value := make([]byte, 0, per*len(data))
	for range per {
		value = append(value, data...)
	}
	key := func(batch int) ds.Key { return ds.NewKey(fmt.Sprintf("/queue/log/%016x", batch)) }
	lagBatches := max(1, (lag+per-1)/per)
	prefix := ds.NewKey("/queue")

	committed := make(chan struct{}, 1) // a commit the syncer has not covered yet
	done := make(chan struct{})         // no more commits
	synced := make(chan error, 1)
	go func() {
		for {
			select {
			case <-committed:
				if err := db.Sync(ctx, prefix); err != nil {
					synced <- err
					return
				}
			case <-done:
				synced <- db.Sync(ctx, prefix) // covers the last commits
				return
			}
		}
	}()
	start := time.Now()
	err = func() error {
		defer close(done)
		for i, sent := 0, 0; sent < total; i++ {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := min(per, total-sent)
			b, err := store.SizedBatch(ctx, n*len(data)+128)
			if err == nil {
				err = b.Put(ctx, key(i), value[:n*len(data)])
			}
			if err == nil && i >= lagBatches {
				err = b.Delete(ctx, key(i-lagBatches))
			}
			if err == nil {
				err = b.Commit(ctx)
			}
			if err != nil {
				return err
			}
			sent += n
			select {
			case committed <- struct{}{}:
			default:
			}
		}
		return nil
	}()
	err = errors.Join(err, <-synced)
	rate := float64(total) / time.Since(start).Seconds()
	if err == nil {
		err = db.Close()
	}
	if err != nil {
		return 0, fmt.Errorf("perf: store baseline: %w", err)
	}
	return rate, nil
}

// cpuTime returns the CPU time (user and system) this process and the
// subscriber processes have used.
func (c *cluster) cpuTime() (time.Duration, error) {
	total, err := cpuTime()
	for _, p := range c.procs {
		_, cpu, perr := p.stats()
		total += cpu
		err = errors.Join(err, perr)
	}
	return total, err
}

// checkExactlyOnce verifies, once every subscription acknowledged all
// publications, that each counted receiver ran exactly once per
// publication.
func (c *cluster) checkExactlyOnce(want int64) error {
	var errs []error
	for i, cnt := range c.counts {
		if got := cnt.n.Load(); got != want {
			errs = append(errs, fmt.Errorf("perf: subscriber %d processed %d publications, want %d", i, got, want))
		}
	}
	for i, p := range c.procs {
		got, _, err := p.stats()
		if err == nil && got != want && p.counted {
			err = fmt.Errorf("perf: subscriber %d processed %d publications, want %d", i, got, want)
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// selfCPU returns the CPU time (user and system) of this process alone.
func selfCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("perf: getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// cpuTime returns the CPU time (user and system) this process and its
// children that have exited (executable receivers; subscriber processes
// only once they are gone, after the run) have used.
func cpuTime() (time.Duration, error) {
	var total time.Duration
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		if err := syscall.Getrusage(who, &ru); err != nil {
			return 0, fmt.Errorf("perf: getrusage: %w", err)
		}
		total += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return total, nil
}
