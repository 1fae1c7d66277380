package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/node/wire"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	ma "github.com/multiformats/go-multiaddr"
	madns "github.com/multiformats/go-multiaddr-dns"
)

// The resource manager's limits follow Coattail's: one peer may hold
// limits.max_subscriptions_per_peer subscription streams plus
// max_streams_per_peer request streams, twice over, when the machine's
// memory allows; and in every scope the memory holds the initial window of
// every stream the stream limits allow, however far busy streams' windows
// grew (a refused window closes the connection; a refused stream is only
// reset, with an explanation).
func TestResourceLimitsFollowConfig(t *testing.T) {
	const gib = 1 << 30
	for _, tc := range []struct {
		subs, reqs int
		mem        int64 // libp2p's memory: an eighth of the machine's
		clamped    bool
		short      bool // not even S + R one way
	}{
		{1024, 128, 3 * gib, false, false}, // 24 GiB
		{5000, 16, 3 * gib, true, true},    // one peer at half of 10236
		{3, 2, 3 * gib, false, false},
		{1024, 128, gib, true, false},    // 8 GiB
		{1024, 128, gib / 4, true, true}, // 2 GiB
		{1024, 128, gib / 8, true, true}, // 1 GiB
		{1 << 30, 1 << 30, 3 * gib, true, true},
	} {
		cfg := DefaultConfig(0)
		cfg.Limits.MaxSubscriptionsPerPeer, cfg.Limits.MaxStreamsPerPeer = tc.subs, tc.reqs
		lc, sl := limitsFor(cfg.Limits, cfg.Network, tc.mem, 4096)
		pc := lc.ToPartialLimitConfig()
		name := fmt.Sprintf("subs %d, reqs %d, libp2p memory %d MiB", tc.subs, tc.reqs, tc.mem>>20)
		t.Logf("%s: %+v; system %+v, transient %+v, peer %+v, subscribe per peer %+v", name, sl,
			pc.System, pc.Transient, pc.PeerDefault, pc.ProtocolPeer[wire.ProtoSubscribe11])
		peer, sys, tr := pc.PeerDefault, pc.System, pc.Transient

		// Memory never binds before a stream limit.
		if int64(peer.Memory) < memoryFor(int(peer.Streams)) || peer.StreamsInbound > peer.Streams || peer.StreamsOutbound > peer.Streams {
			t.Errorf("%s: per peer %+v: memory short of its streams' windows", name, peer)
		}
		if int64(sys.Memory) < memoryFor(int(sys.Streams)) || sys.StreamsInbound > sys.Streams || sys.StreamsOutbound > sys.Streams {
			t.Errorf("%s: system %+v: memory short of its streams' windows", name, sys)
		}
		// The memory stays within twice libp2p's own bound (an eighth of
		// the machine plus 128 MiB), whatever the config asks for.
		def := rcmgr.DefaultLimits
		libp2p.SetDefaultServiceLimits(&def)
		want := def.Scale(tc.mem, 4096).ToPartialLimitConfig()
		if int64(sys.Memory) > 2*int64(want.System.Memory) {
			t.Errorf("%s: system memory %d MiB, over twice libp2p's %d MiB", name, sys.Memory>>20, want.System.Memory>>20)
		}
		if sl.Clamped() != tc.clamped {
			t.Errorf("%s: clamped %v, want %v (%+v)", name, sl.Clamped(), tc.clamped, sl)
		}
		if int(peer.Streams) != sl.Peer || int(sys.Streams) != sl.System {
			t.Errorf("%s: limits %+v / %+v do not match %+v", name, peer, sys, sl)
		}
		if sl.Short() != tc.short {
			t.Errorf("%s: short %v, want %v (%+v)", name, sl.Short(), tc.short, sl)
		}
		if tc.clamped {
			// One peer may take half of what all may hold.
			if sl.Peer != sl.System/2 {
				t.Errorf("%s: %+v, want one peer at half the system", name, sl)
			}
		} else {
			need := 2*tc.subs + 2*tc.reqs
			if sl.Peer < need {
				t.Errorf("%s: %d streams per peer, want at least %d", name, sl.Peer, need)
			}
			if sl.System < 2*sl.Peer || sl.System < systemStreams {
				t.Errorf("%s: %d streams for all peers, want at least two peers' %d and %d", name, sl.System, sl.Peer, systemStreams)
			}
			for _, p := range []string{wire.ProtoSubscribe, wire.ProtoSubscribe11} {
				if pp := pc.ProtocolPeer[protocol.ID(p)]; int(pp.StreamsInbound) < 2*tc.subs+tc.reqs || int(pp.StreamsOutbound) < 2*tc.subs+tc.reqs {
					t.Errorf("%s: %s per peer: %+v, want at least %d streams each way", name, p, pp, 2*tc.subs+tc.reqs)
				}
			}
			for _, p := range []string{wire.ProtoPerform, wire.ProtoPublish11, wire.ProtoList, wire.ProtoDeliver} {
				if pp := pc.ProtocolPeer[protocol.ID(p)]; int(pp.StreamsInbound) < 2*tc.reqs || int(pp.StreamsOutbound) < 2*tc.reqs {
					t.Errorf("%s: %s per peer: %+v, want at least %d streams each way", name, p, pp, 2*tc.reqs)
				}
			}
			if int(tr.StreamsInbound) < tc.subs+tc.reqs || int(tr.StreamsOutbound) < tc.subs+tc.reqs {
				t.Errorf("%s: transient %+v, want at least %d streams each way (a subscriber resuming at once)", name, tr, tc.subs+tc.reqs)
			}
		}
		for _, p := range []string{wire.ProtoSubscribe11, wire.ProtoPerform} {
			if l := pc.Protocol[protocol.ID(p)]; l.StreamsInbound != rcmgr.Unlimited {
				t.Errorf("%s: %s for all peers: %+v, want bounded by the system limits only", name, p, l)
			}
			if pp := pc.ProtocolPeer[protocol.ID(p)]; int(pp.Streams) > sl.Peer {
				t.Errorf("%s: %s per peer %+v above the peer's %d", name, p, pp, sl.Peer)
			}
		}
		if int(sys.ConnsInbound) < 2*cfg.Network.ConnHigh {
			t.Errorf("%s: system inbound connections %d, want at least twice conn_high %d", name, sys.ConnsInbound, cfg.Network.ConnHigh)
		}
		// libp2p's own services keep their limits.
		for svc, l := range want.Service {
			if pc.Service[svc] != l {
				t.Errorf("%s: service %s: %+v, want libp2p's %+v", name, svc, pc.Service[svc], l)
			}
		}
		if sys.FD != want.System.FD {
			t.Errorf("%s: system FD %d, want libp2p's %d", name, sys.FD, want.System.FD)
		}
	}
}

// A stream that a resource manager refused is explained: the peer's
// resource manager resets it with code 0x1002, and libp2p says no more
// than "stream reset (remote): code: 0x1002".
func TestLimitRefusalExplained(t *testing.T) {
	remote := fmt.Errorf("wire: read frame: %w", &network.StreamError{ErrorCode: network.StreamResourceLimitExceeded, Remote: true})
	if got := explainLimit(remote).Error(); !strings.Contains(got, "the peer's libp2p resource manager refused the stream") || !strings.Contains(got, "max_subscriptions_per_peer") {
		t.Errorf("remote refusal: %q", got)
	}
	local := fmt.Errorf("open stream: %w", network.ErrResourceLimitExceeded)
	if got := explainLimit(local).Error(); !strings.Contains(got, "this instance's libp2p resource manager refused the stream") {
		t.Errorf("local refusal: %q", got)
	}
	other := &network.StreamError{ErrorCode: network.StreamProtocolNegotiationFailed, Remote: true}
	if got := explainLimit(other); got != error(other) {
		t.Errorf("another reset: %q, want it unchanged", got)
	}
}

// What the resource manager refuses is logged on the refusing side.
func TestResourceManagerRefusalLogged(t *testing.T) {
	var buf bytes.Buffer
	r := rcmgrLog{log: slog.New(slog.NewTextHandler(&buf, nil)), noisy: newLogSampler()}
	p := peer.ID("peer-x")
	r.BlockProtocolPeer(wire.ProtoSubscribe11, p)
	got := buf.String()
	for _, want := range []string{"level=WARN", "libp2p resource manager refused a stream", wire.ProtoSubscribe11, p.String(), "max_subscriptions_per_peer"} {
		if !strings.Contains(got, want) {
			t.Errorf("log %q lacks %q", got, want)
		}
	}
}

// A peer that opens streams until the resource manager refuses one meets
// a stream limit, whose refusal resets only that stream and says why, and
// never the memory limit, whose refusal closes the whole connection (and
// every subscription on it) — even after busy streams' windows grew. On a
// machine with 1 GiB (libp2p's memory an eighth of it) and the default
// limits, one peer used to be allowed ~2300 streams by count but ~1400 by
// memory: the connection was closed in between.
func TestStreamLimitBindsBeforeMemory(t *testing.T) {
	cfg := DefaultConfig(0)
	lc, sl := limitsFor(cfg.Limits, cfg.Network, 1<<30/8, 4096)
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(lc))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.ResourceManager(rm))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	// The server's end of each stream: one byte to say it was accepted,
	// then read everything until the stream ends.
	srv.SetStreamHandler(protocol.ID(wire.ProtoSubscribe11), func(s network.Stream) {
		defer s.Close()
		if _, err := s.Write([]byte{1}); err == nil {
			_, _ = io.Copy(io.Discard, s)
		}
	})
	// A peer without limits of its own.
	crm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(rcmgr.InfiniteLimits))
	if err != nil {
		t.Fatal(err)
	}
	cli, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.ResourceManager(crm))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := cli.Connect(ctx, peer.AddrInfo{ID: srv.ID(), Addrs: srv.Addrs()}); err != nil {
		t.Fatal(err)
	}
	conns := cli.Network().ConnsToPeer(srv.ID())
	if len(conns) != 1 {
		t.Fatalf("%d connections, want 1", len(conns))
	}
	conn := conns[0]
	open := func() (network.Stream, error) {
		s, err := cli.NewStream(ctx, srv.ID(), protocol.ID(wire.ProtoSubscribe11))
		if err != nil {
			return nil, err
		}
		_ = s.SetDeadline(time.Now().Add(30 * time.Second))
		// The server's byte (libp2p may finish negotiating the protocol
		// only now).
		var b [1]byte
		if _, err := io.ReadFull(s, b[:]); err != nil {
			_ = s.Reset()
			return nil, err
		}
		return s, nil
	}
	const busy = 16
	var held []network.Stream
	// Busy streams first: their windows grow toward yamux's 16 MiB.
	for range busy {
		s, err := open()
		if err != nil {
			t.Fatalf("stream %d: %v", len(held)+1, err)
		}
		held = append(held, s)
		if _, err := s.Write(make([]byte, 16<<20)); err != nil {
			t.Fatalf("writing to stream %d: %v", len(held), err)
		}
	}
	var used int64
	_ = rm.ViewPeer(cli.ID(), func(ps network.PeerScope) error { used = ps.Stat().Memory; return nil })
	t.Logf("after %d busy streams the peer's scope holds %d MiB of its %d MiB", busy, used>>20, memoryFor(sl.Peer)>>20)
	var refused error
	for len(held) <= sl.Peer {
		s, err := open()
		if err != nil {
			refused = err
			break
		}
		held = append(held, s)
	}
	if refused == nil {
		t.Fatalf("%d streams accepted, over the per-peer limit %d", len(held), sl.Peer)
	}
	if conn.IsClosed() {
		t.Fatalf("the connection was closed after %d streams (limit %d): %v", len(held), sl.Peer, refused)
	}
	var se *network.StreamError
	if !errors.As(refused, &se) || se.ErrorCode != network.StreamResourceLimitExceeded {
		t.Fatalf("stream %d refused with %v, want a reset for a resource limit (0x1002)", len(held)+1, refused)
	}
	if len(held) < sl.Peer-16 { // libp2p's own streams (identify) count too
		t.Fatalf("only %d streams accepted, want about the per-peer limit %d", len(held), sl.Peer)
	}
	// The connection still carries the streams it held, and new ones
	// once some end.
	for _, s := range held[:4] {
		_ = s.Reset()
	}
	for i := range 4 {
		// Refused until the server has seen the resets.
		deadline := time.Now().Add(time.Minute)
		for {
			_, err := open()
			if err == nil {
				break
			}
			if !errors.As(err, &se) || se.ErrorCode != network.StreamResourceLimitExceeded || time.Now().After(deadline) {
				t.Fatalf("stream %d after 4 were reset: %v", i+1, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if conn.IsClosed() {
		t.Fatal("the connection was closed")
	}
	if _, err := held[len(held)-1].Write([]byte("still here")); err != nil {
		t.Fatalf("a held stream: %v", err)
	}
}

// network.max_conns_per_ip sets libp2p's per-address connection cap and
// scales its rate; connections through a static relay (all of which carry
// the relay's address) and on loopback are exempt from both. At libp2p's
// defaults a subscriber reaching peers through one relay was refused its
// ninth connection, and got one circuit every 5 s after its first 16.
func TestConnLimitsPerIP(t *testing.T) {
	relayKey, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	relayID, _ := peer.IDFromPrivateKey(relayKey)
	cfg := DefaultConfig(0)
	cfg.Network.MaxConnsPerIP = 3
	cfg.Network.Relays = []string{"/ip4/192.0.0.193/tcp/4001/p2p/" + relayID.String(), "/ip6/::ffff:192.0.0.194/tcp/4001/p2p/" + relayID.String(),
		// Given by DNS name: exempt at the addresses the name has at start.
		"/dns4/relay.example/tcp/4001/p2p/" + relayID.String(), "/dns/relay.example/udp/4001/quic-v1/p2p/" + relayID.String(),
		"/dns6/gone.example/tcp/4001/p2p/" + relayID.String(), "/dnsaddr/relays.example/p2p/" + relayID.String()}
	relays, err := cfg.Network.StaticRelays()
	if err != nil {
		t.Fatal(err)
	}
	resolver, err := madns.NewResolver(madns.WithDefaultResolver(&madns.MockResolver{
		IP: map[string][]net.IPAddr{
			"relay.example":  {{IP: net.ParseIP("192.0.0.195")}, {IP: net.ParseIP("192.0.0.196")}},
			"relay6.example": {{IP: net.ParseIP("2001:db8::7")}},
		},
		TXT: map[string][]string{"_dnsaddr.relays.example": {"dnsaddr=/dns6/relay6.example/tcp/4001/p2p/" + relayID.String()}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	relayIPs, unresolved := relayAddresses(context.Background(), relays, resolver)
	if want := []string{"/dns6/gone.example/tcp/4001"}; !slices.Equal(unresolved, want) {
		t.Errorf("unresolved relay addresses %q, want %q", unresolved, want)
	}
	lc, _ := limitsFor(cfg.Limits, cfg.Network, 3<<30, 4096)
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(lc), connLimitOptions(cfg.Network, false, relayIPs)...)
	if err != nil {
		t.Fatal(err)
	}
	defer rm.Close()
	// Concurrent connections from one address: 3.
	if n := takes(rm, network.DirOutbound, "/ip4/10.1.2.3/tcp/4001", 10, true); n != 3 {
		t.Errorf("%d concurrent connections from one address with max_conns_per_ip 3, want 3", n)
	}
	// New connections from one address: a burst of 6, then refused.
	if n := takes(rm, network.DirOutbound, "/ip4/10.1.2.4/tcp/4001", 10, false); n != 6 {
		t.Errorf("%d new connections at once from one address with max_conns_per_ip 3, want 6", n)
	}
	// Through the relay, and on loopback: 40 at once, each new (fewer
	// than the resource manager's connection limits).
	for _, addr := range []string{"/ip4/192.0.0.193/tcp/4001/p2p/" + relayID.String() + "/p2p-circuit", "/ip4/127.0.0.1/tcp/4001",
		// An IPv4-mapped relay address, in either form.
		"/ip6/::ffff:192.0.0.194/tcp/4001/p2p/" + relayID.String() + "/p2p-circuit", "/ip4/192.0.0.194/tcp/4001/p2p/" + relayID.String() + "/p2p-circuit",
		// Both addresses of the relay given by name.
		"/ip4/192.0.0.195/tcp/4001/p2p/" + relayID.String() + "/p2p-circuit", "/ip4/192.0.0.196/udp/4001/quic-v1/p2p/" + relayID.String() + "/p2p-circuit",
		// The one a /dnsaddr record names by /dns6 name.
		"/ip6/2001:db8::7/tcp/4001/p2p/" + relayID.String() + "/p2p-circuit"} {
		if n := takes(rm, network.DirOutbound, addr, 40, true); n != 40 {
			t.Errorf("%s: %d of 40 connections at once", addr, n)
		}
	}

	// A relay takes relay_max_reservations_per_ip connections from one
	// address even above max_conns_per_ip.
	cfg.Network.RelayMaxReservationsPerIP = 5
	relayRM, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(lc), connLimitOptions(cfg.Network, true, relayIPs)...)
	if err != nil {
		t.Fatal(err)
	}
	defer relayRM.Close()
	if n := takes(relayRM, network.DirInbound, "/ip4/10.9.9.9/tcp/5555", 10, true); n != 5 {
		t.Errorf("relay: %d connections from one address with relay_max_reservations_per_ip 5, want 5", n)
	}
}

// takes opens connections from (or to) addr on rm until one is refused or
// max are open, and returns how many it got: held open together (hold), or
// each closed at once (new connections, for the rate limits). It closes
// those it held before it returns.
func takes(rm network.ResourceManager, dir network.Direction, addr string, max int, hold bool) int {
	var held []network.ConnManagementScope
	defer func() {
		for _, s := range held {
			s.Done()
		}
	}()
	for n := 0; n < max; n++ {
		s, err := rm.OpenConnection(dir, true, ma.StringCast(addr))
		if err != nil {
			return n
		}
		if hold {
			held = append(held, s)
		} else {
			s.Done()
		}
	}
	return max
}
