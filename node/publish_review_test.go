package node_test

// The remote publish stream under a hostile or unusual publisher (found by
// review): each test speaks /coattail/publish by hand from a stock libp2p
// host, or publishes through a second node, and checks what the publishing
// instance stored and what it answered.

import (
	"strings"
	"testing"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
	"github.com/libp2p/go-libp2p/core/host"
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

// prFrame is a TPublish frame of one publication per data.
func prFrame(subject string, datas ...[]byte) []byte {
	ps := make([]wire.Publication, len(datas))
	for i, d := range datas {
		ps[i] = wire.Publication{Subject: subject, Data: d, Time: 1}
	}
	return wire.AppendFrame(nil, wire.TPublish, wire.AppendPublishBatch(nil, ps))
}

// jsonString is a JSON string value of exactly n bytes (n >= 2).
func jsonString(n int) []byte {
	return []byte(`"` + strings.Repeat("a", n-2) + `"`)
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
