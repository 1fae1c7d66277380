package datastore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	ds "github.com/ipfs/go-datastore"
)

func TestReopenPersists(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := NewStore[peerRecord](db.Batching(), "/peers")
	if err := s.Put(ctx, "p1", peerRecord{ID: "p1", Note: "kept"}); err != nil {
		t.Fatal(err)
	}
	if err := db.Sync(ctx, ds.NewKey("/peers")); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("second Close = %v, want nil", err)
	}
	if err := db.Sync(ctx, ds.NewKey("/")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Sync after Close = %v, want ErrClosed", err)
	}

	db2, err := Open(dir)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer db2.Close()
	got, err := NewStore[peerRecord](db2.Batching(), "/peers").Get(ctx, "p1")
	if err != nil {
		t.Fatalf("Get after reopen: %v", err)
	}
	if got.Note != "kept" {
		t.Fatalf("Get after reopen = %+v", got)
	}
	raw, err := db2.Batching().Get(ctx, SchemaVersionKey)
	if err != nil {
		t.Fatalf("schema version missing: %v", err)
	}
	if string(raw) != strconv.Itoa(SchemaVersion) {
		t.Fatalf("schema version = %q, want %d", raw, SchemaVersion)
	}
}

func TestOpenTwiceInProcessIsLocked(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(dir)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
	if !strings.Contains(err.Error(), dir) {
		t.Errorf("ErrLocked message %q should name the directory", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	// Close released the lock.
	db2, err := Open(dir)
	if err != nil {
		t.Fatalf("Open after Close = %v", err)
	}
	if err := db2.Close(); err != nil {
		t.Fatal(err)
	}
}

// helperEnv names the directory a child test process holds open for
// TestOpenLockedByOtherProcess.
const helperEnv = "COATTAIL_DATASTORE_LOCK_HELPER_DIR"

// TestLockHelperProcess is not a test by itself: when started by
// TestOpenLockedByOtherProcess it opens the datastore, reports readiness on
// stdout and holds the lock until stdin closes.
func TestLockHelperProcess(t *testing.T) {
	dir := os.Getenv(helperEnv)
	if dir == "" {
		t.Skip("helper process for TestOpenLockedByOtherProcess")
	}
	db, err := Open(dir, WithOwner(helperOwnerKind, helperOwnerCommand))
	if err != nil {
		os.Stdout.WriteString("error: " + err.Error() + "\n")
		os.Exit(2)
	}
	os.Stdout.WriteString("ready\n")
	_, _ = io.Copy(io.Discard, os.Stdin)
	if err := db.Close(); err != nil {
		os.Exit(3)
	}
	os.Exit(0)
}

func TestOpenLockedByOtherProcess(t *testing.T) {
	dir := t.TempDir()
	_, stop := startLockHelper(t, dir)

	_, err := Open(dir)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("Open while another process holds it = %v, want ErrLocked", err)
	}
	t.Logf("error shown to the user: %v", err)

	if err := stop(); err != nil {
		t.Fatalf("helper exited with %v", err)
	}
	db, err := Open(dir)
	if err != nil {
		t.Fatalf("Open after the other process exited = %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Batching().Put(ctx, SchemaVersionKey, []byte(strconv.Itoa(SchemaVersion+1))); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = Open(dir)
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("Open of newer schema = %v, want ErrSchemaTooNew", err)
	}
	if !strings.Contains(err.Error(), "upgrade coattail") {
		t.Errorf("error %q should tell the user what to do", err)
	}
	// The refused open must not keep the directory locked.
	_, err = Open(dir)
	if errors.Is(err, ErrLocked) {
		t.Fatalf("refused Open left the directory locked: %v", err)
	}
}

func TestOpenRefusesCorruptSchema(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Batching().Put(ctx, SchemaVersionKey, []byte("banana")); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open with corrupt schema version = %v, want ErrCorrupt", err)
	}
}

func TestOpenNotADirectory(t *testing.T) {
	f := t.TempDir() + "/file"
	if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(f)
	if err == nil {
		t.Fatal("Open of a regular file succeeded")
	}
	if errors.Is(err, ErrLocked) {
		t.Fatalf("Open of a regular file reported ErrLocked: %v", err)
	}
}

func TestSync(t *testing.T) {
	ctx := t.Context()
	mem := NewMemory()
	if err := mem.Sync(ctx, ds.NewKey("/")); err != nil {
		t.Fatalf("memory Sync = %v", err)
	}
	key := ds.NewKey("/queue/s/00000000000000000001")
	for _, opts := range [][]Option{nil, {WithSyncWrites(), WithCacheSize(1 << 20)}} {
		dir := t.TempDir()
		db, err := Open(dir, opts...)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Batching().Put(ctx, key, []byte("m")); err != nil {
			t.Fatal(err)
		}
		if err := db.Sync(ctx, ds.NewKey("/queue/s")); err != nil {
			t.Fatalf("pebble Sync = %v", err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		db, err = Open(dir, opts...)
		if err != nil {
			t.Fatal(err)
		}
		if v, err := db.Batching().Get(ctx, key); err != nil || string(v) != "m" {
			t.Fatalf("after Sync and reopen Get = %q, %v", v, err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestGetSorted(t *testing.T) {
	db, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := t.Context()
	b := db.Batching()
	for _, k := range []string{"/q/01", "/q/03", "/q/04", "/q/09"} {
		if err := b.Put(ctx, ds.RawKey(k), []byte("v"+k[3:])); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Delete(ctx, ds.RawKey("/q/04")); err != nil {
		t.Fatal(err)
	}
	sg, ok := b.(SortedGetter)
	if !ok {
		t.Fatal("the pebble Batching does not implement SortedGetter")
	}
	keys := [][]byte{[]byte("/q/00"), []byte("/q/01"), []byte("/q/02"), []byte("/q/03"), []byte("/q/04"), []byte("/q/09")}
	var got []string
	if err := sg.GetSorted(ctx, keys, func(i int, v []byte, _ error) error {
		got = append(got, string(keys[i])+"="+string(v))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := "/q/00= /q/01=v01 /q/02= /q/03=v03 /q/04= /q/09=v09"
	if s := strings.Join(got, " "); s != want {
		t.Fatalf("GetSorted = %q, want %q", s, want)
	}
	stop := errors.New("stop")
	calls := 0
	if err := sg.GetSorted(ctx, keys, func(int, []byte, error) error { calls++; return stop }); !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("GetSorted with a failing callback = %v after %d calls, want stop after 1", err, calls)
	}
	if err := sg.GetSorted(ctx, nil, func(int, []byte, error) error { t.Fatal("called for no keys"); return nil }); err != nil {
		t.Fatal(err)
	}
}

// A directory open in this process is locked whatever path names it: a
// symlink or a relative path (fcntl locks are per process, so a second
// Open would succeed, and closing it would release the lock for others).
func TestOpenTwiceThroughAnotherPathIsLocked(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "data")
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	alias := filepath.Join(parent, "alias")
	if err := os.Symlink(dir, alias); err != nil {
		t.Fatal(err)
	}
	t.Chdir(parent)
	for _, p := range []string{alias, "data", "./alias/../data"} {
		db2, err := Open(p)
		if err == nil {
			_ = db2.Close()
			t.Fatalf("Open(%q) of an open directory succeeded", p)
		}
		if !errors.Is(err, ErrLocked) {
			t.Fatalf("Open(%q) = %v, want ErrLocked", p, err)
		}
	}
}

// A pebble database that holds data but no schema version was not made by
// Coattail (Open writes the version before anything else, since the first
// release): Open must refuse it rather than stamp it as its own, after
// which the queues would delete keys under /queue they cannot parse.
func TestOpenRefusesForeignDatabase(t *testing.T) {
	for _, key := range []string{"/queue/log/x", "foreign-key"} {
		dir := t.TempDir()
		pdb, err := pebble.Open(dir, &pebble.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := pdb.Set([]byte(key), []byte("theirs"), pebble.Sync); err != nil {
			t.Fatal(err)
		}
		if err := pdb.Close(); err != nil {
			t.Fatal(err)
		}
		db, err := Open(dir)
		if err == nil {
			_ = db.Close()
			t.Fatalf("Open of a foreign database holding %q succeeded", key)
		}
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Open of a foreign database = %v, want ErrCorrupt", err)
		}
		t.Logf("error shown to the user: %v", err)
		pdb, err = pebble.Open(dir, &pebble.Options{})
		if err != nil {
			t.Fatal(err)
		}
		_, closer, err := pdb.Get(SchemaVersionKey.Bytes())
		if err == nil {
			_ = closer.Close()
			t.Errorf("the refused database was given a schema version")
		}
		if err := pdb.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// Open creates a database only in a new or empty directory: pointed at one
// that holds other files (a mistyped path, a home directory) it refuses,
// rather than scatter pebble's files among them, and changes nothing
// there. New and empty directories and existing databases still open.
func TestOpenRefusesDirectoryOfOtherFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "photos"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	db, err := Open(dir)
	if err == nil {
		_ = db.Close()
		t.Fatal("Open created a database among other files")
	}
	if !errors.Is(err, ErrNotDatastore) {
		t.Fatalf("Open of a directory of other files = %v, want ErrNotDatastore", err)
	}
	t.Logf("error shown to the user: %v", err)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "notes.txt,photos" {
		t.Errorf("the refused directory now holds %q", names)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("the refused directory's mode changed: %v, %v", fi.Mode(), err)
	}

	opens := map[string]string{
		"new":   filepath.Join(t.TempDir(), "data"),
		"empty": t.TempDir(),
		// An Open interrupted before pebble wrote its manifest.
		"lock only": t.TempDir(),
	}
	if err := os.WriteFile(filepath.Join(opens["lock only"], "LOCK"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, dir := range opens {
		db, err := Open(dir)
		if err != nil {
			t.Fatalf("Open of a %s directory = %v", name, err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		// Now an existing database, also with a file of someone else's
		// beside it.
		if err := os.WriteFile(filepath.Join(dir, "README"), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		db, err = Open(dir)
		if err != nil {
			t.Fatalf("reopening the database made in a %s directory = %v", name, err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// A database whose directory is deleted while it is open (a user's rm -rf
// of a running instance) is closed without the flush pebble does on close:
// that flush creates a new log file in the missing directory, and pebble
// ends the process when it cannot.
func TestCloseAfterDirectoryDeleted(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Batching().Put(context.Background(), ds.NewKey("/k"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "removed") {
		t.Fatalf("Close after the directory was deleted: %v", err)
	}
}

// Reclaim gives back the disk space of deleted entries that a flush alone
// would otherwise leave until the memtable filled: the files that held
// only them go.
func TestReclaimFreesDeletedEntries(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	sstBytes := func() int64 {
		var n int64
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if strings.HasSuffix(e.Name(), ".sst") {
				if fi, err := e.Info(); err == nil {
					n += fi.Size()
				}
			}
		}
		return n
	}
	val := bytes.Repeat([]byte{'x'}, 64<<10)
	b := db.Batching()
	for i := range 100 {
		if err := b.Put(ctx, ds.NewKey(fmt.Sprintf("/reclaim/%04d", i)), val); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Reclaim(ctx, false); err != nil {
		t.Fatal(err)
	}
	if n := sstBytes(); n < 6<<20 {
		t.Fatalf("%d bytes of tables after flushing 6.4 MB of entries", n)
	}
	// As the queues delete delivered publications: one range tombstone.
	sb, err := b.(interface {
		SizedBatch(context.Context, int) (ds.Batch, error)
	}).SizedBatch(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := sb.(interface {
		DeleteRange(context.Context, []byte, []byte) error
	}).DeleteRange(ctx, []byte("/reclaim/0000"), []byte("/reclaim/9999")); err != nil {
		t.Fatal(err)
	}
	if err := sb.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// A flush is enough: pebble drops the tables the tombstone covers.
	if err := db.Reclaim(ctx, false); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for sstBytes() > 1<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes of tables left after deleting everything and reclaiming", sstBytes())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := db.Reclaim(ctx, true); err != nil {
		t.Fatalf("Reclaim with compaction: %v", err)
	}
	if err := NewMemory().Reclaim(ctx, true); err != nil {
		t.Errorf("in-memory Reclaim: %v", err)
	}
}

// A write-ahead log takes the disk its writes need, not the 70 MiB pebble
// preallocates for each (110% of the memtable): right after Open some
// eight small logs took ~560 MiB, enough to fill a disk that the disk
// guard's reserve (limits.min_free_disk) still called roomy.
func TestWALNotPreallocated(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Batching().Put(ctx, ds.NewKey("/x"), []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := db.Sync(ctx, ds.NewKey("/")); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	logs := 0
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".log") {
			continue
		}
		logs++
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(dir, e.Name()), &st); err != nil {
			t.Fatal(err)
		}
		if alloc := st.Blocks * 512; alloc > 8<<20 {
			t.Errorf("%s: %d bytes allocated for a log holding one small entry", e.Name(), alloc)
		}
	}
	if logs == 0 {
		t.Fatal("no write-ahead log found")
	}
}
