package node_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
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

// syncBuffer is a log sink the test can read while nodes write to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// node.Log in an in-process receiver writes to the subscriber's log with
// the receiver, subscription and sequence of the publication.
func TestInProcessReceiverLog(t *testing.T) {
	var logs syncBuffer
	pub := newTestNode(t, withQuietLog())
	sub := newTestNode(t, func(o *node.Options) { o.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	if err := sub.RegisterReceiver("rec", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		node.Log(ctx, "handled "+string(in))
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"log.>"}})
	ctx := testCtx(t)
	s, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "log.>", Receiver: "rec"})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		if _, err := pub.Publish(ctx, "log.a", json.RawMessage(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	checkFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		out := logs.String()
		for i := 1; i <= 2; i++ {
			want := fmt.Sprintf(`msg="receiver log" receiver=rec subscription=%s seq=%d line="handled %d"`, s.ID, i, i)
			if !strings.Contains(out, want) {
				return fmt.Errorf("log lacks %s:\n%s", want, out)
			}
		}
		return nil
	})
}
