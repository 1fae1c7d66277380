package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
)

// A subscriber whose limits.max_payload is small reads small frames: the
// publisher packs its deliveries to fit them. It used to send frames of up
// to 256 KiB of publications, which such a subscriber refused, and then
// the same frame again after every reconnect: nothing was ever delivered.
func TestSmallSubscriberFrameLimit(t *testing.T) {
	pub := newTestNode(t)
	sub := newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.MaxPayload = 1024 }))
	var mu sync.Mutex
	var got []string
	if err := sub.RegisterReceiver("rec", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		mu.Lock()
		got = append(got, fmt.Sprintf("%d %s", node.InvocationFrom(ctx).Sequence, in[1:5]))
		mu.Unlock()
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"p.>"}})
	if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "p.>", Receiver: "rec"}); err != nil {
		t.Fatal(err)
	}
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
		mu.Lock()
		defer mu.Unlock()
		if len(got) < total {
			return fmt.Errorf("the subscriber processed %d of %d publications", len(got), total)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("processed %d publications, not each once in order", len(got))
	}
}
