package node_test

// Audit of docs/SECURITY.md and the peer rules of docs/PROTOCOL.md
// against what a node does with a peer that lies or floods (audit C).

import (
	"strings"
	"testing"

	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// A subscriber names its receiver, which the publisher stores with the
// subscription, keeps in memory, lists (`subscribers list`, the metrics
// endpoint) and never uses. A Coattail subscriber only sends receiver
// names that are subjects (at most 256 bytes); a peer whose token allows
// subscribing could make the publisher store and list a name of a frame's
// size (1 MiB) per subscription, 1 GiB at the default
// max_subscriptions_per_peer, and the owner's `subscribers list` past what
// the CLI reads. The publisher refuses such a name (bad_request) and
// creates nothing.
func TestSubscribeRefusesReceiverThatIsNotAName(t *testing.T) {
	pub := newTestNode(t)
	h := newStockHost(t, pub)
	tok := issue(t, pub, localapi.IssueRequest{Subscribe: []string{"f.>"}, Bearers: []string{"vt://" + h.ID().String()}})
	for _, tc := range []struct{ name, receiver string }{
		{"huge", strings.Repeat("r", 512<<10)},
		{"empty", ""},
		{"not a subject", "a b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := h.NewStream(testCtx(t), pub.ID(), protocol.ID(wire.ProtoSubscribe))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Reset()
			w, r, we := openAuthed(t, s, tok.Token)
			if we != nil {
				t.Fatalf("hello refused: %v", we)
			}
			if err := w.JSON(wire.TRequest, wire.SubscribeRequest{Pattern: "f.>", Receiver: tc.receiver}); err != nil {
				t.Fatal(err)
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			e := readErrorFrame(t, r)
			if e.Code != wire.CodeBadRequest || !strings.Contains(e.Message, "receiver") {
				t.Errorf("subscribe with receiver %.40q answered %v, want bad_request naming the receiver", tc.receiver, e)
			}
			if len(e.Message) > 1024 {
				t.Errorf("the refusal quotes %d bytes of the request", len(e.Message))
			}
			if subs := pub.Subscribers(); len(subs) != 0 {
				t.Fatalf("the publisher holds %d subscription(s) after the refusal, want none", len(subs))
			}
		})
	}
}
