package node

import (
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// Transport preferences (network.prefer_transport).
const (
	PreferTCP  = "tcp"
	PreferQUIC = "quic"
)

// preferTCPRanker is the dial ranker for network.prefer_transport: tcp. It
// dials direct TCP addresses first, ranked among themselves as libp2p's
// default ranker would, and everything else (QUIC, relays) as the default
// ranker would but behind them, by libp2p's own TCP delay (30 ms for
// private addresses, 250 ms for public ones). When the TCP dial succeeds
// in that time, the others are never made.
//
// libp2p's default prefers QUIC. Coattail's streams are long-lived and
// carry bulk deliveries, and between the same two hosts a TCP+Noise+yamux
// connection moves 2× the bytes of a QUIC one for the same CPU (the kernel
// segments and acknowledges TCP; quic-go encrypts, packs and acknowledges
// every 1.4 KB datagram in user space); and quic-go drops datagrams when
// 256 wait for its connection goroutine (a busy host), which stalls a
// subscription for a loss-recovery timeout. See docs/PERFORMANCE.md. Hole punching
// dials every address at once and does not use the ranker.
func preferTCPRanker(addrs []ma.Multiaddr) []network.AddrDelay {
	var tcpAddrs, rest []ma.Multiaddr
	for _, a := range addrs {
		if isDirectTCP(a) {
			tcpAddrs = append(tcpAddrs, a)
		} else {
			rest = append(rest, a)
		}
	}
	if len(tcpAddrs) == 0 || len(rest) == 0 {
		return swarm.DefaultDialRanker(addrs)
	}
	out := swarm.DefaultDialRanker(tcpAddrs)
	var last time.Duration
	delay := swarm.PrivateTCPDelay
	for _, ad := range out {
		last = max(last, ad.Delay)
		if manet.IsPublicAddr(ad.Addr) {
			delay = swarm.PublicTCPDelay
		}
	}
	for _, ad := range swarm.DefaultDialRanker(rest) {
		ad.Delay += last + delay
		// libp2p holds relay dials back by RelayDelay when a public
		// direct address exists; rest may no longer hold that address.
		if delay == swarm.PublicTCPDelay && isRelayAddr(ad.Addr) {
			ad.Delay = max(ad.Delay, swarm.RelayDelay)
		}
		out = append(out, ad)
	}
	return out
}

// isDirectTCP reports whether a is a TCP address that is not a relay
// circuit.
func isDirectTCP(a ma.Multiaddr) bool {
	_, err := a.ValueForProtocol(ma.P_TCP)
	return err == nil && !isRelayAddr(a)
}
