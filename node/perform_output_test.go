package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
)

// A remote action whose output is over limits.max_output is refused with
// too_large (PROTOCOL.md: "output limit (too_large)"; it was answered
// action_failed), and one exactly at the limit is returned.
func TestRemotePerformOutputLimitCode(t *testing.T) {
	a := newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.MaxOutput = 1024 }))
	b := newTestNode(t)
	// Executables: one exactly at the limit, one a byte over it.
	writeAction(t, a, "full", `#!/bin/sh
printf '"%s"' "$(head -c 1022 /dev/zero | tr '\0' 'a')"`)
	writeAction(t, a, "over", `#!/bin/sh
printf '"%s"' "$(head -c 1023 /dev/zero | tr '\0' 'a')"`)
	register(t, a, "inproc.over", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		return json.RawMessage(`"` + strings.Repeat("b", 1023) + `"`), nil
	})
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})
	ctx := testCtx(t)
	res, err := perform(ctx, b, pid, "full", `1`)
	if err != nil || len(res.Output) != 1024 {
		t.Fatalf("output of exactly max_output: %d bytes, %v", len(res.Output), err)
	}
	for _, name := range []string{"over", "inproc.over"} {
		_, err = perform(ctx, b, pid, name, `1`)
		wantWireCode(t, err, wire.CodeTooLarge)
	}
}

// With --notify, a remote perform queues its output exactly once for each
// matching subscription of the remote, and its receiver runs once.
func TestRemotePerformNotifyPublishesOnce(t *testing.T) {
	a, b, sub := newTestNode(t), newTestNode(t), newTestNode(t)
	var echo, got counter
	register(t, a, "orders.created", echo.handler)
	if err := sub.RegisterReceiver("rec", got.handler); err != nil {
		t.Fatal(err)
	}
	spid, _ := connectPeers(t, a, sub, localapi.IssueRequest{Subscribe: []string{"orders.>"}})
	ctx := testCtx(t)
	if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: spid, Pattern: "orders.>", Receiver: "rec"}); err != nil {
		t.Fatal(err)
	}
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{"orders.>"}, Publish: []string{"orders.>"}})
	res, err := b.Perform(ctx, localapi.PerformRequest{Peer: pid, Action: "orders.created", Input: json.RawMessage(`{"id":1}`), Notify: true}, nil)
	if err != nil || res.Published != 1 || string(res.Output) != `{"id":1}` {
		t.Fatalf("remote perform --notify = %+v, %v; want the output published to 1 subscription", res, err)
	}
	checkFor(t, testTimeout, 10*time.Millisecond, func() error {
		if got.count() != 1 {
			return fmt.Errorf("receiver ran %d times, want 1", got.count())
		}
		return nil
	})
	if echo.count() != 1 {
		t.Errorf("action ran %d times, want 1", echo.count())
	}
	// A perform without --notify publishes nothing: a second publication
	// (there must be none) would reach the receiver before this one.
	if _, err := b.Perform(ctx, localapi.PerformRequest{Peer: pid, Action: "orders.created", Input: json.RawMessage(`{"id":2}`)}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Publish(ctx, "orders.marker", json.RawMessage(`"marker"`)); err != nil {
		t.Fatal(err)
	}
	checkFor(t, testTimeout, 10*time.Millisecond, func() error {
		if got.count() < 2 {
			return fmt.Errorf("receiver ran %d times, want the marker too", got.count())
		}
		return nil
	})
	if got.count() != 2 {
		t.Errorf("receiver ran %d times, want 2 (one perform --notify, one marker)", got.count())
	}
}

// A remote action whose output is larger than the caller's frames (its
// max_payload is smaller than the performer's max_output): the caller is
// told the action ran and which limit to raise, not only that a frame was
// too large.
func TestRemotePerformOutputOverCallerLimit(t *testing.T) {
	a := newTestNode(t)
	b := newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.MaxPayload = 4 << 10 }))
	var ran counter
	register(t, a, "big", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		ran.handler(ctx, in)
		return json.RawMessage(`"` + strings.Repeat("b", 200<<10) + `"`), nil
	})
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})
	_, err := perform(testCtx(t), b, pid, "big", `1`)
	if err == nil || !strings.Contains(err.Error(), "the action ran on") || !strings.Contains(err.Error(), "limits.max_payload") {
		t.Fatalf("perform with output over the caller's frames: %v, want it to say the action ran and to name limits.max_payload", err)
	}
	if n := ran.count(); n != 1 {
		t.Errorf("action ran %d times", n)
	}
}
