package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
)

// A token replaced (peer add) while a subscription's stream is being
// opened with the old one — the loop was reconnecting, so rotated found
// no stream to reset — still moves the subscription to the new token: the
// stream opened with the old one is not kept. It was kept until it ended,
// and the publisher held the subscription with the old token meanwhile,
// so revoking it (the next step of a rotation, docs/SECURITY.md) or its
// expiry removed the subscription with what was queued for it.
func TestRotationWhileResumingMovesToNewToken(t *testing.T) {
	pub, sub := newTestNode(t), newTestNode(t)
	if err := sub.RegisterReceiver("rec", func(context.Context, json.RawMessage) (json.RawMessage, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	pid, first := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"rot.>"}})
	if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "rot.>", Receiver: "rec"}); err != nil {
		t.Fatal(err)
	}
	if subs := pub.Subscribers(); len(subs) != 1 || subs[0].TokenID != first.ID {
		t.Fatalf("subscribers %+v, want one held with token %s", subs, first.ID)
	}
	// The next resume stops once its stream is open (with the first
	// token) until the token is replaced.
	reached, hold := make(chan struct{}), make(chan struct{})
	var once sync.Once
	defer node.SetResumedHook(func() {
		once.Do(func() {
			close(reached)
			<-hold
		})
	})()
	if err := sub.Host().Network().ClosePeer(pub.ID()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-reached:
	case <-time.After(testTimeout):
		t.Fatal("the subscription did not resume")
	}
	_, second := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"rot.>"}})
	close(hold)
	checkFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if subs := pub.Subscribers(); len(subs) != 1 || subs[0].TokenID != second.ID {
			return fmt.Errorf("subscribers %+v, want one held with the new token %s", subs, second.ID)
		}
		return nil
	})
	// Revoking the old token, as a rotation ends, leaves it.
	if err := pub.RevokeToken(ctx, first.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(ctx, "rot.a", json.RawMessage(`1`)); err != nil {
		t.Fatal(err)
	}
	checkFor(t, testTimeout, 50*time.Millisecond, func() error {
		if subs := pub.Subscribers(); len(subs) != 1 || subs[0].Acked != 1 {
			return fmt.Errorf("subscribers %+v, want the subscription, with the publication acked", subs)
		}
		return nil
	})
}
