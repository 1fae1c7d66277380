package datastore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	ds "github.com/ipfs/go-datastore"
)

// tableWith names the sstable of dir that holds needle, or "".
func tableWith(t *testing.T, dir string, needle []byte) string {
	t.Helper()
	ssts, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
	for _, f := range ssts {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, needle) {
			return f
		}
	}
	return ""
}

// TestCutDamageLastBlock: /d/1 to /d/5 and /z are in an older table (of
// the bottom level), /d/6 to /d/8 in a newer one; /d/5's block, the
// older table's last block of /d keys, is damaged. The older table's
// index sends every key from /d/5 to its /z to that block, so /d/6 to
// /d/8 cannot be read, nor stepped over (a scan from /d/6 fails too).
// CutDamage removes the span around the block and rewrites what it held
// elsewhere: everything but /d/5 reads again, at once and after a
// compaction of every table and a reopen.
func TestCutDamageLastBlock(t *testing.T) {
	for _, tc := range []struct {
		name    string
		damaged []int
		want    string
	}{
		{"last", []int{5}, "/d/1 /d/2 /d/3 /d/4 /d/5=wrong /d/6 /d/7 /d/8 /z"},
		// Two damaged blocks side by side: the span covers both.
		{"last two", []int{4, 5}, "/d/1 /d/2 /d/3 /d/4=wrong /d/6 /d/7 /d/8 /z"},
		// The table's first block: the span starts at its first key.
		{"all", []int{1, 2, 3, 4, 5}, "/d/1=wrong /d/6 /d/7 /d/8 /z"},
	} {
		t.Run(tc.name, func(t *testing.T) { testCutDamage(t, tc.damaged, tc.want) })
		// Without the block pebble's error names: the one a read of at
		// loads and finds damaged.
		t.Run(tc.name+" found", func(t *testing.T) {
			namedBlocks = false
			defer func() { namedBlocks = true }()
			testCutDamage(t, tc.damaged, tc.want)
		})
	}
}

func testCutDamage(t *testing.T, damaged []int, want string) {
	dir := t.TempDir()
	ctx := context.Background()
	val := func(i int) []byte { return []byte(fmt.Sprintf("v%d-%s", i, strings.Repeat(fmt.Sprint(i), 8<<10))) }
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	put := func(k string, v []byte) {
		t.Helper()
		if err := db.Batching().Put(ctx, ds.NewKey(k), v); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 5; i++ {
		put(fmt.Sprintf("/d/%d", i), val(i))
	}
	put("/z", []byte("z"))
	if err := db.Reclaim(ctx, true); err != nil {
		t.Fatal(err)
	}
	for i := 6; i <= 8; i++ {
		put(fmt.Sprintf("/d/%d", i), val(i))
	}
	if err := db.Reclaim(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	old, newer := tableWith(t, dir, val(5)[:64]), tableWith(t, dir, val(6)[:64])
	if old == "" || newer == "" || old == newer {
		t.Fatalf("/d/5 is in %q and /d/6 in %q: want two tables", old, newer)
	}
	b, err := os.ReadFile(old)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range damaged {
		b[bytes.Index(b, val(i)[:64])+32] ^= 0xff
	}
	if err := os.WriteFile(old, b, 0o600); err != nil {
		t.Fatal(err)
	}
	at := fmt.Sprintf("/d/%d", damaged[0])

	scan := func(db *DB, from string) (string, error) {
		var got []string
		err := db.Batching().(Scanner).Scan(ctx, []byte(from), []byte("0"), func(k, v []byte) error {
			switch {
			case bytes.HasPrefix(k, []byte("/meta/")):
			case string(k) == "/z":
				got = append(got, "/z")
			case bytes.Equal(v, val(int(k[len(k)-1]-'0'))):
				got = append(got, string(k))
			default:
				got = append(got, string(k)+"=wrong")
			}
			return nil
		})
		return strings.Join(got, " "), err
	}
	db, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, cause := scan(db, at)
	if !IsCorruption(cause) {
		t.Fatalf("scan from %s = %v, want a corruption error", at, cause)
	}
	if _, err := scan(db, "/d/6"); !IsCorruption(err) {
		t.Fatalf("scan from /d/6 = %v, want a corruption error (the damaged block's index key covers it)", err)
	}
	var next []byte
	cut, err := db.Batching().(DamageCutter).CutDamage(ctx, cause, []byte(at), []byte("/d0"), func(n []byte) ([]KV, error) {
		next = bytes.Clone(n)
		return []KV{{Key: []byte(at), Value: []byte("lost")}}, nil
	})
	if err != nil || !cut {
		t.Fatalf("CutDamage = %v, %v", cut, err)
	}
	if string(next) != "/d/6" {
		t.Fatalf("next = %q, want /d/6", next)
	}
	if tmp, _ := filepath.Glob(filepath.Join(dir, "*.tmp")); len(tmp) > 0 {
		t.Fatalf("left behind: %v", tmp)
	}
	if got, err := scan(db, "/"); err != nil || got != want {
		t.Fatalf("after the cut: %s (%v), want %s", got, err, want)
	}
	if err := db.Reclaim(ctx, true); err != nil {
		t.Fatalf("compaction after the cut: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if got, err := scan(db, "/"); err != nil || got != want {
		t.Fatalf("after a compaction and a reopen: %s (%v), want %s", got, err, want)
	}
	if v := db.pebble.DB.FormatMajorVersion(); v < pebble.FormatVirtualSSTables {
		t.Fatalf("format major version %d", v)
	}
}

// TestCutDamageNotLocated: an error that names no table, or one whose
// damage is not where a read of at goes, changes nothing.
func TestCutDamageNotLocated(t *testing.T) {
	dir, _ := damagedDB(t)
	ctx := context.Background()
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_, cause := db.Batching().Get(ctx, ds.NewKey("/d/3"))
	if !IsCorruption(cause) {
		t.Fatalf("Get of the damaged key = %v", cause)
	}
	dc := db.Batching().(DamageCutter)
	defer func() { namedBlocks = true }()
	mark := func([]byte) ([]KV, error) { t.Fatal("mark called"); return nil, nil }
	for _, named := range []bool{true, false} {
		namedBlocks = named
		for _, tc := range []struct {
			cause error
			at    string
		}{
			{fmt.Errorf("%w: not pebble's", ErrCorrupt), "/d/3"},
			{cause, "/d/1"}, // readable
			{cause, "/d/4"}, // readable
			{cause, "/d/5"}, // readable
		} {
			if cut, err := dc.CutDamage(ctx, tc.cause, []byte(tc.at), []byte("/d0"), mark); cut || err != nil {
				t.Fatalf("CutDamage(%v, %s), named %v = %v, %v; want false, nil", tc.cause, tc.at, named, cut, err)
			}
		}
	}
	if v := db.pebble.DB.FormatMajorVersion(); v >= pebble.FormatVirtualSSTables {
		t.Fatalf("format major version raised to %d without a cut", v)
	}
}

// TestCutBlockWhileOpen: a table block that goes bad while the database is
// open is met by a compaction, which fails (pebble retries it for ever).
// The report is kept for DamageWatcher; CutBlock refuses to cut where the
// span reaches outside the range it is given, and changes nothing then;
// within it, it cuts the block out with what mark returns, keeping every
// other key, and the compaction succeeds. The block is not found again.
func TestCutBlockWhileOpen(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	val := func(i int) []byte { return []byte(fmt.Sprintf("v%d-%s", i, strings.Repeat(fmt.Sprint(i), 8<<10))) }
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for i := 1; i <= 5; i++ {
		if err := db.Batching().Put(ctx, ds.NewKey(fmt.Sprintf("/d/%d", i)), val(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Batching().Put(ctx, ds.NewKey("/z"), []byte("z")); err != nil {
		t.Fatal(err)
	}
	if err := db.Reclaim(ctx, false); err != nil {
		t.Fatal(err)
	}
	tb := tableWith(t, dir, val(3)[:64])
	if tb == "" {
		t.Fatal("/d/3 is in no table")
	}
	b, err := os.ReadFile(tb)
	if err != nil {
		t.Fatal(err)
	}
	b[bytes.Index(b, val(3)[:64])+32] ^= 0xff
	if err := os.WriteFile(tb, b, 0o600); err != nil {
		t.Fatal(err)
	}
	// A table that overlaps it: a compaction merges the two (one table
	// alone is moved to another level without being read).
	if err := db.Batching().Put(ctx, ds.NewKey("/z"), []byte("z")); err != nil {
		t.Fatal(err)
	}
	if err := db.Reclaim(ctx, false); err != nil {
		t.Fatal(err)
	}
	dw := db.Batching().(DamageWatcher)
	// A compaction of both: it fails on the block, and is retried until
	// its context ends (pebble's manual compaction waits for one that
	// succeeds).
	cctx, cancel := context.WithCancel(ctx)
	compacted := make(chan error, 1)
	go func() { compacted <- db.Reclaim(cctx, true) }()
	<-dw.DamageReported()
	cancel()
	if err := <-compacted; err == nil {
		t.Fatal("compaction over the damaged block succeeded")
	}
	reports := dw.TakeDamage()
	if len(reports) != 1 || reports[0].File != tb || !IsCorruption(reports[0].Err) {
		t.Fatalf("reports %v, want one of %s", reports, tb)
	}
	d := reports[0]
	mark := func(start, end []byte, kept [][]byte) ([]KV, error) {
		t.Fatalf("mark called for %q to %q", start, end)
		return nil, nil
	}
	if cut, err := dw.CutBlock(ctx, d, []byte("/d/3"), []byte("/d0"), mark); cut || !errors.Is(err, errOutside) {
		t.Fatalf("CutBlock within /d/3 to /d0 = %v, %v; want the span refused", cut, err)
	}
	if _, err := db.Batching().Get(ctx, ds.NewKey("/d/3")); !IsCorruption(err) {
		t.Fatalf("read of /d/3 after a refused cut = %v, want a corruption error", err)
	}
	var span string
	cut, err := dw.CutBlock(ctx, d, []byte("/d/"), []byte("/d0"), func(start, end []byte, kept [][]byte) ([]KV, error) {
		span = fmt.Sprintf("%s %s %q", start, end, kept)
		return []KV{{Key: []byte("/d/3"), Value: []byte("lost")}}, nil
	})
	if err != nil || !cut {
		t.Fatalf("CutBlock = %v, %v", cut, err)
	}
	if span != `/d/2 /d/4 ["/d/2"]` {
		t.Fatalf("mark given %s, want the span /d/2 to /d/4 keeping /d/2", span)
	}
	cctx, cancel = context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := db.Reclaim(cctx, true); err != nil {
		t.Fatalf("compaction after the cut: %v", err)
	}
	for i := 1; i <= 5; i++ {
		v, err := db.Batching().Get(ctx, ds.NewKey(fmt.Sprintf("/d/%d", i)))
		want := val(i)
		if i == 3 {
			want = []byte("lost")
		}
		if err != nil || !bytes.Equal(v, want) {
			t.Fatalf("/d/%d after the cut: %.16q, %v", i, v, err)
		}
	}
	if v, err := db.Batching().Get(ctx, ds.NewKey("/z")); err != nil || string(v) != "z" {
		t.Fatalf("/z after the cut: %q, %v", v, err)
	}
	if cut, err := dw.CutBlock(ctx, d, []byte("/d/"), []byte("/d0"), mark); cut || err != nil {
		t.Fatalf("CutBlock of a block cut out already = %v, %v; want false, nil", cut, err)
	}
}
