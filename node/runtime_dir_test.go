package node

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/coattail/coattail/datastore"
)

// The runtime directory may have been created by someone else first (the
// /tmp fallback): only a directory of this user is used (a loose one is
// tightened; ownership by another user cannot be staged without root), and
// a registration never writes through a symlink planted at its path.
func TestRuntimeDirIsOurs(t *testing.T) {
	parent := t.TempDir()
	rt := filepath.Join(parent, "rt")
	if err := os.Mkdir(rt, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(rt, 0o777); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(parent, "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(rt, strconv.Itoa(os.Getpid())+".json")); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvRuntimeDir, rt)
	unregister, err := register(Layout{Dir: "/x"}, "")
	if err != nil {
		t.Fatal(err)
	}
	defer unregister()
	if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
		t.Fatalf("registration wrote through a symlink: victim now %q", b)
	}
	if fi, err := os.Stat(rt); err != nil || fi.Mode().Perm() != 0o777 {
		t.Fatalf("a runtime dir the user chose was changed: mode %v, %v", fi.Mode().Perm(), err)
	}
	// The shared fallback is checked: one of ours is tightened.
	if err := checkRuntimeDir(rt); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(rt); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("runtime dir mode %v, %v; want 0700", fi.Mode().Perm(), err)
	}
	notDir := filepath.Join(parent, "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkRuntimeDir(notDir); err == nil {
		t.Fatal("a runtime dir that is a file was accepted")
	}
}

// The control socket is owner-only and answers at its path.
func TestListenPrivate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "coattail.sock")
	ln, err := listenPrivate(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket %v, %v; want an 0600 socket", fi.Mode(), err)
	}
	go func() {
		if c, err := ln.Accept(); err == nil {
			_ = c.Close()
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial the socket at its path: %v", err)
	}
	_ = c.Close()
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("left %d entries beside the socket", len(ents)-1)
	}
}

// The temporary socket path is never longer than the final one: a socket
// path of the longest length sun_path takes works every time.
func TestListenPrivateLongestPath(t *testing.T) {
	dir := t.TempDir()
	const name = "coattail.sock"
	pad := maxSocketPath - len(dir) - 2 - len(name)
	if pad < 1 {
		t.Skipf("temporary directory %s is too long for this test", dir)
	}
	dir = filepath.Join(dir, strings.Repeat("d", pad))
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if len(path) != maxSocketPath {
		t.Fatalf("path is %d bytes, want %d", len(path), maxSocketPath)
	}
	for range 20 {
		ln, err := listenPrivate(path)
		if err != nil {
			t.Fatalf("listenPrivate(%d-byte path): %v", len(path), err)
		}
		_ = ln.Close()
		_ = os.Remove(path)
	}
}

// A registration whose pid now belongs to another process (the service was
// killed and the pid reused) is removed, not listed with blank details; one
// whose process is the one that wrote it is listed even when its socket
// does not answer (a service starting up, or stuck).
func TestRegistrationOfReusedPidIsStale(t *testing.T) {
	rt := filepath.Join(t.TempDir(), "rt")
	if err := os.Mkdir(rt, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvRuntimeDir, rt)
	start, ok := datastore.ProcessStart(os.Getpid())
	if !ok || start == 0 {
		t.Fatalf("ProcessStart(self) = %d, %v", start, ok)
	}
	write := func(name string, r registration) string {
		t.Helper()
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(rt, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	sock := filepath.Join(t.TempDir(), "none.sock")
	reused := write("reused.json", registration{PID: os.Getpid(), Instance: "/reused", Socket: sock, Start: start + 1})
	same := write("same.json", registration{PID: os.Getpid(), Instance: "/same", Socket: sock, Start: start})
	sts, err := ListServices(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(sts) != 1 || sts[0].Instance != "/same" || sts[0].PID != os.Getpid() {
		t.Errorf("ListServices = %+v, want only /same", sts)
	}
	if _, err := os.Stat(reused); !os.IsNotExist(err) {
		t.Errorf("the registration of a reused pid was kept (%v)", err)
	}
	if _, err := os.Stat(same); err != nil {
		t.Errorf("a live service's registration was removed: %v", err)
	}
}

// An instance whose directory, actions/ or receivers/ every user can write
// to is refused by the service and by the CLI's connection (anyone could
// plant an action peers then run, or a socket in place of the control
// socket); the check names the directory and the fix.
func TestWorldWritableInstanceRefused(t *testing.T) {
	t.Setenv(EnvRuntimeDir, t.TempDir())
	for _, sub := range []string{"", "actions", "receivers"} {
		dir := filepath.Join(t.TempDir(), "inst")
		l, err := CreateInstance(dir, CreateOptions{Port: 0, Loopback: true})
		if err != nil {
			t.Fatal(err)
		}
		target := filepath.Join(l.Dir, sub)
		if err := os.Chmod(target, 0o777); err != nil {
			t.Fatal(err)
		}
		err = RunService(context.Background(), l, ServiceOptions{})
		if !errors.Is(err, ErrInsecureInstance) || !strings.Contains(err.Error(), target) || !strings.Contains(err.Error(), "chmod o-w") {
			t.Errorf("%s 0777: RunService = %v, want ErrInsecureInstance naming it", target, err)
		}
		if c, err := Connect(context.Background(), l); !errors.Is(err, ErrInsecureInstance) {
			if c != nil {
				c.Close()
			}
			t.Errorf("%s 0777: Connect = %v, want ErrInsecureInstance", target, err)
		}
		// Group-writable (a shared group) and sticky-less 0755 are fine.
		if err := os.Chmod(target, 0o775); err != nil {
			t.Fatal(err)
		}
		c, err := Connect(context.Background(), l)
		if err != nil {
			t.Fatalf("%s 0775: Connect = %v", target, err)
		}
		c.Close()
	}
}
