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
	"strconv"
	"strings"
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
	case <-time.After(10 * time.Second):
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
// budgets, and crashes (the instance is frozen by holding commitMu and the
// store reopened). After every reopen each subscription has the same next
// sequence and still holds what it held (acks may be lost: more is fine),
// and no queued entry was missing from the log. COATTAIL_MODEL_SEEDS runs
// more seeds than the default 40 (the review ran 300).
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
	store := ds.Batching(datastore.NewMemory().Batching())
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
	for step := 0; step < 400; step++ {
		switch k := rng.IntN(20); {
		case k < 2 || len(live) == 0:
			nid++
			id := fmt.Sprintf("s%d", nid)
			if err := qs.AddSubscription(ctx, Subscription{ID: id, Subscriber: fmt.Sprint(nid % 3), Pattern: pats[rng.IntN(len(pats))], TokenID: "t", Receiver: "r"}); err != nil {
				t.Fatal(err)
			}
			live[id] = true
		case k < 3:
			for id := range live {
				if _, err := qs.RemoveSubscription(ctx, id); err != nil {
					t.Fatal(err)
				}
				delete(live, id)
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
			if _, err := qs.Publish(ctx, msgs, filter); err != nil && !strings.Contains(err.Error(), "queue full") {
				t.Fatal(err)
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
			// crash: freeze this instance, reopen the store.
			deadline := time.Now().Add(5 * time.Second)
			for {
				qs.dirtyMu.Lock()
				d := len(qs.dirty)
				qs.dirtyMu.Unlock()
				if d == 0 || time.Now().After(deadline) {
					break
				}
				time.Sleep(time.Millisecond)
			}
			qs.commitMu.Lock() // frozen forever
			before := map[string][]string{}
			nexts := map[string]uint64{}
			for id := range live {
				before[id] = summary(readAll(t, qs, id, 0))
				nexts[id] = status(t, qs, id).NextSeq
			}
			qs2, err := OpenQueues(ctx, store, opts)
			if err != nil {
				t.Fatal(err)
			}
			for id := range live {
				after := summary(readAll(t, qs2, id, 0))
				if n := status(t, qs2, id).NextSeq; n != nexts[id] {
					t.Fatalf("step %d %s: next %d before crash, %d after", step, id, nexts[id], n)
				}
				// after may hold more (acks lost): compare the common suffix
				b := before[id]
				if len(after) < len(b) || strings.Join(after[len(after)-len(b):], "|") != strings.Join(b, "|") {
					t.Fatalf("step %d %s: before %q after %q", step, id, b, after)
				}
			}
			qs = qs2
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
