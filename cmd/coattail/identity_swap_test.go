package main

import (
	"os"
	"path/filepath"
	"testing"
)

// An instance whose identity key was replaced in place (another
// instance's copied into keys/) refuses to start, and so do offline
// commands, saying whose data it holds and what to do. It started
// silently: the tokens it had issued (signed with the old key) were listed
// as valid, and it queued publications for subscribers that could never
// reach it. Putting the key back makes it work again.
func TestReplacedIdentityKeyRefused(t *testing.T) {
	d, other := newInstance(t, "d"), newInstance(t, "other")
	d.start()
	oldID := d.peerID()
	d.issue("--subscribable", "x.>")
	d.mustRun("service", "stop")
	keyPath := d.path("keys", "identity.key")
	orig, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	swapped, err := os.ReadFile(other.path("keys", "identity.key"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, swapped, 0o600); err != nil {
		t.Fatal(err)
	}
	newID := other.peerID()
	for _, args := range [][]string{{"service", "start", "--headless"}, {"token", "list"}} {
		d.mustFail(args, "does not match", filepath.Join(d.dir, "keys", "identity.key"), newID, oldID, "move", "data")
	}
	if err := os.WriteFile(keyPath, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	d.start()
	if got := d.peerID(); got != oldID {
		t.Fatalf("with its key back the instance is %s, want %s", got, oldID)
	}
}
