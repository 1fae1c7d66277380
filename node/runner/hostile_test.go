package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Stdout past max_output fails the run even when it is a child, still
// running, that overflows it after the program itself exited 0. The
// overflow used to be ignored on that path and the run succeeded with the
// program's own (truncated) output.
func TestOutputOverflowByStragglerFails(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, func(c *Config) { c.MaxOutput = 1024 })
	// The child waits until the program is gone (reaped), then writes
	// 2000 bytes to the shared stdout and lingers holding it.
	writeProgram(t, dir, KindAction, "late.flood", `(
  while kill -0 $$ 2>/dev/null; do sleep 0.01; done
  head -c 2000 /dev/zero | tr '\0' ' '
  sleep 30
) & echo 1; exit 0`)
	out, err := r.Run(context.Background(), action("late.flood", ""))
	if !errors.Is(err, ErrOutputTooLarge) {
		t.Fatalf("Run = %q, %v; want ErrOutputTooLarge", out, err)
	}
}

// One byte over max_output is refused, from a program that exits 0 at
// once (the exact limit passes: TestRunOutputTooLarge).
func TestOutputOneByteOverLimit(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, func(c *Config) { c.MaxOutput = 1024 })
	writeProgram(t, dir, KindAction, "over.by.one", `printf '"%s"' "$(head -c 1023 /dev/zero | tr '\0' 'a')"`)
	out, err := r.Run(context.Background(), action("over.by.one", ""))
	if !errors.Is(err, ErrOutputTooLarge) {
		t.Fatalf("Run = %d bytes, %v; want ErrOutputTooLarge", len(out), err)
	}
}

// A program that floods stderr passes at most MaxLogBytes of log lines to
// Log, then one line saying how many it dropped; its output still counts.
// Every line used to be passed on, for as long as the program ran.
func TestStderrFloodIsBounded(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	const lines = 400_000 // 10 bytes each with the newline: about 4 MiB
	writeProgram(t, dir, KindAction, "noisy", `yes 'log line' | head -n `+strconv.Itoa(lines)+` >&2; echo '"done"'`)
	var got []string
	total := 0
	inv := action("noisy", "")
	inv.Log = func(l string) { got = append(got, l); total += len(l) + 1 }
	out, err := r.Run(context.Background(), inv)
	if err != nil || string(out) != `"done"` {
		t.Fatalf("Run = %s, %v", out, err)
	}
	if len(got) < 2 {
		t.Fatalf("got %d log lines", len(got))
	}
	last := got[len(got)-1]
	if total > MaxLogBytes+len(last)+1 {
		t.Errorf("Log received %d bytes, want at most MaxLogBytes (%d) plus the closing line", total, MaxLogBytes)
	}
	kept := len(got) - 1
	if want := fmt.Sprintf("…[%d more stderr lines dropped: a run logs at most %d bytes]", lines-kept, MaxLogBytes); last != want {
		t.Errorf("last line = %q, want %q", last, want)
	}
	for i, l := range got[:kept] {
		if l != "log line" {
			t.Fatalf("line %d = %q", i, l)
		}
	}
}

// A symlink in actions/ is followed, also to a program outside the
// instance (the owner's choice, documented in locate); a dangling one is
// reported as such rather than as a missing action.
func TestSymlinkedPrograms(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	elsewhere := filepath.Join(t.TempDir(), "echo.sh")
	if err := os.WriteFile(elsewhere, []byte("#!/bin/sh\nexec cat\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(elsewhere, 0o755); err != nil {
		t.Fatal(err)
	}
	actions := filepath.Join(dir, "actions")
	if err := os.MkdirAll(actions, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, filepath.Join(actions, "linked")); err != nil {
		t.Fatal(err)
	}
	if out, err := r.Run(context.Background(), action("linked", `{"x":1}`)); err != nil || string(out) != `{"x":1}` {
		t.Errorf("symlink to a program outside the instance: %s, %v; want the input back", out, err)
	}

	gone := filepath.Join(t.TempDir(), "removed.sh")
	if err := os.Symlink(gone, filepath.Join(actions, "dangling")); err != nil {
		t.Fatal(err)
	}
	_, err := r.Run(context.Background(), action("dangling", `{}`))
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "is a symlink") || !strings.Contains(err.Error(), gone) {
		t.Errorf("dangling symlink: err = %v, want ErrNotFound naming the link and its missing target %s", err, gone)
	}
}

// Executables beyond MaxRunning wait for a slot instead of starting: with
// one slot held by a running program, a second run does not start before
// its caller gives up, and starts once the slot is free. Every run used to
// start at once, however many were running.
func TestMaxRunningBoundsExecutables(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, func(c *Config) { c.MaxRunning = 1 })
	release := filepath.Join(dir, "release")
	started := filepath.Join(dir, "started")
	writeProgram(t, dir, KindAction, "hold", `touch held; while [ ! -e release ]; do sleep 0.01; done; echo 1`)
	writeProgram(t, dir, KindAction, "quick", `touch started; echo 2`)

	held := make(chan error, 1)
	go func() {
		_, err := r.Run(context.Background(), action("hold", ""))
		held <- err
	}()
	checkFor(t, "the first program to run", func() bool {
		_, err := os.Stat(filepath.Join(dir, "held"))
		return err == nil
	})

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	out, err := r.Run(ctx, action("quick", ""))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "waiting to start") {
		t.Errorf("second run while the only slot is taken = %s, %v; want it stopped while waiting to start", out, err)
	}
	if _, err := os.Stat(started); err == nil {
		t.Error("the second program started although the only slot was taken")
	}

	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := <-held; err != nil {
		t.Fatalf("first run: %v", err)
	}
	if out, err := r.Run(context.Background(), action("quick", "")); err != nil || string(out) != "2" {
		t.Errorf("run after the slot was freed = %s, %v; want 2", out, err)
	}
	// In-process handlers take no slot.
	if err := r.Register(KindAction, "go.quick", func(context.Context, Invocation) (json.RawMessage, error) {
		return json.RawMessage("3"), nil
	}); err != nil {
		t.Fatal(err)
	}
	if out, err := r.Run(context.Background(), action("go.quick", "")); err != nil || string(out) != "3" {
		t.Errorf("in-process handler = %s, %v", out, err)
	}
}

// A receiver's output is not used: one that prints more than max_output
// (a tool's report) has handled its publication. It was killed at the
// limit and failed, so it was retried, running again, and parked.
func TestReceiverOutputOverLimitIsDropped(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, func(c *Config) { c.MaxOutput = 1024 })
	marker := filepath.Join(t.TempDir(), "finished")
	writeProgram(t, dir, KindReceiver, "chatty", `head -c 100000 /dev/zero | tr '\0' 'a'; touch `+marker)
	out, err := r.Run(context.Background(), Invocation{Kind: KindReceiver, Name: "chatty", Input: json.RawMessage(`1`)})
	if err != nil || out != nil {
		t.Fatalf("Run = %d bytes, %v; want no output and no error", len(out), err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("the receiver was stopped before it finished: %v", err)
	}
	// An action's output is its result: over the limit still fails.
	writeProgram(t, dir, KindAction, "chatty", `head -c 100000 /dev/zero | tr '\0' 'a'`)
	if _, err := r.Run(context.Background(), action("chatty", "")); !errors.Is(err, ErrOutputTooLarge) {
		t.Fatalf("action over max_output: %v, want ErrOutputTooLarge", err)
	}
}
