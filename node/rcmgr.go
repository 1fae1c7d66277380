package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// rcmgrLog is the resource manager's metrics reporter: it logs what the
// resource manager refuses. libp2p resets a refused stream before any
// handler sees it, so without this the refusing side logged nothing and
// only the other side learnt of it (as a reset with code 0x1002). The
// lines are warnings, sampled as other peer-caused messages are; a refused
// memory reservation is only a debug line (yamux asks for more window
// memory at a lower priority as a matter of course, and does without).
type rcmgrLog struct {
	log   *slog.Logger
	noisy *logSampler
}

const rcmgrRefused = "libp2p resource manager refused"

func (r rcmgrLog) warn(what string, attrs ...any) {
	ok, extra := r.noisy.allow()
	if !ok {
		return
	}
	r.log.Warn(rcmgrRefused+" "+what+" (SECURITY.md, The libp2p resource manager: its limits follow limits.max_subscriptions_per_peer and max_streams_per_peer, within what the machine's memory holds)", append(attrs, extra...)...)
}

func (r rcmgrLog) BlockConn(dir network.Direction, usefd bool) {
	r.warn("a connection: too many connections in total, or no file descriptor left", "direction", dir.String())
}

func (r rcmgrLog) BlockStream(p peer.ID, dir network.Direction) {
	r.warn("a stream: too many streams with the peer, in total, or not yet negotiated", "peer", p.String(), "direction", dir.String())
}

func (r rcmgrLog) BlockPeer(p peer.ID) {
	r.warn("a connection: too many connections or too much memory with the peer", "peer", p.String())
}

func (r rcmgrLog) BlockProtocol(proto protocol.ID) {
	r.warn("a stream: too many streams of its protocol in total", "protocol", string(proto))
}

func (r rcmgrLog) BlockProtocolPeer(proto protocol.ID, p peer.ID) {
	r.warn("a stream: too many streams of its protocol with the peer", "protocol", string(proto), "peer", p.String())
}

func (r rcmgrLog) BlockService(svc string) {
	r.warn("a stream: too many streams of its service in total", "service", svc)
}

func (r rcmgrLog) BlockServicePeer(svc string, p peer.ID) {
	r.warn("a stream: too many streams of its service with the peer", "service", svc, "peer", p.String())
}

func (r rcmgrLog) BlockMemory(size int) {
	r.log.Debug(rcmgrRefused+" a memory reservation", "bytes", size)
}

func (rcmgrLog) AllowConn(network.Direction, bool)      {}
func (rcmgrLog) AllowStream(peer.ID, network.Direction) {}
func (rcmgrLog) AllowPeer(peer.ID)                      {}
func (rcmgrLog) AllowProtocol(protocol.ID)              {}
func (rcmgrLog) AllowService(string)                    {}
func (rcmgrLog) AllowMemory(int)                        {}

// limitRefusal says, for an error of a stream or its opening, which
// resource manager refused the stream and which limits are likely
// exhausted ("" when it is not such a refusal).
func limitRefusal(err error) string {
	var se *network.StreamError
	if errors.As(err, &se) && se.ErrorCode == network.StreamResourceLimitExceeded {
		if se.Remote {
			return "the peer's libp2p resource manager refused the stream: too many streams from this instance, or in total, at the peer; its limits.max_subscriptions_per_peer and max_streams_per_peer set its limits for one peer"
		}
		return "this instance's libp2p resource manager refused the stream"
	}
	if errors.Is(err, network.ErrResourceLimitExceeded) {
		return "this instance's libp2p resource manager refused the stream: too many streams with that peer or in total; limits.max_subscriptions_per_peer and max_streams_per_peer set its limits for one peer"
	}
	return ""
}

// explainLimit adds limitRefusal's explanation to err, if any.
func explainLimit(err error) error {
	if why := limitRefusal(err); why != "" {
		return fmt.Errorf("%w; %s", err, why)
	}
	return err
}

// quicMaxStreams is how many streams one side of a QUIC connection may
// have open at once toward the other: libp2p's QUIC transport fixes it
// (quic-go's MaxIncomingStreams), and an opener over it waits for a
// stream to close.
const quicMaxStreams = 256

// explainOpen is explainLimit for an error of opening a stream to p, and
// explains a stream that timed out waiting for QUIC's stream limit.
func (nw *netsvc) explainOpen(p peer.ID, err error) error {
	if errors.Is(err, context.DeadlineExceeded) && nw.quicStreamsFull(p) {
		return fmt.Errorf("%w; every connection to the peer is QUIC with %d streams opened by this instance, QUIC's limit in libp2p (TCP has none: a publisher listening on TCP only avoids it)", err, quicMaxStreams)
	}
	return explainLimit(err)
}

// quicStreamsFull reports whether every connection to p is a QUIC one on
// which this host has opened quicMaxStreams streams or more.
func (nw *netsvc) quicStreamsFull(p peer.ID) bool {
	conns := nw.host.Network().ConnsToPeer(p)
	for _, c := range conns {
		if !strings.HasPrefix(c.ConnState().Transport, "quic") {
			return false
		}
		n := 0
		for _, st := range c.GetStreams() {
			if st.Stat().Direction == network.DirOutbound {
				n++
			}
		}
		if n < quicMaxStreams {
			return false
		}
	}
	return len(conns) > 0
}
