package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coattail/coattail/datastore"
	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
)

// testTimeout bounds every network operation of a test. It is a safety
// net against hangs, never an assertion about speed.
const testTimeout = 30 * time.Second

// testCtx returns a context that ends with the test or after testTimeout.
func testCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// testWriter forwards log output to t.Log while the test runs and drops it
// afterwards: stream handlers may still log while the hosts shut down, and
// t.Log after the test has completed panics.
type testWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// testLogger logs through t at info level (debug with COATTAIL_TEST_DEBUG).
func testLogger(t testing.TB) *slog.Logger {
	t.Helper()
	w := &testWriter{t: t}
	// Registered before any node's Close, so it runs after them (cleanups
	// run last-in first-out) and the nodes' last words still reach t.Log.
	t.Cleanup(w.stop)
	lvl := slog.LevelInfo
	if os.Getenv("COATTAIL_TEST_DEBUG") != "" {
		lvl = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lvl}))
}

// nodeOption adjusts the Options of a test node before it is built.
type nodeOption func(*node.Options)

// withLimits edits the node's limits config.
func withLimits(f func(*node.LimitsConfig)) nodeOption {
	return func(o *node.Options) { f(&o.Config.Limits) }
}

// withQuietLog discards the node's log (benchmarks, floods).
func withQuietLog() nodeOption {
	return func(o *node.Options) { o.Logger = slog.New(slog.DiscardHandler) }
}

// newTestNode creates an instance in a temporary directory and starts a
// node on it, listening on random loopback ports, with an in-memory
// datastore. The node is closed when the test ends.
func newTestNode(t testing.TB, opts ...nodeOption) *node.Node {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "inst")
	l, err := node.CreateInstance(dir, node.CreateOptions{Port: 0, Loopback: true})
	if err != nil {
		t.Fatalf("CreateInstance: %v", err)
	}
	o := node.Options{
		Dir:    l.Dir,
		Config: node.LoopbackConfig(0),
		DB:     datastore.NewMemory(),
		Logger: testLogger(t),
	}
	for _, f := range opts {
		f(&o)
	}
	n, err := node.New(o)
	if err != nil {
		t.Fatalf("node.New: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("Close %s: %v", n.ID(), err)
		}
		if err := o.DB.Close(); err != nil {
			t.Errorf("close datastore: %v", err)
		}
	})
	if err := n.Start(testCtx(t)); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if n.Host() == nil {
		t.Fatal("Start left the node without a libp2p host")
	}
	return n
}

// issue issues a token on n and fails the test on error.
func issue(t testing.TB, n *node.Node, req localapi.IssueRequest) localapi.Token {
	t.Helper()
	tok, err := n.IssueToken(testCtx(t), req)
	if err != nil {
		t.Fatalf("IssueToken: %v", err)
	}
	return tok
}

// connectPeers issues a token on issuer with req and adds it on bearer, as
// `coattail token issue` followed by `coattail peer add --token`. It
// returns the issuer's peer id as the bearer knows it, and the token.
func connectPeers(t testing.TB, issuer, bearer *node.Node, req localapi.IssueRequest) (string, localapi.Token) {
	t.Helper()
	tok := issue(t, issuer, req)
	p, err := bearer.AddPeer(testCtx(t), tok.Token)
	if err != nil {
		t.Fatalf("AddPeer: %v", err)
	}
	if p.ID != issuer.ID().String() {
		t.Fatalf("AddPeer returned peer %s, want the issuer %s", p.ID, issuer.ID())
	}
	return p.ID, tok
}

// checkFor polls f every interval until it returns nil, failing the test
// with f's last error after total. It replaces sleeps: the condition, not
// the clock, says when to go on.
func checkFor(t testing.TB, total, interval time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v: %v", total, err)
		}
		time.Sleep(interval)
	}
}

// counter is an in-process action that counts its invocations and echoes
// its input.
type counter struct{ n atomic.Int64 }

func (c *counter) handler(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
	c.n.Add(1)
	return in, nil
}

func (c *counter) count() int64 { return c.n.Load() }

// numberRuns is an in-process receiver for publications that are JSON
// integers: it counts how often it ran for each number.
type numberRuns struct {
	mu  sync.Mutex
	got map[int]int
}

func (r *numberRuns) handler(_ context.Context, in json.RawMessage) (json.RawMessage, error) {
	var i int
	if err := json.Unmarshal(in, &i); err != nil {
		return nil, err
	}
	r.mu.Lock()
	if r.got == nil {
		r.got = map[int]int{}
	}
	r.got[i]++
	r.mu.Unlock()
	return nil, nil
}

// runs returns how often the receiver ran for each number so far.
func (r *numberRuns) runs() map[int]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.got)
}

// register registers an in-process action and fails the test on error.
func register(t testing.TB, n *node.Node, name string, h node.Handler) {
	t.Helper()
	if err := n.RegisterAction(name, h); err != nil {
		t.Fatalf("RegisterAction %q: %v", name, err)
	}
}

// writeAction installs an executable action script in n's actions/.
func writeAction(t testing.TB, n *node.Node, name, script string) {
	t.Helper()
	path := filepath.Join(n.Dir(), "actions", name)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
}

// perform performs action on the peer with the given input.
func perform(ctx context.Context, n *node.Node, peerID, action, input string) (localapi.PerformResult, error) {
	return n.Perform(ctx, localapi.PerformRequest{Peer: peerID, Action: action, Input: json.RawMessage(input)}, nil)
}

// wantWireCode fails unless err is a remote error with the given code.
func wantWireCode(t testing.TB, err error, code wire.Code) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want remote %s", code)
	}
	var we *wire.Error
	if !errors.As(err, &we) {
		t.Fatalf("got %T %v, want a *wire.Error with code %s", err, err, code)
	}
	if we.Code != code {
		t.Fatalf("got remote code %s (%v), want %s", we.Code, err, code)
	}
}

// newStockHost starts a plain go-libp2p host on loopback, as any libp2p
// peer that is not Coattail would run, and connects it to n.
func newStockHost(t testing.TB, n *node.Node) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"))
	if err != nil {
		t.Fatalf("libp2p.New: %v", err)
	}
	t.Cleanup(func() { _ = h.Close() })
	if err := h.Connect(testCtx(t), peer.AddrInfo{ID: n.ID(), Addrs: n.Host().Addrs()}); err != nil {
		t.Fatalf("stock host cannot connect to the node: %v", err)
	}
	return h
}

// readErrorFrame reads frames from r until a TError and returns it; any
// other frame (an OK, a result) fails the test because an unauthenticated
// or broken stream must get nothing but an error.
func readErrorFrame(t testing.TB, r *wire.Reader) *wire.Error {
	t.Helper()
	typ, payload, err := r.Next()
	if err != nil {
		t.Fatalf("reading the node's answer: %v", err)
	}
	if typ != wire.TError {
		t.Fatalf("node answered a %s frame, want only an error", typ)
	}
	var e wire.Error
	if err := wire.DecodeJSON(payload, &e); err != nil {
		t.Fatalf("error frame: %v", err)
	}
	if typ, _, err := r.Next(); err == nil {
		t.Fatalf("node sent a %s frame after its error", typ)
	}
	return &e
}

// errorsContain fails unless err's text contains every fragment.
func errorsContain(t testing.TB, err error, frags ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one mentioning %q", frags)
	}
	for _, f := range frags {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("error %q does not mention %q", err, f)
		}
	}
}

// reopenable creates an instance whose in-memory datastore outlives the
// nodes opened on it, so a test can close a node and open it again (a
// restart), or open it offline as the CLI does with no service running.
// open builds a node on it, lets setup (if not nil) register handlers, and
// starts it; closing it is the test's business.
func reopenable(t testing.TB) (node.Layout, func(offline bool, setup func(*node.Node)) *node.Node) {
	t.Helper()
	l, err := node.CreateInstance(filepath.Join(t.TempDir(), "inst"), node.CreateOptions{Loopback: true})
	if err != nil {
		t.Fatal(err)
	}
	db := datastore.NewMemory()
	t.Cleanup(func() { _ = db.Close() }) // after the nodes' own cleanups
	return l, func(offline bool, setup func(*node.Node)) *node.Node {
		t.Helper()
		n, err := node.New(node.Options{Dir: l.Dir, Config: node.LoopbackConfig(0), DB: db, Offline: offline, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		if setup != nil {
			setup(n)
		}
		if err := n.Start(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		return n
	}
}
