package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
)

// A Go receiver that publishes (here back to the publisher it listens to,
// an endless loop) continues its publication's cascade: each publication
// is one hop further, and limits.max_hops stops the loop. The hop of a
// publication made by an in-process receiver was 0, so max_hops never
// stopped a loop between Go receivers (executable ones pass COATTAIL_HOP).
func TestInProcessReceiverCascadeCountsHops(t *testing.T) {
	const maxHops = 3
	limits := withLimits(func(l *node.LimitsConfig) { l.MaxHops = maxHops; l.ReceiverRetries = 0 })
	pub, sub := newTestNode(t, withQuietLog(), limits), newTestNode(t, withQuietLog(), limits)
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"loop.>"}, Publish: []string{"loop.>"}})
	var mu sync.Mutex
	var hops []uint32
	var last error
	if err := sub.RegisterReceiver("echo", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		inv := node.InvocationFrom(ctx)
		_, err := sub.PublishRequest(ctx, localapi.PublishRequest{Peer: pid, Action: "loop.a", Data: in})
		mu.Lock()
		hops = append(hops, inv.Hop)
		last = err
		mu.Unlock()
		return nil, err
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.Subscribe(testCtx(t), localapi.SubscribeRequest{Peer: pid, Pattern: "loop.>", Receiver: "echo"}); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(testCtx(t), "loop.a", json.RawMessage(`1`)); err != nil {
		t.Fatal(err)
	}
	// Hops 0..maxHops run; the publication of hop maxHops+1 is refused.
	checkFor(t, testTimeout, 20*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(hops) < maxHops+1 {
			return fmt.Errorf("receiver ran at hops %v", hops)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	for i, h := range hops {
		if h != uint32(i) {
			t.Fatalf("receiver ran at hops %v, want 0..%d", hops, maxHops)
		}
	}
	if len(hops) != maxHops+1 {
		t.Fatalf("receiver ran at hops %v, want 0..%d and then the loop cut", hops, maxHops)
	}
	if !errors.Is(last, node.ErrHopLimit) {
		t.Fatalf("the publication past max_hops: %v, want ErrHopLimit", last)
	}
}

// A loop a → b → a of in-process receivers, with retries configured. At
// hop limits.max_hops, a's receiver publishes again and is refused; what
// it does then decides: a failure is the hop limit's, which the node knows
// (it refused the cascade itself, whatever error the receiver returns),
// so the publication is parked after that one run instead of being run
// again on every retry (each refused the same: the hop is the
// publication's). A receiver that handles the refusal has handled its
// publication; one that fails at the limit without a refused cascade is
// retried as any failure.
func TestHopLimitFailureParkedWithoutRetries(t *testing.T) {
	const maxHops, retries = 3, 2
	for _, tc := range []struct {
		name string
		// atLimit is what a's receiver does at hop maxHops, once its
		// publication was refused (err; nil when it does not publish).
		cascade  bool
		atLimit  func(err error) error
		attempts int    // of the dead letter; 0: none
		errStart string // its error's start
	}{
		// The error does not wrap ErrHopLimit: the node knows regardless.
		{"fails", true, func(err error) error { return fmt.Errorf("loop: %v", err) }, 1, "cascade hop limit: "},
		{"handles", true, func(error) error { return nil }, 0, ""},
		{"fails without cascading", false, func(error) error { return errors.New("unrelated failure") }, retries + 1, `runner: failed: receiver "r" failed: unrelated failure`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			limits := withLimits(func(l *node.LimitsConfig) {
				l.MaxHops, l.ReceiverRetries, l.ReceiverBackoff = maxHops, retries, time.Millisecond
			})
			a, b := newTestNode(t, limits), newTestNode(t, limits)
			aID, _ := connectPeers(t, a, b, localapi.IssueRequest{Subscribe: []string{"loop.a"}})
			bID, _ := connectPeers(t, b, a, localapi.IssueRequest{Subscribe: []string{"loop.b"}})
			var mu sync.Mutex
			runs := map[string]int{} // "node hop" -> runs
			loop := func(self *node.Node, name, mine string) node.Handler {
				return func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
					inv := node.InvocationFrom(ctx)
					mu.Lock()
					runs[fmt.Sprintf("%s %d", name, inv.Hop)]++
					mu.Unlock()
					if inv.Hop < maxHops || tc.cascade {
						_, err := self.Publish(ctx, mine, in)
						if inv.Hop < maxHops {
							return nil, err
						}
						if !errors.Is(err, node.ErrHopLimit) {
							t.Errorf("%s's publication at hop %d: %v, want ErrHopLimit", name, inv.Hop+1, err)
						}
						return nil, tc.atLimit(err)
					}
					return nil, tc.atLimit(nil)
				}
			}
			if err := a.RegisterReceiver("r", loop(a, "a", "loop.a")); err != nil {
				t.Fatal(err)
			}
			if err := b.RegisterReceiver("r", loop(b, "b", "loop.b")); err != nil {
				t.Fatal(err)
			}
			if _, err := a.Subscribe(testCtx(t), localapi.SubscribeRequest{Peer: bID, Pattern: "loop.b", Receiver: "r"}); err != nil {
				t.Fatal(err)
			}
			if _, err := b.Subscribe(testCtx(t), localapi.SubscribeRequest{Peer: aID, Pattern: "loop.a", Receiver: "r"}); err != nil {
				t.Fatal(err)
			}
			if _, err := a.Publish(testCtx(t), "loop.a", json.RawMessage(`"ping"`)); err != nil {
				t.Fatal(err)
			}
			// hop 0 reaches b, 1 a, 2 b, 3 a, where the loop ends: once
			// a's subscription has processed (or parked) its second
			// publication, nothing is in flight.
			checkFor(t, testTimeout, 10*time.Millisecond, func() error {
				subs, err := a.Subscriptions(testCtx(t))
				if err != nil {
					return err
				}
				if len(subs) != 1 || subs[0].LastSeq != 2 {
					return fmt.Errorf("a's subscriptions %+v, want loop.b processed up to 2", subs)
				}
				return nil
			})
			atLimit := 1
			if tc.attempts > 0 {
				atLimit = tc.attempts
			}
			mu.Lock()
			if want := map[string]int{"b 0": 1, "a 1": 1, "b 2": 1, "a 3": atLimit}; !maps.Equal(runs, want) {
				t.Errorf("runs per node and hop %v, want %v", runs, want)
			}
			mu.Unlock()
			dl, err := a.DeadLetters(testCtx(t), localapi.DeadLetterQuery{})
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tc.attempts == 0:
				if len(dl.DeadLetters) != 0 {
					t.Errorf("a parked %+v, want nothing", dl.DeadLetters)
				}
			case len(dl.DeadLetters) != 1 || dl.DeadLetters[0].Seq != 2 || dl.DeadLetters[0].Attempts != tc.attempts ||
				!strings.HasPrefix(dl.DeadLetters[0].Error, tc.errStart):
				t.Errorf("a's dead letters %+v, want seq 2 after %d attempt(s), its error starting %q", dl.DeadLetters, tc.attempts, tc.errStart)
			}
		})
	}
}

// A receiver whose cascade a peer refuses for the peer's own (lower)
// limits.max_hops is parked after that one run too: the peer answers
// hop_limit, which this node takes as its own hop limit. (An older peer's
// bad_request is retried as any failure.)
func TestPeerHopLimitFailureParkedWithoutRetries(t *testing.T) {
	const retries = 2
	pub := newTestNode(t)
	sub := newTestNode(t, withLimits(func(l *node.LimitsConfig) {
		l.ReceiverRetries, l.ReceiverBackoff = retries, time.Millisecond
	}))
	strict := newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.MaxHops = 1 }))
	register(t, strict, "act", func(context.Context, json.RawMessage) (json.RawMessage, error) {
		t.Error("the strict peer ran its action past its hop limit")
		return nil, nil
	})
	pubID, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"x"}})
	strictID, _ := connectPeers(t, strict, sub, localapi.IssueRequest{Perform: []string{"act"}})
	var runs atomic.Int64
	if err := sub.RegisterReceiver("r", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		runs.Add(1)
		// The delivery's hop is 1: the cascade's is 2, past strict's 1.
		_, err := sub.Perform(ctx, localapi.PerformRequest{Peer: strictID, Action: "act", Input: in}, nil)
		if !errors.Is(err, node.ErrHopLimit) || !wire.IsCode(err, wire.CodeHopLimit) {
			t.Errorf("perform at the strict peer: %v, want its hop_limit refusal as ErrHopLimit", err)
		}
		return nil, fmt.Errorf("cascade: %v", err)
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.Subscribe(testCtx(t), localapi.SubscribeRequest{Peer: pubID, Pattern: "x", Receiver: "r"}); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.PublishRequest(testCtx(t), localapi.PublishRequest{Action: "x", Data: json.RawMessage(`1`), Hop: 1}); err != nil {
		t.Fatal(err)
	}
	var dl localapi.DeadLetterList
	checkFor(t, testTimeout, 10*time.Millisecond, func() error {
		var err error
		if dl, err = sub.DeadLetters(testCtx(t), localapi.DeadLetterQuery{}); err != nil {
			return err
		}
		if len(dl.DeadLetters) != 1 {
			return fmt.Errorf("%d dead letters, want 1", len(dl.DeadLetters))
		}
		return nil
	})
	if d := dl.DeadLetters[0]; d.Attempts != 1 || !strings.HasPrefix(d.Error, "cascade hop limit: ") || runs.Load() != 1 {
		t.Fatalf("dead letter after %d attempt(s), error %q, receiver runs %d; want 1 attempt, a hop-limit error and 1 run", d.Attempts, d.Error, runs.Load())
	}
}
