package node

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/coattail/coattail/node/localapi"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/host/autorelay"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
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

	stopNudger context.CancelFunc
}

func buildHost(n *Node, relay bool) (host.Host, error) {
	nc := n.cfg.Network
	cm, err := connmgr.NewConnManager(nc.ConnLow, nc.ConnHigh, connmgr.WithGracePeriod(time.Minute))
	if err != nil {
		return nil, fmt.Errorf("node: connection manager: %w", err)
	}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(rcmgr.DefaultLimits.AutoScale()))
	if err != nil {
		return nil, fmt.Errorf("node: resource manager: %w", err)
	}
	opts := []libp2p.Option{
		libp2p.Identity(n.key),
		libp2p.ListenAddrStrings(nc.Listen...),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Transport(libp2pquic.NewTransport),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.ConnectionManager(cm),
		libp2p.ResourceManager(rm),
		libp2p.UserAgent("coattail/" + Version),
		libp2p.EnableRelay(),
	}
	if nc.PortMapping {
		opts = append(opts, libp2p.NATPortMap())
	}
	if nc.HolePunch {
		opts = append(opts, libp2p.EnableHolePunching())
	}
	if nc.AutoNAT {
		opts = append(opts, libp2p.EnableAutoNATv2(), libp2p.EnableNATService())
	}
	if relay || nc.RelayServer {
		opts = append(opts, libp2p.EnableRelayService(relayv2.WithInfiniteLimits()))
	}
	if len(nc.Relays) > 0 {
		var static []peer.AddrInfo
		for _, s := range nc.Relays {
			ai, err := peer.AddrInfoFromString(s)
			if err != nil {
				return nil, fmt.Errorf("%w: network.relays: %q: %v", ErrConfig, s, err)
			}
			static = append(static, *ai)
		}
		opts = append(opts, libp2p.EnableAutoRelayWithStaticRelays(static, autorelay.WithBootDelay(0)))
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use") {
			return nil, fmt.Errorf("%w: %v (another program, or another instance, uses the port in network.listen of %s)", ErrPortInUse, err, n.layout.Config())
		}
		return nil, fmt.Errorf("node: start libp2p host: %w", err)
	}
	return h, nil
}

func startNetwork(ctx context.Context, n *Node) (*netsvc, error) {
	h, err := buildHost(n, n.opts.Relay)
	if err != nil {
		return nil, err
	}
	nw := &netsvc{n: n, host: h, limits: newPeerLimits(n.cfg.Limits), sess: newSessions(), attached: newAttached()}
	nw.register()
	nctx, stopNudger := context.WithCancel(context.Background())
	nw.stopNudger = stopNudger
	go nw.nudger(nctx)
	n.auth.OnRevoke(nw.sess.revoke)
	n.auth.OnRevoke(n.onTokenRevoked)
	n.log.Info("libp2p host started", "peer_id", h.ID().String(), "addrs", addrStrings(h.Addrs()))
	return nw, nil
}

func (nw *netsvc) close() error {
	nw.stopNudger()
	for _, p := range allProtocols {
		nw.host.RemoveStreamHandler(p)
	}
	return nw.host.Close()
}

func (nw *netsvc) fillStatus(s *localapi.Status) {
	s.ListenAddrs = addrStrings(nw.host.Network().ListenAddresses())
	s.Addrs = addrStrings(nw.host.Addrs())
	s.Peers = len(nw.host.Network().Peers())
	for _, a := range nw.host.Addrs() {
		if isRelayAddr(a) {
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
