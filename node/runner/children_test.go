package runner

import (
	"context"
	"path/filepath"
	"testing"
)

// A program that succeeds leaves nothing running: a child it started in
// the background, with its output elsewhere so that Run does not wait for
// it, is killed with its process group (SECURITY.md: each program is
// killed, children included). It ran on after the run, past
// action_timeout, for ever.
func TestSucceededProgramTakesItsChildren(t *testing.T) {
	r, dir := newTestRunner(t, nil)
	pidf := filepath.Join(dir, "child.pid")
	writeProgram(t, dir, KindAction, "bg", `sleep 600 >/dev/null 2>&1 </dev/null & echo $! > `+pidf+`; echo '"ok"'`)
	out, err := r.Run(context.Background(), action("bg", ""))
	if err != nil || string(out) != `"ok"` {
		t.Fatalf("Run = %s, %v", out, err)
	}
	pid := readPID(t, pidf)
	checkFor(t, "the background child to die", func() bool { return processGone(pid) })
}
