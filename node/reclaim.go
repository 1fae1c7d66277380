package node

import (
	"context"
	"log/slog"
	"time"

	"github.com/dustin/go-humanize"
)

// idleReclaimer gives the disk space of delivered publications back to the
// file system once the instance is idle. A queued publication is deleted
// once its subscriber has it, but a deletion frees nothing on disk until
// the datastore compacts it with the entry it deletes; with a large
// backlog drained (a subscriber back after an outage) the space stayed
// taken, hundreds of MiB, across restarts, until the disk ran low (see
// spaceGuard). While publications flow it does nothing: the datastore's
// memtable is sized so that entries and their deletions meet in memory,
// which an early flush would defeat.
//
// Each tick it looks whether anything happened since the last one
// (activity) and how much the datastore's tables take (usage): idle, with
// usage at least twice what the last reclaim left plus idleReclaimSlack,
// it reclaims (flush and compact). The doubling bounds the cost: a
// compaction rewrites what is live, which the tables then held at most
// half of. Queues still holding publications do not stop it: one
// subscriber gone for good would otherwise keep the space of every other
// subscriber's delivered backlog. (The write-ahead logs are not counted:
// they hold what the memtable does, and up to three of them are kept for
// reuse.)
//
// Deleting stored records does not grow the tables, so a deletion that
// frees much (freed) reclaims too, once idleReclaimSlack of them is gone
// since the last reclaim: dead letters dropped or replayed, the queue of a
// removed subscription (unsubscribed, revoked, its peer removed), and
// publications delivered that a reclaim had found queued (a subscriber
// back after an outage long enough for the instance to be idle: the
// reclaim then left the backlog live, and its drain did not double the
// tables). Otherwise `deadletters drop --all` of large publications, or
// removing a subscription with a deep queue, gave nothing back until the
// tables doubled. Publications delivered in the flow are not counted
// (topics.Queues.FreedBytes): they are deleted before the memtable holding
// them is flushed, and counting them would compact the tables for nothing
// at every pause of a busy instance.
type idleReclaimer struct {
	usage    func() uint64
	activity func() uint64
	freed    func() uint64 // bytes of stored records deleted so far (nil: none counted)
	reclaim  func(context.Context) error
	log      *slog.Logger

	base      uint64 // usage after the last reclaim (0 before the first)
	lastFreed uint64 // freed at the last reclaim
	lastAct   uint64
	// measure: the tables replaced by the last reclaim may not all be
	// deleted yet when it returns: base is measured at the next tick.
	measure bool
	before  uint64 // usage before the last reclaim, for its log line
}

// idleReclaimEvery is how often idleReclaimer looks, and idleReclaimSlack
// what the tables may take beyond twice their size after the last reclaim
// before it reclaims: less is not worth a compaction. (Tables are written
// only when a memtable of datastore.MemTableSize fills, so a backlog that
// never filled one leaves none to reclaim.)
const (
	idleReclaimEvery = 5 * time.Second
	idleReclaimSlack = 16 << 20
)

// tick reclaims if the instance has been idle since the last tick and the
// datastore takes much more than it did; it reports whether it reclaimed.
func (r *idleReclaimer) tick(ctx context.Context) bool {
	if r.measure {
		r.base, r.measure = r.usage(), false
		r.log.Info("compacted the datastore while idle, giving back the disk space of deleted entries (delivered publications, removed subscriptions' queues, dropped dead letters)",
			"tables_before", humanize.IBytes(r.before), "tables_after", humanize.IBytes(r.base))
	}
	act := r.activity()
	busy := act != r.lastAct
	r.lastAct = act
	if busy {
		return false
	}
	used := r.usage()
	var freed uint64
	if r.freed != nil {
		freed = r.freed()
	}
	if used < 2*r.base+idleReclaimSlack && (freed-r.lastFreed < idleReclaimSlack || used < idleReclaimSlack) {
		return false
	}
	r.lastFreed = freed
	if err := r.reclaim(ctx); err != nil {
		// Not retried until the tables have doubled again (a disk too
		// full to compact: spaceGuard reclaims when it is low).
		r.base = used
		r.log.Debug("reclaiming the disk space of delivered publications failed", "err", err)
		return false
	}
	r.measure, r.before = true, used
	// Reclaiming is activity of its own (the flush); the next tick
	// starts from here.
	r.lastAct = r.activity()
	return true
}

// run ticks every idleReclaimEvery until ctx ends.
func (r *idleReclaimer) run(ctx context.Context) {
	r.lastAct = r.activity()
	t := time.NewTicker(idleReclaimEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.tick(ctx)
		}
	}
}

// startIdleReclaim runs an idleReclaimer for n's datastore until n closes.
func (n *Node) startIdleReclaim() {
	if n.db == nil || n.db.Dir() == "" {
		return // in memory: nothing to give back
	}
	db := n.db
	r := &idleReclaimer{
		usage: db.TableSize,
		activity: func() uint64 {
			t := n.queues.Totals()
			return n.stats.published.Load() + n.stats.received.Load() + n.stats.deadLetters.Load() +
				t.Delivered + t.Redelivered + t.Dropped
		},
		freed: func() uint64 {
			return n.stats.deadBytes.Load() + n.queues.FreedBytes()
		},
		reclaim: func(ctx context.Context) error { return n.reclaimDisk(ctx, true) },
		log:     n.log,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.run(ctx)
	}()
	n.onClose(func() error {
		cancel()
		<-done
		return nil
	})
}

// reclaimDisk has the datastore give the disk space of deleted entries
// back (datastore.DB.Reclaim), and tells the queues that its flush put
// every publication logged before it in the tables: those delivered from
// then on count in what the idle reclaimer is told was freed.
func (n *Node) reclaimDisk(ctx context.Context, compact bool) error {
	mark := n.queues.LogMark()
	err := n.db.Reclaim(ctx, compact)
	if err == nil {
		n.queues.Flushed(mark)
	}
	return err
}
