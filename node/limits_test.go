package node

import (
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// The per-peer table is swept of peers whose bucket has refilled and that
// hold no stream (forgetting them gives no fresh allowance), not of busy
// or recently limited ones; and a table of busy peers is not rescanned for
// every new peer (the sweep threshold doubles past what was kept).
func TestPeerLimitsPrune(t *testing.T) {
	clock := time.Unix(1_000_000, 0)
	pl := newPeerLimits(LimitsConfig{RateLimit: 10, RateBurst: 10, MaxStreamsPerPeer: 4})
	pl.now = func() time.Time { return clock }
	id := func(i int) peer.ID { return peer.ID(fmt.Sprintf("peer-%d", i)) }
	open := func(p peer.ID) {
		t.Helper()
		if v := pl.acquire(p); !v.ok() {
			t.Fatalf("acquire %s refused: %+v", p, v)
		}
	}
	holder, drained := peer.ID("holder"), peer.ID("drained")
	open(holder) // keeps a stream open throughout
	open(drained)
	for i := range minPrune + 100 {
		open(id(i))
		pl.release(id(i))
	}
	if got := len(pl.peers); got != minPrune+102 {
		t.Fatalf("table holds %d peers, want all %d (none idle long enough)", got, minPrune+102)
	}
	if pl.pruneAt <= minPrune {
		t.Fatalf("sweep threshold %d after a sweep that kept everything; it would rescan for every new peer", pl.pruneAt)
	}
	clock = clock.Add(2 * time.Second) // past the 1 s refill of every idle bucket
	for range 20 {                     // drained uses up its bucket, then closes its stream
		pl.allow(drained)
	}
	pl.release(drained)
	fresh := 0
	for before := len(pl.peers); len(pl.peers) >= before; fresh++ { // new peers until a sweep
		if fresh > 4*minPrune {
			t.Fatalf("no sweep after %d new peers; table holds %d", fresh, len(pl.peers))
		}
		before = len(pl.peers)
		open(id(minPrune + 100 + fresh))
		pl.release(id(minPrune + 100 + fresh))
	}
	// Left: the two kept, and the new peers (one the sweep made room for).
	if want := 2 + fresh; len(pl.peers) != want {
		t.Errorf("after the sweep the table holds %d peers, want %d", len(pl.peers), want)
	}
	for _, p := range []peer.ID{holder, drained} {
		if pl.peers[p] == nil {
			t.Errorf("%s was swept (open stream or bucket still empty)", p)
		}
	}
	if d := pl.allow(drained); d == 0 {
		t.Error("a drained peer got a fresh bucket")
	}
	if pl.pruneAt != max(2*(1+fresh), minPrune) {
		t.Errorf("sweep threshold %d after the table shrank to %d", pl.pruneAt, len(pl.peers))
	}
}
