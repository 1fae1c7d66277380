package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
)

// flSubscribe subscribes sub's in-process receiver "rec" (h) to "p.>" at
// pub.
func flSubscribe(t *testing.T, pub, sub *node.Node, h node.Handler) {
	t.Helper()
	if err := sub.RegisterReceiver("rec", h); err != nil {
		t.Fatal(err)
	}
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"p.>"}})
	if _, err := sub.Subscribe(testCtx(t), localapi.SubscribeRequest{Peer: pid, Pattern: "p.>", Receiver: "rec"}); err != nil {
		t.Fatal(err)
	}
}

// parkedAmongSmall publishes <prefix>.a 1, then big on <prefix>.big, then
// <prefix>.a 3, waits until the publisher has all three acked, checks that
// the receiver rec ran for the two small ones, in order, and that sub
// parked big as its one dead letter, without its data (too_large its
// size), and returns that dead letter.
func parkedAmongSmall(t *testing.T, pub, sub *node.Node, rec *flRecorder, prefix string, big json.RawMessage) localapi.DeadLetter {
	t.Helper()
	ctx := testCtx(t)
	for _, m := range []node.Message{{Subject: prefix + ".a", Data: json.RawMessage(`1`)}, {Subject: prefix + ".big", Data: big}, {Subject: prefix + ".a", Data: json.RawMessage(`3`)}} {
		if _, err := pub.PublishBatch(ctx, []node.Message{m}); err != nil {
			t.Fatal(err)
		}
	}
	checkFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if s := pub.Subscribers(); len(s) != 1 || s[0].Acked != 3 {
			return fmt.Errorf("subscribers at the publisher: %+v; want all 3 publications acked", s)
		}
		return nil
	})
	if got := rec.runs(); strings.Join(got, ",") != "1 1,3 3" {
		t.Fatalf("the receiver ran for %q, want the two small publications, in order", got)
	}
	list, err := sub.DeadLetters(ctx, localapi.DeadLetterQuery{Data: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.DeadLetters) != 1 {
		t.Fatalf("dead letters %+v, want the large publication", list.DeadLetters)
	}
	d := list.DeadLetters[0]
	if d.Seq != 2 || d.Subject != prefix+".big" || d.TooLarge != uint64(len(big)) || d.Data != nil {
		t.Fatalf("dead letter %+v; want seq 2, %s.big, too_large %d, no data", d, prefix, len(big))
	}
	return d
}

// flRecorder is an in-process receiver recording "<seq> <input>" per run
// (with short, only the input's characters 1 to 4).
type flRecorder struct {
	mu    sync.Mutex
	got   []string
	short bool
}

func (r *flRecorder) handle(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
	s := string(in)
	if r.short {
		s = s[1:5]
	}
	r.mu.Lock()
	r.got = append(r.got, fmt.Sprintf("%d %s", node.InvocationFrom(ctx).Sequence, s))
	r.mu.Unlock()
	return nil, nil
}

func (r *flRecorder) runs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// A subscriber whose limits.max_payload is small reads small frames: the
// publisher packs its deliveries to fit them. It used to send frames of up
// to 256 KiB of publications, which such a subscriber refused, and then
// the same frame again after every reconnect: nothing was ever delivered.
func TestSmallSubscriberFrameLimit(t *testing.T) {
	pub := newTestNode(t)
	sub := newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.MaxPayload = 1024 }))
	rec := &flRecorder{short: true}
	flSubscribe(t, pub, sub, rec.handle)
	ctx := testCtx(t)
	// Queued while the subscriber is away, so that they go out as a
	// backlog, in frames as large as the publisher makes them.
	if err := sub.Host().Network().ClosePeer(pub.ID()); err != nil {
		t.Fatal(err)
	}
	const total = 2000
	msgs := make([]node.Message, total)
	want := make([]string, total)
	for i := range msgs {
		msgs[i] = node.Message{Subject: "p.a", Data: json.RawMessage(fmt.Sprintf(`"%04d%s"`, i, strings.Repeat("x", 500)))}
		want[i] = fmt.Sprintf("%d %04d", i+1, i)
	}
	if _, err := pub.PublishBatch(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if n := len(rec.runs()); n < total {
			return fmt.Errorf("the subscriber processed %d of %d publications", n, total)
		}
		return nil
	})
	if got := rec.runs(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("processed %d publications, not each once in order", len(got))
	}
}

// A publication larger than the subscriber accepts (the publisher allows
// more than it does) is sent without its data and parked at the
// subscriber as a dead letter that says so; it used to be refused and sent
// again for ever, holding back every publication after it. It cannot be
// replayed, only dropped.
func TestPublicationTooLargeForSubscriberIsParked(t *testing.T) {
	pub := newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.MaxPayload = 4 << 20 }))
	sub := newTestNode(t)
	rec := &flRecorder{}
	flSubscribe(t, pub, sub, rec.handle)
	ctx := testCtx(t)
	big := json.RawMessage(`"` + strings.Repeat("y", 2<<20) + `"`)
	d := parkedAmongSmall(t, pub, sub, rec, "p", big)
	if !strings.Contains(d.Error, "larger than this instance accepts") {
		t.Fatalf("dead letter %+v; want an error saying it is larger than this instance accepts", d)
	}
	if summary, err := sub.DeadLetters(ctx, localapi.DeadLetterQuery{}); err != nil || len(summary.DeadLetters) != 1 || summary.DeadLetters[0].TooLarge != uint64(len(big)) {
		t.Fatalf("dead letters without data: %+v, %v; want too_large there too", summary, err)
	}
	err := sub.ReplayDeadLetter(ctx, d.ID, nil)
	if err == nil || !strings.Contains(err.Error(), "cannot be replayed") {
		t.Fatalf("replay of a publication that never arrived = %v, want a clear refusal", err)
	}
	if err := sub.DropDeadLetter(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
}

// A remote publish to a peer whose limits.max_payload is small packs its
// frames to the limit the peer tells in its answer to the hello. It used
// to pack 1 MiB, which such a peer refused (too_large) after storing
// nothing but the first frames' worth.
func TestRemotePublishFitsPeerFrameLimit(t *testing.T) {
	a := newTestNode(t, withQuietLog(), withLimits(func(l *node.LimitsConfig) { l.MaxPayload = 1024 }))
	b := newTestNode(t, withQuietLog())
	prSubscriber(t, a, "q.>")
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Publish: []string{">"}})
	batch := jsonBatch(3000, 500)
	res, err := b.PublishRequest(testCtx(t), localapi.PublishRequest{Peer: pid, Action: "q.a", Batch: batch})
	if err != nil {
		t.Fatal(err)
	}
	if res.Published != 3000 {
		t.Fatalf("published %d queue entries, want 3000", res.Published)
	}
	if d := prDepth(t, a); d != 3000 {
		t.Fatalf("queued %d at the peer, want 3000", d)
	}
}

// Subscribe and publish are served in 1.0.0 beside 1.1.0 (PROTOCOL.md,
// "Versioning"): a 1.0.0 subscriber gets the 1.0.0 layout, in which the
// answer to its hello is {} and a publication too large for the default
// frame still comes whole (mode 2 is 1.1.0's), and max_frame is not a key
// of its request; on 1.1.0 the answer says the acceptor's max_frame, and a
// hello naming another version is refused.
func TestSubscribeVersionsSideBySide(t *testing.T) {
	a := newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.MaxPayload = 4 << 20 }))
	h := newStockHost(t, a)
	tok := issue(t, a, localapi.IssueRequest{Subscribe: []string{"v.>"}, Publish: []string{"v.>"}, Bearers: []string{"vt://" + h.ID().String()}})
	hello := func(v string) []byte { return jsonFrame(t, wire.THello, wire.Hello{Token: tok.Token, Version: v}) }

	// 1.0.0: {} in answer to the hello; max_frame refused.
	s := rawStream(t, h, a, wire.ProtoSubscribe)
	rvWrite(t, s, hello(wire.Version), jsonFrame(t, wire.TRequest, wire.SubscribeRequest{Pattern: "v.>", Receiver: "r", MaxFrame: 1 << 30}))
	r := wire.NewReader(s, 0)
	if typ, payload, err := r.Next(); err != nil || typ != wire.TOK || string(payload) != "{}" {
		t.Fatalf("1.0.0 hello answered %s %q, %v; want TOK {}", typ, payload, err)
	}
	rvExpectCode(t, r, wire.CodeBadRequest)

	s = rawStream(t, h, a, wire.ProtoSubscribe)
	rvWrite(t, s, hello(wire.Version), jsonFrame(t, wire.TRequest, wire.SubscribeRequest{Pattern: "v.>", Receiver: "r"}))
	r = wire.NewReader(s, 8<<20)
	rvExpect(t, r, wire.TOK, nil)
	rvExpect(t, r, wire.TResult, nil)
	big := json.RawMessage(`"` + strings.Repeat("z", 2<<20) + `"`)
	if _, err := a.Publish(testCtx(t), "v.big", big); err != nil {
		t.Fatal(err)
	}
	_ = s.SetReadDeadline(time.Now().Add(20 * time.Second))
	typ, payload, err := r.Next()
	if err != nil || typ != wire.TDeliver {
		t.Fatalf("got %s, %v; want a delivery", typ, err)
	}
	if err := wire.DecodeDeliveries(payload, func(d *wire.Delivery) error {
		if d.Omitted != 0 || len(d.Data) != len(big) {
			t.Errorf("a 1.0.0 subscriber got %d bytes, omitted %d; want the publication whole", len(d.Data), d.Omitted)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	_ = s.Reset()

	// 1.1.0 (and publish 1.2.0, 1.3.0): the answer says max_frame; a hello
	// naming 1.0.0 is refused.
	for _, proto := range []string{wire.ProtoSubscribe11, wire.ProtoPublish11, wire.ProtoPublish12, wire.ProtoPublish13} {
		s = rawStream(t, h, a, proto)
		rvWrite(t, s, hello(wire.VersionOf(proto)))
		var ok wire.OK
		rvExpect(t, wire.NewReader(s, 0), wire.TOK, &ok)
		if ok.MaxFrame != 4<<20+64<<10 {
			t.Fatalf("%s: hello answered max_frame %d, want max_payload + 64 KiB", proto, ok.MaxFrame)
		}
		s = rawStream(t, h, a, proto)
		rvWrite(t, s, hello(wire.Version))
		rvExpectCode(t, wire.NewReader(s, 0), wire.CodeVersion)
	}
}

// A publication larger than the subscriber's max_payload that still fits
// its frames (max_payload + 64 KiB) is parked the same way, without
// running the receiver: it used to run it (an in-process receiver got
// more than the limit; the runner refused it to an executable one, which
// was retried and parked with its data, never to replay).
func TestPublicationOverSubscriberMaxPayloadIsParked(t *testing.T) {
	pub := newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.MaxPayload = 4 << 20 }))
	sub := newTestNode(t)
	var c counter
	flSubscribe(t, pub, sub, c.handler)
	ctx := testCtx(t)
	over := json.RawMessage(`"` + strings.Repeat("y", 1<<20+10<<10) + `"`)
	if _, err := pub.Publish(ctx, "p.over", over); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(ctx, "p.a", json.RawMessage(`2`)); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if s := pub.Subscribers(); len(s) != 1 || s[0].Acked != 2 {
			return fmt.Errorf("subscribers at the publisher: %+v; want both publications acked", s)
		}
		return nil
	})
	if c.count() != 1 {
		t.Fatalf("the receiver ran %d times, want once (the small publication)", c.count())
	}
	list, err := sub.DeadLetters(ctx, localapi.DeadLetterQuery{Data: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.DeadLetters) != 1 || list.DeadLetters[0].TooLarge != uint64(len(over)) || list.DeadLetters[0].Data != nil || list.DeadLetters[0].Attempts != 0 {
		t.Fatalf("dead letters %+v; want the large publication, too_large %d, without data, never attempted", list.DeadLetters, len(over))
	}
}

// With a peer that serves only 1.0.0 of subscribe and publish (an older
// instance), subscribing and publishing fall back to 1.0.0 and work.
func TestFallbackToVersion100(t *testing.T) {
	old := newTestNode(t)
	old.Host().RemoveStreamHandler(wire.ProtoSubscribe11)
	old.Host().RemoveStreamHandler(wire.ProtoPublish11)
	old.Host().RemoveStreamHandler(wire.ProtoPublish12)
	old.Host().RemoveStreamHandler(wire.ProtoPublish13)
	sub := newTestNode(t)
	var c counter
	if err := sub.RegisterReceiver("rec", c.handler); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	pid, _ := connectPeers(t, old, sub, localapi.IssueRequest{Subscribe: []string{"p.>"}, Publish: []string{"p.>"}})
	if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "p.>", Receiver: "rec"}); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.PublishRequest(ctx, localapi.PublishRequest{Peer: pid, Action: "p.a", Batch: []json.RawMessage{json.RawMessage(`1`), json.RawMessage(`2`)}}); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if c.count() != 2 {
			return fmt.Errorf("the receiver ran %d times, want 2", c.count())
		}
		return nil
	})
	for _, conn := range sub.Host().Network().ConnsToPeer(old.ID()) {
		for _, st := range conn.GetStreams() {
			if p := string(st.Protocol()); p == wire.ProtoSubscribe11 || p == wire.ProtoPublish11 || p == wire.ProtoPublish12 || p == wire.ProtoPublish13 {
				t.Fatalf("a stream to the 1.0.0 peer speaks %s", p)
			}
		}
	}
}
