package topics

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coattail/coattail/datastore"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
)

// backends runs fn against real pebble and the in-memory datastore.
func backends(t *testing.T, fn func(t *testing.T, store ds.Batching)) {
	t.Helper()
	t.Run("pebble", func(t *testing.T) { fn(t, openPebble(t, t.TempDir()).Batching()) })
	t.Run("memory", func(t *testing.T) { fn(t, datastore.NewMemory().Batching()) })
}

func openPebble(t testing.TB, dir string) *datastore.DB {
	t.Helper()
	db, err := datastore.Open(dir)
	if err != nil {
		t.Fatalf("open datastore: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func openQueues(t testing.TB, store ds.Batching, o QueueOptions) *Queues {
	t.Helper()
	qs, err := OpenQueues(context.Background(), store, o)
	if err != nil {
		t.Fatalf("OpenQueues: %v", err)
	}
	t.Cleanup(func() { _ = qs.Close() })
	return qs
}

func addSub(t testing.TB, qs *Queues, id, pattern string) Subscription {
	t.Helper()
	s := Subscription{ID: id, Subscriber: "peer-" + id, Pattern: pattern, TokenID: "tok-" + id, Receiver: "recv", CreatedAt: time.Unix(1700000000, 0).UTC()}
	if err := qs.AddSubscription(context.Background(), s); err != nil {
		t.Fatalf("AddSubscription(%s): %v", id, err)
	}
	return s
}

func msg(subject, data string) Message {
	return Message{Subject: subject, Data: []byte(data), Hop: 1, Time: 42}
}

func publish(t testing.TB, qs *Queues, msgs ...Message) int {
	t.Helper()
	n, err := qs.Publish(context.Background(), msgs, nil)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	return n
}

// readAll reads everything after `after`, in small pages so the paging is
// exercised.
func readAll(t testing.TB, qs *Queues, id string, after uint64) []Item {
	t.Helper()
	var out []Item
	for {
		items, err := qs.Read(id, after, 3, 0)
		if err != nil {
			t.Fatalf("Read(%s, %d): %v", id, after, err)
		}
		if len(items) == 0 {
			return out
		}
		out = append(out, items...)
		after = items[len(items)-1].Seq
	}
}

// summary renders items as "seq:subject:data" for compact comparisons.
func summary(items []Item) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = fmt.Sprintf("%d:%s:%s", it.Seq, it.Message.Subject, it.Message.Data)
	}
	return out
}

func wantItems(t *testing.T, got []Item, want ...string) {
	t.Helper()
	if s := summary(got); !slices.Equal(s, want) {
		t.Fatalf("items = %q, want %q", s, want)
	}
}

// logPositions lists the positions of the log entries in the datastore.
func logPositions(t testing.TB, store ds.Batching) []uint64 {
	t.Helper()
	var out []uint64
	for _, k := range keysUnder(t, store, logPrefix) {
		pos, ok := parseSeq(k[len(logPrefix):])
		if !ok {
			t.Fatalf("malformed log key %q", k)
		}
		out = append(out, pos)
	}
	return out
}

// keysUnder lists the keys under prefix, in order.
func keysUnder(t testing.TB, store ds.Batching, prefix string) []string {
	t.Helper()
	res, err := store.Query(context.Background(), query.Query{Prefix: prefix, KeysOnly: true, Orders: []query.Order{query.OrderByKey{}}})
	if err != nil {
		t.Fatal(err)
	}
	es, err := res.Rest()
	if err != nil {
		t.Fatal(err)
	}
	keys := make([]string, len(es))
	for i, e := range es {
		keys[i] = e.Key
	}
	return keys
}

// span returns the positions from..to.
func span(from, to uint64) []uint64 {
	var out []uint64
	for p := from; p <= to; p++ {
		out = append(out, p)
	}
	return out
}

func wantPositions(t testing.TB, store ds.Batching, want []uint64) {
	t.Helper()
	if got := logPositions(t, store); !slices.Equal(got, want) {
		t.Fatalf("log positions = %v, want %v", got, want)
	}
}

func hasState(t testing.TB, store ds.Batching, id string) bool {
	t.Helper()
	ok, err := store.Has(context.Background(), ds.RawKey(subMetaKey(id)))
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func status(t *testing.T, qs *Queues, id string) QueueStatus {
	t.Helper()
	for _, st := range qs.Status() {
		if st.ID == id {
			return st
		}
	}
	t.Fatalf("no status for %s", id)
	return QueueStatus{}
}

func TestQueueSequencesWildcardsAndFilter(t *testing.T) {
	backends(t, func(t *testing.T, store ds.Batching) {
		qs := openQueues(t, store, QueueOptions{})
		addSub(t, qs, "star", "orders.*")
		addSub(t, qs, "full", "orders.>")
		addSub(t, qs, "lit", "billing.paid")

		n := publish(t, qs, msg("orders.created", "a"), msg("orders.eu.created", "b"), msg("billing.paid", "c"), msg("other.thing", "d"))
		if n != 4 { // star 1, full 2, lit 1
			t.Fatalf("Publish wrote %d entries, want 4", n)
		}
		publish(t, qs, msg("orders.shipped", "e"))

		wantItems(t, readAll(t, qs, "star", 0), "1:orders.created:a", "2:orders.shipped:e")
		wantItems(t, readAll(t, qs, "full", 0), "1:orders.created:a", "2:orders.eu.created:b", "3:orders.shipped:e")
		wantItems(t, readAll(t, qs, "lit", 0), "1:billing.paid:c")
		wantItems(t, readAll(t, qs, "full", 2), "3:orders.shipped:e")

		// The filter restricts a publication to chosen subscriptions.
		n, err := qs.Publish(context.Background(), []Message{msg("orders.x", "f")}, func(s Subscription) bool { return s.Subscriber == "peer-full" })
		if err != nil || n != 1 {
			t.Fatalf("filtered Publish = %d, %v; want 1, nil", n, err)
		}
		wantItems(t, readAll(t, qs, "star", 2))
		wantItems(t, readAll(t, qs, "full", 3), "4:orders.x:f")

		// Messages are copied: the caller may reuse its buffer.
		buf := []byte("orig")
		publish(t, qs, Message{Subject: "billing.paid", Data: buf})
		copy(buf, "XXXX")
		wantItems(t, readAll(t, qs, "lit", 1), "2:billing.paid:orig")

		if _, err := qs.Publish(context.Background(), []Message{msg("bad subject", "x")}, nil); !errors.Is(err, ErrInvalidSubject) {
			t.Fatalf("Publish(bad subject) = %v, want ErrInvalidSubject", err)
		}
		st := status(t, qs, "full")
		if st.NextSeq != 5 || st.Depth != 4 || st.Pattern != "orders.>" {
			t.Fatalf("status = %+v, want next 5, depth 4", st)
		}
	})
}

func TestQueueMessageFieldsAndStamp(t *testing.T) {
	backends(t, func(t *testing.T, store ds.Batching) {
		qs := openQueues(t, store, QueueOptions{MemoryPerQueue: 1}) // force datastore reads
		addSub(t, qs, "s", ">")
		before := time.Now().UnixNano()
		publish(t, qs, Message{Subject: "a.b", Data: nil, Hop: 7}, Message{Subject: "a.c", Data: []byte{0, 1, 2}, Hop: 4294967295, Time: -5})
		items := readAll(t, qs, "s", 0)
		if len(items) != 2 {
			t.Fatalf("got %d items", len(items))
		}
		if m := items[0].Message; m.Subject != "a.b" || len(m.Data) != 0 || m.Hop != 7 || m.Time < before {
			t.Fatalf("first = %+v, want stamped time >= %d", m, before)
		}
		if m := items[1].Message; m.Subject != "a.c" || !bytes.Equal(m.Data, []byte{0, 1, 2}) || m.Hop != 4294967295 || m.Time != -5 {
			t.Fatalf("second = %+v", m)
		}
	})
}

func TestQueueAddSubscriptionValidation(t *testing.T) {
	qs := openQueues(t, datastore.NewMemory().Batching(), QueueOptions{})
	for _, s := range []Subscription{
		{ID: "", Pattern: "a"},
		{ID: "a/b", Pattern: "a"},
		{ID: "..", Pattern: "a"},
		{ID: "ok", Pattern: "a..b"},
		{ID: "ok", Pattern: "a.>.b"},
	} {
		if err := qs.AddSubscription(context.Background(), s); !errors.Is(err, ErrInvalidSubscription) {
			t.Errorf("AddSubscription(%+v) = %v, want ErrInvalidSubscription", s, err)
		}
	}
	s := addSub(t, qs, "x", "a.*")
	if err := qs.AddSubscription(context.Background(), s); err != nil {
		t.Fatalf("re-adding the same subscription: %v", err)
	}
	s.Pattern = "b"
	if err := qs.AddSubscription(context.Background(), s); !errors.Is(err, ErrSubscriptionExists) {
		t.Fatalf("adding a different subscription with a taken id = %v, want ErrSubscriptionExists", err)
	}
	if got, ok := qs.Subscription("x"); !ok || got.Pattern != "a.*" {
		t.Fatalf("Subscription(x) = %+v, %v", got, ok)
	}
	if _, err := OpenQueues(context.Background(), datastore.NewMemory().Batching(), QueueOptions{Policy: "maybe", Bound: -1}); !errors.Is(err, ErrInvalidQueueOptions) {
		t.Fatalf("bad options: %v", err)
	}
}

func TestQueueDurableAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	db, err := datastore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	qs, err := OpenQueues(context.Background(), db.Batching(), QueueOptions{MemoryPerQueue: 200})
	if err != nil {
		t.Fatal(err)
	}
	addSub(t, qs, "a", "x.>")
	addSub(t, qs, "b", "x.y")
	for i := 1; i <= 10; i++ {
		publish(t, qs, msg("x.y", strconv.Itoa(i)))
	}
	if err := qs.Ack("a", 4); err != nil {
		t.Fatal(err)
	}
	qs.MarkSent("a", 6)
	if err := qs.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := qs.Publish(context.Background(), []Message{msg("x.y", "late")}, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Close = %v, want ErrClosed", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db = openPebble(t, dir)
	qs = openQueues(t, db.Batching(), QueueOptions{MemoryPerQueue: 200})
	got := readAll(t, qs, "a", 0)
	if len(got) != 6 || got[0].Seq != 5 || got[5].Seq != 10 || string(got[0].Message.Data) != "5" {
		t.Fatalf("after restart a = %q, want seqs 5..10", summary(got))
	}
	if got := readAll(t, qs, "b", 0); len(got) != 10 || got[9].Seq != 10 {
		t.Fatalf("after restart b = %q", summary(got))
	}
	// Each message is stored once for both subscriptions, and stays while
	// b, which acked nothing, still needs it.
	wantPositions(t, db.Batching(), span(1, 10))
	st := status(t, qs, "a")
	// 1..4 were acked before MarkSent reported them: an ack is for what
	// was sent, so they count with 5 and 6 (TestMarkSentAfterAckCountsDelivered).
	if st.Acked != 4 || st.NextSeq != 11 || st.Depth != 6 || st.Delivered != 6 || st.LastDelivered.IsZero() {
		t.Fatalf("status after restart = %+v", st)
	}
	// Sequences continue where they left off.
	publish(t, qs, msg("x.z", "11"))
	wantItems(t, readAll(t, qs, "a", 10), "11:x.z:11")

	// A queue whose messages were all acked still continues its sequence.
	if err := qs.Ack("b", 10); err != nil {
		t.Fatal(err)
	}
	if err := qs.Close(); err != nil {
		t.Fatal(err)
	}
	qs = openQueues(t, db.Batching(), QueueOptions{})
	// Entries both acked are gone from the datastore, not merely hidden;
	// 5..11 are still a's.
	wantPositions(t, db.Batching(), span(5, 11))
	if !hasState(t, db.Batching(), "b") {
		t.Fatal("state of fully acked b is gone")
	}
	publish(t, qs, msg("x.y", "again"))
	wantItems(t, readAll(t, qs, "b", 0), "11:x.y:again")
}

func TestQueueRejectAtBound(t *testing.T) {
	backends(t, func(t *testing.T, store ds.Batching) {
		qs := openQueues(t, store, QueueOptions{Bound: 3, Policy: PolicyReject})
		addSub(t, qs, "small", "a")
		addSub(t, qs, "other", "b")
		publish(t, qs, msg("a", "1"), msg("a", "2"), msg("b", "1"))
		// Three more would overflow "small": nothing of the call is written,
		// not even to "other", which has room.
		_, err := qs.Publish(context.Background(), []Message{msg("b", "x"), msg("a", "3"), msg("a", "4")}, nil)
		// The queue is not full: the call is too large for its room, and
		// the error says so (it said the queue "has reached its bound").
		if !errors.Is(err, ErrQueueFull) || !strings.Contains(err.Error(), `"small"`) ||
			!strings.Contains(err.Error(), "holds 2 undelivered messages of its bound of 3, room for 1, not for the 2 of this call") {
			t.Fatalf("Publish over bound = %v, want ErrQueueFull naming small, its depth, room and the call's 2", err)
		}
		wantItems(t, readAll(t, qs, "other", 0), "1:b:1")
		publish(t, qs, msg("a", "3"))
		if _, err := qs.Publish(context.Background(), []Message{msg("a", "4")}, nil); !errors.Is(err, ErrQueueFull) || !strings.Contains(err.Error(), "has reached its bound of 3 undelivered messages") {
			t.Fatalf("Publish to full queue = %v", err)
		}
		// An ack makes room.
		if err := qs.Ack("small", 1); err != nil {
			t.Fatal(err)
		}
		publish(t, qs, msg("a", "4"))
		wantItems(t, readAll(t, qs, "small", 0), "2:a:2", "3:a:3", "4:a:4")
		if st := status(t, qs, "small"); st.Dropped != 0 || st.Depth != 3 {
			t.Fatalf("status = %+v", st)
		}
	})
}

func TestQueueDropOldestAtBound(t *testing.T) {
	backends(t, func(t *testing.T, store ds.Batching) {
		qs := openQueues(t, store, QueueOptions{Bound: 3, Policy: PolicyDropOldest, MemoryPerQueue: 1 << 20})
		addSub(t, qs, "s", "a")
		publish(t, qs, msg("a", "1"), msg("a", "2"))
		publish(t, qs, msg("a", "3"), msg("a", "4"))
		wantItems(t, readAll(t, qs, "s", 0), "2:a:2", "3:a:3", "4:a:4")
		// More than the bound in one call: the oldest of the call itself go.
		publish(t, qs, msg("a", "5"), msg("a", "6"), msg("a", "7"), msg("a", "8"), msg("a", "9"))
		wantItems(t, readAll(t, qs, "s", 0), "7:a:7", "8:a:8", "9:a:9")
		st := status(t, qs, "s")
		if st.Dropped != 6 || st.Depth != 3 || st.NextSeq != 10 {
			t.Fatalf("status = %+v, want dropped 6, depth 3, next 10", st)
		}
		// The dropped entries are deleted by a round after the one that
		// pushed them out (once that round is durable).
		waitFor(t, func() bool { return slices.Equal(logPositions(t, store), span(7, 9)) })
		// Reading from before the head starts at the head.
		items, err := qs.Read("s", 1, 1, 0)
		if err != nil || len(items) != 1 || items[0].Seq != 7 {
			t.Fatalf("Read(after 1) = %v, %v", summary(items), err)
		}
	})
}

// dropOldestFive opens queues bounded at 2 under drop_oldest on pebble in
// a new directory, adds subscription s to a and publishes a 1..5 (1..3
// are dropped). reopen closes the queues and the store and opens both
// again, as a restart would.
func dropOldestFive(t *testing.T) (qs *Queues, reopen func() *Queues) {
	t.Helper()
	dir := t.TempDir()
	o := QueueOptions{Bound: 2, Policy: PolicyDropOldest}
	db := openPebble(t, dir)
	qs = openQueues(t, db.Batching(), o)
	addSub(t, qs, "s", "a")
	for i := 1; i <= 5; i++ {
		publish(t, qs, msg("a", strconv.Itoa(i)))
	}
	cur := qs
	return qs, func() *Queues {
		t.Helper()
		if err := cur.Close(); err != nil {
			t.Fatal(err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		db = openPebble(t, dir)
		cur = openQueues(t, db.Batching(), o)
		return cur
	}
}

func TestQueueDropOldestAcrossRestart(t *testing.T) {
	_, reopen := dropOldestFive(t)
	qs := reopen()
	wantItems(t, readAll(t, qs, "s", 0), "4:a:4", "5:a:5")
	publish(t, qs, msg("a", "6"))
	wantItems(t, readAll(t, qs, "s", 0), "5:a:5", "6:a:6")
	if st := status(t, qs, "s"); st.Dropped != 4 || st.Depth != 2 {
		t.Fatalf("status = %+v, want dropped 4, depth 2", st)
	}
}

func TestQueueReadFromDatastore(t *testing.T) {
	backends(t, func(t *testing.T, store ds.Batching) {
		// Room in memory for about two 100-byte messages.
		qs := openQueues(t, store, QueueOptions{MemoryPerQueue: 2 * (100 + len("s.x") + itemOverhead)})
		addSub(t, qs, "s", "s.*")
		var want []string
		for i := 1; i <= 50; i++ {
			d := fmt.Sprintf("%03d", i) + string(bytes.Repeat([]byte{'.'}, 97))
			publish(t, qs, msg("s.x", d))
			want = append(want, fmt.Sprintf("%d:s.x:%s", i, d))
		}
		qs.get("s") // touch
		q, _ := qs.get("s")
		q.mu.Lock()
		cached := q.mem.n
		q.mu.Unlock()
		if cached == 0 || cached > 2 {
			t.Fatalf("memory holds %d items, want 1..2", cached)
		}
		wantItems(t, readAll(t, qs, "s", 0), want...)
		wantItems(t, readAll(t, qs, "s", 30), want[30:]...)

		// Limits: maxItems, maxBytes, and at least one item even if it is
		// bigger than maxBytes.
		items, err := qs.Read("s", 0, 5, 0)
		if err != nil || len(items) != 5 || items[0].Seq != 1 {
			t.Fatalf("Read max 5 = %q, %v", summary(items), err)
		}
		items, _ = qs.Read("s", 0, 0, 250)
		if len(items) != 2 {
			t.Fatalf("Read max 250 bytes returned %d items, want 2", len(items))
		}
		items, _ = qs.Read("s", 10, 0, 1)
		if len(items) != 1 || items[0].Seq != 11 {
			t.Fatalf("Read max 1 byte = %q, want just seq 11", summary(items))
		}
		items, _ = qs.Read("s", 49, 0, 1)
		if len(items) != 1 || items[0].Seq != 50 {
			t.Fatalf("Read from memory max 1 byte = %q", summary(items))
		}

		// After acks, the datastore path still starts at the right place
		// while deletions are pending or done.
		if err := qs.Ack("s", 20); err != nil {
			t.Fatal(err)
		}
		wantItems(t, readAll(t, qs, "s", 0), want[20:]...)
		wantItems(t, readAll(t, qs, "s", 25), want[25:]...)
		if _, err := qs.Read("nope", 0, 1, 1); !errors.Is(err, ErrNoSubscription) {
			t.Fatalf("Read(unknown) = %v", err)
		}
	})
}

func TestQueueReadAfterRestartFromDatastore(t *testing.T) {
	dir := t.TempDir()
	db, err := datastore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	qs, err := OpenQueues(context.Background(), db.Batching(), QueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	addSub(t, qs, "s", ">")
	var want []string
	for i := 1; i <= 20; i++ {
		publish(t, qs, msg("k", strconv.Itoa(i)))
		want = append(want, fmt.Sprintf("%d:k:%d", i, i))
	}
	if err := qs.Ack("s", 3); err != nil {
		t.Fatal(err)
	}
	if err := qs.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db = openPebble(t, dir)
	qs = openQueues(t, db.Batching(), QueueOptions{})
	q, _ := qs.get("s")
	if q.mem.n != 0 {
		t.Fatalf("memory not empty after restart")
	}
	wantItems(t, readAll(t, qs, "s", 0), want[3:]...)
	wantItems(t, readAll(t, qs, "s", 12), want[12:]...)
	// New messages are served from memory; older ones still from disk.
	publish(t, qs, msg("k", "21"))
	wantItems(t, readAll(t, qs, "s", 18), "19:k:19", "20:k:20", "21:k:21")
}

func TestQueueAckResumeAndCounters(t *testing.T) {
	backends(t, func(t *testing.T, store ds.Batching) {
		qs := openQueues(t, store, QueueOptions{})
		addSub(t, qs, "s", "a")
		for i := 1; i <= 10; i++ {
			publish(t, qs, msg("a", strconv.Itoa(i)))
		}
		if err := qs.Ack("s", 11); !errors.Is(err, ErrAckOutOfRange) {
			t.Fatalf("Ack beyond end = %v, want ErrAckOutOfRange", err)
		}
		if err := qs.Ack("nope", 1); !errors.Is(err, ErrNoSubscription) {
			t.Fatalf("Ack unknown = %v", err)
		}
		// First connection: nothing processed yet.
		next, err := qs.Resume("s", 0)
		if err != nil || next != 1 {
			t.Fatalf("Resume(0) = %d, %v; want 1", next, err)
		}
		qs.MarkSent("s", 6)
		if err := qs.Ack("s", 3); err != nil {
			t.Fatal(err)
		}
		if err := qs.Ack("s", 2); err != nil { // older ack: no-op
			t.Fatal(err)
		}
		st := status(t, qs, "s")
		if st.Delivered != 6 || st.Redelivered != 0 || st.Acked != 3 || st.Depth != 7 {
			t.Fatalf("status = %+v, want delivered 6, acked 3, depth 7", st)
		}
		// Reconnect having processed 4: 5 and 6 are sent again.
		next, err = qs.Resume("s", 4)
		if err != nil || next != 5 {
			t.Fatalf("Resume(4) = %d, %v; want 5", next, err)
		}
		qs.MarkSent("s", 8)
		st = status(t, qs, "s")
		if st.Delivered != 8 || st.Redelivered != 2 || st.Acked != 4 || st.Depth != 6 {
			t.Fatalf("status = %+v, want delivered 8, redelivered 2, acked 4", st)
		}
		// Marking the same again counts nothing.
		qs.MarkSent("s", 8)
		if st := status(t, qs, "s"); st.Delivered != 8 || st.Redelivered != 2 {
			t.Fatalf("repeat MarkSent changed counters: %+v", st)
		}
		// A subscriber claiming more than was queued acks everything.
		next, err = qs.Resume("s", 1000)
		if err != nil || next != 11 {
			t.Fatalf("Resume(1000) = %d, %v; want 11", next, err)
		}
		st = status(t, qs, "s")
		if st.Acked != 10 || st.Depth != 0 {
			t.Fatalf("status = %+v", st)
		}
		if items, _ := qs.Read("s", 0, 0, 0); len(items) != 0 {
			t.Fatalf("Read after full ack = %q", summary(items))
		}
		// The lazy deletes eventually empty the datastore.
		waitFor(t, func() bool { return len(logPositions(t, store)) == 0 })
	})
}

// waitFor polls cond; for effects of background goroutines, never a timing
// assertion.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestQueueRemove(t *testing.T) {
	backends(t, func(t *testing.T, store ds.Batching) {
		qs := openQueues(t, store, QueueOptions{})
		addSub(t, qs, "a", "x")
		addSub(t, qs, "ab", "x") // prefix of neither's keys must leak into the other
		addSub(t, qs, "c", "x")
		publish(t, qs, msg("x", "1"), msg("x", "2"))
		if err := qs.Ack("a", 1); err != nil {
			t.Fatal(err)
		}
		wait, err := qs.Wait("a")
		if err != nil {
			t.Fatal(err)
		}
		s, err := qs.RemoveSubscription(context.Background(), "a")
		if err != nil || s.ID != "a" {
			t.Fatalf("RemoveSubscription = %+v, %v", s, err)
		}
		select {
		case <-wait:
		default:
			t.Fatal("Wait channel not closed by removal")
		}
		if hasState(t, store, "a") {
			t.Fatal("queue state left after removal")
		}
		// ab and c still need both entries.
		wantPositions(t, store, span(1, 2))
		if _, err := store.Get(context.Background(), ds.RawKey(subKey("a"))); !errors.Is(err, ds.ErrNotFound) {
			t.Fatalf("subscription record after removal: %v", err)
		}
		if _, err := qs.RemoveSubscription(context.Background(), "a"); !errors.Is(err, ErrNoSubscription) {
			t.Fatalf("second removal = %v", err)
		}
		if _, err := qs.Read("a", 0, 1, 0); !errors.Is(err, ErrNoSubscription) {
			t.Fatalf("Read removed = %v", err)
		}
		if n := publish(t, qs, msg("x", "3")); n != 2 {
			t.Fatalf("publish after removal wrote %d entries, want 2", n)
		}
		wantPositions(t, store, span(1, 3))

		// RemoveWhere by token.
		removed, err := qs.RemoveWhere(context.Background(), func(s Subscription) bool { return s.TokenID == "tok-c" || s.TokenID == "tok-ab" })
		if err != nil || len(removed) != 2 || removed[0].ID != "ab" || removed[1].ID != "c" {
			t.Fatalf("RemoveWhere = %+v, %v", removed, err)
		}
		res, err := store.Query(context.Background(), query.Query{Prefix: queueNamespace, KeysOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		if es, _ := res.Rest(); len(es) != 0 {
			t.Fatalf("queue keys left: %v", es)
		}
		if len(qs.Status()) != 0 {
			t.Fatalf("status not empty: %+v", qs.Status())
		}
		// The id can be used again and starts afresh.
		addSub(t, qs, "a", "x")
		publish(t, qs, msg("x", "new"))
		wantItems(t, readAll(t, qs, "a", 0), "1:x:new")
	})
}

func TestQueueOrphanKeysDeletedOnOpen(t *testing.T) {
	store := datastore.NewMemory().Batching()
	ctx := context.Background()
	// Queue state of a subscription that no longer exists.
	orphan := ds.RawKey(subMetaKey("ghost"))
	if err := store.Put(ctx, orphan, appendSubMeta(nil, &subMeta{start: 1})); err != nil {
		t.Fatal(err)
	}
	qs := openQueues(t, store, QueueOptions{})
	if ok, _ := store.Has(ctx, orphan); ok {
		t.Fatal("orphan queue key survived OpenQueues")
	}
	_ = qs
}

func TestQueueCorruptRecords(t *testing.T) {
	ctx := context.Background()
	store := datastore.NewMemory().Batching()
	if err := store.Put(ctx, ds.RawKey(subKey("s")), []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	// Dropped, not refused (TestDamagedSubscriptionDropped has more).
	qs, err := OpenQueues(ctx, store, QueueOptions{})
	if err != nil {
		t.Fatalf("OpenQueues with corrupt subscription = %v", err)
	}
	if _, ok := qs.Subscription("s"); ok {
		t.Fatal("the corrupt subscription was loaded")
	}
	_ = qs.Close()
	if _, err := decodeSubMeta([]byte{9, 1, 2}); !errors.Is(err, ErrCorruptQueue) {
		t.Fatalf("decodeSubMeta(bad version) = %v", err)
	}
	full := appendSubMeta(nil, &subMeta{start: 3, baseG: 4})
	if _, err := decodeSubMeta(full[:len(full)-1]); !errors.Is(err, ErrCorruptQueue) {
		t.Fatalf("decodeSubMeta(truncated) = %v", err)
	}
}

func TestQueueCodecRoundTrip(t *testing.T) {
	m := Message{Subject: "a.b.c", Data: []byte("payload"), Hop: 3, Time: -1}
	val, _ := appendEntry(nil, &m, nil)
	e, err := decodeEntry(val, false)
	if err != nil || e.Subject != m.Subject || !bytes.Equal(e.Data, m.Data) || e.Hop != 3 || e.Time != -1 {
		t.Fatalf("decode = %+v, %v", e, err)
	}
	meta := subMeta{start: 1, baseG: 1 << 62, baseSeq: 5, acked: 5, dropped: 6, delivered: 7, redelivered: 8, sentMax: 9, lastDelivered: -3}
	gm, err := decodeSubMeta(appendSubMeta(nil, &meta))
	if err != nil || gm != meta {
		t.Fatalf("sub meta round trip = %+v, %v", gm, err)
	}
	for _, seq := range []uint64{0, 1, 9, 10, 1<<64 - 1} {
		s := string(appendSeq(nil, seq))
		if len(s) != seqDigits {
			t.Fatalf("appendSeq(%d) = %q", seq, s)
		}
		if back, ok := parseSeq(s); !ok || back != seq {
			t.Fatalf("parseSeq(%q) = %d, %v", s, back, ok)
		}
	}
	if _, ok := parseSeq("99999999999999999999"); ok {
		t.Fatal("parseSeq accepted an overflowing number")
	}
	if string(appendSeq(nil, 9)) >= string(appendSeq(nil, 10)) {
		t.Fatal("sequence keys do not sort numerically")
	}
}

func TestQueueWait(t *testing.T) {
	qs := openQueues(t, datastore.NewMemory().Batching(), QueueOptions{})
	addSub(t, qs, "s", "a")
	w, err := qs.Wait("s")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-w:
		t.Fatal("Wait channel closed before any publication")
	default:
	}
	publish(t, qs, msg("a", "1"))
	select {
	case <-w:
	default:
		t.Fatal("Wait channel not closed once Publish returned")
	}
	w2, _ := qs.Wait("s")
	if err := qs.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w2:
	default:
		t.Fatal("Wait channel not closed by Close")
	}
	if _, err := qs.Wait("s"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Wait after Close = %v", err)
	}
}

// TestQueueConcurrent runs publishers, per-subscription deliverers and
// subscription churn together; every message must reach each subscription
// exactly once, in each publisher's order, with sequences 1..n.
func TestQueueConcurrent(t *testing.T) {
	backends(t, func(t *testing.T, store ds.Batching) {
		const publishers, calls, perCall = 8, 40, 5
		total := publishers * calls * perCall
		qs := openQueues(t, store, QueueOptions{MemoryPerQueue: 2048}) // mix memory and datastore reads
		subs := []string{"all", "p"}
		addSub(t, qs, "all", ">")
		addSub(t, qs, "p", "pub.*")

		ctx := context.Background()
		var wg sync.WaitGroup
		results := make(map[string][]Item)
		var rmu sync.Mutex
		stop := make(chan struct{})
		for _, id := range subs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var got []Item
				var after uint64
				for len(got) < total {
					w, err := qs.Wait(id)
					if err != nil {
						t.Error(err)
						return
					}
					items, err := qs.Read(id, after, 17, 0)
					if err != nil {
						t.Error(err)
						return
					}
					if len(items) == 0 {
						<-w
						continue
					}
					got = append(got, items...)
					after = items[len(items)-1].Seq
					qs.MarkSent(id, after)
					if err := qs.Ack(id, after); err != nil {
						t.Error(err)
						return
					}
				}
				rmu.Lock()
				results[id] = got
				rmu.Unlock()
			}()
		}
		// Churn: a subscription added and removed repeatedly must not
		// disturb the others.
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := "churn" + strconv.Itoa(i)
				if err := qs.AddSubscription(ctx, Subscription{ID: id, Pattern: "pub.>"}); err != nil {
					t.Error(err)
					return
				}
				if _, err := qs.RemoveSubscription(ctx, id); err != nil {
					t.Error(err)
					return
				}
			}
		}()
		var pwg sync.WaitGroup
		for p := range publishers {
			pwg.Add(1)
			go func() {
				defer pwg.Done()
				subj := "pub." + strconv.Itoa(p)
				for c := range calls {
					batch := make([]Message, perCall)
					for k := range batch {
						batch[k] = Message{Subject: subj, Data: []byte(strconv.Itoa(c*perCall + k))}
					}
					if _, err := qs.Publish(ctx, batch, nil); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		pwg.Wait()
		close(stop)
		wg.Wait()
		if t.Failed() {
			return
		}
		for _, id := range subs {
			got := results[id]
			if len(got) != total {
				t.Fatalf("%s received %d, want %d", id, len(got), total)
			}
			nextOf := make(map[string]int)
			for i, it := range got {
				if it.Seq != uint64(i+1) {
					t.Fatalf("%s item %d has seq %d", id, i, it.Seq)
				}
				n, _ := strconv.Atoi(string(it.Message.Data))
				if n != nextOf[it.Message.Subject] {
					t.Fatalf("%s: %s message %d arrived when %d was expected", id, it.Message.Subject, n, nextOf[it.Message.Subject])
				}
				nextOf[it.Message.Subject]++
			}
			st := status(t, qs, id)
			if st.Acked != uint64(total) || st.Depth != 0 || st.Delivered != uint64(total) {
				t.Fatalf("%s status = %+v", id, st)
			}
		}
		// Removed churn queues left nothing behind, and everything acked
		// is eventually deleted.
		if keys := keysUnder(t, store, subMetaPrefix); !slices.Equal(keys, []string{subMetaKey("all"), subMetaKey("p")}) {
			t.Fatalf("queue states = %q, want only all and p", keys)
		}
		waitFor(t, func() bool { return len(logPositions(t, store)) == 0 })
	})
}

// syncCounter counts Sync calls and can hold them, to make group commit
// observable without timing.
type syncCounter struct {
	ds.Batching
	syncs   atomic.Int64
	puts    atomic.Int64
	gate    chan struct{} // Sync waits for it while non-nil
	gateMu  sync.Mutex
	waiting atomic.Int64
}

func (s *syncCounter) Sync(ctx context.Context, k ds.Key) error {
	s.syncs.Add(1)
	s.gateMu.Lock()
	g := s.gate
	s.gateMu.Unlock()
	if g != nil {
		s.waiting.Add(1)
		<-g
	}
	return s.Batching.Sync(ctx, k)
}

func (s *syncCounter) Batch(ctx context.Context) (ds.Batch, error) {
	b, err := s.Batching.Batch(ctx)
	return &countingBatch{Batch: b, puts: &s.puts}, err
}

type countingBatch struct {
	ds.Batch
	puts *atomic.Int64
}

func (b *countingBatch) Put(ctx context.Context, k ds.Key, v []byte) error {
	if strings.HasPrefix(k.String(), logPrefix) {
		b.puts.Add(1)
	}
	return b.Batch.Put(ctx, k, v)
}

func TestQueueGroupCommit(t *testing.T) {
	db := openPebble(t, t.TempDir())
	sc := &syncCounter{Batching: db.Batching()}
	qs := openQueues(t, sc, QueueOptions{})
	addSub(t, qs, "s", "a")

	// Hold every Sync until all calls are either committed or waiting in
	// the queue, so that merging is forced rather than hoped for.
	gate := make(chan struct{})
	sc.gateMu.Lock()
	sc.gate = gate
	sc.gateMu.Unlock()
	sc.syncs.Store(0)

	const calls = 200
	var wg sync.WaitGroup
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := qs.Publish(context.Background(), []Message{msg("a", strconv.Itoa(i))}, nil); err != nil {
				t.Error(err)
			}
		}()
	}
	waitFor(t, func() bool { return int(sc.puts.Load())+len(qs.reqs) == calls })
	sc.gateMu.Lock()
	sc.gate = nil
	sc.gateMu.Unlock()
	close(gate)
	wg.Wait()

	syncs := sc.syncs.Load()
	t.Logf("%d Publish calls, %d Syncs", calls, syncs)
	if syncs > 10 {
		t.Fatalf("%d Publish calls caused %d Syncs; group commit should need only a few", calls, syncs)
	}
	if got := readAll(t, qs, "s", 0); len(got) != calls {
		t.Fatalf("read %d messages, want %d", len(got), calls)
	}
}

func TestItemRing(t *testing.T) {
	var r itemRing
	next, first := uint64(1), uint64(1)
	check := func() {
		t.Helper()
		if uint64(r.n) != next-first {
			t.Fatalf("ring holds %d, want %d", r.n, next-first)
		}
		for i := 0; i < r.n; i++ {
			if r.at(i).Seq != first+uint64(i) {
				t.Fatalf("ring[%d] = %d, want %d", i, r.at(i).Seq, first+uint64(i))
			}
		}
	}
	for range 1000 {
		r.push(Item{Seq: next})
		next++
	}
	check()
	for range 990 {
		r.pop()
		first++
	}
	check()
	// Steady small traffic after the burst gives the memory back, a
	// halving per turnover, down to minRingShrink.
	for range 5000 {
		r.push(Item{Seq: next})
		next++
		r.pop()
		first++
	}
	check()
	if len(r.buf) != minRingShrink {
		t.Fatalf("after a burst and steady small traffic the ring holds %d slots, want %d", len(r.buf), minRingShrink)
	}
	// A sawtooth (fill 3000, drain to 0) keeps its buffer: no shrinking
	// and regrowing at every drain.
	var size int
	for cycle := range 5 {
		for range 3000 {
			r.push(Item{Seq: next})
			next++
		}
		for r.n > 0 {
			r.pop()
			first++
		}
		check()
		if cycle == 0 {
			size = len(r.buf)
		} else if len(r.buf) != size {
			t.Fatalf("sawtooth cycle %d: ring resized from %d to %d slots", cycle, size, len(r.buf))
		}
	}
}

// TestQueueFanOutWritesOnce checks that a publication routed to many
// subscriptions is one datastore write, and that each subscription still
// numbers its messages 1, 2, 3...
func TestQueueFanOutWritesOnce(t *testing.T) {
	db := openPebble(t, t.TempDir())
	sc := &syncCounter{Batching: db.Batching()}
	qs := openQueues(t, sc, QueueOptions{MemoryPerQueue: 1}) // reads come from the log
	const subs, msgs = 10, 100
	for i := range subs {
		addSub(t, qs, "s"+strconv.Itoa(i), "fan.>")
	}
	addSub(t, qs, "other", "elsewhere")
	var want []string
	for i := 0; i < msgs; i += 25 {
		batch := make([]Message, 25)
		for k := range batch {
			batch[k] = msg("fan.out", strconv.Itoa(i+k))
			want = append(want, fmt.Sprintf("%d:fan.out:%d", i+k+1, i+k))
		}
		if n := publish(t, qs, batch...); n != 25*subs {
			t.Fatalf("Publish = %d entries, want %d", n, 25*subs)
		}
	}
	if got := sc.puts.Load(); got != msgs {
		t.Fatalf("%d messages to %d subscriptions caused %d log writes, want %d", msgs, subs, got, msgs)
	}
	for i := range subs {
		wantItems(t, readAll(t, qs, "s"+strconv.Itoa(i), 0), want...)
	}
	wantItems(t, readAll(t, qs, "other", 0))

	// A filtered publication is also written once, with its routing.
	n, err := qs.Publish(context.Background(), []Message{msg("fan.x", "only")}, func(s Subscription) bool {
		return s.ID == "s3" || s.ID == "s7"
	})
	if err != nil || n != 2 {
		t.Fatalf("filtered Publish = %d, %v", n, err)
	}
	if got := sc.puts.Load(); got != msgs+1 {
		t.Fatalf("filtered publication caused %d log writes, want 1", got-msgs)
	}
	wantItems(t, readAll(t, qs, "s3", msgs), fmt.Sprintf("%d:fan.x:only", msgs+1))
	wantItems(t, readAll(t, qs, "s4", msgs))
}

// TestQueueLogDeletedWhenAllAcked checks that a log entry stays exactly as
// long as some subscription it was routed to still needs it.
func TestQueueLogDeletedWhenAllAcked(t *testing.T) {
	backends(t, func(t *testing.T, store ds.Batching) {
		qs := openQueues(t, store, QueueOptions{})
		addSub(t, qs, "a", "x.*")
		addSub(t, qs, "b", "x.y")
		addSub(t, qs, "c", "z")
		// Positions 1..4; a takes 1,2,4 (seqs 1..3), b takes 1,4 (seqs
		// 1,2), c takes 3 (seq 1).
		publish(t, qs, msg("x.y", "1"), msg("x.q", "2"), msg("z", "3"), msg("x.y", "4"))
		wantItems(t, readAll(t, qs, "a", 0), "1:x.y:1", "2:x.q:2", "3:x.y:4")
		wantItems(t, readAll(t, qs, "b", 0), "1:x.y:1", "2:x.y:4")
		wantItems(t, readAll(t, qs, "c", 0), "1:z:3")
		wantPositions(t, store, span(1, 4))

		if err := qs.Ack("a", 3); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return slices.Equal(logPositions(t, store), []uint64{1, 3, 4}) })
		if err := qs.Ack("c", 1); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return slices.Equal(logPositions(t, store), []uint64{1, 4}) })
		if err := qs.Ack("b", 1); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return slices.Equal(logPositions(t, store), []uint64{4}) })
		// A removed subscription releases what it held, at once.
		if _, err := qs.RemoveSubscription(context.Background(), "b"); err != nil {
			t.Fatal(err)
		}
		wantPositions(t, store, nil)
		// A subscription that acked everything keeps numbering after a
		// stretch of publications it was not routed.
		publish(t, qs, msg("z", "5"), msg("x.y", "6"))
		wantItems(t, readAll(t, qs, "a", 0), "4:x.y:6")
		wantItems(t, readAll(t, qs, "c", 0), "2:z:5")
	})
}

// TestQueueRestartUnevenAcks restarts with subscriptions acked to different
// depths of a shared log, both after a clean Close and from whatever a
// running instance had committed (as after a crash): every subscription
// must get exactly its own messages with unchanged sequence numbers, and
// continue numbering after the restart.
func TestQueueRestartUnevenAcks(t *testing.T) {
	for _, clean := range []bool{true, false} {
		t.Run(fmt.Sprintf("clean=%v", clean), func(t *testing.T) {
			store := datastore.NewMemory().Batching()
			qs := openQueues(t, store, QueueOptions{MemoryPerQueue: 300})
			addSub(t, qs, "a", ">")
			addSub(t, qs, "b", "x.>")
			addSub(t, qs, "c", "x.y")
			want := map[string][]string{}
			subjects := []string{"x.y", "x.z", "w"}
			for i := range 30 {
				subj := subjects[i%3]
				publish(t, qs, msg(subj, strconv.Itoa(i)))
				for _, id := range []string{"a", "b", "c"} {
					if Match(map[string]string{"a": ">", "b": "x.>", "c": "x.y"}[id], subj) {
						want[id] = append(want[id], fmt.Sprintf("%d:%s:%d", len(want[id])+1, subj, i))
					}
				}
			}
			// A subscription added after the publications gets none of them.
			addSub(t, qs, "late", ">")
			acks := map[string]uint64{"a": 25, "b": 5, "c": 0}
			for id, seq := range acks {
				if seq > 0 {
					if err := qs.Ack(id, seq); err != nil {
						t.Fatal(err)
					}
				}
			}
			if clean {
				if err := qs.Close(); err != nil {
					t.Fatal(err)
				}
			} else {
				// Let the releases commit, then open a second instance on
				// the same store without closing the first.
				waitFor(t, func() bool {
					q, _ := qs.get("b")
					qs.commitMu.Lock()
					defer qs.commitMu.Unlock()
					return q.cHead == 6
				})
			}
			qs2 := openQueues(t, store, QueueOptions{MemoryPerQueue: 300})
			for id, seq := range acks {
				wantItems(t, readAll(t, qs2, id, 0), want[id][seq:]...)
			}
			wantItems(t, readAll(t, qs2, "late", 0))
			// Numbering continues.
			publish(t, qs2, msg("x.y", "new"))
			for _, id := range []string{"a", "b", "c", "late"} {
				next := uint64(len(want[id]) + 1)
				wantItems(t, readAll(t, qs2, id, next-1), fmt.Sprintf("%d:x.y:new", next))
			}
			// Entries nobody needs were deleted: with c at 0, every x.y
			// stays; a w entry stays only if a needs it (above position
			// 25), an x.z one if a or b does (b's seq 5 is position 7).
			for _, p := range logPositions(t, store) {
				subj := subjects[(p-1)%3]
				if p <= 30 && (subj == "w" && p <= 25 || subj == "x.z" && p <= 7) {
					t.Errorf("position %d (%s) is still stored though every subscription routed it acked it", p, subj)
				}
			}
		})
	}
}

// TestQueueRoutingSurvivesRestart checks that routing decided at publish
// time (a filter, a subscription added later) is what a restart replays.
func TestQueueRoutingSurvivesRestart(t *testing.T) {
	store := datastore.NewMemory().Batching()
	qs := openQueues(t, store, QueueOptions{})
	addSub(t, qs, "a", "x")
	addSub(t, qs, "b", "x")
	publish(t, qs, msg("x", "both"))
	if n, err := qs.Publish(context.Background(), []Message{msg("x", "only a")}, func(s Subscription) bool { return s.ID == "a" }); err != nil || n != 1 {
		t.Fatalf("filtered Publish = %d, %v", n, err)
	}
	addSub(t, qs, "c", "x")
	publish(t, qs, msg("x", "all three"))
	if err := qs.Close(); err != nil {
		t.Fatal(err)
	}
	qs = openQueues(t, store, QueueOptions{})
	wantItems(t, readAll(t, qs, "a", 0), "1:x:both", "2:x:only a", "3:x:all three")
	wantItems(t, readAll(t, qs, "b", 0), "1:x:both", "2:x:all three")
	wantItems(t, readAll(t, qs, "c", 0), "1:x:all three")
	// A subscription re-added under a removed one's id starts afresh and
	// does not inherit entries that listed the old one.
	if _, err := qs.RemoveSubscription(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	addSub(t, qs, "a", "x")
	if err := qs.Close(); err != nil {
		t.Fatal(err)
	}
	qs = openQueues(t, store, QueueOptions{})
	wantItems(t, readAll(t, qs, "a", 0))
	wantItems(t, readAll(t, qs, "b", 0), "1:x:both", "2:x:all three")
}

func TestQueueLogCodec(t *testing.T) {
	m := Message{Subject: "a.b", Data: []byte("payload"), Hop: 2, Time: 7}
	for _, ids := range [][]string{nil, {}, {"one", "two"}} {
		val, off := appendEntry(nil, &m, ids)
		if len(val) > encodedEntrySize(&m, ids) || string(val[off:]) != "payload" {
			t.Fatalf("encoded size %d > bound %d, or data offset wrong", len(val), encodedEntrySize(&m, ids))
		}
		e, err := decodeEntry(val, false)
		if err != nil || e.Subject != "a.b" || string(e.Data) != "payload" || e.Hop != 2 || e.Time != 7 || e.listed != (ids != nil) || len(e.ids) != len(ids) {
			t.Fatalf("decode(%q) = %+v, %v", ids, e, err)
		}
		if _, err := decodeEntry(val[:off-1], false); ids != nil && err == nil && len(ids) > 0 {
			t.Fatalf("truncated entry decoded")
		}
	}
	for _, bad := range [][]byte{nil, {logCodecV1}, {9, 0}, {logCodecV1, 7}, {logCodecV1, routeListed, 5}} {
		if _, err := decodeEntry(bad, false); !errors.Is(err, ErrCorruptQueue) {
			t.Fatalf("decodeEntry(%v) = %v, want ErrCorruptQueue", bad, err)
		}
	}
	sm := subMeta{start: 3, baseG: 9, baseSeq: 4, acked: 4, dropped: 1, delivered: 5, redelivered: 6, sentMax: 7, lastDelivered: -1}
	if got, err := decodeSubMeta(appendSubMeta(nil, &sm)); err != nil || got != sm {
		t.Fatalf("subMeta round trip = %+v, %v", got, err)
	}
	if _, err := decodeSubMeta(appendSubMeta(nil, &subMeta{start: 5, baseG: 2})); !errors.Is(err, ErrCorruptQueue) {
		t.Fatalf("decodeSubMeta(base before start) = %v", err)
	}
}

func TestPosIndex(t *testing.T) {
	var x posIndex
	// Sequences 1..10 at positions 1..5 then 20..24: two runs.
	for s := uint64(1); s <= 10; s++ {
		p := s
		if s > 5 {
			p = s + 14
		}
		x.add(s, p)
	}
	if len(x.runs) != 2 {
		t.Fatalf("runs = %+v, want 2", x.runs)
	}
	for s, want := range map[uint64]uint64{1: 1, 5: 5, 6: 20, 10: 24} {
		if p, ok := x.lookup(s); !ok || p != want {
			t.Fatalf("lookup(%d) = %d, %v; want %d", s, p, ok, want)
		}
	}
	if _, ok := x.lookup(11); ok {
		t.Fatal("lookup beyond the end succeeded")
	}
	var got []uint64
	x.each(4, 8, func(_, p uint64) bool { got = append(got, p); return true })
	if !slices.Equal(got, []uint64{4, 5, 20, 21}) {
		t.Fatalf("each(4, 8) = %v", got)
	}
	x.trim(7)
	if _, ok := x.lookup(6); ok {
		t.Fatal("trimmed sequence still found")
	}
	if p, ok := x.lookup(7); !ok || p != 21 {
		t.Fatalf("lookup(7) after trim = %d, %v", p, ok)
	}
	x.trim(11)
	if len(x.runs) != 0 {
		t.Fatalf("runs after trimming everything = %+v", x.runs)
	}
}

// Released runs of consecutive log positions are deleted with one range
// deletion on pebble; a run never covers a position another subscription
// still needs.
func TestQueueLogRangeDeletes(t *testing.T) {
	backends(t, func(t *testing.T, store ds.Batching) {
		qs := openQueues(t, store, QueueOptions{})
		addSub(t, qs, "all", ">")
		addSub(t, qs, "odd", "odd")
		var msgs []Message
		for i := 1; i <= 12; i++ {
			subject := "even"
			if i%2 == 1 || i > 8 {
				subject = "odd" // 1,3,5,7 and 9..12
			}
			msgs = append(msgs, msg(subject, strconv.Itoa(i)))
		}
		publish(t, qs, msgs...)
		wantPositions(t, store, span(1, 12))
		// "all" acks everything: the even positions 2..8 go one by one,
		// the positions "odd" still needs (1,3,5,7,9..12) stay.
		if err := qs.Ack("all", 12); err != nil {
			t.Fatal(err)
		}
		want := []uint64{1, 3, 5, 7, 9, 10, 11, 12}
		waitFor(t, func() bool { return slices.Equal(logPositions(t, store), want) })
		wantItems(t, readAll(t, qs, "odd", 4), "5:odd:9", "6:odd:10", "7:odd:11", "8:odd:12")
		// "odd" acks up to position 10: 1..7 (isolated) and 9..10 (a run)
		// go, 11 and 12 stay readable.
		if err := qs.Ack("odd", 6); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return slices.Equal(logPositions(t, store), []uint64{11, 12}) })
		wantItems(t, readAll(t, qs, "odd", 6), "7:odd:11", "8:odd:12")
		// After a restart the ranges stay deleted and the rest is intact.
		if err := qs.Close(); err != nil {
			t.Fatal(err)
		}
		qs = openQueues(t, store, QueueOptions{})
		wantPositions(t, store, []uint64{11, 12})
		wantItems(t, readAll(t, qs, "odd", 6), "7:odd:11", "8:odd:12")
		if items := readAll(t, qs, "all", 12); len(items) != 0 {
			t.Fatalf("after a restart %q has %d items past its ack, want none", "all", len(items))
		}
		if err := qs.Ack("odd", 8); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return len(logPositions(t, store)) == 0 })
		// Later publications are unaffected by the tombstones.
		publish(t, qs, msg("odd", "13"))
		wantPositions(t, store, []uint64{13})
		wantItems(t, readAll(t, qs, "odd", 8), "9:odd:13")
	})
}

// MemoryTotal bounds the cache of all queues together: each queue keeps
// at most its share, shrunk when a subscription is added, and what falls
// out of memory is read back from the datastore.
func TestQueueMemoryTotal(t *testing.T) {
	backends(t, func(t *testing.T, store ds.Batching) {
		qs := openQueues(t, store, QueueOptions{MemoryPerQueue: 64 << 10, MemoryTotal: 128 << 10})
		mem := func(id string) int {
			q, err := qs.get(id)
			if err != nil {
				t.Fatal(err)
			}
			q.mu.Lock()
			defer q.mu.Unlock()
			return q.memBytes
		}
		data := strings.Repeat("x", 1000)
		publishN := func(from, to int) {
			var msgs []Message
			for i := from; i <= to; i++ {
				msgs = append(msgs, msg("m."+strconv.Itoa(i), data))
			}
			publish(t, qs, msgs...)
		}
		addSub(t, qs, "a", "m.*")
		publishN(1, 100)
		if m := mem("a"); m > 64<<10 || m < 32<<10 {
			t.Fatalf("one subscription caches %d bytes, want its MemoryPerQueue (64 KiB) nearly full", m)
		}
		for _, id := range []string{"b", "c", "d"} {
			addSub(t, qs, id, "m.*")
		}
		// 128 KiB over 4 subscriptions: 32 KiB each, at once for "a".
		if m := mem("a"); m > 32<<10 {
			t.Fatalf("after 3 more subscriptions %q caches %d bytes, want at most 32 KiB", "a", m)
		}
		publishN(101, 200)
		for _, id := range []string{"a", "b", "c", "d"} {
			if m := mem(id); m > 32<<10 || m == 0 {
				t.Fatalf("%q caches %d bytes, want 1..32 KiB", id, m)
			}
		}
		// Nothing is lost to the budget: "a" reads all 200, most from the store.
		items := readAll(t, qs, "a", 0)
		if len(items) != 200 || items[0].Message.Subject != "m.1" || items[199].Message.Subject != "m.200" {
			t.Fatalf("read %d items, want all 200 in order", len(items))
		}
	})
}

// An old entry a slow subscription still needs does not make the reference
// counts span every position published since: it moves aside, and is
// still read, released and deleted like any other, across a restart.
func TestQueueRefsStayBoundedBehindSlowSubscription(t *testing.T) {
	defer func(v int) { maxDenseRefs = v }(maxDenseRefs)
	maxDenseRefs = 64
	backends(t, func(t *testing.T, store ds.Batching) {
		qs := openQueues(t, store, QueueOptions{})
		addSub(t, qs, "slow", "rare")
		addSub(t, qs, "fast", "busy")
		publish(t, qs, msg("rare", "old"))
		var acked uint64
		for range 20 {
			var msgs []Message
			for range 50 {
				msgs = append(msgs, msg("busy", "x"))
			}
			publish(t, qs, msgs...)
			acked += 50
			if err := qs.Ack("fast", acked); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, func() bool { return slices.Equal(logPositions(t, store), []uint64{1}) })
		qs.commitMu.Lock()
		span, old := len(qs.refs), qs.oldRefs[1].n
		qs.commitMu.Unlock()
		if span > 2*maxDenseRefs || old != 1 {
			t.Fatalf("refs span %d positions (bound %d), old entry count %d; want it moved aside", span, maxDenseRefs, old)
		}
		wantItems(t, readAll(t, qs, "slow", 0), "1:rare:old")

		if err := qs.Close(); err != nil {
			t.Fatal(err)
		}
		qs = openQueues(t, store, QueueOptions{})
		wantItems(t, readAll(t, qs, "slow", 0), "1:rare:old")
		publish(t, qs, msg("rare", "new"))
		if err := qs.Ack("slow", 2); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return len(logPositions(t, store)) == 0 })
		if st := status(t, qs, "slow"); st.NextSeq != 3 || st.Depth != 0 {
			t.Fatalf("slow after acking all: %+v", st)
		}
	})
}

// Close writes the queues' last state. A round releases at most
// maxDeletesPerRound log entries per queue, and Close wrote one round
// after the committer's last: acknowledging many times that just before
// Close left the rest on disk (and dropped ones of a drop_oldest queue
// came back after a restart).
func TestCloseReleasesEverythingAcked(t *testing.T) {
	store := datastore.NewMemory().Batching()
	qs := openQueues(t, store, QueueOptions{})
	addSub(t, qs, "s", ">")
	const n = maxDeletesPerRound * 8
	batch := make([]Message, 0, 4096)
	for i := 0; i < n; i += len(batch) {
		batch = batch[:0]
		for j := i; j < min(n, i+4096); j++ {
			batch = append(batch, msg("a", "1"))
		}
		if _, err := qs.Publish(context.Background(), batch, nil); err != nil {
			t.Fatal(err)
		}
	}
	// The committer is held while the ack and Close arrive, as on a busy
	// machine: the releases are left to Close.
	qs.commitMu.Lock()
	if err := qs.Ack("s", n); err != nil {
		qs.commitMu.Unlock()
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() { closed <- qs.Close() }()
	time.Sleep(100 * time.Millisecond) // let Close reach the committer
	qs.commitMu.Unlock()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if left := len(logPositions(t, store)); left != 0 {
		t.Fatalf("%d of %d acknowledged log entries left on disk after Close", left, n)
	}
	reopened := openQueues(t, store, QueueOptions{})
	if items, err := reopened.Read("s", 0, 10, 1<<20); err != nil || len(items) != 0 {
		t.Fatalf("after reopening: %d items (%v), want none", len(items), err)
	}
}

// TestQueueTotalsSinceOpen: Totals count from OpenQueues, while the
// per-queue counters in Status are persisted across restarts; a removed
// queue's deliveries stay in the totals.
func TestQueueTotalsSinceOpen(t *testing.T) {
	qs, reopen := dropOldestFive(t)
	if _, err := qs.Resume("s", 0); err != nil {
		t.Fatal(err)
	}
	qs.MarkSent("s", 5)
	if _, err := qs.Resume("s", 4); err != nil {
		t.Fatal(err)
	}
	qs.MarkSent("s", 5)
	if got, want := qs.Totals(), (QueueTotals{Delivered: 2, Redelivered: 1, Dropped: 3}); got != want {
		t.Fatalf("Totals = %+v, want %+v", got, want)
	}
	qs = reopen()
	if got := qs.Totals(); got != (QueueTotals{}) {
		t.Fatalf("Totals after restart = %+v, want zero", got)
	}
	if st := status(t, qs, "s"); st.Delivered != 2 || st.Redelivered != 1 || st.Dropped != 3 {
		t.Fatalf("status after restart = %+v, want the persisted delivered 2, redelivered 1, dropped 3", st)
	}
	publish(t, qs, msg("a", "6"))
	if _, err := qs.Resume("s", 5); err != nil {
		t.Fatal(err)
	}
	qs.MarkSent("s", 6)
	if _, err := qs.RemoveSubscription(context.Background(), "s"); err != nil {
		t.Fatal(err)
	}
	if got, want := qs.Totals(), (QueueTotals{Delivered: 1}); got != want {
		t.Fatalf("Totals after a delivery and removal = %+v, want %+v", got, want)
	}
}

// The deliverer reports what it sent (MarkSent) once its write returns;
// a fast subscriber's ack may come in before that. Acked sequences were
// sent, and count as delivered: counting from the queue's head, which the
// ack had moved, left them out for good (a chaos soak saw delivered stay
// below acked).
func TestMarkSentAfterAckCountsDelivered(t *testing.T) {
	qs := openQueues(t, datastore.NewMemory().Batching(), QueueOptions{})
	addSub(t, qs, "s", "x")
	for range 3 {
		if _, err := qs.Publish(context.Background(), []Message{msg("x", "1")}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := qs.Resume("s", 0); err != nil {
		t.Fatal(err)
	}
	// Frame 1..3 written; the ack for 2 arrives before MarkSent(3).
	if err := qs.Ack("s", 2); err != nil {
		t.Fatal(err)
	}
	qs.MarkSent("s", 3)
	if err := qs.Ack("s", 3); err != nil {
		t.Fatal(err)
	}
	st := qs.Status()
	if len(st) != 1 || st[0].Delivered != 3 || st[0].Redelivered != 0 || st[0].Acked != 3 {
		t.Fatalf("status %+v, want 3 delivered, none redelivered, 3 acked", st)
	}
	if tot := qs.Totals(); tot.Delivered != 3 || tot.Redelivered != 0 {
		t.Fatalf("totals %+v, want 3 delivered, none redelivered", tot)
	}
}

// While QueueOptions.SpaceCheck refuses, Publish fails with ErrNoSpace
// (wrapping its reason) and writes nothing of the call, whatever the full
// policy; acks still go through; once it allows, sequences continue
// without a gap. The check sees the size of what would be written.
func TestQueueRefusesWithoutSpace(t *testing.T) {
	for _, policy := range []string{PolicyReject, PolicyDropOldest} {
		t.Run(policy, func(t *testing.T) {
			backends(t, func(t *testing.T, store ds.Batching) {
				var low atomic.Bool
				var asked atomic.Int64
				why := errors.New("the disk has 3 MiB free")
				qs := openQueues(t, store, QueueOptions{Bound: 100, Policy: policy, SpaceCheck: func(n int) error {
					asked.Store(int64(n))
					if low.Load() {
						return why
					}
					return nil
				}})
				addSub(t, qs, "s", "a")
				publish(t, qs, msg("a", "1"), msg("a", "2"))
				if n := asked.Load(); n < int64(len("12")) {
					t.Fatalf("SpaceCheck asked about %d bytes for two publications", n)
				}
				low.Store(true)
				_, err := qs.Publish(context.Background(), []Message{msg("a", "3")}, nil)
				if !errors.Is(err, ErrNoSpace) || !errors.Is(err, why) {
					t.Fatalf("Publish without space = %v, want ErrNoSpace wrapping %v", err, why)
				}
				if err := qs.Ack("s", 1); err != nil {
					t.Fatalf("ack without space: %v", err)
				}
				low.Store(false)
				publish(t, qs, msg("a", "4"))
				wantItems(t, readAll(t, qs, "s", 0), "2:a:2", "3:a:4")
			})
		})
	}
}

// A subscription's delivered total counts publications its subscriber
// processed though the queue lost the count of their sending (a crash:
// counters are written with the queue's state, lazily): the subscriber's
// resume says they were delivered. After a publisher was SIGKILLed,
// `subscribers list` showed delivered below acked for good (9103 of 9128
// in a soak).
func TestResumeCountsDeliveriesLostInACrash(t *testing.T) {
	backends(t, func(t *testing.T, store ds.Batching) {
		qs := openQueues(t, store, QueueOptions{})
		addSub(t, qs, "s", "a")
		publish(t, qs, msg("a", "1"), msg("a", "2"), msg("a", "3"), msg("a", "4"), msg("a", "5"))
		qs.MarkSent("s", 5) // in memory only
		// A restart that never wrote the count (the first Queues is left
		// open, as a killed process would leave it).
		qs2 := openQueues(t, store, QueueOptions{})
		if st := status(t, qs2, "s"); st.Delivered != 0 {
			t.Fatalf("the count was written before the restart (delivered %d): this test needs a restart that lost it", st.Delivered)
		}
		if _, err := qs2.Resume("s", 5); err != nil {
			t.Fatal(err)
		}
		if st := status(t, qs2, "s"); st.Delivered != 5 || st.Redelivered != 0 {
			t.Fatalf("after the subscriber's resume at 5: delivered %d, redelivered %d; want 5, 0", st.Delivered, st.Redelivered)
		}
		// Sending them again (a resume from earlier) counts as redelivery.
		if _, err := qs2.Resume("s", 5); err != nil {
			t.Fatal(err)
		}
		publish(t, qs2, msg("a", "6"))
		qs2.MarkSent("s", 6)
		if st := status(t, qs2, "s"); st.Delivered != 6 {
			t.Fatalf("after one more: delivered %d, want 6", st.Delivered)
		}
	})
}

// The same with drop_oldest: publications dropped before they were sent
// are counted as dropped, not also as delivered by the resume. (The lost
// sends are those a queue never recorded: here none was.)
func TestResumeCountsDeliveriesLostInACrashNotDropped(t *testing.T) {
	backends(t, func(t *testing.T, store ds.Batching) {
		qs := openQueues(t, store, QueueOptions{Bound: 2, Policy: PolicyDropOldest})
		addSub(t, qs, "s", "a")
		publish(t, qs, msg("a", "1"), msg("a", "2"), msg("a", "3"), msg("a", "4"), msg("a", "5")) // 1..3 dropped
		if st := status(t, qs, "s"); st.Delivered != 0 || st.Dropped != 3 {
			t.Fatalf("before: delivered %d, dropped %d; want 0, 3", st.Delivered, st.Dropped)
		}
		if _, err := qs.Resume("s", 5); err != nil {
			t.Fatal(err)
		}
		if st := status(t, qs, "s"); st.Delivered != 2 || st.Dropped != 3 {
			t.Fatalf("after the subscriber's resume at 5: delivered %d, dropped %d; want 2, 3", st.Delivered, st.Dropped)
		}
	})
}

// TestRebindToken: a subscription rebound to another token (its
// subscriber rotated) is that token's from then on — in Subscription,
// Status and RemoveWhere by token id — also after a restart; its queue is
// untouched.
func TestRebindToken(t *testing.T) {
	backends(t, func(t *testing.T, store ds.Batching) {
		ctx := context.Background()
		qs := openQueues(t, store, QueueOptions{})
		s := addSub(t, qs, "s", "orders.>")
		if _, err := qs.Publish(ctx, []Message{{Subject: "orders.a", Data: []byte(`1`)}}, nil); err != nil {
			t.Fatal(err)
		}
		got, err := qs.Rebind(ctx, "s", "tok-new")
		if err != nil || got.TokenID != "tok-new" || got.Pattern != s.Pattern || got.Subscriber != s.Subscriber {
			t.Fatalf("Rebind = %+v, %v", got, err)
		}
		if again, err := qs.Rebind(ctx, "s", "tok-new"); err != nil || again != got {
			t.Errorf("Rebind to the same token = %+v, %v; want a no-op", again, err)
		}
		if _, err := qs.Rebind(ctx, "nope", "tok-new"); !errors.Is(err, ErrNoSubscription) {
			t.Errorf("Rebind of an unknown subscription: %v, want ErrNoSubscription", err)
		}
		if _, err := qs.Rebind(ctx, "s", ""); err == nil {
			t.Error("Rebind to an empty token id succeeded")
		}
		if st := qs.Status(); len(st) != 1 || st[0].TokenID != "tok-new" || st[0].Depth != 1 {
			t.Errorf("Status after Rebind: %+v", st)
		}
		// The old token's revocation no longer finds it.
		if removed, err := qs.RemoveWhere(ctx, func(s Subscription) bool { return s.TokenID == "tok-s" }); err != nil || len(removed) != 0 {
			t.Fatalf("RemoveWhere(old token) removed %v, %v", removed, err)
		}
		if err := qs.Close(); err != nil {
			t.Fatal(err)
		}
		qs = openQueues(t, store, QueueOptions{})
		if now, ok := qs.Subscription("s"); !ok || now.TokenID != "tok-new" {
			t.Fatalf("after a restart: %+v (present %v), want token tok-new", now, ok)
		}
		if items, err := qs.Read("s", 0, 10, 1<<20); err != nil || len(items) != 1 || string(items[0].Message.Data) != "1" {
			t.Fatalf("after a restart the queue holds %+v, %v; want the one publication", items, err)
		}
		removed, err := qs.RemoveWhere(ctx, func(s Subscription) bool { return s.TokenID == "tok-new" })
		if err != nil || len(removed) != 1 || removed[0].TokenID != "tok-new" {
			t.Fatalf("RemoveWhere(new token) = %+v, %v", removed, err)
		}
	})
}

// TestRemoveLogsDiscarded: removing a subscription whose queue still holds
// publications its subscriber had not acknowledged says how many were
// discarded (they were counted nowhere: dropped counts only what a full
// queue drops, and the queue's counters go with it).
func TestRemoveLogsDiscarded(t *testing.T) {
	ctx := context.Background()
	var logs bytes.Buffer
	qs := openQueues(t, datastore.NewMemory().Batching(), QueueOptions{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	addSub(t, qs, "s", "orders.>")
	addSub(t, qs, "idle", "orders.>")
	msgs := []Message{{Subject: "orders.a", Data: []byte(`1`)}, {Subject: "orders.a", Data: []byte(`2`)}, {Subject: "orders.a", Data: []byte(`3`)}}
	if _, err := qs.Publish(ctx, msgs, nil); err != nil {
		t.Fatal(err)
	}
	if err := qs.Ack("idle", 3); err != nil {
		t.Fatal(err)
	}
	if err := qs.Ack("s", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := qs.RemoveWhere(ctx, func(Subscription) bool { return true }); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if !strings.Contains(out, "subscription=s ") || !strings.Contains(out, "discarded=2") {
		t.Errorf("removing a queue with 2 unacknowledged publications logged:\n%s", out)
	}
	if strings.Contains(out, "subscription=idle ") {
		t.Errorf("removing a drained queue logged a discard:\n%s", out)
	}
}

// A Publish whose ctx ends after the committer took it (a control request
// cut by a service stop) reports the outcome of the commit, not "may still
// be queued": the caller learns the publications were stored. One taken by
// a round stuck past handoffGrace still says it does not know.
func TestPublishCancelledAfterHandoffReportsOutcome(t *testing.T) {
	qs := openQueues(t, datastore.NewMemory().Batching(), QueueOptions{})
	addSub(t, qs, "s", ">")
	handedOff := make(chan struct{}, 1)
	testHookHandoff = func() { handedOff <- struct{}{} }
	defer func() { testHookHandoff = nil }()
	// Publish with the committer held, and end ctx once it has the request.
	publish := func() chan error {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			n, err := qs.Publish(ctx, []Message{msg("a", "1")}, nil)
			if err == nil && n != 1 {
				err = fmt.Errorf("published %d, want 1", n)
			}
			done <- err
		}()
		<-handedOff
		cancel()
		return done
	}
	qs.commitMu.Lock()
	done := publish()
	time.Sleep(50 * time.Millisecond) // Publish is waiting past its ctx
	qs.commitMu.Unlock()
	if err := <-done; err != nil {
		t.Fatalf("publish cancelled after the hand-off: %v, want its success", err)
	}
	if st := status(t, qs, "s"); st.NextSeq != 2 {
		t.Fatalf("next_seq %d, want the publication queued", st.NextSeq)
	}

	defer func(g time.Duration) { handoffGrace = g }(handoffGrace)
	handoffGrace = 50 * time.Millisecond
	qs.commitMu.Lock()
	err := <-publish()
	qs.commitMu.Unlock()
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "may still be queued") {
		t.Fatalf("publish stuck past the grace: %v, want ctx's error saying it may still be queued", err)
	}
}

// TestQueueDropOldestCountsOnlyUnsent: drop_oldest pushing out
// publications already sent to the subscriber (in flight, not yet acked)
// does not count them as dropped: they were delivered (counted so when
// sent), and the subscriber runs them. Only those never sent are dropped.
// They were counted twice, delivered and dropped: a slow subscriber's
// dropped + delivered exceeded what was published. The counts survive a
// restart.
func TestQueueDropOldestCountsOnlyUnsent(t *testing.T) {
	dir := t.TempDir()
	db := openPebble(t, dir)
	qs := openQueues(t, db.Batching(), QueueOptions{Bound: 3, Policy: PolicyDropOldest})
	addSub(t, qs, "s", "a")
	publish(t, qs, msg("a", "1"), msg("a", "2"), msg("a", "3"))
	qs.MarkSent("s", 3) // 1..3 in flight, unacked
	// 4..6 push 1..3 out: sent already, so delivered, not dropped.
	publish(t, qs, msg("a", "4"), msg("a", "5"), msg("a", "6"))
	if st := status(t, qs, "s"); st.Delivered != 3 || st.Dropped != 0 || st.Depth != 3 {
		t.Fatalf("after dropping 3 sent publications: %+v, want delivered 3, dropped 0, depth 3", st)
	}
	// 7 pushes out 4, never sent: dropped.
	publish(t, qs, msg("a", "7"))
	qs.MarkSent("s", 7)
	if err := qs.Ack("s", 7); err != nil {
		t.Fatal(err)
	}
	st := status(t, qs, "s")
	if st.Delivered != 6 || st.Dropped != 1 || st.Depth != 0 {
		t.Fatalf("after 7 published, 4 dropped unsent: %+v, want delivered 6, dropped 1, depth 0", st)
	}
	if tot := qs.Totals(); tot.Delivered != 6 || tot.Dropped != 1 {
		t.Fatalf("totals %+v, want delivered 6, dropped 1", tot)
	}
	publish(t, qs, msg("a", "8")) // a round writes the counters
	qs.MarkSent("s", 8)
	if err := qs.Close(); err != nil {
		t.Fatal(err)
	}
	qs = openQueues(t, db.Batching(), QueueOptions{Bound: 3, Policy: PolicyDropOldest})
	if st := status(t, qs, "s"); st.Delivered != 7 || st.Dropped != 1 {
		t.Fatalf("after a restart: %+v, want delivered 7, dropped 1", st)
	}
}

// Removing a subscription with a deep queue costs memory in proportion to
// its 8-byte log positions, not a map entry and a datastore key per
// publication (a million queued took ~280 MB for a moment), and deletes
// its log entries (runs of them as range deletions) while keeping those
// another subscription still needs.
func TestRemoveDeepQueueMemoryAndLog(t *testing.T) {
	ctx := context.Background()
	db := openPebble(t, t.TempDir())
	qs := openQueues(t, db.Batching(), QueueOptions{Bound: 1_000_000})
	addSub(t, qs, "deep", "a")
	addSub(t, qs, "other", "b")
	const n = 200_000
	batch := make([]Message, 0, 10_000)
	for range 10_000 {
		batch = append(batch, msg("a", "1"))
	}
	for range n / 10_000 {
		if _, err := qs.Publish(ctx, batch, nil); err != nil {
			t.Fatal(err)
		}
	}
	publish(t, qs, msg("b", "kept"))
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := qs.RemoveSubscription(ctx, "deep"); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / n; per > 40 {
		t.Fatalf("removing a subscription with %d queued allocated %d bytes per publication, want at most 40", n, per)
	}
	res, err := db.Batching().Query(ctx, query.Query{Prefix: logPrefix, KeysOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	entries, err := res.Rest()
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Fatalf("%d log entries left after the removal, want 1 (the other subscription's)", len(entries))
	}
	if got := readAll(t, qs, "other", 0); len(got) != 1 || string(got[0].Message.Data) != "kept" {
		t.Fatalf("other subscription reads %v, want its one publication", got)
	}
}

// FreedBytes tells the datastore's reclaimer how much of what its tables
// hold the queues deleted: every entry a removed subscription alone
// needed, entries deleted at open, and entries delivered (acked) that a
// flush had put in the tables (Flushed), not those delivered in the flow,
// which are deleted while still in memory. A removed subscription's deep
// queue was deleted without a word to it, and its space came back only
// when the tables next doubled.
func TestQueueFreedBytes(t *testing.T) {
	backends(t, func(t *testing.T, store ds.Batching) {
		ctx := context.Background()
		m := msg("a", "0123456789")
		val, _ := appendEntry(nil, &m, nil)
		one := uint64(logKeyLen + len(val))
		qs := openQueues(t, store, QueueOptions{})
		addSub(t, qs, "a", "a")
		addSub(t, qs, "b", "a")
		addSub(t, qs, "c", "c")
		freed := func(want uint64, what string) {
			t.Helper()
			deadline := time.Now().Add(10 * time.Second)
			for qs.FreedBytes() != want {
				if time.Now().After(deadline) {
					t.Fatalf("FreedBytes = %d %s, want %d", qs.FreedBytes(), what, want)
				}
				time.Sleep(time.Millisecond)
			}
		}
		ack := func(id string, seq uint64) {
			t.Helper()
			if err := qs.Ack(id, seq); err != nil {
				t.Fatal(err)
			}
		}
		// Delivered in the flow: deleted, not counted.
		for range 10 {
			publish(t, qs, m)
		}
		ack("a", 10)
		ack("b", 10)
		waitFor(t, func() bool { return len(logPositions(t, store)) == 0 })
		if got := qs.FreedBytes(); got != 0 {
			t.Fatalf("FreedBytes = %d after publications delivered in the flow, want 0", got)
		}
		// Four queued when the tables took everything, three after.
		for range 4 {
			publish(t, qs, m)
		}
		qs.Flushed(qs.LogMark())
		for range 3 {
			publish(t, qs, m)
		}
		ack("a", 17)
		if got := qs.FreedBytes(); got != 0 {
			t.Fatalf("FreedBytes = %d with the entries still needed by another subscription, want 0", got)
		}
		ack("b", 17)
		freed(4*one, "after the flushed entries were delivered")
		// A removal counts what it deletes, flushed or not; not what
		// another subscription still needs.
		for range 5 {
			publish(t, qs, msg("c", "0123456789"))
		}
		publish(t, qs, m, m)
		if _, err := qs.RemoveSubscription(ctx, "c"); err != nil {
			t.Fatal(err)
		}
		if got, want := qs.FreedBytes(), 9*one; got != want {
			t.Fatalf("FreedBytes = %d after a queue of 5 was removed, want %d", got, want)
		}
		if _, err := qs.RemoveSubscription(ctx, "a"); err != nil {
			t.Fatal(err)
		}
		if got, want := qs.FreedBytes(), 9*one; got != want {
			t.Fatalf("FreedBytes = %d after removing a queue whose entries another still needs, want %d", got, want)
		}
		if _, err := qs.RemoveSubscription(ctx, "b"); err != nil {
			t.Fatal(err)
		}
		if got, want := qs.FreedBytes(), 11*one; got != want {
			t.Fatalf("FreedBytes = %d after removing the last one needing 2 entries, want %d", got, want)
		}
		if err := qs.Close(); err != nil {
			t.Fatal(err)
		}

		// An entry nobody needs, left in the log, is deleted at open.
		if err := store.Put(ctx, ds.RawKey(string(appendLogKey(nil, 100))), val); err != nil {
			t.Fatal(err)
		}
		qs = openQueues(t, store, QueueOptions{})
		if got := qs.FreedBytes(); got != one {
			t.Fatalf("FreedBytes = %d after open deleted an orphan entry, want %d", got, one)
		}
		wantPositions(t, store, nil)
	})
}

// A publication into a queue at its bound under drop_oldest tells its
// caller how many undelivered entries it pushed out, as the dropped
// counter counts them: older publications, and its own first ones when
// a call carries more than the bound. It reported them all as queued.
func TestPublishOutcomeCountsDrops(t *testing.T) {
	backends(t, func(t *testing.T, store ds.Batching) {
		ctx := context.Background()
		qs := openQueues(t, store, QueueOptions{Bound: 3, Policy: PolicyDropOldest})
		addSub(t, qs, "s", "a.*")
		addSub(t, qs, "t", "a.x")
		pub := func(want Published, msgs ...Message) {
			t.Helper()
			got, err := qs.PublishOutcome(ctx, msgs, nil)
			if err != nil || got != want {
				t.Fatalf("PublishOutcome(%d messages) = %+v, %v; want %+v", len(msgs), got, err, want)
			}
		}
		pub(Published{Queued: 2}, msg("a.y", "1"), msg("a.y", "2"))
		pub(Published{Queued: 2, Dropped: 1}, msg("a.y", "3"), msg("a.y", "4"))
		// Five into a full queue of three: 2..4 and the call's own 5 and 6.
		pub(Published{Queued: 5, Dropped: 5}, msg("a.y", "5"), msg("a.y", "6"), msg("a.y", "7"), msg("a.y", "8"), msg("a.y", "9"))
		wantItems(t, readAll(t, qs, "s", 0), "7:a.y:7", "8:a.y:8", "9:a.y:9")
		// Fan-out: entries of both queues; t has room for two more.
		pub(Published{Queued: 4, Dropped: 2}, msg("a.x", "10"), msg("a.x", "11"))
		// Sent ones are delivered, not dropped (nor counted here): of 9
		// and 10, only 10.
		qs.MarkSent("s", 9)
		pub(Published{Queued: 2, Dropped: 1}, msg("a.y", "12"), msg("a.y", "13"))
		if got, want := qs.Totals().Dropped, uint64(1+5+2+1); got != want {
			t.Fatalf("Totals().Dropped = %d, want %d: the calls said otherwise", got, want)
		}

		// Concurrent calls share rounds: each is told what its own
		// publications pushed out, and together what was dropped.
		before := qs.Totals().Dropped
		var told atomic.Uint64
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				for k := range 50 {
					batch := []Message{msg("a.y", "x")}
					if (g+k)%3 == 0 {
						batch = append(batch, msg("a.y", "y"), msg("a.y", "z"), msg("a.y", "w"), msg("a.y", "v"))
					}
					o, err := qs.PublishOutcome(ctx, batch, nil)
					if err != nil {
						t.Error(err)
						return
					}
					told.Add(o.Dropped)
				}
			})
		}
		wg.Wait()
		if got, want := told.Load(), qs.Totals().Dropped-before; got != want {
			t.Fatalf("concurrent calls were told of %d drops, the queues dropped %d", got, want)
		}

		// Under reject nothing is dropped.
		qr := openQueues(t, datastore.NewMemory().Batching(), QueueOptions{Bound: 3})
		addSub(t, qr, "s", "a.y")
		if o, err := qr.PublishOutcome(ctx, []Message{msg("a.y", "1"), msg("a.y", "2")}, nil); err != nil || o != (Published{Queued: 2}) {
			t.Fatalf("PublishOutcome under reject = %+v, %v", o, err)
		}
	})
}
