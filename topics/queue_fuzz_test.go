package topics

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/coattail/coattail/datastore"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
)

// FuzzQueueStoredRecords corrupts what Queues stored — the subscription
// records, the queue state and the messages, whatever their codec — and
// reopens the queues over it, as a restart after a disk error or a hand
// edit would. Opening and then using the queues (status, read, publish,
// ack) must either work or fail with ErrCorruptQueue; it must never panic,
// return messages out of order or claim an ack beyond what was queued.
//
// It works through the exported API and the raw datastore only, so it
// keeps testing the stored form whatever encoding the queues adopt.
func FuzzQueueStoredRecords(f *testing.F) {
	f.Add(uint8(0), uint8(0), []byte("{not json"), "")
	f.Add(uint8(1), uint8(0), []byte{}, "")
	f.Add(uint8(2), uint8(1), []byte{1, 2, 3}, "")
	f.Add(uint8(3), uint8(2), []byte(nil), "")
	f.Add(uint8(4), uint8(0), []byte{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1}, "")
	f.Add(uint8(5), uint8(0), []byte{1}, "00000000000000000009")
	f.Add(uint8(6), uint8(1), []byte{1, 1, 1, 1}, "meta")
	f.Add(uint8(7), uint8(0), []byte(`{"id":"s1","pattern":"a b"}`), "x")
	// A lost entry naming its subscriptions (a cut made while running),
	// whole and with bytes after them.
	f.Add(uint8(0), uint8(0), []byte("\x00lost\x01\x01\x02s1"), "")
	f.Add(uint8(1), uint8(0), []byte("\x00lost\x01\x02\x02s1\x02s2\xff"), "")
	f.Fuzz(func(t *testing.T, keySel, mode uint8, val []byte, extra string) {
		ctx := context.Background()
		store := datastore.NewMemory().Batching()
		qs, err := OpenQueues(ctx, store, QueueOptions{Bound: 8})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []Subscription{
			{ID: "s1", Subscriber: "p1", Pattern: "a.>", TokenID: "t1", Receiver: "r"},
			{ID: "s2", Subscriber: "p2", Pattern: "a.b", TokenID: "t2", Receiver: "r"},
		} {
			if err := qs.AddSubscription(ctx, s); err != nil {
				t.Fatal(err)
			}
		}
		msgs := []Message{{Subject: "a.b", Data: []byte(`1`)}, {Subject: "a.c", Data: []byte(`2`)}, {Subject: "a.b", Data: []byte(`3`)}}
		if _, err := qs.Publish(ctx, msgs, nil); err != nil {
			t.Fatal(err)
		}
		if err := qs.Ack("s1", 1); err != nil {
			t.Fatal(err)
		}
		if err := qs.Close(); err != nil {
			t.Fatal(err)
		}

		keys := storedKeys(t, store)
		k := keys[int(keySel)%len(keys)]
		switch mode % 3 {
		case 0:
			if err := store.Put(ctx, k, val); err != nil {
				t.Fatal(err)
			}
		case 1:
			old, err := store.Get(ctx, k)
			if err != nil {
				t.Fatal(err)
			}
			if len(old) > 0 {
				if err := store.Put(ctx, k, old[:len(val)%len(old)]); err != nil {
					t.Fatal(err)
				}
			}
		case 2:
			if err := store.Delete(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
		if extra != "" {
			// A stray record next to the chosen one, for example a key a
			// newer or older version would write.
			if err := store.Put(ctx, k.Parent().ChildString(strings.ReplaceAll(extra, "/", "_")), val); err != nil {
				t.Fatal(err)
			}
		}

		qs, err = OpenQueues(ctx, store, QueueOptions{Bound: 8})
		if err != nil {
			if !errors.Is(err, ErrCorruptQueue) {
				t.Fatalf("OpenQueues after corrupting %s: unwrapped error: %v", k, err)
			}
			return
		}
		defer qs.Close()
		for _, st := range qs.Status() {
			if err := ValidatePattern(st.Pattern); err != nil {
				t.Fatalf("reopened queues hold subscription %q with pattern %q: %v", st.ID, st.Pattern, err)
			}
			if st.Acked >= st.NextSeq {
				t.Fatalf("%s after open: acked %d, next %d", st.ID, st.Acked, st.NextSeq)
			}
			items, err := qs.Read(st.ID, st.Acked, 16, 0)
			if err != nil {
				if !errors.Is(err, ErrCorruptQueue) {
					t.Fatalf("Read %s: unwrapped error: %v", st.ID, err)
				}
				continue
			}
			last := st.Acked
			for _, it := range items {
				if it.Seq <= last || it.Seq >= st.NextSeq {
					t.Fatalf("Read %s returned seq %d after %d (next %d)", st.ID, it.Seq, last, st.NextSeq)
				}
				last = it.Seq
			}
			if err := qs.Ack(st.ID, last); err != nil && !errors.Is(err, ErrCorruptQueue) && !errors.Is(err, ErrNoSubscription) {
				t.Fatalf("Ack %s %d: %v", st.ID, last, err)
			}
		}
		if _, err := qs.Publish(ctx, []Message{{Subject: "a.b", Data: []byte(`4`)}}, nil); err != nil &&
			!errors.Is(err, ErrQueueFull) && !errors.Is(err, ErrCorruptQueue) {
			t.Fatalf("Publish after reopening: %v", err)
		}
	})
}

// storedKeys lists every key in store, in order.
func storedKeys(t *testing.T, store ds.Datastore) []ds.Key {
	t.Helper()
	res, err := store.Query(context.Background(), query.Query{KeysOnly: true, Orders: []query.Order{query.OrderByKey{}}})
	if err != nil {
		t.Fatal(err)
	}
	es, err := res.Rest()
	if err != nil {
		t.Fatal(err)
	}
	keys := make([]ds.Key, len(es))
	for i, e := range es {
		keys[i] = ds.RawKey(e.Key)
	}
	if len(keys) == 0 {
		t.Fatal("the queues stored nothing")
	}
	return keys
}
