package topics

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/coattail/coattail/datastore"
)

// Damage met while the queues run.
//
// A table block that goes bad while the instance runs is met by the
// compaction that next reads its table: the compaction fails, and pebble
// retries it for ever, in level 0 every few tens of milliseconds. Nothing
// else notices: reads step over the block or skip what it held, but each
// flush adds a table to level 0 that no compaction takes away, and after
// about a dozen pebble stops every write (level 0's stop-writes threshold)
// for good. Publications then time out ("may still be queued"), acks and
// removals hang, and so does Close: the instance is down until someone
// kills and restarts it, and the restart's load cuts the block out.
//
// So the queues cut it out as soon as pebble reports it (repair), the way
// the load does, while nothing of theirs writes: adminMu keeps
// AddSubscription, Rebind, removals and Close out, commitMu the committer
// (between two rounds) and the writes of removals and pending releases;
// the syncer only syncs, and readers only read (a read that meets the
// block before the cut skips what it held, as Read always did, until the
// cut writes it back from memory; one that meets it once the cut has
// ended, in the tables its iterator began with, reads it again; one after
// it reads what the cut left). Only damage within the queues' namespace
// (/queue: the log and the queue states) is cut: the span a cut reads and
// rewrites must hold no key another writer may write meanwhile
// (datastore.DamageWatcher.CutBlock), and this is the namespace the queues
// alone write. Within it, the cut keeps every entry that can still be
// read (those of other tables, and of the blocks beside the damaged one);
// of the entries that subscriptions still need and that were only in the
// damaged block, those still in a queue's memory are written again (the
// copy is the entry, listed for the subscriptions that need it), and the
// others are lost: each is written as a lost entry naming the
// subscriptions it was queued for, so that every later load numbers their
// publications as before, and is skipped and counted (corrupt) once, as
// the load does with the blocks it cuts out. The queue states in the span
// are written again from memory, so a damaged block of them costs nothing.
//
// Damage that cannot be cut out while running (another namespace's keys,
// an unlocatable block, writes already stalled) makes the queues refuse
// every publication with ErrStorageDamaged, which names the damage and the
// way out, instead of letting them time out once writes stall: the
// operator sees it at once (the publishers' errors, the log, service
// status), and a restart cuts out what the load meets; damage elsewhere
// needs a backup.
//
// Rather than refusing publications for any damage reported at runtime
// (simpler, but the instance would then need a restart for every bad
// block of queued publications, which the load cut handles anyway), the
// cut runs live: its rules are the load's, applied while the queues'
// writers wait a few milliseconds.

// damageWatcher is implemented by stores that report damage met while
// they are open and cut a damaged block out (package datastore's pebble
// backend).
type damageWatcher interface {
	DamageReported() <-chan struct{}
	TakeDamage() []datastore.Damage
	CutBlock(ctx context.Context, d datastore.Damage, lo, hi []byte, mark func(start, end []byte, kept [][]byte) ([]datastore.KV, error)) (bool, error)
}

// testHookRepair, when set, is called by repair with adminMu and commitMu
// held, before it cuts.
var testHookRepair func()

// maxUncut bounds the damaged blocks that repair remembers it could not
// cut out.
const maxUncut = 1024

// uncutRetry is how long repair leaves the reports of a block it could not
// cut out alone.
var uncutRetry = time.Minute // a variable for tests

// repairLoop cuts out, as it is reported, the damage that the store meets
// while the queues run (see repair), until Close.
func (qs *Queues) repairLoop(dw damageWatcher) {
	defer close(qs.repairDone)
	for {
		select {
		case <-qs.repairStop:
			return
		case <-dw.DamageReported():
		}
		for _, d := range dw.TakeDamage() {
			if !qs.repair(dw, d) {
				return
			}
		}
	}
}

// repair cuts the damaged block d names out of the store, with the queues'
// writers kept out, or makes the queues refuse publications when it
// cannot. It reports false once the queues are closed.
func (qs *Queues) repair(dw damageWatcher, d datastore.Damage) bool {
	// pebble reports a block again each time it is met (every read of
	// its keys, every compaction over it): one that could not be cut out
	// is tried again, with the queues' writers kept out and a flush, and
	// logged, once every uncutRetry only (what failed may have passed:
	// writes stalled, say).
	if at, ok := qs.uncut[d.Block()]; ok && time.Since(at) < uncutRetry {
		return true
	}
	qs.adminMu.Lock()
	defer qs.adminMu.Unlock()
	qs.mu.RLock()
	closed := qs.closed
	qs.mu.RUnlock()
	if closed {
		return false
	}
	qs.commitMu.Lock()
	defer qs.commitMu.Unlock()
	if testHookRepair != nil {
		testHookRepair()
	}
	ctx := context.Background()
	// A queue whose last state write failed has released entries in
	// memory that its stored state still counts on: a cut must not take
	// them away unmarked (see planCut).
	if err := qs.writeDirtyLocked(ctx); err != nil {
		qs.setDamaged(d, err)
		return true
	}
	var plan cutPlan
	cut, err := dw.CutBlock(ctx, d, []byte(queueNamespace+"/"), []byte(queueNamespace+"0"), func(start, end []byte, kept [][]byte) ([]datastore.KV, error) {
		plan = qs.planCut(start, end, kept)
		return plan.records, nil
	})
	switch {
	case err != nil:
		qs.setDamaged(d, err)
		if qs.uncut == nil {
			qs.uncut = map[string]time.Time{}
		}
		if _, ok := qs.uncut[d.Block()]; ok || len(qs.uncut) < maxUncut {
			qs.uncut[d.Block()] = time.Now()
		}
	case cut:
		delete(qs.uncut, d.Block())
		qs.applyCut(&plan, d)
	}
	return true
}

// setDamaged makes the queues refuse every publication for damage d that
// could not be cut out (why).
func (qs *Queues) setDamaged(d datastore.Damage, why error) {
	f := fmt.Errorf("%w: %v; it could not be cut out while running (%v), and compactions fail on it until writes stall: publications are refused; restart the instance, which cuts a damaged block of queued publications out at start, or restore the datastore from a backup if the damage is found again",
		ErrStorageDamaged, d, why)
	qs.log.Error("the datastore is damaged where it cannot be cut out while running: refusing publications until the instance restarts",
		"file", d.File, "keys", d.Keys, "damage", d.Err, "err", why)
	qs.failed.CompareAndSwap(nil, &f)
}

// cutHolder is a subscription that needs a log entry, and its sequence.
type cutHolder struct {
	q   *queue
	seq uint64
}

// cutLoss is a log entry lost to a cut, and who needed it.
type cutLoss struct {
	pos     uint64
	holders []cutHolder
}

// cutPlan is what a cut writes into its span, and what it costs.
type cutPlan struct {
	records []datastore.KV
	lost    []cutLoss
	// back are the entries written again from the queues' memory, and
	// who needed them.
	back []cutLoss
}

// logPosFrom returns the first log position whose key is at or above k
// (maxLogPos when none is, or k lies above every log key).
func logPosFrom(k []byte) uint64 {
	// Log keys have one length and sort as their positions do.
	lo, hi := uint64(0), maxLogPos
	var key []byte
	if key = appendLogKey(key[:0], hi); bytes.Compare(key, k) < 0 {
		return maxLogPos
	}
	for lo < hi {
		mid := lo + (hi-lo)/2
		if key = appendLogKey(key[:0], mid); bytes.Compare(key, k) >= 0 {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// planCut decides what a cut of the span start to end (excluded) writes
// there, kept being the keys of the span that keep a value. Every log
// entry that a subscription still needs (a reference in refs) and that
// is not kept was in the damaged block: written again from a queue's
// memory where one still has it, else written as lost for the
// subscriptions that need it. Called with adminMu and commitMu held, and
// the dirty queues' states written (writeDirtyLocked): no stored state
// then counts on an entry that no subscription needs in memory, so an
// entry not written back cannot change how a load numbers anything.
func (qs *Queues) planCut(start, end []byte, kept [][]byte) cutPlan {
	from, to := logPosFrom(start), logPosFrom(end) // maxLogPos is never logged
	keep := make(map[uint64]bool, len(kept))
	for _, k := range kept {
		if bytes.HasPrefix(k, []byte(logPrefix)) {
			if p, ok := parseSeq(string(k[len(logPrefix):])); ok {
				keep[p] = true
			}
		}
	}
	var gone []uint64
	for p, r := range qs.oldRefs {
		if r.n > 0 && p >= from && p < to && !keep[p] {
			gone = append(gone, p)
		}
	}
	for p := max(from, qs.refBase); p < min(to, qs.refBase+uint64(len(qs.refs))); p++ {
		if qs.refs[p-qs.refBase].n > 0 && !keep[p] {
			gone = append(gone, p)
		}
	}
	slices.Sort(gone)

	queues := qs.sortedQueues()

	var plan cutPlan
	holders := make(map[uint64][]cutHolder, len(gone))
	copies := make(map[uint64]Message)
	for _, q := range queues {
		if len(gone) == 0 {
			break
		}
		q.mu.Lock()
		for _, r := range q.pos.runs[q.pos.off:] {
			i, _ := slices.BinarySearch(gone, r.pos)
			for ; i < len(gone) && gone[i] < r.pos+r.n; i++ {
				p := gone[i]
				seq := r.seq + p - r.pos
				holders[p] = append(holders[p], cutHolder{q: q, seq: seq})
				if _, ok := copies[p]; !ok {
					if n := q.mem.n; n > 0 && seq >= q.mem.at(0).Seq && seq < q.mem.at(0).Seq+uint64(n) {
						copies[p] = q.mem.at(int(seq - q.mem.at(0).Seq)).Message
					}
				}
			}
		}
		q.mu.Unlock()
	}
	for _, p := range gone {
		hs := holders[p]
		if len(hs) == 0 {
			continue // needed by nobody after all
		}
		ids := make([]string, len(hs))
		for i, h := range hs {
			ids[i] = h.q.sub.ID
		}
		key := appendLogKey(nil, p)
		if m, ok := copies[p]; ok {
			// Listed for those that need it: a subscription that has it
			// released is not routed it again, one that was not routed it
			// is not either.
			val, _ := appendEntry(make([]byte, 0, encodedEntrySize(&m, ids)), &m, ids)
			plan.records = append(plan.records, datastore.KV{Key: key, Value: val})
			plan.back = append(plan.back, cutLoss{pos: p, holders: hs})
			continue
		}
		plan.records = append(plan.records, datastore.KV{Key: key, Value: appendLostEntry(nil, ids)})
		plan.lost = append(plan.lost, cutLoss{pos: p, holders: hs})
	}
	// The queue states in the span, as they are: the damaged block may
	// have held some.
	for _, q := range queues {
		k := []byte(subMetaKey(q.sub.ID))
		if bytes.Compare(k, start) < 0 || bytes.Compare(k, end) >= 0 {
			continue
		}
		q.mu.Lock()
		m := qs.stateLocked(q, q.head)
		q.mu.Unlock()
		plan.records = append(plan.records, datastore.KV{Key: k, Value: appendSubMeta(nil, &m)})
	}
	return plan
}

// applyCut records in the queues what a cut lost: each subscription skips
// the publications lost, counted once (as lose and the load count them).
// A subscription whose Read met the damaged block before the cut skips
// an entry written back from memory no longer: it is stored again, listed
// for it, and every load numbers and delivers it (its count stays, as the
// stored one does). Called with adminMu and commitMu held.
func (qs *Queues) applyCut(plan *cutPlan, d datastore.Damage) {
	// A read that met the block before the cut, and records its loss
	// after this, reads the entry again instead (lose); one that recorded
	// it before, forgets it here.
	qs.cuts.Add(1)
	for _, b := range plan.back {
		for _, h := range b.holders {
			h.q.mu.Lock()
			h.q.removeLost(h.seq)
			h.q.mu.Unlock()
		}
	}
	n := 0
	var ids []string
	counted := map[*queue]bool{}
	for _, l := range plan.lost {
		for _, h := range l.holders {
			q := h.q
			q.mu.Lock()
			// Acknowledged ones (below head) are not lost to anyone:
			// corruptSeen keeps a load from counting them either.
			count := h.seq >= q.head && !q.removed.Load() && q.addLost(h.seq)
			if count {
				q.corrupt++
			}
			q.corruptSeen = max(q.corruptSeen, h.seq)
			q.mu.Unlock()
			if count {
				n++
				qs.totCorrupt.Add(1)
				if !counted[q] {
					counted[q] = true
					ids = append(ids, q.sub.ID)
				}
			}
			qs.markDirty(q) // persist the counters
		}
	}
	slices.Sort(ids)
	if len(plan.lost) == 0 {
		qs.log.Warn("a damaged block of the datastore was cut out while running; no queued publication was lost",
			"file", d.File, "rewritten_from_memory", len(plan.back), "damage", d.Err)
		return
	}
	qs.log.Error("a damaged block of the datastore was cut out while running: the queued publications it held are lost; the subscriptions skip them",
		"file", d.File, "positions", fmt.Sprintf("%d to %d", plan.lost[0].pos, plan.lost[len(plan.lost)-1].pos),
		"entries_lost", len(plan.lost), "subscriptions", describeIDs(ids), "publications_lost", n,
		"rewritten_from_memory", len(plan.back), "damage", d.Err)
}
