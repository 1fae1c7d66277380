package node

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/coattail/coattail/datastore"
)

// A copy of an instance (its identity key with it) is refused while a
// service with that peer id runs on this machine, whether it is found by
// its identity lock (two starting at once) or by its registration (an
// older version, or one whose lock went with its runtime directory);
// a registration of a process that is gone does not count.
func TestClaimIdentity(t *testing.T) {
	rt := t.TempDir()
	t.Setenv(EnvRuntimeDir, rt)
	orig, err := CreateInstance(filepath.Join(t.TempDir(), "orig"), CreateOptions{Port: 0, Loopback: true})
	if err != nil {
		t.Fatal(err)
	}
	id, err := PeerIDOf(orig)
	if err != nil {
		t.Fatal(err)
	}
	cp := Layout{Dir: filepath.Join(t.TempDir(), "copy")}
	warn := func(err error) { t.Errorf("warning: %v", err) }

	release, err := claimIdentity(orig, id, warn)
	if err != nil {
		t.Fatal(err)
	}
	_, err = claimIdentity(cp, id, warn)
	if !errors.Is(err, ErrIdentityInUse) {
		t.Fatalf("second claim = %v, want ErrIdentityInUse", err)
	}
	// In this process the holder's pid is ours, which the message cannot
	// tell from its own; it still says what to do.
	if !strings.Contains(err.Error(), "coattail new") {
		t.Errorf("message %q does not say how a copy gets its own identity", err)
	}
	release()
	if _, err := os.Lstat(identityLockPath(rt, id)); !os.IsNotExist(err) {
		t.Errorf("release left the lock file: %v", err)
	}

	// A live service, known by its registration only.
	other := exec.Command("sleep", "300")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Process.Kill(); _ = other.Wait() })
	start, ok := datastore.ProcessStart(other.Process.Pid)
	if !ok {
		t.Skip("no /proc")
	}
	reg := func(r registration) {
		b, _ := json.Marshal(r)
		if err := os.WriteFile(registrationPath(rt, r.PID), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pid := other.Process.Pid
	for _, r := range []registration{
		{PID: pid, Instance: orig.Dir, Start: start, PeerID: id.String()},
		{PID: pid, Instance: orig.Dir, Start: start}, // older version: judged by its key
	} {
		reg(r)
		_, err := claimIdentity(cp, id, warn)
		if !errors.Is(err, ErrIdentityInUse) {
			t.Fatalf("claim while %+v is registered = %v, want ErrIdentityInUse", r, err)
		}
		for _, want := range []string{orig.Dir, "pid " + strconv.Itoa(pid), id.String(), cp.Dir + " a copy", "coattail new", "keys/"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("message %q lacks %q", err, want)
			}
		}
		if _, err := os.Lstat(identityLockPath(rt, id)); !os.IsNotExist(err) {
			t.Errorf("a refused claim left the lock file: %v", err)
		}
	}

	// Stale: the registration's pid is another process's now, or gone.
	reg(registration{PID: pid, Instance: orig.Dir, Start: start + 1, PeerID: id.String()})
	release, err = claimIdentity(cp, id, warn)
	if err != nil {
		t.Fatalf("claim with a stale registration = %v", err)
	}
	release()
	_ = other.Process.Kill()
	_ = other.Wait()
	reg(registration{PID: pid, Instance: orig.Dir, Start: start, PeerID: id.String()})
	release, err = claimIdentity(cp, id, warn)
	if err != nil {
		t.Fatalf("claim with the registration of an exited process = %v", err)
	}
	release()
}
