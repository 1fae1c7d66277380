package node_test

// Audit of docs/SECURITY.md and the peer rules of docs/PROTOCOL.md
// against what a node does with a peer that lies or floods (audit C).

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
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

// A peer can make its performs fail at will (an input over max_payload,
// an action it knows fails, a caller that goes away): each failure was
// logged as "action failed" on every one, so a peer flooding at its rate
// limit filled the log, although SECURITY.md says the lines a peer causes
// at will, a failed request among them, are sampled (20 a second, bursts
// of 100). A remote caller's failures are sampled now.
func TestRemoteActionFailuresAreSampledInLog(t *testing.T) {
	var logs syncBuffer
	a := newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.MaxPayload, l.MaxOutput = 1024, 1024 }),
		func(o *node.Options) { o.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	b := newTestNode(t, withQuietLog())
	writeAction(t, a, "echo", "#!/bin/sh\ncat\n")
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{"echo"}})
	big := `"` + strings.Repeat("x", 2048) + `"` // over a's max_payload: refused before it runs
	const performs = 400
	start := time.Now()
	for i := range performs {
		_, err := perform(testCtx(t), b, pid, "echo", big)
		if i == 0 {
			wantWireCode(t, err, wire.CodeTooLarge)
		}
	}
	elapsed := time.Since(start)
	failed := strings.Count(logs.String(), `msg="action failed"`)
	if bound := 100 + int(20*elapsed.Seconds()) + 1; failed == 0 || failed > bound {
		t.Fatalf("%d of %d failed remote performs logged in %v, want 1..%d", failed, performs, elapsed, bound)
	}
}

// A peer whose token allows subscribing can create a subscription and
// delete it again as often as its rate limit allows: each logged a line
// ("subscription created", "subscription removed by its subscriber"), so
// the churn flooded the log. They are sampled as the other lines a peer
// causes at will.
func TestSubscriptionChurnIsSampledInLog(t *testing.T) {
	var logs syncBuffer
	pub := newTestNode(t, func(o *node.Options) { o.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	h := newStockHost(t, pub)
	tok := issue(t, pub, localapi.IssueRequest{Subscribe: []string{"f.>"}, Bearers: []string{"vt://" + h.ID().String()}})
	const cycles = 250
	start := time.Now()
	for range cycles {
		rs := rawSubscribe(t, h, pub, tok.Token, wire.SubscribeRequest{Pattern: "f.>", Receiver: "r"})
		_ = rs.s.Reset()
		s, err := h.NewStream(testCtx(t), pub.ID(), protocol.ID(wire.ProtoUnsubscribe))
		if err != nil {
			t.Fatal(err)
		}
		w, r, we := openAuthed(t, s, tok.Token)
		if we != nil {
			t.Fatalf("hello refused: %v", we)
		}
		if err := w.JSON(wire.TRequest, wire.UnsubscribeRequest{SubscriptionID: rs.resp.SubscriptionID}); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if typ, payload, err := r.Next(); err != nil || typ != wire.TResult {
			t.Fatalf("unsubscribe answered %v %s, %v", typ, payload, err)
		}
		_ = s.Close()
	}
	elapsed := time.Since(start)
	text := logs.String()
	lines := strings.Count(text, `msg="subscription created"`) + strings.Count(text, `msg="subscription removed by its subscriber"`)
	if bound := 100 + int(20*elapsed.Seconds()) + 1; lines == 0 || lines > bound {
		t.Fatalf("%d lines logged for %d subscriptions created and deleted in %v, want 1..%d", lines, cycles, elapsed, bound)
	}
}

// SECURITY.md said that a subscription whose token expires "is removed
// (the subscriber is told)". The publisher ends it at the expiry only
// while its subscriber is connected; one whose subscriber is away stays,
// listed and queueing, until the subscriber presents the expired token
// again: that refusal removes it (its subscriber then forgets it). The
// expired token allows nothing meanwhile. The docs say so now.
func TestExpiredTokenSubscriptionEndsAtItsSubscribersReturn(t *testing.T) {
	pub := newTestNode(t)
	h := newStockHost(t, pub)
	tok := issue(t, pub, localapi.IssueRequest{Subscribe: []string{"f.>"}, Bearers: []string{"vt://" + h.ID().String()},
		ExpiresIn: localapi.Duration(time.Second)})
	rs := rawSubscribe(t, h, pub, tok.Token, wire.SubscribeRequest{Pattern: "f.>", Receiver: "r"})
	_ = rs.s.Reset() // the subscriber goes away before its token expires
	id := rs.resp.SubscriptionID
	checkFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if s := pub.Subscribers(); len(s) != 1 || s[0].Connected {
			return fmt.Errorf("subscribers: %+v; want the one, not connected", s)
		}
		return nil
	})
	// Past the expiry Verify allows (exp is at most 1 s after issue, plus
	// the 5 s leeway).
	expired := time.Now().Add(7 * time.Second)
	checkFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		if time.Now().Before(expired) {
			return fmt.Errorf("the token has not expired yet")
		}
		return nil
	})
	if _, err := pub.PublishBatch(testCtx(t), []node.Message{{Subject: "f.a", Data: json.RawMessage(`1`)}}); err != nil {
		t.Fatal(err)
	}
	if s := pub.Subscribers(); len(s) != 1 || s[0].ID != id || s[0].Depth != 1 {
		t.Fatalf("subscribers after the expiry, subscriber away: %+v; want subscription %s kept, queueing", s, id)
	}
	// Its subscriber comes back with the expired token: refused, and the
	// subscription goes with its queue.
	s, err := h.NewStream(testCtx(t), pub.ID(), protocol.ID(wire.ProtoSubscribe))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Reset()
	w := wire.NewWriter(s)
	if err := w.JSON(wire.THello, wire.Hello{Token: tok.Token, Version: wire.Version}); err != nil {
		t.Fatal(err)
	}
	if err := w.JSON(wire.TRequest, wire.SubscribeRequest{SubscriptionID: id, Pattern: "f.>", Receiver: "r"}); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if e := readErrorFrame(t, wire.NewReader(s, 1<<20)); e.Code != wire.CodeUnauthorized || !strings.Contains(e.Message, "expired") {
		t.Fatalf("resume with the expired token answered %v, want unauthorized (expired)", e)
	}
	checkFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if s := pub.Subscribers(); len(s) != 0 {
			return fmt.Errorf("subscribers after the refused resume: %+v; want none", s)
		}
		return nil
	})
}
