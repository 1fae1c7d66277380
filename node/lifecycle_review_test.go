package node

// Service lifecycle review: what keeps a long-running service reachable.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// lrWait polls fn until it returns nil, failing the test after timeout.
func lrWait(t *testing.T, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A service outlives its registration: XDG_RUNTIME_DIR goes when its
// user's last session ends, and tmpfiles cleans /tmp. The running service
// registers again, so `service status` lists it and `service stop PID`
// finds it; once it stops, it leaves no registration.
func TestLifecycleRegistrationRestored(t *testing.T) {
	rt := filepath.Join(t.TempDir(), "run")
	t.Setenv(EnvRuntimeDir, rt)
	old := registerInterval
	registerInterval = 20 * time.Millisecond
	defer func() { registerInterval = old }()
	l, err := CreateInstance(filepath.Join(t.TempDir(), "i"), CreateOptions{Port: 0, Loopback: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan int, 1)
	done := make(chan error, 1)
	go func() {
		done <- RunService(ctx, l, ServiceOptions{Ready: func(pid int) { ready <- pid }})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("RunService: %v", err)
	case <-time.After(90 * time.Second):
		t.Fatal("the service did not become ready")
	}
	reg := filepath.Join(rt, strconv.Itoa(os.Getpid())+".json")
	if _, err := os.Stat(reg); err != nil {
		t.Fatalf("no registration once ready: %v", err)
	}
	if err := os.RemoveAll(rt); err != nil { // the session's runtime dir went
		t.Fatal(err)
	}
	lrWait(t, 30*time.Second, func() error {
		list, err := ListServices(context.Background())
		if err != nil {
			return err
		}
		if len(list) != 1 || list[0].PID != os.Getpid() || list[0].Instance != l.Dir || !list[0].Online {
			return fmt.Errorf("service status lists %+v, want the running service", list)
		}
		return nil
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("RunService: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the service did not stop")
	}
	if _, err := os.Stat(reg); err == nil {
		t.Error("the stopped service left its registration")
	}
}
