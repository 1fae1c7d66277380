package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// runTestService runs the service of a new instance and returns its
// layout once it is ready, and stop, which stops it (at the latest when
// the test ends) and returns RunService's result.
func runTestService(t *testing.T) (Layout, func() error) {
	t.Helper()
	l, err := CreateInstance(filepath.Join(t.TempDir(), "i"), CreateOptions{Port: 0, Loopback: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- RunService(ctx, l, ServiceOptions{Ready: func(int) { close(ready) }}) }()
	stop := sync.OnceValue(func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(60 * time.Second):
			return errors.New("the service did not stop")
		}
	})
	t.Cleanup(func() { _ = stop() })
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("RunService: %v", err)
	case <-time.After(90 * time.Second):
		t.Fatal("the service did not become ready")
	}
	return l, stop
}

// A service whose control socket file is removed while it runs (a /tmp
// cleaner, a careless rm) listens on a new one, so that the CLI reaches
// it again; it used to be unreachable until killed. A file put in the
// socket's place is left alone, and so is the old path of a directory
// that was moved away (another instance may live there now).
func TestControlSocketRemovedIsMadeAgain(t *testing.T) {
	t.Setenv(EnvRuntimeDir, t.TempDir())
	old := instanceCheckInterval
	instanceCheckInterval = 20 * time.Millisecond
	defer func() { instanceCheckInterval = old }()

	t.Run("removed", func(t *testing.T) {
		l, stop := runTestService(t)
		for range 3 {
			if err := os.Remove(l.Socket()); err != nil {
				t.Fatal(err)
			}
			lrWait(t, 10*time.Second, func() error {
				st, err := probe(l)
				if err != nil {
					return err
				}
				if st.PID != os.Getpid() {
					return fmt.Errorf("pid %d answers", st.PID)
				}
				return nil
			})
			if fi, err := os.Lstat(l.Socket()); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("new socket: %v, %v; want mode 0600", fi, err)
			}
		}
		if err := stop(); err != nil {
			t.Fatalf("RunService after its socket was made again = %v, want a clean stop", err)
		}
		if _, err := os.Lstat(l.Socket()); !os.IsNotExist(err) {
			t.Errorf("the stopped service left its socket: %v", err)
		}
	})

	t.Run("replaced", func(t *testing.T) {
		l, stop := runTestService(t)
		if err := os.Remove(l.Socket()); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(l.Socket(), []byte("mine\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * instanceCheckInterval)
		if b, err := os.ReadFile(l.Socket()); err != nil || string(b) != "mine\n" {
			t.Errorf("the file in the socket's place was touched: %q, %v", b, err)
		}
		if err := stop(); err != nil {
			t.Fatalf("RunService = %v", err)
		}
		if b, err := os.ReadFile(l.Socket()); err != nil || string(b) != "mine\n" {
			t.Errorf("the stopping service removed a file that was not its socket: %q, %v", b, err)
		}
	})

	t.Run("moved", func(t *testing.T) {
		l, stop := runTestService(t)
		moved := l.Dir + "-moved"
		if err := os.Rename(l.Dir, moved); err != nil {
			t.Fatal(err)
		}
		// Another instance now lives at the old path.
		if err := os.Mkdir(l.Dir, 0o755); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * instanceCheckInterval)
		if _, err := os.Lstat(l.Socket()); !os.IsNotExist(err) {
			t.Errorf("a socket was made at the moved instance's old path: %v", err)
		}
		if _, err := probe(Layout{Dir: moved}); err != nil {
			t.Errorf("the moved instance does not answer on its socket: %v", err)
		}
		// (Its datastore, whose directory moved, is not flushed: an
		// error of its own.)
		_ = stop()
	})
}
