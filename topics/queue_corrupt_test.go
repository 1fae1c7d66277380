package topics

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/coattail/coattail/datastore"
	ds "github.com/ipfs/go-datastore"
)

// logRecorder keeps the messages of the records logged at Error.
type logRecorder struct {
	mu   sync.Mutex
	errs []string
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		var b strings.Builder
		b.WriteString(r.Message)
		r.Attrs(func(a slog.Attr) bool {
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
			return true
		})
		l.mu.Lock()
		l.errs = append(l.errs, b.String())
		l.mu.Unlock()
	}
	return nil
}
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

func (l *logRecorder) errors() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.errs)
}

func logKeyOf(pos uint64) ds.Key { return ds.RawKey(string(appendLogKey(nil, pos))) }

// policies runs fn under both queue policies.
func policies(t *testing.T, fn func(t *testing.T, policy string)) {
	for _, p := range []string{PolicyReject, PolicyDropOldest} {
		t.Run(p, func(t *testing.T) { fn(t, p) })
	}
}

// TestCorruptLogEntrySkippedNotStalled: a log entry that no longer decodes
// is skipped by Read (once logged and counted), the publications after it
// are read, the subscriber's ack past it releases it, and the count
// survives a restart. It used to fail every Read for ever.
func TestCorruptLogEntrySkippedNotStalled(t *testing.T) {
	policies(t, func(t *testing.T, policy string) {
		backends(t, func(t *testing.T, store ds.Batching) {
			ctx := context.Background()
			rec := &logRecorder{}
			o := QueueOptions{Policy: policy, Bound: 100, MemoryPerQueue: 1, Logger: slog.New(rec)}
			qs, err := OpenQueues(ctx, store, o)
			if err != nil {
				t.Fatal(err)
			}
			addSub(t, qs, "s", "a.>")
			addSub(t, qs, "other", "b.>")
			for i := 1; i <= 5; i++ {
				publish(t, qs, msg("a.x", fmt.Sprint("m", i)))
			}
			publish(t, qs, msg("b.x", "b1"))
			if err := store.Put(ctx, logKeyOf(3), []byte{7, 7, 7}); err != nil {
				t.Fatal(err)
			}
			for range 3 {
				items, err := qs.Read("s", 0, 10, 0)
				if err != nil {
					t.Fatalf("Read over a damaged entry: %v", err)
				}
				wantItems(t, items, "1:a.x:m1", "2:a.x:m2", "4:a.x:m4", "5:a.x:m5")
			}
			// Paged, the way the deliverer reads: one at a time.
			if items, err := qs.Read("s", 2, 1, 1); err != nil {
				t.Fatal(err)
			} else {
				wantItems(t, items, "4:a.x:m4")
			}
			wantItems(t, readAll(t, qs, "other", 0), "1:b.x:b1")
			if st := status(t, qs, "s"); st.Corrupt != 1 {
				t.Fatalf("corrupt = %d, want 1", st.Corrupt)
			}
			if tot := qs.Totals(); tot.Corrupt != 1 {
				t.Fatalf("total corrupt = %d, want 1", tot.Corrupt)
			}
			if errs := rec.errors(); len(errs) != 1 || !strings.Contains(errs[0], "subscription=s") || !strings.Contains(errs[0], "seq=3") ||
				!strings.Contains(errs[0], "position=3") || !strings.Contains(errs[0], "corrupt queue record") {
				t.Fatalf("error logs = %q, want one naming subscription s, seq 3, position 3 and the cause", errs)
			}
			// Delivered: the skipped one is not counted.
			if _, err := qs.Resume("s", 0); err != nil {
				t.Fatal(err)
			}
			qs.MarkSent("s", 5)
			if st := status(t, qs, "s"); st.Delivered != 4 {
				t.Fatalf("delivered = %d, want 4 (the lost one was not sent)", st.Delivered)
			}
			if err := qs.Ack("s", 5); err != nil {
				t.Fatal(err)
			}
			if err := qs.Close(); err != nil {
				t.Fatal(err)
			}
			wantPositions(t, store, []uint64{6}) // the damaged entry went with the ack
			qs = openQueues(t, store, o)
			if st := status(t, qs, "s"); st.Corrupt != 1 || st.Depth != 0 || st.Delivered != 4 {
				t.Fatalf("after a restart: corrupt %d, depth %d, delivered %d; want 1, 0, 4", st.Corrupt, st.Depth, st.Delivered)
			}
			publish(t, qs, msg("a.x", "m6"))
			wantItems(t, readAll(t, qs, "s", 5), "6:a.x:m6")
		})
	})
}

// TestCorruptLogEntryAtOpen: the queues open over a damaged log entry (it
// used to refuse them, and with them the service): the subscriptions it was
// queued for skip it, counted once however many restarts find it again,
// and the others are unaffected.
func TestCorruptLogEntryAtOpen(t *testing.T) {
	for _, tc := range []struct {
		name  string
		value func(good []byte) []byte
		// other: whether subscription "other" (b.>) counts it too: an
		// entry whose routing is unreadable counts for every subscription
		// it may have been routed to.
		other bool
	}{
		{"garbage", func([]byte) []byte { return []byte{9, 9} }, true},
		{"truncated", func(good []byte) []byte { return good[:3] }, true},
		{"listed, message damaged", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			policies(t, func(t *testing.T, policy string) {
				backends(t, func(t *testing.T, store ds.Batching) {
					ctx := context.Background()
					o := QueueOptions{Policy: policy, Bound: 100}
					qs, err := OpenQueues(ctx, store, o)
					if err != nil {
						t.Fatal(err)
					}
					addSub(t, qs, "s", "a.>")
					addSub(t, qs, "other", "b.>")
					publish(t, qs, msg("a.x", "m1"), msg("b.x", "b1"), msg("a.x", "m3"))
					if tc.value == nil {
						// A publication with a filter lists its subscriptions.
						if _, err := qs.Publish(ctx, []Message{msg("a.x", "m4")}, func(Subscription) bool { return true }); err != nil {
							t.Fatal(err)
						}
					} else {
						publish(t, qs, msg("a.x", "m4"))
					}
					publish(t, qs, msg("a.x", "m5"), msg("b.x", "b2"))
					if err := qs.Close(); err != nil {
						t.Fatal(err)
					}
					good, err := store.Get(ctx, logKeyOf(4))
					if err != nil {
						t.Fatal(err)
					}
					bad := []byte(nil)
					if tc.value != nil {
						bad = tc.value(good)
					} else {
						// Keep the routing, damage the hop count after it.
						e, _ := decodeEntry(good, false)
						if !e.listed {
							t.Fatal("a filtered publication was not listed")
						}
						bad = append(bytes.Clone(good[:len(good)-len(e.Data)-len(e.Subject)-3]), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
					}
					if err := store.Put(ctx, logKeyOf(4), bad); err != nil {
						t.Fatal(err)
					}
					for restart := range 2 {
						rec := &logRecorder{}
						o.Logger = slog.New(rec)
						qs, err = OpenQueues(ctx, store, o)
						if err != nil {
							t.Fatalf("OpenQueues over a damaged log entry: %v", err)
						}
						wantItems(t, readAll(t, qs, "s", 0), "1:a.x:m1", "2:a.x:m3", "4:a.x:m5")
						otherWant := []string{"1:b.x:b1", "2:b.x:b2"}
						otherCorrupt := uint64(0)
						if tc.other {
							otherWant[1] = "3:b.x:b2" // numbered as if it had been routed there
							otherCorrupt = 1
						}
						wantItems(t, readAll(t, qs, "other", 0), otherWant...)
						if st := status(t, qs, "s"); st.Corrupt != 1 {
							t.Fatalf("restart %d: corrupt = %d, want 1", restart, st.Corrupt)
						}
						if st := status(t, qs, "other"); st.Corrupt != otherCorrupt {
							t.Fatalf("restart %d: other's corrupt = %d, want %d", restart, st.Corrupt, otherCorrupt)
						}
						if errs := rec.errors(); len(errs) != 1 || !strings.Contains(errs[0], "position=4") || !strings.Contains(errs[0], "s]") {
							t.Fatalf("restart %d: error logs = %q, want one for position 4 naming s", restart, errs)
						}
						if err := qs.Close(); err != nil {
							t.Fatal(err)
						}
					}
				})
			})
		})
	}
}

// TestDamagedSubscriptionDropped: a subscription whose record or queue
// state is damaged is dropped with an error log (its subscriber is told at
// its next resume); the others open and work. It used to refuse the queues.
func TestDamagedSubscriptionDropped(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  func(id string) string
		bad  func(good []byte) []byte
	}{
		{"truncated state", subMetaKey, func(good []byte) []byte { return good[:len(good)-1] }},
		{"state of an unknown format", subMetaKey, func([]byte) []byte { return []byte{42, 1} }},
		{"record not JSON", subKey, func([]byte) []byte { return []byte("{not json") }},
		{"record of another subscription", subKey, func([]byte) []byte { return []byte(`{"id":"z","pattern":"a.>"}`) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			backends(t, func(t *testing.T, store ds.Batching) {
				ctx := context.Background()
				qs := openQueues(t, store, QueueOptions{})
				addSub(t, qs, "s", "a.>")
				addSub(t, qs, "t", "a.>")
				publish(t, qs, msg("a.x", "m1"), msg("a.x", "m2"))
				if err := qs.Close(); err != nil {
					t.Fatal(err)
				}
				good, err := store.Get(ctx, ds.RawKey(tc.key("s")))
				if err != nil {
					t.Fatal(err)
				}
				if err := store.Put(ctx, ds.RawKey(tc.key("s")), tc.bad(good)); err != nil {
					t.Fatal(err)
				}
				rec := &logRecorder{}
				qs, err = OpenQueues(ctx, store, QueueOptions{Logger: slog.New(rec)})
				if err != nil {
					t.Fatalf("OpenQueues with a damaged subscription: %v", err)
				}
				defer qs.Close()
				if _, ok := qs.Subscription("s"); ok {
					t.Fatal("the damaged subscription is still there")
				}
				if errs := rec.errors(); len(errs) != 1 || !strings.Contains(errs[0], "subscription dropped") || !strings.Contains(errs[0], "subscription=s") {
					t.Fatalf("error logs = %q, want one saying s was dropped", errs)
				}
				wantItems(t, readAll(t, qs, "t", 0), "1:a.x:m1", "2:a.x:m2")
				if hasState(t, store, "s") {
					t.Fatal("the dropped subscription's state is still stored")
				}
				if ok, _ := store.Has(ctx, ds.RawKey(subKey("s"))); ok {
					t.Fatal("the dropped subscription's record is still stored")
				}
				// Its id is free again: the subscriber may subscribe anew.
				addSub(t, qs, "s", "a.>")
				publish(t, qs, msg("a.x", "m3"))
				wantItems(t, readAll(t, qs, "s", 0), "1:a.x:m3")
			})
		})
	}
}

// flipInTables flips a byte in the middle of needle's first occurrence in
// the sstables of dir (tables are not compressed, so a value is there as
// written): pebble then finds the block's checksum wrong.
func flipInTables(t *testing.T, dir string, needle []byte) {
	t.Helper()
	ssts, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
	for _, f := range ssts {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if i := bytes.Index(b, needle); i >= 0 {
			b[i+len(needle)/2] ^= 0xff
			if err := os.WriteFile(f, b, 0o600); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("%q is in no table of %v", needle, ssts)
}

// TestDamagedTableBlock: a publication whose sstable block fails its
// checksum is skipped at open and after (pebble's default was to end the
// process at the first read of the block; and go-ds-pebble's scan ended
// at the block without an error, so the log looked shorter and new
// publications reused its positions). Publications are 8 KiB, so each
// has blocks of its own.
func TestDamagedTableBlock(t *testing.T) {
	for _, tc := range []struct {
		name    string
		damaged []int // which of 1..6 (b.x is 6)
		want    []string
	}{
		{"middle", []int{3}, []string{"1", "2", "4", "5"}},
		{"two apart", []int{2, 4}, []string{"1", "3", "5"}},
		{"last", []int{5}, []string{"1", "2", "3", "4"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			policies(t, func(t *testing.T, policy string) {
				dir := t.TempDir()
				ctx := context.Background()
				o := QueueOptions{Policy: policy, Bound: 100}
				db, qs := reopen(t, dir, o, &logRecorder{})
				addSub(t, qs, "s", "a.>")
				for i := 1; i <= 5; i++ {
					publish(t, qs, msg("a.x", bigData(i)))
				}
				if err := qs.Close(); err != nil {
					t.Fatal(err)
				}
				if err := db.Reclaim(ctx, false); err != nil { // flush into a table
					t.Fatal(err)
				}
				if err := db.Close(); err != nil {
					t.Fatal(err)
				}
				for _, i := range tc.damaged {
					flipInTables(t, dir, []byte(bigData(i)[:64]))
				}
				rec := &logRecorder{}
				db, qs = reopen(t, dir, o, rec)
				defer db.Close()
				defer qs.Close()
				var got []string
				for _, it := range readAll(t, qs, "s", 0) {
					got = append(got, strings.TrimPrefix(string(it.Message.Data[:2]), "m"))
				}
				if !slices.Equal(got, tc.want) {
					t.Fatalf("read %v, want %v", got, tc.want)
				}
				if st := status(t, qs, "s"); st.Corrupt < uint64(len(tc.damaged)) {
					t.Fatalf("corrupt = %d, want at least %d", st.Corrupt, len(tc.damaged))
				}
				if len(rec.errors()) == 0 {
					t.Fatal("nothing logged as an error")
				}
				// New publications are read (not logged in the damaged
				// positions), and acking them all releases the log.
				publish(t, qs, msg("a.x", "new"))
				items := readAll(t, qs, "s", 0)
				if last := items[len(items)-1]; string(last.Message.Data) != "new" {
					t.Fatalf("last item %q, want the new publication", last.Message.Data)
				} else if err := qs.Ack("s", last.Seq); err != nil {
					t.Fatal(err)
				}
			})
		})
	}
}

// tableHolding names the sstable of dir that holds needle, or "".
func tableHolding(t *testing.T, dir, needle string) string {
	t.Helper()
	ssts, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
	for _, f := range ssts {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(needle)) {
			return f
		}
	}
	return ""
}

// bigData is publication i (1..9) of the damaged-block tests: 8 KiB, so
// that each has table blocks of its own.
func bigData(i int) string {
	return fmt.Sprintf("m%d-%s", i, strings.Repeat(fmt.Sprint(i%10), 8<<10))
}

// reopen opens the queues of dir (again), logging to rec.
func reopen(t *testing.T, dir string, o QueueOptions, rec *logRecorder) (*datastore.DB, *Queues) {
	t.Helper()
	db, err := datastore.Open(dir, datastore.WithLogger(slog.New(rec)))
	if err != nil {
		t.Fatal(err)
	}
	o.Logger = slog.New(rec)
	qs, err := OpenQueues(context.Background(), db.Batching(), o)
	if err != nil {
		db.Close()
		t.Fatalf("OpenQueues: %v", err)
	}
	return db, qs
}

func closeBoth(t *testing.T, db *datastore.DB, qs *Queues) {
	t.Helper()
	if err := qs.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestDamagedLastBlockOfOlderTable: the damaged block is the last block of
// queue log entries in an older sstable, and newer publications are in a
// newer sstable. The older table's index sends every later log key to the
// damaged block, so every read at or after it failed, and the load took
// the damage to run to the end of the log and deleted it, the newer
// readable publications included. Only the damaged publication may be
// lost: the newer ones are read in order, numbered as before, at open and
// after restarts (and after a compaction of everything), and publications
// made after that survive further restarts.
func TestDamagedLastBlockOfOlderTable(t *testing.T) {
	policies(t, func(t *testing.T, policy string) {
		dir := t.TempDir()
		ctx := context.Background()
		o := QueueOptions{Policy: policy, Bound: 100}
		db, qs := reopen(t, dir, o, &logRecorder{})
		addSub(t, qs, "s", "a.>")
		addSub(t, qs, "other", "b.>")
		for i := 1; i <= 5; i++ {
			publish(t, qs, msg("a.x", bigData(i)))
		}
		// Entries 1-5 and the subscriptions' states in a table of the
		// bottom level (two tables in level 0 would be compacted into
		// one)...
		if err := db.Reclaim(ctx, true); err != nil {
			t.Fatal(err)
		}
		for i := 6; i <= 8; i++ {
			publish(t, qs, msg("a.x", bigData(i)))
		}
		publish(t, qs, msg("b.x", "b1"))
		if err := qs.Close(); err != nil {
			t.Fatal(err)
		}
		// ...and 6-8 and b1 in a newer one, in level 0.
		if err := db.Reclaim(ctx, false); err != nil {
			t.Fatal(err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		old, newer := tableHolding(t, dir, bigData(5)[:64]), tableHolding(t, dir, bigData(6)[:64])
		if old == "" || newer == "" || old == newer {
			t.Fatalf("entry 5 is in table %q and entry 6 in %q: want two tables", old, newer)
		}
		flipInTables(t, dir, []byte(bigData(5)[:64]))
		check := damagedLogCheck(t, "1:m1", "2:m2", "3:m3", "4:m4", "6:m6", "7:m7", "8:m8")
		for restart := range 2 {
			rec := &logRecorder{}
			db, qs := reopen(t, dir, o, rec)
			check(fmt.Sprintf("restart %d", restart), qs, rec)
			if len(rec.errors()) == 0 {
				t.Fatalf("restart %d: nothing logged as an error", restart)
			}
			if restart == 0 {
				// No read loads the damaged block any more: not
				// even a compaction of every table.
				if err := db.Reclaim(ctx, true); err != nil {
					t.Fatalf("compaction after the damaged block was cut out: %v", err)
				}
			}
			closeBoth(t, db, qs)
		}
		// New publications follow, and survive restarts.
		db, qs = newPublicationKept(t, dir, o, check)
		closeBoth(t, db, qs)
	})
}

// damagedLogCheck is what the damaged-block tests check after each load:
// subscription s reads want (then extra) as "seq:data prefix", the lost
// entry keeping its sequence (those after it numbered as before the
// damage), other reads its b1, and s counts one corrupt publication.
func damagedLogCheck(t *testing.T, want ...string) func(when string, qs *Queues, rec *logRecorder, extra ...string) {
	return func(when string, qs *Queues, rec *logRecorder, extra ...string) {
		t.Helper()
		var got []string
		for _, it := range readAll(t, qs, "s", 0) {
			got = append(got, fmt.Sprintf("%d:%s", it.Seq, it.Message.Data[:2]))
		}
		if w := slices.Concat(want, extra); !slices.Equal(got, w) {
			t.Fatalf("%s: read %v, want %v; errors %q", when, got, w, rec.errors())
		}
		wantItems(t, readAll(t, qs, "other", 0), "1:b.x:b1")
		if st := status(t, qs, "s"); st.Corrupt != 1 {
			t.Fatalf("%s: corrupt = %d, want 1", when, st.Corrupt)
		}
	}
}

// newPublicationKept publishes to s (sequence 9) after the damaged loads,
// checks it is there at two restarts, and acks everything; it returns the
// queues open, empty.
func newPublicationKept(t *testing.T, dir string, o QueueOptions, check func(string, *Queues, *logRecorder, ...string)) (*datastore.DB, *Queues) {
	t.Helper()
	rec := &logRecorder{}
	db, qs := reopen(t, dir, o, rec)
	publish(t, qs, msg("a.x", "new"))
	closeBoth(t, db, qs)
	for restart := range 2 {
		db, qs := reopen(t, dir, o, rec)
		check(fmt.Sprintf("after a new publication, restart %d", restart), qs, rec, "9:ne")
		closeBoth(t, db, qs)
	}
	db, qs = reopen(t, dir, o, rec)
	if err := qs.Ack("s", 9); err != nil {
		t.Fatal(err)
	}
	if st := status(t, qs, "s"); st.Depth != 0 {
		t.Fatalf("depth %d after acking everything, want 0", st.Depth)
	}
	return db, qs
}

// TestDamagedLastBlockNewPublicationKept: after a start that finds the
// last block of the log damaged (nothing after it to read), a publication
// made then is still there after the next restart, and the damage is
// counted once (the damaged block used to be met again at that restart,
// and the log deleted from it to its end again, the new publication
// included).
func TestDamagedLastBlockNewPublicationKept(t *testing.T) {
	policies(t, func(t *testing.T, policy string) {
		dir := t.TempDir()
		ctx := context.Background()
		o := QueueOptions{Policy: policy, Bound: 100}
		db, qs := reopen(t, dir, o, &logRecorder{})
		addSub(t, qs, "s", "a.>")
		for i := 1; i <= 5; i++ {
			publish(t, qs, msg("a.x", bigData(i)))
		}
		if err := qs.Close(); err != nil {
			t.Fatal(err)
		}
		if err := db.Reclaim(ctx, false); err != nil {
			t.Fatal(err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		flipInTables(t, dir, []byte(bigData(5)[:64]))
		rec := &logRecorder{}
		db, qs = reopen(t, dir, o, rec)
		wantItems(t, readAll(t, qs, "s", 0), "1:a.x:"+bigData(1), "2:a.x:"+bigData(2), "3:a.x:"+bigData(3), "4:a.x:"+bigData(4))
		publish(t, qs, msg("a.x", "new"))
		closeBoth(t, db, qs)
		for restart := range 2 {
			db, qs := reopen(t, dir, o, rec)
			items := readAll(t, qs, "s", 0)
			var got []string
			for _, it := range items {
				got = append(got, fmt.Sprintf("%d:%.2s", it.Seq, it.Message.Data))
			}
			if w := []string{"1:m1", "2:m2", "3:m3", "4:m4", "5:ne"}; !slices.Equal(got, w) {
				t.Fatalf("restart %d: read %v, want %v", restart, got, w)
			}
			if st := status(t, qs, "s"); st.Corrupt != 1 {
				t.Fatalf("restart %d: corrupt = %d, want 1", restart, st.Corrupt)
			}
			closeBoth(t, db, qs)
		}
	})
}

// TestDamagedMiddleBlockCutOut: a damaged block in the middle of the log,
// in a table of the bottom level. The load used to step over it (probing
// for where the log reads again) and leave it in its table, so that every
// compaction including that table failed on it, for ever: pebble retries a
// failed compaction of that level every five minutes (two error logs each
// time), and the space of what is deleted over the table is not reclaimed.
// (In level 0 it is worse: the failed compaction is retried every few
// milliseconds, and writes stall once level 0 is full; TestDamagedTableBlock
// has its damage there.) It is cut out at the first load now: the readable
// publications are delivered in order with their sequences, the damage is
// counted once across restarts, a compaction of every table succeeds
// afterwards, and publications made after it survive restarts.
func TestDamagedMiddleBlockCutOut(t *testing.T) {
	policies(t, func(t *testing.T, policy string) {
		dir := t.TempDir()
		ctx := context.Background()
		o := QueueOptions{Policy: policy, Bound: 100}
		db, qs := reopen(t, dir, o, &logRecorder{})
		addSub(t, qs, "s", "a.>")
		addSub(t, qs, "other", "b.>")
		for i := 1; i <= 8; i++ {
			publish(t, qs, msg("a.x", bigData(i)))
		}
		publish(t, qs, msg("b.x", "b1"))
		if err := qs.Close(); err != nil {
			t.Fatal(err)
		}
		// Everything in one table of the bottom level.
		if err := db.Reclaim(ctx, true); err != nil {
			t.Fatal(err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		if tb := tableHolding(t, dir, bigData(4)[:64]); tb == "" || tb != tableHolding(t, dir, bigData(1)[:64]) || tb != tableHolding(t, dir, bigData(8)[:64]) {
			t.Fatalf("entries 1, 4 and 8 are not in one table")
		}
		flipInTables(t, dir, []byte(bigData(4)[:64]))
		damaged := damagedLogCheck(t, "1:m1", "2:m2", "3:m3", "5:m5", "6:m6", "7:m7", "8:m8")
		check := func(when string, qs *Queues, rec *logRecorder, extra ...string) {
			t.Helper()
			damaged(when, qs, rec, extra...)
			// Its queue state says other was routed nothing before b1.
			if st := status(t, qs, "other"); st.Corrupt != 0 {
				t.Fatalf("%s: other's corrupt = %d, want 0", when, st.Corrupt)
			}
		}
		for restart := range 3 {
			rec := &logRecorder{}
			db, qs := reopen(t, dir, o, rec)
			check(fmt.Sprintf("restart %d", restart), qs, rec)
			if len(rec.errors()) == 0 {
				t.Fatalf("restart %d: nothing logged as an error", restart)
			}
			if restart == 1 {
				// No read or compaction loads the damaged block any
				// more.
				if err := db.Reclaim(ctx, true); err != nil {
					t.Fatalf("restart %d: compaction of every table: %v", restart, err)
				}
			}
			closeBoth(t, db, qs)
		}
		db, qs = newPublicationKept(t, dir, o, check)
		defer closeBoth(t, db, qs)
		if err := db.Reclaim(ctx, true); err != nil {
			t.Fatalf("compaction after acking everything: %v", err)
		}
	})
}
