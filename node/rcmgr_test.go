package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
)

// One subscriber may hold limits.max_subscriptions_per_peer subscriptions
// at one publisher, each with its own delivery stream. libp2p's resource
// manager at its default limits reset the subscribe stream past about 64
// per protocol and peer (error code 0x1002, "stream limit exceeded"), so
// the 76th or so `action subscribe` failed and the publisher logged nothing.
func TestManySubscriptionsFromOnePeer(t *testing.T) {
	const subs = 300
	// Over TCP only: a QUIC connection carries at most 256 streams each
	// way (TestQUICStreamLimitExplained), and prefer_transport: tcp still
	// ends up on QUIC when the TCP dial takes longer than 30 ms (a busy
	// machine, -race).
	tcp := func(o *node.Options) { o.Config.Network.Listen = []string{"/ip4/127.0.0.1/tcp/0"} }
	pub, sub := newTestNode(t, withQuietLog(), tcp), newTestNode(t, withQuietLog(), tcp)
	var runs numberRuns
	if err := sub.RegisterReceiver("rec", runs.handler); err != nil {
		t.Fatal(err)
	}
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"many.>"}})
	ctx := testCtx(t)
	for i := range subs {
		if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "many." + strconv.Itoa(i), Receiver: "rec"}); err != nil {
			t.Fatalf("subscription %d of %d: %v", i+1, subs, err)
		}
	}
	checkFor(t, testTimeout, 20*time.Millisecond, func() error {
		n := 0
		for _, s := range pub.Subscribers() {
			if s.Connected {
				n++
			}
		}
		if n != subs {
			return fmt.Errorf("%d of %d subscriptions connected", n, subs)
		}
		return nil
	})
	for i := range subs {
		if _, err := pub.Publish(ctx, "many."+strconv.Itoa(i), json.RawMessage(strconv.Itoa(i))); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	checkFor(t, testTimeout, 20*time.Millisecond, func() error {
		got := runs.runs()
		if len(got) != subs {
			return fmt.Errorf("%d of %d subscriptions got their publication", len(got), subs)
		}
		for i, n := range got {
			if n != 1 {
				return fmt.Errorf("publication %d delivered %d times", i, n)
			}
		}
		return nil
	})
}

// Over QUIC a connection carries at most 256 streams opened by one side
// (libp2p's QUIC transport fixes it): the subscribe that would open the
// 257th waits for a stream, and its error says why instead of only
// "failed to open stream: timed out".
func TestQUICStreamLimitExplained(t *testing.T) {
	quic := func(o *node.Options) { o.Config.Network.PreferTransport = node.PreferQUIC }
	pub, sub := newTestNode(t, withQuietLog(), quic), newTestNode(t, withQuietLog(), quic)
	if err := sub.RegisterReceiver("rec", func(context.Context, json.RawMessage) (json.RawMessage, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"q.>"}})
	ctx := testCtx(t)
	const quicStreams = 256
	for i := range quicStreams {
		if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "q." + strconv.Itoa(i), Receiver: "rec"}); err != nil {
			t.Fatalf("subscription %d: %v", i+1, err)
		}
	}
	for _, c := range sub.Host().Network().ConnsToPeer(pub.ID()) {
		if !strings.HasPrefix(c.ConnState().Transport, "quic") {
			t.Skipf("the subscriber reached the publisher over %s, not QUIC", c.ConnState().Transport)
		}
	}
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := sub.Subscribe(short, localapi.SubscribeRequest{Peer: pid, Pattern: "q.last", Receiver: "rec"})
	if err == nil {
		t.Skip("the 257th stream over QUIC was opened: libp2p's QUIC limit has gone")
	}
	if !strings.Contains(err.Error(), "QUIC's limit") || !strings.Contains(err.Error(), "TCP has none") {
		t.Fatalf("the 257th subscription over QUIC: %v; want the error to name QUIC's stream limit", err)
	}
}
