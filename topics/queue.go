package topics

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
)

// Queue policies: what Publish does when a matching queue is at its bound.
const (
	// PolicyReject fails the whole Publish call with ErrQueueFull and writes
	// nothing of it. It is the default, because it never loses a message
	// that was accepted.
	PolicyReject = "reject"
	// PolicyDropOldest removes the oldest undelivered messages of the full
	// queue to make room, counting them in QueueStatus.Dropped.
	PolicyDropOldest = "drop_oldest"
)

// Defaults for QueueOptions.
const (
	DefaultQueueBound     = 1_000_000
	DefaultMemoryPerQueue = 16 << 20
	DefaultMemoryTotal    = 256 << 20
)

// MaxSubscriptionIDLen bounds subscription ids; they are datastore key
// segments.
const MaxSubscriptionIDLen = 512

var (
	// ErrQueueFull is returned by Publish under PolicyReject when a message
	// would overflow a matching queue; the error names the subscription.
	ErrQueueFull = errors.New("topics: queue full")
	// ErrNoSpace is returned by Publish when QueueOptions.SpaceCheck says
	// the disk has too little room left: nothing of the call was queued.
	ErrNoSpace = errors.New("topics: not enough disk space")
	// ErrNoSubscription is returned for an unknown (or removed) subscription.
	ErrNoSubscription = errors.New("topics: no such subscription")
	// ErrClosed is returned by every operation after Queues.Close.
	ErrClosed = errors.New("topics: queues closed")
	// ErrSubscriptionExists is returned by AddSubscription when the id is
	// taken by a different subscription.
	ErrSubscriptionExists = errors.New("topics: subscription already exists")
	// ErrInvalidSubscription is returned by AddSubscription for an unusable id.
	ErrInvalidSubscription = errors.New("topics: invalid subscription")
	// ErrAckOutOfRange is returned by Ack for a sequence that was never
	// assigned.
	ErrAckOutOfRange = errors.New("topics: ack beyond the last queued sequence")
	// ErrInvalidQueueOptions is returned by OpenQueues for bad options.
	ErrInvalidQueueOptions = errors.New("topics: invalid queue options")
	// ErrStorageFailed is returned by Publish when writing its round of
	// publications to the datastore fails (also to a call the round refused
	// as full), and to every call after that: the sequences of that round
	// are spent, and numbering more after them would not survive a restart
	// (the log is replayed without the lost round). Restart the instance.
	ErrStorageFailed = errors.New("topics: queue storage failed; restart the instance")
	// ErrStorageDamaged is returned by Publish, and to every call after
	// it, once the datastore reported damage while the queues ran that
	// could not be cut out of it (see repair): the error names it. A
	// compaction that meets it fails and is retried for ever, until
	// writes stall. Restart the instance (a damaged block of queued
	// publications is cut out at start); damage the restart does not cut
	// out needs the datastore restored from a backup.
	ErrStorageDamaged = errors.New("topics: the datastore is damaged")
	// ErrCorruptQueue is the cause logged for a stored subscription, queue
	// record or message that cannot be decoded. Queues do not fail for it:
	// a subscription whose records are damaged is dropped when the queues
	// open, and a publication whose log entry is damaged is skipped and
	// counted (QueueStatus.Corrupt).
	ErrCorruptQueue = errors.New("topics: corrupt queue record")
)

// Message is one publication as queued for a subscription.
type Message struct {
	Subject string
	Data    []byte
	Hop     uint32 // cascade depth, to stop publication loops
	Time    int64  // publication time, unix nanoseconds
}

// Subscription is a subscription that another peer holds at this instance.
// It is stored as JSON under /subs/in/<id>.
type Subscription struct {
	ID         string    `json:"id"`
	Subscriber string    `json:"subscriber"` // peer id
	Pattern    string    `json:"pattern"`
	TokenID    string    `json:"token_id"`
	Receiver   string    `json:"receiver"`
	CreatedAt  time.Time `json:"created_at"`
}

// QueueStatus is a snapshot of one subscription's queue.
type QueueStatus struct {
	Subscription
	NextSeq     uint64 `json:"next_seq"`
	Acked       uint64 `json:"acked"`
	Depth       uint64 `json:"depth"`
	Delivered   uint64 `json:"delivered"`
	Redelivered uint64 `json:"redelivered"`
	Dropped     uint64 `json:"dropped"`
	// Corrupt counts the publications queued for the subscription that
	// were lost because their stored log entry was damaged (unreadable):
	// skipped, never delivered.
	Corrupt       uint64    `json:"corrupt"`
	LastDelivered time.Time `json:"last_delivered,omitempty"`
}

// Item is a queued message with its sequence number.
type Item struct {
	Seq     uint64
	Message Message
}

// QueueOptions configures OpenQueues. Zero values select the defaults.
type QueueOptions struct {
	// Bound is the maximum number of undelivered (unacknowledged) messages
	// per subscription (default DefaultQueueBound).
	Bound int
	// Policy is PolicyReject (default) or PolicyDropOldest.
	Policy string
	// MemoryPerQueue is how many bytes of the most recent messages of each
	// queue are kept in memory, so that a subscriber keeping up is served
	// without reading the datastore (default DefaultMemoryPerQueue). Older
	// messages are read back from the datastore.
	MemoryPerQueue int
	// MemoryTotal bounds the memory of all queues together (default
	// DefaultMemoryTotal): each queue keeps at most
	// min(MemoryPerQueue, MemoryTotal / number of subscriptions), so a
	// thousand subscriptions do not cost a thousand times MemoryPerQueue.
	MemoryTotal int
	// Logger receives warnings about stored state; nil discards them.
	Logger *slog.Logger
	// SpaceCheck, if set, is asked before each round of publications is
	// written, with the round's size in bytes; an error refuses every
	// publication of the round (ErrNoSpace, wrapping it). Deletions and
	// queue state are still written: they are small, and they are what
	// frees the disk. pebble, the store of package datastore, exits the
	// process when a write finds the disk full, so the room must be
	// checked before.
	SpaceCheck func(bytes int) error
}

// Test hooks, nil outside tests: testHookAdmin runs in AddSubscription and
// removals once they found the queues open (holding adminMu), and
// testHookCloseWaitsAdmin in Close just before it waits for adminMu.
var testHookAdmin, testHookCloseWaitsAdmin func()

// Tuning of the committer. A round is bounded so that one huge burst cannot
// make every publisher in it wait for a giant write, and releases are
// bounded so that acking a million messages at once does not stall
// publications behind one enormous batch.
const (
	maxRoundEntries    = 1 << 16
	maxRoundBytes      = 64 << 20
	maxDeletesPerRound = 1 << 16
	reqQueueLen        = 1024
	// publishArena is the allocation small encoded entries of one
	// Publish call share.
	publishArena = 32 << 10
	// readChunk is how many log entries a datastore read maps and fetches
	// at a time.
	readChunk = 256
	// itemOverhead approximates the memory an Item costs beyond its subject
	// and data, for the MemoryPerQueue budget.
	itemOverhead = 64
)

// Queues is the set of durable, sequenced publication queues of the
// subscriptions held at this instance.
//
// # Storage
//
// A publication is written once, as an entry of one publisher log at the
// next global log position, however many subscriptions it is routed to:
// fan-out multiplies neither datastore writes nor bytes. The entry records
// its routing, decided at publish time: either "every subscription whose
// pattern matches and that existed when the entry was logged" (one byte,
// the common case) or the explicit list of subscription ids (a publication
// restricted by a filter). A subscription's sequence numbers are not
// stored: its n-th routed entry is its sequence n, which is deterministic
// from the log, so a restart recomputes it by scanning the log from the
// subscription's base (see subMeta). Each subscription keeps in memory the
// log position of every sequence it still needs (as runs, so a
// subscription that takes every publication costs a few words), and the
// log keeps in memory, per entry, how many subscriptions still need it; an
// entry is deleted once that count reaches zero, in the same batch that
// records in the subscriptions' state that they no longer need it. A
// subscription added later never receives older entries (its start
// position is after them), and a removed one releases its references at
// once, so it never holds entries back.
//
// # Commit
//
// Publish routes messages on the caller's goroutine; a single committer
// goroutine merges concurrent Publish calls into one datastore batch per
// round, and a syncer goroutine makes rounds durable with one Sync that
// covers every round committed before it, so while one fsync runs the next
// round is already being built and committed (group commit, pipelined).
// Durable messages become visible to Read, and wake Wait channels, only
// after their Sync. Releases (acks, drops) are applied by the committer
// without a Sync: a lost release only means a redelivery, which the
// subscriber drops as a duplicate. The messages that a round's
// publications push out of a drop_oldest queue are dropped (hidden and
// counted) when the round is durable, and released by a later round: never
// for publications that were lost.
//
// Lock order (a goroutine holding one may take only those after it):
//
//	adminMu → commitMu → Queues.mu → queue.mu → dirtyMu
//
// adminMu serialises AddSubscription, Rebind, removals, the cut of damage
// met while running (repair) and Close: Close sets the closed flag, waits
// for a cut in progress to end (repairDone), and then waits for the admin
// operation in progress, so none writes to the datastore once Close has
// returned (its caller closes the datastore next), and those that come
// later see the flag and return ErrClosed without writing. commitMu is
// held by the committer while it builds and commits a round, and by
// AddSubscription, removals and a cut, so log positions, reference counts
// and subscription starts change in one order, and nothing of the queues
// writes while a cut reads and replaces its span. Queues.mu guards the subscription map and the
// closed flag; queue.mu guards one queue's state; dirtyMu guards the set of
// queues with pending releases. The Trie has its own lock and is only
// written while holding Queues.mu and commitMu. No goroutine blocks on the
// committer while holding any of these locks (the committer may need
// commitMu): Publish sends its request after releasing Queues.mu.
type Queues struct {
	store  ds.Batching
	bound  uint64
	drop   bool
	memCap int
	memTot int
	nsubs  atomic.Int64 // len(subs), read without Queues.mu by the syncer
	log    *slog.Logger
	// spaceCheck is QueueOptions.SpaceCheck, called by the committer.
	spaceCheck func(bytes int) error

	adminMu  sync.Mutex
	commitMu sync.Mutex

	mu     sync.RWMutex
	subs   map[string]*queue
	trie   *Trie[*queue]
	closed bool

	// epoch counts added subscriptions. Publish notes it before routing;
	// if it changed by the time the committer logs the entry, "every
	// matching subscription" may name one that was not routed to, so the
	// committer lists the routed ids instead.
	epoch atomic.Uint64

	dirtyMu sync.Mutex
	dirty   []*queue

	// Totals since OpenQueues (see Totals), over every queue including
	// removed ones; unlike the per-queue counters they are not persisted.
	totDelivered, totRedelivered, totDropped, totCorrupt atomic.Uint64

	// Log state, guarded by commitMu. refs[p-refBase] counts the
	// subscriptions that still need the entry at position p, beside its
	// size; refBase+len(refs) == nextPos.
	nextPos uint64
	refBase uint64
	refs    []logRef
	// oldRefs holds the counts of entries below refBase that are still
	// needed: when a few old entries (a slow subscription's) would keep
	// refs spanning more than maxDenseRefs positions, they move here, so
	// memory follows the number of live entries, not the positions
	// published since the oldest one.
	oldRefs map[uint64]logRef
	// cFlushed is flushed as read when the round being written began.
	cFlushed uint64

	// The bytes deleted, for the datastore's reclaimer (see FreedBytes):
	// freed counts them; logged is nextPos once the entries below it are
	// committed (LogMark), and flushed the position below which the
	// datastore's tables held every entry at some point (Flushed).
	freed   atomic.Uint64
	logged  atomic.Uint64
	flushed atomic.Uint64

	// failed is why every publication is refused: the first failed round
	// of publications (ErrStorageFailed), or damage that could not be cut
	// out (ErrStorageDamaged).
	failed     atomic.Pointer[error]
	syncFailed atomic.Pointer[error] // first failed Sync; see sync
	reqs       chan *pubReq
	senders    sync.WaitGroup // Publish calls about to send on reqs
	kick       chan struct{}
	syncCh     chan *round
	syncerDone chan struct{}
	closeOnce  sync.Once
	closeErr   error
	roundID    uint64 // committer-only
	// repairStop ends the goroutine that cuts out damage reported while
	// the queues run (repairLoop), which closes repairDone.
	repairStop chan struct{}
	repairDone chan struct{}
	// cuts counts the cuts made while running (repair), each once its
	// records are stored and before the queues learn what it changed
	// (see lose).
	cuts atomic.Uint64
	// uncut are the damaged blocks that a cut could not cut out
	// (Damage.Block), and when it last tried: repairLoop's own.
	uncut map[string]time.Time

	reqPool sync.Pool
}

// queue is one subscription's queue.
type queue struct {
	sub   Subscription // TokenID as created: see token
	start uint64       // first log position it may be routed; set at creation

	// token is the id of the token the subscription is now held with
	// (Rebind changes it; sub.TokenID stays as created). Read it with
	// subscription.
	token atomic.Pointer[string]

	removed atomic.Bool

	// Committer-only state, guarded by Queues.commitMu.
	cNext  uint64 // next sequence to assign (runs ahead of next until synced)
	cHead  uint64 // sequences below it are released: their references dropped
	cAdd   int    // scratch: entries of the request being checked
	cCount int    // scratch: entries a round may route here (sizes its touch)
	cRound uint64 // round in which touch was assigned
	cTouch int    // index of this queue's touch in that round

	mu            sync.Mutex
	next          uint64 // next sequence after the durable ones
	head          uint64 // lowest sequence still queued (acked or dropped below)
	released      uint64 // copy of cHead: log entries below may be gone
	acked         uint64 // cumulative ack watermark
	delivered     uint64
	redelivered   uint64
	dropped       uint64
	sentMax       uint64 // highest sequence ever reported by MarkSent
	cursor        uint64 // highest sequence reported by MarkSent since the last Resume
	lastDelivered int64
	corrupt       uint64   // publications lost to a damaged log entry (subMeta.corrupt)
	corruptSeen   uint64   // highest sequence counted in corrupt
	lost          []seqRun // sequences whose log entry is unreadable: Read skips them
	pos           posIndex // log position of each sequence from cHead to cNext-1
	mem           itemRing // most recent durable items, contiguous, ending at next-1
	memBytes      int
	wake          chan struct{}
	dirty         bool // guarded by Queues.dirtyMu
}

// pubReq is one Publish call on its way through the committer.
type pubReq struct {
	msgs    []Message // owned copies; Data aliases vals
	vals    [][]byte  // encoded log entries, one per message in msgs
	targets []target  // grouped by message, in message order
	listed  bool      // vals list their subscriptions (a filter was given)
	epoch   uint64    // Queues.epoch before routing
	bytes   int
	n       int
	dropped uint64 // PublishOutcome.Dropped
	err     error
	done    chan struct{}
}

type target struct {
	q   *queue
	msg int
}

// touch is what one round does to one queue.
type touch struct {
	q     *queue
	first uint64 // first sequence assigned in this round
	next  uint64 // next sequence after this round
	drop  uint64 // head implied by drop_oldest after this round (0: none)
	items []Item
	pos   []uint64 // log position of each item
	// marks (drop_oldest only): the queue's next sequence after each
	// request of the round that appended to it, in order, so that finish
	// tells each call what its own publications pushed out.
	marks []dropMark
}

// dropMark is the next sequence of a queue after req's publications.
type dropMark struct {
	req  *pubReq
	next uint64
}

// logPut is one log entry written by a round.
type logPut struct {
	pos uint64
	val []byte
}

// logRef is what the queues keep in memory of one log entry: how many
// subscriptions still need it, and the bytes its record takes in the
// datastore (key and value), counted in FreedBytes when it is deleted.
// Beside the count it costs four bytes an entry, and one add when it is
// logged.
type logRef struct {
	n    uint32
	size uint32
}

// refSize is the size a logRef records for a record of n bytes.
func refSize(n int) uint32 {
	return uint32(min(n, int(^uint32(0))))
}

type round struct {
	reqs    []*pubReq
	touches []*touch
	puts    []logPut
	err     error
}

// posRun maps the n sequences from seq to the n log positions from pos.
type posRun struct{ seq, pos, n uint64 }

// posIndex maps a subscription's sequences to log positions. Runs rather
// than one entry per sequence, because a subscription that takes every
// publication (or every one of a burst) then costs one run, not eight
// bytes per queued message.
type posIndex struct {
	runs []posRun
	off  int // runs[:off] are released
}

func (x *posIndex) add(seq, pos uint64) {
	if k := len(x.runs); k > x.off {
		r := &x.runs[k-1]
		if r.seq+r.n == seq && r.pos+r.n == pos {
			r.n++
			return
		}
	}
	x.runs = append(x.runs, posRun{seq: seq, pos: pos, n: 1})
}

// find returns the index of the first live run that ends after seq.
func (x *posIndex) find(seq uint64) int {
	rs := x.runs[x.off:]
	i, _ := slices.BinarySearchFunc(rs, seq, func(r posRun, s uint64) int {
		if r.seq+r.n <= s {
			return -1
		}
		return 1
	})
	return x.off + i
}

// lookup returns the log position of seq.
func (x *posIndex) lookup(seq uint64) (uint64, bool) {
	i := x.find(seq)
	if i == len(x.runs) || seq < x.runs[i].seq {
		return 0, false
	}
	r := x.runs[i]
	return r.pos + seq - r.seq, true
}

// each calls fn for every indexed sequence in [from, to), in order, until
// fn returns false.
func (x *posIndex) each(from, to uint64, fn func(seq, pos uint64) bool) {
	for i := x.find(from); i < len(x.runs); i++ {
		r := x.runs[i]
		for s := max(from, r.seq); s < r.seq+r.n; s++ {
			if s >= to || !fn(s, r.pos+s-r.seq) {
				return
			}
		}
	}
}

// trim forgets every sequence below seq.
func (x *posIndex) trim(seq uint64) {
	for x.off < len(x.runs) && x.runs[x.off].seq+x.runs[x.off].n <= seq {
		x.off++
	}
	if x.off < len(x.runs) {
		if r := &x.runs[x.off]; r.seq < seq {
			d := seq - r.seq
			r.seq, r.pos, r.n = seq, r.pos+d, r.n-d
		}
	}
	switch {
	case x.off == len(x.runs):
		x.runs, x.off = x.runs[:0], 0
	case x.off >= 64 && 2*x.off >= len(x.runs):
		// Compact so that a long-lived fragmented index does not keep
		// growing at the front.
		n := copy(x.runs, x.runs[x.off:])
		x.runs, x.off = x.runs[:n], 0
	}
}

// OpenQueues loads the subscriptions held at this instance and the state of
// their queues from store, so that a restarted publisher still delivers
// everything it accepted, and starts the committer. Log entries that no
// subscription needs any more and state left behind by removed
// subscriptions are deleted.
func OpenQueues(ctx context.Context, store ds.Batching, o QueueOptions) (*Queues, error) {
	if store == nil {
		return nil, fmt.Errorf("%w: nil datastore", ErrInvalidQueueOptions)
	}
	var problems []error
	if o.Bound < 0 {
		problems = append(problems, fmt.Errorf("%w: bound %d is negative", ErrInvalidQueueOptions, o.Bound))
	}
	if o.MemoryPerQueue < 0 {
		problems = append(problems, fmt.Errorf("%w: memory per queue %d is negative", ErrInvalidQueueOptions, o.MemoryPerQueue))
	}
	switch o.Policy {
	case "", PolicyReject, PolicyDropOldest:
	default:
		problems = append(problems, fmt.Errorf("%w: policy %q (want %q or %q)", ErrInvalidQueueOptions, o.Policy, PolicyReject, PolicyDropOldest))
	}
	if len(problems) > 0 {
		return nil, errors.Join(problems...)
	}
	qs := &Queues{
		store:      store,
		bound:      DefaultQueueBound,
		drop:       o.Policy == PolicyDropOldest,
		memCap:     DefaultMemoryPerQueue,
		memTot:     DefaultMemoryTotal,
		log:        o.Logger,
		spaceCheck: o.SpaceCheck,
		subs:       make(map[string]*queue),
		trie:       NewTrie[*queue](),
		nextPos:    1,
		refBase:    1,
		reqs:       make(chan *pubReq, reqQueueLen),
		kick:       make(chan struct{}, 1),
		syncCh:     make(chan *round, 4),
		syncerDone: make(chan struct{}),
		repairStop: make(chan struct{}),
		repairDone: make(chan struct{}),
	}
	if o.Bound > 0 {
		qs.bound = uint64(o.Bound)
	}
	if o.MemoryPerQueue > 0 {
		qs.memCap = o.MemoryPerQueue
	}
	if o.MemoryTotal > 0 {
		qs.memTot = o.MemoryTotal
	}
	if qs.log == nil {
		qs.log = slog.New(slog.DiscardHandler)
	}
	qs.reqPool.New = func() any { return &pubReq{done: make(chan struct{}, 1)} }
	if err := qs.load(ctx); err != nil {
		return nil, err
	}
	go qs.commitLoop()
	go qs.syncLoop()
	// Only now: a cut while the queues run must not meet load's.
	if dw, ok := qs.store.(damageWatcher); ok {
		go qs.repairLoop(dw)
	} else {
		close(qs.repairDone)
	}
	return qs, nil
}

// load reads subscriptions, their state and the log. It runs before the
// committer starts, so it needs no locks.
func (qs *Queues) load(ctx context.Context) error {
	res, err := qs.store.Query(ctx, query.Query{Prefix: subsNamespace})
	if err != nil {
		return fmt.Errorf("topics: list subscriptions: %w", err)
	}
	entries, err := res.Rest()
	if err != nil {
		return fmt.Errorf("topics: list subscriptions: %w", err)
	}
	// A subscription whose record or state is damaged is dropped, with
	// its records: without its pattern nothing can be routed to it, and
	// without its state the sequences of what is queued for it are
	// unknown, and numbering them afresh would make its subscriber take
	// new publications for ones it processed. Its subscriber is told
	// not_found when it next resumes, and subscribes again.
	var garbage []ds.Key
	var garbageBytes uint64 // of the log entries in garbage
	dropped := 0
	drop := func(key string, s Subscription, why error) {
		dropped++
		id := strings.TrimPrefix(key, subsNamespace+"/")
		garbage = append(garbage, ds.RawKey(key))
		if validateSubscription(Subscription{ID: id, Pattern: "x"}) == nil {
			garbage = append(garbage, ds.RawKey(subMetaKey(id)))
		}
		qs.log.Error("subscription dropped: its stored record is damaged; what was queued for it is lost, and its subscriber must subscribe again (it is told when it next connects)",
			"subscription", id, "subscriber", s.Subscriber, "pattern", s.Pattern, "key", key, "err", why)
	}
	for _, e := range entries {
		var s Subscription
		if err := json.Unmarshal(e.Value, &s); err != nil {
			drop(e.Key, s, fmt.Errorf("%w: %w", ErrCorruptQueue, err))
			continue
		}
		if err := validateSubscription(s); err != nil || subKey(s.ID) != e.Key {
			drop(e.Key, s, fmt.Errorf("%w: it holds subscription %q, which does not belong there", ErrCorruptQueue, s.ID))
			continue
		}
		q := newQueue(s, 0)
		if err := qs.trie.Insert(s.Pattern, q); err != nil {
			drop(e.Key, s, fmt.Errorf("%w: %w", ErrCorruptQueue, err))
			continue
		}
		qs.subs[s.ID] = q
	}
	metas := make(map[*queue]subMeta, len(qs.subs))
	floor := uint64(0) // nextPos must stay above every position a state names
	res, err = qs.store.Query(ctx, query.Query{Prefix: subMetaPrefix})
	if err != nil {
		return fmt.Errorf("topics: list queue states: %w", err)
	}
	entries, err = res.Rest()
	if err != nil {
		return fmt.Errorf("topics: list queue states: %w", err)
	}
	for _, e := range entries {
		q := qs.subs[strings.TrimPrefix(e.Key, subMetaPrefix)]
		if q == nil {
			garbage = append(garbage, ds.RawKey(e.Key))
			continue
		}
		m, err := decodeSubMeta(e.Value)
		if err != nil {
			delete(qs.subs, q.sub.ID)
			qs.trie.Remove(q.sub.Pattern, q)
			drop(subKey(q.sub.ID), q.sub, fmt.Errorf("its queue state %s: %w", e.Key, err))
			continue
		}
		metas[q] = m
		q.corrupt, q.corruptSeen = m.corrupt, m.corruptSeen
		q.start = m.start
		q.cNext = m.baseSeq + 1
		q.cHead = m.baseSeq + 1
		floor = max(floor, m.baseG, m.start-1)
	}

	// The log, in position order: each entry's routing, replayed against
	// the subscriptions' bases, gives every subscription its sequences.
	first := true
	var pos uint64
	var cnt uint32
	var size uint32     // of the entry at pos (0: damaged, unknown)
	var lostTo []string // subscriptions the damaged entry at pos counts for
	damaged := false
	route := func(q *queue) {
		if m, ok := metas[q]; ok && q.start <= pos && pos > m.baseG {
			if damaged {
				q.addLost(q.cNext)
				if q.cNext > m.corruptSeen {
					// Counted once: a restart finds it again until the
					// acks after it release it.
					q.corrupt++
					q.corruptSeen = q.cNext
					qs.totCorrupt.Add(1)
					qs.markDirty(q)
				}
				lostTo = append(lostTo, q.sub.ID)
			}
			q.pos.add(q.cNext, pos)
			q.cNext++
			cnt++
		}
	}
	// A damaged entry whose routing is unknown counts for every
	// subscription it may have been routed to. Numbered for one it was not
	// routed to, it costs that subscription a gap in its sequences (and
	// perhaps a rerun of publications after it that its subscriber had
	// processed before the restart); left out of one it was routed to,
	// every later publication would take a sequence its subscriber
	// already processed, and be dropped there as a duplicate.
	everyone := func() {
		for _, q := range qs.subs {
			route(q)
		}
	}
	// at takes the entry at position p, of sz bytes (damaged: its
	// routing is known only if e.routed); it reports false for a key out
	// of order.
	at := func(p uint64, key string, e *logEntry, sz uint32, cause error) bool {
		if p == 0 || !first && p <= pos {
			return false
		}
		if first {
			qs.refBase, first = p, false
		}
		pos, cnt, size, lostTo, damaged = p, 0, sz, lostTo[:0], cause != nil
		qs.extendRefs(pos)
		switch {
		case e == nil || !e.routed:
			everyone()
		case e.listed:
			for _, id := range e.ids {
				if q := qs.subs[id]; q != nil {
					route(q)
				}
			}
		default:
			qs.trie.MatchFunc(e.Subject, route)
		}
		qs.refs = append(qs.refs, logRef{n: cnt, size: size})
		if cnt == 0 {
			garbage = append(garbage, ds.RawKey(key))
			garbageBytes += uint64(size)
		}
		if damaged && len(lostTo) > 0 {
			how := "routed to"
			if e == nil || !e.routed {
				how = "possibly routed to (its routing is unreadable too)"
			}
			slices.Sort(lostTo)
			qs.log.Error("queued publication lost: its stored log entry is damaged and cannot be read; the subscriptions it was queued for skip it",
				"position", p, "key", key, "subscriptions", describeIDs(lostTo), "routing", how, "err", cause)
		}
		return true
	}
	entry := func(key string, val []byte) {
		p, ok := parseSeq(strings.TrimPrefix(key, logPrefix))
		var e logEntry
		var cause error
		if ok {
			if e, cause = decodeEntry(val, false); cause != nil {
				cause = fmt.Errorf("%s: %w", key, cause)
			}
		}
		if !ok || !at(p, key, &e, refSize(len(key)+len(val)), cause) {
			qs.log.Warn("deleting malformed queue log key", "key", key)
			garbage = append(garbage, ds.RawKey(key))
			garbageBytes += uint64(len(key) + len(val))
		}
	}
	var holeEnd uint64 // 0, or the end of a damaged part of the log that runs past its last key
	hole := func(from, to uint64, cause error) {
		if to == maxLogPos {
			// How far the damage reaches is unknown, and so are the
			// entries it holds: every subscription may have lost some.
			// A range deletion over it lets reads and new entries (logged
			// above it) step over the damaged block.
			holeEnd = max(from, pos+1)
			for q := range metas {
				q.corrupt++
				qs.totCorrupt.Add(1)
				qs.markDirty(q)
			}
			qs.log.Error("the queue log is damaged from this position on and cannot be read: the publications queued there are lost (how many is unknown); the subscriptions skip them",
				"position", from, "key", string(appendLogKey(nil, from)), "err", cause)
			return
		}
		for p := from; p <= to; p++ {
			at(p, string(appendLogKey(nil, p)), nil, 0, fmt.Errorf("position %d of the damaged log positions %d to %d: %w", p, from, to, cause))
		}
	}
	if sc, ok := qs.store.(rangeScanner); ok {
		dc, _ := qs.store.(damageCutter)
		if err := scanLog(ctx, sc, dc, entry, hole); err != nil {
			return fmt.Errorf("topics: scan queue log: %w", err)
		}
	} else {
		res, err := qs.store.Query(ctx, query.Query{Prefix: logPrefix, Orders: []query.Order{query.OrderByKey{}}})
		if err != nil {
			return fmt.Errorf("topics: scan queue log: %w", err)
		}
		for {
			r, ok := res.NextSync()
			if !ok {
				break
			}
			if r.Error != nil {
				return errors.Join(fmt.Errorf("topics: scan queue log: %w", r.Error), res.Close())
			}
			entry(r.Key, r.Value)
		}
		if err := res.Close(); err != nil {
			return fmt.Errorf("topics: scan queue log: %w", err)
		}
	}
	if holeEnd > 0 {
		// New entries are logged from holeEnd on, under the deletion.
		pos = max(pos, holeEnd)
		if err := qs.deleteLogFrom(ctx, holeEnd); err != nil {
			return err
		}
	}
	qs.nextPos = max(pos, floor) + 1
	if first {
		qs.refBase = qs.nextPos
	}
	qs.extendRefs(qs.nextPos)

	var fresh []*queue

	qs.nsubs.Store(int64(len(qs.subs)))
	for _, q := range qs.subs {
		m, ok := metas[q]
		if !ok {
			// A subscription record without state cannot have been routed
			// anything that is still logged; it starts here.
			qs.log.Warn("subscription without queue state; starting it empty", "subscription", q.sub.ID)
			q.start, q.cNext, q.cHead = qs.nextPos, 1, 1
			m = subMeta{start: qs.nextPos, baseG: qs.nextPos - 1}
			metas[q] = m
			fresh = append(fresh, q)
		}
		q.next = q.cNext
		q.acked = min(m.acked, q.next-1)
		q.head = max(q.cHead, q.acked+1)
		q.released = q.cHead
		q.dropped, q.delivered, q.redelivered = m.dropped, m.delivered, m.redelivered
		q.sentMax, q.lastDelivered = m.sentMax, m.lastDelivered
		if q.head > q.cHead {
			qs.markDirty(q) // acked before the restart but not yet released
		}
	}
	qs.trimRefs()

	if len(fresh) > 0 {
		b, err := qs.store.Batch(ctx)
		if err != nil {
			return fmt.Errorf("topics: write queue states: %w", err)
		}
		for _, q := range fresh {
			m := metas[q]
			if err := b.Put(ctx, ds.RawKey(subMetaKey(q.sub.ID)), appendSubMeta(nil, &m)); err != nil {
				return fmt.Errorf("topics: write queue states: %w", err)
			}
		}
		if err := b.Commit(ctx); err != nil {
			return fmt.Errorf("topics: write queue states: %w", err)
		}
	}
	if len(garbage) > 0 {
		qs.log.Info("deleting queue records no subscription needs", "keys", len(garbage))
	}
	qs.logged.Store(qs.nextPos)
	// deleteKeys ends with the Sync that also makes the states written
	// above durable.
	if err := qs.deleteKeys(ctx, garbage); err != nil {
		return err
	}
	// Read from the tables (or a log pebble replays into them): their
	// space is the datastore's to give back.
	qs.freed.Add(garbageBytes)
	return nil
}

func newQueue(s Subscription, start uint64) *queue {
	q := &queue{sub: s, start: start, next: 1, head: 1, released: 1, cNext: 1, cHead: 1}
	q.token.Store(&s.TokenID)
	return q
}

// subscription returns the subscription, with the token it is held with
// now.
func (q *queue) subscription() Subscription {
	s := q.sub
	s.TokenID = *q.token.Load()
	return s
}

// maxDenseRefs bounds the span of refs; see oldRefs.
var maxDenseRefs = 1 << 20 // a variable for tests

// extendRefs pads refs with zero counts up to position to (exclusive),
// spilling first when that would make it span more than maxDenseRefs
// positions (a state naming a position far ahead of the log).
func (qs *Queues) extendRefs(to uint64) {
	if to > qs.refBase+uint64(maxDenseRefs) {
		// Nothing is logged between the last entry and to: keep the live
		// counts aside and start the dense span at to.
		qs.spillRefs(uint64(len(qs.refs)))
		qs.refBase = max(qs.refBase, to)
		return
	}
	for qs.refBase+uint64(len(qs.refs)) < to {
		qs.refs = append(qs.refs, logRef{})
	}
}

// spillRefs moves the first n positions of refs (all of it when n is
// larger) out of the dense span: their non-zero counts to oldRefs.
func (qs *Queues) spillRefs(n uint64) {
	n = min(n, uint64(len(qs.refs)))
	for i, r := range qs.refs[:n] {
		if r.n != 0 {
			if qs.oldRefs == nil {
				qs.oldRefs = make(map[uint64]logRef)
			}
			qs.oldRefs[qs.refBase+uint64(i)] = r
		}
	}
	qs.refBase += n
	if n == uint64(len(qs.refs)) {
		qs.refs = qs.refs[:0]
		return
	}
	qs.refs = append(qs.refs[:0:0], qs.refs[n:]...)
}

// refCount returns how many subscriptions still need the entry at pos
// (with its size), and whether pos is tracked at all (false: released,
// or never logged).
func (qs *Queues) refCount(pos uint64) (logRef, bool) {
	if pos < qs.refBase {
		r, ok := qs.oldRefs[pos]
		return r, ok
	}
	if i := pos - qs.refBase; i < uint64(len(qs.refs)) {
		return qs.refs[i], true
	}
	return logRef{}, false
}

// decRefs drops n references to the entry at pos.
func (qs *Queues) decRefs(pos uint64, n uint32) {
	if pos < qs.refBase {
		if r, ok := qs.oldRefs[pos]; ok {
			if r.n <= n {
				delete(qs.oldRefs, pos)
				if len(qs.oldRefs) == 0 {
					qs.oldRefs = nil // a map keeps its peak size: let it go
				}
			} else {
				r.n -= n
				qs.oldRefs[pos] = r
			}
		}
		return
	}
	if i := pos - qs.refBase; i < uint64(len(qs.refs)) {
		qs.refs[i].n -= min(n, qs.refs[i].n)
	}
}

// trimRefs drops leading log entries that nobody needs from refs, and
// spills old live ones to oldRefs when refs spans more than maxDenseRefs
// positions. Called with commitMu held (or before the committer starts).
func (qs *Queues) trimRefs() {
	if len(qs.refs) > maxDenseRefs {
		qs.spillRefs(uint64(len(qs.refs) - maxDenseRefs/2))
	}
	i := 0
	for i < len(qs.refs) && qs.refs[i].n == 0 {
		i++
	}
	if i == 0 {
		return
	}
	qs.refBase += uint64(i)
	if i == len(qs.refs) {
		qs.refs = qs.refs[:0]
		return
	}
	// Reslicing from the front keeps the backing array until append
	// reallocates; copy down once the dead prefix dominates so memory
	// follows the live span.
	if i >= 1024 && 2*i >= cap(qs.refs) {
		n := copy(qs.refs, qs.refs[i:])
		qs.refs = qs.refs[:n]
		return
	}
	qs.refs = qs.refs[i:]
}

// release drops q's reference to the log entry at pos and reports whether
// it was the last one. An entry the datastore's tables held (below
// cFlushed) counts in FreedBytes. Called with commitMu held.
func (qs *Queues) release(pos uint64) bool {
	r, ok := qs.refCount(pos)
	if !ok || r.n == 0 {
		return false // already released: nothing to delete
	}
	qs.decRefs(pos, 1)
	if r.n != 1 {
		return false
	}
	if pos < qs.cFlushed {
		qs.freed.Add(uint64(r.size))
	}
	return true
}

// deleteKeys deletes keys, in batches of at most maxDeletesPerRound, and
// makes the deletions durable.
func (qs *Queues) deleteKeys(ctx context.Context, keys []ds.Key) error {
	for len(keys) > 0 {
		n := min(len(keys), maxDeletesPerRound)
		if err := qs.deleteBatch(ctx, keys[:n]); err != nil {
			return err
		}
		keys = keys[n:]
	}
	if err := qs.sync(ctx, ds.RawKey(queueNamespace)); err != nil {
		return fmt.Errorf("topics: sync: %w", err)
	}
	return nil
}

// deleteBatch deletes keys in one batch, without a Sync.
func (qs *Queues) deleteBatch(ctx context.Context, keys []ds.Key) error {
	b, err := qs.store.Batch(ctx)
	if err != nil {
		return fmt.Errorf("topics: delete queue keys: %w", err)
	}
	for _, k := range keys {
		if err := b.Delete(ctx, k); err != nil {
			return fmt.Errorf("topics: delete %s: %w", k, err)
		}
	}
	if err := b.Commit(ctx); err != nil {
		return fmt.Errorf("topics: delete queue keys: %w", err)
	}
	return nil
}

// deleteLogBatch deletes the log entries at the sorted positions gone in
// one batch.
func (qs *Queues) deleteLogBatch(ctx context.Context, gone []uint64) error {
	var b ds.Batch
	var err error
	if sb, ok := qs.store.(sizedBatcher); ok {
		b, err = sb.SizedBatch(ctx, 0) // its batches delete ranges
	} else {
		b, err = qs.store.Batch(ctx)
	}
	if err == nil {
		err = deleteLog(ctx, b, gone)
	}
	if err == nil {
		err = b.Commit(ctx)
	}
	if err != nil {
		return fmt.Errorf("topics: delete queue log entries: %w", err)
	}
	return nil
}

func validateSubscription(s Subscription) error {
	switch {
	case s.ID == "":
		return fmt.Errorf("%w: empty id", ErrInvalidSubscription)
	case len(s.ID) > MaxSubscriptionIDLen:
		return fmt.Errorf("%w: id is %d bytes long (maximum %d)", ErrInvalidSubscription, len(s.ID), MaxSubscriptionIDLen)
	case strings.Contains(s.ID, "/"):
		return fmt.Errorf("%w: id %q contains '/'", ErrInvalidSubscription, s.ID)
	case s.ID == "." || s.ID == "..":
		// go-datastore cleans keys like paths, so these would make a
		// subscription's keys escape their namespace.
		return fmt.Errorf("%w: id %q is reserved", ErrInvalidSubscription, s.ID)
	}
	if err := ValidatePattern(s.Pattern); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidSubscription, err)
	}
	return nil
}

// AddSubscription stores s and creates its empty queue. It returns once the
// record is durable. Adding an identical subscription again is a no-op;
// a different one with the same id fails with ErrSubscriptionExists. The
// queue receives only publications logged after it was added.
func (qs *Queues) AddSubscription(ctx context.Context, s Subscription) error {
	if err := validateSubscription(s); err != nil {
		return err
	}
	raw, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("topics: encode subscription %q: %w", s.ID, err)
	}
	qs.adminMu.Lock()
	defer qs.adminMu.Unlock()
	qs.mu.RLock()
	closed, old := qs.closed, qs.subs[s.ID]
	qs.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if testHookAdmin != nil {
		testHookAdmin()
	}
	if old != nil {
		if sameSubscription(old.subscription(), s) {
			return nil
		}
		return fmt.Errorf("%w: %q", ErrSubscriptionExists, s.ID)
	}
	// commitMu is held from choosing the start position until the queue is
	// in the trie, so that every entry logged before it has a lower
	// position and every entry logged after it was routed with it in view.
	// The record and its state are durable before anything is routed to
	// it; this costs the committer one fsync per new subscription.
	qs.commitMu.Lock()
	defer qs.commitMu.Unlock()
	start := qs.nextPos
	meta := subMeta{start: start, baseG: start - 1}
	b, err := qs.store.Batch(ctx)
	if err != nil {
		return fmt.Errorf("topics: add subscription %q: %w", s.ID, err)
	}
	if err := b.Put(ctx, ds.RawKey(subKey(s.ID)), raw); err != nil {
		return fmt.Errorf("topics: add subscription %q: %w", s.ID, err)
	}
	if err := b.Put(ctx, ds.RawKey(subMetaKey(s.ID)), appendSubMeta(nil, &meta)); err != nil {
		return fmt.Errorf("topics: add subscription %q: %w", s.ID, err)
	}
	if err := b.Commit(ctx); err != nil {
		return fmt.Errorf("topics: add subscription %q: %w", s.ID, err)
	}
	// takeBack deletes the records again when the caller is told the
	// subscription was not made, or it would reappear at the next start
	// with nobody to resume it.
	takeBack := func(why string) {
		if err := qs.deleteKeys(ctx, []ds.Key{ds.RawKey(subKey(s.ID)), ds.RawKey(subMetaKey(s.ID))}); err != nil {
			qs.log.Warn("cannot take back a subscription "+why, "subscription", s.ID, "err", err)
		}
	}
	if err := qs.sync(ctx, ds.RawKey(subsNamespace)); err != nil {
		// The records are committed, only perhaps not durable.
		takeBack("whose sync failed")
		return fmt.Errorf("topics: add subscription %q: sync: %w", s.ID, err)
	}
	q := newQueue(s, start)
	qs.mu.Lock()
	defer qs.mu.Unlock()
	if qs.closed {
		// Closed while the record was written.
		takeBack("added while closing")
		return ErrClosed
	}
	if err := qs.trie.Insert(s.Pattern, q); err != nil {
		return err // validated above; kept for safety
	}
	qs.subs[s.ID] = q
	qs.nsubs.Store(int64(len(qs.subs)))
	qs.epoch.Add(1)
	// One more subscription lowers every queue's share of MemoryTotal.
	qs.shrinkMemLocked()
	return nil
}

// Rebind records that subscription id is now held with token tokenID (its
// subscriber presented another token, a rotation, when it resumed): the
// record is rewritten durably, and from then on the subscription is the
// new token's (RemoveWhere by token id, Status). The subscription as it
// is now is returned; rebinding to the token it already has is a no-op.
// If the record was written but its sync failed, the subscription is
// rebound and returned all the same, with the error.
func (qs *Queues) Rebind(ctx context.Context, id, tokenID string) (Subscription, error) {
	if tokenID == "" {
		return Subscription{}, fmt.Errorf("%w: subscription %q: empty token id", ErrInvalidSubscription, id)
	}
	qs.adminMu.Lock()
	defer qs.adminMu.Unlock()
	qs.mu.RLock()
	closed, q := qs.closed, qs.subs[id]
	qs.mu.RUnlock()
	switch {
	case closed:
		return Subscription{}, ErrClosed
	case q == nil:
		return Subscription{}, fmt.Errorf("%w: %q", ErrNoSubscription, id)
	}
	s := q.subscription()
	if s.TokenID == tokenID {
		return s, nil
	}
	s.TokenID = tokenID
	raw, err := json.Marshal(s)
	if err != nil {
		return Subscription{}, fmt.Errorf("topics: encode subscription %q: %w", id, err)
	}
	if err := qs.store.Put(ctx, ds.RawKey(subKey(id)), raw); err != nil {
		return Subscription{}, fmt.Errorf("topics: rebind subscription %q: %w", id, err)
	}
	if err := qs.sync(ctx, ds.RawKey(subsNamespace)); err != nil {
		// Held with the new token from here on all the same: a crash
		// may bring back the old one, which the subscriber replaces again
		// when it resumes.
		q.token.Store(&tokenID)
		return s, fmt.Errorf("topics: rebind subscription %q: sync: %w", id, err)
	}
	q.token.Store(&tokenID)
	return s, nil
}

func sameSubscription(a, b Subscription) bool {
	return a.ID == b.ID && a.Subscriber == b.Subscriber && a.Pattern == b.Pattern &&
		a.TokenID == b.TokenID && a.Receiver == b.Receiver && a.CreatedAt.Equal(b.CreatedAt)
}

// RemoveSubscription removes subscription id and its queue, durably: log
// entries that only it still needed are deleted. Wait channels of the
// queue are closed. On failure, see RemoveWhere.
func (qs *Queues) RemoveSubscription(ctx context.Context, id string) (Subscription, error) {
	removed, err := qs.remove(ctx, func(s Subscription) bool { return s.ID == id }, id)
	if err != nil {
		return Subscription{}, err
	}
	if len(removed) == 0 {
		return Subscription{}, fmt.Errorf("%w: %q", ErrNoSubscription, id)
	}
	return removed[0], nil
}

// RemoveWhere removes every subscription for which fn returns true (for
// example all made with a revoked token, or all of one subscriber) with
// their queues, durably, and returns them sorted by id.
//
// If removing fails, the error says so, and the queues keep what the
// datastore holds: when the subscription records could not be deleted
// nothing is removed (and nil is returned); once they are deleted the
// subscriptions are removed, and a later failure (to make that durable)
// is returned with them.
func (qs *Queues) RemoveWhere(ctx context.Context, fn func(Subscription) bool) ([]Subscription, error) {
	return qs.remove(ctx, fn, "")
}

// remove removes the subscriptions selected by fn; if only is not empty,
// only that id is considered (a map lookup instead of a scan).
func (qs *Queues) remove(ctx context.Context, fn func(Subscription) bool, only string) ([]Subscription, error) {
	qs.adminMu.Lock()
	defer qs.adminMu.Unlock()

	qs.mu.RLock()
	if qs.closed {
		qs.mu.RUnlock()
		return nil, ErrClosed
	}
	var victims []*queue
	if only != "" {
		if q := qs.subs[only]; q != nil {
			victims = append(victims, q)
		}
	} else {
		for _, q := range qs.subs {
			if fn(q.subscription()) {
				victims = append(victims, q)
			}
		}
	}
	qs.mu.RUnlock()
	if testHookAdmin != nil {
		testHookAdmin()
	}
	if len(victims) == 0 {
		return nil, nil
	}
	slices.SortFunc(victims, func(a, b *queue) int { return cmp.Compare(a.sub.ID, b.sub.ID) })

	// commitMu keeps the committer out while the victims' references are
	// counted and released. The records go first, in one batch of their
	// own: until it is committed nothing has changed, and once it is, a
	// restart no longer counts the victims' references, so the victims
	// are removed in memory at once, whatever happens to the rest (a
	// failure or crash later leaves only entries that the next open
	// deletes as unneeded).
	qs.commitMu.Lock()
	defer qs.commitMu.Unlock()
	// A queue whose last state write failed has released entries in
	// memory that its stored state still counts on: that state must be
	// rewritten before the deletions below can take the entries away.
	if err := qs.writeDirtyLocked(ctx); err != nil {
		return nil, err
	}
	records := make([]ds.Key, 0, 2*len(victims))
	for _, q := range victims {
		records = append(records, ds.RawKey(subKey(q.sub.ID)), ds.RawKey(subMetaKey(q.sub.ID)))
	}
	if err := qs.deleteBatch(ctx, records); err != nil {
		return nil, err // nothing removed
	}
	// From here on the committer skips these queues.
	for _, q := range victims {
		q.removed.Store(true)
	}
	// Every position the victims hold, sorted: a position held by k of
	// them drops k references. A slice of positions, not a map of counts:
	// a subscription removed with a million publications queued costs 8
	// bytes each here, not a map entry and a key each.
	var held []uint64
	for i, q := range victims {
		q.mu.Lock()
		if i == 0 && q.cNext > q.cHead {
			held = make([]uint64, 0, q.cNext-q.cHead) // most often the only one
		}
		q.pos.each(q.cHead, q.cNext, func(_, pos uint64) bool {
			held = append(held, pos)
			return true
		})
		q.mu.Unlock()
	}
	slices.Sort(held)
	gone := held[:0] // written behind the reads below
	var goneBytes uint64
	for i := 0; i < len(held); {
		j := i + 1
		for j < len(held) && held[j] == held[i] {
			j++
		}
		pos, n := held[i], uint32(j-i)
		if r, ok := qs.refCount(pos); ok && r.n <= n {
			gone = append(gone, pos)
			goneBytes += uint64(r.size)
		}
		qs.decRefs(pos, n)
		i = j
	}
	qs.trimRefs()

	out := make([]Subscription, len(victims))
	qs.mu.Lock()
	for i, q := range victims {
		delete(qs.subs, q.sub.ID)
		qs.trie.Remove(q.sub.Pattern, q)
		out[i] = q.subscription()
	}
	qs.nsubs.Store(int64(len(qs.subs)))
	qs.mu.Unlock()
	for _, q := range victims {
		q.mu.Lock()
		var left uint64
		if q.next > q.head {
			left = q.next - q.head
		}
		q.wakeLocked()
		q.mem.reset()
		q.memBytes = 0
		q.pos = posIndex{}
		q.mu.Unlock()
		if left > 0 {
			// Counted nowhere else: the queue and its counters go with
			// the subscription (why it was removed is logged by whoever
			// removed it).
			qs.log.Info("removed subscription's queue discarded: publications its subscriber had not acknowledged are not delivered",
				"subscription", q.sub.ID, "subscriber", q.sub.Subscriber, "discarded", left)
		}
	}
	// Runs of consecutive positions (a subscription that took every
	// publication) go as one range deletion each.
	for len(gone) > 0 {
		n := min(len(gone), maxDeletesPerRound)
		if err := qs.deleteLogBatch(ctx, gone[:n]); err != nil {
			// Nothing counts on them any more; the next open deletes them.
			qs.log.Warn("deleting the log entries of removed subscriptions failed; they are deleted at the next start", "entries", len(gone), "err", err)
			goneBytes = 0 // counted then
			break
		}
		gone = gone[n:]
	}
	// Counted whether the tables held them or not (unlike releases): a
	// deep queue removed is what the reclaimer is told about, and a
	// removal is rare enough that a compaction it causes for nothing
	// costs little.
	qs.freed.Add(goneBytes)
	if err := qs.sync(ctx, ds.RawKey(queueNamespace)); err != nil {
		// Removed here, but a machine crash may bring them back.
		return out, fmt.Errorf("topics: remove subscriptions: sync: %w", err)
	}
	return out, nil
}

// Subscription returns the subscription with the given id.
func (qs *Queues) Subscription(id string) (Subscription, bool) {
	qs.mu.RLock()
	defer qs.mu.RUnlock()
	q := qs.subs[id]
	if q == nil {
		return Subscription{}, false
	}
	return q.subscription(), true
}

// QueueTotals are counters over every subscription queue.
type QueueTotals struct {
	Delivered   uint64
	Redelivered uint64
	Dropped     uint64
	Corrupt     uint64
}

// Failure returns why the queues refuse every publication until they are
// reopened (an error wrapping ErrStorageFailed or ErrStorageDamaged), or
// nil when they accept them.
func (qs *Queues) Failure() error {
	if f := qs.failed.Load(); f != nil {
		return *f
	}
	return nil
}

// Totals returns what was delivered, redelivered and dropped since
// OpenQueues, over every queue (also those removed since). The per-queue
// counters in Status are totals since the subscription was created,
// persisted across restarts.
func (qs *Queues) Totals() QueueTotals {
	return QueueTotals{
		Delivered:   qs.totDelivered.Load(),
		Redelivered: qs.totRedelivered.Load(),
		Dropped:     qs.totDropped.Load(),
		Corrupt:     qs.totCorrupt.Load(),
	}
}

// FreedBytes is how many bytes of log entries the queues deleted since
// OpenQueues that the datastore's tables held, or may have held: a
// deletion frees nothing on disk until a compaction rewrites the tables
// holding the entry, and pebble starts none when writes stop, so an idle
// instance learns from it when one is worth it (see node's idle
// reclaimer). It counts
//
//   - the entries of removed subscriptions (RemoveSubscription,
//     RemoveWhere) that no other subscription needed, all of them: a
//     removal is rare, and one with a deep queue is the case it is for;
//   - the entries deleted by OpenQueues (left behind, read from disk);
//   - the entries released by acks and drop_oldest that were logged
//     before the mark of the last Flushed: the tables hold those.
//
// Entries acknowledged soon after they were logged are not counted: they
// are deleted while the datastore still holds them in memory (its
// memtable is sized for it), and counting them would have an instance
// with steady traffic compact its tables for nothing at every pause. Sizes
// are those of the records as logged (key and value).
func (qs *Queues) FreedBytes() uint64 { return qs.freed.Load() }

// LogMark returns a mark of the log written so far, for Flushed: take it
// before the datastore flushes its memory to its tables.
func (qs *Queues) LogMark() uint64 { return qs.logged.Load() }

// Flushed tells the queues that the datastore's tables held every log
// entry written before mark was taken (LogMark, then a flush that
// succeeded): releasing one of those from then on counts in FreedBytes.
func (qs *Queues) Flushed(mark uint64) {
	for {
		cur := qs.flushed.Load()
		if mark <= cur || qs.flushed.CompareAndSwap(cur, mark) {
			return
		}
	}
}

// sortedQueues returns the queues of the subscriptions there are now,
// sorted by subscription id.
func (qs *Queues) sortedQueues() []*queue {
	qs.mu.RLock()
	qlist := make([]*queue, 0, len(qs.subs))
	for _, q := range qs.subs {
		qlist = append(qlist, q)
	}
	qs.mu.RUnlock()
	slices.SortFunc(qlist, func(a, b *queue) int { return cmp.Compare(a.sub.ID, b.sub.ID) })
	return qlist
}

// Status returns a snapshot of every queue, sorted by subscription id.
func (qs *Queues) Status() []QueueStatus {
	qlist := qs.sortedQueues()
	out := make([]QueueStatus, len(qlist))
	for i, q := range qlist {
		q.mu.Lock()
		st := QueueStatus{
			Subscription: q.subscription(),
			NextSeq:      q.next,
			Acked:        q.acked,
			Delivered:    q.delivered,
			Redelivered:  q.redelivered,
			Dropped:      q.dropped,
			Corrupt:      q.corrupt,
		}
		if q.next > q.head {
			st.Depth = q.next - q.head
		}
		if q.lastDelivered != 0 {
			st.LastDelivered = time.Unix(0, q.lastDelivered)
		}
		q.mu.Unlock()
		out[i] = st
	}
	return out
}

// handoffGrace is how long Publish still waits for the outcome of a
// request the committer has taken once its ctx ends. A variable for tests.
var handoffGrace = 5 * time.Second

// testHookHandoff, when set (by tests, before any Publish), is called by
// Publish once the committer has its request.
var testHookHandoff func()

// Publish appends each message to every subscription whose pattern matches
// its subject and that passes filter (nil passes all), with the next
// sequence number of that subscription. It returns the number of queue
// entries appended once all of them are durable; each message is stored
// once however many subscriptions it went to. A message with zero Time is
// stamped with the current time.
//
// Under PolicyReject, if any message would overflow a matching queue the
// call fails with an error wrapping ErrQueueFull and nothing of it is
// written. If ctx ends before the committer took the call, Publish
// returns its error and nothing is written; once taken, it waits for the
// outcome (up to handoffGrace after ctx ended; past that it returns ctx's
// error and the messages may still be queued).
//
// filter runs on the caller's goroutine and must not call back into qs.
func (qs *Queues) Publish(ctx context.Context, msgs []Message, filter func(Subscription) bool) (int, error) {
	o, err := qs.PublishOutcome(ctx, msgs, filter)
	return o.Queued, err
}

// Published is what a Publish call did.
type Published struct {
	// Queued is the number of queue entries appended (what Publish
	// returns).
	Queued int
	// Dropped is the number of undelivered queue entries that the call's
	// publications pushed out of queues at their bound under
	// PolicyDropOldest, as counted in QueueStatus.Dropped: older
	// publications, and the call's own first ones when it appended more
	// than the bound to a queue. Those in flight to the subscriber are not
	// dropped (see QueueStatus.Dropped). Always 0 under PolicyReject.
	Dropped uint64
}

// PublishOutcome is Publish, also telling what the call dropped.
func (qs *Queues) PublishOutcome(ctx context.Context, msgs []Message, filter func(Subscription) bool) (Published, error) {
	n, dropped, err := qs.publish(ctx, msgs, filter)
	return Published{Queued: n, Dropped: dropped}, err
}

func (qs *Queues) publish(ctx context.Context, msgs []Message, filter func(Subscription) bool) (int, uint64, error) {
	for i := range msgs {
		if err := ValidateSubject(msgs[i].Subject); err != nil {
			return 0, 0, err
		}
	}
	r := qs.reqPool.Get().(*pubReq)
	r.reset()
	r.epoch = qs.epoch.Load()
	r.listed = filter != nil
	now := int64(0)
	var cand []*queue
	collect := func(q *queue) { cand = append(cand, q) }
	var verdict map[*queue]bool
	var ids []string
	var routes [][]string // with a filter: each routed message's subscription ids
	total := 0            // encoded size of the routed messages
	for i := range msgs {
		// A batch often repeats one subject: match it once.
		if i == 0 || msgs[i].Subject != msgs[i-1].Subject {
			cand = cand[:0]
			qs.trie.MatchFunc(msgs[i].Subject, collect)
		}
		if len(cand) == 0 {
			continue
		}
		mi := len(r.msgs)
		ids = ids[:0]
		for _, q := range cand {
			if filter != nil {
				ok, seen := verdict[q]
				if !seen {
					ok = filter(q.subscription())
					if verdict == nil {
						verdict = make(map[*queue]bool)
					}
					verdict[q] = ok
				}
				if !ok {
					continue
				}
				ids = append(ids, q.sub.ID)
			}
			r.targets = append(r.targets, target{q: q, msg: mi})
		}
		if len(r.targets) == 0 || r.targets[len(r.targets)-1].msg != mi {
			continue // filtered out entirely
		}
		m := msgs[i]
		if m.Time == 0 {
			if now == 0 {
				now = time.Now().UnixNano()
			}
			m.Time = now
		}
		var route []string
		if filter != nil {
			route = slices.Clone(ids)
			routes = append(routes, route)
		}
		total += encodedEntrySize(&m, route)
		r.msgs = append(r.msgs, m)
	}
	if len(r.targets) == 0 {
		qs.reqPool.Put(r)
		return 0, 0, nil
	}
	// The encoded entry is what the queues keep (Data aliases it), so the
	// caller may reuse its buffers as soon as Publish returns. Small
	// entries of this call share chunks of at most publishArena, each
	// sized to what is left to encode: a chunk stays alive while any of
	// its entries is cached, and must not hold more than this call's own
	// entries (a single small publication gets an allocation of its size,
	// not a whole chunk, which the memory budget would not see).
	var arena []byte
	for k := range r.msgs {
		m := &r.msgs[k]
		var route []string
		if filter != nil {
			route = routes[k]
		}
		size := encodedEntrySize(m, route)
		if cap(arena)-len(arena) < size {
			arena = make([]byte, 0, max(size, min(total, publishArena)))
		}
		total -= size
		at := len(arena)
		val, off := appendEntry(arena[at:at:at+size], m, route)
		if len(val) <= size { // else appendEntry outgrew its share and copied
			arena = arena[:at+len(val)]
		}
		m.Data = val[off:len(val):len(val)]
		r.vals = append(r.vals, val)
		r.bytes += len(val)
	}

	if f := qs.failed.Load(); f != nil {
		qs.reqPool.Put(r)
		return 0, 0, *f
	}
	// Registering as a sender under the read lock orders the send before
	// Close closes the channel (Close waits for registered senders). The
	// send itself happens without the lock: blocked on a full channel
	// while holding it, it would wait for the committer, which may wait
	// for commitMu, held by an AddSubscription waiting for Queues.mu.
	qs.mu.RLock()
	if qs.closed {
		qs.mu.RUnlock()
		qs.reqPool.Put(r)
		return 0, 0, ErrClosed
	}
	qs.senders.Add(1)
	qs.mu.RUnlock()
	select {
	case qs.reqs <- r:
		qs.senders.Done()
	case <-ctx.Done():
		qs.senders.Done()
		qs.reqPool.Put(r)
		return 0, 0, ctx.Err()
	}

	if testHookHandoff != nil {
		testHookHandoff()
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		// The committer has the request and commits or fails it within
		// a round (milliseconds): its outcome, not "may still be queued",
		// is what a caller cut by a service stop should hear. Only a
		// round stuck longer than handoffGrace (a stalled disk) leaves
		// the outcome unknown.
		t := time.NewTimer(handoffGrace)
		select {
		case <-r.done:
			t.Stop()
		case <-t.C:
			// r is still referenced by the committer; it is not recycled.
			return 0, 0, fmt.Errorf("topics: publish: %w (the messages may still be queued)", ctx.Err())
		}
	}
	n, dropped, err := r.n, r.dropped, r.err
	qs.reqPool.Put(r)
	return n, dropped, err
}

func (r *pubReq) reset() {
	clear(r.msgs)
	clear(r.vals)
	clear(r.targets)
	r.msgs, r.vals, r.targets = r.msgs[:0], r.vals[:0], r.targets[:0]
	r.bytes, r.n, r.dropped, r.err, r.listed, r.epoch = 0, 0, 0, nil, false, 0
}

// commitLoop is the committer goroutine: it merges waiting Publish calls
// and pending releases into one batch per round.
func (qs *Queues) commitLoop() {
	defer close(qs.syncCh)
	for {
		var first *pubReq
		select {
		case r, ok := <-qs.reqs:
			if !ok {
				// Close: finish pending releases so a clean restart does
				// not redeliver.
				qs.commitRound(nil)
				return
			}
			first = r
		case <-qs.kick:
		}
		qs.commitRound(first)
	}
}

// commitRound builds, commits and hands to the syncer one round starting
// with first (nil for a releases-only round).
func (qs *Queues) commitRound(first *pubReq) {
	ctx := context.Background()
	rd := &round{}
	if first != nil {
		rd.reqs = append(rd.reqs, first)
		entries, bytes := len(first.targets), first.bytes
	drain:
		for entries < maxRoundEntries && bytes < maxRoundBytes {
			select {
			case r, ok := <-qs.reqs:
				if !ok {
					break drain
				}
				rd.reqs = append(rd.reqs, r)
				entries += len(r.targets)
				bytes += r.bytes
			default:
				break drain
			}
		}
	}

	qs.commitMu.Lock()
	qs.roundID++
	id := qs.roundID
	// Size the round's slices up front: growing them by doubling was a
	// third of the publish path's allocation.
	msgs := 0
	for _, r := range rd.reqs {
		msgs += len(r.msgs)
		for _, tg := range r.targets {
			tg.q.cCount++
		}
	}
	rd.puts = make([]logPut, 0, msgs)
	touchOf := func(q *queue) *touch {
		if q.cRound == id {
			return rd.touches[q.cTouch]
		}
		q.cRound, q.cTouch = id, len(rd.touches)
		t := &touch{q: q, first: q.cNext, items: make([]Item, 0, q.cCount), pos: make([]uint64, 0, q.cCount)}
		rd.touches = append(rd.touches, t)
		return t
	}

	var scratch []*queue
	var ids []string
	// After a round of publications failed, its sequences are spent and a
	// restart will not find them: a request queued before Publish began
	// refusing must not be numbered after them either.
	failed := qs.failed.Load()
	var noSpace error
	if qs.spaceCheck != nil && failed == nil && len(rd.reqs) > 0 {
		bytes := 0
		for _, r := range rd.reqs {
			bytes += r.bytes
		}
		if err := qs.spaceCheck(bytes); err != nil {
			noSpace = fmt.Errorf("%w: %w; nothing of this publication was queued", ErrNoSpace, err)
		}
	}
	for _, r := range rd.reqs {
		if failed != nil {
			r.err = *failed
			continue
		}
		if noSpace != nil {
			r.err = noSpace
			continue
		}
		if !qs.drop && !qs.admit(r, &scratch) {
			continue
		}
		// A subscription added since r was routed would count as
		// "matching" on replay without having been routed: list instead.
		stale := !r.listed && r.epoch != qs.epoch.Load()
		for j := 0; j < len(r.targets); {
			mi := r.targets[j].msg
			k, live := j, 0
			for ; k < len(r.targets) && r.targets[k].msg == mi; k++ {
				if !r.targets[k].q.removed.Load() {
					live++
				}
			}
			group := r.targets[j:k]
			j = k
			if live == 0 {
				continue // every target was removed meanwhile
			}
			pos := qs.nextPos
			qs.nextPos++
			val := r.vals[mi]
			// A listed entry naming a subscription removed meanwhile would
			// be replayed to a new one reusing its id: list the live ones.
			if stale || r.listed && live < len(group) {
				ids = ids[:0]
				for _, tg := range group {
					if !tg.q.removed.Load() {
						ids = append(ids, tg.q.sub.ID)
					}
				}
				m := r.msgs[mi]
				val, _ = appendEntry(make([]byte, 0, encodedEntrySize(&m, ids)), &m, ids)
			}
			qs.refs = append(qs.refs, logRef{n: uint32(live), size: refSize(logKeyLen + len(val))})
			rd.puts = append(rd.puts, logPut{pos: pos, val: val})
			for _, tg := range group {
				q := tg.q
				if q.removed.Load() {
					continue
				}
				t := touchOf(q)
				t.items = append(t.items, Item{Seq: q.cNext, Message: r.msgs[mi]})
				t.pos = append(t.pos, pos)
				q.cNext++
				r.n++
			}
		}
		if qs.drop {
			for _, tg := range r.targets {
				if q := tg.q; q.cRound == id && !q.removed.Load() {
					t := rd.touches[q.cTouch]
					if k := len(t.marks); k > 0 && t.marks[k-1].req == r {
						t.marks[k-1].next = q.cNext
					} else {
						t.marks = append(t.marks, dropMark{req: r, next: q.cNext})
					}
				}
			}
		}
	}

	for _, r := range rd.reqs {
		for _, tg := range r.targets {
			tg.q.cCount = 0
		}
	}

	// Queues with pending releases join the round.
	dirty := qs.takeDirty()
	for _, q := range dirty {
		if !q.removed.Load() {
			touchOf(q)
		}
	}
	if len(rd.touches) == 0 {
		qs.commitMu.Unlock()
		qs.finish(rd, nil)
		return
	}

	rd.err = qs.writeRound(ctx, rd)
	qs.logged.Store(qs.nextPos)
	if rd.err != nil && len(rd.puts) > 0 {
		// Refuse at once, not when the syncer finishes this round: the
		// next rounds are built meanwhile.
		qs.setFailed(rd.err)
	}
	qs.commitMu.Unlock()
	if len(rd.reqs) == 0 {
		// Releases need no Sync: a lost delete is only a redelivery,
		// which the subscriber drops as a duplicate.
		if rd.err != nil {
			qs.log.Warn("deleting acknowledged messages failed; they will be retried", "err", rd.err)
		}
		return
	}
	qs.syncCh <- rd
}

// admit checks r against the bounds under PolicyReject; a request that does
// not fit gets ErrQueueFull and is left out of the round entirely.
func (qs *Queues) admit(r *pubReq, scratch *[]*queue) bool {
	list := (*scratch)[:0]
	for _, tg := range r.targets {
		if tg.q.cAdd == 0 {
			list = append(list, tg.q)
		}
		tg.q.cAdd++
	}
	var full *queue
	var depth, adds uint64 // full's undelivered messages, and this call's for it
	for _, q := range list {
		if full == nil && !q.removed.Load() {
			q.mu.Lock()
			head := q.head
			q.mu.Unlock()
			if q.cNext+uint64(q.cAdd)-head > qs.bound {
				full, depth, adds = q, q.cNext-head, uint64(q.cAdd)
			}
		}
	}
	for _, q := range list {
		q.cAdd = 0
	}
	clear(list)
	*scratch = list[:0]
	if full != nil {
		// Below the bound, the call is too large for the room left (a
		// batch larger than the bound never fits): saying the queue
		// "has reached its bound" would be false.
		why := fmt.Sprintf("has reached its bound of %d undelivered messages", qs.bound)
		if depth < qs.bound {
			why = fmt.Sprintf("holds %d undelivered messages of its bound of %d, room for %d, not for the %d of this call", depth, qs.bound, qs.bound-depth, adds)
		}
		r.err = fmt.Errorf("%w: subscription %q (pattern %q, subscriber %s) %s", ErrQueueFull, full.sub.ID, full.sub.Pattern, full.sub.Subscriber, why)
		return false
	}
	return true
}

// writeRound writes one round into a single batch and commits it (without
// Sync): the round's log entries, the release of entries that acks and
// drops made unneeded, and the state of every touched queue. A queue's
// state is written in the same batch as the deletions its releases cause,
// which keeps subMeta's invariant across crashes. Called with commitMu
// held.
func (qs *Queues) writeRound(ctx context.Context, rd *round) error {
	var b ds.Batch
	var err error
	if sb, ok := qs.store.(sizedBatcher); ok {
		// Room for every record of the round: key, value and pebble's
		// few bytes of framing each, plus the subscriptions' state and
		// some deletes (beyond that the batch grows as usual).
		size := 64
		for _, t := range rd.touches {
			size += len(subMetaPrefix) + len(t.q.sub.ID) + subMetaMaxLen + 16
		}
		for _, p := range rd.puts {
			size += logKeyLen + len(p.val) + 16
		}
		b, err = sb.SizedBatch(ctx, size)
	} else {
		b, err = qs.store.Batch(ctx)
	}
	// Without a batch nothing is written, but the in-memory side below is
	// applied all the same: the committer has already counted the round's
	// references, and only the positions recorded below let a later ack
	// or removal release them.
	var firstErr error
	if err != nil {
		firstErr = fmt.Errorf("batch: %w", err)
	} else {
		// All keys of the round are built in one buffer and sliced from
		// one string: ds.Key wants a string, and a conversion per key
		// would cost an allocation per entry on the hot path.
		arena := make([]byte, 0, len(rd.puts)*logKeyLen)
		for _, p := range rd.puts {
			arena = appendLogKey(arena, p.pos)
		}
		keys := string(arena)
		for i, p := range rd.puts {
			if firstErr = b.Put(ctx, ds.RawKey(keys[i*logKeyLen:(i+1)*logKeyLen]), p.val); firstErr != nil {
				break
			}
		}
	}
	var gone []uint64
	var metaBuf []byte
	qs.cFlushed = qs.flushed.Load()
	for _, t := range rd.touches {
		// The in-memory side is applied even after a write error: the
		// sequences are spent either way, and a restart recomputes the
		// references from what the datastore holds.
		q := t.q
		t.next = q.cNext

		q.mu.Lock()
		for i := range t.items {
			q.pos.add(t.items[i].Seq, t.pos[i])
		}
		head := q.head
		// drop_oldest: the head this round's publications push the
		// queue to. finish applies it (head and counter) only once the
		// round is durable, and a later round releases the dropped
		// entries like acknowledged ones: a drop must not outlive the
		// publications that caused it when their round is lost.
		if qs.drop && q.cNext-head > qs.bound {
			t.drop = q.cNext - qs.bound
		}
		to := head
		redirty := false
		if to > q.cHead && to-q.cHead > maxDeletesPerRound {
			to = q.cHead + maxDeletesPerRound
			redirty = true
		}
		if to > q.cHead {
			q.pos.each(q.cHead, to, func(_, pos uint64) bool {
				if qs.release(pos) {
					gone = append(gone, pos)
				}
				return true
			})
			q.cHead = to
			q.released = to
			q.pos.trim(to)
		}
		meta := qs.stateLocked(q, head)
		q.mu.Unlock()
		if redirty {
			qs.markDirty(q)
		}
		metaBuf = appendSubMeta(metaBuf[:0], &meta)
		// Batch implementations may keep the value slice; give each its own.
		if firstErr == nil {
			firstErr = b.Put(ctx, ds.RawKey(subMetaKey(q.sub.ID)), slices.Clone(metaBuf))
		}
	}
	if firstErr == nil {
		firstErr = deleteLog(ctx, b, gone)
	}
	qs.trimRefs()
	if firstErr == nil {
		if err := b.Commit(ctx); err != nil {
			firstErr = fmt.Errorf("commit: %w", err)
		}
	}
	if firstErr != nil {
		// The releases above are applied in memory, so another queue's
		// release (or a removal) may delete entries that these queues'
		// stored states still count on: a later round must rewrite those
		// states first (every round and removal takes the dirty queues).
		// Not woken for it: on a failing disk that would spin.
		for _, t := range rd.touches {
			if !t.q.removed.Load() {
				qs.addDirty(t.q)
			}
		}
		return fmt.Errorf("topics: write queue batch: %w", firstErr)
	}
	return nil
}

// stateLocked is q's queue state as it is now, head being q.head (read
// before releases up to it were applied). Called with commitMu and q.mu
// held.
func (qs *Queues) stateLocked(q *queue, head uint64) subMeta {
	meta := subMeta{start: q.start, baseSeq: q.cHead - 1, acked: q.acked, dropped: q.dropped,
		delivered: q.delivered, redelivered: q.redelivered, sentMax: q.sentMax, lastDelivered: q.lastDelivered,
		corrupt: q.corrupt, corruptSeen: q.corruptSeen}
	// Every sequence from acked+1 to head-1 was dropped. A restart
	// brings back those at or above the stored base (a release held
	// back by maxDeletesPerRound), and counts those it drops again
	// that were never sent (above sentMax; finish counts no others):
	// the stored count leaves them out.
	if back := max(q.cHead, q.acked+1, q.sentMax+1); head > back {
		meta.dropped -= head - back
	}
	if p, ok := q.pos.lookup(q.cHead); ok {
		meta.baseG = p - 1
	} else {
		// Nothing pending: every entry logged so far is either below
		// cHead or not routed to q.
		meta.baseG = qs.nextPos - 1
	}
	return meta
}

// syncLoop is the syncer goroutine: one Sync makes every round committed
// before it durable, so rounds that queued up while an fsync ran share the
// next one.
// Once a Sync has failed, every round after it fails too (see sync).
func (qs *Queues) syncLoop() {
	defer close(qs.syncerDone)
	var batch []*round
	var syncErr error
	for rd := range qs.syncCh {
		batch = append(batch[:0], rd)
	more:
		for {
			select {
			case r, ok := <-qs.syncCh:
				if !ok {
					break more
				}
				batch = append(batch, r)
			default:
				break more
			}
		}
		for _, r := range batch {
			if r.err == nil && syncErr == nil {
				if err := qs.sync(context.Background(), ds.RawKey(queueNamespace)); err != nil {
					syncErr = fmt.Errorf("topics: sync queues: %w", err)
				}
				break
			}
		}
		for _, r := range batch {
			qs.finish(r, cmp.Or(r.err, syncErr))
		}
		clear(batch)
	}
}

// finish publishes a round's outcome to the queues and its callers.
func (qs *Queues) finish(rd *round, err error) {
	budget := qs.memBudget()
	for _, t := range rd.touches {
		q := t.q
		dropped := false
		q.mu.Lock()
		if err != nil {
			// The committer's sequences are spent (no later round numbers
			// any: see setFailed), but they are not durable: a restart may
			// or may not find them. They are not made visible, so that
			// nothing is read or acked under a number a restart may give
			// to another publication; nor are the drops they would cause
			// applied (see writeRound), so the queue keeps, and counts as
			// dropped, what the datastore does.
			q.mem.reset()
			q.memBytes = 0
		} else {
			if t.drop > q.head {
				// Those sent already (up to sentMax: in flight, not yet
				// acked) were counted as delivered when sent, and the
				// subscriber runs them: only the others are dropped.
				if from := max(q.head, q.sentMax+1); t.drop > from {
					q.dropped += t.drop - from
					qs.totDropped.Add(t.drop - from)
					qs.blameDrops(t, from)
				}
				q.head = t.drop
				q.trimLocked()
				dropped = true
			}
			for i := range t.items {
				if t.items[i].Seq >= q.head {
					q.pushLocked(t.items[i], budget)
				}
			}
			if t.next > q.next {
				q.next = t.next
				q.wakeLocked()
			}
		}
		q.mu.Unlock()
		if dropped {
			qs.markDirty(q) // release the dropped entries, as an ack does
		}
	}
	if err != nil && len(rd.reqs) > 0 {
		qs.setFailed(err)
		// Every caller of the round learns that the storage failed, also
		// one its round refused as full: ErrQueueFull would tell it to
		// retry later, and the queues refuse everything until reopened.
		serr := fmt.Errorf("%w: %w", ErrStorageFailed, err)
		for _, r := range rd.reqs {
			if !errors.Is(r.err, ErrStorageFailed) {
				r.err = serr
			}
			r.n, r.dropped = 0, 0
		}
	}
	for _, r := range rd.reqs {
		r.done <- struct{}{}
	}
}

// blameDrops tells each call of the round what it pushed out of t's
// queue, the sequences from `from` to t.drop being dropped: each
// publication appended beyond the bound pushes out the oldest one still
// queued, so the k-th call pushes out those from the head its
// predecessors implied to the head it implies (its mark's next less the
// bound); those below from (sent, or dropped already) are not dropped
// again.
func (qs *Queues) blameDrops(t *touch, from uint64) {
	var prev uint64 // head implied before the mark
	for _, m := range t.marks {
		var head uint64
		if m.next > qs.bound {
			head = m.next - qs.bound
		}
		if lo, hi := max(prev, from), min(head, t.drop); hi > lo {
			m.req.dropped += hi - lo
		}
		prev = max(prev, head)
	}
}

// sync makes every write so far durable. A failed Sync is final: a later
// one that succeeds proves nothing about the writes before it (the kernel
// may have dropped the pages the failed fsync could not write, and
// pebble's recovery stops at the hole that leaves in its log), so from
// then on sync returns the first error without trying: no publication,
// subscription or removal is reported durable until the queues are
// reopened.
func (qs *Queues) sync(ctx context.Context, prefix ds.Key) error {
	if f := qs.syncFailed.Load(); f != nil {
		return *f
	}
	err := qs.store.Sync(ctx, prefix)
	if err != nil {
		f := fmt.Errorf("%w (an earlier Sync failed: restart the instance)", err)
		qs.syncFailed.CompareAndSwap(nil, &f)
	}
	return err
}

// setFailed records that a round of publications could not be made
// durable: from then on every publication is refused with ErrStorageFailed,
// including those already queued for the committer.
func (qs *Queues) setFailed(err error) {
	f := fmt.Errorf("%w: %w", ErrStorageFailed, err)
	if qs.failed.CompareAndSwap(nil, &f) {
		qs.log.Error("writing publications to the datastore failed; refusing new publications until the instance restarts", "err", err)
	}
}

// memBudget is how many bytes each queue may keep in memory now.
func (qs *Queues) memBudget() int {
	return min(qs.memCap, qs.memTot/int(max(1, qs.nsubs.Load())))
}

// shrinkMemLocked evicts the oldest cached items of every queue beyond
// the current budget; called with Queues.mu held when a subscription is
// added, which lowers it.
func (qs *Queues) shrinkMemLocked() {
	budget := qs.memBudget()
	for _, q := range qs.subs {
		q.mu.Lock()
		for q.memBytes > budget {
			q.memBytes -= itemSize(q.mem.at(0))
			q.mem.pop()
		}
		q.mu.Unlock()
	}
}

// trimLocked drops cached items below head.
func (q *queue) trimLocked() {
	for q.mem.n > 0 && q.mem.at(0).Seq < q.head {
		q.memBytes -= itemSize(q.mem.at(0))
		q.mem.pop()
	}
	if len(q.lost) > 0 {
		q.trimLost()
	}
}

// pushLocked appends a newly durable item to the cache, evicting the oldest
// beyond the budget. The cache stays contiguous: an item that does not
// follow the last cached one, or that alone exceeds the budget, empties it.
func (q *queue) pushLocked(it Item, budget int) {
	sz := itemSize(&it)
	if n := q.mem.n; n > 0 && q.mem.at(n-1).Seq+1 != it.Seq || sz > budget {
		q.mem.reset()
		q.memBytes = 0
		if sz > budget {
			return
		}
	}
	q.mem.push(it)
	q.memBytes += sz
	for q.memBytes > budget {
		q.memBytes -= itemSize(q.mem.at(0))
		q.mem.pop()
	}
}

// itemRing is a FIFO of items. A ring rather than a slice resliced from the
// front, because the cache sees a steady stream of appends and evictions and
// a slice would be reallocated and copied over and over.
type itemRing struct {
	buf   []Item // length is zero or a power of two
	start int
	n     int
	// peak is the most items held since the last shrink check, and pops
	// counts pops since then; see pop.
	peak, pops int
}

// minRingShrink is the size below which a ring is not shrunk.
const minRingShrink = 256

func (r *itemRing) at(i int) *Item {
	return &r.buf[(r.start+i)&(len(r.buf)-1)]
}

func (r *itemRing) push(it Item) {
	if r.n == len(r.buf) {
		r.resize(max(16, 2*len(r.buf)))
	}
	*r.at(r.n) = it
	r.n++
	r.peak = max(r.peak, r.n)
}

func (r *itemRing) pop() {
	*r.at(0) = Item{} // let the collector have the message
	r.start = (r.start + 1) & (len(r.buf) - 1)
	r.n--
	// Give memory back after a burst: once per len(buf) pops, halve a
	// buffer that never held a quarter of its size meanwhile. Checking
	// the peak over a whole turnover, rather than the size now, keeps a
	// queue that fills and drains in a sawtooth (every subscriber that
	// acks in batches) from shrinking and regrowing at every drain; the
	// copying stays amortised O(1) per pop.
	if r.pops++; r.pops >= len(r.buf) {
		if len(r.buf) > minRingShrink && r.peak < len(r.buf)/4 {
			r.resize(len(r.buf) / 2)
		}
		r.peak, r.pops = r.n, 0
	}
}

func (r *itemRing) resize(size int) {
	nb := make([]Item, size)
	for i := 0; i < r.n; i++ {
		nb[i] = *r.at(i)
	}
	r.buf, r.start = nb, 0
	r.pops = 0
}

func (r *itemRing) reset() {
	*r = itemRing{}
}

func itemSize(it *Item) int {
	return len(it.Message.Subject) + len(it.Message.Data) + itemOverhead
}

func (q *queue) wakeLocked() {
	if q.wake != nil {
		close(q.wake)
		q.wake = nil
	}
}

func (qs *Queues) markDirty(q *queue) {
	qs.addDirty(q)
	select {
	case qs.kick <- struct{}{}:
	default:
	}
}

// addDirty is markDirty without waking the committer: q joins the next
// round, whatever starts it.
func (qs *Queues) addDirty(q *queue) {
	qs.dirtyMu.Lock()
	if !q.dirty {
		q.dirty = true
		qs.dirty = append(qs.dirty, q)
	}
	qs.dirtyMu.Unlock()
}

// takeDirty empties the list of queues with pending releases and returns
// what it held.
func (qs *Queues) takeDirty() []*queue {
	qs.dirtyMu.Lock()
	defer qs.dirtyMu.Unlock()
	dirty := qs.dirty
	qs.dirty = nil
	for _, q := range dirty {
		q.dirty = false
	}
	return dirty
}

// hasDirty reports whether some queue waits for a round.
func (qs *Queues) hasDirty() bool {
	qs.dirtyMu.Lock()
	defer qs.dirtyMu.Unlock()
	return len(qs.dirty) > 0
}

// writeDirtyLocked writes the pending releases and the state of every
// dirty queue now, in one batch without a Sync, as the committer's next
// round would. Called with commitMu held.
func (qs *Queues) writeDirtyLocked(ctx context.Context) error {
	dirty := qs.takeDirty()
	rd := &round{}
	for _, q := range dirty {
		if !q.removed.Load() {
			rd.touches = append(rd.touches, &touch{q: q, first: q.cNext})
		}
	}
	if len(rd.touches) == 0 {
		return nil
	}
	return qs.writeRound(ctx, rd)
}

// get returns the live queue id.
func (qs *Queues) get(id string) (*queue, error) {
	qs.mu.RLock()
	defer qs.mu.RUnlock()
	if qs.closed {
		return nil, ErrClosed
	}
	q := qs.subs[id]
	if q == nil || q.removed.Load() {
		return nil, fmt.Errorf("%w: %q", ErrNoSubscription, id)
	}
	return q, nil
}

// Read returns queued items with sequence numbers above after, in order:
// at most maxItems items (no limit if <= 0) and, after the first, at most
// maxBytes bytes of subject and data (no limit if <= 0). It returns at
// least one item if any is available. Recent items come from memory, older
// ones from the datastore. The returned Data is never modified by Queues
// and stays valid; callers must not modify it either.
func (qs *Queues) Read(id string, after uint64, maxItems, maxBytes int) ([]Item, error) {
	q, err := qs.get(id)
	if err != nil {
		return nil, err
	}
	maxItems, maxBytes = max(maxItems, 0), max(maxBytes, 0) // <= 0: no limit
	q.mu.Lock()
	start := max(after+1, q.head)
	next := q.next
	if start >= next {
		q.mu.Unlock()
		return nil, nil
	}
	if n := q.mem.n; n > 0 && start >= q.mem.at(0).Seq {
		i := int(start - q.mem.at(0).Seq)
		out := make([]Item, 0, min(n-i, cmp.Or(maxItems, n-i)))
		bytes := 0
		for ; i < n; i++ {
			it := *q.mem.at(i)
			sz := len(it.Message.Subject) + len(it.Message.Data)
			if len(out) > 0 && (maxItems > 0 && len(out) >= maxItems || maxBytes > 0 && bytes+sz > maxBytes) {
				break
			}
			out = append(out, it)
			bytes += sz
		}
		q.mu.Unlock()
		return out, nil
	}
	q.mu.Unlock()
	return qs.readStore(q, start, maxItems, maxBytes)
}

// sortedGetter is implemented by stores that read many keys in ascending
// order more cheaply than one Get each (the pebble backend of package
// datastore: one iterator instead of one per key).
type sortedGetter interface {
	GetSorted(ctx context.Context, keys [][]byte, fn func(i int, value []byte, err error) error) error
}

// rangeDeleter is implemented by batches that delete a key range with one
// tombstone (package datastore's pebble batches).
type rangeDeleter interface {
	DeleteRange(ctx context.Context, start, end []byte) error
}

// deleteLog deletes the log entries at positions gone in b. Runs of
// consecutive positions become one range deletion when b supports it: a
// subscription that takes every publication releases whole runs, and one
// range tombstone costs the LSM far less than a tombstone per entry. A run
// holds only positions in gone, so it never covers an entry still needed.
func deleteLog(ctx context.Context, b ds.Batch, gone []uint64) error {
	rd, ranges := b.(rangeDeleter)
	if ranges {
		slices.Sort(gone)
	}
	var key, end []byte
	for i := 0; i < len(gone); {
		j := i + 1
		if ranges {
			for j < len(gone) && gone[j] == gone[j-1]+1 {
				j++
			}
		}
		key = appendLogKey(key[:0], gone[i])
		if j-i > 1 {
			end = appendLogKey(end[:0], gone[j-1]+1)
			if err := rd.DeleteRange(ctx, key, end); err != nil {
				return err
			}
		} else if err := b.Delete(ctx, ds.RawKey(string(key))); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// sizedBatcher is implemented by stores whose batches can be allocated at
// their final size (package datastore's pebble backend), which saves
// copying a large round several times while it grows.
type sizedBatcher interface {
	SizedBatch(ctx context.Context, size int) (ds.Batch, error)
}

// readStore reads items from start on from the log: it maps a chunk of
// sequences to log positions under q.mu, then fetches the entries without
// it, in log order.
func (qs *Queues) readStore(q *queue, start uint64, maxItems, maxBytes int) ([]Item, error) {
	type ref struct{ seq, pos uint64 }
	var out []Item
	var refs []ref
	keys := make([][]byte, 0, readChunk)
	var keyBuf []byte
	bytes := 0
	full := false
	// cuts is qs.cuts when the chunk was mapped; rereads bounds how often
	// a chunk is read again because a cut ended while it was read (lose).
	var cuts uint64
	rereads := 0
	again := false
	// add appends the entry of refs[i], read as val (nil: not found), or
	// skips it when the store says it is damaged (rerr).
	add := func(i int, val []byte, rerr error) error {
		r := refs[i]
		if rerr != nil {
			if !qs.lose(q, r.seq, r.pos, rerr, cuts) {
				again, start = true, r.seq
				return errStopRead
			}
			return nil
		}
		if val == nil {
			// Released meanwhile (acked, dropped, or the subscription
			// removed), unless the datastore lost it.
			q.mu.Lock()
			lost := r.seq >= q.released && !q.removed.Load()
			q.mu.Unlock()
			if lost {
				qs.log.Warn("queued publication missing from the log; skipped", "subscription", q.sub.ID, "seq", r.seq, "position", r.pos)
			}
			return nil
		}
		e, err := decodeEntry(val, true)
		if err != nil {
			if !qs.lose(q, r.seq, r.pos, fmt.Errorf("%s: %w", keys[i], err), cuts) {
				again, start = true, r.seq
				return errStopRead
			}
			return nil
		}
		sz := len(e.Subject) + len(e.Data)
		if len(out) > 0 && maxBytes > 0 && bytes+sz > maxBytes {
			full = true
			return errStopRead
		}
		out = append(out, Item{Seq: r.seq, Message: e.Message})
		bytes += sz
		return nil
	}
	sorted, _ := qs.store.(sortedGetter)
	for {
		want := readChunk
		if maxItems > 0 {
			want = min(want, maxItems-len(out))
		}
		refs = refs[:0]
		cuts, again = qs.cuts.Load(), false
		if rereads >= 3 {
			cuts = anyCuts // a cut each time: the loss is recorded now
		}
		q.mu.Lock()
		start = max(start, q.head)
		lost := len(q.lost) > 0
		q.pos.each(start, q.next, func(seq, pos uint64) bool {
			if lost && q.isLost(seq) {
				return true // known unreadable: skipped
			}
			refs = append(refs, ref{seq, pos})
			return len(refs) < want
		})
		q.mu.Unlock()
		if len(refs) == 0 {
			return out, nil
		}
		keys, keyBuf = keys[:0], keyBuf[:0]
		for _, r := range refs {
			keyBuf = appendLogKey(keyBuf, r.pos)
		}
		for i := range refs {
			keys = append(keys, keyBuf[i*logKeyLen:(i+1)*logKeyLen]) // keys have one length
		}
		var err error
		if sorted != nil {
			// The store's value is only valid during the call, and
			// decodeEntry aliases it: hand it a copy.
			err = sorted.GetSorted(context.Background(), keys, func(i int, val []byte, rerr error) error {
				if val != nil {
					val = slices.Clone(val)
				}
				return add(i, val, rerr)
			})
		} else {
			for i := range refs {
				val, gerr := qs.store.Get(context.Background(), ds.RawKey(string(keys[i])))
				var rerr error
				switch {
				case errors.Is(gerr, ds.ErrNotFound):
					val = nil
				case unreadable(gerr):
					val, rerr = nil, gerr
				case gerr != nil:
					err = gerr
				}
				if err != nil {
					break
				}
				if err = add(i, val, rerr); err != nil {
					break
				}
			}
		}
		if again {
			rereads++
			continue // from the entry met before the cut (start)
		}
		if full {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("topics: read queue %q: %w", q.sub.ID, err)
		}
		if maxItems > 0 && len(out) >= maxItems {
			return out, nil
		}
		start = refs[len(refs)-1].seq + 1
	}
}

// logKeyLen is the length of every log key.
const logKeyLen = len(logPrefix) + seqDigits

// errStopRead ends a read that reached its byte limit.
var errStopRead = errors.New("topics: read limit reached")

// Wait returns a channel that is closed when the queue next gains items, or
// when the subscription is removed or qs is closed. To not miss items that
// arrive in between, a deliverer calls Wait before Read and waits on the
// channel only if Read returned nothing.
func (qs *Queues) Wait(id string) (<-chan struct{}, error) {
	q, err := qs.get(id)
	if err != nil {
		return nil, err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.wake == nil {
		q.wake = make(chan struct{})
	}
	return q.wake, nil
}

// Ack records that every message up to and including seq was delivered
// (cumulative; acking an older sequence again is a no-op). Their keys are
// deleted lazily by the committer, without a Sync: a lost delete only means
// a redelivery, which the subscriber drops as a duplicate. Acking a
// sequence that was never assigned fails with ErrAckOutOfRange.
func (qs *Queues) Ack(id string, seq uint64) error {
	q, err := qs.get(id)
	if err != nil {
		return err
	}
	q.mu.Lock()
	if seq >= q.next {
		next := q.next
		q.mu.Unlock()
		return fmt.Errorf("%w: subscription %q acked %d, last queued is %d", ErrAckOutOfRange, id, seq, next-1)
	}
	changed := q.ackLocked(seq)
	q.mu.Unlock()
	if changed {
		qs.markDirty(q)
	}
	return nil
}

func (q *queue) ackLocked(seq uint64) bool {
	if seq <= q.acked {
		return false
	}
	q.acked = seq
	if seq+1 > q.head {
		q.head = seq + 1
	}
	q.trimLocked()
	return true
}

// Resume is called when a subscriber (re)connects and reports the last
// sequence it processed: that acknowledges min(subscriberLast, NextSeq-1)
// and returns the first sequence that will be (re)sent. Messages sent
// before but not acknowledged are counted as redelivered when MarkSent
// reports them again.
func (qs *Queues) Resume(id string, subscriberLast uint64) (uint64, error) {
	q, err := qs.get(id)
	if err != nil {
		return 0, err
	}
	q.mu.Lock()
	a := min(subscriberLast, q.next-1)
	if a > q.sentMax {
		// The subscriber processed publications this queue has no record
		// of sending: sent before a crash that lost the count (counters
		// are written with the queue's state, lazily). They were
		// delivered, but for those dropped (drop_oldest) before they were
		// sent, between the ack watermark and head, which are counted in
		// dropped already (as MarkSent counts). In the subscription's
		// total only (not in Totals, which counts since this start).
		q.sendable(q.sentMax+1, a, func(lo, hi uint64) {
			q.notLost(lo, hi, func(lo, hi uint64) { q.delivered += hi - lo + 1 })
		})
		q.sentMax = a
	}
	changed := q.ackLocked(a)
	from := max(a+1, q.head)
	q.cursor = from - 1
	q.mu.Unlock()
	if changed {
		qs.markDirty(q)
	}
	return from, nil
}

// MarkSent reports that the deliverer wrote every queued message up to seq
// to the subscriber's stream. Messages beyond the highest ever sent count as
// delivered, the others as redelivered. Unknown ids are ignored.
func (qs *Queues) MarkSent(id string, seq uint64) {
	q, err := qs.get(id)
	if err != nil {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	seq = min(seq, q.next-1)
	if seq <= q.cursor {
		return
	}
	// What was sent is [cursor+1, seq] but for sequences dropped
	// (drop_oldest) before they were sent: those between the ack
	// watermark and head. Sequences below head that are acked were sent,
	// though: a fast subscriber's ack may come in before MarkSent (the
	// deliverer calls it once its write returns), and counting from head
	// left them out of delivered for good.
	count := func(lo, hi uint64) {
		if q.sentMax >= lo {
			n := min(q.sentMax, hi) - lo + 1
			q.redelivered += n
			qs.totRedelivered.Add(n)
		}
		if hi > q.sentMax {
			n := hi - max(q.sentMax+1, lo) + 1
			q.delivered += n
			qs.totDelivered.Add(n)
		}
	}
	if len(q.lost) == 0 {
		q.sendable(q.cursor+1, seq, count)
	} else {
		// Lost sequences were skipped, not sent.
		q.sendable(q.cursor+1, seq, func(lo, hi uint64) { q.notLost(lo, hi, count) })
	}
	q.cursor = seq
	q.sentMax = max(q.sentMax, seq)
	q.lastDelivered = time.Now().UnixNano()
}

// sendable calls fn with the parts of [lo, hi] that were not dropped
// (drop_oldest) before they could be sent: those up to the ack watermark
// (acked, so sent), and those from head on (queued); the sequences
// between were dropped. Called with q.mu held.
func (q *queue) sendable(lo, hi uint64, fn func(lo, hi uint64)) {
	if h := min(hi, q.acked); h >= lo {
		fn(lo, h)
	}
	if l := max(lo, q.acked+1, q.head); hi >= l {
		fn(l, hi)
	}
}

// Close stops accepting publications, waits for those in flight to become
// durable and for an AddSubscription or removal in progress to finish,
// writes pending ack deletions and queue counters, and closes every Wait
// channel. Once it has returned, Queues no longer writes to the datastore
// (every operation returns ErrClosed), so the caller may close it. Close
// does not close the datastore itself. It is safe to call more than once.
func (qs *Queues) Close() error {
	qs.closeOnce.Do(func() {
		qs.mu.Lock()
		qs.closed = true
		qs.mu.Unlock()
		// A cut in progress finishes; none starts after it (repair).
		close(qs.repairStop)
		<-qs.repairDone
		// An admin operation that found the queues open may still be on
		// its way to the datastore: wait for it. Later ones see closed.
		if testHookCloseWaitsAdmin != nil {
			testHookCloseWaitsAdmin()
		}
		qs.adminMu.Lock()
		defer qs.adminMu.Unlock()
		qs.senders.Wait() // the committer drains them meanwhile
		close(qs.reqs)
		<-qs.syncerDone

		// Persist counters (and deletions) of every queue with one batch.
		all := qs.sortedQueues()
		ctx := context.Background()
		if len(all) > 0 {
			qs.commitMu.Lock()
			rd := &round{}
			for _, q := range all {
				if q.removed.Load() {
					continue
				}
				rd.touches = append(rd.touches, &touch{q: q, first: q.cNext})
			}
			err := qs.writeRound(ctx, rd)
			// A round releases at most maxDeletesPerRound entries per
			// queue and marks the queue dirty for the rest: write rounds
			// until none is left, or a restart brings back entries whose
			// drop (drop_oldest) was counted, and keeps acked ones on
			// disk until their next release.
			for err == nil && qs.hasDirty() {
				err = qs.writeDirtyLocked(ctx)
			}
			qs.commitMu.Unlock()
			if err == nil {
				err = qs.sync(ctx, ds.RawKey(queueNamespace))
			}
			if err != nil {
				qs.closeErr = fmt.Errorf("topics: close queues: %w", err)
			}
		}
		for _, q := range all {
			q.mu.Lock()
			q.wakeLocked()
			q.mu.Unlock()
		}
	})
	return qs.closeErr
}
