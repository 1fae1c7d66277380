package topics

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/coattail/coattail/datastore"
)

// Damaged storage.
//
// A log entry that cannot be read (pebble reports a checksum mismatch in
// the block that holds it, or its value does not decode) holds a
// publication that is lost: nothing can deliver it. Its sequence is
// recorded in the queue's lost runs, counted in QueueStatus.Corrupt and
// logged as an error, and Read skips it, so that the publications queued
// after it are delivered (the subscriber sees a gap in the sequences, as
// after drop_oldest, and its next ack releases the entry). Only damage is
// skipped: any other read error is returned, and the deliverer retries.
//
// A damaged block of log entries is cut out of the store at load where it
// can be (cutDamage), wherever it is: the entries after it are read, and
// its positions up to the first of them are marked lost, so that every
// later load numbers them as this one. Where no read steps over it (the
// last block of log entries of an older table: its index sends every later
// log key there, also those a newer table holds) that is what lets the
// entries after it be read at all; in the middle of the log it could be
// stepped over, but left in its table every compaction of the table fails
// on it, and pebble retries such compactions for ever (in level 0 every few
// milliseconds, until writes stall once level 0 is full). Damage met while
// the queues run (by such a compaction, or by Read) is cut out as it is
// reported (repair.go).

// seqRun is the sequences lo to hi, inclusive.
type seqRun struct{ lo, hi uint64 }

// unreadable reports whether err says that a stored record is damaged,
// rather than that it could not be read this time.
func unreadable(err error) bool {
	return errors.Is(err, ErrCorruptQueue) || datastore.IsCorruption(err)
}

func (q *queue) lostIndex(seq uint64) (int, bool) {
	return slices.BinarySearchFunc(q.lost, seq, func(r seqRun, s uint64) int {
		switch {
		case r.hi < s:
			return -1
		case r.lo > s:
			return 1
		}
		return 0
	})
}

// isLost reports whether seq is lost. Called with q.mu held.
func (q *queue) isLost(seq uint64) bool {
	_, ok := q.lostIndex(seq)
	return ok
}

// addLost records seq as lost and reports whether it was not already.
// Called with q.mu held (or by load).
func (q *queue) addLost(seq uint64) bool {
	i, ok := q.lostIndex(seq)
	if ok {
		return false
	}
	switch {
	case i > 0 && q.lost[i-1].hi+1 == seq:
		q.lost[i-1].hi = seq
		if i < len(q.lost) && q.lost[i].lo == seq+1 {
			q.lost[i-1].hi = q.lost[i].hi
			q.lost = slices.Delete(q.lost, i, i+1)
		}
	case i < len(q.lost) && q.lost[i].lo == seq+1:
		q.lost[i].lo = seq
	default:
		q.lost = slices.Insert(q.lost, i, seqRun{seq, seq})
	}
	return true
}

// removeLost forgets that seq is lost (its entry can be read again) and
// reports whether it was. Called with q.mu held.
func (q *queue) removeLost(seq uint64) bool {
	i, ok := q.lostIndex(seq)
	if !ok {
		return false
	}
	switch r := q.lost[i]; {
	case r.lo == r.hi:
		q.lost = slices.Delete(q.lost, i, i+1)
	case seq == r.lo:
		q.lost[i].lo++
	case seq == r.hi:
		q.lost[i].hi--
	default:
		q.lost[i].hi = seq - 1
		q.lost = slices.Insert(q.lost, i+1, seqRun{seq + 1, r.hi})
	}
	return true
}

// trimLost forgets the lost sequences that neither Read nor MarkSent can
// meet again: below head (acked or dropped) and already reported sent.
func (q *queue) trimLost() {
	cut := min(q.head, q.cursor+1)
	i := 0
	for i < len(q.lost) && q.lost[i].hi < cut {
		i++
	}
	if i == len(q.lost) {
		q.lost = nil
		return
	}
	q.lost = q.lost[i:]
	if q.lost[0].lo < cut {
		q.lost[0].lo = cut
	}
}

// notLost calls fn with the parts of lo..hi that are not lost.
func (q *queue) notLost(lo, hi uint64, fn func(lo, hi uint64)) {
	for _, r := range q.lost {
		if r.hi < lo {
			continue
		}
		if r.lo > hi {
			break
		}
		if r.lo > lo {
			fn(lo, r.lo-1)
		}
		if r.hi >= hi {
			return
		}
		lo = r.hi + 1
	}
	if lo <= hi {
		fn(lo, hi)
	}
}

// lose records that the log entry of q's sequence seq, at position pos,
// cannot be read: the publication is skipped, counted and logged. cuts is
// qs.cuts before the read began: when a cut made while running (repair)
// has ended since, the read may have met a block cut out meanwhile (an
// iterator keeps reading the tables it began with), and nothing is
// recorded: lose reports false, and the caller reads the entry again.
func (qs *Queues) lose(q *queue, seq, pos uint64, cause error, cuts uint64) bool {
	q.mu.Lock()
	if cuts != anyCuts && qs.cuts.Load() != cuts {
		q.mu.Unlock()
		return false
	}
	if seq < q.head || q.removed.Load() || !q.addLost(seq) {
		q.mu.Unlock()
		return true
	}
	q.corrupt++
	q.corruptSeen = max(q.corruptSeen, seq)
	total := q.corrupt
	q.mu.Unlock()
	qs.totCorrupt.Add(1)
	qs.markDirty(q) // persist the counter
	qs.log.Error("queued publication lost: its stored log entry is damaged and cannot be read; skipped, the publications after it are delivered",
		"subscription", q.sub.ID, "subscriber", q.sub.Subscriber, "seq", seq, "position", pos,
		"key", string(appendLogKey(nil, pos)), "corrupt", total, "err", cause)
	return true
}

// anyCuts, given to lose, records the loss whatever cuts ended meanwhile.
const anyCuts = ^uint64(0)

// rangeScanner is implemented by stores that scan a key range reporting
// read errors, and can be asked to start anywhere (package datastore's
// pebble backend): a damaged part of the log is then stepped over.
type rangeScanner interface {
	Scan(ctx context.Context, start, end []byte, fn func(key, value []byte) error) error
}

// errStopScan ends a probe's scan at its first key.
var errStopScan = errors.New("topics: stop scan")

// maxLogPos is the largest position a log key can hold.
const maxLogPos = ^uint64(0)

// lostEntry is the value of a log entry that was in a damaged table block
// cut out of the store (cutDamage): it stands for the lost publication,
// so that every load numbers the publications after it as the first did.
// It does not decode as an entry (an older coattail finds it damaged too).
const lostEntry = "\x00lost"

// errLostEntry is decodeEntry's error for lostEntry.
var errLostEntry = fmt.Errorf("%w: its entry was in a damaged storage block, which was cut out", ErrCorruptQueue)

// damageCutter is implemented by stores that can cut a damaged block out
// (package datastore's pebble backend).
type damageCutter interface {
	CutDamage(ctx context.Context, cause error, at, limit []byte, mark func(next []byte) ([]datastore.KV, error)) (bool, error)
}

// maxCuts bounds the damaged blocks one load cuts out.
const maxCuts = 16

// maxLostMarks bounds the positions one cut marks lost (a damaged block
// holds a few hundred entries at most; more would be positions long
// deleted).
const maxLostMarks = 1 << 20

// cutDamage cuts out of the store the damaged block that the read error
// cause met at log position from, keeping every entry that can be read
// (those a newer table holds, and those of the blocks beside it). The
// positions from from to the first entry kept are written as lostEntry.
// It reports whether it cut, and whether any log entry follows from.
//
// A write into the span CutDamage replaces while it runs would be lost
// (DamageCutter), and the span may hold other keys than the log's (it may
// run to the damaged table's last key, past the log: other records of the
// queues, or of other packages). It runs only from load, in OpenQueues,
// which nothing else writes during (the cuts made while the queues run,
// repair, start after it, and keep to the queues' own keys): load runs before the committer and the syncer start, and
// OpenQueues's one caller, node.New (for a service, node.RunService; for an
// offline CLI command, node.Connect; both with the datastore's directory
// lock held, so no other process has it open), opens the datastore and
// sets up the identity record, the authority (which starts no goroutine)
// and the peers before it, each done when it returns, and starts nothing
// that writes until OpenQueues returns (node/perf calls node.New the same
// way). pebble's own flushes and compactions change no key; a table that a
// compaction deletes before CutDamage opens it makes it start again.
func cutDamage(ctx context.Context, dc damageCutter, from uint64, cause error) (cut, more bool, err error) {
	end := []byte(queueNamespace + "/log0")
	cut, err = dc.CutDamage(ctx, cause, appendLogKey(nil, from), end, func(next []byte) ([]datastore.KV, error) {
		if next == nil {
			return nil, nil // no entry follows
		}
		more = true
		p, ok := parseSeq(string(next[len(logPrefix):])) // next is below limit: a log key
		if !ok || p < from {
			return nil, nil // a malformed key, which the load deletes
		}
		if p-from > maxLostMarks {
			return nil, fmt.Errorf("topics: the damaged queue log positions %d to %d are too many to mark lost", from, p-1)
		}
		marks := make([]datastore.KV, 0, p-from) // none if from itself is kept
		for q := from; q < p; q++ {
			marks = append(marks, datastore.KV{Key: appendLogKey(nil, q), Value: []byte(lostEntry)})
		}
		return marks, nil
	})
	if err != nil || !cut {
		return false, false, err
	}
	return true, more, nil
}

// scanLog calls entry for every log key in order, and hole for each span
// of positions the store could not read (damaged): positions from to to
// (inclusive) may hold entries, which are lost. A hole whose end could not
// be found (to == maxLogPos) runs to the end of the log. Damage is cut out
// of the store first where it can be (dc, if not nil; cutDamage), wherever
// in the log it is: the positions it held are then read as lost entries,
// and the entries after it are read. Damage that cannot be cut out is
// stepped over as before: the first position from which the log reads
// again is searched for, and the positions before it are a hole (the
// damaged block then stays in its table, where every compaction of that
// table fails on it).
func scanLog(ctx context.Context, sc rangeScanner, dc damageCutter, entry func(key string, val []byte), hole func(from, to uint64, err error)) error {
	end := []byte(queueNamespace + "/log0") // just above every log key
	start := []byte(logPrefix)
	var key []byte
	cuts := 0
	for {
		last, seen := uint64(0), false
		err := sc.Scan(ctx, start, end, func(k, v []byte) error {
			entry(string(k), v)
			if p, ok := parseSeq(string(k[len(logPrefix):])); ok {
				last, seen = p, true
			}
			return nil
		})
		if err == nil || !datastore.IsCorruption(err) {
			return err
		}
		from := uint64(0)
		if seen {
			from = last + 1
		} else if p, ok := parseSeq(string(start[len(logPrefix):])); ok {
			from = p
		}
		if dc != nil && cuts < maxCuts {
			cuts++
			cut, more, cerr := cutDamage(ctx, dc, from, err)
			switch {
			case cerr != nil && ctx.Err() != nil:
				return ctx.Err()
			case cerr != nil:
				// Stepped over as before cutting was tried.
				err = fmt.Errorf("%w (and it could not be cut out: %w)", err, cerr)
			case cut && more:
				// The positions it held are lost entries now, read
				// from from on with the rest.
				start = appendLogKey(nil, from)
				continue
			case cut:
				hole(from, maxLogPos, err) // nothing after it
				return nil
			}
		}
		// Find the first position from which the log reads again: a
		// damaged block fails every seek into it and none beyond it, so
		// the positions where a scan starts well are those above some
		// boundary. Double the step until one reads, then bisect.
		probe := func(p uint64) (bool, error) {
			key = appendLogKey(key[:0], p)
			err := sc.Scan(ctx, key, end, func([]byte, []byte) error { return errStopScan })
			switch {
			case err == nil || errors.Is(err, errStopScan):
				return true, nil
			case datastore.IsCorruption(err):
				return false, nil
			}
			return false, err
		}
		bad, good := from, uint64(0) // bad fails (as the scan did); good reads, 0: none found
		// Damage that reaches the end of the log (the last block of log
		// keys in a table: its index sends every later log key there)
		// costs one probe, not sixty-four.
		if ok, perr := probe(maxLogPos); perr != nil {
			return perr
		} else if !ok {
			hole(from, maxLogPos, err)
			return nil
		}
		for step := uint64(1); ; step *= 2 {
			p := bad + step
			if p < bad || step == 1<<63 {
				break // no position above reads
			}
			ok, perr := probe(p)
			if perr != nil {
				return perr
			}
			if ok {
				good = p
				break
			}
			bad = p
		}
		if good == 0 {
			hole(from, maxLogPos, err)
			return nil
		}
		for good-bad > 1 {
			mid := bad + (good-bad)/2
			ok, perr := probe(mid)
			if perr != nil {
				return perr
			}
			if ok {
				good = mid
			} else {
				bad = mid
			}
		}
		hole(from, good-1, err)
		start = appendLogKey(nil, good)
	}
}

// describeIDs renders subscription ids for a log line, at most a few.
func describeIDs(ids []string) string {
	const show = 8
	if len(ids) <= show {
		return fmt.Sprint(ids)
	}
	return fmt.Sprintf("%v and %d more", ids[:show], len(ids)-show)
}

// deleteLogFrom deletes every log entry from position from on, with one
// range deletion where the store has them (the pebble backend: reads then
// step over a damaged block under it instead of failing in it), else one
// key at a time (what a scan finds).
func (qs *Queues) deleteLogFrom(ctx context.Context, from uint64) error {
	sb, ok := qs.store.(sizedBatcher)
	if !ok {
		return nil // no store without range deletions can have a damaged block
	}
	b, err := sb.SizedBatch(ctx, 2*logKeyLen+64)
	if err != nil {
		return fmt.Errorf("topics: delete the damaged queue log: %w", err)
	}
	rd, ok := b.(rangeDeleter)
	if !ok {
		return nil
	}
	if err := rd.DeleteRange(ctx, appendLogKey(nil, from), []byte(queueNamespace+"/log0")); err != nil {
		return fmt.Errorf("topics: delete the damaged queue log: %w", err)
	}
	if err := b.Commit(ctx); err != nil {
		return fmt.Errorf("topics: delete the damaged queue log: %w", err)
	}
	return nil
}
