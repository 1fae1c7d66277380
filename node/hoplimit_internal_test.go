package node

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/runner"
)

// A refused cascade marks only the receiver run it names, and only when
// the request proves it comes from one of this node's receivers (the key
// of COATTAIL_RUN), at the hop that run's cascade has; the mark counts
// once, for a failure while it is fresh. Anything else (another local
// process's request, a stale environment, another error) leaves every
// delivery to its retries.
func TestHopRefusalsMarkOnlyTheirRun(t *testing.T) {
	n := &Node{hops: newHopRefusals(time.Minute)}
	refused := fmt.Errorf("%w: refused", ErrHopLimit)
	run := func(key, sub string, seq uint64) *localapi.ReceiverRun {
		return &localapi.ReceiverRun{Key: key, Subscription: sub, Sequence: seq}
	}
	bg := context.Background()

	// Not from a receiver of this node, or not a hop-limit refusal.
	n.noteHopLimit(bg, refused, run("forged", "s", 7), "perform", "x", 4)
	n.noteHopLimit(bg, refused, run("", "s", 7), "perform", "x", 4)
	n.noteHopLimit(bg, refused, nil, "perform", "x", 4)
	n.noteHopLimit(bg, errors.New("other"), run(n.hops.key, "s", 7), "perform", "x", 4)
	n.noteHopLimit(bg, refused, run(n.hops.key, "", 7), "perform", "x", 4)
	actionCtx := context.WithValue(bg, invocationKey{}, &Invocation{Kind: string(runner.KindAction), Subscription: "s", Sequence: 7})
	n.noteHopLimit(actionCtx, refused, nil, "perform", "x", 4)
	if _, ok := n.hops.take("s", 7, 3); ok || len(n.hops.m) != 0 {
		t.Fatalf("requests that name no run of this node marked one: %v", n.hops.m)
	}

	// From a receiver: only the run it names, at its hop, once.
	n.noteHopLimit(bg, refused, run(n.hops.key, "s", 7), "perform", "x", 4)
	for _, c := range []struct {
		sub string
		seq uint64
	}{{"s", 8}, {"t", 7}} {
		if _, ok := n.hops.take(c.sub, c.seq, 3); ok {
			t.Errorf("the refusal for s/7 marked %s/%d", c.sub, c.seq)
		}
	}
	if f, ok := n.hops.take("s", 7, 3); !ok || f.op != "perform" || f.subject != "x" || f.hop != 4 {
		t.Errorf("take s/7 at hop 3 = %+v, %v; want the refused perform of x at hop 4", f, ok)
	}
	if _, ok := n.hops.take("s", 7, 3); ok {
		t.Error("a refusal counted twice")
	}

	// Not at the hop the run's cascade has: not that publication's limit.
	n.noteHopLimit(bg, refused, run(n.hops.key, "s", 7), "publish", "x", 9)
	if _, ok := n.hops.take("s", 7, 3); ok {
		t.Error("a refusal at hop 9 marked the run of a publication at hop 3")
	}

	// An in-process receiver's run is named by its ctx.
	recv := &receiverCtx{Context: bg, inv: Invocation{Kind: string(runner.KindReceiver), Subscription: "s", Sequence: 9, Hop: 3}}
	n.noteHopLimit(recv, refused, run("forged", "other", 1), "publish", "y", 4)
	if f, ok := n.hops.take("s", 9, 3); !ok || f.subject != "y" {
		t.Errorf("in-process receiver's refusal: take = %+v, %v", f, ok)
	}

	// Stale: older than a run lasts.
	n.hops.note(hopRun{sub: "s", seq: 10}, hopRefusal{op: "perform", subject: "x", hop: 4, at: time.Now().Add(-2 * n.hops.maxAge)})
	if _, ok := n.hops.take("s", 10, 3); ok {
		t.Error("a stale refusal counted")
	}

	// Bounded, however many runs are refused without failing.
	for i := range maxHopRefusals + 100 {
		n.noteHopLimit(bg, refused, run(n.hops.key, "s", uint64(i)), "perform", "x", 4)
	}
	if len(n.hops.m) > maxHopRefusals {
		t.Errorf("%d refusals kept, want at most %d", len(n.hops.m), maxHopRefusals)
	}
}
