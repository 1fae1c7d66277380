package node_test

// Bounded resources: hostile input to the libp2p ports and to the control
// socket must leave memory bounded and the node serving everyone else; a
// subscriber that stops reading must not stall the publisher; a hung action
// is killed at its timeout. Memory is compared before and after with a
// generous bound: the point is "bounded", not a number.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// heapAfterGC returns the live heap after a full collection.
func heapAfterGC() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// checkHeapGrowth fails if the live heap grew by more than limit since
// before.
func checkHeapGrowth(t *testing.T, what string, before, limit uint64) {
	t.Helper()
	after := heapAfterGC()
	var grew uint64
	if after > before {
		grew = after - before
	}
	t.Logf("%s: live heap %d KiB -> %d KiB (+%d KiB, limit +%d KiB)", what, before>>10, after>>10, grew>>10, limit>>10)
	if grew > limit {
		t.Errorf("%s: live heap grew by %d KiB, over the bound of %d KiB", what, grew>>10, limit>>10)
	}
}

// performN performs echo on the peer n times and fails on any error: the
// node must keep serving well-behaved peers.
func performN(t *testing.T, ctx context.Context, n *node.Node, pid string, count int) {
	t.Helper()
	for i := range count {
		want := strconv.Itoa(i)
		res, err := perform(ctx, n, pid, "echo", want)
		if err != nil {
			t.Fatalf("well-behaved peer, perform %d: %v", i, err)
		}
		if string(res.Output) != want {
			t.Fatalf("perform %d returned %s", i, res.Output)
		}
	}
}

// hostile is one misbehaving stream or connection: start writes its first
// bytes (and, for a slow one, keeps trickling in the background), ended
// reports when the other side has closed or reset it.
type hostile struct {
	name  string
	ended chan struct{}
}

// waitEnded waits until every stream in hs has been ended by the node.
func waitEnded(t *testing.T, hs []*hostile) {
	t.Helper()
	for _, h := range hs {
		select {
		case <-h.ended:
		case <-time.After(testTimeout):
			t.Fatalf("the node never ended hostile stream %q", h.name)
		}
	}
}

// trickle writes b one byte per interval until a write fails or stop closes.
func trickle(w io.Writer, b []byte, interval time.Duration, stop <-chan struct{}) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for i := 0; ; i = (i + 1) % len(b) {
		if _, err := w.Write(b[i : i+1]); err != nil {
			return
		}
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}

// openHostile opens a stream of proto from h and misbehaves on it as kind
// says. ended closes once a read on the stream fails or ends: the node
// closed or reset it.
func openHostile(t *testing.T, s network.Stream, kind string, stop <-chan struct{}) *hostile {
	t.Helper()
	hs := &hostile{name: string(s.Protocol()) + " " + kind, ended: make(chan struct{})}
	garbage := make([]byte, 32<<10)
	_, _ = rand.Read(garbage)
	hello := wire.AppendFrame(nil, wire.THello, []byte(`{"token":"a.b.c","version":"`+wire.Version+`"}`))
	switch kind {
	case "garbage":
		_, _ = s.Write(garbage)
	case "huge header":
		// Announces a 1 GiB frame: refused before anything is allocated.
		_, _ = s.Write(append(binary.AppendUvarint(nil, 1<<30), byte(wire.THello)))
	case "announce and stall":
		// Announces a frame just under the limit, sends a little, stalls.
		hdr := binary.AppendUvarint(nil, uint64(wire.DefaultMaxPayload))
		_, _ = s.Write(append(append(hdr, byte(wire.THello)), garbage[:100]...))
	case "slowloris":
		go trickle(s, hello, 20*time.Millisecond, stop)
	case "silent":
		// Opens the stream and sends nothing (half-open).
	case "hello then silent":
		_, _ = s.Write(hello[:len(hello)-1])
	default:
		t.Fatalf("unknown kind %q", kind)
	}
	go func() {
		defer close(hs.ended)
		_, _ = io.Copy(io.Discard, s)
	}()
	return hs
}

func TestHostileStreamsLeaveMemoryBoundedAndNodeServing(t *testing.T) {
	// A 1s stream timeout (the minimum) ends stalled streams quickly.
	a := newTestNode(t, withQuietLog(), withLimits(func(l *node.LimitsConfig) { l.StreamTimeout = time.Second }))
	b := newTestNode(t)
	var echo counter
	register(t, a, "echo", echo.handler)
	ctx := testCtx(t)
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})
	performN(t, ctx, b, pid, 3) // warm up connections and caches
	attacker := newStockHost(t, a)
	before := heapAfterGC()

	stop := make(chan struct{})
	defer close(stop)
	protos := []string{wire.ProtoList, wire.ProtoPerform, wire.ProtoPublish, wire.ProtoSubscribe, wire.ProtoUnsubscribe}
	kinds := []string{"garbage", "huge header", "announce and stall", "slowloris", "silent", "hello then silent"}
	var hs []*hostile
	// 4 x 5 x 6 = 120 streams: just under max_streams_per_peer (128), so
	// every one reaches a handler instead of being refused at the door.
	for range 4 {
		for _, p := range protos {
			for _, k := range kinds {
				s, err := attacker.NewStream(ctx, a.ID(), protocol.ID(p))
				if err != nil {
					t.Fatalf("NewStream %s: %v", p, err)
				}
				t.Cleanup(func() { _ = s.Reset() })
				hs = append(hs, openHostile(t, s, k, stop))
			}
		}
	}
	// The node serves a well-behaved peer while they are all open.
	performN(t, ctx, b, pid, 20)
	// 120 streams: 64 KiB of read buffer each plus libp2p's own buffers.
	// Were a stalled frame to cost what its header announces, the
	// "announce and stall" streams alone would take 20 MiB.
	checkHeapGrowth(t, "during 120 hostile streams", before, 12<<20)
	waitEnded(t, hs)
	performN(t, ctx, b, pid, 5)
	checkHeapGrowth(t, "after the node ended them", before, 8<<20)
	if got := echo.count(); got != 3+20+5 {
		t.Errorf("echo ran %d times, want only the well-behaved peer's 28", got)
	}
}

// TestHostileConnectionsToLibp2pPorts sends what is not libp2p at all to the
// TCP and QUIC ports: garbage, half-open connections, a slow handshake, and
// junk datagrams.
func TestHostileConnectionsToLibp2pPorts(t *testing.T) {
	a := newTestNode(t, withQuietLog())
	b := newTestNode(t)
	var echo counter
	register(t, a, "echo", echo.handler)
	ctx := testCtx(t)
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})
	performN(t, ctx, b, pid, 3)

	var tcpAddr, udpAddr net.Addr
	for _, m := range a.Host().Addrs() {
		if _, err := m.ValueForProtocol(ma.P_QUIC_V1); err == nil {
			udpAddr = udpOf(t, m)
			continue
		}
		if _, err := m.ValueForProtocol(ma.P_TCP); err == nil {
			if na, err := manet.ToNetAddr(m); err == nil {
				tcpAddr = na
			}
		}
	}
	if tcpAddr == nil || udpAddr == nil {
		t.Fatalf("node listens on %v, want a TCP and a QUIC address", a.Host().Addrs())
	}
	before := heapAfterGC()
	stop := make(chan struct{})
	defer close(stop)

	dial := func() net.Conn {
		c, err := net.Dial("tcp", tcpAddr.String())
		if err != nil {
			t.Fatalf("dial %s: %v", tcpAddr, err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	garbage := make([]byte, 64<<10)
	_, _ = rand.Read(garbage)
	var closedByNode []*hostile
	for i := range 20 {
		c := dial()
		h := &hostile{name: "tcp garbage " + strconv.Itoa(i), ended: make(chan struct{})}
		go func() {
			defer close(h.ended)
			_, _ = c.Write(garbage)
			_, _ = io.Copy(io.Discard, c)
		}()
		closedByNode = append(closedByNode, h)
	}
	for range 20 {
		_ = dial() // half-open: connected, never speaks
	}
	for range 10 {
		go trickle(dial(), []byte("/multistream/1.0.0\n"), 20*time.Millisecond, stop)
	}
	u, err := net.Dial("udp", udpAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for i := range 500 {
		_, _ = u.Write(garbage[i : i+1200])
	}

	performN(t, ctx, b, pid, 20)
	waitEnded(t, closedByNode)
	performN(t, ctx, b, pid, 5)
	checkHeapGrowth(t, "after 50 hostile TCP connections and 500 junk datagrams", before, 16<<20)
}

func udpOf(t *testing.T, m ma.Multiaddr) net.Addr {
	t.Helper()
	ip, err := m.ValueForProtocol(ma.P_IP4)
	if err != nil {
		t.Fatalf("%s: %v", m, err)
	}
	port, err := m.ValueForProtocol(ma.P_UDP)
	if err != nil {
		t.Fatalf("%s: %v", m, err)
	}
	a, err := net.ResolveUDPAddr("udp", net.JoinHostPort(ip, port))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestReaderMemoryFollowsBytesReceived checks the frame reader directly: a
// header announcing a large frame costs memory only as its bytes arrive,
// and frames of every size still read back intact.
func TestReaderMemoryFollowsBytesReceived(t *testing.T) {
	pr, pw := io.Pipe()
	defer pr.Close()
	r := wire.NewReader(pr, 0)
	size := wire.DefaultMaxPayload
	payload := make([]byte, size)
	_, _ = rand.Read(payload)
	frame := wire.AppendFrame(nil, wire.TDeliver, payload)

	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	allocBefore := ms.TotalAlloc
	got := make(chan []byte, 1)
	go func() {
		_, p, err := r.Next()
		if err != nil {
			got <- nil
			return
		}
		got <- bytes.Clone(p)
	}()
	// Header and 1 KiB, then a pause the reader must wait through.
	if _, err := pw.Write(frame[:1024]); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&ms)
	if grew := ms.TotalAlloc - allocBefore; grew > uint64(size)/2 {
		t.Errorf("the reader allocated %d KiB for a frame of which 1 KiB arrived", grew>>10)
	}
	if _, err := pw.Write(frame[1024:]); err != nil {
		t.Fatal(err)
	}
	if p := <-got; !bytes.Equal(p, payload) {
		t.Fatal("the large frame did not read back intact")
	}

	// Many sizes, growing and shrinking, on one reader.
	var stream []byte
	var want [][]byte
	for _, n := range []int{0, 1, 100, 70 << 10, 64 << 10, 200 << 10, 3, size, 128<<10 + 1} {
		p := payload[:n]
		want = append(want, p)
		stream = wire.AppendFrame(stream, wire.TDeliver, p)
	}
	rr := wire.NewReader(bytes.NewReader(stream), 0)
	for i, w := range want {
		_, p, err := rr.Next()
		if err != nil || !bytes.Equal(p, w) {
			t.Fatalf("frame %d (%d bytes): %v, equal %v", i, len(w), err, bytes.Equal(p, w))
		}
	}
	if _, _, err := rr.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last frame: %v, want EOF", err)
	}
}

func TestSubscriberThatNeverReadsCannotStallPublisher(t *testing.T) {
	a := newTestNode(t, withQuietLog(), withLimits(func(l *node.LimitsConfig) { l.StreamTimeout = time.Second }))
	good := newTestNode(t, withQuietLog())
	ctx := testCtx(t)
	var mu sync.Mutex
	var received []string
	if err := good.RegisterReceiver("got", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		mu.Lock()
		received = append(received, string(in[:min(len(in), 16)]))
		mu.Unlock()
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	pid, _ := connectPeers(t, a, good, localapi.IssueRequest{Subscribe: []string{"orders.>"}})
	if _, err := good.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "orders.>", Receiver: "got"}); err != nil {
		t.Fatalf("good subscriber: %v", err)
	}

	// The stalled subscriber: a stock libp2p host that subscribes with a
	// token of its own, then never reads and never acks.
	evil := newStockHost(t, a)
	tok := issue(t, a, localapi.IssueRequest{Subscribe: []string{"orders.>"}, Bearers: []string{"vt://" + evil.ID().String()}})
	s := rawStream(t, evil, a, wire.ProtoSubscribe)
	if _, err := s.Write(append(jsonFrame(t, wire.THello, wire.Hello{Token: tok.Token, Version: wire.Version}),
		jsonFrame(t, wire.TRequest, wire.SubscribeRequest{Pattern: "orders.>", Receiver: "x"})...)); err != nil {
		t.Fatal(err)
	}
	r := wire.NewReader(s, 0)
	if err := r.Expect(wire.TOK, nil); err != nil {
		t.Fatalf("stalled subscriber's hello: %v", err)
	}
	var resp wire.SubscribeResponse
	if err := r.Expect(wire.TResult, &resp); err != nil {
		t.Fatalf("stalled subscriber's subscribe: %v", err)
	}
	connected := func(id string) bool {
		for _, sub := range a.Subscribers() {
			if sub.ID == id {
				return sub.Connected
			}
		}
		return false
	}
	// The publisher attaches the stream just after it answers.
	checkFor(t, testTimeout, 5*time.Millisecond, func() error {
		if !connected(resp.SubscriptionID) {
			return errors.New("the stalled subscriber's stream is not attached")
		}
		return nil
	})

	// 48 publications of 512 KiB: 24 MiB, more than the flow-control
	// windows between the hosts (yamux 16 MiB, QUIC 15 MiB), so the
	// stalled stream's writes block.
	big := `"` + strings.Repeat("x", 512<<10) + `"`
	const count = 48
	for i := range count {
		n, err := a.Publish(ctx, "orders.big", json.RawMessage(big))
		if err != nil {
			t.Fatalf("publish %d while a subscriber stalls: %v", i, err)
		}
		if n != 2 {
			t.Fatalf("publish %d reached %d queues, want 2", i, n)
		}
	}
	checkFor(t, testTimeout, 10*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(received) != count {
			return fmt.Errorf("the good subscriber received %d of %d", len(received), count)
		}
		return nil
	})
	// The publisher ends the stalled stream (write or ack timeout) and
	// keeps its queue for a later resume.
	checkFor(t, testTimeout, 10*time.Millisecond, func() error {
		if connected(resp.SubscriptionID) {
			return errors.New("the stalled subscriber is still attached")
		}
		return nil
	})
	for _, sub := range a.Subscribers() {
		if sub.ID == resp.SubscriptionID && sub.Depth != count {
			t.Errorf("stalled subscription's queue depth %d, want %d kept for it", sub.Depth, count)
		}
	}
	if _, err := a.Publish(ctx, "orders.small", json.RawMessage(`1`)); err != nil {
		t.Fatalf("publish after the stall: %v", err)
	}
	checkFor(t, testTimeout, 10*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(received) != count+1 {
			return fmt.Errorf("the good subscriber received %d of %d", len(received), count+1)
		}
		return nil
	})
}

// processGone reports whether pid has exited (a zombie counts as exited).
func processGone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	s := string(b)
	k := strings.LastIndexByte(s, ')')
	return k >= 0 && k+2 < len(s) && s[k+2] == 'Z'
}

func TestHungActionKilledAtTimeout(t *testing.T) {
	// The timeout leaves a busy machine ample time to start the script and
	// have it write both pids, which the test then checks are gone.
	a := newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.ActionTimeout = 3 * time.Second }))
	b := newTestNode(t)
	var echo counter
	register(t, a, "echo", echo.handler)
	// The action and a child it starts in the background both hang.
	writeAction(t, a, "hang", `#!/bin/sh
echo $$ > "$COATTAIL_INSTANCE/hang.pid"
sleep 1000 &
echo $! > "$COATTAIL_INSTANCE/child.pid"
wait
`)
	ctx := testCtx(t)
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})
	_, err := perform(ctx, b, pid, "hang", `null`)
	wantWireCode(t, err, wire.CodeTimeout)
	for _, f := range []string{"hang.pid", "child.pid"} {
		raw, err := os.ReadFile(filepath.Join(a.Dir(), f))
		if err != nil {
			t.Fatalf("the action did not start as expected: %v", err)
		}
		p, err := strconv.Atoi(strings.TrimSpace(string(raw)))
		if err != nil {
			t.Fatal(err)
		}
		checkFor(t, testTimeout, 10*time.Millisecond, func() error {
			if !processGone(p) {
				return fmt.Errorf("%s %d still runs after the action timed out", f, p)
			}
			return nil
		})
	}
	performN(t, ctx, b, pid, 3)
}

// runService runs a real service (control socket included) on a new
// instance in a temp dir and returns its layout once it is ready; when the
// test ends the service is stopped and must have returned no error.
func runService(t *testing.T, cfg node.Config) node.Layout {
	t.Helper()
	l, done, cancel := startService(t, cfg)
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunService: %v", err)
		}
	})
	return l
}

// TestControlSocketSlowAndHostileClients opens slow, silent and garbage
// connections to the control socket. Each is closed by the server (header
// and body read timeouts, size limits) while a normal client is served and
// a long streamed perform, which outlives every read timeout, completes.
func TestControlSocketSlowAndHostileClients(t *testing.T) {
	cfg := node.LoopbackConfig(0)
	cfg.Limits.ActionTimeout = 5 * time.Minute
	l := runService(t, cfg)
	gate := filepath.Join(t.TempDir(), "gate")
	if err := os.WriteFile(filepath.Join(l.Dir, "actions", "gated"), []byte(chattyScript), 0o755); err != nil {
		t.Fatal(err)
	}
	c := localapi.Dial(l.Socket())
	defer c.Close()
	ctx := testCtx(t)
	if _, err := c.Status(ctx); err != nil {
		t.Fatal(err)
	}

	// A streamed perform that runs until the hostile clients are gone.
	var logged atomic.Int32
	performDone := make(chan error, 1)
	go func() {
		gin, _ := json.Marshal(gate)
		res, err := c.Perform(context.Background(), localapi.PerformRequest{Action: "gated", Input: gin}, func(string) { logged.Add(1) })
		if err == nil && string(res.Output) != `{"done":true}` {
			err = fmt.Errorf("output %s", res.Output)
		}
		performDone <- err
	}()

	before := heapAfterGC()
	stop := make(chan struct{})
	defer close(stop)
	var hs []*hostile
	conn := func(name string, fn func(net.Conn)) {
		nc, err := net.Dial("unix", l.Socket())
		if err != nil {
			t.Fatalf("dial control socket: %v", err)
		}
		t.Cleanup(func() { _ = nc.Close() })
		h := &hostile{name: name, ended: make(chan struct{})}
		go func() {
			defer close(h.ended)
			fn(nc)
			_, _ = io.Copy(io.Discard, nc)
		}()
		hs = append(hs, h)
	}
	garbage := make([]byte, 64<<10)
	_, _ = rand.Read(garbage)
	for i := range 10 {
		n := strconv.Itoa(i)
		conn("silent "+n, func(net.Conn) {})
		conn("slow header "+n, func(nc net.Conn) {
			_, _ = io.WriteString(nc, "GET /v1/status HTTP/1.1\r\nHost: x\r\n")
			go trickle(nc, []byte("X-Slow: a\r\n"), 50*time.Millisecond, stop)
		})
		conn("slow body "+n, func(nc net.Conn) {
			_, _ = io.WriteString(nc, "POST /v1/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
			go trickle(nc, []byte(`"perform":["a"],`), 50*time.Millisecond, stop)
		})
		conn("garbage "+n, func(nc net.Conn) { _, _ = nc.Write(garbage) })
		conn("huge header "+n, func(nc net.Conn) {
			_, _ = io.WriteString(nc, "GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 256<<10)+"\r\n\r\n")
		})
	}
	// Served meanwhile.
	for range 10 {
		if _, err := c.Status(ctx); err != nil {
			t.Fatalf("status while hostile clients are connected: %v", err)
		}
	}
	waitEnded(t, hs)
	checkHeapGrowth(t, "after 50 hostile control connections", before, 16<<20)

	// The perform stream outlived the read timeouts; let it finish.
	checkFor(t, testTimeout, 10*time.Millisecond, func() error {
		if logged.Load() < 5 {
			return fmt.Errorf("perform logged %d lines", logged.Load())
		}
		return nil
	})
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-performDone:
		if err != nil {
			t.Fatalf("streamed perform across the read timeouts: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("streamed perform did not finish")
	}
	// A raw request over a fresh connection still gets a proper answer.
	nc, err := net.Dial("unix", l.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := io.WriteString(nc, "GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(nc).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Fatalf("status over a raw connection: %q, %v", line, err)
	}
}
