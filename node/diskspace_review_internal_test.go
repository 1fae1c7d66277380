package node

import (
	"io"
	"log/slog"
	"testing"
)

// A round larger than the room above the reserve is refused: the guard
// compared the free space with the reserve only, so with 300 MiB free and
// a 256 MiB reserve a 64 MiB round (maxRoundBytes) was let through, and
// with a reserve smaller than a round (min_free_disk has no lower bound)
// it wrote the disk full (pebble then ends the process).
func TestSpaceGuardCountsTheWrite(t *testing.T) {
	for _, tc := range []struct {
		free, reserve uint64
		bytes         int
		refuse        bool
	}{
		{300 << 20, 256 << 20, 64 << 20, true},
		{300 << 20, 256 << 20, 1 << 20, false},
		{40 << 20, 16 << 20, 64 << 20, true},
		{200 << 20, 256 << 20, 1, true},
	} {
		g := &spaceGuard{free: func() (uint64, error) { return tc.free, nil }, reserve: tc.reserve, what: "data", log: slog.New(slog.NewTextHandler(io.Discard, nil))}
		err := g.check(tc.bytes)
		if (err != nil) != tc.refuse {
			t.Errorf("free %d MiB, reserve %d MiB, write %d bytes: %v, want refused %v", tc.free>>20, tc.reserve>>20, tc.bytes, err, tc.refuse)
		}
	}
}

// What the datastore has yet to write from memory is kept free on top of
// the reserve: a flush writes it again (it is in the write-ahead log
// already), and one that found no room made pebble end the process or
// retry for ever with every write waiting.
func TestSpaceGuardKeepsRoomForTheFlush(t *testing.T) {
	for _, tc := range []struct {
		free, reserve, pending uint64
		bytes                  int
		refuse, low            bool
	}{
		{60 << 20, 16 << 20, 40 << 20, 10 << 20, true, false},
		{50 << 20, 16 << 20, 40 << 20, 1, true, true},
		{60 << 20, 16 << 20, 0, 10 << 20, false, false},
	} {
		g := &spaceGuard{free: func() (uint64, error) { return tc.free, nil }, pending: func() uint64 { return tc.pending }, reserve: tc.reserve, what: "data", log: slog.New(slog.NewTextHandler(io.Discard, nil))}
		err := g.check(tc.bytes)
		if (err != nil) != tc.refuse {
			t.Errorf("free %d MiB, reserve %d MiB, pending %d MiB, write %d bytes: %v, want refused %v", tc.free>>20, tc.reserve>>20, tc.pending>>20, tc.bytes, err, tc.refuse)
		}
		if got := g.low(tc.free); got != tc.low {
			t.Errorf("free %d MiB, reserve %d MiB, pending %d MiB: low %v, want %v", tc.free>>20, tc.reserve>>20, tc.pending>>20, got, tc.low)
		}
	}
}
