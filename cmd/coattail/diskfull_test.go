package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A publisher whose disk fills while its subscriber is away refuses
// further publications with an error that says why, and keeps running:
// pebble exits the process when a write finds the disk full, so the
// service used to die ("pebble: fatal commit error: … no space left on
// device") with the publisher's CLI told only that the service closed the
// connection. Everything it accepted is delivered once the subscriber is
// back, and it accepts publications again once they are. The publisher's
// instance lives on a small tmpfs, which needs root (CI runs as root).
func TestPublisherDiskFull(t *testing.T) { publisherDiskFull(t, "512m", 128<<20, true) }

// The same with a reserve smaller than pebble's memtable (64 MiB):
// publications were let in until the disk had the reserve free, but
// pebble's flush writes the memtable's content again (it is in the
// write-ahead log already) and found no room: pebble ended the process
// ("fatal commit error: … no space left on device"), or retried the flush
// for ever with every write waiting for it (the subscriber that came back
// got nothing, service stop timed out). Here the refusal may be of the
// last batch alone and a flush gives the room back, so the status need
// not show the disk low.
func TestPublisherDiskFullSmallReserve(t *testing.T) { publisherDiskFull(t, "300m", 16<<20, false) }

func publisherDiskFull(t *testing.T, size string, reserve uint64, statusLow bool) {
	needBinary(t)
	stop := t.Skipf
	if os.Getenv("COATTAIL_REQUIRE_NAT_TESTS") != "" {
		stop = t.Fatalf
	}
	if runtime.GOOS != "linux" || os.Geteuid() != 0 {
		stop("disk full: needs root on Linux to mount a tmpfs")
	}
	parent, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", parent).CombinedOutput(); err != nil {
		stop("mount tmpfs: %v: %s", err, out)
	}
	// Registered before the service starts, so it runs after the
	// service's cleanup has stopped it.
	t.Cleanup(func() {
		// The service's files may stay busy for a moment after it exited.
		var out []byte
		for try := 0; try < 50; try++ {
			if out, err = exec.Command("umount", parent).CombinedOutput(); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("umount %s: %v: %s", parent, err, out)
	})
	pub := &instance{t: t, name: "pub", dir: filepath.Join(parent, "pub")}
	if _, stderr, code := pub.runIn(parent, "new", "pub", "--loopback", "--port", "0"); code != 0 {
		t.Fatalf("new: exit %d: %s", code, stderr)
	}
	pub.setConfig("min_free_disk", strconv.FormatUint(reserve>>20, 10)+"MiB")
	pub.start()
	sub := newInstance(t, "sub")
	// Records the start of each publication ({"n":<n>,...); reading 256
	// KiB with the shell's read would take a system call per byte.
	sub.writeScript("receivers", "rec", `data=$(head -c 16); cat >/dev/null
echo "$COATTAIL_SUBJECT $COATTAIL_SEQUENCE $COATTAIL_HOP $data" >>got.txt
`)
	sub.start()
	sub.addPeer(pub, "--subscribable", "fill.>", "--publishable", "fill.>")
	sub.subscribe(pub, "fill.>", "rec")
	sub.mustRun("service", "stop")

	// 256 KiB publications, 40 a batch, until a batch is refused.
	pad := strings.Repeat("x", 256<<10)
	accepted, refused := 0, ""
	for batch := 0; batch < 60 && refused == ""; batch++ {
		lines := make([]string, 40)
		for k := range lines {
			lines[k] = fmt.Sprintf(`{"n":%d,"pad":"%s"}`, accepted+k+1, pad)
		}
		code, stderr := pub.publishStdin("fill.a", lines)
		if code == 0 {
			accepted += len(lines)
		} else {
			// The lines before the refused one were published (the
			// batch is split to publish those that fit).
			m := publishedBefore.FindStringSubmatch(stderr)
			if m == nil {
				t.Fatalf("refusal %q does not say how many lines were published", stderr)
			}
			n, _ := strconv.Atoi(m[1])
			accepted += n
			refused = stderr
		}
	}
	if refused == "" {
		t.Fatalf("%d publications of 256 KiB accepted on a %s disk with %d MiB reserved", accepted, size, reserve>>20)
	}
	// Then one at a time, down to the reserve: a batch may have been
	// refused alone, with room left for smaller ones.
	for k := 0; k < 400; k++ {
		code, stderr := pub.publishStdin("fill.a", []string{fmt.Sprintf(`{"n":%d,"pad":"%s"}`, accepted+1, pad)})
		if code != 0 {
			refused = stderr
			break
		}
		accepted++
	}
	for _, want := range []string{"disk", "min_free_disk"} {
		if !strings.Contains(refused, want) {
			t.Errorf("refusal %q lacks %q", refused, want)
		}
	}
	if !processAlive(pub.pid) {
		t.Fatalf("the publisher's service died when its disk filled; its log:\n%s", tailFile(pub.path("service.log")))
	}
	t.Logf("%d accepted before: %s", accepted, strings.TrimSpace(refused))
	if !pub.logContains("publication refused: the disk is almost full") {
		t.Error("the publisher's log does not say why it refused")
	}
	if statusLow {
		checkDiskLowStatus(t, pub)
	}

	// The subscriber comes back and gets everything accepted, once each,
	// in order.
	t.Logf("%s: the subscriber comes back", time.Now().Format(time.TimeOnly))
	sub.start()
	lines := sub.waitLines("got.txt", accepted, 3*time.Minute)
	for k, l := range lines {
		if want := fmt.Sprintf(`fill.a %d 0 {"n":%d,`, k+1, k+1); !strings.HasPrefix(l, want) {
			t.Fatalf("line %d: %.60q, want prefix %q (%d lines, want %d)", k+1, l, want, len(lines), accepted)
		}
	}
	if len(lines) != accepted {
		t.Fatalf("%d deliveries, want %d", len(lines), accepted)
	}
	t.Logf("%s: all delivered", time.Now().Format(time.TimeOnly))
	// With the queue drained the disk has room again (the publisher
	// reclaims the space of delivered publications while it refuses).
	checkFor(t, time.Minute, func() error {
		code, stderr := pub.publishStdin("fill.a", []string{strconv.Quote("after")})
		if code != 0 {
			return fmt.Errorf("publish after the drain: exit %d: %s", code, stderr)
		}
		return nil
	})
	sub.waitLastLine("got.txt", `"after"`, time.Minute)
	pub.mustRun("service", "stop")
}

// publishedBefore matches how many lines a refused `publish --stdin`
// published.
var publishedBefore = regexp.MustCompile(`(\d+) line\(s\) before stdin line \d+ were published`)

// checkDiskLowStatus checks that service status shows pub's disk low.
func checkDiskLowStatus(t *testing.T, pub *instance) {
	t.Helper()
	var list []struct {
		Instance string `json:"instance"`
		DiskFree uint64 `json:"disk_free"`
		DiskLow  bool   `json:"disk_low"`
	}
	pub.decodeJSON(pub.mustRun("service", "status", "--json"), &list)
	found := false
	for _, st := range list {
		if st.Instance != pub.dir {
			continue
		}
		found = true
		// Low: below the reserve plus what the datastore has yet to
		// write from memory.
		if !st.DiskLow || st.DiskFree == 0 {
			t.Errorf("service status --json: disk_free %d, disk_low %v", st.DiskFree, st.DiskLow)
		}
	}
	if !found {
		t.Errorf("service status --json does not list %s", pub.dir)
	}
	if _, stderr, _ := pub.run("service", "status"); !strings.Contains(stderr, "less than limits.min_free_disk") {
		t.Errorf("service status says nothing of the disk on stderr: %q", stderr)
	}
}

// tailFile is the end of a file, for failure messages.
func tailFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b[max(0, len(b)-4096):])
}
