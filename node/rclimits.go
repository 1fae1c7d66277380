package node

import (
	"context"
	"math"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/coattail/coattail/node/wire"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/x/rate"
	ma "github.com/multiformats/go-multiaddr"
	madns "github.com/multiformats/go-multiaddr-dns"
	manet "github.com/multiformats/go-multiaddr/net"
	"golang.org/x/sys/unix"
)

// streamLimits are the stream counts resourceLimits settled on, for the
// start-up log and tests.
type streamLimits struct {
	// PeerWanted is what one peer needs by the config: its subscription
	// and request streams (each twice over, see resourceLimits) plus
	// libp2p's own services' per-peer allowance.
	PeerWanted int
	// Peer is how many streams one peer may hold with this instance, both
	// directions together: PeerWanted, unless the machine's memory allows
	// less (then half of System).
	Peer int
	// System is how many streams all peers together may hold.
	System int
	// OneWay is what one peer needs to hold its subscriptions and request
	// streams once, in one direction, plus libp2p's own: less than that
	// per peer and a subscriber cannot reach max_subscriptions_per_peer.
	OneWay int
}

// Short reports whether one peer cannot even hold max_subscriptions_per_peer
// subscriptions and max_streams_per_peer requests in one direction.
func (s streamLimits) Short() bool { return s.Peer < s.OneWay }

// Clamped reports whether the machine's memory allows one peer fewer
// streams than the config asks for.
func (s streamLimits) Clamped() bool { return s.Peer < s.PeerWanted }

// resourceLimits are the libp2p resource manager's limits on this machine:
// libp2p's defaults auto-scaled as libp2p.New would, with the stream limits
// Coattail's own limits need (see limitsFor).
func resourceLimits(l LimitsConfig, nc NetworkConfig) (rcmgr.ConcreteLimitConfig, streamLimits) {
	fds := 0
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil {
		fds = int(min(rl.Cur, math.MaxInt32)) / 2 // as libp2p's AutoScale
	}
	return limitsFor(l, nc, int64(MachineMemory().Bytes/8), fds)
}

// limitsFor computes the resource manager's limits for a machine on which
// libp2p allows itself mem bytes (an eighth of the machine's memory, as
// libp2p's AutoScale) and fds file descriptors: libp2p's defaults scaled
// to them (including the per-service and per-protocol limits of libp2p's
// bundled services: identify, ping, AutoNAT, hole punching, the relay;
// without them each of those fell back to the generic service defaults,
// which let one peer hold 64 times the ping or hole-punch streams libp2p
// allows), with the stream limits that Coattail's own limits need raised
// (SECURITY.md, "The libp2p resource manager").
//
// Coattail polices each peer itself (limits.max_streams_per_peer,
// max_subscriptions_per_peer); the resource manager stays a backstop above
// those, so that a peer within them is never reset by libp2p (at libp2p's
// defaults a subscriber's 65th or so subscription stream to one publisher
// was reset with "stream limit exceeded"), and bounds what all peers
// together may hold.
//
// Memory is what makes the numbers hang together. yamux reserves each
// stream's initial receive window (256 KiB) in its peer's scope when the
// stream opens, at the highest priority, and grows the windows of busy
// streams at priority 128, which the resource manager grants only while
// the scope (and the system) stays under 129/256 of its memory. An inbound
// stream refused its window closes the whole connection (yamux's receive
// loop fails), and with it every subscription on it, whereas a stream over
// a stream limit is only reset, with an error that says why. So every
// scope's memory is sized by memoryFor: whatever the busy streams' windows
// grew to, each stream the stream limits allow still gets its window, and
// the stream limits are what a peer meets first. The memory stays an
// accounting bound: yamux allocates a window's buffer only as data
// arrives.
//
// The system's memory is at most twice libp2p's own limit (an eighth of
// the machine's memory plus 128 MiB), half of which may hold initial
// windows: so what peers can make this instance buffer by opening streams
// and filling their windows stays within libp2p's own bound. Where that
// allows fewer streams than the config asks for one peer, one peer gets
// half the system's streams.
func limitsFor(l LimitsConfig, nc NetworkConfig, mem int64, fds int) (rcmgr.ConcreteLimitConfig, streamLimits) {
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	// Connections: room for many peers (a publisher with hundreds of
	// subscribers), scaled as libp2p's own defaults are; libp2p's (64
	// inbound connections, plus as many per GiB of its memory) are sized
	// for a node whose peers come and go.
	limits.SystemBaseLimit.ConnsInbound = systemConns
	limits.SystemBaseLimit.ConnsOutbound = systemConns
	limits.SystemBaseLimit.Conns = 2 * systemConns
	limits.SystemLimitIncrease.ConnsInbound = systemConns
	limits.SystemLimitIncrease.ConnsOutbound = systemConns
	limits.SystemLimitIncrease.Conns = 2 * systemConns
	def := limits.Scale(mem, fds)
	dp := def.ToPartialLimitConfig()

	// Streams one peer may make Coattail hold, both directions together:
	// its subscriptions' delivery streams and its request streams, each
	// twice over. A subscription stream that was reset on one side may
	// still count on the other when its subscription resumes on a new
	// stream (a connection that died is noticed at different times at its
	// ends); a request stream leaves Coattail's count as its last answer
	// goes out but libp2p's only once both sides have closed it; and two
	// instances may be each other's subscriber. Plus what libp2p's own
	// services allow one peer.
	subs, reqs := min(l.MaxSubscriptionsPerPeer, maxLimitBase), min(l.MaxStreamsPerPeer, maxLimitBase)
	own := 0
	for _, sl := range dp.ServicePeer {
		own += int(sl.Streams)
	}
	sl := streamLimits{PeerWanted: own + 2*subs + 2*reqs, OneWay: own + subs + reqs}

	// All peers: libp2p's scaled stream limits raised to hold a few
	// hundred subscribers with a few subscriptions each, and two peers at
	// their fullest; then as many as the memory bound holds.
	sysMem := 2 * int64(dp.System.Memory)
	sl.System = min(max(systemStreams+int(int64(systemStreams)*mem>>30), 2*sl.PeerWanted), streamsIn(sysMem))
	sl.Peer = sl.PeerWanted
	if sl.Peer > sl.System/2 {
		sl.Peer = sl.System / 2
	}

	pc := rcmgr.PartialLimitConfig{
		ProtocolPeer: map[protocol.ID]rcmgr.ResourceLimits{},
		Protocol:     map[protocol.ID]rcmgr.ResourceLimits{},
	}
	for _, p := range wire.Protocols() {
		n := 2 * reqs
		if isSubscribe(protocol.ID(p)) {
			n = 2*subs + reqs // and subscribe requests being set up
		}
		n = min(n, sl.Peer)
		pc.ProtocolPeer[protocol.ID(p)] = rcmgr.ResourceLimits{
			StreamsInbound: rcmgr.LimitVal(n), StreamsOutbound: rcmgr.LimitVal(n), Streams: rcmgr.LimitVal(n),
		}
		// All peers together are bounded by the system limits.
		pc.Protocol[protocol.ID(p)] = rcmgr.ResourceLimits{
			StreamsInbound: rcmgr.Unlimited, StreamsOutbound: rcmgr.Unlimited, Streams: rcmgr.Unlimited,
		}
	}
	pc.PeerDefault = rcmgr.ResourceLimits{
		StreamsInbound:  rcmgr.LimitVal(sl.Peer),
		StreamsOutbound: rcmgr.LimitVal(sl.Peer),
		Streams:         rcmgr.LimitVal(sl.Peer),
		Memory:          rcmgr.LimitVal64(memoryFor(sl.Peer)),
	}
	// Connections up to twice network.conn_high (the connection manager
	// trims above it, but not the connections that carry subscriptions).
	conns := min(nc.ConnHigh, maxLimitBase)
	sys := dp.System
	pc.System = rcmgr.ResourceLimits{
		StreamsInbound:  rcmgr.LimitVal(sl.System),
		StreamsOutbound: rcmgr.LimitVal(sl.System),
		Streams:         rcmgr.LimitVal(sl.System),
		ConnsInbound:    atLeast(sys.ConnsInbound, rcmgr.LimitVal(2*conns)),
		ConnsOutbound:   atLeast(sys.ConnsOutbound, rcmgr.LimitVal(2*conns)),
		Conns:           atLeast(sys.Conns, rcmgr.LimitVal(4*conns)),
		Memory:          rcmgr.LimitVal64(max(memoryFor(sl.System), int64(sys.Memory))),
	}
	// Every stream is transient until its protocol is negotiated: a
	// subscriber resuming all its subscriptions at once (after either side
	// restarted) opens them together. (yamux reserves windows in the
	// peer's scope, not the transient one.)
	tr := dp.Transient
	burst := rcmgr.LimitVal(min(subs+reqs, sl.Peer))
	pc.Transient = rcmgr.ResourceLimits{
		StreamsInbound:  atLeast(tr.StreamsInbound, burst),
		StreamsOutbound: atLeast(tr.StreamsOutbound, burst),
		Streams:         atLeast(tr.Streams, 2*burst),
	}
	return pc.Build(def), sl
}

// streamWindow is what yamux reserves for each stream it opens or
// accepts: its initial receive window.
const streamWindow = 256 << 10

// otherMemory is room in each scope for what libp2p reserves besides
// stream windows (its services' buffers: a few MiB per peer).
const otherMemory = 16 << 20

// memoryFor is the memory a scope needs to give n streams their initial
// windows however far windows grew: yamux grows a busy stream's only while
// the scope stays under 129/256 of its memory, but QUIC grows a
// connection's while it stays under 153/256 (libp2p's quic transport
// reserves at ReservationPriorityMedium, in the connection's peer's and
// the system's scopes too), so the other 103/256 must hold the n windows
// (and otherMemory).
func memoryFor(n int) int64 {
	return (int64(n)*streamWindow + otherMemory) * 256 / windowShare
}

// windowShare is the 256ths of a scope's memory that window growth leaves
// to initial windows: 256 less ReservationPriorityMedium+1.
const windowShare = 256 - (152 + 1)

// streamsIn is how many streams memoryFor fits in mem (at least 1).
func streamsIn(mem int64) int {
	return int(max(1, min((mem*windowShare/256-otherMemory)/streamWindow, maxLimitBase)))
}

// The system-wide connection limits per direction, before scaling, and
// added per GiB of the memory libp2p allows itself: 256 connections, so
// 256 + 256 on a machine with 8 GiB. systemStreams is the system-wide
// stream limit before memory caps it (and before it is raised to hold two
// peers at their fullest), with as many added per GiB of libp2p's memory.
const (
	systemStreams = 8192
	systemConns   = 256
)

// maxLimitBase caps the config values the limits are computed from, so
// that a huge one (the config bounds max_subscriptions_per_peer only from
// below) cannot overflow them.
const maxLimitBase = 1 << 24

// atLeast is v raised to n (a limit of libp2p's that is unlimited stays so).
func atLeast(v, n rcmgr.LimitVal) rcmgr.LimitVal {
	if v == rcmgr.Unlimited {
		return v
	}
	return max(v, n)
}

// connLimitOptions are the resource manager's per-address connection
// limits: at most nc.MaxConnsPerIP connections from (or to) one IPv4
// address or IPv6 /56 at once (8 times that per /48), and new ones at
// libp2p's rate scaled with it (libp2p, at 8: a burst of 16, then one every
// 5 s). The addresses of the static relays are exempt from both: every
// connection through a relay carries the relay's address, so a subscriber
// whose circuits were cut often (a relay's data limit) got one circuit
// every 5 s after its first 16, and one reaching more than 8 peers through
// a relay was refused the ninth connection. The relay itself bounds what
// one peer may do through it (relay_max_circuits, reservations).
//
// relayIPs are the static relays' IP addresses (see relayAddresses).
//
// A relay (relay is true) takes at least relay_max_reservations_per_ip
// connections from one address: each instance holding a reservation holds
// a connection, and those behind one NAT share its address.
func connLimitOptions(nc NetworkConfig, relay bool, relayIPs []netip.Addr) []rcmgr.Option {
	n := max(nc.MaxConnsPerIP, 1)
	if relay {
		n = max(n, nc.RelayMaxReservationsPerIP)
	}
	perSec := 0.2 * float64(n) / 8
	ipv4 := []rcmgr.ConnLimitPerSubnet{{PrefixLength: 32, ConnCount: n}}
	ipv6 := []rcmgr.ConnLimitPerSubnet{{PrefixLength: 56, ConnCount: n}, {PrefixLength: 48, ConnCount: 8 * n}}
	limiter := &rate.Limiter{
		// Loopback is never limited (libp2p's default too).
		NetworkPrefixLimits: []rate.PrefixLimit{
			{Prefix: netip.MustParsePrefix("127.0.0.0/8")},
			{Prefix: netip.MustParsePrefix("::1/128")},
		},
		SubnetRateLimiter: rate.SubnetLimiter{
			IPv4SubnetLimits: []rate.SubnetLimit{{PrefixLength: 32, Limit: rate.Limit{RPS: perSec, Burst: 2 * n}}},
			IPv6SubnetLimits: []rate.SubnetLimit{
				{PrefixLength: 56, Limit: rate.Limit{RPS: perSec, Burst: 2 * n}},
				{PrefixLength: 48, Limit: rate.Limit{RPS: 2.5 * perSec, Burst: 10 * n}},
			},
			GracePeriod: time.Minute,
		},
	}
	// Replacing libp2p's list: loopback stays unlimited.
	v4 := slices.Clone(rcmgr.DefaultNetworkPrefixLimitV4)
	v6 := slices.Clone(rcmgr.DefaultNetworkPrefixLimitV6)
	// A relay's connections are not capped by count (the relay bounds
	// circuits per peer), and their rate only loosely: anyone can churn
	// handshakes through a public relay.
	relayRate := rate.Limit{RPS: 16, Burst: 512}
	exempt := func(p netip.Prefix) {
		limiter.NetworkPrefixLimits = append(limiter.NetworkPrefixLimits, rate.PrefixLimit{Prefix: p, Limit: relayRate})
		l := rcmgr.NetworkPrefixLimit{Network: p, ConnCount: math.MaxInt}
		if p.Addr().Is4() {
			v4 = append(v4, l)
		} else {
			v6 = append(v6, l)
		}
	}
	for _, addr := range relayIPs {
		// A connection's address keeps the form it was dialled in
		// (an IPv4-mapped IPv6 address stays IPv6), and a prefix of
		// one form never contains the other: both are exempt.
		exempt(netip.PrefixFrom(addr, addr.BitLen()))
		if addr.Is4In6() {
			u := addr.Unmap()
			exempt(netip.PrefixFrom(u, u.BitLen()))
		}
	}
	return []rcmgr.Option{
		rcmgr.WithLimitPerSubnet(ipv4, ipv6),
		rcmgr.WithNetworkPrefixLimit(v4, v6),
		rcmgr.WithConnRateLimiters(limiter),
	}
}

// relayResolveTimeout bounds the DNS lookups of relayAddresses at start.
const relayResolveTimeout = 3 * time.Second

// relayAddresses returns the IP addresses of the static relays: those
// given by address, and those given by DNS name (/dns, /dns4, /dns6,
// /dnsaddr) resolved now with r, all at once within relayResolveTimeout.
// The addresses given by a name that did not resolve are returned in
// failed (its relay's connections get the per-address caps until the
// service restarts; so do addresses a name points to later).
func relayAddresses(ctx context.Context, relays []peer.AddrInfo, r *madns.Resolver) (ips []netip.Addr, failed []string) {
	add := func(a ma.Multiaddr) bool {
		ip, err := manet.ToIP(a)
		if err != nil {
			return false
		}
		if addr, ok := netip.AddrFromSlice(ip); ok && !slices.Contains(ips, addr) {
			ips = append(ips, addr)
		}
		return true
	}
	var named []ma.Multiaddr
	for _, ai := range relays {
		for _, a := range ai.Addrs {
			if !add(a) && madns.Matches(a) {
				named = append(named, a)
			}
		}
	}
	if len(named) == 0 {
		return ips, nil
	}
	ctx, cancel := context.WithTimeout(ctx, relayResolveTimeout)
	defer cancel()
	got := make([][]ma.Multiaddr, len(named))
	var wg sync.WaitGroup
	for i, a := range named {
		wg.Go(func() { got[i] = resolveAll(ctx, r, a, 4) })
	}
	wg.Wait()
	for i, addrs := range got {
		resolved := false
		for _, a := range addrs {
			resolved = add(a) || resolved
		}
		if !resolved {
			failed = append(failed, named[i].String())
		}
	}
	return ips, failed
}

// resolveAll resolves a's DNS components until none is left (a /dnsaddr
// record may name a /dns4 address), at most depth times over; what does
// not resolve is left out.
func resolveAll(ctx context.Context, r *madns.Resolver, a ma.Multiaddr, depth int) []ma.Multiaddr {
	if !madns.Matches(a) {
		return []ma.Multiaddr{a}
	}
	if depth == 0 {
		return nil
	}
	addrs, err := r.Resolve(ctx, a)
	if err != nil {
		return nil
	}
	var out []ma.Multiaddr
	for _, b := range addrs {
		out = append(out, resolveAll(ctx, r, b, depth-1)...)
	}
	return out
}
