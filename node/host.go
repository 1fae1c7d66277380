package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coattail/coattail/datastore"
	"github.com/coattail/coattail/node/internal/inflight"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
	"github.com/dustin/go-humanize"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/host/autorelay"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	madns "github.com/multiformats/go-multiaddr-dns"
	manet "github.com/multiformats/go-multiaddr/net"
)

// ErrPortInUse is returned when a listen address is taken.
var ErrPortInUse = errors.New("node: listen address already in use")

// netsvc is the online half of a node: the libp2p host and the protocol
// services registered on it.
type netsvc struct {
	n        *Node
	host     host.Host
	limits   *peerLimits
	sess     *sessions
	attached *attached
	subAddrs *datastore.Store[[]string] // where subscribers listen, by peer id
	// subAddrsMu orders the changes to subAddrs (and to the subscriber
	// addresses in the peerstore): a subscriber's, and a sweep of former
	// subscribers'.
	subAddrsMu sync.Mutex
	// createMu makes counting a peer's subscriptions and adding one a
	// single step, so concurrent subscribes cannot pass
	// max_subscriptions_per_peer.
	createMu sync.Mutex
	// relay is the circuit-relay v2 server (nil unless relay_service or
	// 'service start --relay').
	relay *relayv2.Relay
	nat   *natState

	// handlers tracks every goroutine serving a peer's stream, and the
	// nudger's: close cancels and waits for them before the node closes
	// the queues and the datastore they use.
	handlers *handlers
}

// handlers is a set of running goroutines (Begin, End, Wait) with one
// context, cancelled at shut; after shut no new one is admitted.
type handlers struct {
	ctx    context.Context
	cancel context.CancelFunc
	inflight.Tracker
}

func newHandlers() *handlers {
	ctx, cancel := context.WithCancel(context.Background())
	return &handlers{ctx: ctx, cancel: cancel}
}

// shut cancels the handlers' context and admits no more.
func (h *handlers) shut() {
	h.Shut()
	h.cancel()
}

// handlersDrain bounds how long closing a node waits for its stream
// handlers once their contexts are cancelled and their streams reset (an
// action they run is killed at once; a receiver or action ignoring its
// context may keep one longer), for its subscription loops, and for
// in-process handlers that outlived their runs. A variable only so that
// tests can shorten it.
var handlersDrain = 10 * time.Second

// natState is what the host's event bus has said about NAT traversal,
// kept for `service status`.
type natState struct {
	sub event.Subscription

	mu           sync.Mutex
	reachability string   // AutoNAT's verdict: unknown, public or private
	reservations []string // our /p2p-circuit addresses, one per reservation
}

// connGrace is how long a new connection is safe from the connection
// manager's trimming. A variable for tests.
var connGrace = time.Minute

// subscriptionTag protects, in the connection manager, the connections to
// a peer that carry subscription id's stream: trimming one would reset the
// stream and its deliveries would be resent (a publisher with more
// subscribers than network.conn_high would do that every grace period).
func subscriptionTag(id string) string { return "coattail-sub:" + id }

// buildHost makes the libp2p host, and returns its hole-punch service
// (nil unless network.hole_punching), which libp2p keeps to itself
// otherwise: repunch asks it for further attempts.
func buildHost(n *Node) (host.Host, *holepunch.Service, error) {
	nc := n.cfg.Network
	cm, err := connmgr.NewConnManager(nc.ConnLow, nc.ConnHigh, connmgr.WithGracePeriod(connGrace))
	if err != nil {
		return nil, nil, fmt.Errorf("node: connection manager: %w", err)
	}
	if mem := MachineMemory(); mem.Cgroup {
		attrs := []any{"cgroup_limit", humanize.IBytes(mem.Bytes), "machine", humanize.IBytes(mem.Machine)}
		if soft := debug.SetMemoryLimit(-1); soft < math.MaxInt64 {
			attrs = append(attrs, "go_memory_limit", humanize.IBytes(uint64(soft)))
		}
		n.log.Info("memory: this process's cgroup (a container's or service unit's limit) allows less than the machine has; libp2p's resource limits are sized to the cgroup's", attrs...)
	}
	limits, streams := resourceLimits(n.cfg.Limits, nc)
	if streams.Clamped() {
		// Info only where one peer cannot reach the config's limits even
		// one way (a machine with 2 GiB at the defaults; 8 GiB holds them
		// one way, not quite twice over).
		level := slog.LevelDebug
		if streams.Short() {
			level = slog.LevelInfo
		}
		n.log.Log(context.Background(), level, "libp2p resource manager: this machine's memory holds fewer streams with one peer than the limits ask for (SECURITY.md, The libp2p resource manager)",
			"streams_per_peer", streams.Peer, "asked", streams.PeerWanted, "streams_all_peers", streams.System)
	}
	staticRelays, _ := nc.StaticRelays() // validated with the config
	relayIPs, unresolved := relayAddresses(context.Background(), staticRelays, madns.DefaultResolver)
	if len(unresolved) > 0 {
		n.log.Warn("static relay addresses whose DNS names did not resolve at start: connections through them share the per-address connection caps (network.max_conns_per_ip) until the service restarts; give relays by IP address to avoid it",
			"addrs", unresolved)
	}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits),
		append(connLimitOptions(nc, n.opts.Relay || nc.RelayServer, relayIPs), rcmgr.WithMetrics(rcmgrLog{log: n.log, noisy: n.noisy}))...)
	if err != nil {
		return nil, nil, fmt.Errorf("node: resource manager: %w", err)
	}
	announce, err := parseAnnounce(nc.Announce)
	if err != nil {
		return nil, nil, err
	}
	var relaySwarm atomic.Pointer[swarm.Swarm] // for staticRelaySource
	opts := []libp2p.Option{
		libp2p.Identity(n.key),
		libp2p.ListenAddrStrings(nc.Listen...),
		libp2p.AddrsFactory(advertise(announce)),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Transport(libp2pquic.NewTransport),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.ConnectionManager(cm),
		libp2p.ResourceManager(rm),
		libp2p.UserAgent("coattail/" + Version),
		libp2p.EnableRelay(),
	}
	if nc.PreferTransport == PreferTCP {
		opts = append(opts, libp2p.SwarmOpts(swarm.WithDialRanker(preferTCPRanker)))
	}
	if nc.PortMapping {
		opts = append(opts, libp2p.NATPortMap())
	}
	var hps *holepunch.Service
	if nc.HolePunch {
		// An option is handed the service libp2p creates: the only way
		// to reach it from outside the host.
		opts = append(opts, libp2p.EnableHolePunching(func(s *holepunch.Service) error {
			hps = s
			return nil
		}))
	}
	if nc.AutoNAT {
		opts = append(opts, libp2p.EnableAutoNATv2(), libp2p.EnableNATService())
	}
	// The relay server is not enabled here: libp2p's EnableRelayService
	// runs it only once AutoNAT has found the host public, which takes a
	// boot delay plus a probe, and may never happen on a segment without
	// other AutoNAT servers. An operator who asks for a relay has said the
	// instance is public; startNetwork starts it at once.
	if len(nc.Relays) > 0 {
		// One entry per relay: a relay listed twice was counted twice,
		// and AutoRelay strove for a reservation on each "relay".
		static, err := nc.StaticRelays()
		if err != nil {
			return nil, nil, err
		}
		opts = append(opts, libp2p.EnableAutoRelayWithPeerSource(staticRelaySource(static, &relaySwarm), staticRelayOptions(len(static))...))
	}
	portInUse := func(err error) error {
		return fmt.Errorf("%w: %v (another program, or another instance, uses the port in network.listen of %s)", ErrPortInUse, err, n.layout.Config())
	}
	if err := probeListen(nc.Listen); err != nil {
		return nil, nil, portInUse(err)
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use") {
			return nil, nil, portInUse(err)
		}
		return nil, nil, fmt.Errorf("node: start libp2p host: %w", err)
	}
	if sw, ok := h.Network().(*swarm.Swarm); ok {
		relaySwarm.Store(sw)
	}
	return h, hps, nil
}

// How AutoRelay retries the static relays (docs/NAT.md, "A relay that was
// down"). AutoRelay asks its peer source for candidates at most every
// staticRelayInterval while it holds fewer reservations than there are
// static relays, and dials each relay it is not connected to. A relay
// that refused a reservation is skipped for staticRelayBackoff (libp2p's
// default is an hour, meant for relays found at random on a public
// network, not for the few an operator listed).
const (
	staticRelayInterval = 30 * time.Second
	staticRelayBackoff  = time.Minute
)

// staticRelayOptions are AutoRelay's options for n static relays: what
// autorelay.WithStaticRelays sets (use every relay, wait for none), no
// boot delay (the relays are chosen already: reserve on the first one
// that answers), and the retry timing above.
func staticRelayOptions(n int) []autorelay.Option {
	return []autorelay.Option{
		autorelay.WithMaxCandidates(n),
		autorelay.WithMinCandidates(n),
		autorelay.WithNumRelays(n),
		autorelay.WithBootDelay(0),
		autorelay.WithMinInterval(staticRelayInterval),
		autorelay.WithBackoff(staticRelayBackoff),
	}
}

// staticRelaySource is AutoRelay's peer source for the static relays:
// autorelay.WithStaticRelays's, except that it first clears the swarm's
// dial back-off of each relay this host is not connected to. AutoRelay
// dials a candidate through the swarm, whose back-off after failed dials
// grows quadratically to 5 minutes (5s + tries² s); a relay that was down
// for a few minutes was therefore retried less and less often, and one
// that came back could wait 5 minutes to be used. With the back-off
// cleared, each relay is dialled once per staticRelayInterval while it is
// not held, and used within about that long of coming back. sw is the
// host's swarm, set once libp2p.New returns (nil before: nothing has been
// dialled yet).
func staticRelaySource(static []peer.AddrInfo, sw *atomic.Pointer[swarm.Swarm]) autorelay.PeerSource {
	return func(_ context.Context, num int) <-chan peer.AddrInfo {
		num = min(num, len(static))
		out := make(chan peer.AddrInfo, num)
		defer close(out)
		s := sw.Load()
		for _, ai := range static[:num] {
			if s != nil && s.Connectedness(ai.ID) != network.Connected {
				s.Backoff().Clear(ai.ID)
			}
			out <- ai
		}
		return out
	}
}

// parseAnnounce parses network.announce.
func parseAnnounce(ss []string) ([]ma.Multiaddr, error) {
	out := make([]ma.Multiaddr, 0, len(ss))
	for _, s := range ss {
		m, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("%w: network.announce: %q: %v", ErrConfig, s, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// advertise is the host's address factory: what h.Addrs() returns, and so
// what identify tells peers and what tokens carry. It adds the
// network.announce addresses (a forwarded port, a DNS name), which peers
// must learn from identify as well as from tokens: a publisher nudges a
// subscriber at the addresses identify gave it. And it leaves out loopback
// addresses when the host has any other direct address: 127.0.0.1 and ::1
// name the bearer's own machine, where at best nothing listens and at
// worst another instance does. A host listening on loopback only (labs,
// demos, tests) keeps them, as they are all it has.
func advertise(announce []ma.Multiaddr) func([]ma.Multiaddr) []ma.Multiaddr {
	return func(addrs []ma.Multiaddr) []ma.Multiaddr {
		others := slices.ContainsFunc(addrs, func(a ma.Multiaddr) bool {
			return !isRelayAddr(a) && !manet.IsIPLoopback(a)
		})
		out := make([]ma.Multiaddr, 0, len(addrs)+len(announce))
		for _, a := range addrs {
			if others && !isRelayAddr(a) && manet.IsIPLoopback(a) {
				continue
			}
			out = append(out, a)
		}
		for _, a := range announce {
			if !slices.ContainsFunc(out, a.Equal) {
				out = append(out, a)
			}
		}
		return out
	}
}

// probeListen binds and releases each fixed TCP and UDP port of the listen
// addresses. libp2p's TCP listener sets SO_REUSEPORT (for hole punching),
// so a second instance on the same port would start and silently share
// incoming connections with the first; and a QUIC listener that fails to
// bind is skipped quietly when another address works. A plain bind fails
// with EADDRINUSE on a port any socket holds. Other bind errors (an
// address not on this host) are left to libp2p, which skips such an
// address when another one works.
func probeListen(addrs []string) error {
	for _, s := range addrs {
		m, err := ma.NewMultiaddr(s)
		if err != nil {
			continue // reported by libp2p with its own message
		}
		ip, fam := "", "4"
		if ip, err = m.ValueForProtocol(ma.P_IP4); err != nil {
			if ip, err = m.ValueForProtocol(ma.P_IP6); err != nil {
				continue
			}
			fam = "6" // v6 only, as libp2p binds it
		}
		for _, pr := range []struct {
			code int
			net  string
		}{{ma.P_TCP, "tcp"}, {ma.P_UDP, "udp"}} {
			port, err := m.ValueForProtocol(pr.code)
			if err != nil || port == "0" {
				continue
			}
			hp := net.JoinHostPort(ip, port)
			if pr.net == "tcp" {
				var l net.Listener
				if l, err = net.Listen("tcp"+fam, hp); err == nil {
					_ = l.Close()
				}
			} else {
				var c net.PacketConn
				if c, err = net.ListenPacket("udp"+fam, hp); err == nil {
					_ = c.Close()
				}
			}
			if errors.Is(err, syscall.EADDRINUSE) {
				return fmt.Errorf("listen %s: %w", s, err)
			}
		}
	}
	return nil
}

// relayResources turns the network.relay_* settings into the relay's
// resources. A zero duration or data limit means none in that dimension;
// with both zero circuits are unlimited, and clients see them as ordinary
// (not limited) connections.
func relayResources(nc NetworkConfig) relayv2.Resources {
	rc := relayv2.DefaultResources()
	rc.MaxReservations = nc.RelayMaxReservations
	rc.MaxCircuits = nc.RelayMaxCircuits
	rc.MaxReservationsPerIP = nc.RelayMaxReservationsPerIP
	rc.MaxReservationsPerASN = max(rc.MaxReservationsPerASN, nc.RelayMaxReservationsPerIP)
	if nc.RelayLimitDuration == 0 && nc.RelayLimitData == 0 {
		rc.Limit = nil
		return rc
	}
	rc.Limit = &relayv2.RelayLimit{Duration: nc.RelayLimitDuration, Data: int64(nc.RelayLimitData)}
	if rc.Limit.Duration == 0 {
		// The relay sends the limit in whole seconds as a uint32.
		rc.Limit.Duration = math.MaxUint32 * time.Second
	}
	if rc.Limit.Data == 0 {
		rc.Limit.Data = math.MaxInt64
	}
	return rc
}

// watchNAT records, from the host's event bus, the AutoNAT reachability,
// the relay reservations and when hole punching becomes possible. The
// emitters are stateful, so the current values arrive first.
func (nw *netsvc) watchNAT() error {
	sub, err := nw.host.EventBus().Subscribe([]any{
		new(event.EvtLocalReachabilityChanged),
		new(event.EvtAutoRelayAddrsUpdated),
		new(event.EvtLocalProtocolsUpdated),
	}, eventbus.Name("coattail nat status"))
	if err != nil {
		return fmt.Errorf("node: subscribe to NAT events: %w", err)
	}
	nw.nat = &natState{sub: sub, reachability: "unknown"}
	go func() {
		log := nw.n.log
		for e := range sub.Out() {
			st := nw.nat
			switch e := e.(type) {
			case event.EvtLocalReachabilityChanged:
				r := strings.ToLower(e.Reachability.String())
				st.mu.Lock()
				changed := st.reachability != r
				st.reachability = r
				st.mu.Unlock()
				if changed {
					log.Info("reachability changed (AutoNAT)", "reachability", r)
				}
			case event.EvtAutoRelayAddrsUpdated:
				addrs := addrStrings(e.RelayAddrs)
				st.mu.Lock()
				st.reservations = addrs
				st.mu.Unlock()
				log.Info("relay reservations updated", "addrs", addrs)
			case event.EvtLocalProtocolsUpdated:
				if slices.Contains(e.Added, holepunch.Protocol) {
					// libp2p registers the DCUtR handler only once the
					// host has learnt a public address of its own; before
					// that, a relayed connection cannot be upgraded.
					log.Info("hole punching ready: the host knows a public address of its own")
					nw.closeRelayedOnly()
				}
			}
		}
	}()
	return nil
}

// closeRelayedOnly closes the connections to every peer reached only
// through a relay, once this host is ready to hole-punch. libp2p
// coordinates a hole punch only when a relayed connection is made, and only
// if both hosts have the DCUtR handler by then; a host registers it only
// once it knows a public address of its own, a fraction of a second after
// it starts. A subscriber or publisher restarting behind NAT reconnects
// through the relay within that fraction of a second, so its connection
// stayed relayed (for up to the relay's duration limit, an hour by
// default). Closed, it is made again (a subscription reconnects at once,
// resuming after its last processed sequence), and this time hole
// punching can upgrade it.
func (nw *netsvc) closeRelayedOnly() {
	net := nw.host.Network()
	for _, p := range net.Peers() {
		conns := net.ConnsToPeer(p)
		if len(conns) == 0 || !allRelayed(conns) {
			continue
		}
		nw.n.log.Info("closing a relayed connection made before hole punching was ready, so that it is made again and can be upgraded", "peer", p.String())
		for _, c := range conns {
			_ = c.Close()
		}
	}
}

func allRelayed(conns []network.Conn) bool {
	for _, c := range conns {
		if !isRelayed(c) {
			return false
		}
	}
	return true
}

// kickAutoRelay starts the search for relay reservations at once. libp2p's
// AutoRelay waits for AutoNAT's first verdict, which comes only after a
// 15s boot delay and a dial-back that a NAT makes time out, and never when
// no AutoNAT server is around. The reachability at start is unknown, and
// saying so is what AutoRelay waits for.
func kickAutoRelay(h host.Host) error {
	em, err := h.EventBus().Emitter(new(event.EvtLocalReachabilityChanged), eventbus.Stateful)
	if err != nil {
		return fmt.Errorf("node: reachability emitter: %w", err)
	}
	defer em.Close()
	if err := em.Emit(event.EvtLocalReachabilityChanged{Reachability: network.ReachabilityUnknown}); err != nil {
		return fmt.Errorf("node: start relay search: %w", err)
	}
	return nil
}

func startNetwork(ctx context.Context, n *Node) (*netsvc, error) {
	h, hps, err := buildHost(n)
	if err != nil {
		return nil, err
	}
	nw := &netsvc{n: n, host: h, limits: newPeerLimits(n.cfg.Limits), sess: newSessions(), attached: newAttached(h.ConnManager()),
		subAddrs: datastore.NewStore[[]string](n.db.Batching(), "/subs/addrs"), handlers: newHandlers()}
	nw.restoreSubscribers(context.Background())
	nw.restorePeers(context.Background())
	fail := func(err error) (*netsvc, error) {
		if nw.nat != nil {
			nw.nat.sub.Close()
		}
		if nw.relay != nil {
			nw.relay.Close()
		}
		h.Close()
		return nil, err
	}
	if err := nw.watchNAT(); err != nil {
		return fail(err)
	}
	if n.opts.Relay || n.cfg.Network.RelayServer {
		r, err := relayv2.New(h, relayv2.WithResources(relayResources(n.cfg.Network)),
			relayv2.WithMetricsTracer(relayLog{log: n.log, noisy: n.noisy, nc: n.cfg.Network}))
		if err != nil {
			return fail(fmt.Errorf("node: start relay service: %w", err))
		}
		nw.relay = r
	}
	if len(n.cfg.Network.Relays) > 0 {
		if err := kickAutoRelay(h); err != nil {
			return fail(err)
		}
		if static, err := n.cfg.Network.StaticRelays(); err == nil && nw.handlers.Begin() {
			every := relayCheckAfter
			go func() {
				defer nw.handlers.End()
				nw.checkRelays(nw.handlers.ctx, static, every)
			}()
		}
	}
	nw.register()
	if nw.handlers.Begin() {
		go func() {
			defer nw.handlers.End()
			nw.nudger(nw.handlers.ctx)
		}()
	}
	if nw.handlers.Begin() {
		go func() {
			defer nw.handlers.End()
			nw.sweepSubscribersEvery(nw.handlers.ctx, subscriberAddrSweep)
		}()
	}
	if hps != nil && nw.handlers.Begin() {
		go func() {
			defer nw.handlers.End()
			nw.repunch(nw.handlers.ctx, hps)
		}()
	}
	n.auth.OnRevoke(nw.sess.revoke)
	for _, w := range n.cfg.Warnings() {
		n.log.Warn("config: " + w)
	}
	n.log.Info("libp2p host started", "peer_id", h.ID().String(), "addrs", addrStrings(h.Addrs()), "relay_service", nw.relay != nil)
	return nw, nil
}

func (nw *netsvc) close() error {
	for _, p := range wire.Protocols() {
		nw.host.RemoveStreamHandler(protocol.ID(p))
	}
	// Handlers' contexts end (actions they run are stopped), then the host
	// resets their streams (unblocking reads and writes); the node closes
	// the queues and the datastore only once they have returned.
	nw.handlers.shut()
	var errs []error
	if nw.relay != nil {
		errs = append(errs, nw.relay.Close())
	}
	if nw.nat != nil {
		errs = append(errs, nw.nat.sub.Close())
	}
	errs = append(errs, nw.host.Close())
	if !nw.handlers.Wait(handlersDrain) {
		nw.n.log.Error("stream handlers still running after the host closed; closing the datastore anyway", "waited", handlersDrain)
	}
	return errors.Join(errs...)
}

func (nw *netsvc) fillStatus(s *localapi.Status) {
	// Without the relay transport's bare "/p2p-circuit": it is no
	// address (reservations show as circuit addresses in Addrs), and it
	// read as if relaying were on when it is off.
	var listen []ma.Multiaddr
	for _, a := range nw.host.Network().ListenAddresses() {
		if a.String() != "/p2p-circuit" {
			listen = append(listen, a)
		}
	}
	s.ListenAddrs = addrStrings(listen)
	s.Addrs = addrStrings(nw.host.Addrs())
	s.Peers = len(nw.host.Network().Peers())
	nw.nat.mu.Lock()
	s.Reachable = nw.nat.reachability
	s.Relays = slices.Clone(nw.nat.reservations)
	nw.nat.mu.Unlock()
	for _, a := range nw.host.Addrs() {
		if isRelayAddr(a) && !slices.Contains(s.Relays, a.String()) {
			s.Relays = append(s.Relays, a.String())
		}
	}
}

func addrStrings(as []ma.Multiaddr) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}

func isRelayAddr(a ma.Multiaddr) bool {
	_, err := a.ValueForProtocol(ma.P_CIRCUIT)
	return err == nil
}

// isRelayed reports whether a connection goes through a relay.
func isRelayed(c network.Conn) bool {
	return c.Stat().Limited || isRelayAddr(c.RemoteMultiaddr())
}

// pathOf is how a connection reaches the peer, as the status and list
// views name it: "relayed" through a circuit relay, else "direct".
func pathOf(c network.Conn) string {
	if isRelayed(c) {
		return "relayed"
	}
	return "direct"
}
