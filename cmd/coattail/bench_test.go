package main

import (
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/coattail/coattail/node/perf"
)

// `coattail bench` runs real instances and prints the durable rate beside
// the raw stream, disk and datastore baselines it measured, with their
// ratios.
func TestBenchCommand(t *testing.T) {
	i := newInstance(t, "bench")
	check := func(r perf.DeliveryResult, size, subs, messages int, mode, transport, receiver string) {
		t.Helper()
		if r.Size != size || r.Subscribers != subs || r.Messages != messages || r.Mode != mode || r.Transport != transport || r.Receiver != receiver {
			t.Fatalf("result describes another run: %+v", r)
		}
		if r.MsgsPerSec <= 0 || r.RawMsgsPerSec <= 0 || r.DiskMBPerSec <= 0 || r.StoreMBPerSec <= 0 || r.Seconds <= 0 || r.Cores <= 0 {
			t.Fatalf("result has a rate that is not positive: %+v", r)
		}
		if r.RawRuns[0] <= 0 || r.RawRuns[1] <= 0 || r.RawMsgsPerSec != max(r.RawRuns[0], r.RawRuns[1]) {
			t.Fatalf("raw baseline %v is not the faster of its two runs %v", r.RawMsgsPerSec, r.RawRuns)
		}
		if got, want := r.XRaw, r.MsgsPerSec/r.RawMsgsPerSec; math.Abs(got-want) > 1e-9*want {
			t.Fatalf("x_raw = %v, want msgs/s / raw msgs/s = %v", got, want)
		}
		if got, want := r.MBPerSec, r.MsgsPerSec*float64(size)/1e6; math.Abs(got-want) > 1e-9*want {
			t.Fatalf("mb_per_sec = %v, want %v", got, want)
		}
		store := r.StoreMBPerSec * 1e6 / float64(size) // msgs/s
		if got, want := r.XStore, r.MsgsPerSec/store; math.Abs(got-want) > 1e-9*want {
			t.Fatalf("x_store = %v, want msgs/s / store msgs/s = %v", got, want)
		}
		if got, want := r.StoreXRaw, store/r.RawMsgsPerSec; math.Abs(got-want) > 1e-9*want {
			t.Fatalf("store_x_raw = %v, want store msgs/s / raw msgs/s = %v", got, want)
		}
	}

	dir := t.TempDir()
	var r perf.DeliveryResult
	prof := filepath.Join(t.TempDir(), "cpu.pprof")
	i.decodeJSON(i.mustRun("bench", "--messages", "5000", "--json", "--dir", dir, "--keep", "--cpuprofile", prof), &r)
	check(r, 128, 1, 5000, "paced", "tcp", "inprocess")
	if b, err := os.ReadFile(prof); err != nil || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
		t.Fatalf("--cpuprofile did not write a (gzipped) pprof profile: %d bytes, %v", len(b), err)
	}
	if r.Window != perf.DefaultWindow {
		t.Fatalf("paced window = %d, want the default %d", r.Window, perf.DefaultWindow)
	}
	for _, sub := range []string{"publisher", "subscriber-0"} {
		if _, err := os.Stat(filepath.Join(benchRunDir(t, dir), sub, "config.yml")); err != nil {
			t.Fatalf("--dir --keep does not hold the %s instance: %v", sub, err)
		}
	}

	// A process per publication, two subscriber hosts, QUIC, a backlog.
	r = perf.DeliveryResult{}
	i.decodeJSON(i.mustRun("bench", "--mode", "burst", "--receiver", "executable", "--messages", "40",
		"--subscribers", "2", "--transport", "quic", "--size", "1KiB", "--json"), &r)
	check(r, 1024, 2, 40, "burst", "quic", "executable")

	// Each subscriber in a process of its own (this binary), which exits
	// with the bench.
	r = perf.DeliveryResult{}
	dir = t.TempDir()
	i.decodeJSON(i.mustRun("bench", "--processes", "--subscribers", "2", "--messages", "3000", "--json", "--dir", dir, "--keep"), &r)
	check(r, 128, 2, 3000, "paced", "tcp", "inprocess")
	if !r.Processes || r.PublisherCPUPerMsg <= 0 || r.XRawCPU <= 0 {
		t.Fatalf("--processes result says the subscribers ran in the bench's process, or no publisher CPU: %+v", r)
	}
	if out := i.mustRun("bench", "--processes", "--messages", "3000"); !strings.Contains(out, "publisher process:") || !strings.Contains(out, "µs of CPU per publication") {
		t.Fatalf("bench --processes output lacks the publisher's CPU:\n%s", out)
	}
	for _, sub := range []string{"subscriber-0", "subscriber-1"} {
		if _, err := os.Stat(filepath.Join(benchRunDir(t, dir), sub, "config.yml")); err != nil {
			t.Fatalf("--processes: no %s instance: %v", sub, err)
		}
	}
	lrEachCmdline(t, func(pid int, cmdline string) {
		if strings.HasPrefix(cmdline, binPath+"\x00") && strings.Contains(cmdline, "\x00--serve-subscriber") && processAlive(pid) {
			t.Fatalf("subscriber process %d outlived the bench", pid)
		}
	})

	out := i.mustRun("bench", "--messages", "3000", "--size", "4KiB")
	for _, want := range []string{"coattail, durable", "raw libp2p stream", "disk (fdatasync)", "datastore alone", "durable delivery, which stores every byte, cannot go faster", "3000 publications", "4.0 KiB", "the faster of a run before"} {
		if !strings.Contains(out, want) {
			t.Fatalf("bench output lacks %q:\n%s", want, out)
		}
	}
}

// benchRunDir returns the one run directory a bench created in parent.
func benchRunDir(t *testing.T, parent string) string {
	t.Helper()
	entries, err := os.ReadDir(parent)
	if err != nil || len(entries) != 1 || !entries[0].IsDir() {
		t.Fatalf("--dir %s holds %d entries (%v), want one run directory", parent, len(entries), err)
	}
	return filepath.Join(parent, entries[0].Name())
}

// bench --dir D creates its instances in a new directory inside D, as lab
// does, and removes it after a successful run: a second run into the same
// D used to fail with "instance already exists in D/publisher", and each
// run left hundreds of MB behind.
func TestBenchDirRunsTwice(t *testing.T) {
	i := newInstance(t, "benchdir")
	dir := filepath.Join(t.TempDir(), "new", "parent")
	for range 2 {
		i.mustRun("bench", "--messages", "200", "--dir", dir)
		if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
			t.Fatalf("after a successful bench --dir holds %d entries (%v), want none", len(entries), err)
		}
	}
	_, stderr, code := i.run("bench", "--messages", "200", "--dir", dir, "--keep")
	if code != 0 || !strings.Contains(stderr, "bench: kept "+benchRunDir(t, dir)) {
		t.Fatalf("bench --keep: exit %d, stderr %q; want it to name the kept directory", code, stderr)
	}
}

func TestBenchBadFlags(t *testing.T) {
	i := newInstance(t, "benchflags")
	i.mustFail([]string{"bench", "--size", "banana", "--mode", "fast", "--window", "-1", "--messages", "-3"},
		`--size "banana" is not a size`, `--mode "fast" is not paced or burst`, `--window "-1" is not a size`, "--messages -3 is negative")
	i.mustFail([]string{"bench", "--size", "2MiB", "--subscribers", "0", "--transport", "udp", "--receiver", "python"},
		"size 2097152 is out of range", "subscribers 0 is out of range", `transport "udp"`, `receiver "python"`)
	i.mustFail([]string{"bench", "--size", "64KiB", "--window", "1KiB"}, "window 1024 is smaller than one message")
	i.mustFail([]string{"bench", "extra"}, "unknown command")
	// Only the size is wrong: no second error about the messages derived
	// from it, and nothing printed before the error.
	for _, size := range []string{"0", "4B"} {
		stderr := i.mustFail([]string{"bench", "--size", size}, "is out of range (8..1048576 bytes)")
		if strings.Contains(stderr, "messages") || strings.Contains(stderr, "publications") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("bench --size %s: stderr %q, want only the size error", size, stderr)
		}
	}
	i.mustFail([]string{"bench", "--cpuprofile", filepath.Join(t.TempDir(), "no", "such", "dir", "cpu.pprof")}, "--cpuprofile")
}

// The service and bench collect garbage at serviceGCPercent unless the
// user chose a GOGC.
func TestTuneGC(t *testing.T) {
	prev := debug.SetGCPercent(100)
	defer debug.SetGCPercent(prev)
	t.Setenv("GOGC", "") // restored after the test
	if err := os.Unsetenv("GOGC"); err != nil {
		t.Fatal(err)
	}
	tuneGC()
	if got := debug.SetGCPercent(100); got != serviceGCPercent {
		t.Fatalf("without GOGC the GC percent is %d, want %d", got, serviceGCPercent)
	}
	t.Setenv("GOGC", "50")
	tuneGC()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("with GOGC set, tuneGC changed the GC percent to %d", got)
	}
}

// A bench that fails (here on its options) leaves an existing --cpuprofile
// file as it was; it used to truncate it before checking anything. A
// --publishers of 0 is refused (it silently meant the default, 16).
func TestBenchFailureKeepsCPUProfile(t *testing.T) {
	t.Setenv("COATTAIL_RUNTIME_DIR", t.TempDir())
	prof := filepath.Join(t.TempDir(), "cpu.pprof")
	if err := os.WriteFile(prof, []byte("an earlier profile"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--size", "2MiB"}, "size 2097152 is out of range"},
		{[]string{"--publishers", "0"}, "--publishers 0 is out of range (1..1024)"},
		{[]string{"--publishers", "-1"}, "--publishers -1 is out of range (1..1024)"},
	} {
		stdout, stderr, code := runCLI(t, append([]string{"bench", "--cpuprofile", prof, "--messages", "10"}, tc.args...)...)
		if code != 1 || stdout != "" || !strings.Contains(stderr, tc.want) {
			t.Errorf("bench %q: exit %d, stdout %q, stderr %q; want exit 1 and %q", tc.args, code, stdout, stderr, tc.want)
		}
		if b, err := os.ReadFile(prof); err != nil || string(b) != "an earlier profile" {
			t.Errorf("bench %q failed and left --cpuprofile as %q, %v", tc.args, b, err)
		}
	}
	entries, err := os.ReadDir(filepath.Dir(prof))
	if err != nil || len(entries) != 1 {
		t.Errorf("the profile's directory holds %d entries (%v), want only the profile", len(entries), err)
	}
	dir := t.TempDir()
	if _, stderr, code := runCLI(t, "bench", "--cpuprofile", dir, "--messages", "10"); code != 1 || !strings.Contains(stderr, "--cpuprofile") || !strings.Contains(stderr, "directory") {
		t.Errorf("bench --cpuprofile DIR: exit %d, stderr %q", code, stderr)
	}
}
