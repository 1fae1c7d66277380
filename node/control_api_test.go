package node_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
)

// pidScript writes its pid to the file named in its input, then logs
// lines on stderr until it is killed (a long line each, so that a caller
// that stops reading fills the connection quickly).
const pidScript = `#!/bin/sh
input=$(cat)
f=$(printf '%s' "$input" | tr -d '"')
echo $$ > "$f.tmp" && mv "$f.tmp" "$f"
line=$(printf '%0512d' 0)
while :; do echo "$line" >&2; done
`

// quietPidScript writes its pid to the file named in its input and then
// waits, silent, until it is killed.
const quietPidScript = `#!/bin/sh
input=$(cat)
f=$(printf '%s' "$input" | tr -d '"')
echo $$ > "$f.tmp" && mv "$f.tmp" "$f"
while :; do sleep 0.05; done
`

// readPID waits until the action has written its pid to path.
func readPID(t *testing.T, path string) int {
	t.Helper()
	var pid int
	checkFor(t, testTimeout, 10*time.Millisecond, func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err
	})
	return pid
}

// rawPerform writes a perform request for action with input on a new raw
// connection to the control socket and returns the connection unread.
func rawPerform(t *testing.T, l node.Layout, action string, input any) net.Conn {
	t.Helper()
	nc, err := net.Dial("unix", l.Socket())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	body, _ := json.Marshal(localapi.PerformRequest{Action: action, Input: mustJSON(t, input)})
	req := fmt.Sprintf("POST /v1/actions/perform HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	if _, err := io.WriteString(nc, req); err != nil {
		t.Fatal(err)
	}
	return nc
}

func mustJSON(t *testing.T, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A caller of a streamed perform that goes away stops the action.
func TestControlPerformCallerLeavesStopsAction(t *testing.T) {
	cfg := node.LoopbackConfig(0)
	cfg.Limits.ActionTimeout = 5 * time.Minute
	l := runService(t, cfg)
	if err := os.WriteFile(filepath.Join(l.Dir, "actions", "forever"), []byte(quietPidScript), 0o755); err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(t.TempDir(), "pid")
	nc := rawPerform(t, l, "forever", pidFile)
	pid := readPID(t, pidFile)
	_ = nc.Close()
	checkFor(t, testTimeout, 10*time.Millisecond, func() error {
		if !processGone(pid) {
			return fmt.Errorf("action pid %d still runs after its caller left", pid)
		}
		return nil
	})
}

// A caller of a streamed perform that stops reading (but stays connected)
// is cut off once a write has blocked for stream_timeout, and its action
// is stopped: it neither runs on until action_timeout nor pins the
// handler.
func TestControlPerformCallerStopsReading(t *testing.T) {
	cfg := node.LoopbackConfig(0)
	cfg.Limits.ActionTimeout = 5 * time.Minute
	cfg.Limits.StreamTimeout = time.Second
	l := runService(t, cfg)
	if err := os.WriteFile(filepath.Join(l.Dir, "actions", "spew"), []byte(pidScript), 0o755); err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(t.TempDir(), "pid")
	nc := rawPerform(t, l, "spew", pidFile)
	pid := readPID(t, pidFile)
	checkFor(t, testTimeout, 10*time.Millisecond, func() error {
		if !processGone(pid) {
			return fmt.Errorf("action pid %d still runs while its caller does not read", pid)
		}
		return nil
	})
	// The server closed the connection: reading it to the end finishes.
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, bufio.NewReader(nc))
		done <- err
	}()
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("the server kept the connection of a caller that stopped reading")
	}
	// The service still answers.
	c := localapi.Dial(l.Socket())
	defer c.Close()
	if _, err := c.Status(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

// runServiceGoroutines counts goroutines started by RunService.
func runServiceGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	return strings.Count(string(buf), "node.RunService")
}

// A service that fails after its control socket is up (here: its
// instance directory is deleted while it runs) closes the socket's
// server: nothing keeps serving a closed node.
func TestControlServiceFailureClosesServer(t *testing.T) {
	rt := t.TempDir()
	t.Setenv(node.EnvRuntimeDir, rt)
	l, err := node.CreateInstance(filepath.Join(t.TempDir(), "i"), node.CreateOptions{Port: 0, Loopback: true})
	if err != nil {
		t.Fatal(err)
	}
	before := runServiceGoroutines()
	err = node.RunService(testCtx(t), l, node.ServiceOptions{Ready: func(int) {
		if _, err := os.Stat(l.Socket()); err != nil {
			t.Errorf("ready without a control socket: %v", err)
		}
		if err := os.RemoveAll(l.Dir); err != nil {
			t.Error(err)
		}
	}})
	if err == nil || !strings.Contains(err.Error(), "deleted") {
		t.Fatalf("RunService whose instance directory was deleted: %v", err)
	}
	checkFor(t, testTimeout, 10*time.Millisecond, func() error {
		if n := runServiceGoroutines(); n > before {
			return fmt.Errorf("%d goroutines of RunService still run after it returned", n-before)
		}
		return nil
	})
	if _, err := os.Lstat(l.Socket()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
	if ents, _ := os.ReadDir(rt); len(ents) != 0 {
		t.Errorf("runtime dir holds %d entries after the service failed", len(ents))
	}
}
