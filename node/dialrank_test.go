package node_test

import (
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	ma "github.com/multiformats/go-multiaddr"
)

func TestPreferTCPRanker(t *testing.T) {
	addrs := func(ss ...string) []ma.Multiaddr {
		var out []ma.Multiaddr
		for _, s := range ss {
			out = append(out, ma.StringCast(s))
		}
		return out
	}
	delays := func(in []ma.Multiaddr) map[string]time.Duration {
		out := map[string]time.Duration{}
		for _, ad := range node.PreferTCPRanker(in) {
			out[ad.Addr.String()] = ad.Delay
		}
		if len(out) != len(in) {
			t.Fatalf("ranked %d of %d addresses", len(out), len(in))
		}
		return out
	}

	// Addresses are only ranked here, never dialed.
	const (
		tcp4  = "/ip4/192.168.1.2/tcp/4001"
		quic4 = "/ip4/192.168.1.2/udp/4001/quic-v1"
		pubT  = "/ip4/93.184.216.34/tcp/4001"
		pubQ  = "/ip4/93.184.216.34/udp/4001/quic-v1"
		relay = "/ip4/93.184.216.35/tcp/4001/p2p/12D3KooWGRUVh7QTqMNB4nBAKmJxQdNBk4cx9JjQa6BdnYKBDPZE/p2p-circuit"
	)
	d := delays(addrs(quic4, tcp4))
	if d[tcp4] != 0 || d[quic4] < 30*time.Millisecond {
		t.Fatalf("private tcp+quic: %v, want tcp at once and quic at least 30ms later", d)
	}
	d = delays(addrs(pubQ, pubT, relay))
	if d[pubT] != 0 || d[pubQ] < 250*time.Millisecond {
		t.Fatalf("public tcp+quic+relay: %v, want tcp at once, quic at least 250ms later", d)
	}
	if d[relay] < 250*time.Millisecond {
		t.Fatalf("a relay circuit over TCP was ranked as a direct TCP address: %v", d)
	}
	// Public TCP and a relay, no QUIC: the relay waits libp2p's RelayDelay,
	// as the default ranker makes it.
	d = delays(addrs(pubT, relay))
	if d[pubT] != 0 || d[relay] < swarm.RelayDelay {
		t.Fatalf("public tcp+relay: %v, want the relay at least %v later", d, swarm.RelayDelay)
	}
	// Only one kind: libp2p's default ranking, first address at once.
	for _, in := range [][]ma.Multiaddr{addrs(quic4), addrs(tcp4), addrs(relay)} {
		if d := delays(in); d[in[0].String()] != 0 {
			t.Fatalf("single address %v ranked %v, want no delay", in[0], d)
		}
	}
}

func TestConnectionsPreferTCP(t *testing.T) {
	for _, tc := range []struct {
		prefer, want string
	}{{node.PreferTCP, "tcp"}, {node.PreferQUIC, "quic-v1"}} {
		t.Run(tc.prefer, func(t *testing.T) {
			prefer := func(o *node.Options) { o.Config.Network.PreferTransport = tc.prefer }
			a := newTestNode(t, withQuietLog(), prefer)
			b := newTestNode(t, withQuietLog(), prefer)
			connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{"x"}})
			// The preferred transport is dialled first and the other 30 ms
			// later, which on loopback is almost always never. A machine
			// busy enough to stall the first dial for 30 ms can connect
			// over the other one, so a few fresh dials are allowed; with
			// the option ignored, the default ranking would connect over
			// QUIC every time.
			var got []string
			for attempt := range 5 {
				if attempt > 0 {
					if err := b.Host().Network().ClosePeer(a.ID()); err != nil {
						t.Fatal(err)
					}
					if err := b.Host().Connect(testCtx(t), peer.AddrInfo{ID: a.ID(), Addrs: a.Host().Addrs()}); err != nil {
						t.Fatal(err)
					}
				}
				for _, c := range b.Host().Network().ConnsToPeer(a.ID()) {
					if _, err := c.RemoteMultiaddr().ValueForProtocol(ma.ProtocolWithName(tc.want).Code); err == nil {
						return
					}
					got = append(got, c.RemoteMultiaddr().String())
				}
			}
			t.Fatalf("prefer_transport %s: 5 dials connected over %v, never over %s", tc.prefer, got, tc.want)
		})
	}
}
