package topics

// Faults found by review, each held by a test (a deadlock between Publish
// and AddSubscription, memory the budget did not see, a listed entry
// replayed to a re-added id, negative read limits), and a randomized model
// of adds, removals, publishes, acks, reads and crashes.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coattail/coattail/datastore"
	ds "github.com/ipfs/go-datastore"
)

// AddSubscription holds commitMu across its Sync and then takes Queues.mu,
// while more Publish calls than the request channel holds wait for the
// committer, which waits for commitMu: Publish must not wait for the
// committer while holding Queues.mu, or the three wait on each other.
func TestPublishBacklogDoesNotBlockAddSubscription(t *testing.T) {
	sc := &syncCounter{Batching: datastore.NewMemory().Batching()}
	qs, err := OpenQueues(context.Background(), sc, QueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	addSub(t, qs, "a", "x")

	gate := make(chan struct{})
	sc.gateMu.Lock()
	sc.gate = gate
	sc.gateMu.Unlock()
	added := make(chan error, 1)
	go func() {
		added <- qs.AddSubscription(context.Background(), Subscription{ID: "b", Subscriber: "p", Pattern: "y", TokenID: "t", Receiver: "r"})
	}()
	waitFor(t, func() bool { return sc.waiting.Load() == 1 }) // AddSubscription is in Sync, holding commitMu

	// The committer drains what it finds before it blocks on commitMu, so
	// publish until the request channel stays full, then some more.
	pub := func(n int) {
		for range n {
			go func() { _, _ = qs.Publish(context.Background(), []Message{msg("x", "d")}, nil) }()
		}
	}
	waitFor(t, func() bool {
		if len(qs.reqs) == cap(qs.reqs) {
			return true
		}
		pub(64)
		return false
	})
	pub(200)
	time.Sleep(200 * time.Millisecond) // let the surplus publishers block in the send

	sc.gateMu.Lock()
	sc.gate = nil
	sc.gateMu.Unlock()
	close(gate)
	select {
	case err := <-added:
		t.Logf("AddSubscription returned %v: no deadlock", err)
	case <-time.After(30 * time.Second): // a safety net: 264 publishers under -race on busy cores
		buf := make([]byte, 1<<22)
		t.Log(string(buf[:runtime.Stack(buf, true)]))
		t.Fatal("deadlock: AddSubscription waits for Queues.mu (held by a Publish blocked on the full reqs channel), the committer waits for commitMu held by AddSubscription")
	}
}

// A cached item's Data aliases the allocation its Publish call encoded it
// in. MemoryPerQueue counts len(subject)+len(data)+64 bytes per item, so
// a call publishing one small message must not allocate a whole shared
// chunk (32 KiB) for it: cached single publications would hold ~400x
// their budget.
func TestCachedSmallPublicationsStayWithinMemoryBudget(t *testing.T) {
	const budget = 256 << 10
	qs, err := OpenQueues(context.Background(), datastore.NewMemory().Batching(), QueueOptions{MemoryPerQueue: budget})
	if err != nil {
		t.Fatal(err)
	}
	defer qs.Close()
	addSub(t, qs, "s", "a")

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := 0; i < 3000; i++ {
		publish(t, qs, msg("a", "0123456789"))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	qs.mu.RLock()
	q := qs.subs["s"]
	qs.mu.RUnlock()
	q.mu.Lock()
	cached, accounted := q.mem.n, q.memBytes
	q.mu.Unlock()
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("cached %d items, accounted %d bytes (budget %d), heap grew %d bytes", cached, accounted, budget, grown)
	if grown > 8*budget {
		t.Fatalf("heap grew %d MiB for a %d KiB MemoryPerQueue budget", grown>>20, budget>>10)
	}
}

// A filtered (routeListed) publication names its targets' ids. If a
// target is removed and a subscription with the same id added between
// routing and logging, the logged entry must not name it: a replay after
// a crash would route it to the new subscription.
func TestListedEntryNotReplayedToReaddedID(t *testing.T) {
	store := datastore.NewMemory().Batching()
	qs, err := OpenQueues(context.Background(), store, QueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	addSub(t, qs, "x", "s")
	y := addSub(t, qs, "y", "s")

	done := false
	filter := func(s Subscription) bool {
		if s.ID == "y" && !done {
			done = true
			ch := make(chan error, 1)
			go func() {
				if _, err := qs.RemoveSubscription(context.Background(), "y"); err != nil {
					ch <- err
					return
				}
				ch <- qs.AddSubscription(context.Background(), y)
			}()
			if err := <-ch; err != nil {
				t.Error(err)
			}
		}
		return true
	}
	n, err := qs.Publish(context.Background(), []Message{msg("s", "m1")}, filter)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Publish reported %d queue entries", n)
	before := readAll(t, qs, "y", 0)
	// Crash: reopen the store without Close (the first instance is idle).

	qs2, err := OpenQueues(context.Background(), store, QueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer qs2.Close()
	after := readAll(t, qs2, "y", 0)
	if len(before) != len(after) {
		t.Fatalf("queue y held %q before the restart and %q after it", summary(before), summary(after))
	}
}

// Read's limits <= 0 mean no limit, negative ones included (a negative
// maxItems once sized a slice with negative capacity, under q.mu).
func TestReadNegativeLimits(t *testing.T) {
	qs, err := OpenQueues(context.Background(), datastore.NewMemory().Batching(), QueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	addSub(t, qs, "s", "a")
	publish(t, qs, msg("a", "1"), msg("a", "2"))
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("Read(maxItems=-1) panicked: %v", r) // (q.mu stays locked: no Close)
		}
	}()
	items, err := qs.Read("s", 0, -1, 0)
	if err != nil || len(items) != 2 {
		t.Fatalf("Read = %d items, %v", len(items), err)
	}
}

// warnCount is a log handler counting "missing from the log" warnings.
type warnCount struct{ n atomic.Int64 }

func (w *warnCount) Enabled(context.Context, slog.Level) bool { return true }
func (w *warnCount) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "missing") {
		w.n.Add(1)
	}
	return nil
}
func (w *warnCount) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnCount) WithGroup(string) slog.Handler      { return w }

// A randomized model: subscriptions added and removed, filtered and
// unfiltered publishes, acks, reads, both policies and small memory
// budgets, injected commit and Sync failures, and crashes (the instance
// is frozen by holding commitMu and a restart opens what a machine crash
// leaves of the store: what the last Sync covered, plus a random part of
// the writes after it). After every restart each subscription has the
// same next sequence and still holds what it held under the same
// sequences (acks may be lost: more is fine), and no queued entry was
// missing from the log. After an injected failure, the operation that
// reported it may or may not have taken effect, and the next step is a
// crash. COATTAIL_MODEL_SEEDS runs more seeds than the default 40 (the
// review ran 300).
func TestQueueModelCrashReplay(t *testing.T) {
	seeds := uint64(40)
	if v, err := strconv.ParseUint(os.Getenv("COATTAIL_MODEL_SEEDS"), 10, 32); err == nil && v > 0 {
		seeds = v
	}
	for seed := uint64(1); seed <= seeds; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { queueModel(t, seed) })
	}
}

func queueModel(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 99))
	store := newPLStore()
	wc := &warnCount{}
	opts := QueueOptions{Bound: 1 + rng.IntN(20), MemoryPerQueue: 200 + rng.IntN(2000), Logger: slog.New(wc)}
	if rng.IntN(2) == 0 {
		opts.Policy = PolicyDropOldest
	}
	ctx := context.Background()
	qs, err := OpenQueues(ctx, store, opts)
	if err != nil {
		t.Fatal(err)
	}
	pats := []string{"a", "a.*", "a.>", "b", ">", "*"}
	subs := []string{"a", "a.x", "a.y.z", "b"}
	nid := 0
	live := map[string]bool{}
	injected := false // since the last crash
	crash := false
	for step := 0; step < 400; step++ {
		if !crash && rng.IntN(60) == 0 {
			injected = true
			if rng.IntN(2) == 0 {
				store.failCommits.Store(1)
			} else {
				store.failSyncs.Store(1)
			}
		}
		k := rng.IntN(20)
		if crash {
			k = 19
		}
		failed := func(err error) bool {
			if err == nil {
				return false
			}
			if !injected {
				t.Fatalf("step %d: %v", step, err)
			}
			crash = true
			return true
		}
		switch {
		case k < 2 || len(live) == 0:
			nid++
			id := fmt.Sprintf("s%d", nid)
			if failed(qs.AddSubscription(ctx, Subscription{ID: id, Subscriber: fmt.Sprint(nid % 3), Pattern: pats[rng.IntN(len(pats))], TokenID: "t", Receiver: "r"})) {
				break // a power loss may bring it back: not checked
			}
			live[id] = true
		case k < 3:
			for id := range live {
				// Failed or not, it is gone or going: not checked.
				delete(live, id)
				_, err := qs.RemoveSubscription(ctx, id)
				failed(err)
				break
			}
		case k < 11:
			msgs := make([]Message, 1+rng.IntN(5))
			for i := range msgs {
				msgs[i] = msg(subs[rng.IntN(len(subs))], fmt.Sprintf("%d.%d", step, i))
			}
			var filter func(Subscription) bool
			if rng.IntN(3) == 0 {
				m := fmt.Sprint(rng.IntN(3))
				filter = func(s Subscription) bool { return s.Subscriber == m }
			}
			if _, err := qs.Publish(ctx, msgs, filter); !errors.Is(err, ErrQueueFull) {
				failed(err)
			}
		case k < 17:
			for id := range live {
				st := status(t, qs, id)
				if st.NextSeq > 1 {
					_ = qs.Ack(id, st.Acked+uint64(rng.IntN(int(st.NextSeq-st.Acked))))
				}
				break
			}
		case k < 18:
			// reads (exercise readStore)
			for id := range live {
				readAll(t, qs, id, 0)
			}
		default:
			// crash: freeze this instance, restart on what a machine
			// crash leaves of the store.
			deadline := time.Now().Add(5 * time.Second)
			for {
				if !qs.hasDirty() || injected || time.Now().After(deadline) {
					break
				}
				time.Sleep(time.Millisecond)
			}
			qs.commitMu.Lock() // frozen forever
			before := map[string][]Item{}
			nexts := map[string]uint64{}
			for id := range live {
				before[id] = readAll(t, qs, id, 0)
				nexts[id] = status(t, qs, id).NextSeq
			}
			store = store.crash(t, rng.IntN(store.unsynced()+1))
			qs2, err := OpenQueues(ctx, store, opts)
			if err != nil {
				t.Fatal(err)
			}
			for id := range live {
				after := readAll(t, qs2, id, 0)
				// A failed round may or may not have reached the disk.
				if n := status(t, qs2, id).NextSeq; n != nexts[id] && !(injected && n > nexts[id]) {
					t.Fatalf("step %d %s: next %d before crash, %d after", step, id, nexts[id], n)
				}
				// after may hold more (acks lost, failed rounds kept), but
				// everything before under the same sequence.
				got := strings.Join(summary(after), "|")
				for _, s := range summary(before[id]) {
					if !strings.Contains("|"+got+"|", "|"+s+"|") {
						t.Fatalf("step %d %s: before %q after %q", step, id, summary(before[id]), summary(after))
					}
				}
			}
			qs = qs2
			injected, crash = false, false
		}
		if wc.n.Load() > 0 {
			t.Fatalf("step %d: missing-entry warning", step)
		}
	}
}

// failingStore fails batch commits while fail is set.
type failingStore struct {
	ds.Batching
	fail atomic.Bool
}

func (s *failingStore) Batch(ctx context.Context) (ds.Batch, error) {
	b, err := s.Batching.Batch(ctx)
	return &failingBatch{Batch: b, s: s}, err
}

type failingBatch struct {
	ds.Batch
	s *failingStore
}

func (b *failingBatch) Commit(ctx context.Context) error {
	if b.s.fail.Load() {
		return errors.New("injected write failure")
	}
	return b.Batch.Commit(ctx)
}

// Once a round of publications could not be written, its sequences are
// spent; numbering more after them would not survive a restart (the log is
// replayed without them), so Publish refuses with ErrStorageFailed until
// the queues are reopened.
func TestPublishStopsAfterStorageFailure(t *testing.T) {
	store := &failingStore{Batching: datastore.NewMemory().Batching()}
	qs, err := OpenQueues(context.Background(), store, QueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	addSub(t, qs, "s", "a")
	publish(t, qs, msg("a", "1"))
	store.fail.Store(true)
	if _, err := qs.Publish(context.Background(), []Message{msg("a", "2")}, nil); err == nil || !strings.Contains(err.Error(), "injected write failure") {
		t.Fatalf("publish during the failure = %v, want the write error", err)
	}
	store.fail.Store(false)
	if _, err := qs.Publish(context.Background(), []Message{msg("a", "3")}, nil); !errors.Is(err, ErrStorageFailed) {
		t.Fatalf("publish after the failure = %v, want ErrStorageFailed", err)
	}
	if err := qs.Close(); err != nil {
		t.Fatal(err)
	}
	qs2, err := OpenQueues(context.Background(), store, QueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer qs2.Close()
	publish(t, qs2, msg("a", "4"))
	if got := summary(readAll(t, qs2, "s", 0)); len(got) != 2 || !strings.HasSuffix(got[0], ":a:1") || !strings.HasSuffix(got[1], ":a:4") {
		t.Fatalf("after reopening, queue holds %q, want 1 and 4", got)
	}
}

// plStore is an in-memory datastore that models what a machine crash
// keeps. It records every committed write in commit order, like a
// write-ahead log, and how much of that log the last Sync made durable;
// crash returns a new store holding the durable prefix and, optionally,
// some later writes (they may or may not have reached the disk before the
// power went). After a failed Sync no later Sync is trusted (on Linux a
// failed fsync may drop the dirty pages it could not write, and pebble's
// recovery stops at the hole this leaves in its log).
//
// It can also fail the next commits or Syncs and hold Syncs at a gate.
type plStore struct {
	ds.Batching // the current contents

	mu       sync.Mutex
	wal      [][]plOp
	synced   int
	poisoned bool

	failCommits atomic.Int32 // the next n commits fail
	failSyncs   atomic.Int32 // the next n Syncs fail
	failBatches atomic.Int32 // the next n Batch calls fail
	failCommit  atomic.Int64 // the commit attempt with this number (see commits) fails
	commits     atomic.Int64 // commit attempts
	gate        atomic.Pointer[chan struct{}]
	waiting     atomic.Int64 // Syncs waiting at the gate

	// Once closed is set (the datastore was closed), every commit and
	// Sync fails and is counted in late: pebble panics on them.
	closed atomic.Bool
	late   atomic.Int64
}

type plOp struct {
	key ds.Key
	val []byte
	del bool
}

func newPLStore() *plStore {
	return &plStore{Batching: datastore.NewMemory().Batching()}
}

func (s *plStore) Put(ctx context.Context, k ds.Key, v []byte) error {
	return s.commit(ctx, []plOp{{key: k, val: slices.Clone(v)}})
}

func (s *plStore) Delete(ctx context.Context, k ds.Key) error {
	return s.commit(ctx, []plOp{{key: k, del: true}})
}

func (s *plStore) Batch(context.Context) (ds.Batch, error) {
	for {
		n := s.failBatches.Load()
		if n <= 0 {
			break
		}
		if s.failBatches.CompareAndSwap(n, n-1) {
			return nil, errors.New("injected batch failure")
		}
	}
	return &plBatch{s: s}, nil
}

// errPLClosed is returned by a closed plStore.
var errPLClosed = errors.New("plStore: write after the datastore was closed")

func (s *plStore) commit(ctx context.Context, ops []plOp) error {
	if s.closed.Load() {
		s.late.Add(1)
		return errPLClosed
	}
	if s.commits.Add(1) == s.failCommit.Load() {
		return errors.New("injected commit failure")
	}
	for {
		n := s.failCommits.Load()
		if n <= 0 {
			break
		}
		if s.failCommits.CompareAndSwap(n, n-1) {
			return errors.New("injected commit failure")
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, op := range ops {
		var err error
		if op.del {
			err = s.Batching.Delete(ctx, op.key)
		} else {
			err = s.Batching.Put(ctx, op.key, op.val)
		}
		if err != nil {
			return err
		}
	}
	s.wal = append(s.wal, ops)
	return nil
}

func (s *plStore) Sync(context.Context, ds.Key) error {
	if s.closed.Load() {
		s.late.Add(1)
		return errPLClosed
	}
	if g := s.gate.Load(); g != nil {
		s.waiting.Add(1)
		<-*g
		s.waiting.Add(-1)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := s.failSyncs.Load(); n > 0 {
		s.failSyncs.Store(n - 1)
		s.poisoned = true
		return errors.New("injected sync failure")
	}
	if !s.poisoned {
		s.synced = len(s.wal)
	}
	return nil
}

// hold makes Syncs wait until the returned function is called.
func (s *plStore) hold() (release func()) {
	g := make(chan struct{})
	s.gate.Store(&g)
	return func() {
		s.gate.Store(nil)
		close(g)
	}
}

// crash returns the store as a restart after a machine crash finds it:
// the durable prefix of the log plus extra of the writes after it.
func (s *plStore) crash(t testing.TB, extra int) *plStore {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	cut := min(s.synced+extra, len(s.wal))
	n := newPLStore()
	for _, ops := range s.wal[:cut] {
		if err := n.commit(context.Background(), ops); err != nil {
			t.Fatal(err)
		}
	}
	n.synced = cut
	return n
}

// unsynced is how many committed writes the last Sync did not cover.
func (s *plStore) unsynced() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.wal) - s.synced
}

type plBatch struct {
	s   *plStore
	ops []plOp
}

func (b *plBatch) Put(_ context.Context, k ds.Key, v []byte) error {
	b.ops = append(b.ops, plOp{key: k, val: slices.Clone(v)})
	return nil
}

func (b *plBatch) Delete(_ context.Context, k ds.Key) error {
	b.ops = append(b.ops, plOp{key: k, del: true})
	return nil
}

func (b *plBatch) Commit(ctx context.Context) error {
	return b.s.commit(ctx, b.ops)
}

// pubResult is the outcome of a Publish run in the background.
type pubResult struct {
	data string
	err  error
}

func publishAsync(qs *Queues, subject, data string) <-chan pubResult {
	ch := make(chan pubResult, 1)
	go func() {
		_, err := qs.Publish(context.Background(), []Message{msg(subject, data)}, nil)
		ch <- pubResult{data, err}
	}()
	return ch
}

// checkAckedSurvive reopens store and checks that each publication in ok
// (whose Publish succeeded) is in queue id with the sequence it had
// before, and that the next sequence did not go back.
func checkAckedSurvive(t *testing.T, store ds.Batching, id string, before []Item, ok map[string]bool, next uint64) {
	t.Helper()
	qs2, err := OpenQueues(context.Background(), store, QueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer qs2.Close()
	after := map[string]uint64{}
	for _, it := range readAll(t, qs2, id, 0) {
		after[string(it.Message.Data)] = it.Seq
	}
	for _, it := range before {
		if ok[string(it.Message.Data)] && after[string(it.Message.Data)] != it.Seq {
			t.Errorf("acknowledged publication %q was sequence %d, after the restart %d (0: gone); queue after: %v",
				it.Message.Data, it.Seq, after[string(it.Message.Data)], after)
		}
	}
	for d := range ok {
		if _, found := after[d]; !found {
			t.Errorf("acknowledged publication %q is gone after the restart", d)
		}
	}
	if st := status(t, qs2, id); st.NextSeq < next {
		t.Errorf("next sequence %d before the restart, %d after it: sequences would be reused", next, st.NextSeq)
	}
}

// A round of publications whose commit fails spends its sequences. Rounds
// the committer builds after it, from requests queued before Publish
// started refusing (group commit is pipelined: the failed round waits
// behind an earlier one's Sync), must not be numbered after the lost
// round and acknowledged: a restart replays the log without the lost
// round and gives them other sequences, and a subscriber that processed
// them under the old ones drops the new publications that take them as
// duplicates.
func TestNoRoundAcknowledgedAfterAFailedCommit(t *testing.T) {
	store := newPLStore()
	qs := openQueues(t, store, QueueOptions{})
	addSub(t, qs, "s", "a")
	publish(t, qs, msg("a", "m1"))

	release := store.hold()
	r2 := publishAsync(qs, "a", "m2") // its round waits in Sync
	waitFor(t, func() bool { return store.waiting.Load() == 1 })
	commits := store.commits.Load()
	store.failCommits.Store(1)
	r3 := publishAsync(qs, "a", "m3") // its round's commit fails
	waitFor(t, func() bool { return store.commits.Load() > commits })
	r4 := publishAsync(qs, "a", "m4") // queued behind the failed round
	// Until the committer has taken m4 (committed its round, or answered
	// it at once), nothing may finish the failed round.
	var res4 *pubResult
	waitFor(t, func() bool {
		select {
		case r := <-r4:
			res4 = &r
			return true
		default:
			return store.commits.Load() >= commits+2
		}
	})
	release()
	if res4 == nil {
		r := <-r4
		res4 = &r
	}

	ok := acknowledged(t, "m1", <-r2, <-r3, *res4)
	if !ok["m2"] || ok["m3"] {
		t.Fatalf("m2 (before the failure) and m3 (the failed round): acknowledged %v", ok)
	}
	if _, err := qs.Publish(context.Background(), []Message{msg("a", "m5")}, nil); !errors.Is(err, ErrStorageFailed) {
		t.Fatalf("Publish after the failure = %v, want ErrStorageFailed", err)
	}
	before := readAll(t, qs, "s", 0)
	t.Logf("before the restart: %q", summary(before))
	checkAckedSurvive(t, store.crash(t, store.unsynced()), "s", before, ok, status(t, qs, "s").NextSeq)
}

// acknowledged returns the data of the publications acknowledged as
// stored: those published before (synced) and the results without error.
func acknowledged(t *testing.T, synced string, rs ...pubResult) map[string]bool {
	t.Helper()
	ok := map[string]bool{synced: true}
	for _, r := range rs {
		t.Logf("Publish(%s) = %v", r.data, r.err)
		if r.err == nil {
			ok[r.data] = true
		}
	}
	return ok
}

// Once a Sync of the queues has failed, a later Sync proves nothing about
// the writes before it (Linux may drop the pages a failed fsync could not
// write; pebble's recovery stops at the hole): rounds committed after the
// failed one, already in the pipeline, must not be acknowledged as
// durable, and the failed round must not become readable.
func TestNoRoundAcknowledgedAfterAFailedSync(t *testing.T) {
	store := newPLStore()
	qs := openQueues(t, store, QueueOptions{})
	addSub(t, qs, "s", "a")
	publish(t, qs, msg("a", "m1"))

	release := store.hold()
	store.failSyncs.Store(1)
	r2 := publishAsync(qs, "a", "m2") // its round's Sync will fail
	waitFor(t, func() bool { return store.waiting.Load() == 1 })
	commits := store.commits.Load()
	r3 := publishAsync(qs, "a", "m3") // committed while that Sync runs
	waitFor(t, func() bool { return store.commits.Load() > commits })
	release()

	ok := acknowledged(t, "m1", <-r2, <-r3)
	if ok["m2"] {
		t.Fatal("the round whose Sync failed was acknowledged")
	}
	if _, err := qs.Publish(context.Background(), []Message{msg("a", "m4")}, nil); !errors.Is(err, ErrStorageFailed) {
		t.Fatalf("Publish after the failure = %v, want ErrStorageFailed", err)
	}
	before := readAll(t, qs, "s", 0)
	t.Logf("before the crash: %q", summary(before))
	next := status(t, qs, "s").NextSeq
	// The durable prefix only: the crash loses everything after the
	// failed Sync.
	checkAckedSurvive(t, store.crash(t, 0), "s", before, ok, next)
	// Nothing read before the crash may be renumbered by it.
	for _, it := range before {
		if !ok[string(it.Message.Data)] {
			t.Errorf("%q was readable as sequence %d before it was durable", it.Message.Data, it.Seq)
		}
	}
}

// A subscription's stored state (subMeta) must be rewritten no later than
// the batch that deletes a log entry it still counts on. When the batch
// carrying a queue's release fails, the queue has released the entries in
// memory, so another queue's later release deletes them; the first
// queue's stored state must not be left behind by then, or a restart
// replays it without those entries and numbers its queue anew.
func TestFailedReleaseDoesNotRenumberAfterRestart(t *testing.T) {
	// The other queue's release: its ack, or its removal.
	t.Run("ack", func(t *testing.T) {
		failedReleaseRenumbers(t, func(qs *Queues) error { return qs.Ack("q1", 3) })
	})
	t.Run("remove", func(t *testing.T) {
		failedReleaseRenumbers(t, func(qs *Queues) error {
			_, err := qs.RemoveSubscription(context.Background(), "q1")
			return err
		})
	})
}

func failedReleaseRenumbers(t *testing.T, other func(*Queues) error) {
	store := newPLStore()
	qs := openQueues(t, store, QueueOptions{})
	addSub(t, qs, "q1", "a")
	addSub(t, qs, "q2", "a")
	publish(t, qs, msg("a", "m1"), msg("a", "m2"), msg("a", "m3"))

	commits := store.commits.Load()
	store.failCommits.Store(1)
	if err := qs.Ack("q2", 3); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return store.commits.Load() > commits }) // q2's release failed
	commits = store.commits.Load()
	if err := other(qs); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return store.commits.Load() > commits }) // q1's release deletes the entries

	want := map[string]uint64{}
	for _, st := range qs.Status() {
		want[st.ID] = st.NextSeq
	}
	qs2, err := OpenQueues(context.Background(), store.crash(t, store.unsynced()), QueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer qs2.Close()
	for id, next := range want {
		if got := status(t, qs2, id).NextSeq; got != next {
			t.Errorf("%s: next sequence %d before the restart, %d after it (its subscriber drops the reused ones as duplicates)", id, next, got)
		}
	}
}

// AddSubscription that fails must not leave a subscription behind for a
// restart to bring back: its caller was told it was not made, so nobody
// resumes it, and it would take publications until its bound (under
// PolicyReject, then refuse every publication it matches).
func TestFailedAddSubscriptionNotResurrected(t *testing.T) {
	store := newPLStore()
	qs := openQueues(t, store, QueueOptions{})
	store.failSyncs.Store(1)
	s := Subscription{ID: "ghost", Subscriber: "p", Pattern: "a", TokenID: "t", Receiver: "r"}
	if err := qs.AddSubscription(context.Background(), s); err == nil {
		t.Fatal("AddSubscription succeeded although its Sync failed")
	}
	if _, ok := qs.Subscription("ghost"); ok {
		t.Fatal("the failed subscription is live")
	}
	// The process restarts (its committed writes are still there).
	qs2, err := OpenQueues(context.Background(), store.crash(t, store.unsynced()), QueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer qs2.Close()
	if _, ok := qs2.Subscription("ghost"); ok {
		t.Fatal("a subscription whose AddSubscription failed came back after a restart")
	}
}

// After a failed Sync no later Sync is trusted (see syncLoop): an
// AddSubscription or a removal that reports success must be durable, so
// they fail too instead of trusting a Sync that may prove nothing. A
// removal reported done and undone by a machine crash would bring back,
// for example, the subscriptions of a revoked token.
func TestAdminNotAcknowledgedAfterAFailedSync(t *testing.T) {
	store := newPLStore()
	qs := openQueues(t, store, QueueOptions{})
	addSub(t, qs, "old", "a")
	store.failSyncs.Store(1)
	if _, err := qs.Publish(context.Background(), []Message{msg("a", "m1")}, nil); err == nil {
		t.Fatal("Publish succeeded although its Sync failed")
	}
	addErr := qs.AddSubscription(context.Background(), Subscription{ID: "new", Subscriber: "p", Pattern: "a", TokenID: "t", Receiver: "r"})
	_, removeErr := qs.RemoveSubscription(context.Background(), "old")
	t.Logf("AddSubscription = %v, RemoveSubscription = %v", addErr, removeErr)

	qs2, err := OpenQueues(context.Background(), store.crash(t, 0), QueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer qs2.Close()
	if _, ok := qs2.Subscription("new"); addErr == nil && !ok {
		t.Error("AddSubscription succeeded, but the subscription is gone after a crash")
	}
	if _, ok := qs2.Subscription("old"); removeErr == nil && ok {
		t.Error("RemoveSubscription succeeded, but the subscription is back after a crash")
	}
}

// An AddSubscription or removal that found the queues open just before
// Close must be done with the datastore when Close returns: the caller
// closes the datastore next, and pebble panics on a write after that. Admin
// operations after Close fail with ErrClosed and write nothing.
func TestAdminRacingCloseDoesNotWriteAfterClose(t *testing.T) {
	ops := map[string]func(qs *Queues) error{
		"add": func(qs *Queues) error {
			return qs.AddSubscription(context.Background(), Subscription{ID: "new", Subscriber: "p", Pattern: "a", TokenID: "t", Receiver: "r"})
		},
		"remove": func(qs *Queues) error {
			_, err := qs.RemoveSubscription(context.Background(), "old")
			return err
		},
		"remove-where": func(qs *Queues) error {
			_, err := qs.RemoveWhere(context.Background(), func(Subscription) bool { return true })
			return err
		},
	}
	for name, op := range ops {
		t.Run(name, func(t *testing.T) {
			store := newPLStore()
			qs := openQueues(t, store, QueueOptions{})
			addSub(t, qs, "old", "a")
			publish(t, qs, msg("a", "m1"))

			closeErr := make(chan error, 1)
			closeWaits := make(chan struct{})
			testHookCloseWaitsAdmin = func() { close(closeWaits) }
			testHookAdmin = func() {
				testHookAdmin = nil
				// The operation found the queues open. Close now, and
				// close the datastore as soon as Close returns.
				go func() {
					err := qs.Close()
					store.closed.Store(true)
					closeErr <- err
				}()
				select {
				case err := <-closeErr:
					closeErr <- err
				case <-closeWaits: // Close waits for this operation
				}
			}
			t.Cleanup(func() { testHookAdmin, testHookCloseWaitsAdmin = nil, nil })

			err := op(qs)
			t.Logf("%s racing Close = %v", name, err)
			if err := <-closeErr; err != nil {
				t.Errorf("Close = %v", err)
			}
			if n := store.late.Load(); n > 0 {
				t.Fatalf("%d writes or Syncs reached the datastore after Close returned", n)
			}
			if err != nil && !errors.Is(err, ErrClosed) {
				t.Errorf("%s racing Close = %v, want success or ErrClosed", name, err)
			}

			// After Close: refused, nothing written.
			for after, op := range ops {
				if err := op(qs); !errors.Is(err, ErrClosed) {
					t.Errorf("%s after Close = %v, want ErrClosed", after, err)
				}
			}
			if n := store.late.Load(); n > 0 {
				t.Fatalf("%d writes or Syncs after Close", n)
			}
		})
	}
}

// A round whose batch cannot even be created has already counted its log
// entries' references. The queues must record the entries' positions all
// the same, or nothing ever releases those references: the log's counts
// (and the entries) would leak until a restart.
func TestFailedBatchDoesNotLeakReferences(t *testing.T) {
	ctx := context.Background()
	store := newPLStore()
	qs := openQueues(t, store, QueueOptions{})
	addSub(t, qs, "s", "a")
	addSub(t, qs, "t", "a")
	publish(t, qs, msg("a", "m1"))
	store.failBatches.Store(1)
	if _, err := qs.Publish(ctx, []Message{msg("a", "m2")}, nil); err == nil {
		t.Fatal("Publish succeeded although its batch could not be created")
	}
	// Removing every subscription releases every reference.
	removed, err := qs.RemoveWhere(ctx, func(Subscription) bool { return true })
	if err != nil || len(removed) != 2 {
		t.Fatalf("RemoveWhere = %d, %v", len(removed), err)
	}
	qs.commitMu.Lock()
	refs, old := slices.Clone(qs.refs), len(qs.oldRefs)
	qs.commitMu.Unlock()
	if len(refs) != 0 || old != 0 {
		t.Fatalf("with no subscription left, the log still counts references %v (and %d old ones)", refs, old)
	}
}

// A call refused as full in a round whose Sync fails must learn that the
// storage failed (ErrStorageFailed), not ErrQueueFull: that would tell it
// to retry later, and the queues refuse everything until they are reopened.
func TestQueueFullInFailedRoundReportsStorageFailure(t *testing.T) {
	store := newPLStore()
	qs := openQueues(t, store, QueueOptions{Bound: 1})
	addSub(t, qs, "full", "a")
	addSub(t, qs, "room", "b")
	publish(t, qs, msg("a", "a1"), msg("b", "b1")) // "full" is at its bound

	// Hold the committer in a releases-only round (an ack wakes it) so
	// that both publications below wait for the same next round.
	qs.commitMu.Lock()
	if err := qs.Ack("room", 1); err != nil {
		qs.commitMu.Unlock()
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(qs.kick) == 0 })
	full := publishAsync(qs, "a", "a2")
	room := publishAsync(qs, "b", "b2")
	waitFor(t, func() bool { return len(qs.reqs) == 2 })
	store.failSyncs.Store(1)
	qs.commitMu.Unlock()

	rFull, rRoom := <-full, <-room
	t.Logf("full: %v; room: %v", rFull.err, rRoom.err)
	if !errors.Is(rRoom.err, ErrStorageFailed) {
		t.Fatalf("the publication whose Sync failed = %v, want ErrStorageFailed", rRoom.err)
	}
	if !errors.Is(rFull.err, ErrStorageFailed) || errors.Is(rFull.err, ErrQueueFull) {
		t.Fatalf("the publication refused as full in the failed round = %v, want ErrStorageFailed", rFull.err)
	}
}

// Under drop_oldest, the messages a round's publications push out of a
// full queue must stay when that round is lost: in memory (Read, Dropped)
// and in the datastore, also after later rounds (here another queue's ack)
// rewrite the queue's state. Otherwise a failed publication silently loses
// messages that were accepted before it.
func TestDropsOfAFailedRoundAreNotApplied(t *testing.T) {
	ctx := context.Background()
	store := newPLStore()
	opts := QueueOptions{Bound: 2, Policy: PolicyDropOldest}
	qs := openQueues(t, store, opts)
	addSub(t, qs, "s", "a")
	addSub(t, qs, "o", "a")
	publish(t, qs, msg("a", "m1"), msg("a", "m2")) // both queues are full

	store.failCommits.Store(1)
	if _, err := qs.Publish(ctx, []Message{msg("a", "m3")}, nil); err == nil {
		t.Fatal("Publish succeeded although its commit failed")
	}
	check := func(qs *Queues, when string) {
		t.Helper()
		wantItems(t, readAll(t, qs, "s", 0), "1:a:m1", "2:a:m2")
		if st := status(t, qs, "s"); st.Dropped != 0 {
			t.Fatalf("%s: Dropped = %d for a publication that was never stored", when, st.Dropped)
		}
	}
	check(qs, "after the failed round")

	// A later round writes the state of s again (it is dirty since the
	// failed round) with another queue's release.
	commits := store.commits.Load()
	if err := qs.Ack("o", 1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return store.commits.Load() > commits })
	check(qs, "after a later round")

	// The process restarts on what it wrote.
	qs2 := openQueues(t, store.crash(t, store.unsynced()), opts)
	check(qs2, "after a restart")
}

// A release is capped at maxDeletesPerRound entries per round, so a queue
// that drops more than that at once stores its state in steps. A restart
// between them brings the dropped messages above the stored base back and
// drops them again: the stored counter must not have counted them already.
func TestDropsBeyondOneReleaseRoundCountedOnceAcrossACrash(t *testing.T) {
	store := newPLStore()
	opts := QueueOptions{Bound: 1, Policy: PolicyDropOldest, MemoryPerQueue: 1 << 10}
	qs := openQueues(t, store, opts)
	addSub(t, qs, "s", "a")
	msgs := make([]Message, maxDeletesPerRound+1000)
	for i := range msgs {
		msgs[i] = msg("a", strconv.Itoa(i))
	}
	publish(t, qs, msgs...) // one round; then releases in two
	waitFor(t, func() bool { return len(logPositions(t, store)) == 1 })
	if st := status(t, qs, "s"); st.Dropped != uint64(len(msgs)-1) {
		t.Fatalf("Dropped = %d, want %d", st.Dropped, len(msgs)-1)
	}

	// Crash after the first release round only (the publication round was
	// synced; releases are not).
	qs2 := openQueues(t, store.crash(t, 1), opts)
	st := status(t, qs2, "s")
	t.Logf("after the crash: next %d, depth %d, dropped %d", st.NextSeq, st.Depth, st.Dropped)
	// Nothing was acknowledged: every sequence is queued or dropped, once.
	if st.Dropped+st.Depth != st.NextSeq-1 {
		t.Fatalf("after the crash: dropped %d + depth %d != %d sequences", st.Dropped, st.Depth, st.NextSeq-1)
	}
	publish(t, qs2, msg("a", "last"))
	if st := status(t, qs2, "s"); st.Dropped != uint64(len(msgs)) || st.Depth != 1 {
		t.Fatalf("after one more publication: dropped %d, depth %d; want %d, 1", st.Dropped, st.Depth, len(msgs))
	}
}

// A removal whose datastore writes fail part-way must leave the queues as
// the datastore has them: removed once the subscription records are
// deleted (a restart no longer knows them, so publications routed to them
// meanwhile would be lost with them, and their references would hold log
// entries back), and untouched while they are not.
func TestRemoveFailingPartWayIsConsistent(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fail    func(s *plStore)
		removed bool
	}{
		{"records-commit", func(s *plStore) { s.failCommit.Store(s.commits.Load() + 1) }, false},
		{"log-commit", func(s *plStore) { s.failCommit.Store(s.commits.Load() + 2) }, true},
		{"sync", func(s *plStore) { s.failSyncs.Store(1) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			store := newPLStore()
			qs := openQueues(t, store, QueueOptions{})
			addSub(t, qs, "s", "a")
			addSub(t, qs, "o", "b")
			publish(t, qs, msg("a", "a1"), msg("a", "a2"), msg("b", "b1"))

			tc.fail(store)
			_, err := qs.RemoveSubscription(ctx, "s")
			t.Logf("RemoveSubscription = %v", err)
			if _, live := qs.Subscription("s"); live == tc.removed {
				t.Fatalf("after the failure, subscription s is live: %v, want %v", live, !tc.removed)
			}
			if tc.removed {
				if _, err := qs.Read("s", 0, 0, 0); !errors.Is(err, ErrNoSubscription) {
					t.Fatalf("Read of the removed queue = %v, want ErrNoSubscription", err)
				}
			} else {
				if err == nil {
					t.Fatal("RemoveSubscription succeeded although nothing was deleted")
				}
				wantItems(t, readAll(t, qs, "s", 0), "1:a:a1", "2:a:a2")
			}

			// The process restarts on what it wrote.
			store2 := store.crash(t, store.unsynced())
			qs2 := openQueues(t, store2, QueueOptions{})
			if _, live := qs2.Subscription("s"); live == tc.removed {
				t.Fatalf("after a restart, subscription s is live: %v, want %v", live, !tc.removed)
			}
			if tc.removed {
				wantPositions(t, store2, []uint64{3}) // b1; s's entries deleted by the open
			} else {
				wantItems(t, readAll(t, qs2, "s", 0), "1:a:a1", "2:a:a2")
			}
			wantItems(t, readAll(t, qs2, "o", 0), "1:b:b1")
		})
	}
}

// gatedGet holds the next Get, once armed, until gate is closed.
type gatedGet struct {
	ds.Batching
	armed   atomic.Bool
	waiting atomic.Int64
	gate    chan struct{}
}

func (s *gatedGet) Get(ctx context.Context, k ds.Key) ([]byte, error) {
	if s.armed.CompareAndSwap(true, false) {
		s.waiting.Add(1)
		<-s.gate
	}
	return s.Batching.Get(ctx, k)
}

// A Read from the datastore that finds the entries gone because the
// subscription was removed meanwhile must not warn that the datastore
// lost queued publications.
func TestRemoveRacingReadDoesNotWarn(t *testing.T) {
	store := &gatedGet{Batching: datastore.NewMemory().Batching(), gate: make(chan struct{})}
	wc := &warnCount{}
	// A budget of one byte caches nothing: Read goes to the datastore.
	qs := openQueues(t, store, QueueOptions{MemoryPerQueue: 1, Logger: slog.New(wc)})
	addSub(t, qs, "s", "a")
	publish(t, qs, msg("a", "a1"), msg("a", "a2"), msg("a", "a3"))

	store.armed.Store(true)
	read := make(chan error, 1)
	go func() {
		items, err := qs.Read("s", 0, 0, 0)
		t.Logf("Read racing the removal: %q, %v", summary(items), err)
		read <- err
	}()
	waitFor(t, func() bool { return store.waiting.Load() == 1 }) // positions mapped, fetching
	if _, err := qs.RemoveSubscription(context.Background(), "s"); err != nil {
		t.Fatal(err)
	}
	close(store.gate)
	if err := <-read; err != nil {
		t.Fatalf("Read racing the removal = %v", err)
	}
	if n := wc.n.Load(); n > 0 {
		t.Fatalf("%d warnings that queued publications are missing from the log, for a removed subscription", n)
	}
}
