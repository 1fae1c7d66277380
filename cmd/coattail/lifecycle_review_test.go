package main

// Service lifecycle as a production operator meets it: log growth,
// signals, start-up races, instances that vanish under their service.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// service.log is rotated by size and keeps a bounded number of old files,
// so a service that runs for months cannot fill the disk.
func TestLifecycleServiceLogRotates(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	const max = 600 // bytes; a start and a stop write about 500
	a.env = append(a.env, fmt.Sprintf("COATTAIL_LOG_MAX_SIZE=%d", max))
	for range 7 {
		pid := a.start()
		a.mustRun("service", "stop")
		killAndWait(t, pid)
	}
	logs, err := filepath.Glob(a.path("service.log*"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"service.log": true, "service.log.1": true, "service.log.2": true, "service.log.3": true}
	for _, p := range logs {
		base := filepath.Base(p)
		if !want[base] {
			t.Errorf("unexpected log file %s (at most 3 rotated files are kept)", base)
			continue
		}
		delete(want, base)
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > max {
			t.Errorf("%s is %d bytes, over the rotation size %d", base, fi.Size(), max)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %04o, want 0600", base, fi.Mode().Perm())
		}
	}
	for base := range want {
		t.Errorf("%s is missing: the log was not rotated (files: %v)", base, logs)
	}
	b, err := os.ReadFile(a.path("service.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"service stopping"`) {
		t.Errorf("the current service.log lacks the last stop:\n%s", b)
	}
	a.env = append(a.env, "COATTAIL_LOG_MAX_SIZE=lots")
	a.mustFail([]string{"service", "start", "--headless"}, "COATTAIL_LOG_MAX_SIZE")
}
