package node_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
)

// limits.max_running bounds the programs running at once: with 1, a second
// perform of an executable waits until the first has finished, then runs.
func TestMaxRunningBoundsPrograms(t *testing.T) {
	n := newTestNode(t, withQuietLog(), withLimits(func(l *node.LimitsConfig) { l.MaxRunning = 1 }))
	writeAction(t, n, "hold", `#!/bin/sh
dir=$(cat | tr -d '"')
mkdir "$dir/started.$$"
while [ ! -e "$dir/release" ]; do sleep 0.01; done
echo 1
`)
	dir := t.TempDir()
	in, _ := json.Marshal(dir)
	done := make(chan error, 2)
	run := func() {
		_, err := perform(testCtx(t), n, "", "hold", string(in))
		done <- err
	}
	started := func() int {
		m, _ := filepath.Glob(filepath.Join(dir, "started.*"))
		return len(m)
	}
	go run()
	checkFor(t, testTimeout, 10*time.Millisecond, func() error {
		if started() != 1 {
			return fmt.Errorf("first program not started")
		}
		return nil
	})
	go run()
	// The second waits for a slot as long as the first runs.
	time.Sleep(300 * time.Millisecond)
	if s := started(); s != 1 {
		t.Fatalf("%d programs running at once with max_running 1", s)
	}
	if err := os.WriteFile(filepath.Join(dir, "release"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := waitErr(t, done, "a perform"); err != nil {
			t.Fatal(err)
		}
	}
	if s := started(); s != 2 {
		t.Fatalf("%d programs ran, want 2", s)
	}
}
