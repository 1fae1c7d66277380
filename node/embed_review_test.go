package node_test

// Defects found reviewing the embedding API (package node used as a
// library). Each test fails on the code it was written against.

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/runner"
)

// newDiskNode is newTestNode with the instance's own pebble datastore
// (as an embedding program gets with Options.DB nil). Not started.
func newDiskNode(t *testing.T, mod func(*node.Config)) *node.Node {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "inst")
	if _, err := node.CreateInstance(dir, node.CreateOptions{Port: 0, Loopback: true}); err != nil {
		t.Fatal(err)
	}
	cfg := node.LoopbackConfig(0)
	if mod != nil {
		mod(&cfg)
	}
	n, err := node.New(node.Options{Dir: dir, Config: cfg, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Every method of a closed node must return an error, not crash the
// embedding program: IssueToken, ListPeers, Subscriptions, DeadLetters and
// Start panic with "pebble: closed".
func TestEmbedMethodsAfterCloseDoNotPanic(t *testing.T) {
	ctx := testCtx(t)
	n := newDiskNode(t, nil)
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func() error{
		"IssueToken":    func() error { _, err := n.IssueToken(ctx, localapi.IssueRequest{Subscribe: []string{">"}}); return err },
		"ListPeers":     func() error { _, err := n.ListPeers(ctx); return err },
		"Subscriptions": func() error { _, err := n.Subscriptions(ctx); return err },
		"DeadLetters":   func() error { _, err := n.DeadLetters(ctx, localapi.DeadLetterQuery{}); return err },
		"Start":         func() error { return n.Start(ctx) },
	} {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("%s after Close panicked: %v; want an error", name, r)
				}
			}()
			if err := f(); err == nil {
				t.Errorf("%s after Close = nil; want an error", name)
			}
		}()
	}
}

// An in-process receiver that ignores its ctx and returns after Close
// gave up waiting for it (handlersDrain) crashes the whole process:
// the subscription's ack goroutine saves progress into the closed pebble
// ("panic: pebble: closed" in subscriberSide.saveSeq). The crash is
// reproduced in a child process so that it does not take this package's
// other tests down with it.
func TestEmbedSlowReceiverAfterCloseDoesNotCrash(t *testing.T) {
	if os.Getenv("COATTAIL_EMBED_CHILD") == "1" {
		slowReceiverAfterClose(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestEmbedSlowReceiverAfterCloseDoesNotCrash$", "-test.count=1")
	// The child's temp dirs go under this test's, which is removed even
	// when the child crashes before its own cleanups.
	cmd.Env = append(os.Environ(), "COATTAIL_EMBED_CHILD=1", "TMPDIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		if len(out) > 3000 {
			out = out[:3000]
		}
		t.Fatalf("child process failed (%v); a receiver returning after Close must not crash the program:\n%s", err, out)
	}
}

func slowReceiverAfterClose(t *testing.T) {
	defer node.SetHandlersDrain(200 * time.Millisecond)()
	ctx := testCtx(t)
	pub := newTestNode(t)
	sub := newDiskNode(t, nil)
	release := make(chan struct{})
	var calls atomic.Int64
	if err := sub.RegisterReceiver("rec", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		calls.Add(1)
		<-release // ignores ctx, returns a little after Close
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := sub.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"p.>"}})
	if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "p.>", Receiver: "rec"}); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(ctx, "p.a", json.RawMessage(`1`)); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if calls.Load() == 0 {
			return errors.New("receiver not called yet")
		}
		return nil
	})
	_ = sub.Close()
	close(release)
	time.Sleep(time.Second) // the crash, if any, happens here
}

// RegisterReceiver says the input is the receiver's own copy. A receiver
// that scribbles on it and fails is retried with the scribbled bytes, not
// the publication.
func TestEmbedReceiverRetryGetsOriginalInput(t *testing.T) {
	ctx := testCtx(t)
	pub := newTestNode(t)
	sub := newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.ReceiverBackoff = 10 * time.Millisecond }))
	got := make(chan string, 4)
	var calls atomic.Int64
	if err := sub.RegisterReceiver("rec", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		got <- string(in)
		if calls.Add(1) == 1 {
			copy(in, `"XXXXXX"`)
			return nil, errors.New("fail once")
		}
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"p.>"}})
	if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "p.>", Receiver: "rec"}); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(ctx, "p.a", json.RawMessage(`"orig42"`)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		select {
		case s := <-got:
			if i == 1 && s != `"orig42"` {
				t.Fatalf("retry got %s; want the publication %q (the first call's scribbles leaked into the retry)", s, `"orig42"`)
			}
		case <-ctx.Done():
			t.Fatal("receiver not called twice")
		}
	}
}

// A remote perform with input that is not JSON fails at once locally
// (ErrBadInput), as a local perform and a remote publish do. It waited 2s
// and said the peer "closed the stream: wire: read frame: i/o deadline
// reached".
func TestEmbedRemotePerformNonJSONInput(t *testing.T) {
	ctx := testCtx(t)
	a := newTestNode(t)
	b := newTestNode(t)
	register(t, a, "echo", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) { return in, nil })
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{"echo"}})
	start := time.Now()
	_, err := b.Perform(ctx, localapi.PerformRequest{Peer: pid, Action: "echo", Input: json.RawMessage(`{x`)}, nil)
	if !errors.Is(err, runner.ErrBadInput) && !errors.Is(err, node.ErrBadRequest) {
		t.Errorf("remote perform of non-JSON input: %v; want ErrBadInput or ErrBadRequest", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("remote perform of non-JSON input took %v; want an immediate refusal", d)
	}
}

// A nil Handler is accepted by RegisterAction/RegisterReceiver and only
// fails (a recovered nil dereference) when called.
func TestEmbedRegisterNilHandler(t *testing.T) {
	n := newTestNode(t)
	if err := n.RegisterAction("nil.action", nil); err == nil {
		t.Error("RegisterAction(name, nil) = nil; want an error")
	}
	if err := n.RegisterReceiver("nil.receiver", nil); err == nil {
		t.Error("RegisterReceiver(name, nil) = nil; want an error")
	}
}

// A program that restarts and registers its in-process receiver a few
// seconds after Start (slow initialisation between the two) finds the
// publications queued meanwhile parked as dead letters ("no receiver"):
// stored subscriptions start delivering at Start, and a receiver not
// registered yet counts as a failing one. Nothing says receivers must be
// registered before Start.
func TestEmbedReceiverRegisteredAfterStartLosesNothing(t *testing.T) {
	ctx := testCtx(t)
	pub := newTestNode(t)
	_, open := reopenable(t)
	var runs atomic.Int64
	h := func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) { runs.Add(1); return nil, nil }
	sub := open(false, func(n *node.Node) { _ = n.RegisterReceiver("rec", h) })
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"p.>"}})
	if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "p.>", Receiver: "rec"}); err != nil {
		t.Fatal(err)
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := pub.Publish(ctx, "p.a", json.RawMessage(`1`)); err != nil {
			t.Fatal(err)
		}
	}
	sub = open(false, nil)
	t.Cleanup(func() { _ = sub.Close() })
	time.Sleep(5 * time.Second) // the program initialises something else
	if err := sub.RegisterReceiver("rec", h); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		if s := pub.Subscribers(); len(s) != 1 || s[0].Acked != 3 {
			return errors.New("not all acked yet")
		}
		return nil
	})
	dl, err := sub.DeadLetters(ctx, localapi.DeadLetterQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if runs.Load() != 3 || len(dl.DeadLetters) != 0 {
		t.Errorf("receiver ran %d times, %d dead letters (first: %+v); want 3 runs and none parked", runs.Load(), len(dl.DeadLetters), dl.DeadLetters)
	}
}
