package node

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/proto"
	manet "github.com/multiformats/go-multiaddr/net"
)

// relayCheckAfter is how long after start, and then how often, the
// service looks for static relays (network.relays) that give it no relay
// address, and logs why. AutoRelay itself says nothing: a relay that
// cannot be reached, runs no relay service, or has no public address left
// `service status` without relay_reservations and the log silent.
var relayCheckAfter = 45 * time.Second

// relayProblem says why static relay ai gives this host no relay address
// yet, or "" when it does (reservations are this host's circuit
// addresses). It may dial the relay (bounded by ctx) to learn why.
func relayProblem(ctx context.Context, nw *netsvc, ai peer.AddrInfo, reservations []string) string {
	mark := "/p2p/" + ai.ID.String() + "/p2p-circuit"
	if slices.ContainsFunc(reservations, func(a string) bool { return strings.Contains(a, mark) }) {
		return ""
	}
	h := nw.host
	if h.Network().Connectedness(ai.ID) != network.Connected {
		if err := h.Connect(ctx, ai); err != nil {
			return fmt.Sprintf("it cannot be reached at %v: %v", ai.Addrs, err)
		}
	}
	if ok, err := h.Peerstore().SupportsProtocols(ai.ID, proto.ProtoIDv2Hop); err == nil && len(ok) == 0 {
		// Identify has run by the time Connect returns.
		return "it does not run a relay service (on the relay: coattail service start --relay, or relay_service: true)"
	}
	var public bool
	for _, a := range h.Peerstore().Addrs(ai.ID) {
		public = public || manet.IsPublicAddr(a)
	}
	if !public {
		return fmt.Sprintf("it runs a relay service, but libp2p announces relay addresses only through a relay's public addresses, and it has none (%v): peers cannot be told how to reach this instance through it (docs/NAT.md)", ai.Addrs)
	}
	return "it runs a relay service and has a public address, but no reservation was made yet (it may have refused one: relay_max_reservations); AutoRelay retries every " + staticRelayInterval.String()
}

// checkRelays logs, every (relayCheckAfter, read by the caller) from
// start on, each static relay that gives this host no relay address, once
// per distinct reason, until ctx ends.
func (nw *netsvc) checkRelays(ctx context.Context, static []peer.AddrInfo, every time.Duration) {
	said := make(map[peer.ID]string)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		nw.nat.mu.Lock()
		reservations := slices.Clone(nw.nat.reservations)
		nw.nat.mu.Unlock()
		for _, ai := range static {
			dctx, cancel := context.WithTimeout(network.WithAllowLimitedConn(ctx, "relay check"), 10*time.Second)
			why := relayProblem(dctx, nw, ai, reservations)
			cancel()
			if ctx.Err() != nil {
				return
			}
			if why != said[ai.ID] {
				if why == "" {
					nw.n.log.Info("static relay gives this instance a relay address now", "relay", ai.ID.String())
				} else {
					nw.n.log.Warn("static relay gives this instance no relay address: "+why, "relay", ai.ID.String())
				}
				said[ai.ID] = why
			}
		}
	}
}
