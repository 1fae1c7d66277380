package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Several `service stop` at once, round after round, each of which finds
// the service running: one of them stops it, and the others, whose
// request the stopping service refuses or cuts, wait until it is gone.
// Every one succeeds and names the service's pid, and nothing of the
// service is left (process, socket, pid file, registration).
//
// So that every stop finds the service running (a stop that starts only
// once the service is gone rightly says it is not running), the service is
// stopped (SIGSTOP) while the stops start: each one's question then waits
// in the socket's backlog, and all are answered at once when it resumes.
func TestServiceStopConcurrent(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	const rounds, stops = 6, 3
	for round := range rounds {
		pid := a.start()
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		procs := make([]*proc, stops)
		for k := range procs {
			procs[k] = a.spawn("service", "stop")
		}
		// Each stop has connected to the socket (it has a socket open);
		// its question waits there until the service resumes. Resumed
		// in time for the stops' 5 s limit on that question.
		deadline := time.Now().Add(3 * time.Second)
		asked := make([]bool, stops)
		for k, p := range procs {
			for !asked[k] && !p.exited() && time.Now().Before(deadline) {
				if asked[k] = holdsSocket(p.cmd.Process.Pid); !asked[k] {
					time.Sleep(10 * time.Millisecond)
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
		if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("Stopped service (pid %d)", pid)
		for k, p := range procs {
			code := p.wait(t)
			if !asked[k] && code == 1 && strings.Contains(p.stderr(), "not running") {
				// On a busy machine: it started only once the service
				// had resumed, and had gone, so it is less tested.
				t.Logf("round %d: service stop %d did not reach the service before it resumed, and found it gone: %s", round, k, p.stderr())
				continue
			}
			if code != 0 || strings.TrimSpace(p.stdout()) != want {
				t.Errorf("round %d: concurrent service stop %d (connected before the service resumed: %v): exit %d, stdout %q, stderr %q; want exit 0 and %q",
					round, k, asked[k], code, p.stdout(), p.stderr(), want)
			}
		}
		if processAlive(pid) {
			t.Fatalf("round %d: the service (pid %d) still runs after the concurrent stops ended", round, pid)
		}
		for _, f := range []string{"coattail.sock", "service.pid"} {
			if _, err := os.Lstat(a.path(f)); err == nil {
				t.Errorf("round %d: %s left behind", round, f)
			}
		}
		if ents, _ := os.ReadDir(runtimeDir(t)); len(ents) != 0 {
			t.Errorf("round %d: registration left behind: %v", round, ents)
		}
		if t.Failed() {
			return
		}
	}
}

// holdsSocket reports whether process pid has a socket open.
func holdsSocket(pid int) bool {
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	for _, fd := range fds {
		if target, err := os.Readlink(fd); err == nil && strings.HasPrefix(target, "socket:") {
			return true
		}
	}
	return false
}
