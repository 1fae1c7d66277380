package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
	"github.com/google/uuid"
)

// Review of the receiver side: retries, dead letters, replay and drop.

// writeReceiver installs an executable receiver script in n's receivers/.
func writeReceiver(t testing.TB, n *node.Node, name, script string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(n.Dir(), "receivers", name), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
}

// readLines reads a file of lines ("" when it does not exist yet).
func readLines(t testing.TB, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(b))
}

// A publication that is not JSON (a faulty or hostile publisher sent it)
// is parked in the dead letters like any other that its receiver cannot
// handle, and the publications behind it run. It could not be stored as
// a dead letter (its data went into a JSON record as raw JSON), so the
// subscription failed, reconnected, got it again and never got past it.
//
// Nested deeper than encoding/json takes (10 000 levels) is not JSON
// either: the validator on the hot path took it, and parking it (an
// encoding/json record) failed every time, likewise.
func TestReceiverNonJSONPublicationIsParked(t *testing.T) {
	deep := strings.Repeat("[", 10001) + strings.Repeat("]", 10001)
	for _, c := range []struct {
		inProc bool
		data   string
	}{{false, "not json \xff"}, {true, "not json \xff"}, {false, deep}, {true, deep}} {
		inProc := c.inProc
		t.Run(fmt.Sprintf("inproc=%v/%d bytes", inProc, len(c.data)), func(t *testing.T) {
			pub := newTestNode(t, withQuietLog())
			sub := newTestNode(t, withQuietLog(), withLimits(func(l *node.LimitsConfig) {
				l.ReceiverRetries = 1
				l.ReceiverBackoff = time.Millisecond
			}))
			ran := filepath.Join(t.TempDir(), "ran")
			if inProc {
				var mu sync.Mutex
				if err := sub.RegisterReceiver("rec", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
					mu.Lock()
					defer mu.Unlock()
					f, err := os.OpenFile(ran, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
					if err != nil {
						return nil, err
					}
					defer f.Close()
					_, err = fmt.Fprintln(f, node.InvocationFrom(ctx).Sequence)
					return nil, err
				}); err != nil {
					t.Fatal(err)
				}
			} else {
				writeReceiver(t, sub, "rec", "#!/bin/sh\ncat >/dev/null\necho $COATTAIL_SEQUENCE >> "+ran+"\n")
			}
			id := uuid.NewString()
			bad := dlv(id, 1)
			bad.Data = []byte(c.data)
			c1, _ := scriptedSubscribe(t, pub, sub, id, deliverFrame(bad, dlv(id, 2)))
			// The subscriber acks 2 on this stream once 1 is parked and 2 ran.
			for {
				_ = c1.s.SetReadDeadline(time.Now().Add(testTimeout))
				typ, payload, err := c1.r.Next()
				if err != nil {
					t.Fatalf("no ack for seq 2 on the first stream (%v); receiver ran %v", err, readLines(t, ran))
				}
				if typ != wire.TAck {
					continue
				}
				_, seq, err := wire.DecodeAck(payload)
				if err != nil {
					t.Fatal(err)
				}
				if seq == 2 {
					break
				}
			}
			if got := readLines(t, ran); len(got) != 1 || got[0] != "2" {
				t.Fatalf("receiver ran for %v, want [2] (seq 1 is not JSON)", got)
			}
			dl, err := allDeadLetters(testCtx(t), sub)
			if err != nil {
				t.Fatal(err)
			}
			if len(dl) != 1 || dl[0].Seq != 1 || !strings.Contains(dl[0].Error, "JSON") {
				t.Fatalf("dead letters = %+v, want seq 1, not JSON", dl)
			}
			// Replaying it fails the same way and keeps it; dropping it works.
			if err := sub.ReplayDeadLetter(testCtx(t), dl[0].ID, nil); err == nil || !strings.Contains(err.Error(), "JSON") {
				t.Fatalf("replay of a publication that is not JSON = %v, want a JSON error", err)
			}
			if err := sub.DropDeadLetter(testCtx(t), dl[0].ID); err != nil {
				t.Fatal(err)
			}
			if dl, _ := allDeadLetters(testCtx(t), sub); len(dl) != 0 {
				t.Fatalf("dead letters after drop: %+v", dl)
			}
		})
	}
}

// A receiver's output is not used: one that exits 0 after printing
// something that is not JSON handled its publication. It was taken for a
// failure, run again for every retry (repeating whatever it did) and
// parked.
func TestReceiverNonJSONOutputIsNotRetried(t *testing.T) {
	pub := newTestNode(t, withQuietLog())
	sub := newTestNode(t, withQuietLog(), withLimits(func(l *node.LimitsConfig) {
		l.ReceiverRetries = 2
		l.ReceiverBackoff = time.Millisecond
	}))
	ran := filepath.Join(t.TempDir(), "ran")
	writeReceiver(t, sub, "chatty", "#!/bin/sh\ncat >/dev/null\necho $COATTAIL_SEQUENCE >> "+ran+"\necho handled it\n")
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"out.>"}})
	ctx := testCtx(t)
	if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "out.>", Receiver: "chatty"}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{`1`, `2`} {
		if _, err := pub.Publish(ctx, "out.x", json.RawMessage(d)); err != nil {
			t.Fatal(err)
		}
	}
	// In order: once 2 ran, 1 is finished, retries and all.
	checkFor(t, testTimeout, 20*time.Millisecond, func() error {
		if got := readLines(t, ran); len(got) == 0 || got[len(got)-1] != "2" {
			return fmt.Errorf("receiver ran %v", got)
		}
		return nil
	})
	if got := readLines(t, ran); strings.Join(got, ",") != "1,2" {
		t.Fatalf("receiver ran for %v, want once for each of 1,2", got)
	}
	if dl, err := allDeadLetters(ctx, sub); err != nil || len(dl) != 0 {
		t.Fatalf("dead letters = %+v, %v; want none", dl, err)
	}
}

// A replayed receiver that exits 0 after printing something that is not
// JSON succeeded: the dead letter goes. It stayed, with one more attempt.
func TestReplayNonJSONOutputSucceeds(t *testing.T) {
	pub := newTestNode(t, withQuietLog())
	sub := newTestNode(t, withQuietLog(), withLimits(func(l *node.LimitsConfig) {
		l.ReceiverRetries = 0
		l.ReceiverBackoff = time.Millisecond
	}))
	dir := t.TempDir()
	ran, ok := filepath.Join(dir, "ran"), filepath.Join(dir, "ok")
	writeReceiver(t, sub, "flaky", "#!/bin/sh\ncat >/dev/null\necho $COATTAIL_SEQUENCE >> "+ran+
		"\n[ -e "+ok+" ] || { echo not yet >&2; exit 1; }\necho fine now\n")
	ctx := testCtx(t)
	parked := parkOne(t, pub, sub, "rp.>", "flaky", "rp.x", `{"n":1}`)
	if err := os.WriteFile(ok, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sub.ReplayDeadLetter(ctx, parked.ID, nil); err != nil {
		t.Fatalf("replay of a receiver that exits 0 = %v, want success", err)
	}
	if left, err := allDeadLetters(ctx, sub); err != nil || len(left) != 0 {
		t.Fatalf("dead letters after a successful replay = %+v, %v", left, err)
	}
	if got := readLines(t, ran); len(got) != 2 {
		t.Fatalf("receiver ran %d times, want 2 (delivery, replay)", len(got))
	}
}

// A drop while the dead letter is being replayed is refused: the replay
// decides. It was let through: when the replay then failed, its record of
// the failure brought the dropped dead letter back.
func TestDropDuringReplayIsRefused(t *testing.T) {
	pub := newTestNode(t, withQuietLog())
	sub := newTestNode(t, withQuietLog(), withLimits(func(l *node.LimitsConfig) {
		l.ReceiverRetries = 0
		l.ReceiverBackoff = time.Millisecond
	}))
	var mu sync.Mutex
	calls := 0
	entered, release := make(chan struct{}, 1), make(chan struct{})
	if err := sub.RegisterReceiver("rec", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		if n == 2 { // the replay
			entered <- struct{}{}
			<-release
		}
		return nil, fmt.Errorf("failure %d", n)
	}); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	parked := parkOne(t, pub, sub, "dr.>", "rec", "dr.a", `1`)
	done := make(chan error, 1)
	go func() { done <- sub.ReplayDeadLetter(ctx, parked.ID, nil) }()
	<-entered
	dropErr := sub.DropDeadLetter(ctx, parked.ID)
	close(release)
	if err := <-done; err == nil || !strings.Contains(err.Error(), "failure 2") {
		t.Fatalf("replay = %v, want the receiver's second failure", err)
	}
	left, err := allDeadLetters(ctx, sub)
	if err != nil {
		t.Fatal(err)
	}
	if dropErr == nil && len(left) != 0 {
		t.Fatalf("a drop during a replay succeeded, yet the failed replay brought the dead letter back: %+v", left)
	}
	var le *localapi.Error
	if !errors.As(dropErr, &le) || le.Code != localapi.CodeConflict {
		t.Fatalf("drop during a replay = %v, want a conflict", dropErr)
	}
	if len(left) != 1 || left[0].Attempts != parked.Attempts+1 {
		t.Fatalf("dead letters after the refused drop and failed replay = %+v, want the entry with one more attempt", left)
	}
	// Once the replay is over, the drop works.
	if err := sub.DropDeadLetter(ctx, parked.ID); err != nil {
		t.Fatal(err)
	}
	if left, _ := allDeadLetters(ctx, sub); len(left) != 0 {
		t.Fatalf("dead letters after drop: %+v", left)
	}
}

// A delivery whose subject the subscription's pattern does not match (a
// faulty or lying publisher) does not run the receiver: it is parked,
// saying why, and the publications behind it run.
func TestDeliveryOutsideThePatternIsParked(t *testing.T) {
	pub, sub := newTestNode(t, withQuietLog()), newTestNode(t, withQuietLog())
	var mu sync.Mutex
	var ran []string
	if err := sub.RegisterReceiver("rec", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		mu.Lock()
		defer mu.Unlock()
		ran = append(ran, node.InvocationFrom(ctx).Subject)
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	id := uuid.NewString()
	other := dlv(id, 2)
	other.Subject = "g.x"
	third := dlv(id, 3)
	third.Subject = "f.b"
	c1, _ := scriptedSubscribe(t, pub, sub, id, deliverFrame(dlv(id, 1), other, third))
	for {
		_ = c1.s.SetReadDeadline(time.Now().Add(testTimeout))
		typ, payload, err := c1.r.Next()
		if err != nil {
			t.Fatalf("no ack for seq 3: %v", err)
		}
		if typ != wire.TAck {
			continue
		}
		if _, seq, err := wire.DecodeAck(payload); err != nil || seq == 3 {
			break
		}
	}
	mu.Lock()
	if strings.Join(ran, ",") != "f.a,f.b" {
		t.Fatalf("the receiver ran for %v, want f.a and f.b only", ran)
	}
	mu.Unlock()
	dl, err := allDeadLetters(testCtx(t), sub)
	if err != nil {
		t.Fatal(err)
	}
	if len(dl) != 1 || dl[0].Seq != 2 || dl[0].Subject != "g.x" || !strings.Contains(dl[0].Error, "does not match") {
		t.Fatalf("dead letters %+v, want seq 2 (g.x) parked as outside the pattern", dl)
	}
}

// Subscribing a receiver that cannot run (not executable, a directory) is
// refused, saying why: it was accepted, and every publication went
// straight to the dead letters. A missing one is refused as before.
func TestSubscribeRefusesReceiverThatCannotRun(t *testing.T) {
	ctx := testCtx(t)
	pub, sub := newTestNode(t, withQuietLog()), newTestNode(t, withQuietLog())
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{">"}})
	if err := os.WriteFile(filepath.Join(sub.Dir(), "receivers", "noexec"), []byte("#!/bin/sh\ncat\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(sub.Dir(), "receivers", "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	for rec, want := range map[string]string{"noexec": "chmod +x", "dir": "is a directory", "missing": `no receiver "missing" here`} {
		_, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "a.>", Receiver: rec})
		if !errors.Is(err, node.ErrBadRequest) || !strings.Contains(err.Error(), want) {
			t.Errorf("subscribe receiver %s: %v, want a bad request saying %q", rec, err, want)
		}
	}
	if subs, err := sub.Subscriptions(ctx); err != nil || len(subs) != 0 {
		t.Fatalf("subscriptions %+v, %v; want none", subs, err)
	}
	if s := pub.Subscribers(); len(s) != 0 {
		t.Fatalf("subscribers at the publisher %+v, want none", s)
	}
	writeReceiver(t, sub, "ok", "#!/bin/sh\ncat >/dev/null\n")
	if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "a.>", Receiver: "ok"}); err != nil {
		t.Fatalf("subscribe an executable receiver: %v", err)
	}
}

// Dropping a dead letter deletes a publication for good: the service log
// says so, naming it, as it says when one is replayed. It said nothing.
func TestDropDeadLetterIsLogged(t *testing.T) {
	pub := newTestNode(t, withQuietLog())
	var logs syncBuffer
	sub := newTestNode(t, func(o *node.Options) {
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		o.Config.Limits.ReceiverRetries = 0
		o.Config.Limits.ReceiverBackoff = time.Millisecond
	})
	if err := sub.RegisterReceiver("rec", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		return nil, errors.New("always fails")
	}); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	parked := parkOne(t, pub, sub, "dl.>", "rec", "dl.a", `1`)
	if strings.Contains(logs.String(), "dead letter dropped") {
		t.Fatalf("the log says a dead letter was dropped before any was:\n%s", logs.String())
	}
	if err := sub.DropDeadLetter(ctx, parked.ID); err != nil {
		t.Fatal(err)
	}
	var line string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "dead letter dropped") {
			line = l
		}
	}
	for _, want := range []string{"id=" + parked.ID, "subject=dl.a", "seq=1", "publisher=" + pub.Host().ID().String()} {
		if !strings.Contains(line, want) {
			t.Fatalf("drop log line %q lacks %q; log:\n%s", line, want, logs.String())
		}
	}
}
