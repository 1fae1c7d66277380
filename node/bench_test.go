package node_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// benchEchoProto is the baseline: a bare libp2p echo protocol registered
// on the same hosts for the duration of the benchmark.
const benchEchoProto = protocol.ID("/coattail-bench/echo/1.0.0")

// serveEcho answers uvarint-length-prefixed messages with themselves until
// the stream ends.
func serveEcho(s network.Stream) {
	defer s.Close()
	br := bufio.NewReader(s)
	var out []byte
	for {
		n, err := binary.ReadUvarint(br)
		if err != nil || n > 1<<20 {
			return
		}
		out = binary.AppendUvarint(out[:0], n)
		start := len(out)
		out = append(out, make([]byte, n)...)
		if _, err := io.ReadFull(br, out[start:]); err != nil {
			return
		}
		if _, err := s.Write(out); err != nil {
			return
		}
	}
}

// echoRoundTrip sends one framed message and reads its echo into reply.
func echoRoundTrip(s network.Stream, msg, reply []byte) error {
	if _, err := s.Write(msg); err != nil {
		return err
	}
	_, err := io.ReadFull(s, reply)
	return err
}

// latencies collects one round trip per iteration.
type latencies []time.Duration

func (l latencies) percentile(p int) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone(l)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// BenchmarkRemotePerform measures the round trip of a remote perform of an
// in-process Go echo action between two nodes on loopback, and, in the same
// run and between the same two hosts, a raw libp2p echo with the same
// payload: once opening a new stream per request (what a perform does) and
// once over one long-lived stream. The iterations of the three variants are
// interleaved so that machine noise hits them alike. The ratio x-raw-p50 is
// perform p50 over raw new-stream p50; the issue's goal is at most 2.
func BenchmarkRemotePerform(b *testing.B) {
	unlimited := withLimits(func(l *node.LimitsConfig) { l.RateLimit = 1e9; l.RateBurst = 1 << 30 })
	srv := newTestNode(b, withQuietLog(), unlimited)
	cli := newTestNode(b, withQuietLog(), unlimited)
	if err := srv.RegisterAction("bench.echo", func(_ context.Context, in json.RawMessage) (json.RawMessage, error) {
		return in, nil
	}); err != nil {
		b.Fatal(err)
	}
	pid, _ := connectPeers(b, srv, cli, localapi.IssueRequest{Perform: []string{"bench.echo"}})
	ctx := testCtx(b)

	input, err := json.Marshal(map[string]string{"msg": strings.Repeat("x", 100)})
	if err != nil {
		b.Fatal(err)
	}
	req := localapi.PerformRequest{Peer: pid, Action: "bench.echo", Input: input}
	msg := append(binary.AppendUvarint(nil, uint64(len(input))), input...)
	reply := make([]byte, len(msg))

	srv.Host().SetStreamHandler(benchEchoProto, serveEcho)
	b.Cleanup(func() { srv.Host().RemoveStreamHandler(benchEchoProto) })
	srvID := srv.ID()
	long, err := cli.Host().NewStream(ctx, srvID, benchEchoProto)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = long.Reset() })

	performOnce := func() error {
		res, err := cli.Perform(ctx, req, nil)
		if err == nil && !bytes.Equal(res.Output, input) {
			err = fmt.Errorf("perform echoed %d bytes, sent %d", len(res.Output), len(input))
		}
		return err
	}
	newStreamOnce := func() error {
		s, err := cli.Host().NewStream(ctx, srvID, benchEchoProto)
		if err != nil {
			return err
		}
		defer s.Close()
		return echoRoundTrip(s, msg, reply)
	}
	longOnce := func() error { return echoRoundTrip(long, msg, reply) }

	variants := []struct {
		name string
		fn   func() error
		lat  latencies
	}{
		{"perform", performOnce, nil},
		{"raw new stream", newStreamOnce, nil},
		{"raw long-lived", longOnce, nil},
	}
	// Warm up connections, caches (the token's verification) and buffers.
	for range 50 {
		for _, v := range variants {
			if err := v.fn(); err != nil {
				b.Fatalf("%s warm-up: %v", v.name, err)
			}
		}
	}
	if !bytes.Equal(reply, msg) {
		b.Fatal("raw echo returned different bytes")
	}
	for i := range variants {
		variants[i].lat = make(latencies, 0, b.N)
	}

	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := range variants {
			start := time.Now()
			if err := variants[j].fn(); err != nil {
				b.Fatalf("%s: %v", variants[j].name, err)
			}
			variants[j].lat = append(variants[j].lat, time.Since(start))
		}
	}
	b.StopTimer()

	perf, rawNew, rawLong := variants[0].lat, variants[1].lat, variants[2].lat
	b.ReportMetric(us(perf.percentile(50)), "p50-us")
	b.ReportMetric(us(perf.percentile(99)), "p99-us")
	b.ReportMetric(us(rawLong.percentile(50)), "raw-p50-us")
	b.ReportMetric(us(rawLong.percentile(99)), "raw-p99-us")
	b.ReportMetric(us(rawNew.percentile(50)), "raw-newstream-p50-us")
	b.ReportMetric(us(rawNew.percentile(99)), "raw-newstream-p99-us")
	ratio := 0.0
	if p := rawNew.percentile(50); p > 0 {
		ratio = float64(perf.percentile(50)) / float64(p)
	}
	b.ReportMetric(ratio, "x-raw-p50")

	conns := cli.Host().Network().ConnsToPeer(srvID)
	transport := "?"
	if len(conns) > 0 {
		transport = conns[0].RemoteMultiaddr().String()
	}
	b.Logf("remote perform vs raw libp2p echo, %d-byte payload, %d iterations each, over %s", len(input), b.N, transport)
	b.Logf("%-16s %10s %10s", "variant", "p50", "p99")
	for _, v := range variants {
		b.Logf("%-16s %10v %10v", v.name, v.lat.percentile(50).Round(time.Microsecond), v.lat.percentile(99).Round(time.Microsecond))
	}
	b.Logf("perform p50 / raw new-stream p50 = %.2fx (goal <= 2x); / raw long-lived p50 = %.2fx",
		ratio, float64(perf.percentile(50))/float64(max(rawLong.percentile(50), 1)))
}
