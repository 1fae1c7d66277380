package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	ma "github.com/multiformats/go-multiaddr"
)

// movedPeers sets up the tester's scenario: s is a publisher that p, an
// added peer of s, once subscribed to (so s remembers where p listened,
// /subs/addrs), and p then moved to other ports (every start of a
// reopenable node listens on new random ports). s has not yet been given
// a token carrying p's new addresses. It returns both nodes running, s's
// reopen, and p's id as s knows it.
func movedPeers(t *testing.T) (s, p *node.Node, reopenS func() *node.Node, pid string) {
	t.Helper()
	ctx := testCtx(t)
	_, openS := reopenable(t)
	_, openP := reopenable(t)
	setupP := func(n *node.Node) {
		register(t, n, "echo", (&counter{}).handler)
		if err := n.RegisterReceiver("rec", func(context.Context, json.RawMessage) (json.RawMessage, error) { return nil, nil }); err != nil {
			t.Fatal(err)
		}
	}
	s = openS(false, nil)
	p = openP(false, setupP)
	sid, _ := connectPeers(t, s, p, localapi.IssueRequest{Subscribe: []string{"mv.>"}})
	if _, err := p.Subscribe(ctx, localapi.SubscribeRequest{Peer: sid, Pattern: "mv.>", Receiver: "rec"}); err != nil {
		t.Fatal(err)
	}
	pid, _ = connectPeers(t, p, s, localapi.IssueRequest{Perform: []string{"echo"}})
	if _, err := p.Unsubscribe(ctx, localapi.SubscribeRequest{Peer: sid, Pattern: "mv.>"}); err != nil {
		t.Fatal(err)
	}
	old := p.Host().Addrs()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	p = openP(false, setupP) // new ports: p moved
	t.Cleanup(func() { _ = p.Close() })
	for _, a := range p.Host().Addrs() {
		if slices.ContainsFunc(old, a.Equal) {
			t.Skipf("p listens on %s again after its restart (the kernel chose the same port); the test needs it to move", a)
		}
	}
	reopenS = func() *node.Node {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = openS(false, nil)
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	return s, p, reopenS, pid
}

// The tester's report: a peer that was once a subscriber moved to another
// port, and `peer add` with a fresh token refreshed its record; after a
// restart of this service, perform dialled only the address remembered
// from the subscription (restored into the peerstore at start), because
// the record's addresses were added only to a peerstore that knew none.
// The record's addresses are always dialled, alongside the others.
func TestPeerMovedIsReachableAtRefreshedAddressAfterRestart(t *testing.T) {
	ctx := testCtx(t)
	s, p, reopenS, pid := movedPeers(t)
	tok := issue(t, p, localapi.IssueRequest{Perform: []string{"echo"}})
	shown, err := s.AddPeer(ctx, tok.Token) // `peer add` with p's new address
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(shown.Addrs, tok.Addrs) {
		t.Fatalf("peer show lists %v, want the new token's addresses %v", shown.Addrs, tok.Addrs)
	}
	// The running service learnt the new addresses with the token.
	if _, err := perform(ctx, s, pid, "echo", `"running"`); err != nil {
		t.Fatalf("perform on the peer that moved, right after its record was refreshed: %v", err)
	}
	s = reopenS()
	res, err := perform(ctx, s, pid, "echo", `"moved"`)
	if err != nil {
		t.Fatalf("perform on the peer that moved, after its record was refreshed: %v", err)
	}
	if string(res.Output) != `"moved"` {
		t.Fatalf("output %s", res.Output)
	}
}

// At start, the service puts every added peer's addresses in the
// peerstore, so that dials that go through no peer record (a publisher's
// nudge of a subscriber, a revocation notice) find a moved peer where its
// latest token says it is, and not only where it was remembered.
func TestPeerRecordAddressesKnownAtStart(t *testing.T) {
	ctx := testCtx(t)
	s, p, reopenS, pid := movedPeers(t)
	tok := issue(t, p, localapi.IssueRequest{Perform: []string{"echo"}})
	if _, err := s.AddPeer(ctx, tok.Token); err != nil {
		t.Fatal(err)
	}
	s = reopenS()
	id, err := peer.Decode(pid)
	if err != nil {
		t.Fatal(err)
	}
	known := s.Host().Peerstore().Addrs(id)
	for _, a := range tok.Addrs {
		if !slices.ContainsFunc(known, func(m ma.Multiaddr) bool { return m.String() == a }) {
			t.Errorf("after a restart, the peerstore knows %v for the peer, not its record's address %s", known, a)
		}
	}
}

// A publisher forgets the remembered addresses of a peer that no longer
// subscribes to it when it restarts: /subs/addrs kept one entry for every
// peer that ever subscribed, for ever, and restored each at every start.
// A peer that still subscribes is remembered.
func TestFormerSubscriberAddressesForgottenAtStart(t *testing.T) {
	ctx := testCtx(t)
	_, openP := reopenable(t)
	p := openP(false, nil)
	s1, s2 := newTestNode(t, withQuietLog()), newTestNode(t, withQuietLog())
	for _, s := range []*node.Node{s1, s2} {
		flSubscribe(t, p, s, func(context.Context, json.RawMessage) (json.RawMessage, error) { return nil, nil })
	}
	if _, err := s1.Unsubscribe(ctx, localapi.SubscribeRequest{Peer: p.ID().String(), Pattern: "p.>"}); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	p = openP(false, nil)
	if known := p.Host().Peerstore().Addrs(s1.ID()); len(known) != 0 {
		t.Errorf("after a restart the publisher still knows %v for a peer that unsubscribed", known)
	}
	if known := p.Host().Peerstore().Addrs(s2.ID()); len(known) == 0 {
		t.Error("after a restart the publisher knows no address of a peer that still subscribes")
	}
}

// A publisher remembers where a subscriber listens now: addresses it
// remembered from before the subscriber moved are forgotten once the
// subscriber subscribes again from its new ones, both in the peerstore
// (which nudges dial) and in what the next start restores. Restored at a
// start and never given again by identify, they were remembered again
// with every subscribe and restored at every start: each move while the
// publisher was stopped added the old addresses for good.
func TestMovedSubscriberOldAddressesForgotten(t *testing.T) {
	ctx := testCtx(t)
	_, openP := reopenable(t)
	_, openS := reopenable(t)
	setupS := func(n *node.Node) {
		if err := n.RegisterReceiver("rec", func(context.Context, json.RawMessage) (json.RawMessage, error) { return nil, nil }); err != nil {
			t.Fatal(err)
		}
	}
	p, s := openP(false, nil), openS(false, setupS)
	pid, _ := connectPeers(t, p, s, localapi.IssueRequest{Subscribe: []string{"mv.>"}})
	if _, err := s.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "mv.>", Receiver: "rec"}); err != nil {
		t.Fatal(err)
	}
	old := s.Host().Addrs()
	for _, n := range []*node.Node{p, s} {
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
	}
	p = openP(false, nil) // restores where s listened
	t.Cleanup(func() { _ = p.Close() })
	s = openS(false, setupS) // new ports: s moved
	t.Cleanup(func() { _ = s.Close() })
	now := s.Host().Addrs()
	for _, a := range now {
		if slices.ContainsFunc(old, a.Equal) {
			t.Skipf("s listens on %s again after its restart (the kernel chose the same port); the test needs it to move", a)
		}
	}
	// p moved too (a reopened node listens on new ports): s is told where.
	s.Host().Peerstore().AddAddrs(p.ID(), p.Host().Addrs(), peerstore.PermanentAddrTTL)
	checkFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if subs := p.Subscribers(); len(subs) != 1 || !subs[0].Connected {
			return fmt.Errorf("subscribers at the publisher: %+v; want s's subscription connected", subs)
		}
		return nil
	})
	check := func(known []ma.Multiaddr) error {
		for _, a := range old {
			if slices.ContainsFunc(known, a.Equal) {
				return fmt.Errorf("the publisher still knows the subscriber's old address %s (knows %v)", a, known)
			}
		}
		for _, a := range now {
			if !slices.ContainsFunc(known, a.Equal) {
				return fmt.Errorf("the publisher does not know the subscriber's address %s (knows %v)", a, known)
			}
		}
		return nil
	}
	// The subscription shows connected once attached; where it listens is
	// remembered once identify has said (up to 5 s later): polled.
	checkFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if err := check(p.Host().Peerstore().Addrs(s.ID())); err != nil {
			return fmt.Errorf("once the subscriber that moved has subscribed again, in the peerstore: %w", err)
		}
		var saved []ma.Multiaddr
		for _, a := range p.RememberedSubscriberAddrs(s.ID().String()) {
			if m, err := ma.NewMultiaddr(a); err == nil {
				saved = append(saved, m)
			}
		}
		if err := check(saved); err != nil {
			return fmt.Errorf("once the subscriber that moved has subscribed again, in /subs/addrs: %w", err)
		}
		return nil
	})
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	p = openP(false, nil)
	if err := check(p.Host().Peerstore().Addrs(s.ID())); err != nil {
		t.Errorf("after the publisher's restart: %v", err)
	}
}

// A running publisher forgets the remembered addresses of a peer that no
// longer subscribes to it, as its start does, and keeps those of a peer
// that still does. Only a start forgot them: a publisher that ran for
// months kept an entry for every peer that had subscribed since.
func TestFormerSubscriberAddressesForgottenWhileRunning(t *testing.T) {
	defer node.SetSubscriberAddrSweep(20 * time.Millisecond)()
	ctx := testCtx(t)
	p := newTestNode(t, withQuietLog())
	s1, s2 := newTestNode(t, withQuietLog()), newTestNode(t, withQuietLog())
	for _, s := range []*node.Node{s1, s2} {
		flSubscribe(t, p, s, func(context.Context, json.RawMessage) (json.RawMessage, error) { return nil, nil })
	}
	for _, s := range []*node.Node{s1, s2} {
		if !p.RemembersSubscriber(s.ID().String()) {
			t.Fatalf("the publisher does not remember where subscriber %s listens", s.ID())
		}
	}
	if _, err := s1.Unsubscribe(ctx, localapi.SubscribeRequest{Peer: p.ID().String(), Pattern: "p.>"}); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if p.RemembersSubscriber(s1.ID().String()) {
			return errors.New("the running publisher still remembers where a peer that unsubscribed listens")
		}
		return nil
	})
	time.Sleep(100 * time.Millisecond) // a few more sweeps
	if !p.RemembersSubscriber(s2.ID().String()) {
		t.Fatal("the publisher forgot where a peer that still subscribes listens")
	}
}

// Replacing a peer's token by one that does not allow a subscription held
// there is refused, saying which; --force ends those subscriptions at
// both ends first. The replacement was taken silently, and the publisher
// removed the subscriptions at their next reconnect, with what it had
// queued for them. A replacement that allows them all is taken as before.
func TestPeerTokenReplacementKeepsSubscriptionsAllowed(t *testing.T) {
	ctx := testCtx(t)
	pub, sub := newTestNode(t, withQuietLog()), newTestNode(t, withQuietLog())
	if err := sub.RegisterReceiver("rec", func(context.Context, json.RawMessage) (json.RawMessage, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"orders.>"}})
	for _, p := range []string{"orders.*", "orders.>"} {
		if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: p, Receiver: "rec"}); err != nil {
			t.Fatal(err)
		}
	}
	held := func(want int) {
		t.Helper()
		subs, err := sub.Subscriptions(ctx)
		if err != nil || len(subs) != want {
			t.Fatalf("subscriptions %+v, %v; want %d", subs, err, want)
		}
		checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
			if s := pub.Subscribers(); len(s) != want {
				return fmt.Errorf("subscribers at the publisher %+v, want %d", s, want)
			}
			return nil
		})
	}

	wider := issue(t, pub, localapi.IssueRequest{Subscribe: []string{">"}})
	if _, err := sub.AddPeer(ctx, wider.Token); err != nil {
		t.Fatalf("a replacement that allows every subscription: %v", err)
	}
	held(2)

	narrower := issue(t, pub, localapi.IssueRequest{Subscribe: []string{"orders.eu.>"}})
	_, err := sub.AddPeer(ctx, narrower.Token)
	var le *localapi.Error
	if !errors.As(err, &le) || le.Code != localapi.CodeConflict || !strings.Contains(err.Error(), `"orders.*"`) || !strings.Contains(err.Error(), `"orders.>"`) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("a replacement that allows neither subscription: %v; want a conflict naming both and --force", err)
	}
	if p, err := sub.ShowPeer(ctx, pid); err != nil || p.TokenID != wider.ID {
		t.Fatalf("after the refusal the peer holds token %s (%v), want the one before, %s", p.TokenID, err, wider.ID)
	}
	held(2)

	// The token held is often replaced because it was revoked (or
	// expired): the forced unsubscribe goes with the new one. With the
	// revoked one the publisher refused it, kept the subscriptions and
	// queued for nobody.
	if err := pub.RevokeToken(ctx, wider.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.AddPeerRequest(ctx, localapi.AddPeerRequest{Token: narrower.Token, Force: true}); err != nil {
		t.Fatalf("forced replacement: %v", err)
	}
	if p, err := sub.ShowPeer(ctx, pid); err != nil || p.TokenID != narrower.ID {
		t.Fatalf("after the forced replacement the peer holds token %s (%v), want %s", p.TokenID, err, narrower.ID)
	}
	held(0)
}

// A publisher that cannot be dialled (here it stopped listening; behind a
// NAT without a relay, say) still reaches a subscriber that was away for
// longer than libp2p keeps a disconnected peer's addresses: the nudge
// dials where the subscriber listened when it subscribed. Those addresses
// were remembered (/subs/addrs, and a week in the peerstore), but
// identify's connected TTL replaced the week, and at the disconnect
// libp2p cut that to 15 minutes: after that the nudges had nothing to
// dial until the publisher restarted, and the subscriber, which could not
// dial the publisher either, got nothing more.
func TestNudgeReachesSubscriberAwayLongerThanLibp2pKeepsAddrs(t *testing.T) {
	ctx := testCtx(t)
	p, s := newTestNode(t, withQuietLog()), newTestNode(t, withQuietLog())
	got := make(chan string, 16)
	flSubscribe(t, p, s, func(_ context.Context, in json.RawMessage) (json.RawMessage, error) {
		got <- string(in)
		return nil, nil
	})
	checkFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if subs := p.Subscribers(); len(subs) != 1 || !subs[0].Connected {
			return fmt.Errorf("subscribers at the publisher: %+v; want s's subscription connected", subs)
		}
		if !p.RemembersSubscriber(s.ID().String()) {
			return errors.New("the publisher does not remember where the subscriber listens")
		}
		return nil
	})
	pn := p.Host().Network()
	pn.(interface{ ListenClose(...ma.Multiaddr) }).ListenClose(pn.ListenAddresses()...)
	if err := pn.ClosePeer(s.ID()); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if subs := p.Subscribers(); len(subs) != 1 || subs[0].Connected {
			return fmt.Errorf("subscribers at the publisher: %+v; want s's subscription disconnected", subs)
		}
		return nil
	})
	// What the peerstore holds once the subscriber has been away 15 min.
	p.Host().Peerstore().ClearAddrs(s.ID())
	if _, err := p.Publish(ctx, "p.x", json.RawMessage(`42`)); err != nil {
		t.Fatal(err)
	}
	select {
	case in := <-got:
		if in != "42" {
			t.Errorf("the receiver got %s, want 42", in)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the publication did not reach the subscriber in 60s: the publisher never dialled it")
	}
}
