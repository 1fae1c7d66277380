package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
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
