package main

// Who holds an instance, told to the user: an offline command holding the
// data, a service whose control socket is gone, a copy of an instance
// running with the same identity.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// While an offline command holds the instance's data, a command that
// needs it names that command and its pid (not "another process that is
// not answering"), and `service start` says what it waits for and starts
// once the command is done (it used to wait 10 s in silence and then fail,
// asking whether a service was running).
func TestServiceStartWhileOfflineCommandHoldsData(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	hold, release := lrHoldData(t, a)
	holder := strconv.Itoa(hold.cmd.Process.Pid)
	stderr := a.mustFail([]string{"peer", "list"}, "in use by", `offline command "coattail action perform"`, "pid "+holder, "wait for it to finish")
	if strings.Contains(stderr, "not answering") {
		t.Errorf("peer list: %s", stderr)
	}
	// The start says what it waits for; only then does the hold end.
	start := a.spawn("service", "start", "--headless")
	checkFor(t, 60*time.Second, func() error {
		if start.exited() {
			t.Fatalf("service start while the offline command runs: exit %d, stdout %q, stderr %q", start.code, start.stdout(), start.stderr())
		}
		if !strings.Contains(start.stderr(), "Waiting for") {
			return fmt.Errorf("service start has not said what it waits for: %q", start.stderr())
		}
		return nil
	})
	release()
	code := start.wait(t)
	out, stderr := start.stdout(), start.stderr()
	if code != 0 || showsLocked(stderr) {
		t.Fatalf("service start while the offline command runs: exit %d: %s", code, stderr)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("service start printed %q, want its pid", out)
	}
	t.Cleanup(func() { a.cleanupService(pid) })
	for _, want := range []string{"Waiting for", `offline command "coattail action perform"`, "pid " + holder} {
		if !strings.Contains(stderr, want) {
			t.Errorf("service start's stderr %q lacks %q", stderr, want)
		}
	}
	if code := hold.wait(t); code != 0 {
		t.Errorf("the offline perform failed: %s", hold.stderr())
	}
	a.mustRun("peer", "list")
}

// A service whose control socket file is removed while it runs (a /tmp
// cleaner) makes a new one, and is reachable again; it used to stay
// unreachable until killed.
func TestServiceControlSocketRemovedIsMadeAgain(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	pid := a.start()
	if err := os.Remove(a.path("coattail.sock")); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 20*time.Second, func() error {
		var list []map[string]any
		a.decodeJSON(a.mustRun("service", "status", "--json"), &list)
		if len(list) != 1 || list[0]["online"] != true || list[0]["pid"] != float64(pid) {
			return fmt.Errorf("service status: %v, want pid %d online", list, pid)
		}
		return nil
	})
	a.mustRun("peer", "list")
	a.mustRun("service", "stop")
	if processAlive(pid) {
		t.Fatalf("pid %d still runs after service stop", pid)
	}
}

// While a running service has no control socket (here a file stands in
// the socket's place, so it cannot make a new one), `service stop` without
// a pid stops it all the same, by its pid file and registration (it used
// to wait 30 s and say "not running"), and the other commands name its pid
// and say what to do (they said "starting", or "wait and retry").
func TestServiceStopWithoutControlSocket(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	pid := a.start()
	sock := a.path("coattail.sock")
	if err := os.Remove(sock); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sock, []byte("not a socket\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := strconv.Itoa(pid)
	if out := a.mustRun("service", "status"); !strings.Contains(out, "control socket gone") || !strings.Contains(out, p) {
		t.Errorf("service status does not say the socket is gone:\n%s", out)
	}
	a.mustFail([]string{"service", "start", "--headless"}, "already running", "pid "+p, "control socket", "is gone", "coattail service stop", "kill "+p)
	a.mustFail([]string{"peer", "list"}, "pid "+p, "is gone", "coattail service stop")
	begin := time.Now()
	out := a.mustRun("service", "stop")
	if !strings.Contains(out, p) {
		t.Errorf("service stop printed %q, want pid %d", out, pid)
	}
	if processAlive(pid) {
		t.Fatalf("pid %d still runs after service stop", pid)
	}
	if took := time.Since(begin); took > 15*time.Second {
		t.Errorf("service stop took %v", took)
	}
	a.start()
}

// copyInstance copies a's directory to a new one (as `cp -r` would), less
// its socket and pid file, and returns it as an instance.
func copyInstance(t *testing.T, a *instance, name string) *instance {
	t.Helper()
	dir := filepath.Join(filepath.Dir(a.dir), name)
	if out, err := exec.Command("cp", "-a", a.dir, dir).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	for _, f := range []string{"coattail.sock", "service.pid"} {
		_ = os.Remove(filepath.Join(dir, f))
	}
	return &instance{t: t, name: name, dir: dir}
}

// A copy of an instance directory (its identity key with it) is refused
// while the original's service runs: it used to come up as a second peer
// with the same id, and its publications were lost. The message names the
// original and its pid and says how a copy gets its own identity. Once
// the original is gone (killed: its registration is left behind), the
// copy starts.
func TestServiceStartRefusesCopiedInstance(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "alice")
	pid := a.start()
	b := copyInstance(t, a, "alice2")
	b.mustFail([]string{"service", "start", "--headless"}, "peer id", a.peerID(), a.dir, "pid "+strconv.Itoa(pid), "copy", "coattail new", "keys/")
	var list []map[string]any
	a.decodeJSON(a.mustRun("service", "status", "--json"), &list)
	if len(list) != 1 {
		t.Errorf("service status lists %d services, want the original only: %v", len(list), list)
	}
	killAndWait(t, pid)
	b.start()
	// And the other way round; and two starting at once: one comes up.
	a.mustFail([]string{"service", "start", "--headless"}, "peer id", b.dir)
	b.mustRun("service", "stop")
	pa, pb := a.spawn("service", "start", "--headless"), b.spawn("service", "start", "--headless")
	ok := 0
	for _, p := range []*proc{pa, pb} {
		if p.wait(t) == 0 {
			ok++
			started, _ := strconv.Atoi(strings.TrimSpace(p.stdout()))
			t.Cleanup(func() { killAndWait(t, started) })
		} else if !strings.Contains(p.stderr(), "peer id") {
			t.Errorf("a racing start failed with %q, want the peer id in use", p.stderr())
		}
	}
	if ok != 1 {
		t.Errorf("%d of the original and its copy started at once, want 1", ok)
	}
}
