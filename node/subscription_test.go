package node_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
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
	checkFor(t, 30*time.Second, 100*time.Millisecond, func() error { return subscriptionsGone(ctx, pub, sub) })
	// Publishing now reaches nobody.
	if n, err := pub.Publish(ctx, "exp.a", json.RawMessage(`{"n":2}`)); err != nil || n != 0 {
		t.Fatalf("publish after expiry = %d, %v; want 0 subscriptions", n, err)
	}
}

// A subscriber that replaced its token (peer add with a new one) resumes
// its subscription with it; when that token is revoked, the subscriber is
// refused and forgets the subscription, and so does the publisher, though
// the subscription was made with the first token, which stays valid: no
// orphaned queue is left filling up at the publisher.
func TestRefusedTokenRemovesResumedSubscription(t *testing.T) {
	pub, sub := newTestNode(t), newTestNode(t)
	var c counter
	if err := sub.RegisterReceiver("rec", c.handler); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	pid, first := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"rot.>"}})
	if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "rot.>", Receiver: "rec"}); err != nil {
		t.Fatal(err)
	}
	if subs := pub.Subscribers(); len(subs) != 1 || subs[0].TokenID != first.ID {
		t.Fatalf("subscribers %+v, want one made with token %s", subs, first.ID)
	}
	_, second := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"rot.>"}})
	// Reconnect, so that the subscription's stream now carries the second token.
	if err := sub.Host().Network().ClosePeer(pub.ID()); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(ctx, "rot.a", json.RawMessage(`1`)); err != nil {
		t.Fatal(err)
	}
	checkFor(t, testTimeout, 20*time.Millisecond, func() error {
		if n := c.n.Load(); n != 1 {
			return fmt.Errorf("receiver ran %d times, want 1", n)
		}
		return nil
	})
	if err := pub.RevokeToken(ctx, second.ID); err != nil {
		t.Fatal(err)
	}
	checkFor(t, testTimeout, 50*time.Millisecond, func() error { return subscriptionsGone(ctx, pub, sub) })
}

// A subscriber that forgot a subscription the publisher could not be told
// about (here: peer remove while the subscriber's service was stopped)
// says so when the publisher nudges it about queued publications, and the
// publisher removes the subscription instead of queueing for nobody.
func TestNudgeRemovesSubscriptionTheSubscriberForgot(t *testing.T) {
	defer node.SetFreshSubscription(0)()
	pub := newTestNode(t)
	_, reopen := reopenable(t)
	open := func(offline bool) *node.Node {
		return reopen(offline, func(n *node.Node) {
			if err := n.RegisterReceiver("rec", func(context.Context, json.RawMessage) (json.RawMessage, error) { return nil, nil }); err != nil {
				t.Fatal(err)
			}
		})
	}
	ctx := testCtx(t)
	sub := open(false)
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"o.>"}})
	made, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "o.>", Receiver: "rec"})
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	off := open(true)
	removed, err := off.RemovePeerResult(ctx, pid)
	if err != nil {
		t.Fatal(err)
	}
	// The publisher cannot be told, and the answer says so.
	if len(removed.Untold) != 1 || removed.Untold[0] != made.ID {
		t.Errorf("RemovePeerResult offline: untold %v, want [%s]", removed.Untold, made.ID)
	}
	if err := off.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(ctx, "o.x", json.RawMessage(`1`)); err != nil {
		t.Fatal(err)
	}
	if n := len(pub.Subscribers()); n != 1 {
		t.Fatalf("publisher holds %d subscriptions, want the orphan", n)
	}
	sub = open(false)
	t.Cleanup(func() { _ = sub.Close() })
	if err := sub.Host().Connect(ctx, peer.AddrInfo{ID: pub.ID(), Addrs: pub.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	checkFor(t, testTimeout, 50*time.Millisecond, func() error {
		if n := len(pub.Subscribers()); n != 0 {
			return fmt.Errorf("publisher still holds %d subscription(s)", n)
		}
		return nil
	})
}

// Revoking a token while the service is stopped (the CLI's offline node)
// must remove the subscriptions made with it, as an online revoke does.
func TestOfflineRevokeRemovesSubscriptions(t *testing.T) {
	_, open := reopenable(t)
	pub := open(false, nil)
	sub := newTestNode(t)
	if err := sub.RegisterReceiver("rec", func(context.Context, json.RawMessage) (json.RawMessage, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	pid, tok := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"o.>"}})
	if _, err := sub.Subscribe(testCtx(t), localapi.SubscribeRequest{Peer: pid, Pattern: "o.>", Receiver: "rec"}); err != nil {
		t.Fatal(err)
	}
	if err := sub.Close(); err != nil { // the subscriber goes away
		t.Fatal(err)
	}
	if err := pub.Close(); err != nil { // `coattail service stop`
		t.Fatal(err)
	}
	off := open(true, nil)
	defer off.Close()
	if err := off.RevokeToken(testCtx(t), tok.ID); err != nil { // `coattail token revoke ID`
		t.Fatal(err)
	}
	if s := off.Subscribers(); len(s) != 0 {
		t.Errorf("after revoking token %s offline, %d subscription(s) made with it remain: %+v", tok.ID, len(s), s)
	}
}

// The connection manager does not trim the connections that carry live
// subscription streams (a publisher with more subscribers than conn_high
// would reset them all every grace period), on either side.
func TestConnManagerKeepsSubscriptionConnections(t *testing.T) {
	defer node.SetConnGrace(0)()
	pub := newTestNode(t, func(o *node.Options) { o.Config.Network.ConnLow, o.Config.Network.ConnHigh = 1, 2 })
	ctx := testCtx(t)
	var subs []*node.Node
	for range 4 {
		sub := newTestNode(t)
		if err := sub.RegisterReceiver("rec", func(context.Context, json.RawMessage) (json.RawMessage, error) { return nil, nil }); err != nil {
			t.Fatal(err)
		}
		pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"cm.>"}})
		if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "cm.>", Receiver: "rec"}); err != nil {
			t.Fatal(err)
		}
		subs = append(subs, sub)
	}
	checkFor(t, testTimeout, 20*time.Millisecond, func() error {
		for _, s := range pub.Subscribers() {
			if !s.Connected {
				return fmt.Errorf("subscription %s not connected yet", s.ID)
			}
		}
		return nil
	})
	pub.Host().ConnManager().TrimOpenConns(ctx)
	for _, sub := range subs {
		sub.Host().ConnManager().TrimOpenConns(ctx)
	}
	for i, sub := range subs {
		if c := pub.Host().Network().Connectedness(sub.ID()); c != network.Connected {
			t.Errorf("subscriber %d: %v after a trim, want its connection kept", i, c)
		}
	}
}

// subscriptionsGone reports whether neither pub nor sub holds a
// subscription any more.
func subscriptionsGone(ctx context.Context, pub, sub *node.Node) error {
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

// An in-process receiver that runs longer than limits.action_timeout has
// its context cancelled; the call fails as a timeout, is retried, and is
// parked in the dead letters, and the publications behind it go on.
func TestInProcessReceiverTimeout(t *testing.T) {
	limits := withLimits(func(l *node.LimitsConfig) {
		// "a" and "b" return at once, but on a busy machine under -race
		// their goroutines may wait a while to run: the timeout leaves
		// them ample time, and only "hang" reaches it.
		l.ActionTimeout = 2 * time.Second
		l.ReceiverRetries = 1
		l.ReceiverBackoff = 10 * time.Millisecond
	})
	pub := newTestNode(t, withQuietLog())
	sub := newTestNode(t, withQuietLog(), limits)
	var mu sync.Mutex
	calls := map[string]int{}
	if err := sub.RegisterReceiver("slow", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		mu.Lock()
		calls[string(in)]++
		mu.Unlock()
		if string(in) == `"hang"` {
			<-ctx.Done() // honours its context, as in-process receivers must
			return nil, ctx.Err()
		}
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"to.>"}})
	ctx := testCtx(t)
	if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "to.>", Receiver: "slow"}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{`"hang"`, `"a"`, `"b"`} {
		if _, err := pub.Publish(ctx, "to.x", json.RawMessage(d)); err != nil {
			t.Fatal(err)
		}
	}
	checkFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if calls[`"a"`] != 1 || calls[`"b"`] != 1 {
			return fmt.Errorf("calls %v: the publications behind the hung one did not run once each", calls)
		}
		return nil
	})
	mu.Lock()
	hung := calls[`"hang"`]
	mu.Unlock()
	if hung != 2 {
		t.Fatalf("the hung publication was called %d times, want 2 (1 retry)", hung)
	}
	dl, err := allDeadLetters(ctx, sub)
	if err != nil {
		t.Fatal(err)
	}
	if len(dl) != 1 || dl[0].Seq != 1 || dl[0].Attempts != 2 || !strings.Contains(dl[0].Error, "limits.action_timeout") {
		t.Fatalf("dead letters = %+v, want seq 1 after 2 attempts, failed on the action timeout", dl)
	}
}

// A receiver that finishes after its subscription was forgotten (it
// ignored the cancellation) has its progress recorded by the stopping
// loop; that record must not outlive the subscription.
func TestForgottenSubscriptionLeavesNoProgress(t *testing.T) {
	pub, sub := newTestNode(t), newTestNode(t)
	entered, release := make(chan struct{}, 1), make(chan struct{})
	if err := sub.RegisterReceiver("rec", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		entered <- struct{}{}
		<-release // ignores ctx on purpose
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"fg.>"}})
	ctx := testCtx(t)
	info, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "fg.>", Receiver: "rec"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(ctx, "fg.a", json.RawMessage(`1`)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("no delivery")
	}
	if _, err := sub.Unsubscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "fg.>", Receiver: "rec"}); err != nil {
		t.Fatal(err)
	}
	close(release)
	checkFor(t, testTimeout, 20*time.Millisecond, func() error {
		if sub.HasProgress(info.ID) {
			return fmt.Errorf("progress of forgotten subscription %s is still stored", info.ID)
		}
		return nil
	})
	// And it stays gone (the loop's last write could come after a check).
	time.Sleep(200 * time.Millisecond)
	if sub.HasProgress(info.ID) {
		t.Fatalf("progress of forgotten subscription %s came back", info.ID)
	}
}

// An in-process receiver may keep its input and its Invocation after it
// returns (hand them to another goroutine, as with a NATS message): they
// must not change when later publications arrive.
func TestReceiverMayKeepItsInput(t *testing.T) {
	pub, sub := newTestNode(t), newTestNode(t)
	type kept struct {
		in  json.RawMessage
		inv *node.Invocation
	}
	const n = 2000
	got := make(chan kept, n)
	if err := sub.RegisterReceiver("rec", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		got <- kept{in, node.InvocationFrom(ctx)}
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"keep.>"}})
	ctx := testCtx(t)
	if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "keep.>", Receiver: "rec"}); err != nil {
		t.Fatal(err)
	}
	msgs := make([]node.Message, n)
	for i := range msgs {
		msgs[i] = node.Message{Subject: fmt.Sprintf("keep.s%d", i), Data: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))}
	}
	if _, err := pub.PublishBatch(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	all := make([]kept, 0, n)
	for len(all) < n {
		select {
		case k := <-got:
			all = append(all, k)
		case <-ctx.Done():
			t.Fatalf("%d of %d delivered", len(all), n)
		}
	}
	for i, k := range all {
		if want := fmt.Sprintf(`{"i":%d}`, i); string(k.in) != want {
			t.Fatalf("kept input %d is now %q, want %q", i, k.in, want)
		}
		if want := fmt.Sprintf("keep.s%d", i); k.inv.Subject != want || k.inv.Sequence != uint64(i+1) {
			t.Fatalf("kept invocation %d is now %s #%d, want %s #%d", i, k.inv.Subject, k.inv.Sequence, want, i+1)
		}
	}
}

// Subscribing the same receiver to the same pattern at the same peer again
// (a retried script, or two at once) returns the subscription there is,
// marked existing, instead of a second one that would run the receiver
// twice per publication. Another receiver gets its own.
func TestSubscribeIsIdempotent(t *testing.T) {
	pub, sub := newTestNode(t), newTestNode(t)
	var c counter
	for _, r := range []string{"rec", "other"} {
		if err := sub.RegisterReceiver(r, c.handler); err != nil {
			t.Fatal(err)
		}
	}
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"idem.>"}})
	ctx := testCtx(t)
	req := localapi.SubscribeRequest{Peer: pid, Pattern: "idem.>", Receiver: "rec"}
	const racers = 8
	ids := make(chan string, racers)
	var wg sync.WaitGroup
	for range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := sub.Subscribe(ctx, req)
			if err != nil {
				t.Error(err)
			}
			ids <- s.ID
		}()
	}
	wg.Wait()
	close(ids)
	first := <-ids
	for id := range ids {
		if id != first {
			t.Fatalf("concurrent identical subscribes made subscriptions %s and %s", first, id)
		}
	}
	again, err := sub.Subscribe(ctx, req)
	if err != nil || again.ID != first || !again.Existing {
		t.Fatalf("a repeated subscribe = %+v, %v; want the existing %s, marked existing", again, err, first)
	}
	other, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "idem.>", Receiver: "other"})
	if err != nil || other.ID == first || other.Existing {
		t.Fatalf("another receiver's subscribe = %+v, %v; want a new subscription", other, err)
	}
	if subs := pub.Subscribers(); len(subs) != 2 {
		t.Fatalf("publisher holds %d subscriptions, want 2", len(subs))
	}
	if _, err := pub.Publish(ctx, "idem.a", json.RawMessage(`1`)); err != nil {
		t.Fatal(err)
	}
	checkFor(t, testTimeout, 20*time.Millisecond, func() error {
		if n := c.count(); n != 2 {
			return fmt.Errorf("receivers ran %d times, want 2 (once per subscription)", n)
		}
		return nil
	})
}

// A replay that fails again records the new failure (error, attempts,
// time) instead of leaving the first one; a replay of a dead letter that
// is being replayed already is refused, not run a second time.
func TestReplayFailureIsRecorded(t *testing.T) {
	pub := newTestNode(t, withQuietLog())
	sub := newTestNode(t, withQuietLog(), withLimits(func(l *node.LimitsConfig) {
		l.ReceiverRetries = 0
		l.ReceiverBackoff = time.Millisecond
	}))
	var mu sync.Mutex
	fails, calls := 0, 0
	entered, release := make(chan struct{}, 1), make(chan struct{})
	if err := sub.RegisterReceiver("rec", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		if n == 3 { // the replay that succeeds waits, so a second replay races it
			entered <- struct{}{}
			<-release
			return nil, nil
		}
		mu.Lock()
		fails++
		mu.Unlock()
		return nil, fmt.Errorf("failure %d", n)
	}); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	first := parkOne(t, pub, sub, "dl.>", "rec", "dl.a", `1`)
	if err := sub.ReplayDeadLetter(ctx, first.ID, nil); err == nil || !strings.Contains(err.Error(), "failure 2") {
		t.Fatalf("replay = %v, want the receiver's second failure", err)
	}
	dl, err := allDeadLetters(ctx, sub)
	if err != nil || len(dl) != 1 {
		t.Fatalf("dead letters after a failed replay = %+v, %v", dl, err)
	}
	if got := dl[0]; got.Attempts != first.Attempts+1 || !strings.Contains(got.Error, "failure 2") || !got.FailedAt.After(first.FailedAt) {
		t.Fatalf("after a failed replay the dead letter is %+v; want attempts %d, the new error and time (was %+v)", got, first.Attempts+1, first)
	}
	done := make(chan error, 1)
	go func() { done <- sub.ReplayDeadLetter(ctx, first.ID, nil) }()
	<-entered
	err = sub.ReplayDeadLetter(ctx, first.ID, nil)
	var le *localapi.Error
	if !errors.As(err, &le) || le.Code != localapi.CodeConflict {
		t.Errorf("a second replay while one runs = %v, want a conflict", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if calls != 3 {
		t.Fatalf("receiver called %d times, want 3 (delivery, failed replay, replay)", calls)
	}
	if dl, _ := allDeadLetters(ctx, sub); len(dl) != 0 {
		t.Fatalf("dead letters after a successful replay: %+v", dl)
	}
}

// Once Subscribe returns, the publisher lists the subscription as
// connected: it attaches the stream before it answers. It used to attach
// it a moment after, and `subscribers list` right after a subscribe
// showed the subscription not connected.
func TestSubscribersListConnectedOnceSubscribed(t *testing.T) {
	ctx := testCtx(t)
	pub, sub := newTestNode(t, withQuietLog()), newTestNode(t, withQuietLog())
	var c counter
	if err := sub.RegisterReceiver("rec", c.handler); err != nil {
		t.Fatal(err)
	}
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{">"}})
	for i := range 20 {
		s, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: fmt.Sprintf("c%d.>", i), Receiver: "rec"})
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, ss := range pub.Subscribers() {
			if ss.ID == s.ID {
				found = true
				if !ss.Connected || ss.Path != "direct" {
					t.Fatalf("subscription %d right after Subscribe returned: %+v, want connected over a direct stream", i, ss)
				}
			}
		}
		if !found {
			t.Fatalf("subscription %s is not listed at the publisher", s.ID)
		}
	}
}
