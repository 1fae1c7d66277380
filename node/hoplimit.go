package node

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/runner"
	"github.com/coattail/coattail/node/wire"
)

// hopRefusals remembers the receiver runs whose cascade (a perform or
// publish made while handling a publication) this node refused for
// limits.max_hops, until the run's failure asks (take). The hop of a
// cascade is the publication's plus one, so a run that failed after such
// a refusal would be refused the same on every retry: it is parked at
// once (handlePublication).
//
// A run is named by its subscription and sequence. An in-process
// receiver's cascade names it through its ctx, which only the node makes.
// An executable's comes through the control API, from the CLI, which
// passes on its receiver's COATTAIL_RUN (key, random per node) with its
// COATTAIL_SUBSCRIPTION and COATTAIL_SEQUENCE: a request without the key
// (a process that no receiver of this node started) names no run. What a
// refusal records counts only for a failure of that subscription's run of
// that sequence, at the hop the refused cascade continued, within the
// longest a run lasts: an unrelated request cannot make any other
// delivery skip its retries.
//
// Nothing is added to a delivery that does not fail: the record is made
// when a cascade is refused and looked up when a run fails.
type hopRefusals struct {
	key    string        // COATTAIL_RUN
	maxAge time.Duration // how long a run lasts at most; older records are stale
	mu     sync.Mutex
	m      map[hopRun]hopRefusal
}

// hopRun names a receiver's run: its subscription and the sequence of
// the publication it handles.
type hopRun struct {
	sub string
	seq uint64
}

// hopRefusal is a refused cascade: what was refused, and when.
type hopRefusal struct {
	op      string // "perform" or "publish"
	subject string
	hop     int
	at      time.Time
}

// maxHopRefusals bounds the records of refusals whose run never failed
// (a receiver that handled the refusal and exited 0) or never asked.
const maxHopRefusals = 4096

func newHopRefusals(actionTimeout time.Duration) *hopRefusals {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand panics instead)
	// A run waits for its slot and runs for action_timeout at most, then
	// is killed; a minute covers the wait for its exit.
	return &hopRefusals{key: hex.EncodeToString(b), maxAge: actionTimeout + time.Minute, m: map[hopRun]hopRefusal{}}
}

// remoteHopLimit makes a peer's refusal for its own limits.max_hops an
// ErrHopLimit here too, so that the run whose cascade it refused is parked
// at once as for a refusal of this node's (noteHopLimit).
func remoteHopLimit(err error) error {
	if err != nil && wire.IsCode(err, wire.CodeHopLimit) && !errors.Is(err, ErrHopLimit) {
		return fmt.Errorf("%w at the peer: %w", ErrHopLimit, err)
	}
	return err
}

// noteHopLimit records, when err is a refusal for the hop limit, that the
// receiver run the cascade came from (its ctx's, for an in-process
// receiver; run's, from the control API) was refused.
func (n *Node) noteHopLimit(ctx context.Context, err error, run *localapi.ReceiverRun, op, subject string, hop int) {
	if err == nil || !errors.Is(err, ErrHopLimit) {
		return
	}
	var r hopRun
	switch inv := InvocationFrom(ctx); {
	case inv != nil && inv.Kind == string(runner.KindReceiver) && inv.Subscription != "":
		r = hopRun{sub: inv.Subscription, seq: inv.Sequence}
	case run != nil && run.Subscription != "" && subtle.ConstantTimeCompare([]byte(run.Key), []byte(n.hops.key)) == 1:
		r = hopRun{sub: run.Subscription, seq: run.Sequence}
	default:
		return
	}
	n.hops.note(r, hopRefusal{op: op, subject: subject, hop: hop, at: time.Now()})
}

func (h *hopRefusals) note(r hopRun, f hopRefusal) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.m[r]; !ok && len(h.m) >= maxHopRefusals {
		for k, old := range h.m {
			if f.at.Sub(old.at) > h.maxAge {
				delete(h.m, k)
			}
		}
		if len(h.m) >= maxHopRefusals {
			for k := range h.m { // any one: all are recent
				delete(h.m, k)
				break
			}
		}
	}
	h.m[r] = f
}

// take returns and forgets the refusal recorded for subscription sub's run
// of publication seq at hop, if its cascade (hop+1) was refused during
// the run that just failed.
func (h *hopRefusals) take(sub string, seq uint64, hop uint32) (hopRefusal, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.m) == 0 {
		return hopRefusal{}, false
	}
	r := hopRun{sub: sub, seq: seq}
	f, ok := h.m[r]
	if !ok {
		return hopRefusal{}, false
	}
	delete(h.m, r)
	if f.hop != int(hop)+1 || time.Since(f.at) > h.maxAge {
		return hopRefusal{}, false
	}
	return f, true
}

// hopLimitError is the failure of a receiver run whose cascade the hop
// limit refused: it is not retried.
type hopLimitError struct {
	f       hopRefusal
	maxHops int
	err     error // the run's own failure
}

func (e *hopLimitError) Error() string {
	return fmt.Sprintf("cascade hop limit: the receiver's %s of %q at hop %d was refused (limits.max_hops %d), and the receiver then failed; not retried, as every run of this publication is refused the same: %v",
		e.f.op, e.f.subject, e.f.hop, e.maxHops, e.err)
}

func (e *hopLimitError) Unwrap() []error { return []error{ErrHopLimit, e.err} }
