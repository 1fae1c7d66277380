package node_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// A token carries no loopback address when the host has another one: a
// bearer on another machine would dial its own 127.0.0.1 or ::1. (Only
// listening here, on every interface; nothing is sent anywhere but to
// loopback, and nothing at all leaves this process.)
func TestTokenAddrsLeaveOutLoopback(t *testing.T) {
	n := newTestNode(t, withQuietLog(), func(o *node.Options) {
		o.Config.Network.Listen = []string{"/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1", "/ip6/::/tcp/0"}
	})
	var others bool
	for _, a := range n.Host().Network().ListenAddresses() {
		ifaces, err := manet.ResolveUnspecifiedAddress(a, nil)
		if err != nil {
			continue
		}
		others = others || slices.ContainsFunc(ifaces, func(m ma.Multiaddr) bool { return !manet.IsIPLoopback(m) })
	}
	tok := issue(t, n, localapi.IssueRequest{Perform: []string{"x"}})
	var loop int
	for _, s := range tok.Addrs {
		if manet.IsIPLoopback(ma.StringCast(s)) {
			loop++
		}
	}
	switch {
	case len(tok.Addrs) == 0:
		t.Fatal("the token carries no address at all")
	case others && loop > 0:
		t.Fatalf("the host has non-loopback addresses, yet its token carries loopback ones: %v", tok.Addrs)
	case !others && loop != len(tok.Addrs):
		t.Fatalf("a host with loopback only must keep them in its token: %v", tok.Addrs)
	}
	t.Logf("token addrs (host has non-loopback addresses: %v): %v", others, tok.Addrs)
}

// network.announce reaches peers through identify, not only through
// tokens: a publisher nudges its subscribers at the addresses identify gave
// it, so a subscriber behind a forwarded port must announce it there too.
func TestAnnounceAddrsInIdentify(t *testing.T) {
	// A loopback address nobody listens on: never dialled here, and if it
	// were, it would stay on this machine.
	const announced = "/ip4/127.0.0.1/tcp/9"
	n := newTestNode(t, withQuietLog(), func(o *node.Options) {
		o.Config.Network.Announce = []string{announced}
	})
	if !slices.ContainsFunc(n.Host().Addrs(), func(a ma.Multiaddr) bool { return a.String() == announced }) {
		t.Errorf("host addrs %v lack the announced %s", n.Host().Addrs(), announced)
	}
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	// Dialled at its listen addresses only, so whatever else the peerstore
	// learns came from identify.
	if err := h.Connect(testCtx(t), peer.AddrInfo{ID: n.ID(), Addrs: n.Host().Network().ListenAddresses()}); err != nil {
		t.Fatal(err)
	}
	checkFor(t, testTimeout, 10*time.Millisecond, func() error {
		got := h.Peerstore().Addrs(n.ID())
		if !slices.ContainsFunc(got, func(a ma.Multiaddr) bool { return a.String() == announced }) {
			return fmt.Errorf("a peer knows %v of the node after identify, without the announced %s", got, announced)
		}
		return nil
	})
}

// An announce address written in a non-canonical spelling appears once in
// a token, in libp2p's form, not once as written and once as the host
// renders it.
func TestAnnounceAddrOnceInToken(t *testing.T) {
	const written, canonical = "/ip6/::FFFF:127.0.0.1/tcp/9", "/ip6/::ffff:127.0.0.1/tcp/9"
	n := newTestNode(t, withQuietLog(), func(o *node.Options) {
		o.Config.Network.Announce = []string{written}
	})
	tok := issue(t, n, localapi.IssueRequest{Perform: []string{"x"}})
	count := 0
	for _, a := range tok.Addrs {
		if a == written {
			t.Errorf("token carries the announce address as written (%s): %v", written, tok.Addrs)
		}
		if a == canonical {
			count++
		}
	}
	if count != 1 {
		t.Errorf("token carries %s %d times, want once: %v", canonical, count, tok.Addrs)
	}
}
