package node

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
)

// Hole punching again over a relayed connection (docs/NAT.md, "A hole
// punch that failed").
//
// libp2p coordinates a hole punch (DCUtR) only when a relayed connection
// is made: three attempts within seconds, never again. One that fails for
// a passing reason (a router still holding the state of an earlier
// connection on the same ports after its uplink came back, a burst of
// loss) left two instances on the relayed connection until it was made
// again, at the latest when the relay's duration limit cut it (an hour by
// default): slow, and held to the relay's limits.
//
// So each instance asks libp2p's own hole-punch service for another
// attempt (holepunch.Service.DirectConnect, which coordinates over the
// relayed connection that exists; nothing is closed) for every peer it
// reaches only through a relay, punchRetryFirst after it is first seen so
// (its direct connection lost, or a new relayed connection made) and then
// less and less often. Only one side of a connection may
// start DCUtR: the one that received it (the other side refuses a DCUtR
// stream on a connection it sees as inbound), which is the side that
// retries here; when relayed connections go both ways, only the peer with
// the lower id retries, so the two never start at once. Nothing is tried
// unless both hosts can hole-punch at all (each has registered the DCUtR
// handler, which libp2p does once the host knows a public address of its
// own). Behind a NAT where punching cannot work (symmetric NAT) the
// attempts cost one DCUtR exchange over the relay and a few dials each,
// back off from 30 s to 16 min, and stop after punchRetryMaxFailures until
// a new relayed connection to that peer is made (libp2p's own attempt
// comes with it, and the schedule starts again).

// punchRetryFirst is how long after a peer is first seen reached only
// through a relay (libp2p's own hole punch on a new relayed connection has
// ended by then) the first further attempt waits; each failed attempt doubles the wait, up to
// punchRetryMax. A variable for tests.
var punchRetryFirst = 30 * time.Second

const (
	punchRetryMax = 16 * time.Minute
	// punchRetryMaxFailures failed attempts (30 s, 1, 2, 4, 8 and 16 min
	// apart: about half an hour) end the retries for a relayed connection.
	punchRetryMaxFailures = 6
	// punchScan is how often the peers' connections are looked at.
	punchScan = 5 * time.Second
)

// punchAfter is how long to wait before the next attempt after failures
// failed ones.
func punchAfter(failures int) time.Duration {
	d := punchRetryFirst
	for range failures {
		if d >= punchRetryMax {
			break
		}
		d *= 2
	}
	return min(d, punchRetryMax)
}

// punchInitiator reports whether this host (self) should start a hole
// punch with remote over its connections conns to it: all of them relayed,
// at least one received (DCUtR's initiator is the side that received the
// relayed connection), and when some go the other way too, only if self
// has the lower peer id.
func punchInitiator(self, remote peer.ID, conns []network.Conn) bool {
	if len(conns) == 0 || !allRelayed(conns) {
		return false
	}
	in, out := false, false
	for _, c := range conns {
		if c.Stat().Direction == network.DirInbound {
			in = true
		} else {
			out = true
		}
	}
	return in && (!out || self < remote)
}

// newestOpened is when the most recent of conns was opened.
func newestOpened(conns []network.Conn) time.Time {
	var t time.Time
	for _, c := range conns {
		if o := c.Stat().Opened; o.After(t) {
			t = o
		}
	}
	return t
}

// punchState is one peer's retry schedule, for the relayed connections it
// has now (opened: when the newest of them was made).
type punchState struct {
	opened   time.Time
	failures int
	due      time.Time
	running  bool
}

// punchPlan is every peer's schedule. Its methods take the time, so that
// tests need no clock.
type punchPlan struct {
	mu    sync.Mutex
	peers map[peer.ID]*punchState
}

// due reports whether an attempt with p should start now. eligible says
// whether this host should retry with p at all (punchInitiator, and both
// hosts ready); opened is when its newest relayed connection to p was
// made. A peer no longer eligible is forgotten. The schedule starts when a
// peer is first seen eligible (its direct connection lost, while a relayed
// one that libp2p will not punch on again lives on, or a new relayed
// connection whose hole punch failed), and again when a newer relayed
// connection is made (libp2p tried on it). A peer is due once per
// attempt: it is running until done.
func (pl *punchPlan) due(p peer.ID, eligible bool, opened, now time.Time) bool {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if !eligible {
		delete(pl.peers, p)
		return false
	}
	if pl.peers == nil {
		pl.peers = make(map[peer.ID]*punchState)
	}
	st := pl.peers[p]
	if st == nil || !st.opened.Equal(opened) {
		st = &punchState{opened: opened, due: now.Add(punchAfter(0))}
		pl.peers[p] = st
	}
	if st.running || st.failures >= punchRetryMaxFailures || now.Before(st.due) {
		return false
	}
	st.running = true
	return true
}

// done records how an attempt with p ended: nil (a direct connection),
// busy (libp2p's own attempt was running: try again at the next scan,
// not counted) or failed. It returns the failures so far and the wait
// before the next attempt (0 when there is none); failures is -1 when p
// has no schedule any more (it stopped being relayed-only meanwhile).
func (pl *punchPlan) done(p peer.ID, err error, now time.Time) (failures int, next time.Duration) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	st := pl.peers[p]
	if st == nil {
		return -1, 0
	}
	st.running = false
	switch {
	case err == nil:
		delete(pl.peers, p)
		return 0, 0
	case errors.Is(err, holepunch.ErrHolePunchActive):
		st.due = now
		return st.failures, punchScan
	}
	st.failures++
	if st.failures >= punchRetryMaxFailures {
		return st.failures, 0
	}
	next = punchAfter(st.failures)
	st.due = now.Add(next)
	return st.failures, next
}

// forget drops the schedules of peers not in keep.
func (pl *punchPlan) forget(keep map[peer.ID]bool) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	for p := range pl.peers {
		if !keep[p] {
			delete(pl.peers, p)
		}
	}
}

// repunch runs the retries until ctx ends. hps is the host's hole-punch
// service.
func (nw *netsvc) repunch(ctx context.Context, hps *holepunch.Service) {
	var plan punchPlan
	tick := time.NewTicker(punchScan)
	defer tick.Stop()
	h := nw.host
	// ready: the DCUtR handler was registered at least one scan ago.
	// DirectConnect waits for the service to know a public address, for
	// ever if it never does; a scan later it has (the handler is set
	// just before).
	ready := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if !ready {
			ready = slices.Contains(h.Mux().Protocols(), holepunch.Protocol)
			continue
		}
		now := time.Now()
		seen := make(map[peer.ID]bool)
		for _, p := range h.Network().Peers() {
			conns := h.Network().ConnsToPeer(p)
			eligible := punchInitiator(h.ID(), p, conns)
			if eligible {
				// The peer can take part: it has the DCUtR handler.
				ok, err := h.Peerstore().SupportsProtocols(p, holepunch.Protocol)
				eligible = err == nil && len(ok) > 0
			}
			seen[p] = eligible
			if !plan.due(p, eligible, newestOpened(conns), now) {
				continue
			}
			if !nw.handlers.Begin() {
				return
			}
			go func() {
				defer nw.handlers.End()
				// Ends early when the host closes (the service's context).
				err := hps.DirectConnect(p)
				failures, next := plan.done(p, err, time.Now())
				switch {
				case err == nil:
					nw.n.log.Info("hole punch retried over a relayed connection: direct now", "peer", p.String())
				case errors.Is(err, holepunch.ErrHolePunchActive):
				case failures < 0:
					nw.n.log.Debug("hole punch retried over a relayed connection failed; the peer is no longer reached only through a relay", "peer", p.String(), "err", err.Error())
				case next == 0:
					nw.n.log.Info("hole punch retried over a relayed connection failed; no more tries until a new relayed connection is made", "peer", p.String(), "tries", failures, "err", err.Error())
				default:
					nw.n.log.Info("hole punch retried over a relayed connection failed", "peer", p.String(), "tries", failures, "next_in", next.String(), "err", err.Error())
				}
			}()
		}
		plan.forget(seen)
	}
}
