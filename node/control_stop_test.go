package node_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
)

// startService runs a real service on a new instance and returns its
// layout, a channel that gets RunService's result, and the cancel that
// stops it (also called when the test ends).
func startService(t *testing.T, cfg node.Config) (node.Layout, <-chan error, context.CancelFunc) {
	t.Helper()
	rt := t.TempDir()
	t.Setenv(node.EnvRuntimeDir, rt)
	l, err := node.CreateInstance(filepath.Join(t.TempDir(), "i"), node.CreateOptions{Port: 0, Loopback: true})
	if err != nil {
		t.Fatal(err)
	}
	conf, err := node.RenderConfig(cfg, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.Config(), conf, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- node.RunService(ctx, l, node.ServiceOptions{Ready: func(int) { close(ready) }}) }()
	t.Cleanup(cancel)
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("service did not start: %v", err)
	case <-time.After(testTimeout):
		t.Fatal("service did not become ready")
	}
	return l, done, cancel
}

// service stop while a perform is in flight: the action is stopped, its
// caller is told the service stopped, and the socket, the pid file and the
// registration are gone once the service has returned.
func TestControlStopWithPerformInFlight(t *testing.T) {
	cfg := node.LoopbackConfig(0)
	cfg.Limits.ActionTimeout = 5 * time.Minute
	l, done, _ := startService(t, cfg)
	if err := os.WriteFile(filepath.Join(l.Dir, "actions", "forever"), []byte(quietPidScript), 0o755); err != nil {
		t.Fatal(err)
	}
	c := localapi.Dial(l.Socket())
	defer c.Close()
	pidFile := filepath.Join(t.TempDir(), "pid")
	performErr := make(chan error, 1)
	go func() {
		_, err := c.Perform(context.Background(), localapi.PerformRequest{Action: "forever", Input: mustJSON(t, pidFile)}, nil)
		performErr <- err
	}()
	pid := readPID(t, pidFile)
	if err := localapi.Dial(l.Socket()).Stop(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("RunService: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("the service did not stop")
	}
	if !processGone(pid) {
		t.Errorf("action pid %d still runs after the service returned", pid)
	}
	select {
	case err := <-performErr:
		var le *localapi.Error
		if !errors.As(err, &le) || le.Code != localapi.CodeUnavailable {
			t.Errorf("perform cut by service stop: %v (%#v); want an unavailable error", err, le)
		}
	case <-time.After(testTimeout):
		t.Fatal("the perform did not end with the service")
	}
	for _, p := range []string{l.Socket(), l.PIDFile()} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", p, err)
		}
	}
	if ents, _ := os.ReadDir(os.Getenv(node.EnvRuntimeDir)); len(ents) != 0 {
		t.Errorf("runtime dir holds %d entries after the service stopped", len(ents))
	}
	if ents, _ := os.ReadDir(l.Dir); true {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".") && e.Name() != ".ct.version" {
				t.Errorf("instance dir holds %s after the service stopped", e.Name())
			}
		}
	}
}
