package main

// Who holds an instance, told to the user: an offline command holding the
// data, a service whose control socket is gone, a copy of an instance
// running with the same identity.

import (
	"strconv"
	"strings"
	"testing"
)

// While an offline command holds the instance's data, a command that
// needs it names that command and its pid (not "another process that is
// not answering"), and `service start` says what it waits for and starts
// once the command is done (it used to wait 10 s in silence and then fail,
// asking whether a service was running).
func TestServiceStartWhileOfflineCommandHoldsData(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	hold := lrHoldData(t, a, 8)
	holder := strconv.Itoa(hold.cmd.Process.Pid)
	stderr := a.mustFail([]string{"peer", "list"}, "in use by", `offline command "coattail action perform"`, "pid "+holder, "wait for it to finish")
	if strings.Contains(stderr, "not answering") {
		t.Errorf("peer list: %s", stderr)
	}
	out, stderr, code := a.run("service", "start", "--headless")
	if code != 0 {
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
