package node_test

// The remote publish stream under a hostile or unusual publisher (found by
// review): each test speaks /coattail/publish by hand from a stock libp2p
// host, or publishes through a second node, and checks what the publishing
// instance stored and what it answered.

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
)

// prSubscriber creates a subscription to pattern on a from a stock host,
// then drops its stream, so what a publishes to it stays queued and shows
// as the subscription's queue depth.
func prSubscriber(t *testing.T, a *node.Node, pattern string) host.Host {
	t.Helper()
	h := newStockHost(t, a)
	tok := issue(t, a, localapi.IssueRequest{Subscribe: []string{">"}, Bearers: []string{"vt://" + h.ID().String()}})
	rs := rawSubscribe(t, h, a, tok.Token, wire.SubscribeRequest{Pattern: pattern, Receiver: "r"})
	_ = rs.s.Reset()
	return h
}

// prDepth is the number of publications queued for a's only subscription.
func prDepth(t *testing.T, a *node.Node) uint64 {
	t.Helper()
	subs := a.Subscribers()
	if len(subs) != 1 {
		t.Fatalf("subscribers: %+v, want one", subs)
	}
	return subs[0].Depth
}

// jsonString is a JSON string value of exactly n bytes (n >= 2).
func jsonString(n int) []byte {
	return []byte(`"` + strings.Repeat("a", n-2) + `"`)
}

// jsonBatch returns count publications, each a JSON string of n bytes.
func jsonBatch(count, n int) []json.RawMessage {
	batch := make([]json.RawMessage, count)
	for i := range batch {
		batch[i] = jsonString(n)
	}
	return batch
}

// A frame that breaks the framing or the batch layout on a publish stream
// is a protocol violation answered bad_request (PROTOCOL.md, Frames: node
// "answers TError with code bad_request"). The reader's errors went to the
// publisher as they were, which maps them to internal ("internal error;
// the remote instance logged the details"), as if the instance were broken.
func TestPublishReviewBrokenFramesAreBadRequest(t *testing.T) {
	a := newTestNode(t, withQuietLog())
	for _, tc := range []struct {
		name  string
		frame []byte
	}{
		{"empty frame", []byte{0}},
		{"unknown type", wire.AppendFrame(nil, wire.Type(42), []byte("x"))},
		{"batch count past its payload", wire.AppendFrame(nil, wire.TPublish, []byte{5, 1})},
		{"batch with trailing bytes", wire.AppendFrame(nil, wire.TPublish, append(wire.AppendPublishBatch(nil, []wire.Publication{{Subject: "x.a", Data: []byte(`1`)}}), 0))},
		{"hop over 32 bits", wire.AppendFrame(nil, wire.TPublish, []byte{1, 3, 'x', '.', 'a', 0x80, 0x80, 0x80, 0x80, 0x10, 1, 1, '1'})},
		{"length over 64 bits", []byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02}},
		{"truncated frame", []byte{9, byte(wire.TPublish), 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, pr := rvPublishStream(t, a)
			sendFrames(t, p, tc.frame)
			rvExpectCode(t, pr, wire.CodeBadRequest)
		})
	}
}

// max_payload bounds a remote publication as it bounds a local one
// (SECURITY.md: "Largest action input or publication"): a publication of
// exactly max_payload bytes is queued, one byte more is refused too_large
// with nothing of its batch queued. The frame limit is max_payload + 64
// KiB, and only that was checked, so a remote publisher could queue
// publications 64 KiB over the limit that a local one could not.
func TestPublishReviewDataOverMaxPayload(t *testing.T) {
	const maxPayload = 1024
	a := newTestNode(t, withQuietLog(), withLimits(func(l *node.LimitsConfig) { l.MaxPayload = maxPayload }))
	prSubscriber(t, a, "x.>")

	p, pr := rvPublishStream(t, a)
	rvWrite(t, p, rvBatch("x.a", jsonString(maxPayload)))
	var res wire.PublishResult
	rvExpect(t, pr, wire.TResult, &res)
	if res != (wire.PublishResult{Accepted: 1, LastSeq: 1, Published: 1}) {
		t.Fatalf("answer to a publication of max_payload bytes: %+v", res)
	}
	rvWrite(t, p, rvBatch("x.a", []byte(`1`), jsonString(maxPayload+1)))
	rvExpectCode(t, pr, wire.CodeTooLarge)
	if d := prDepth(t, a); d != 1 {
		t.Fatalf("queued %d publications, want only the first one", d)
	}
}

// A frame of exactly the frame limit (max_payload + 64 KiB) is read and
// its publications, each within max_payload, are queued; a frame one byte
// longer is refused too_large from its header, and nothing of it queued.
func TestPublishReviewFrameAtAndOverLimit(t *testing.T) {
	const maxPayload = 1024
	maxFrame := maxPayload + 64<<10
	a := newTestNode(t, withQuietLog(), withLimits(func(l *node.LimitsConfig) { l.MaxPayload = maxPayload }))
	prSubscriber(t, a, "x.>")

	// A batch whose frame length (type byte + payload) is exactly
	// maxFrame: publications of 600-byte strings, the last one sized to fit.
	frameOf := func(size int) ([]byte, int) {
		var datas [][]byte
		enc := func() []byte { return rvBatch("x.a", datas...) }
		for len(enc())+600+300 <= size {
			datas = append(datas, jsonString(600))
		}
		// A last publication of 300..900 bytes fills the frame exactly
		// (its length prefix is 2 bytes whatever its size in that range).
		datas = append(datas, jsonString(size-len(enc())-8))
		for len(enc()) < size {
			datas[len(datas)-1] = jsonString(len(datas[len(datas)-1]) + 1)
		}
		for len(enc()) > size {
			datas[len(datas)-1] = jsonString(len(datas[len(datas)-1]) - 1)
		}
		return enc(), len(datas)
	}
	// The whole frame is the header (3 bytes of length + type byte) plus
	// a payload of maxFrame - 1 bytes.
	f, n := frameOf(3 + maxFrame)
	r := wire.NewReader(strings.NewReader(string(f)), maxFrame)
	if _, payload, err := r.Next(); err != nil || len(payload) != maxFrame-1 {
		t.Fatalf("test frame: payload %d bytes, err %v; want %d", len(payload), err, maxFrame-1)
	}
	p, pr := rvPublishStream(t, a)
	rvWrite(t, p, f)
	var res wire.PublishResult
	rvExpect(t, pr, wire.TResult, &res)
	if res != (wire.PublishResult{Accepted: n, LastSeq: uint64(n), Published: n}) {
		t.Fatalf("answer to a frame of the limit with %d publications: %+v", n, res)
	}
	over, _ := frameOf(3 + maxFrame + 1)
	sendFrames(t, p, over)
	// Said as such: it was "node: bad request: reading a publish frame:
	// wire: frame too large", a bad request with the code too_large.
	if e := readErrorFrame(t, pr); e.Code != wire.CodeTooLarge || !strings.Contains(e.Message, "limits.max_payload") || strings.Contains(e.Message, "bad request") {
		t.Fatalf("frame over the limit answered %s: %s", e.Code, e.Message)
	}
	if d := prDepth(t, a); d != uint64(n) {
		t.Fatalf("queued %d publications, want the %d of the first frame", d, n)
	}
}

// Each answer on a publish stream has its own write deadline (PROTOCOL.md:
// "every flush has its own deadline, set just before the operation"). The
// stream's first deadline, stream_timeout after it opened, stayed in force
// for writes, so a publisher that kept a stream open longer than that, each
// batch well within the timeout, had its next batch stored and its answer
// cut off: it could not know the batch was durable.
func TestPublishReviewLongLivedStreamKeepsAnswering(t *testing.T) {
	// Batches 200ms apart, far within the 2s stream_timeout (the idle
	// read deadline between batches) even on a busy machine, until the
	// stream has lived well past its first deadline.
	const streamTimeout = 2 * time.Second
	a := newTestNode(t, withQuietLog(), withLimits(func(l *node.LimitsConfig) { l.StreamTimeout = streamTimeout }))
	p, pr := rvPublishStream(t, a)
	opened := time.Now() // the stream opened before this
	for i := 1; i == 1 || time.Since(opened) < streamTimeout+time.Second; i++ {
		rvWrite(t, p, rvBatch("x.a", []byte(`1`)))
		var res wire.PublishResult
		rvExpect(t, pr, wire.TResult, &res)
		if res.LastSeq != uint64(i) || res.Accepted != 1 {
			t.Fatalf("answer %d, %v after the stream opened: %+v", i, time.Since(opened).Round(time.Millisecond), res)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// A remote publish refused part-way says exactly which publications were
// stored (PROTOCOL.md: "The publisher knows exactly what is durable from
// the last last_seq it read"). The remote's refusal came back alone, so a
// user could not tell whether to publish again all, some or none.
func TestPublishReviewRefusalSaysWhatWasStored(t *testing.T) {
	a := newTestNode(t, withQuietLog(), withLimits(func(l *node.LimitsConfig) { l.QueueBound = 3 }))
	// b's small max_payload puts each publication in a frame of its own.
	b := newTestNode(t, withQuietLog(), withLimits(func(l *node.LimitsConfig) { l.MaxPayload = 1024 }))
	prSubscriber(t, a, "q.>")
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Publish: []string{">"}})
	batch := jsonBatch(5, 700)
	_, err := b.PublishRequest(testCtx(t), localapi.PublishRequest{Peer: pid, Action: "q.a", Batch: batch})
	wantWireCode(t, err, wire.CodeUnavailable)
	errorsContain(t, err, "3 of 5", "stored")
	if d := prDepth(t, a); d != 3 {
		t.Fatalf("queued %d, want 3", d)
	}
}

// A remote publish refused at its first frame, while the publisher is
// still writing the rest, reports the remote's refusal, not the failed
// write, and says that nothing was stored.
func TestPublishReviewEarlyRefusalOfLargePublish(t *testing.T) {
	a, b := newTestNode(t, withQuietLog()), newTestNode(t, withQuietLog())
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Publish: []string{"ok.>"}})
	batch := jsonBatch(24, 1<<20)
	_, err := b.PublishRequest(testCtx(t), localapi.PublishRequest{Peer: pid, Action: "no.a", Batch: batch})
	wantWireCode(t, err, wire.CodeForbidden)
	errorsContain(t, err, "0 of 24")
}

// A hop that does not fit the wire's 32 bits is refused by the publisher,
// and a negative one too: it was cut to its low 32 bits, so hop 2^32 went
// out as hop 0, past the remote's max_hops (which cuts receiver loops), and
// hop -1 as 4294967295.
func TestPublishReviewHopOutOfRange(t *testing.T) {
	a, b := newTestNode(t, withQuietLog()), newTestNode(t, withQuietLog())
	prSubscriber(t, a, "h.>")
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Publish: []string{">"}})
	for _, hop := range []int{1 << 32, -1} {
		res, err := b.PublishRequest(testCtx(t), localapi.PublishRequest{Peer: pid, Action: "h.a", Data: json.RawMessage(`1`), Hop: hop})
		if !errors.Is(err, node.ErrBadRequest) {
			t.Errorf("hop %d: got %+v, %v; want a local bad request", hop, res, err)
		}
	}
	if d := prDepth(t, a); d != 0 {
		t.Fatalf("queued %d publications, want none", d)
	}
}

// --to names peers by id, in any of the spellings peer ids have (base58,
// CIDv1), once or more: each matching subscription is published to once.
// A CIDv1 spelling matched nobody, and the publish reported 0 without a
// word.
func TestPublishReviewToAnySpellingOfPeerID(t *testing.T) {
	a := newTestNode(t, withQuietLog())
	h := prSubscriber(t, a, "t.>")
	cid := peer.ToCid(h.ID()).String()
	res, err := a.PublishRequest(testCtx(t), localapi.PublishRequest{Action: "t.a", Data: json.RawMessage(`1`), To: []string{cid, cid}})
	if err != nil || res.Published != 1 {
		t.Fatalf("publish --to %s (twice), the subscriber %s = %+v, %v; want published 1", cid, h.ID(), res, err)
	}
	res, err = a.PublishRequest(testCtx(t), localapi.PublishRequest{Action: "t.a", Data: json.RawMessage(`2`), To: []string{h.ID().String(), cid}})
	if err != nil || res.Published != 1 {
		t.Fatalf("publish --to %s and %s = %+v, %v; want published 1", h.ID(), cid, res, err)
	}
	if d := prDepth(t, a); d != 2 {
		t.Fatalf("queued %d, want 2", d)
	}
	_, err = a.PublishRequest(testCtx(t), localapi.PublishRequest{Action: "t.a", Data: json.RawMessage(`1`), To: []string{"nobody"}})
	if !errors.Is(err, node.ErrBadRequest) {
		t.Fatalf("publish --to nobody: %v, want a bad request", err)
	}
}

// The answers count exactly (PROTOCOL.md, PublishResult): accepted is the
// batch's size, last_seq the publications stored on the stream so far,
// published the queue entries written, one per matching subscription (none
// for a subject nobody subscribes to, and none for an empty batch). A
// batch with one refused publication (outside the token's subjects, a
// wildcard, not JSON, a hop past max_hops) is refused whole: nothing of
// it is queued, and the earlier batches stay stored.
func TestPublishReviewCountsAndAllOrNothing(t *testing.T) {
	a := newTestNode(t, withQuietLog())
	h := newStockHost(t, a)
	sub := issue(t, a, localapi.IssueRequest{Subscribe: []string{">"}, Bearers: []string{"vt://" + h.ID().String()}})
	for _, pat := range []string{"c.>", "c.a"} {
		_ = rawSubscribe(t, h, a, sub.Token, wire.SubscribeRequest{Pattern: pat, Receiver: "r"}).s.Reset()
	}
	depth := func() (total uint64) {
		for _, s := range a.Subscribers() {
			total += s.Depth
		}
		return total
	}
	tok := issue(t, a, localapi.IssueRequest{Publish: []string{"c.>", "z.>"}, Bearers: []string{"vt://" + h.ID().String()}})
	one := func(subject string, hop uint32, data string) wire.Publication {
		return wire.Publication{Subject: subject, Hop: hop, Data: []byte(data), Time: 1}
	}
	batch := func(ps ...wire.Publication) []byte { return wire.AppendPublishBatch(nil, ps) }
	for _, bad := range []struct {
		name string
		pub  wire.Publication
		code wire.Code
	}{
		{"outside the token", one("d.a", 0, `1`), wire.CodeForbidden},
		{"wildcard", one("c.*", 0, `1`), wire.CodeBadRequest},
		{"tail wildcard", one("c.>", 0, `1`), wire.CodeBadRequest},
		{"not JSON", one("c.a", 0, `{`), wire.CodeBadRequest},
		{"not UTF-8", one("c.a", 0, "\"\xff\""), wire.CodeBadRequest},
		{"past max_hops", one("c.a", 17, `1`), wire.CodeHopLimit},
	} {
		t.Run(bad.name, func(t *testing.T) {
			before := depth()
			s := rawStream(t, h, a, wire.ProtoPublish)
			w, r, we := openAuthed(t, s, tok.Token)
			if we != nil {
				t.Fatal(we)
			}
			want := []wire.PublishResult{
				{Accepted: 3, LastSeq: 3, Published: 5}, // c.a twice (2 subscriptions each), c.b once
				{Accepted: 1, LastSeq: 4, Published: 0}, // nobody subscribes to z.q
				{Accepted: 0, LastSeq: 4, Published: 0}, // an empty batch
			}
			for _, f := range [][]byte{
				batch(one("c.a", 0, `1`), one("c.a", 1, `{"x":2}`), one("c.b", 16, `"3"`)),
				batch(one("z.q", 0, `1`)),
				batch(),
				batch(one("c.a", 0, `1`), bad.pub, one("c.a", 0, `1`)),
			} {
				if err := w.Frame(wire.TPublish, f); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			for i, wr := range want {
				var res wire.PublishResult
				rvExpect(t, r, wire.TResult, &res)
				if res != wr {
					t.Fatalf("answer %d: %+v, want %+v", i+1, res, wr)
				}
			}
			rvExpectCode(t, r, bad.code)
			if d := depth(); d != before+5 {
				t.Fatalf("queue entries went from %d to %d, want +5 (the first batch's)", before, d)
			}
		})
	}
}

// A publisher whose max_payload is larger than its peer's default splits a
// remote publish of small publications into frames that peer reads (1 MiB
// of publications at most, as the default max_payload allows). It packed
// frames up to its own limit, so raising max_payload on the publisher made
// every bulk publish to a default peer fail with too_large.
func TestPublishReviewFramesFitADefaultPeer(t *testing.T) {
	a := newTestNode(t, withQuietLog())
	b := newTestNode(t, withQuietLog(), withLimits(func(l *node.LimitsConfig) { l.MaxPayload = 8 << 20 }))
	prSubscriber(t, a, "big.>")
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Publish: []string{">"}})
	batch := jsonBatch(3000, 1000)
	res, err := b.PublishRequest(testCtx(t), localapi.PublishRequest{Peer: pid, Action: "big.a", Batch: batch})
	if err != nil || res.Published != len(batch) {
		t.Fatalf("publish of %d publications of 1000 bytes = %+v, %v; want all published", len(batch), res, err)
	}
	if d := prDepth(t, a); d != uint64(len(batch)) {
		t.Fatalf("queued %d, want %d", d, len(batch))
	}
}
