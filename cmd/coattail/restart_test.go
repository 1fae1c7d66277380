package main

import (
	"context"
	"encoding/json"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// `service restart` checks config.yml first (a broken one leaves the
// running service alone), stops the service and starts it in the
// background, with --relay as the stopped one had it unless told; a
// service not running is started.
func TestServiceRestart(t *testing.T) {
	i := newInstance(t, "restart")
	status := func() (pid int, relay bool) {
		t.Helper()
		var list []struct {
			PID      int    `json:"pid"`
			Instance string `json:"instance"`
			Relay    bool   `json:"relay"`
		}
		if err := json.Unmarshal([]byte(i.mustRun("service", "status", "--json")), &list); err != nil {
			t.Fatal(err)
		}
		for _, s := range list {
			if s.Instance == i.dir {
				return s.PID, s.Relay
			}
		}
		return 0, false
	}
	// restart runs `service restart args…` and returns the pids it
	// printed: the stopped one (0 if none) and the new one.
	restart := func(args ...string) (old, started int) {
		t.Helper()
		out := i.mustRun(append([]string{"service", "restart"}, args...)...)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) == 2 {
			s, ok := strings.CutPrefix(lines[0], "Stopped service (pid ")
			if old, _ = strconv.Atoi(strings.TrimSuffix(s, ")")); !ok || old <= 0 {
				t.Fatalf("service restart printed %q, want the stopped pid first", out)
			}
			lines = lines[1:]
		}
		started, err := strconv.Atoi(lines[0])
		if err != nil || len(lines) != 1 {
			t.Fatalf("service restart printed %q, want the new pid last", out)
		}
		i.t.Cleanup(func() { i.cleanupService(started) })
		return old, started
	}

	// Not running: started.
	_, stderr, code := i.run("service", "restart")
	if code != 0 || !strings.Contains(stderr, "was not running") {
		t.Fatalf("service restart of a stopped instance: exit %d, stderr %q", code, stderr)
	}
	first, _ := status()
	if first == 0 {
		t.Fatal("service restart of a stopped instance did not start it")
	}
	i.t.Cleanup(func() { i.cleanupService(first) })
	i.mustRun("service", "stop")

	out := strings.TrimSpace(i.mustRun("service", "start", "--headless", "--relay"))
	pid, err := strconv.Atoi(out)
	if err != nil {
		t.Fatalf("service start printed %q", out)
	}
	i.t.Cleanup(func() { i.cleanupService(pid) })
	if p, relay := status(); p != pid || !relay {
		t.Fatalf("status after start --relay: pid %d relay %v, want %d and true", p, relay, pid)
	}
	// Kept --relay; a new process.
	old, next := restart()
	if old != pid || next == pid || processAlive(pid) {
		t.Fatalf("service restart: stopped %d, started %d (old pid %d alive: %v); want %d stopped and a new one", old, next, pid, processAlive(pid), pid)
	}
	if p, relay := status(); p != next || !relay {
		t.Fatalf("status after restart: pid %d relay %v, want %d and true (as started)", p, relay, next)
	}
	// A broken config: refused, the service runs on.
	i.setConfig("stream_timeout", "soon")
	i.mustFail([]string{"service", "restart"}, "stream_timeout", "not restarted", "runs on")
	if p, _ := status(); p != next || !processAlive(next) {
		t.Fatalf("after a refused restart the service is pid %d (alive %v), want %d still running", p, processAlive(next), next)
	}
	i.setConfig("stream_timeout", "30s")
	// --relay=false turns the relay off.
	old, last := restart("--relay=false")
	if old != next || last == next {
		t.Fatalf("service restart --relay=false: stopped %d, started %d; want %d stopped", old, last, next)
	}
	if p, relay := status(); p != last || relay {
		t.Fatalf("status after restart --relay=false: pid %d relay %v, want %d and false", p, relay, last)
	}

	// Two restarts at once: each stops or finds stopped, starts or finds
	// started by the other; both succeed and one service runs, whose pid
	// one of them printed last.
	type result struct {
		out, stderr string
		err         error
	}
	results := make(chan result, 2)
	env := childEnv(t, i.env...)
	for range 2 {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, binPath, "service", "restart")
			cmd.Dir, cmd.Env = i.dir, env
			cmd.WaitDelay = 5 * time.Second
			var out, errb strings.Builder
			cmd.Stdout, cmd.Stderr = &out, &errb
			err := cmd.Run()
			results <- result{out.String(), errb.String(), err}
		}()
	}
	var lastPids []int
	for range 2 {
		r := <-results
		if r.err != nil {
			t.Errorf("concurrent service restart: %v\nstdout: %s\nstderr: %s", r.err, r.out, r.stderr)
			continue
		}
		lines := strings.Split(strings.TrimSpace(r.out), "\n")
		p, err := strconv.Atoi(lines[len(lines)-1])
		if err != nil {
			t.Errorf("concurrent service restart printed %q, want a pid last", r.out)
			continue
		}
		lastPids = append(lastPids, p)
		i.t.Cleanup(func() { i.cleanupService(p) })
	}
	if p, _ := status(); p == 0 || !slices.Contains(lastPids, p) {
		t.Fatalf("after two concurrent restarts the service is pid %d, want one of %v", p, lastPids)
	}
}
