package node

import (
	"errors"
	"testing"
)

// A cgroup's memory limit below the machine's is what the process may
// use; no cgroup, no limit, or a limit above the machine's (a cgroup v1
// "unlimited" is 2^63 rounded to a page) leave the machine's.
func TestUsableMemory(t *testing.T) {
	const gib = 1 << 30
	noLimit := func() (uint64, error) { return 0, errors.New("no limit") }
	limit := func(n uint64) func() (uint64, error) { return func() (uint64, error) { return n, nil } }
	for _, c := range []struct {
		name    string
		machine uint64
		cgroup  func() (uint64, error)
		want    Memory
	}{
		{"no cgroup limit", 24 * gib, noLimit, Memory{Bytes: 24 * gib, Machine: 24 * gib}},
		{"container limit", 24 * gib, limit(gib / 2), Memory{Bytes: gib / 2, Machine: 24 * gib, Cgroup: true}},
		{"limit above the machine", 2 * gib, limit(9223372036854771712), Memory{Bytes: 2 * gib, Machine: 2 * gib}},
		{"limit equal to the machine", 2 * gib, limit(2 * gib), Memory{Bytes: 2 * gib, Machine: 2 * gib}},
		{"zero limit ignored", 2 * gib, limit(0), Memory{Bytes: 2 * gib, Machine: 2 * gib}},
		{"machine unknown", 0, limit(gib), Memory{Bytes: gib, Cgroup: true}},
	} {
		if got := usableMemory(c.machine, c.cgroup); got != c.want {
			t.Errorf("%s: usableMemory = %+v, want %+v", c.name, got, c.want)
		}
	}
}
