package datastore

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"
)

// Review: Reclaim(ctx, true) rewrites the whole database; on a nearly full
// disk whose data is live (a subscriber away) it needs free space about
// the size of that data, so it drove the disk to ENOSPC itself. On a
// tmpfs of its own (root).
func TestReviewReclaimCompactFillsDisk(t *testing.T) {
	mnt := tmpfs(t, "1g")
	ctx := context.Background()
	dir := filepath.Join(mnt, "db")
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	b := db.Batching()
	val := make([]byte, 64<<10)
	for i := range 2400 { // 150 MiB live, incompressible
		_, _ = rand.Read(val)
		if err := b.Put(ctx, ds.NewKey(fmt.Sprintf("/q/%06d", i)), val); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Reclaim(ctx, false); err != nil {
		t.Fatal(err)
	}
	// Fill the disk until 100 MiB are free (< the default 256 MiB min_free_disk).
	f, err := os.Create(filepath.Join(mnt, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for {
		free, _ := db.FreeSpace()
		if free <= 100<<20 {
			break
		}
		if _, err := f.Write(chunk); err != nil {
			break
		}
	}
	f.Close()
	before, _ := db.FreeSpace()
	err = db.Reclaim(ctx, true)
	after, _ := db.FreeSpace()
	t.Logf("Reclaim(compact) = %v; free %d MiB before, %d MiB after", err, before>>20, after>>20)
	// Before the fix: "compact: write …sst: no space left on device",
	// with 0 bytes left (any commit then would have ended the process).
	if err != nil && strings.Contains(err.Error(), "no space left") {
		t.Errorf("the full compaction filled the disk: %v", err)
	}
	if after < before/2 {
		t.Errorf("free space went from %d to %d MiB", before>>20, after>>20)
	}
}

// tmpfs mounts a tmpfs of size on a new directory for the test (unmounted
// when it ends) and returns it. It needs root on Linux: the test is skipped
// without, or fails with COATTAIL_REQUIRE_NAT_TESTS set (CI runs as root).
func tmpfs(t *testing.T, size string) string {
	t.Helper()
	stop := t.Skipf
	if os.Getenv("COATTAIL_REQUIRE_NAT_TESTS") != "" {
		stop = t.Fatalf
	}
	if runtime.GOOS != "linux" || os.Geteuid() != 0 {
		stop("needs root on Linux to mount a tmpfs")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		stop("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		var out []byte
		var err error
		for try := 0; try < 50; try++ {
			if out, err = exec.Command("umount", dir).CombinedOutput(); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("umount %s: %v: %s", dir, err, out)
	})
	return dir
}
