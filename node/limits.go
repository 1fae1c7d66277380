package node

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/time/rate"
)

// peerLimits enforces per-peer request rate (token bucket) and concurrent
// stream limits, so one peer over its limits never slows the others.
type peerLimits struct {
	rate       rate.Limit
	burst      int
	maxStreams int

	now func() time.Time // time.Now; a variable for tests

	mu    sync.Mutex
	peers map[peer.ID]*peerLimit
	// pruneAt is the table size at which idle peers are next swept: twice
	// what the last sweep kept, so a table of busy peers is not rescanned
	// for every new one.
	pruneAt int
}

// minPrune is the table size below which idle peers are never swept.
const minPrune = 4096

type peerLimit struct {
	lim     *rate.Limiter
	streams int
	last    time.Time // last stream opened or closed, or request charged
}

func newPeerLimits(l LimitsConfig) *peerLimits {
	return &peerLimits{rate: rate.Limit(l.RateLimit), burst: l.RateBurst, maxStreams: l.MaxStreamsPerPeer,
		now: time.Now, peers: map[peer.ID]*peerLimit{}, pruneAt: minPrune}
}

// limitVerdict says why a request was refused (zero value: allowed).
type limitVerdict struct {
	tooManyStreams bool
	retryAfter     time.Duration
}

func (v limitVerdict) ok() bool { return !v.tooManyStreams && v.retryAfter == 0 }

// acquire admits one new stream from p; release must follow when ok.
func (pl *peerLimits) acquire(p peer.ID) limitVerdict {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	now := pl.now()
	e := pl.peers[p]
	if e == nil {
		if len(pl.peers) >= pl.pruneAt {
			pl.pruneLocked(now)
		}
		e = &peerLimit{lim: rate.NewLimiter(pl.rate, pl.burst)}
		pl.peers[p] = e
	}
	e.last = now
	if e.streams >= pl.maxStreams {
		return limitVerdict{tooManyStreams: true}
	}
	if r := e.lim.ReserveN(now, 1); r.DelayFrom(now) > 0 {
		d := r.DelayFrom(now)
		r.CancelAt(now)
		return limitVerdict{retryAfter: d}
	}
	e.streams++
	return limitVerdict{}
}

// allow charges one request on an already admitted stream (for example one
// publish batch) against p's bucket.
func (pl *peerLimits) allow(p peer.ID) time.Duration {
	now := pl.now()
	pl.mu.Lock()
	e := pl.peers[p]
	if e != nil {
		e.last = now
	}
	pl.mu.Unlock()
	if e == nil {
		return 0
	}
	r := e.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d
	}
	return 0
}

func (pl *peerLimits) release(p peer.ID) {
	now := pl.now()
	pl.mu.Lock()
	if e := pl.peers[p]; e != nil && e.streams > 0 {
		e.streams--
		e.last = now
	}
	pl.mu.Unlock()
}

// pruneLocked forgets peers with no open stream whose bucket has refilled
// since they last used it: such an entry is the same as a new one, so
// forgetting it gives nobody a fresh allowance. Only if that keeps the
// table at its threshold is it allowed to grow (twice what was kept).
func (pl *peerLimits) pruneLocked(now time.Time) {
	refill := time.Minute
	if pl.rate > 0 {
		refill = max(time.Second, time.Duration(float64(pl.burst)/float64(pl.rate)*float64(time.Second)))
	}
	for p, e := range pl.peers {
		if e.streams == 0 && now.Sub(e.last) > refill {
			delete(pl.peers, p)
		}
	}
	pl.pruneAt = max(2*len(pl.peers), minPrune)
}

// sessions tracks open streams by the token that authorized them, so a
// revocation ends them at once: each is reset, or ended by its own end
// function (a perform stream, whose caller is told why).
type sessions struct {
	mu    sync.Mutex
	byTok map[string]map[network.Stream]func()
}

func newSessions() *sessions { return &sessions{byTok: map[string]map[network.Stream]func(){}} }

// add registers st under tokenID; end (nil: reset the stream) is called
// when the token is revoked. It must not block: revocation calls it
// synchronously.
func (s *sessions) add(tokenID string, st network.Stream, end func()) {
	s.mu.Lock()
	m := s.byTok[tokenID]
	if m == nil {
		m = map[network.Stream]func(){}
		s.byTok[tokenID] = m
	}
	m[st] = end
	s.mu.Unlock()
}

func (s *sessions) remove(tokenID string, st network.Stream) {
	s.mu.Lock()
	if m := s.byTok[tokenID]; m != nil {
		delete(m, st)
		if len(m) == 0 {
			delete(s.byTok, tokenID)
		}
	}
	s.mu.Unlock()
}

// peers lists the peers of the streams tokenID authorizes.
func (s *sessions) peers(tokenID string) []peer.ID {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []peer.ID
	for st := range s.byTok[tokenID] {
		out = append(out, st.Conn().RemotePeer())
	}
	return out
}

func (s *sessions) revoke(tokenID string) {
	s.mu.Lock()
	m := s.byTok[tokenID]
	delete(s.byTok, tokenID)
	s.mu.Unlock()
	for st, end := range m {
		if end != nil {
			end()
		} else {
			_ = st.Reset()
		}
	}
}
