package node

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coattail/coattail/datastore"
	"github.com/dustin/go-humanize"
)

// spaceGuard is the queues' SpaceCheck, and the check before a dead letter
// is stored: it refuses both while the disk holding data/ has less than
// limits.min_free_disk free. pebble exits
// the process when a write finds the disk full (its write-ahead log cannot
// be left half written), so a publisher filling the disk, with a
// subscriber away, used to crash the service; now the publisher is told,
// and deliveries, acks and the rest keep the room they need (they free the
// disk as subscribers catch up).
//
// The file system is asked at most every spaceRecheck, or sooner once the
// rounds written since the last look add up to an eighth of the reserve,
// so a fast publisher cannot outrun the reserve between two looks.
type spaceGuard struct {
	free    func() (uint64, error)
	reserve uint64
	// pending, when set, is what the datastore has yet to write to disk
	// from memory (pebble's memtables, flushed to tables): the reserve
	// must be kept after it. Else a reserve below a memtable (64 MiB)
	// let publications fill the disk up to where pebble's flush found no
	// room: it retried for ever, every write waited for it (deliveries,
	// acks, a subscriber's connection, service stop), and the instance
	// never drained.
	pending func() uint64
	what    string // the directory, for the error
	// reclaim, run in the background at most every reclaimEvery while
	// publications are refused, gives the space of delivered (deleted)
	// publications back to the file system; with compact it also
	// rewrites the datastore, which it does at most every compactEvery,
	// when reclaiming without did not make room.
	reclaim func(compact bool)
	log     *slog.Logger

	reclaiming atomic.Bool
	reclaimed  time.Time // under mu
	warned     bool      // under mu: the low disk was logged as a warning
	compacted  time.Time // by the reclaiming goroutine only

	mu      sync.Mutex
	checked time.Time
	since   uint64 // bytes of rounds since checked
	err     error  // the last verdict
}

// spaceRecheck is how often spaceGuard asks the file system, and
// reclaimEvery how often at most it has the datastore reclaim space.
const (
	spaceRecheck = 100 * time.Millisecond
	reclaimEvery = 10 * time.Second
	compactEvery = 10 * time.Minute
)

func (g *spaceGuard) check(bytes int) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := uint64(max(bytes, 0))
	g.since += n
	if !g.checked.IsZero() && time.Since(g.checked) < spaceRecheck && g.since < g.reserve/8 {
		return g.err
	}
	g.checked, g.since = time.Now(), 0
	free, err := g.free()
	var pending uint64
	if err == nil {
		pending = g.pendingNear(free)
	}
	need := g.reserve + pending
	switch {
	case err != nil:
		// Unknown (a file system without statfs): pebble will say
		// more if writing fails.
		g.err = nil
	case free >= need && free-need < n:
		// Room above the reserve, but not for this write: refuse it
		// alone (smaller ones may still fit).
		g.err = nil
		return fmt.Errorf("the disk holding %s has %s free: writing %s would leave less than limits.min_free_disk (%s)%s",
			g.what, humanize.IBytes(free), humanize.IBytes(n), humanize.IBytes(g.reserve), pendingNote(pending))
	case free < need:
		g.startReclaim(free)
		g.err = fmt.Errorf("the disk holding %s has %s free, less than limits.min_free_disk (%s)%s: free some room (publications are deleted once their subscribers have them)",
			g.what, humanize.IBytes(free), humanize.IBytes(g.reserve), pendingNote(pending))
	default:
		g.err, g.warned = nil, false
	}
	return g.err
}

// low reports whether free is below what the guard keeps: the reserve
// plus what the datastore has yet to write from memory.
func (g *spaceGuard) low(free uint64) bool {
	return free < g.reserve+g.pendingNear(free)
}

// pendingNear is what the datastore has yet to write from memory, asked
// only when free is near the reserve (pebble's metrics take its locks,
// and can wait for a manifest write); 0 otherwise, or without pending.
func (g *spaceGuard) pendingNear(free uint64) uint64 {
	if g.pending == nil || free >= g.reserve+pendingMax {
		return 0
	}
	return g.pending()
}

// pendingMax bounds what the datastore can hold in memory unwritten: its
// memtables until writes stop (two full and the one being filled).
const pendingMax = 3 * datastore.MemTableSize

// pendingNote names, in a refusal, the room kept for the datastore's
// writes from memory.
func pendingNote(pending uint64) string {
	if pending == 0 {
		return ""
	}
	return fmt.Sprintf(" plus the %s its datastore holds in memory and has yet to write", humanize.IBytes(pending))
}

// startReclaim runs reclaim in the background unless it runs already or
// ran within reclaimEvery. Called with g.mu held.
func (g *spaceGuard) startReclaim(free uint64) {
	if g.reclaim == nil || time.Since(g.reclaimed) < reclaimEvery || !g.reclaiming.CompareAndSwap(false, true) {
		return
	}
	g.reclaimed = time.Now()
	// A warning when the disk turns low; while it stays low, the
	// reclaims every reclaimEvery are debug lines.
	level := slog.LevelDebug
	if !g.warned {
		level, g.warned = slog.LevelWarn, true
	}
	g.log.Log(context.Background(), level, "the disk is almost full: publications and dead letters are refused until there is room (limits.min_free_disk); reclaiming the space of deleted entries", "dir", g.what, "free", humanize.IBytes(free), "min_free_disk", humanize.IBytes(g.reserve))
	go func() {
		defer g.reclaiming.Store(false)
		g.reclaim(false)
		if free, err := g.free(); err == nil && free < g.reserve && time.Since(g.compacted) >= compactEvery {
			g.compacted = time.Now()
			g.reclaim(true)
		}
		g.mu.Lock()
		g.checked = time.Time{} // look again at the next round
		g.mu.Unlock()
	}()
}

// spaceRetry is how often wait asks again.
const spaceRetry = 2 * time.Second

// wait returns once a write of bytes passes check, or ctx's error wrapped
// with the last refusal. The first refusal is passed to refused.
func (g *spaceGuard) wait(ctx context.Context, bytes int, refused func(error)) error {
	said := false
	for {
		err := g.check(bytes)
		if err == nil {
			return nil
		}
		if !said {
			refused(err)
			said = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ctx.Err(), err)
		case <-time.After(spaceRetry):
		}
	}
}
