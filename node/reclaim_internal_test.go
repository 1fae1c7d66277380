package node

import (
	"context"
	"errors"
	"log/slog"
	"testing"
)

// TestIdleReclaimerTick: the idle reclaimer compacts only when nothing
// happened since its last look and the tables have grown past twice what
// the last reclaim left plus the slack; a failed reclaim is not retried
// until they double again.
func TestIdleReclaimerTick(t *testing.T) {
	var act, used uint64
	var reclaims int
	var fail error
	r := &idleReclaimer{
		usage:    func() uint64 { return used },
		activity: func() uint64 { return act },
		reclaim: func(context.Context) error {
			reclaims++
			if fail != nil {
				return fail
			}
			used = 1 << 20 // what is live
			return nil
		},
		log: slog.New(slog.DiscardHandler),
	}
	ctx := context.Background()
	step := func(what string, want bool) {
		t.Helper()
		if got := r.tick(ctx); got != want {
			t.Fatalf("%s: tick reclaimed = %v, want %v (used %d, base %d)", what, got, want, used, r.base)
		}
	}
	used = idleReclaimSlack - 1
	step("small tables", false)
	used = 200 << 20
	act = 5
	step("publications flowing", false)
	step("idle, 200 MiB of tables", true)
	step("base measured after the reclaim", false)
	if r.base != 1<<20 || reclaims != 1 {
		t.Fatalf("base %d after %d reclaim(s), want 1 MiB after 1", r.base, reclaims)
	}
	used = 2<<20 + idleReclaimSlack - 1
	step("below twice the base plus the slack", false)
	used = 2<<20 + idleReclaimSlack
	step("at twice the base plus the slack", true)
	step("base measured", false)

	fail = errors.New("no room to compact")
	used = 100 << 20
	step("reclaim fails", false)
	if reclaims != 3 || r.base != 100<<20 {
		t.Fatalf("after a failed reclaim: %d reclaims, base %d; want 3 and 100 MiB", reclaims, r.base)
	}
	used = 150 << 20
	step("not retried before the tables doubled", false)
	if reclaims != 3 {
		t.Fatalf("a failed reclaim was retried at once")
	}
}

// TestIdleReclaimerAfterDeletions: deleting records (dead letters dropped)
// does not grow the tables, so the doubling rule never fired for it; once
// idleReclaimSlack of them is gone since the last reclaim, an idle tick
// reclaims, and not again until as much more is gone (or the tables
// double).
func TestIdleReclaimerAfterDeletions(t *testing.T) {
	var freed uint64
	used := uint64(100 << 20) // 100 MiB of dead letters, compacted once
	var reclaims int
	r := &idleReclaimer{
		usage:    func() uint64 { return used },
		activity: func() uint64 { return 0 },
		freed:    func() uint64 { return freed },
		reclaim: func(context.Context) error {
			reclaims++
			used -= min(used, freed/2) // what the deletions gave back, say
			return nil
		},
		log:  slog.New(slog.DiscardHandler),
		base: used,
	}
	ctx := context.Background()
	step := func(what string, want bool) {
		t.Helper()
		if got := r.tick(ctx); got != want {
			t.Fatalf("%s: tick reclaimed = %v, want %v (used %d, base %d, freed %d)", what, got, want, used, r.base, freed)
		}
	}
	step("nothing deleted", false)
	freed = idleReclaimSlack - 1
	step("less than the slack deleted", false)
	freed = 80 << 20
	step("80 MiB of dead letters dropped", true)
	step("base measured", false)
	if reclaims != 1 {
		t.Fatalf("%d reclaims, want 1", reclaims)
	}
	freed += idleReclaimSlack - 1
	step("less than the slack more", false)
	freed++
	step("the slack more", true)
	// Small tables: nothing worth a compaction, whatever was deleted.
	used, r.base, r.measure = idleReclaimSlack-1, 0, false
	freed += 100 << 20
	step("tables below the slack", false)
}
