package node_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
)

// A publication pushed into a full queue under drop_oldest says how many
// undelivered entries it pushed out, also to a remote caller: publish
// 1.2.0 and perform 1.1.0 carry it in their answers (dropped). JSON
// decoding is strict, so an older caller (publish 1.1.0 or 1.0.0, perform
// 1.0.0) must get answers without the key: it would refuse them as
// malformed, after the publications were stored.
func TestDroppedReportedToNewCallersOnly(t *testing.T) {
	a := dropOldestPublisher(t)
	h := newStockHost(t, a)
	tok := issue(t, a, localapi.IssueRequest{Publish: []string{"d.x"}, Perform: []string{"d.x"}, Bearers: []string{"vt://" + h.ID().String()}})
	hello := func(proto string) (*wire.Writer, *wire.Reader) {
		t.Helper()
		s := rawStream(t, h, a, proto)
		w, r := wire.NewWriter(s), wire.NewReader(s, 1<<20)
		if err := w.JSON(wire.THello, wire.Hello{Token: tok.Token, Version: wire.VersionOf(proto)}); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		rvExpect(t, r, wire.TOK, nil)
		return w, r
	}
	// Answers as a caller of each version decodes them, strictly.
	type oldPublishResult struct {
		Accepted  int    `json:"accepted"`
		LastSeq   uint64 `json:"last_seq"`
		Published int    `json:"published"`
	}
	type oldPerformResult struct {
		Output    json.RawMessage `json:"output,omitempty"`
		Published int             `json:"published"`
	}
	publish := func(proto string, into any) {
		t.Helper()
		w, r := hello(proto)
		// Three into a full queue of two (the first: into an empty one).
		if err := w.Frame(wire.TPublish, wire.AppendPublishBatch(nil, []wire.Publication{
			{Subject: "d.x", Data: []byte(`1`), Time: 1}, {Subject: "d.x", Data: []byte(`2`), Time: 1}, {Subject: "d.x", Data: []byte(`3`), Time: 1},
		})); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		rvExpect(t, r, wire.TResult, into)
	}
	perform := func(proto string, into any) {
		t.Helper()
		w, r := hello(proto)
		if err := w.JSON(wire.TRequest, wire.PerformRequest{Action: "d.x", Input: json.RawMessage(`4`), Notify: true}); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		rvExpect(t, r, wire.TResult, into)
	}

	var first wire.PublishResult
	publish(wire.ProtoPublish12, &first)
	if want := (wire.PublishResult{Accepted: 3, LastSeq: 3, Published: 3, Dropped: 1}); first != want {
		t.Fatalf("publish 1.2.0 of 3 into an empty queue bound to 2: %+v, want %+v", first, want)
	}
	for _, proto := range []string{wire.ProtoPublish12, wire.ProtoPublish13} {
		var res wire.PublishResult
		publish(proto, &res)
		if want := (wire.PublishResult{Accepted: 3, LastSeq: 3, Published: 3, Dropped: 3}); res != want {
			t.Fatalf("%s of 3 into a full queue bound to 2: %+v, want %+v", proto, res, want)
		}
	}
	for _, proto := range []string{wire.ProtoPublish11, wire.ProtoPublish} {
		var old oldPublishResult
		publish(proto, &old) // fails on an unknown key
		if want := (oldPublishResult{Accepted: 3, LastSeq: 3, Published: 3}); old != want {
			t.Fatalf("%s: %+v, want %+v", proto, old, want)
		}
	}
	var pr wire.PerformResult
	perform(wire.ProtoPerform11, &pr)
	if pr.Published != 1 || pr.Dropped != 1 || string(pr.Output) != `4` {
		t.Fatalf("perform 1.1.0 --notify into a full queue: %+v, want output 4, published 1, dropped 1", pr)
	}
	var opr oldPerformResult
	perform(wire.ProtoPerform, &opr) // fails on an unknown key
	if opr.Published != 1 {
		t.Fatalf("perform 1.0.0 --notify: %+v, want published 1", opr)
	}
	if c := a.Status().Counters.Dropped; c != 1+3+3+3+3+1+1 {
		t.Fatalf("counters.dropped = %d, want %d", c, 1+3+3+3+3+1+1)
	}

	// A caller node offers the newest versions and reports the count; to
	// a peer that has only the older ones it falls back, without it.
	b := newTestNode(t)
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Publish: []string{"d.x"}, Perform: []string{"d.x"}})
	ctx := testCtx(t)
	got, err := b.PublishRequest(ctx, localapi.PublishRequest{Peer: pid, Action: "d.x", Batch: []json.RawMessage{json.RawMessage(`5`), json.RawMessage(`6`)}})
	if err != nil || got != (localapi.PublishResult{Published: 2, Dropped: 2}) {
		t.Fatalf("publish --peer of 2 into the full queue: %+v, %v; want published 2, dropped 2", got, err)
	}
	p, err := b.Perform(ctx, localapi.PerformRequest{Peer: pid, Action: "d.x", Input: json.RawMessage(`7`), Notify: true}, nil)
	if err != nil || p.Published != 1 || p.Dropped != 1 {
		t.Fatalf("perform --peer --notify into the full queue: %+v, %v; want published 1, dropped 1", p, err)
	}
	old := dropOldestPublisher(t)
	old.Host().RemoveStreamHandler(wire.ProtoPublish12)
	old.Host().RemoveStreamHandler(wire.ProtoPublish13)
	old.Host().RemoveStreamHandler(wire.ProtoPerform11)
	pid, _ = connectPeers(t, old, b, localapi.IssueRequest{Publish: []string{"d.x"}, Perform: []string{"d.x"}})
	// Full, then one more: it drops one, which b is not told.
	if _, err := b.PublishRequest(ctx, localapi.PublishRequest{Peer: pid, Action: "d.x", Batch: []json.RawMessage{json.RawMessage(`1`), json.RawMessage(`2`)}}); err != nil {
		t.Fatal(err)
	}
	got, err = b.PublishRequest(ctx, localapi.PublishRequest{Peer: pid, Action: "d.x", Data: json.RawMessage(`8`)})
	if err != nil || got != (localapi.PublishResult{Published: 1}) {
		t.Fatalf("publish --peer to a peer without publish 1.2.0: %+v, %v; want published 1, dropped not told", got, err)
	}
	p, err = b.Perform(ctx, localapi.PerformRequest{Peer: pid, Action: "d.x", Input: json.RawMessage(`9`), Notify: true}, nil)
	if err != nil || p.Published != 1 || p.Dropped != 0 {
		t.Fatalf("perform --peer --notify at a peer without perform 1.1.0: %+v, %v; want published 1, dropped not told", p, err)
	}
	if c := old.Status().Counters.Dropped; c != 2 {
		t.Fatalf("the older peer's counters.dropped = %d, want 2", c)
	}
}

// dropOldestPublisher is a node with queues bound to 2 under drop_oldest,
// an action d.x that echoes its input, and a subscription to d.x whose
// subscriber is away, so that what is published to it stays queued.
func dropOldestPublisher(t *testing.T) *node.Node {
	t.Helper()
	a := newTestNode(t, withLimits(func(l *node.LimitsConfig) {
		l.QueueBound = 2
		l.QueueFull = node.QueueFullDropOldest
	}))
	if err := a.RegisterAction("d.x", func(_ context.Context, in json.RawMessage) (json.RawMessage, error) { return in, nil }); err != nil {
		t.Fatal(err)
	}
	prSubscriber(t, a, "d.x")
	return a
}
