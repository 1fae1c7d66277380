package topics

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coattail/coattail/datastore"
	ds "github.com/ipfs/go-datastore"
)

// flushes flushes the datastore n times, a publication before each (a
// table each in level 0, which compactions merge), and fails if a flush
// does not return within a few seconds: level 0 full (its stop-writes
// threshold is twelve tables), every write stalled.
func flushes(t *testing.T, db *datastore.DB, qs *Queues, n int) {
	t.Helper()
	for i := range n {
		publish(t, qs, msg("a.x", fmt.Sprintf("r%d", i)))
		// Flushes are rare (a memtable is 64 MiB): those here come a
		// little apart, as pebble's compactions would see them.
		time.Sleep(50 * time.Millisecond)
		done := make(chan error, 1)
		go func() { done <- db.Reclaim(context.Background(), false) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("flush %d: %v", i, err)
			}
		case <-time.After(5 * time.Second):
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			prev := handoffGrace
			handoffGrace = time.Second
			_, err := qs.Publish(ctx, []Message{msg("a.x", "after the stall")}, nil)
			handoffGrace = prev
			t.Fatalf("flush %d stalled: every write waits for a compaction that fails on the damage for ever (%d reports of damage); a publication then: %v",
				i, db.CorruptionEvents(), err)
		}
	}
}

// compactAll compacts every table, or fails after a while (a compaction
// that fails on damage is retried for ever).
func compactAll(db *datastore.DB) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return db.Reclaim(ctx, true)
}

// seqs renders items as "seq:data", data up to its first '-' (bigData's
// "m<i>").
func seqs(items []Item) []string {
	var out []string
	for _, it := range items {
		d, _, _ := strings.Cut(string(it.Message.Data), "-")
		out = append(out, fmt.Sprintf("%d:%s", it.Seq, d))
	}
	return out
}

// TestDamageWhileRunningCutOut: a table block of queued publications goes
// bad while the instance runs, and the compactions that read its table
// fail on it. pebble retried them for ever, every flush added a table to
// level 0, and after a dozen every write stalled for good: publications
// timed out ("may still be queued") until a restart cut the block out.
// The queues cut it out as soon as it is reported now: writes never
// stall, a compaction of everything succeeds, and the publication the
// block held is written again from the queue's memory when the queue
// still has it there, else lost: skipped, counted once and numbered as
// before, at once and across restarts.
func TestDamageWhileRunningCutOut(t *testing.T) {
	for _, tc := range []struct {
		name   string
		memory int
		want   []string // of s, before the rounds' publications
		lost   uint64
	}{
		{"in memory", 0, []string{"1:m1", "2:m2", "3:m3", "4:m4", "5:m5"}, 0},
		{"read from the datastore", 1, []string{"1:m1", "2:m2", "4:m4", "5:m5"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			ctx := context.Background()
			o := QueueOptions{Bound: 100, MemoryPerQueue: tc.memory}
			rec := &logRecorder{}
			db, qs := reopen(t, dir, o, rec)
			addSub(t, qs, "s", "a.>")
			addSub(t, qs, "other", "b.>")
			for i := 1; i <= 5; i++ {
				publish(t, qs, msg("a.x", bigData(i)))
			}
			publish(t, qs, msg("b.x", "b1"))
			if err := db.Reclaim(ctx, false); err != nil {
				t.Fatal(err)
			}
			flipInTables(t, dir, []byte(bigData(3)[:64]))
			const rounds = 14
			flushes(t, db, qs, rounds)
			// Publishing and compacting everything work.
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if _, err := qs.Publish(pctx, []Message{msg("a.x", "last")}, nil); err != nil {
				t.Fatalf("publish after the damage: %v", err)
			}
			if err := compactAll(db); err != nil {
				t.Fatalf("compaction of every table after the damage: %v", err)
			}
			want := slices.Clone(tc.want)
			for i := range rounds {
				want = append(want, fmt.Sprintf("%d:r%d", 6+i, i))
			}
			want = append(want, fmt.Sprintf("%d:last", 6+rounds))
			check := func(when string, qs *Queues) {
				t.Helper()
				if got := seqs(readAll(t, qs, "s", 0)); !slices.Equal(got, want) {
					t.Fatalf("%s: read %v, want %v; errors %q", when, got, want, rec.errors())
				}
				wantItems(t, readAll(t, qs, "other", 0), "1:b.x:b1")
				if st := status(t, qs, "s"); st.Corrupt != tc.lost {
					t.Fatalf("%s: corrupt = %d, want %d", when, st.Corrupt, tc.lost)
				}
				if st := status(t, qs, "other"); st.Corrupt != 0 {
					t.Fatalf("%s: other's corrupt = %d, want 0", when, st.Corrupt)
				}
				if err := qs.Failure(); err != nil {
					t.Fatalf("%s: the queues refuse publications: %v", when, err)
				}
			}
			check("after the cut", qs)
			cut := false
			for _, e := range rec.errors() {
				cut = cut || strings.Contains(e, "cut out while running") && strings.Contains(e, "position")
			}
			if tc.lost > 0 && !cut {
				t.Fatalf("the loss was not logged as an error: %q", rec.errors())
			}
			closeBoth(t, db, qs)
			for restart := range 2 {
				db, qs := reopen(t, dir, o, &logRecorder{})
				check(fmt.Sprintf("restart %d", restart), qs)
				closeBoth(t, db, qs)
			}
		})
	}
}

// TestDamageWhileRunningOutsideQueues: a damaged block of keys the queues
// do not own cannot be cut out while others may write them: the queues
// refuse publications at once with ErrStorageDamaged, naming the damage
// and what to do (they were accepted until writes stalled, and then timed
// out).
func TestDamageWhileRunningOutsideQueues(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	rec := &logRecorder{}
	db, qs := reopen(t, dir, QueueOptions{}, rec)
	defer closeBoth(t, db, qs)
	addSub(t, qs, "s", "a.>")
	publish(t, qs, msg("a.x", "m1"))
	// Everything in one table (no compaction rewrites it meanwhile)...
	damagePeers(t, db, dir)
	// ...and a table that overlaps it, so that a compaction reads it.
	if err := db.Batching().Put(ctx, ds.NewKey("/peers/p9"), []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := db.Reclaim(ctx, false); err != nil {
		t.Fatal(err)
	}
	// A compaction of everything fails on the block (and is retried until
	// its context ends).
	cctx, cancel := context.WithCancel(ctx)
	compacted := make(chan error, 1)
	go func() { compacted <- db.Reclaim(cctx, true) }()
	waitFor(t, func() bool { return qs.Failure() != nil })
	cancel()
	<-compacted
	_, err := qs.Publish(ctx, []Message{msg("a.x", "m2")}, nil)
	if !errors.Is(err, ErrStorageDamaged) || !strings.Contains(err.Error(), ".sst") || !strings.Contains(err.Error(), "restart") || !strings.Contains(err.Error(), "backup") {
		t.Fatalf("publish = %v, want ErrStorageDamaged naming the damaged table and what to do", err)
	}
	if f := qs.Failure(); !errors.Is(f, ErrStorageDamaged) {
		t.Fatalf("Failure() = %v", f)
	}
	// What was queued is still delivered and acked.
	wantItems(t, readAll(t, qs, "s", 0), "1:a.x:m1")
	if err := qs.Ack("s", 1); err != nil {
		t.Fatal(err)
	}
	logged := false
	for _, e := range rec.errors() {
		logged = logged || strings.Contains(e, "refusing publications")
	}
	if !logged {
		t.Fatalf("nothing logged about refusing publications: %q", rec.errors())
	}
}

// TestDamageCutWhileBusy: a damaged block is cut out while publishers,
// deliverers, acks and subscription changes go on (run with -race).
// Nothing of theirs fails, every subscription reads its publications in
// order with no sequence twice, and a restart numbers them as before.
func TestDamageCutWhileBusy(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	o := QueueOptions{Bound: 100000, MemoryPerQueue: 1} // reads go to the datastore
	rec := &logRecorder{}
	db, qs := reopen(t, dir, o, rec)
	addSub(t, qs, "s", "a.>")
	addSub(t, qs, "t", "a.>")
	for i := 1; i <= 5; i++ {
		publish(t, qs, msg("a.x", bigData(i)))
	}
	if err := db.Reclaim(ctx, false); err != nil {
		t.Fatal(err)
	}
	flipInTables(t, dir, []byte(bigData(3)[:64]))
	var cuts atomic.Int32
	testHookRepair = func() { cuts.Add(1) }
	defer func() { testHookRepair = nil }()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	run := func(fn func(i int) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := fn(i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for w := range 2 {
		run(func(i int) error {
			_, err := qs.Publish(ctx, []Message{msg("a.x", fmt.Sprintf("w%d-%d", w, i))}, nil)
			return err
		})
	}
	run(func(int) error {
		items, err := qs.Read("t", 0, 50, 0)
		if err != nil {
			return err
		}
		for k := 1; k < len(items); k++ {
			if items[k].Seq <= items[k-1].Seq {
				return fmt.Errorf("t read %d after %d", items[k].Seq, items[k-1].Seq)
			}
		}
		if len(items) > 10 {
			return qs.Ack("t", items[len(items)-10].Seq)
		}
		return nil
	})
	run(func(i int) error {
		id := fmt.Sprintf("x%d", i%3)
		if _, err := qs.RemoveSubscription(ctx, id); err != nil && !errors.Is(err, ErrNoSubscription) {
			return err
		}
		return qs.AddSubscription(ctx, Subscription{ID: id, Pattern: "a.>", Subscriber: "p"})
	})
	run(func(int) error {
		time.Sleep(20 * time.Millisecond) // flushes are rare (see flushes)
		return db.Reclaim(ctx, false)
	})
	waitFor(t, func() bool { return qs.Totals().Corrupt > 0 })
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := compactAll(db); err != nil {
		t.Fatalf("compaction of every table after the cut: %v", err)
	}
	items := readAll(t, qs, "s", 0)
	for k := 1; k < len(items); k++ {
		if items[k].Seq <= items[k-1].Seq {
			t.Fatalf("s read %d after %d", items[k].Seq, items[k-1].Seq)
		}
	}
	before := seqs(items)
	if !slices.Contains(before, "2:m2") || slices.Contains(before, "3:m3") || !slices.Contains(before, "4:m4") {
		t.Fatalf("s read %v, want 3 lost and 2, 4 kept", before[:min(5, len(before))])
	}
	if st := status(t, qs, "s"); st.Corrupt != 1 || cuts.Load() == 0 {
		t.Fatalf("corrupt = %d after %d cuts, want 1", st.Corrupt, cuts.Load())
	}
	closeBoth(t, db, qs)
	db, qs = reopen(t, dir, o, &logRecorder{})
	defer closeBoth(t, db, qs)
	if after := seqs(readAll(t, qs, "s", 0)); !slices.Equal(after, before) {
		t.Fatalf("after a restart s reads %d items, before %d: numbered differently", len(after), len(before))
	}
	if st := status(t, qs, "s"); st.Corrupt != 1 {
		t.Fatalf("after a restart: corrupt = %d, want 1", st.Corrupt)
	}
}

// TestDamageLostByReadThenWrittenFromMemory: a subscription whose Read
// meets the damaged block skips the publication (lost, counted), but the
// cut then writes the entry again from another queue's memory, listed for
// both, so that a restart delivers it to that subscription: it was
// skipped until then, and delivered after. Whether the read records the
// loss before the cut or after it (an iterator keeps reading the tables
// it began with), the subscription reads it again once the cut has
// written it back, as a restart does.
func TestDamageLostByReadThenWrittenFromMemory(t *testing.T) {
	for _, first := range []bool{true, false} {
		t.Run(fmt.Sprintf("read first %v", first), func(t *testing.T) {
			dir := t.TempDir()
			ctx := context.Background()
			// Room for two publications: t keeps m2 and m3 in memory,
			// s (which takes the c.x ones too) none of m1 to m3.
			o := QueueOptions{Bound: 100, MemoryPerQueue: 20 << 10}
			db, qs := reopen(t, dir, o, &logRecorder{})
			addSub(t, qs, "s", ">")
			addSub(t, qs, "t", "a.x")
			for i := 1; i <= 3; i++ {
				publish(t, qs, msg("a.x", bigData(i)))
			}
			for i := 4; i <= 7; i++ {
				publish(t, qs, msg("c.x", bigData(i)))
			}
			if err := db.Reclaim(ctx, false); err != nil {
				t.Fatal(err)
			}
			flipInTables(t, dir, []byte(bigData(3)[:64]))
			if first {
				// The cut the read's report starts waits until the read
				// has recorded the loss.
				read := make(chan struct{})
				testHookRepair = func() { <-read }
				defer func() { testHookRepair = nil }()
				got := seqs(readAll(t, qs, "s", 0))
				close(read)
				if slices.Contains(got, "3:m3") {
					t.Fatalf("s read %v through the damaged block", got)
				}
			} else {
				readAll(t, qs, "s", 0)
			}
			// The cut, and a compaction over what it left.
			flushes(t, db, qs, 3)
			if err := compactAll(db); err != nil {
				t.Fatal(err)
			}
			want := []string{"1:m1", "2:m2", "3:m3", "4:m4", "5:m5", "6:m6", "7:m7", "8:r0", "9:r1", "10:r2"}
			if got := seqs(readAll(t, qs, "s", 0)); !slices.Equal(got, want) {
				t.Fatalf("s reads %v after the cut, want %v (written back: a restart delivers it)", got, want)
			}
			wantT := []string{"1:m1", "2:m2", "3:m3", "4:r0", "5:r1", "6:r2"}
			if got := seqs(readAll(t, qs, "t", 0)); !slices.Equal(got, wantT) {
				t.Fatalf("t reads %v after the cut, want %v", got, wantT)
			}
			closeBoth(t, db, qs)
			db, qs = reopen(t, dir, o, &logRecorder{})
			defer closeBoth(t, db, qs)
			if got := seqs(readAll(t, qs, "s", 0)); !slices.Equal(got, want) {
				t.Fatalf("s reads %v after a restart, want %v", got, want)
			}
		})
	}
}

// TestLostEntryCodec: the lost entry a cut made while running writes names
// the subscriptions the publication was queued for; one that does not
// decode whole (truncated, or with bytes after the ids) is of unknown
// routing, as any damaged entry.
func TestLostEntryCodec(t *testing.T) {
	for _, ids := range [][]string{{}, {"s"}, {"one", "two"}} {
		val := appendLostEntry(nil, ids)
		e, err := decodeEntry(val, false)
		if !errors.Is(err, errLostEntry) || !e.routed || !e.listed || !slices.Equal(e.ids, ids) {
			t.Fatalf("decode(lost entry for %q) = %+v, %v", ids, e, err)
		}
		if e, err := decodeEntry(val, true); !errors.Is(err, errLostEntry) || e.routed {
			t.Fatalf("decode(lost entry for %q) without ids = %+v, %v", ids, e, err)
		}
		for _, bad := range [][]byte{append(slices.Clone(val), 'x'), append(slices.Clone(val), 0), val[:len(val)-1]} {
			if len(ids) == 0 && len(bad) < len(val) {
				continue // the bare lost entry and its routing byte
			}
			e, err := decodeEntry(bad, false)
			if !errors.Is(err, ErrCorruptQueue) || e.routed {
				t.Fatalf("decode(%q) = %+v, %v; want a damaged entry of unknown routing", bad, e, err)
			}
		}
	}
}

// TestDamageNotCutReportedAgain: pebble reports a damaged block each time
// it is met, every read of its keys included. One that could not be cut
// out made every report hold the queues' writers for a flush and another
// attempt, and log another error line (a read each 20 ms: 50 attempts and
// 50 lines in a second): it is tried and logged once every uncutRetry.
func TestDamageNotCutReportedAgain(t *testing.T) {
	for _, retry := range []time.Duration{time.Minute, 0} {
		t.Run(fmt.Sprint("retry ", retry), func(t *testing.T) {
			uncutRetry = retry // before the queues' goroutines start
			dir := t.TempDir()
			ctx := context.Background()
			rec := &logRecorder{}
			db, qs := reopen(t, dir, QueueOptions{}, rec)
			defer func() {
				closeBoth(t, db, qs)
				uncutRetry = time.Minute
			}()
			addSub(t, qs, "s", "a.>")
			publish(t, qs, msg("a.x", "m1"))
			damagePeers(t, db, dir)
			var tries atomic.Int32
			testHookRepair = func() { tries.Add(1) }
			defer func() { testHookRepair = nil }()
			const reads = 20
			for i := range reads {
				if _, err := db.Batching().Get(ctx, ds.NewKey("/peers/p3")); !datastore.IsCorruption(err) {
					t.Fatalf("read %d of the damaged key: %v", i, err)
				}
				time.Sleep(20 * time.Millisecond)
			}
			waitFor(t, func() bool { return db.CorruptionEvents() >= reads && qs.Failure() != nil })
			time.Sleep(100 * time.Millisecond) // the last report taken
			lines := 0
			for _, e := range rec.errors() {
				if strings.Contains(e, "refusing publications") {
					lines++
				}
			}
			// With no wait, every report taken is tried (reports of one
			// block made while it is pending are one).
			if n := tries.Load(); (retry > 0) != (n == 1) || n < 1 || lines != int(n) {
				t.Fatalf("%d reports of one block that cannot be cut out: %d cuts tried, %d lines logged; want %s",
					db.CorruptionEvents(), n, lines, map[bool]string{true: "1 and 1", false: "more than 1, a line each"}[retry > 0])
			}
			if _, err := qs.Publish(ctx, []Message{msg("a.x", "m2")}, nil); !errors.Is(err, ErrStorageDamaged) {
				t.Fatalf("publish = %v, want ErrStorageDamaged", err)
			}
		})
	}
}

// damagePeers writes five large records outside the queues' keys
// (/peers/p1..p5), compacts everything into one table and damages p3's
// block on disk.
func damagePeers(t *testing.T, db *datastore.DB, dir string) {
	t.Helper()
	for i := 1; i <= 5; i++ {
		if err := db.Batching().Put(context.Background(), ds.NewKey(fmt.Sprintf("/peers/p%d", i)), []byte(bigData(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := compactAll(db); err != nil {
		t.Fatal(err)
	}
	flipInTables(t, dir, []byte(bigData(3)[:64]))
}
