package datastore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
)

// damagedDB writes /d/1 to /d/5 (8 KiB values, a table block each),
// flushes them into a table, and flips a byte of /d/3's value there.
func damagedDB(t *testing.T) (string, func(i int) []byte) {
	t.Helper()
	dir := t.TempDir()
	ctx := context.Background()
	val := func(i int) []byte { return []byte(fmt.Sprintf("v%d-%s", i, strings.Repeat(fmt.Sprint(i), 8<<10))) }
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 5; i++ {
		if err := db.Batching().Put(ctx, ds.NewKey(fmt.Sprintf("/d/%d", i)), val(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Reclaim(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	ssts, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
	flipped := false
	for _, f := range ssts {
		b, _ := os.ReadFile(f)
		if i := bytes.Index(b, val(3)[:64]); i >= 0 {
			b[i+32] ^= 0xff
			if err := os.WriteFile(f, b, 0o600); err != nil {
				t.Fatal(err)
			}
			flipped = true
		}
	}
	if !flipped {
		t.Fatal("value not found in the tables")
	}
	return dir, val
}

// TestDamagedBlockReported: a read of a damaged table block fails with an
// error IsCorruption recognises, and does not end the process (pebble's
// default); a query over it fails rather than end early as if the data
// ended there (go-ds-pebble's scan did); GetSorted reports the damaged
// key and reads the others.
func TestDamagedBlockReported(t *testing.T) {
	dir, val := damagedDB(t)
	ctx := context.Background()
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Batching().Get(ctx, ds.NewKey("/d/3")); !IsCorruption(err) {
		t.Fatalf("Get of the damaged key = %v, want a corruption error", err)
	}
	if v, err := db.Batching().Get(ctx, ds.NewKey("/d/4")); err != nil || !bytes.Equal(v, val(4)) {
		t.Fatalf("Get of a key after the damaged one = %v", err)
	}
	res, err := db.Batching().Query(ctx, query.Query{Prefix: "/d", Orders: []query.Order{query.OrderByKey{}}})
	if err == nil {
		_, err = res.Rest()
	}
	if !IsCorruption(err) {
		t.Fatalf("Query over the damaged block = %v, want a corruption error", err)
	}
	keys := [][]byte{[]byte("/d/1"), []byte("/d/2"), []byte("/d/3"), []byte("/d/4"), []byte("/d/5")}
	var got []string
	err = db.Batching().(SortedGetter).GetSorted(ctx, keys, func(i int, v []byte, err error) error {
		switch {
		case err != nil:
			if !IsCorruption(err) {
				t.Errorf("key %s: %v, want a corruption error", keys[i], err)
			}
			got = append(got, string(keys[i])+"=damaged")
		case bytes.Equal(v, val(i+1)):
			got = append(got, string(keys[i])+"=ok")
		default:
			got = append(got, string(keys[i])+"=wrong")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("GetSorted: %v", err)
	}
	if s := strings.Join(got, " "); s != "/d/1=ok /d/2=ok /d/3=damaged /d/4=ok /d/5=ok" {
		t.Fatalf("GetSorted: %s", s)
	}
}

// TestOpenDamagedManifest: a database pebble cannot open because its
// manifest is damaged is refused with ErrCorrupt and advice naming the
// directory, not a panic or an exit.
func TestOpenDamagedManifest(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	ms, _ := filepath.Glob(filepath.Join(dir, "MANIFEST-*"))
	if len(ms) == 0 {
		t.Fatal("no manifest")
	}
	for _, m := range ms {
		b, err := os.ReadFile(m)
		if err != nil {
			t.Fatal(err)
		}
		for i := 8; i < len(b); i++ {
			b[i] ^= 0x5a
		}
		if err := os.WriteFile(m, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, err = Open(dir)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "move it aside") {
		t.Fatalf("Open of a damaged database = %v, want ErrCorrupt naming %s and what to do", err, dir)
	}
	// The lock was released: a retry is told the same, not "locked".
	if _, err := Open(dir); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("second Open = %v", err)
	}
}

// TestDamageLoggedOncePerFile: pebble reports damage at every read that
// meets it (and at every retry of a compaction over it, ~50 a second in
// level 0); the log gets the first report of each file at once and then at
// most a line a minute counting the rest, while CorruptionEvents counts
// them all.
func TestDamageLoggedOncePerFile(t *testing.T) {
	dir, _ := damagedDB(t)
	ctx := context.Background()
	var mu sync.Mutex
	var lines []string
	h := slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		if bytes.Contains(p, []byte("on-disk corruption")) {
			lines = append(lines, string(p))
		}
		return len(p), nil
	}), nil)
	db, err := Open(dir, WithLogger(slog.New(h)))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	read := func(n int) {
		t.Helper()
		for range n {
			if _, err := db.Batching().Get(ctx, ds.NewKey("/d/3")); !IsCorruption(err) {
				t.Fatalf("Get of the damaged key = %v, want a corruption error", err)
			}
		}
	}
	read(100)
	mu.Lock()
	got := len(lines)
	mu.Unlock()
	if got != 1 || db.CorruptionEvents() < 100 {
		t.Fatalf("100 reads of a damaged block: %d log line(s), %d events; want 1 line and at least 100 events", got, db.CorruptionEvents())
	}
	// A minute later (made 0 here), the next report is logged with the
	// count of those left out.
	prev := damageLogEvery
	damageLogEvery = 0
	defer func() { damageLogEvery = prev }()
	read(1)
	mu.Lock()
	defer mu.Unlock()
	if len(lines) != 2 || !strings.Contains(lines[1], "reports_since_last_line=") {
		t.Fatalf("after the interval: lines %q, want a second one counting the reports left out", lines)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestBackgroundErrorsLoggedOnce: pebble's background errors (a
// compaction it retries, failing the same way every few tens of
// milliseconds) share the damage reports' limit: the first at once, then
// one line a minute counting those left out.
func TestBackgroundErrorsLoggedOnce(t *testing.T) {
	var lines []string
	l := &damageLog{files: map[string]*damagedFile{}, log: slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		lines = append(lines, string(p))
		return len(p), nil
	}), nil))}
	for range 100 {
		l.background(errors.New("compaction failed: pebble: checksum mismatch"))
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "background work failed") {
		t.Fatalf("100 background errors logged as %q, want one line", lines)
	}
	prev := damageLogEvery
	damageLogEvery = 0
	defer func() { damageLogEvery = prev }()
	l.background(errors.New("compaction failed again"))
	if len(lines) != 2 || !strings.Contains(lines[1], "errors_since_last_line=99") {
		t.Fatalf("after the interval: %q, want a line counting the 99 left out", lines)
	}
}
