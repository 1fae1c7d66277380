package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A service that is its PID namespace's first process (a container's
// entrypoint, no --init) reaps what its programs leave behind. The
// runner kills a program's process group when the program exits, and a
// daemon may leave the group (setsid); both kinds of orphan become PID 1's
// children. Before, the service was PID 1 itself and never reaped them:
// every run of this action left two zombies for the container's lifetime.
// Now coattail as PID 1 runs itself as a child under a minimal init that
// reaps them and passes signals on.
func TestPID1ReapsOrphans(t *testing.T) {
	needBinary(t)
	if runtime.GOOS != "linux" || os.Geteuid() != 0 {
		t.Skip("PID namespace: needs root on Linux")
	}
	i := newInstance(t, "pid1")
	// One child killed with the group when the action exits, one that left
	// the group and exits on its own a moment later.
	i.writeScript("actions", "orphans", `sleep 30 >/dev/null 2>&1 &
setsid sleep 0.2 >/dev/null 2>&1 &
echo '{"ok":true}'
`)
	cmd := exec.Command(binPath, "service", "start")
	cmd.Dir = i.dir
	cmd.Env = childEnv(t, i.env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Skipf("starting the service in a new PID namespace: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // the namespace's processes all go with it
		<-exited
	})
	checkFor(t, 15*time.Second, func() error {
		if b, _ := os.ReadFile(i.path("service.log")); !strings.Contains(string(b), `"service ready"`) {
			return errors.New("the service is not ready")
		}
		return nil
	})

	const runs = 10
	for n := 0; n < runs; n++ {
		i.mustRun("action", "perform", "--action", "orphans")
	}
	// The namespace's processes, by their parent's pid (host pids).
	var zombies []string
	checkFor(t, 10*time.Second, func() error {
		zombies = zombiesUnder(t, cmd.Process.Pid)
		if len(zombies) > 0 {
			return fmt.Errorf("%d zombies in the service's PID namespace: %s", len(zombies), strings.Join(zombies, "; "))
		}
		return nil
	})

	// The init passes SIGTERM on: the service stops as it would at a
	// `docker stop`, and the namespace's first process exits 0.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err // for the cleanup
		if err != nil {
			t.Fatalf("the service under its init ended with %v at SIGTERM; stderr:\n%s\nlog:\n%s", err, stderr.String(), tailFile(i.path("service.log")))
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the service under its init did not stop within 30 s of SIGTERM")
	}
	if b, _ := os.ReadFile(i.path("service.log")); !strings.Contains(string(b), `"service stopping"`) {
		t.Errorf("the service log does not show a clean stop:\n%s", tailFile(i.path("service.log")))
	}
}

// zombiesUnder lists the zombie processes whose parent is root or one of
// root's descendants (host pids), as "pid (command)".
func zombiesUnder(t *testing.T, root int) []string {
	t.Helper()
	type proc struct {
		ppid  int
		state string
		comm  string
	}
	procs := map[int]proc{}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		s := string(b)
		end := strings.LastIndexByte(s, ')')
		if end < 0 {
			continue
		}
		f := strings.Fields(s[end+1:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		procs[pid] = proc{ppid: ppid, state: f[0], comm: s[strings.IndexByte(s, '(')+1 : end]}
	}
	under := func(pid int) bool {
		for p, hops := pid, 0; p > 1 && hops < 64; p, hops = procs[p].ppid, hops+1 {
			if procs[p].ppid == root {
				return true
			}
		}
		return false
	}
	var out []string
	for pid, p := range procs {
		if p.state == "Z" && (p.ppid == root || under(pid)) {
			out = append(out, fmt.Sprintf("%d (%s)", pid, p.comm))
		}
	}
	return out
}
