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
			a, b := newInstance(t, "a"), newInstance(t, "b")
			a.fixPort()
			b.writeScript("receivers", "rec", `data=$(head -c 24); cat >/dev/null
echo "$COATTAIL_SEQUENCE $data" >>got.txt
`)
			a.start()
			b.start()
			b.addPeer(a, "--subscribable", "bulk.>")
			id := b.subscribe(a, "bulk.>", "rec")
			b.mustRun("service", "stop")
			// 8 KiB each: every publication has table blocks of its own.
			pad := strings.Repeat("p", 8<<10)
			data := func(k int) string { return fmt.Sprintf(`{"n":"%03d","pad":"%s"}`, k, pad) }
			lines := make([]string, n)
			for k := range lines {
				lines[k] = data(k + 1)
			}
			if code, stderr := a.publishStdin("bulk.x", lines); code != 0 {
				t.Fatalf("publish: exit %d: %s", code, stderr)
			}
			a.mustRun("service", "stop")
			tc.damage(t, a.path("data"), []byte(data(bad)[:32]))

			a.start()
			b.start()
			b.waitLines("got.txt", n-1, deliveryTimeout)
			var want []string
			for k := 1; k <= n; k++ {
				if k != bad {
					want = append(want, fmt.Sprintf("%d %s", k, data(k)[:24]))
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
					Corrupt uint64 `json:"corrupt"`
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
