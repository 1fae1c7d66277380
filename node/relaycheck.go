package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	pbv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/pb"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/proto"
	manet "github.com/multiformats/go-multiaddr/net"
)

// relayCheckAfter is how long after start, and then how often, the
// service looks for static relays (network.relays) that give it no relay
// address, and logs why. AutoRelay itself says nothing: a relay that
// cannot be reached, runs no relay service, or has no public address left
// `service status` without relay_reservations and the log silent.
var relayCheckAfter = 45 * time.Second

// relayAddrPublic is manet.IsPublicAddr, which libp2p applies to a relay's
// addresses before it announces circuit addresses through it. A variable
// for tests on loopback.
var relayAddrPublic = manet.IsPublicAddr

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
		public = public || relayAddrPublic(a)
	}
	if !public {
		return fmt.Sprintf("it runs a relay service, but libp2p announces relay addresses only through a relay's public addresses, and it has none (%v): peers cannot be told how to reach this instance through it (docs/NAT.md)", ai.Addrs)
	}
	// Ask for a reservation to learn whether the relay gives one. It
	// holds no slot of its own: the relay keeps one per peer, which
	// AutoRelay's reservation takes over. (Not for a relay without a
	// public address, above: AutoRelay would never use that reservation,
	// and it would hold a slot for nothing.)
	if _, err := client.Reserve(ctx, h, ai); err != nil {
		var re client.ReservationError
		if errors.As(err, &re) && re.Status == pbv2.Status_RESERVATION_REFUSED {
			return "it refuses this instance a reservation: it holds as many as it allows in all or from this instance's IP address (on the relay: network.relay_max_reservations, relay_max_reservations_per_ip; instances behind one NAT share an address); AutoRelay asks again every " + staticRelayBackoff.String()
		}
		return fmt.Sprintf("it refuses this instance a reservation: %v", err)
	}
	return "it runs a relay service, has a public address and gives a reservation, but AutoRelay has not taken one yet; it retries every " + staticRelayInterval.String()
}

// relayLog is the relay service's metrics tracer: it logs the
// reservations and circuits the relay refuses for its limits (libp2p
// logs them only at debug level, so an operator never learnt why, say,
// the ninth instance behind one NAT got no reservation). The lines are
// warnings, sampled as other peer-caused messages are.
type relayLog struct {
	log   *slog.Logger
	noisy *logSampler
	nc    NetworkConfig
}

func (r relayLog) ReservationRequestHandled(status pbv2.Status) {
	if status != pbv2.Status_RESERVATION_REFUSED {
		return
	}
	if ok, extra := r.noisy.allow(); ok {
		r.log.Warn("relay service refused a reservation: it holds as many as network.relay_max_reservations allows, or as relay_max_reservations_per_ip allows from the requester's IP address (instances behind one NAT share an address)",
			append([]any{"relay_max_reservations", r.nc.RelayMaxReservations, "relay_max_reservations_per_ip", r.nc.RelayMaxReservationsPerIP}, extra...)...)
	}
}

func (r relayLog) ConnectionRequestHandled(status pbv2.Status) {
	if status != pbv2.Status_RESOURCE_LIMIT_EXCEEDED {
		return
	}
	if ok, extra := r.noisy.allow(); ok {
		r.log.Warn("relay service refused a relayed connection: one of its ends has as many as network.relay_max_circuits allows open, or the resource manager refused the buffers",
			append([]any{"relay_max_circuits", r.nc.RelayMaxCircuits}, extra...)...)
	}
}

func (relayLog) RelayStatus(bool)               {}
func (relayLog) ConnectionOpened()              {}
func (relayLog) ConnectionClosed(time.Duration) {}
func (relayLog) ReservationAllowed(bool)        {}
func (relayLog) ReservationClosed(int)          {}
func (relayLog) BytesTransferred(int)           {}

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
