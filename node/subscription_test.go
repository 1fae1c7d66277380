package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
)

// A subscription whose token expires is removed at the publisher by the
// deliverer, and the subscriber, refused on its next stream, forgets it.
func TestExpiredTokenEndsSubscription(t *testing.T) {
	pub, sub := newTestNode(t), newTestNode(t)
	got := make(chan uint64, 16)
	if err := sub.RegisterReceiver("rec", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		got <- node.InvocationFrom(ctx).Sequence
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"exp.>"}, ExpiresIn: localapi.Duration(2 * time.Second)})
	ctx := testCtx(t)
	if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "exp.>", Receiver: "rec"}); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(ctx, "exp.a", json.RawMessage(`{"n":1}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case seq := <-got:
		if seq != 1 {
			t.Fatalf("first delivery has sequence %d, want 1", seq)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no delivery before the token expired")
	}
	checkFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		if n := len(pub.Subscribers()); n != 0 {
			return fmt.Errorf("publisher still holds %d subscription(s)", n)
		}
		subs, err := sub.Subscriptions(ctx)
		if err != nil {
			return err
		}
		if len(subs) != 0 {
			return fmt.Errorf("subscriber still holds %d subscription(s)", len(subs))
		}
		return nil
	})
	// Publishing now reaches nobody.
	if n, err := pub.Publish(ctx, "exp.a", json.RawMessage(`{"n":2}`)); err != nil || n != 0 {
		t.Fatalf("publish after expiry = %d, %v; want 0 subscriptions", n, err)
	}
}
