package node

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/coattail/coattail/node/wire"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
)

// The resource manager's limits follow Coattail's: one peer may hold
// limits.max_subscriptions_per_peer subscription streams plus
// max_streams_per_peer request streams, in either direction, and the
// system-wide limits hold at least one such peer.
func TestResourceLimitsFollowConfig(t *testing.T) {
	for _, tc := range []struct{ subs, reqs int }{{1024, 128}, {5000, 16}, {3, 2}} {
		cfg := DefaultConfig(0)
		cfg.Limits.MaxSubscriptionsPerPeer, cfg.Limits.MaxStreamsPerPeer = tc.subs, tc.reqs
		pc := resourceLimits(cfg.Limits, cfg.Network).ToPartialLimitConfig()
		t.Logf("subs %d, reqs %d: system %+v, transient %+v, peer %+v, subscribe per peer %+v", tc.subs, tc.reqs,
			pc.System, pc.Transient, pc.PeerDefault, pc.ProtocolPeer[wire.ProtoSubscribe11])
		need := tc.subs + tc.reqs
		for _, p := range []string{wire.ProtoSubscribe, wire.ProtoSubscribe11} {
			pp := pc.ProtocolPeer[protocol.ID(p)]
			if int(pp.StreamsInbound) < need || int(pp.StreamsOutbound) < need {
				t.Errorf("%s per peer: %+v, want at least %d streams each way", p, pp, need)
			}
			if l := pc.Protocol[protocol.ID(p)]; l.StreamsInbound != rcmgr.Unlimited {
				t.Errorf("%s for all peers: %+v, want bounded by the system limits only", p, l)
			}
		}
		for _, p := range []string{wire.ProtoPerform, wire.ProtoPublish11, wire.ProtoList, wire.ProtoDeliver} {
			if pp := pc.ProtocolPeer[protocol.ID(p)]; int(pp.StreamsInbound) < tc.reqs || int(pp.StreamsOutbound) < tc.reqs {
				t.Errorf("%s per peer: %+v, want at least %d streams each way", p, pp, tc.reqs)
			}
		}
		peer, sys, tr := pc.PeerDefault, pc.System, pc.Transient
		if int(peer.StreamsInbound) < need || int(peer.StreamsOutbound) < need {
			t.Errorf("per peer: %+v, want at least %d streams each way", peer, need)
		}
		if int64(peer.Memory) < int64(need)*streamWindow {
			t.Errorf("per peer memory %d, want room for %d streams' windows", peer.Memory, need)
		}
		if sys.StreamsInbound < peer.StreamsInbound || sys.StreamsOutbound < peer.StreamsOutbound || sys.Memory < peer.Memory {
			t.Errorf("system %+v holds less than one peer %+v", sys, peer)
		}
		if int(sys.ConnsInbound) < 2*cfg.Network.ConnHigh {
			t.Errorf("system inbound connections %d, want at least twice conn_high %d", sys.ConnsInbound, cfg.Network.ConnHigh)
		}
		if int(tr.StreamsInbound) < need || int(tr.StreamsOutbound) < need {
			t.Errorf("transient %+v, want at least %d streams each way (a subscriber resuming at once)", tr, need)
		}
		if sys.StreamsInbound < systemStreams {
			t.Errorf("system inbound streams %d, want at least %d", sys.StreamsInbound, systemStreams)
		}
		// libp2p's own services keep their limits.
		def := rcmgr.DefaultLimits
		libp2p.SetDefaultServiceLimits(&def)
		want := def.AutoScale().ToPartialLimitConfig()
		for svc, l := range want.Service {
			if pc.Service[svc] != l {
				t.Errorf("service %s: %+v, want libp2p's %+v", svc, pc.Service[svc], l)
			}
		}
		if sys.FD != want.System.FD {
			t.Errorf("system FD %d, want libp2p's %d", sys.FD, want.System.FD)
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
