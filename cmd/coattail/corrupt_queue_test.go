package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/datastore"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
)

// TestSubsCorruptQueueEntry: ten publications queued at a publisher whose
// subscriber is away; the stored entry of the fifth is then damaged (its
// value overwritten through the datastore, or a byte of its sstable block
// flipped so that pebble's checksum fails). The publisher restarts and
// stays up, the subscriber receives the other nine exactly once and in
// order, and the operator sees the loss: an error in service.log naming
// the subscription, `corrupt` in `subscribers list --json` and in the
// counters of `service status --json`. The publisher used to refuse to
// start (a value that does not decode) or exit at the first read of the
// damaged block (pebble's default for a checksum mismatch), and a damaged
// bulkPair is a publisher a and a subscriber b whose receiver rec appends
// "<sequence> <first 24 bytes of the publication>" to got.txt, subscribed
// to bulk.> at a (subscription id), with b's service stopped and a's
// running on a fixed port.
func bulkPair(t *testing.T) (a, b *instance, id string) {
	t.Helper()
	a, b = newInstance(t, "a"), newInstance(t, "b")
	a.fixPort()
	b.writeScript("receivers", "rec", `data=$(head -c 24); cat >/dev/null
echo "$COATTAIL_SEQUENCE $data" >>got.txt
`)
	a.start()
	b.start()
	b.addPeer(a, "--subscribable", "bulk.>")
	id = b.subscribe(a, "bulk.>", "rec")
	b.mustRun("service", "stop")
	return a, b, id
}

// bulkData is publication k of the damaged-storage tests: 8 KiB, so that
// every publication has table blocks of its own.
func bulkData(k int) string {
	return fmt.Sprintf(`{"n":"%03d","pad":"%s"}`, k, strings.Repeat("p", 8<<10))
}

// entry met while delivering stalled its subscription for ever.
func TestSubsCorruptQueueEntry(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, dir string, needle []byte)
	}{
		{"undecodable value", overwriteLogEntry},
		{"sstable checksum", flipTableBlock},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const n, bad = 10, 5
			a, b, id := bulkPair(t)
			lines := make([]string, n)
			for k := range lines {
				lines[k] = bulkData(k + 1)
			}
			if code, stderr := a.publishStdin("bulk.x", lines); code != 0 {
				t.Fatalf("publish: exit %d: %s", code, stderr)
			}
			a.mustRun("service", "stop")
			tc.damage(t, a.path("data"), []byte(bulkData(bad)[:32]))

			a.start()
			b.start()
			b.waitLines("got.txt", n-1, deliveryTimeout)
			var want []string
			for k := 1; k <= n; k++ {
				if k != bad {
					want = append(want, fmt.Sprintf("%d %s", k, bulkData(k)[:24]))
				}
			}
			time.Sleep(500 * time.Millisecond) // anything more would show now
			got := b.readLines("got.txt")
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("the subscriber got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			var subs []struct {
				ID      string `json:"id"`
				Corrupt uint64 `json:"corrupt"`
				Depth   uint64 `json:"queue_depth"`
			}
			checkFor(t, deliveryTimeout, func() error {
				a.decodeJSON(a.mustRun("subscribers", "list", "--json"), &subs)
				if len(subs) != 1 || subs[0].ID != id || subs[0].Corrupt != 1 || subs[0].Depth != 0 {
					return fmt.Errorf("subscribers list: %+v, want %s with corrupt 1 and an empty queue", subs, id)
				}
				return nil
			})
			var sts []struct {
				Instance string `json:"instance"`
				Counters struct {
					Corrupt           uint64 `json:"corrupt"`
					StorageCorruption uint64 `json:"storage_corruption"`
				} `json:"counters"`
			}
			a.decodeJSON(a.mustRun("service", "status", "--json"), &sts)
			found := false
			for _, s := range sts {
				if s.Instance == a.dir {
					found = true
					if s.Counters.Corrupt != 1 {
						t.Errorf("service status: corrupt %d, want 1", s.Counters.Corrupt)
					}
					// A value that does not decode is no damage pebble
					// sees; a flipped table byte is.
					if checksum := tc.name == "sstable checksum"; (s.Counters.StorageCorruption > 0) != checksum {
						t.Errorf("service status: storage_corruption %d after %s damage", s.Counters.StorageCorruption, tc.name)
					}
				}
			}
			if !found {
				t.Fatal("the publisher is not running")
			}
			_, stderr, code := a.run("subscribers", "list")
			if code != 0 || !strings.Contains(stderr, "lost 1 queued publication") {
				t.Errorf("subscribers list: exit %d, stderr %q; want a warning about the lost publication", code, stderr)
			}
			log, err := os.ReadFile(a.path("service.log"))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(log, []byte("queued publication lost")) || !bytes.Contains(log, []byte(id)) || !bytes.Contains(log, []byte("level=ERROR")) && !bytes.Contains(log, []byte(`"level":"ERROR"`)) {
				t.Errorf("service.log has no error naming the lost publication of %s:\n%s", id, log)
			}
			// Later publications flow too.
			a.mustPublishRange("bulk.x", 1, 1)
			b.waitLines("got.txt", n, deliveryTimeout)
		})
	}
}

// overwriteLogEntry replaces the value of the queue log entry holding
// needle with bytes that do not decode.
func overwriteLogEntry(t *testing.T, dir string, needle []byte) {
	t.Helper()
	db, err := datastore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	var key []byte
	res, err := db.Batching().Query(ctx, query.Query{Prefix: "/queue/log"})
	if err != nil {
		t.Fatal(err)
	}
	entries, err := res.Rest()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if bytes.Contains(e.Value, needle) {
			key = []byte(e.Key)
		}
	}
	if key == nil {
		t.Fatalf("no queue log entry holds %q", needle)
	}
	if err := db.Batching().Put(ctx, dsKey(key), []byte{0x7f, 0, 1}); err != nil {
		t.Fatal(err)
	}
}

// flipTableBlock flushes the datastore into tables and flips a byte of
// needle's first occurrence in them (tables are not compressed).
func flipTableBlock(t *testing.T, dir string, needle []byte) {
	t.Helper()
	db, err := datastore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Reclaim(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
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
	t.Fatalf("%q is in no table of %s", needle, dir)
}

func dsKey(k []byte) ds.Key { return ds.RawKey(string(k)) }

// TestSubsCorruptLastBlockOfOlderTable: a publisher whose subscriber is
// away queues publications 1-5, which end up in a table of the bottom
// level, then 6-8, in a newer table; the older table's block holding 5,
// its last block of queued publications, is then damaged. That table's
// index sends the reads of 6-8 to the damaged block too. After both
// restart, the subscriber's receiver runs exactly once for each of 1-4 and
// 6-8, in order and with their sequences, the publisher counts one lost
// publication, publications queued afterwards survive another restart of
// the publisher, and a compaction of all of its data succeeds (the damaged
// block was cut out). 6-8 used to be deleted at the start, and a
// publication queued after it deleted at the next.
func TestSubsCorruptLastBlockOfOlderTable(t *testing.T) {
	t.Parallel()
	a, b, id := bulkPair(t)
	publish := func(from, to int) {
		t.Helper()
		var lines []string
		for k := from; k <= to; k++ {
			lines = append(lines, bulkData(k))
		}
		if code, stderr := a.publishStdin("bulk.x", lines); code != 0 {
			t.Fatalf("publish: exit %d: %s", code, stderr)
		}
	}
	publish(1, 5)
	a.mustRun("service", "stop")
	compactData(t, a.path("data"), true) // 1-5 in a table of the bottom level
	a.start()
	publish(6, 8)
	a.mustRun("service", "stop")
	compactData(t, a.path("data"), false) // 6-8 in a newer one
	older, newer := tableWithin(t, a.path("data"), bulkData(5)[:32]), tableWithin(t, a.path("data"), bulkData(6)[:32])
	if older == "" || newer == "" || older == newer {
		t.Fatalf("publication 5 is in table %q and 6 in %q: want two tables", older, newer)
	}
	flipTableBlock(t, a.path("data"), []byte(bulkData(5)[:32]))

	want := func(to int) string {
		var w []string
		for k := 1; k <= to; k++ {
			if k != 5 {
				w = append(w, fmt.Sprintf("%d %s", k, bulkData(k)[:24]))
			}
		}
		return strings.Join(w, "\n")
	}
	// delivered waits until the subscriber acked everything queued, then
	// checks what its receiver ran for: a publication acked cannot be
	// delivered again.
	delivered := func(when string, to int) {
		t.Helper()
		b.waitLines("got.txt", to-1, deliveryTimeout)
		checkFor(t, deliveryTimeout, func() error {
			subs := a.subscribers()
			if len(subs) != 1 || subs[0].ID != id || subs[0].Corrupt != 1 || subs[0].Depth != 0 {
				return fmt.Errorf("subscribers list: %+v, want %s with corrupt 1 and an empty queue", subs, id)
			}
			return nil
		})
		if got := strings.Join(b.readLines("got.txt"), "\n"); got != want(to) {
			t.Fatalf("%s: the subscriber got\n%s\nwant\n%s", when, got, want(to))
		}
	}
	a.start()
	b.start()
	delivered("after the damage", 8)

	// Queued afterwards, while the subscriber is away: kept across a
	// restart of the publisher.
	b.mustRun("service", "stop")
	publish(9, 10)
	a.mustRun("service", "stop")
	a.start()
	b.start()
	delivered("after another restart", 10)
	b.mustRun("service", "stop")
	a.mustRun("service", "stop")
	compactData(t, a.path("data"), true)
}

// compactData flushes the datastore of dir into tables and, with full,
// compacts them all into the bottom level.
func compactData(t *testing.T, dir string, full bool) {
	t.Helper()
	db, err := datastore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Reclaim(context.Background(), full); err != nil {
		db.Close()
		t.Fatalf("compact %s: %v", dir, err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// tableWithin names the sstable of dir that holds needle, or "".
func tableWithin(t *testing.T, dir, needle string) string {
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

// TestSubsCorruptMiddleBlock: publications 1-8 queued at a publisher whose
// subscriber is away, all in one table of the bottom level, and the block
// of 4 damaged. After both restart, the receiver runs exactly once for
// each of the others, in order with their sequences, the publisher counts
// one lost publication, and a compaction of all of its data succeeds: the
// damaged block was cut out. It used to be stepped over and left in its
// table, where every compaction of the table failed on it.
func TestSubsCorruptMiddleBlock(t *testing.T) {
	t.Parallel()
	const n, bad = 8, 4
	a, b, id := bulkPair(t)
	var lines, want []string
	for k := 1; k <= n; k++ {
		lines = append(lines, bulkData(k))
		if k != bad {
			want = append(want, fmt.Sprintf("%d %s", k, bulkData(k)[:24]))
		}
	}
	if code, stderr := a.publishStdin("bulk.x", lines); code != 0 {
		t.Fatalf("publish: exit %d: %s", code, stderr)
	}
	a.mustRun("service", "stop")
	compactData(t, a.path("data"), true)
	if tb := tableWithin(t, a.path("data"), bulkData(bad)[:32]); tb == "" || tb != tableWithin(t, a.path("data"), bulkData(1)[:32]) || tb != tableWithin(t, a.path("data"), bulkData(n)[:32]) {
		t.Fatalf("publications 1, %d and %d are not in one table", bad, n)
	}
	flipTableBlock(t, a.path("data"), []byte(bulkData(bad)[:32]))
	a.start()
	b.start()
	b.waitLines("got.txt", n-1, deliveryTimeout)
	// Once the queue is empty (everything acked), nothing can come again.
	checkFor(t, deliveryTimeout, func() error {
		subs := a.subscribers()
		if len(subs) != 1 || subs[0].ID != id || subs[0].Corrupt != 1 || subs[0].Depth != 0 {
			return fmt.Errorf("subscribers list: %+v, want %s with corrupt 1 and an empty queue", subs, id)
		}
		return nil
	})
	if got := b.readLines("got.txt"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("the subscriber got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	b.mustRun("service", "stop")
	a.mustRun("service", "stop")
	compactData(t, a.path("data"), true)
}
