package datastore

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// What TestLockHelperProcess says it is (WithOwner).
const (
	helperOwnerKind    = "offline command"
	helperOwnerCommand = "coattail test helper"
)

// startLockHelper runs TestLockHelperProcess holding dir open and returns
// its process; it ends when the test does, or when stop is called (which
// reports how it exited).
func startLockHelper(t *testing.T, dir string) (cmd *exec.Cmd, stop func() error) {
	t.Helper()
	cmd = exec.Command(os.Args[0], "-test.run=^TestLockHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	var waitErr error
	stop = func() error {
		once.Do(func() {
			_ = stdin.Close()
			waitErr = cmd.Wait()
		})
		return waitErr
	}
	t.Cleanup(func() { _ = stop() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("helper did not open the datastore: %q, %v", line, err)
	}
	return cmd, stop
}

// A process that finds the datastore taken learns which process has it
// and what that process said it is, and the message says so without
// guessing (it used to ask whether a coattail service was running, also
// when an offline command held it).
func TestOpenLockedNamesTheHolder(t *testing.T) {
	dir := t.TempDir()
	helper, _ := startLockHelper(t, dir)
	fi, err := os.Stat(filepath.Join(dir, ownerFile))
	if err != nil {
		t.Fatalf("the holder recorded nothing: %v", err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("%s has mode %04o, want 0600", ownerFile, perm)
	}
	_, err = Open(dir)
	var le *LockedError
	if !errors.As(err, &le) || !errors.Is(err, ErrLocked) {
		t.Fatalf("Open while another process holds it = %v, want a *LockedError wrapping ErrLocked", err)
	}
	if le.Owner == nil {
		t.Fatalf("LockedError does not name the holder: %v", err)
	}
	if le.Owner.PID != helper.Process.Pid || le.Owner.Kind != helperOwnerKind || le.Owner.Command != helperOwnerCommand {
		t.Errorf("owner %+v, want pid %d, %q, %q", *le.Owner, helper.Process.Pid, helperOwnerKind, helperOwnerCommand)
	}
	msg := err.Error()
	for _, want := range []string{dir, strconv.Itoa(helper.Process.Pid), helperOwnerKind, helperOwnerCommand} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, "service") {
		t.Errorf("message %q guesses at a service", msg)
	}
}

// The record goes with the holder: removed by Close, and one left by a
// process that is gone (or whose pid another process got) is not
// believed.
func TestOwnerRecordLifetime(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, WithOwner("service", ""))
	if err != nil {
		t.Fatal(err)
	}
	// In this process too: the second Open is told who.
	_, err = Open(dir)
	var le *LockedError
	if !errors.As(err, &le) || le.Owner == nil || le.Owner.PID != os.Getpid() || le.Owner.Kind != "service" {
		t.Fatalf("second Open in this process = %v (owner %+v)", err, le)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(dir, ownerFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Close left %s: %v", ownerFile, err)
	}

	write := func(o Owner) {
		b, _ := json.Marshal(o)
		if err := os.WriteFile(filepath.Join(dir, ownerFile), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	start, ok := ProcessStart(os.Getpid())
	if !ok {
		t.Skip("no /proc")
	}
	write(Owner{PID: os.Getpid(), Start: start, Kind: "service"})
	if o := readOwner(dir); o == nil || o.PID != os.Getpid() {
		t.Fatalf("readOwner of this live process = %+v", o)
	}
	write(Owner{PID: os.Getpid(), Start: start + 1, Kind: "service"})
	if o := readOwner(dir); o != nil {
		t.Errorf("a record whose start time is not its pid's was believed: %+v", o)
	}
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	write(Owner{PID: gone.Process.Pid, Kind: "service"})
	if o := readOwner(dir); o != nil {
		t.Errorf("a record of an exited process was believed: %+v", o)
	}
	// A record left by a killed holder does not keep the database from
	// opening, and is replaced by the new holder's.
	db, err = Open(dir)
	if err != nil {
		t.Fatalf("Open with a stale owner record: %v", err)
	}
	defer db.Close()
	if o := readOwner(dir); o == nil || o.PID != os.Getpid() || o.Kind != "" {
		t.Errorf("owner after Open = %+v, want this process, no kind", o)
	}
}

// A database directory in which only the lock and its owner record were
// made (the first Open was killed before pebble created the database) is
// not "a directory of other files".
func TestOpenAfterInterruptedCreate(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"LOCK", ownerFile} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	db, err := Open(dir)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}
