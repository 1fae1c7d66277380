package node

import (
	"fmt"
	"testing"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	ma "github.com/multiformats/go-multiaddr"
)

// Review: QUIC connections grow their flow-control windows by reserving
// memory in their connection scope (and so the peer's and the system's)
// at priority 152 (libp2p's quic conn.allowWindowIncrease), granted up to
// 153/256 of a scope's memory, not yamux's 129/256. memoryFor leaves
// 127/256 for initial windows: with QUIC peers' windows grown, the system
// holds fewer yamux streams' initial windows than its stream limit, and a
// TCP (or relayed) peer's inbound stream refused its window closes that
// peer's whole connection.
func TestReviewQUICWindowsLeaveRoomForStreamWindows(t *testing.T) {
	cfg := DefaultConfig(0)
	lc, sl := limitsFor(cfg.Limits, cfg.Network, 1<<30, 4096) // an 8 GiB machine
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(lc))
	if err != nil {
		t.Fatal(err)
	}
	defer rm.Close()
	// QUIC peers whose connection windows grew to libp2p's 15 MiB.
	quic := 0
	for i := 0; ; i++ {
		addr := ma.StringCast(fmt.Sprintf("/ip4/%d.%d.%d.1/udp/1/quic-v1", 11+i%200, i/200%250, i%250))
		cs, err := rm.OpenConnection(network.DirInbound, false, addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := cs.SetPeer(peer.ID(fmt.Sprintf("quic-%d", i))); err != nil {
			t.Fatal(err)
		}
		if cs.ReserveMemory(15<<20, network.ReservationPriorityMedium) != nil {
			cs.Done()
			break
		}
		quic++
	}
	// A TCP peer's yamux streams: each initial window at priority 255.
	var ps network.PeerScope
	cs, err := rm.OpenConnection(network.DirInbound, false, ma.StringCast("/ip4/5.6.7.8/tcp/1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.SetPeer(peer.ID("tcp")); err != nil {
		t.Fatal(err)
	}
	ps = cs.PeerScope()
	windows := 0
	for windows < sl.System {
		sp, err := ps.BeginSpan()
		if err != nil {
			t.Fatal(err)
		}
		if sp.ReserveMemory(streamWindow, 255) != nil {
			break
		}
		windows++
	}
	t.Logf("%d QUIC connections at 15 MiB; then %d stream windows fit; system stream limit %d, per peer %d", quic, windows, sl.System, sl.Peer)
	if windows+quic*4 < sl.System {
		t.Errorf("%d stream windows fit beside %d QUIC connections (4 streams each), below the system stream limit %d: an inbound yamux stream within the limits closes its connection", windows, quic, sl.System)
	}
}
