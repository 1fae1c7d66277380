package topics

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/coattail/coattail/datastore"
)

// TestRestartLargeBacklogUnchanged: an instance with a large backlog
// (200 000 publications queued, a few subscriptions at different acks,
// filtered publications listed in their log entries) reopens with exactly
// the queues, sequences and counters it had: the log is now loaded through
// the pebble backend's Scan (with damage handling), not a Query, and the
// queue state has a second format; on the normal path neither may change a
// thing.
func TestRestartLargeBacklogUnchanged(t *testing.T) {
	if testing.Short() {
		t.Skip("200 000 publications")
	}
	const total = 200_000
	dir := t.TempDir()
	ctx := context.Background()
	db, err := datastore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	o := QueueOptions{Bound: 2 * total, MemoryPerQueue: 64 << 10}
	qs, err := OpenQueues(ctx, db.Batching(), o)
	if err != nil {
		t.Fatal(err)
	}
	addSub(t, qs, "all", "orders.>")
	addSub(t, qs, "eu", "orders.eu.>")
	addSub(t, qs, "idle", "orders.>")
	addSub(t, qs, "acked", "orders.>")
	addSub(t, qs, "late", "orders.>") // added halfway
	batch := make([]Message, 0, 1000)
	for i := 1; i <= total; i++ {
		subj := "orders.us.x"
		if i%3 == 0 {
			subj = "orders.eu.x"
		}
		batch = append(batch, msg(subj, fmt.Sprint(i)))
		if len(batch) < cap(batch) {
			continue
		}
		var filter func(Subscription) bool
		if i%7000 == 0 {
			// Listed routing: not to "idle".
			filter = func(s Subscription) bool { return s.ID != "idle" }
		}
		if _, err := qs.Publish(ctx, batch, filter); err != nil {
			t.Fatal(err)
		}
		batch = batch[:0]
		if i == total/2 {
			if _, err := qs.RemoveSubscription(ctx, "late"); err != nil {
				t.Fatal(err)
			}
			addSub(t, qs, "late", "orders.>")
		}
	}
	for id, n := range map[string]uint64{"all": 50_123, "eu": 7, "acked": 0} {
		if n == 0 {
			n = status(t, qs, id).NextSeq - 1
		}
		qs.MarkSent(id, n+100)
		if err := qs.Ack(id, n); err != nil {
			t.Fatal(err)
		}
	}
	type snap struct {
		st    QueueStatus
		items []string
	}
	snapshot := func(qs *Queues) map[string]snap {
		out := map[string]snap{}
		for _, st := range qs.Status() {
			var items []string
			after := uint64(0)
			for {
				page, err := qs.Read(st.ID, after, 5000, 0)
				if err != nil {
					t.Fatalf("Read(%s): %v", st.ID, err)
				}
				if len(page) == 0 {
					break
				}
				for _, it := range page {
					items = append(items, fmt.Sprintf("%d:%s:%s", it.Seq, it.Message.Subject, it.Message.Data))
				}
				after = page[len(page)-1].Seq
			}
			st.LastDelivered = st.LastDelivered.UTC()
			out[st.ID] = snap{st, items}
		}
		return out
	}
	before := snapshot(qs)
	if n := len(before["idle"].items); n < total-total/7 {
		t.Fatalf("idle holds %d items before the restart, want about %d", n, total)
	}
	if err := qs.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	for restart := range 2 {
		db = openPebble(t, dir)
		qs = openQueues(t, db.Batching(), o)
		after := snapshot(qs)
		if len(after) != len(before) {
			t.Fatalf("restart %d: %d subscriptions, want %d", restart, len(after), len(before))
		}
		for id, b := range before {
			a := after[id]
			if !a.st.LastDelivered.Equal(b.st.LastDelivered) {
				t.Errorf("restart %d: %s last delivered %v, want %v", restart, id, a.st.LastDelivered, b.st.LastDelivered)
			}
			a.st.LastDelivered = b.st.LastDelivered // compared above, whatever its location
			if a.st != b.st {
				t.Errorf("restart %d: %s status %+v, want %+v", restart, id, a.st, b.st)
			}
			if !slices.Equal(a.items, b.items) {
				i := 0
				for i < min(len(a.items), len(b.items)) && a.items[i] == b.items[i] {
					i++
				}
				t.Errorf("restart %d: %s holds %d items, want %d; first difference at %d", restart, id, len(a.items), len(b.items), i)
			}
		}
		// Sequences continue where they were.
		publish(t, qs, msg("orders.eu.x", "next"))
		for id, b := range before {
			got, err := qs.Read(id, b.st.NextSeq-1, 1, 0)
			if err != nil || len(got) != 1 || got[0].Seq != b.st.NextSeq || string(got[0].Message.Data) != "next" {
				t.Fatalf("restart %d: %s after the restart reads %+v, %v; want seq %d", restart, id, got, err, b.st.NextSeq)
			}
		}
		before = snapshot(qs)
		if err := qs.Close(); err != nil {
			t.Fatal(err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
