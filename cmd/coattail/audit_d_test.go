package main

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A lab whose output pipe is closed (coattail lab | head, a pager quit,
// Ctrl-C in a pipeline that ends tee) stops as Ctrl-C stops it: every
// service it started is stopped and its directories are removed, and it
// exits non-zero, not killed by SIGPIPE. SIGPIPE killed it at its next
// progress line, and the services it had started ran on.
func TestLabOutputClosedStopsServices(t *testing.T) {
	t.Parallel()
	needBinary(t)
	parent, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	// --parallel 1: the services start one at a time, each with a
	// progress-free pause, so the lab writes its next line (started ...)
	// with services running.
	cmd := exec.Command(binPath, "lab", "--nodes", "3", "--parallel", "1", "--messages", "1000", "--rate", "100", "--dir", parent)
	cmd.Env = childEnv(t)
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	killLabAtCleanup(t, cmd, parent)
	sc := bufio.NewScanner(r)
	var seen []string
	for sc.Scan() {
		seen = append(seen, sc.Text())
		if strings.Contains(sc.Text(), "lab: created") {
			break
		}
	}
	if len(seen) == 0 || !strings.Contains(seen[len(seen)-1], "lab: created") {
		t.Fatalf("the lab did not say it created its instances: %q", seen)
	}
	r.Close() // the reader goes away
	select {
	case err := <-done:
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) {
			t.Fatalf("the lab whose output was closed exited with %v, want a non-zero exit", err)
		}
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			t.Errorf("the lab was killed by %v when its output was closed", ws.Signal())
		}
	case <-time.After(commandTimeout):
		t.Fatal("the lab did not exit after its output was closed")
	}
	// Anything left is found here: services that would run on for good.
	checkFor(t, 30*time.Second, func() error {
		if left := lrProcessesUnder(t, parent); len(left) > 0 {
			return errors.New("processes left running:\n" + strings.Join(left, "\n"))
		}
		return nil
	})
	if ents, _ := os.ReadDir(parent); len(ents) != 0 {
		t.Errorf("the lab left %d entries in --dir %s", len(ents), parent)
	}
}

// A lab flag the run would ignore is refused, as a value out of range is
// (CLI.md, Lab): --degree outside a mesh, --chaos-stop without --chaos,
// --seed with neither. They were silently ignored: a star run with
// --degree 50 succeeded. Where they act they are accepted (the runs below
// then fail setting up, in an --dir that cannot exist, before starting
// anything).
func TestLabIgnoredFlagsRefused(t *testing.T) {
	t.Parallel()
	const noDir = "/dev/null/lab"
	for _, tc := range []struct {
		args []string
		want string // "" : accepted
	}{
		{[]string{"--topology", "star", "--degree", "5"}, "--degree is for --topology mesh, not star"},
		{[]string{"--topology", "chain", "--degree", "1"}, "--degree is for --topology mesh, not chain"},
		{[]string{"--chaos-stop", "0.5"}, "--chaos-stop is for a run with --chaos"},
		{[]string{"--topology", "star", "--seed", "7"}, "--seed is for --topology mesh or --chaos"},
		{[]string{"--topology", "mesh", "--degree", "2", "--seed", "7"}, ""},
		{[]string{"--topology", "star", "--chaos", "1", "--chaos-stop", "1", "--seed", "7"}, ""},
	} {
		args := append([]string{"lab", "--nodes", "3", "--dir", noDir}, tc.args...)
		stdout, stderr, code := runCLI(t, args...)
		if code != 1 || stdout != "" {
			t.Errorf("%v: exit %d, stdout %q; want exit 1 and nothing on stdout", tc.args, code, stdout)
		}
		switch {
		case tc.want == "" && !strings.Contains(stderr, "lab: setup failed"):
			t.Errorf("%v: %q, want the flags accepted (and the setup to fail in %s)", tc.args, stderr, noDir)
		case tc.want != "" && (!strings.Contains(stderr, "lab: invalid options") || !strings.Contains(stderr, tc.want)):
			t.Errorf("%v: %q, want it refused with %q", tc.args, stderr, tc.want)
		}
	}
}

// bench --window with --mode burst is refused: a burst keeps no window
// (CLI.md, Bench), and the flag was silently ignored. With paced it is
// accepted (the run then fails on an --dir that cannot exist, before
// anything starts).
func TestBenchWindowWithBurstRefused(t *testing.T) {
	t.Parallel()
	const noDir = "/dev/null/bench"
	stdout, stderr, code := runCLI(t, "bench", "--mode", "burst", "--window", "1MiB", "--dir", noDir)
	if code != 1 || stdout != "" || !strings.Contains(stderr, "bench: invalid options") || !strings.Contains(stderr, "--window is for --mode paced, not burst") {
		t.Errorf("bench --mode burst --window 1MiB: exit %d, stdout %q, stderr %q; want it refused", code, stdout, stderr)
	}
	for _, args := range [][]string{{"--mode", "paced", "--window", "1MiB"}, {"--mode", "burst"}} {
		_, stderr, code = runCLI(t, append([]string{"bench", "--dir", noDir}, args...)...)
		if code != 1 || strings.Contains(stderr, "invalid options") || !strings.Contains(stderr, "bench: --dir") {
			t.Errorf("bench %v: exit %d, stderr %q; want the flags accepted (and --dir to fail)", args, code, stderr)
		}
	}
}
