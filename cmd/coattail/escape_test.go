package main

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readPIDFile waits for path to hold a pid and returns it.
func readPIDFile(t *testing.T, path string) int {
	t.Helper()
	var pid int
	checkFor(t, 20*time.Second, func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err
	})
	return pid
}

// Stopping the service while an action runs that started a process
// outside its process group (setsid, with its output elsewhere, as a
// daemon does) kills that process too: it used to run on for ever after
// the service was gone.
func TestServiceStopKillsEscapedProcess(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("processes that left the group are found through /proc (Linux)")
	}
	t.Parallel()
	a := newInstance(t, "a")
	pidFile := a.path("escaped.pid")
	a.writeScript("actions", "slow", `setsid sh -c 'echo $$ > "$0"; exec sleep 1000' `+pidFile+` >/dev/null 2>&1 </dev/null &
sleep 30
echo '{}'
`)
	a.start()
	done := make(chan int, 1)
	go func() {
		_, _, code := a.run("action", "perform", "--action", "slow")
		done <- code
	}()
	pid := readPIDFile(t, pidFile)
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	a.stopUnderPerform(done, pid, "escaped process")
	if b, _ := os.ReadFile(a.path("service.log")); !strings.Contains(string(b), "outside its process group") {
		t.Errorf("the service did not log the kill; log:\n%s", b)
	}
}

// A service started in the background by an action (`service start
// --headless`, here of another instance) is not part of that run: it runs
// on after the action exits, although whatever else the action leaves
// running is killed.
func TestServiceStartedByActionOutlivesIt(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	b := newInstance(t, "b")
	a.writeScript("actions", "start.b", `COATTAIL_RUNTIME_DIR=`+runtimeDir(t)+` "$COATTAIL_BIN" --instance `+b.dir+` service start --headless > `+a.path("b.pid")+` 2>&1 </dev/null
echo '{}'
`)
	a.mustRun("action", "perform", "--action", "start.b") // offline: the CLI runs it
	pid := readPIDFile(t, a.path("b.pid"))
	t.Cleanup(func() { b.cleanupService(pid) })
	time.Sleep(500 * time.Millisecond) // a kill sent at the run's end has landed by now
	if !processAlive(pid) {
		t.Fatalf("the service the action started (pid %d) did not outlive the action", pid)
	}
	b.writeScript("actions", "echo", "cat\n")
	if out := b.mustRun("action", "perform", "--action", "echo", "--data", `{"x":1}`); !strings.Contains(out, `"x"`) {
		t.Errorf("perform at the started service printed %q", out)
	}
}
