package main

// Service lifecycle as a production operator meets it: log growth,
// signals, start-up races, instances that vanish under their service.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// service.log is rotated by size and keeps a bounded number of old files,
// so a service that runs for months cannot fill the disk.
func TestLifecycleServiceLogRotates(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	const max = 600 // bytes; a start and a stop write about 500
	a.setConfig("rotate_size", strconv.Itoa(max))
	lrStartStop(t, a, 7)
	logs, err := filepath.Glob(a.path("service.log*"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"service.log": true, "service.log.1": true, "service.log.2": true, "service.log.3": true}
	for _, p := range logs {
		base := filepath.Base(p)
		if !want[base] {
			t.Errorf("unexpected log file %s (at most 3 rotated files are kept)", base)
			continue
		}
		delete(want, base)
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > max {
			t.Errorf("%s is %d bytes, over the rotation size %d", base, fi.Size(), max)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %04o, want 0600", base, fi.Mode().Perm())
		}
	}
	for base := range want {
		t.Errorf("%s is missing: the log was not rotated (files: %v)", base, logs)
	}
	b, err := os.ReadFile(a.path("service.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"service stopping"`) {
		t.Errorf("the current service.log lacks the last stop:\n%s", b)
	}
	a.setConfig("rotate_size", "lots")
	a.mustFail([]string{"service", "start", "--headless"}, `invalid size "lots"`)
}

// SIGHUP does not kill a headless service: it reopens service.log (as an
// external logrotate expects) and the service runs on. SIGTERM then stops
// it gracefully: it exits and leaves no socket, pid file or registration.
func TestLifecycleServiceSignals(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	pid := a.start()
	if err := os.Rename(a.path("service.log"), a.path("service.log.moved")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 20*time.Second, func() error {
		b, err := os.ReadFile(a.path("service.log"))
		if err != nil {
			return fmt.Errorf("after SIGHUP: %v (service alive: %v)", err, processAlive(pid))
		}
		if !strings.Contains(string(b), "log file reopened") {
			return fmt.Errorf("service.log after SIGHUP: %s", b)
		}
		return nil
	})
	if !processAlive(pid) {
		t.Fatal("the service died on SIGHUP")
	}
	var list []map[string]any
	a.decodeJSON(a.mustRun("service", "status", "--json"), &list)
	if len(list) != 1 || list[0]["pid"] != float64(pid) {
		t.Fatalf("service status after SIGHUP: %v, want pid %d", list, pid)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 30*time.Second, func() error {
		if processAlive(pid) {
			return fmt.Errorf("pid %d still runs after SIGTERM", pid)
		}
		return nil
	})
	for _, f := range []string{"coattail.sock", "service.pid"} {
		if _, err := os.Lstat(a.path(f)); err == nil {
			t.Errorf("%s left behind after SIGTERM", f)
		}
	}
	if ents, _ := os.ReadDir(runtimeDir(t)); len(ents) != 0 {
		t.Errorf("registration left behind after SIGTERM: %v", ents)
	}
	b, err := os.ReadFile(a.path("service.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"service stopping"`) {
		t.Errorf("service.log lacks the graceful stop:\n%s", b)
	}
}

// A service SIGKILLed leaves its socket file and pid file behind; by the
// time the operator runs `service stop`, the pid may belong to another
// process. Nobody listens on the socket, so the service is not running:
// stop must say so, not call that process a stuck service and tell the
// operator to kill it.
func TestLifecycleStopWithStalePidFileOfReusedPid(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	pid := a.start()
	killAndWait(t, pid)
	if _, err := os.Lstat(a.path("coattail.sock")); err != nil {
		t.Fatalf("a SIGKILLed service should leave its socket file: %v", err)
	}
	other := exec.Command("sleep", "300") // stands for the process that got the pid
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Process.Kill(); _ = other.Wait() })
	if err := os.WriteFile(a.path("service.pid"), []byte(strconv.Itoa(other.Process.Pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := a.mustFail([]string{"service", "stop"}, "not running")
	if strings.Contains(out, "still running") || strings.Contains(out, strconv.Itoa(other.Process.Pid)) {
		t.Errorf("service stop blamed an unrelated process: %s", out)
	}
	if !processAlive(other.Process.Pid) {
		t.Error("the unrelated process is gone")
	}
	// And the instance starts again.
	a.start()
}

// A service whose instance directory was moved (or deleted) while it runs
// has lost its control socket, but is still listed by `service status`;
// `service stop <pid>` stops it (its registration proves which process
// it is) rather than calling it stuck.
func TestLifecycleStopServiceOfMovedInstance(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	pid := a.start()
	moved := a.dir + "-moved"
	if err := os.Rename(a.dir, moved); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killAndWait(t, pid) })
	parent := filepath.Dir(a.dir)
	out, stderr, code := a.runIn(parent, "service", "stop", strconv.Itoa(pid))
	if code != 0 {
		t.Fatalf("service stop %d: exit %d: %s", pid, code, stderr)
	}
	if !strings.Contains(out, strconv.Itoa(pid)) {
		t.Errorf("service stop printed %q, want the pid", out)
	}
	if processAlive(pid) {
		t.Fatalf("pid %d still runs after service stop", pid)
	}
	if ents, _ := os.ReadDir(runtimeDir(t)); len(ents) != 0 {
		t.Errorf("registration left behind: %v", ents)
	}
	// The instance runs again from where it now is.
	a.dir = moved
	a.start()
}

// lrHoldData runs an offline perform of an action that holds the
// instance's datastore (as any offline command holds it) until release is
// called, or the test ends; it returns once the action runs. The hold is
// not a sleep: it lasts until the test has seen what it waits for, however
// busy the machine.
func lrHoldData(t *testing.T, a *instance) (hold *proc, release func()) {
	t.Helper()
	// The offline perform's action_timeout must not end the hold first.
	a.setConfig("action_timeout", "15m")
	a.writeScript("actions", "hold", "touch \"$COATTAIL_INSTANCE/holding\"\n"+
		"while [ ! -e \"$COATTAIL_INSTANCE/release\" ]; do sleep 0.05; done\nexec cat\n")
	p := a.spawn("action", "perform", "--action", "hold", "--data", "1")
	var once sync.Once
	release = func() {
		once.Do(func() {
			if err := os.WriteFile(a.path("release"), nil, 0o644); err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(release)
	// A test that fails while a service waits for the hold leaves no
	// service to come up once the hold ends (this runs before release).
	t.Cleanup(func() {
		for _, pid := range lrServiceProcesses(t, a.dir) {
			killAndWait(t, pid)
		}
	})
	checkFor(t, 30*time.Second, func() error {
		if p.exited() {
			t.Fatalf("the offline perform that holds the datastore exited: %s", p.stderr())
		}
		if _, err := os.Stat(a.path("holding")); err != nil {
			return fmt.Errorf("the offline perform has not run its action yet: %v", err)
		}
		return nil
	})
	return p, release
}

// lrStartStop starts a's service and stops it, times times, making sure
// each time that its process is gone.
func lrStartStop(t *testing.T, a *instance, times int) {
	t.Helper()
	for range times {
		pid := a.start()
		a.mustRun("service", "stop")
		killAndWait(t, pid)
	}
}

// lrEachCmdline calls fn with the pid and the command line (arguments
// separated by NUL bytes) of every process whose command line it can read.
func lrEachCmdline(t *testing.T, fn func(pid int, cmdline string)) {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		fn(pid, string(b))
	}
}

// lrServiceProcesses returns the pids of the foreground service processes
// (what a headless start runs) of the instance in dir.
func lrServiceProcesses(t *testing.T, dir string) []int {
	t.Helper()
	var pids []int
	lrEachCmdline(t, func(pid int, cmdline string) {
		args := strings.Split(strings.TrimRight(cmdline, "\x00"), "\x00")
		if len(args) == 5 && args[0] == binPath && args[1] == "--instance" && args[2] == dir &&
			args[3] == "service" && args[4] == "start" && processAlive(pid) {
			pids = append(pids, pid)
		}
	})
	return pids
}

// Starts that race while the first service is still starting (here it
// waits for an offline command's hold on the datastore) are told at once
// that the instance is running or starting; none waits for the datastore
// and fails on it. Exactly one service comes up.
func TestLifecycleConcurrentStarts(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	hold, release := lrHoldData(t, a)
	const n = 3
	starts := make([]*proc, n)
	for k := range starts {
		starts[k] = a.spawn("service", "start", "--headless")
	}
	// While the hold lasts no service can come up; the starts that lost
	// the race are told so at once, and only then does the hold end.
	checkFor(t, 60*time.Second, func() error {
		exited := 0
		for _, p := range starts {
			if p.exited() {
				exited++
			}
		}
		if exited < n-1 {
			return fmt.Errorf("%d of %d racing starts have exited while the first waits for the datastore", exited, n)
		}
		return nil
	})
	release()
	ok, pid := 0, 0
	for _, p := range starts {
		code := p.wait(t)
		if code == 0 {
			ok++
			pid, _ = strconv.Atoi(strings.TrimSpace(p.stdout()))
			continue
		}
		if !strings.Contains(p.stderr(), "already running") {
			t.Errorf("a racing start failed with %q, want \"already running\"", p.stderr())
		}
		if strings.Contains(p.stderr(), "datastore") || strings.Contains(p.stderr(), "in use") {
			t.Errorf("a racing start showed the datastore error: %s", p.stderr())
		}
	}
	if code := hold.wait(t); code != 0 {
		t.Errorf("the offline perform failed: %s", hold.stderr())
	}
	if ok != 1 || pid <= 0 {
		t.Fatalf("%d of %d racing starts succeeded, want 1", ok, n)
	}
	t.Cleanup(func() { a.cleanupService(pid) })
	var list []map[string]any
	a.decodeJSON(a.mustRun("service", "status", "--json"), &list)
	if len(list) != 1 || list[0]["pid"] != float64(pid) {
		t.Errorf("service status after racing starts: %v, want one service, pid %d", list, pid)
	}
}

// `service stop` while the service is still starting stops it once it is
// up, instead of saying it is not running and leaving it to come up.
func TestLifecycleStopDuringStartup(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	hold, release := lrHoldData(t, a)
	start, pid := lrSpawnStart(t, a, func(pid int) error {
		// Still starting: it holds the pid file, and waits for the
		// datastore before it opens its control socket.
		b, err := os.ReadFile(a.path("service.pid"))
		if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(pid) {
			return fmt.Errorf("service.pid of the starting service: %q, %v", b, err)
		}
		if _, err := os.Lstat(a.path("coattail.sock")); err == nil {
			return fmt.Errorf("the service (pid %d) already has its socket", pid)
		}
		return nil
	})
	t.Cleanup(func() { killAndWait(t, pid) })
	stop := a.spawn("service", "stop")
	// The service cannot be ready before the hold ends, so a stop that
	// ends before then did not wait for it. (On a busy machine the stop
	// may not get that far in this time; it is then only less tested.)
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if stop.exited() {
			t.Fatalf("service stop ended while the service was still starting: exit %d, stdout %q, stderr %q", stop.code, stop.stdout(), stop.stderr())
		}
	}
	release()
	code := stop.wait(t)
	out, stderr := stop.stdout(), stop.stderr()
	if showsLocked(stderr) {
		t.Errorf("service stop showed a locked error: %s", stderr)
	}
	if code != 0 {
		t.Fatalf("service stop during start-up: exit %d: %s", code, stderr)
	}
	if !strings.Contains(out, strconv.Itoa(pid)) {
		t.Errorf("service stop printed %q, want pid %d", out, pid)
	}
	if processAlive(pid) {
		t.Fatalf("the service (pid %d) still runs after service stop", pid)
	}
	if code := start.wait(t); code != 0 {
		t.Logf("the start that was stopped exited %d: %s", code, start.stderr())
	}
	hold.wait(t)
	var list []map[string]any
	a.decodeJSON(a.mustRun("service", "status", "--json"), &list)
	if len(list) != 0 {
		t.Errorf("service status after stop: %v", list)
	}
}

// lrProcessesUnder returns the live processes whose command line mentions dir.
func lrProcessesUnder(t *testing.T, dir string) []string {
	t.Helper()
	var found []string
	lrEachCmdline(t, func(pid int, cmdline string) {
		if strings.Contains(cmdline, dir) && processAlive(pid) {
			found = append(found, strconv.Itoa(pid)+": "+strings.ReplaceAll(cmdline, "\x00", " "))
		}
	})
	return found
}

// killLabAtCleanup kills, when t ends, the lab cmd and every process
// running under parent (its instances' services), whatever the test left.
func killLabAtCleanup(t *testing.T, cmd *exec.Cmd, parent string) {
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		for _, p := range lrProcessesUnder(t, parent) {
			if pid, err := strconv.Atoi(strings.SplitN(p, ":", 2)[0]); err == nil {
				killAndWait(t, pid)
			}
		}
	})
}

// Ctrl-C during `coattail lab` stops every service it started, removes
// its temporary instance directories (nothing failed: the user stopped
// it), says it was interrupted and exits non-zero.
func TestLifecycleLabInterrupted(t *testing.T) {
	t.Parallel()
	needBinary(t)
	parent, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binPath, "lab", "--nodes", "6", "--parallel", "2", "--messages", "1000", "--dir", parent)
	cmd.Env = childEnv(t)
	var stdout, stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	killLabAtCleanup(t, cmd, parent)
	checkFor(t, 60*time.Second, func() error {
		if !strings.Contains(stderr.String(), "lab: created") {
			return fmt.Errorf("the lab has not created its instances yet: %s", stderr.String())
		}
		return nil
	})
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	var exitErr *exec.ExitError
	select {
	case err := <-done:
		if !errors.As(err, &exitErr) || exitErr.ExitCode() == 0 {
			t.Errorf("an interrupted lab exited with %v, want a non-zero exit", err)
		}
	case <-time.After(commandTimeout):
		t.Fatal("the lab did not exit after Ctrl-C")
	}
	if !strings.Contains(stderr.String(), "interrupted") {
		t.Errorf("stderr does not say the lab was interrupted:\n%s", stderr.String())
	}
	if left := lrProcessesUnder(t, parent); len(left) > 0 {
		t.Errorf("processes left running after Ctrl-C:\n%s", strings.Join(left, "\n"))
	}
	if ents, _ := os.ReadDir(parent); len(ents) != 0 {
		t.Errorf("the interrupted lab left %d entries in --dir %s", len(ents), parent)
	}
}

// Ctrl-C on `service start --headless` while the service is still
// starting stops that service: it does not come up behind the user's back
// after the command failed.
func TestLifecycleStartHeadlessInterrupted(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	hold, release := lrHoldData(t, a)
	start, pid := lrSpawnStart(t, a, func(int) error { return nil })
	t.Cleanup(func() { killAndWait(t, pid) })
	if err := start.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if code := start.wait(t); code == 0 {
		t.Errorf("an interrupted start exited 0: %s", start.stdout())
	}
	if !strings.Contains(start.stderr(), "interrupted") {
		t.Errorf("the interrupted start said %q", start.stderr())
	}
	checkFor(t, 30*time.Second, func() error {
		if processAlive(pid) {
			return fmt.Errorf("the service (pid %d) of the interrupted start still runs", pid)
		}
		return nil
	})
	release()
	hold.wait(t)
	var list []map[string]any
	a.decodeJSON(a.mustRun("service", "status", "--json"), &list)
	if len(list) != 0 {
		t.Errorf("a service runs after its start was interrupted: %v", list)
	}
}

// `service status --json` of a service that does not answer (stopped with
// SIGSTOP, or stuck) keeps the documented shape: lists are [], never null,
// and it shows the peer id and start time it can know without asking.
func TestLifecycleStatusOfUnansweringService(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	id := a.peerID()
	pid := a.start()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	lrWaitStopped(t, pid)
	var list []map[string]any
	out := a.mustRun("service", "status", "--json")
	a.decodeJSON(out, &list)
	if len(list) != 1 {
		t.Fatalf("service status --json: %s", out)
	}
	st := list[0]
	for _, k := range []string{"pid", "instance", "peer_id", "version", "online", "listen_addrs", "addrs", "started_at", "uptime", "connected_peers", "counters"} {
		if _, ok := st[k]; !ok {
			t.Errorf("status lacks %q: %s", k, out)
		}
	}
	for _, k := range []string{"listen_addrs", "addrs"} {
		if _, isList := st[k].([]any); !isList {
			t.Errorf("%s is %v, want a list ([] when empty, never null)", k, st[k])
		}
	}
	if st["online"] != false || st["pid"] != float64(pid) || st["instance"] != a.dir {
		t.Errorf("status of the stopped service: %s", out)
	}
	if st["peer_id"] != id {
		t.Errorf("peer_id %v, want %s", st["peer_id"], id)
	}
	if started, _ := st["started_at"].(string); strings.HasPrefix(started, "0001-") {
		t.Errorf("started_at %q of a service that started", started)
	}
	if text := a.mustRun("service", "status"); !strings.Contains(text, "not answering") {
		t.Errorf("service status does not say the service is not answering:\n%s", text)
	}
}

// lrWaitStopped waits until pid is stopped (state T in /proc/<pid>/stat),
// as it is soon after SIGSTOP.
func lrWaitStopped(t *testing.T, pid int) {
	t.Helper()
	checkFor(t, 10*time.Second, func() error {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return err
		}
		if k := strings.LastIndexByte(string(b), ')'); k < 0 || k+2 >= len(b) || b[k+2] != 'T' {
			return fmt.Errorf("pid %d is not stopped yet", pid)
		}
		return nil
	})
}

// `service status` asks the services at once, not one after another (so N
// stuck services do not make it wait N times the probe timeout). With two
// of three services stopped (SIGSTOP) it lists all three, sorted by
// instance, the stopped two as not answering and the third as it answers;
// no registration is dropped. Once continued, all three answer again.
func TestLifecycleStatusOfSeveralUnansweringServices(t *testing.T) {
	t.Parallel()
	insts := []*instance{newInstance(t, "a"), newInstance(t, "b"), newInstance(t, "c")}
	pids := make([]int, len(insts))
	for k, in := range insts {
		pids[k] = in.start()
	}
	stopped := map[int]bool{pids[0]: true, pids[2]: true}
	for pid := range stopped {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	}
	for pid := range stopped {
		lrWaitStopped(t, pid)
	}
	a := insts[0]
	began := time.Now()
	out := a.mustRun("service", "status", "--json")
	t.Logf("service status --json with %d of %d services stopped took %v", len(stopped), len(insts), time.Since(began))
	var list []map[string]any
	a.decodeJSON(out, &list)
	if len(list) != len(insts) {
		t.Fatalf("service status --json lists %d services, want %d: %s", len(list), len(insts), out)
	}
	instances := make([]string, len(list))
	for k, st := range list {
		instances[k], _ = st["instance"].(string)
	}
	if !slices.IsSorted(instances) {
		t.Errorf("service status --json is not sorted by instance: %v", instances)
	}
	for k, in := range insts {
		pid := pids[k]
		i := slices.Index(instances, in.dir)
		if i < 0 {
			t.Errorf("service status --json lacks %s (pid %d): %s", in.name, pid, out)
			continue
		}
		st := list[i]
		if st["pid"] != float64(pid) {
			t.Errorf("%s: pid %v, want %d", in.name, st["pid"], pid)
		}
		if want := !stopped[pid]; st["online"] != want {
			t.Errorf("%s (pid %d, stopped %v): online %v, want %v", in.name, pid, stopped[pid], st["online"], want)
		}
	}
	text := a.mustRun("service", "status")
	if n := strings.Count(text, "not answering"); n != len(stopped) {
		t.Errorf("service status says \"not answering\" %d times, want %d:\n%s", n, len(stopped), text)
	}
	// (Beside them, each running service holds its identity's lock file.)
	if regs, _ := filepath.Glob(filepath.Join(runtimeDir(t), "*.json")); len(regs) != len(insts) {
		t.Errorf("%d registrations after service status, want %d: %v", len(regs), len(insts), regs)
	}

	for pid := range stopped {
		if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
	}
	checkFor(t, 30*time.Second, func() error {
		var list []map[string]any
		out := a.mustRun("service", "status", "--json")
		a.decodeJSON(out, &list)
		online := 0
		for _, st := range list {
			if st["online"] == true {
				online++
			}
		}
		if len(list) != len(insts) || online != len(insts) {
			return fmt.Errorf("after SIGCONT, %d of %d listed services answer, want %d: %s", online, len(list), len(insts), out)
		}
		return nil
	})
	for k, in := range insts {
		in.mustRun("service", "stop")
		killAndWait(t, pids[k])
	}
	if ents, _ := os.ReadDir(runtimeDir(t)); len(ents) != 0 {
		t.Errorf("registrations left behind after service stop: %v", ents)
	}
}

// What a running service keeps in its instance directory is its user's
// only: the key, the log, the control socket and the pid file (which the
// service locks: another user who could open it could hold a lock on it
// and keep the service from starting).
func TestLifecycleServiceFileModes(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	a.start()
	for _, f := range []string{"keys/identity.key", "service.log", "coattail.sock", "service.pid"} {
		fi, err := os.Lstat(a.path(f))
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("%s has mode %04o, want no access for group and others", f, perm)
		}
	}
}

// A service whose instance directory is deleted while it runs (rm -rf
// without service stop) stops by itself, non-zero, and unregisters, rather
// than running on for ever with its data unlinked and no way to reach it.
func TestLifecycleServiceOfDeletedInstanceStops(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	pid := a.start()
	t.Cleanup(func() { killAndWait(t, pid) })
	checkFor(t, 30*time.Second, func() error {
		// The service may create files while the tree is removed.
		return os.RemoveAll(a.dir)
	})
	checkFor(t, 60*time.Second, func() error {
		if processAlive(pid) {
			return fmt.Errorf("the service (pid %d) of the deleted instance still runs", pid)
		}
		return nil
	})
	if ents, _ := os.ReadDir(runtimeDir(t)); len(ents) != 0 {
		t.Errorf("registration left behind: %v", ents)
	}
	out, stderr, code := a.runIn(filepath.Dir(a.dir), "service", "status", "--json")
	if code != 0 || strings.TrimSpace(out) != "[]" {
		t.Errorf("service status after the instance was deleted: exit %d, %s %s", code, out, stderr)
	}
}

// A foreground service run from a terminal stops gracefully when the
// terminal goes away (SIGHUP), as on Ctrl-C: it leaves no socket, pid file
// or registration, and exits 0.
func TestLifecycleForegroundServiceTerminalHangup(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	master, slave := openPTY(t)
	cmd := exec.Command(binPath, "service", "start")
	cmd.Dir = a.dir
	cmd.Env = childEnv(t)
	cmd.Stdin = slave
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	checkFor(t, 60*time.Second, func() error {
		if !strings.Contains(out.String(), "Coattail service running") {
			return fmt.Errorf("the foreground service is not ready: %s", out.String())
		}
		return nil
	})
	master.Close() // the terminal goes: its session leader gets SIGHUP
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("the foreground service exited with %v on hangup, want 0 (output: %s)", err, out.String())
		}
		done <- nil // for the clean-up
	case <-time.After(commandTimeout):
		t.Fatal("the foreground service runs on after its terminal closed")
	}
	for _, f := range []string{"coattail.sock", "service.pid"} {
		if _, err := os.Lstat(a.path(f)); err == nil {
			t.Errorf("%s left behind after the terminal closed", f)
		}
	}
	if ents, _ := os.ReadDir(runtimeDir(t)); len(ents) != 0 {
		t.Errorf("registration left behind after the terminal closed: %v", ents)
	}
}

// Only a regular log file is rotated. log.file may name a device (here
// /dev/null through a symlink, as /dev/stderr is one): rotation must not
// rename it away.
func TestLifecycleLogRotationSkipsDevices(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	link := filepath.Join(t.TempDir(), "devnull")
	if err := os.Symlink("/dev/null", link); err != nil {
		t.Fatal(err)
	}
	a.setConfig("file", link)
	a.setConfig("rotate_size", "100")
	lrStartStop(t, a, 2)
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the log symlink to /dev/null was replaced: %v, %v", fi, err)
	}
	if _, err := os.Lstat(link + ".1"); err == nil {
		t.Errorf("a device log file was rotated to %s.1", link)
	}
}

// A log.file that is a symlink to a regular file elsewhere is rotated
// where it points: the link stays, and the rotated files sit beside its
// target. Rotation renamed the link itself (the target kept growing as
// service.log.1's target, and a plain file replaced the link).
func TestLifecycleLogRotationFollowsSymlink(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	dir := t.TempDir()
	target := filepath.Join(dir, "coattail.log")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	link := a.path("linked.log")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	a.setConfig("file", link)
	a.setConfig("rotate_size", "600")
	lrStartStop(t, a, 4)
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("log.file is no longer the symlink: %v, %v", fi, err)
	}
	if _, err := os.Stat(target + ".1"); err != nil {
		t.Errorf("the target was not rotated beside itself: %v", err)
	}
	if _, err := os.Lstat(link + ".1"); err == nil {
		t.Errorf("the symlink itself was rotated to %s.1", link)
	}
	b, err := os.ReadFile(target)
	if err != nil || !strings.Contains(string(b), `"service stopping"`) {
		t.Errorf("the target does not hold the last stop (%v):\n%s", err, b)
	}
}

// lrSpawnStart spawns `service start --headless` for a and waits until
// exactly one service process of a runs and ready(its pid) holds.
func lrSpawnStart(t *testing.T, a *instance, ready func(pid int) error) (*proc, int) {
	t.Helper()
	start := a.spawn("service", "start", "--headless")
	var pid int
	checkFor(t, 30*time.Second, func() error {
		pids := lrServiceProcesses(t, a.dir)
		if len(pids) != 1 {
			return fmt.Errorf("service processes of %s: %v", a.dir, pids)
		}
		pid = pids[0]
		return ready(pid)
	})
	return start, pid
}
