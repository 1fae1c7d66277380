package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// `coattail new` refuses a directory inside another instance's actions/ or
// receivers/, however it is reached: the new instance's config.yml, key
// and socket would become that instance's programs. It used to create it.
func TestNewRefusesInsideProgramDir(t *testing.T) {
	base := t.TempDir()
	outer := filepath.Join(base, "a")
	if _, stderr, code := runCLI(t, "new", outer, "--loopback"); code != 0 {
		t.Fatalf("new %s: exit %d: %s", outer, code, stderr)
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(filepath.Join(outer, "actions"), link); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ dir, sub string }{
		{filepath.Join(outer, "actions"), "actions"},
		{filepath.Join(outer, "receivers"), "receivers"},
		{filepath.Join(outer, "actions", "deeper", "x"), "actions"},
		{filepath.Join(outer, "receivers", "..", "actions", "y"), "actions"},
		{filepath.Join(link, "z"), "actions"},
	} {
		stdout, stderr, code := runCLI(t, "new", tc.dir, "--loopback")
		if code != 1 || !strings.Contains(stderr, "is inside the "+tc.sub+"/ directory of the instance in "+outer) {
			t.Errorf("new %s: exit %d, stdout %q, stderr %q; want a refusal naming %s/ of %s", tc.dir, code, stdout, stderr, tc.sub, outer)
		}
		for _, f := range []string{".ct.version", "config.yml", "keys"} {
			if _, err := os.Lstat(filepath.Join(tc.dir, f)); err == nil {
				t.Errorf("new %s left %s behind", tc.dir, f)
			}
		}
	}
	// A directory merely called actions, in no instance, is fine.
	plain := filepath.Join(base, "b", "actions")
	if _, stderr, code := runCLI(t, "new", plain, "--loopback"); code != 0 {
		t.Errorf("new %s (no instance around it): exit %d: %s", plain, code, stderr)
	}
}

// `coattail --instance DIR new` creates the instance in DIR, as every
// command takes its instance from --instance (README, "Using it"). It used
// to ignore the flag and create the instance in the current directory.
// A directory argument naming another directory than --instance is
// refused; naming the same one is fine.
func TestNewHonoursInstanceFlag(t *testing.T) {
	needBinary(t)
	cwd, target := t.TempDir(), filepath.Join(t.TempDir(), "shop")
	i := &instance{t: t, name: "new", dir: target}
	if _, stderr, code := i.runIn(cwd, "--instance", target, "new", "--loopback", "--port", "0"); code != 0 {
		t.Fatalf("coattail --instance %s new: exit %d: %s", target, code, stderr)
	}
	if _, err := os.Stat(filepath.Join(target, "config.yml")); err != nil {
		t.Errorf("coattail --instance %s new created no instance there: %v", target, err)
	}
	if _, err := os.Stat(filepath.Join(cwd, "config.yml")); err == nil {
		t.Errorf("coattail --instance %s new created an instance in the current directory %s", target, cwd)
	}

	other := filepath.Join(t.TempDir(), "other")
	stdout, stderr, code := i.runIn(cwd, "new", other, "--instance", filepath.Join(cwd, "x"), "--loopback")
	if code != 1 || !strings.Contains(stderr, "differ") || stdout != "" {
		t.Errorf("new %s --instance %s: exit %d, stdout %q, stderr %q; want a refusal", other, filepath.Join(cwd, "x"), code, stdout, stderr)
	}
	for _, d := range []string{other, filepath.Join(cwd, "x"), cwd} {
		if _, err := os.Stat(filepath.Join(d, "config.yml")); err == nil {
			t.Errorf("a refused new created an instance in %s", d)
		}
	}

	same := filepath.Join(cwd, "same")
	if _, stderr, code := i.runIn(cwd, "new", "same", "--instance", same, "--loopback", "--port", "0"); code != 0 {
		t.Errorf("new same --instance %s (the same directory): exit %d: %s", same, code, stderr)
	}
}
