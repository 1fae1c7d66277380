package runner

import (
	"context"
	"errors"
	"testing"
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
