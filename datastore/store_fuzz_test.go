package datastore

import (
	"errors"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"
)

// fuzzRecord has the shapes of the records node and auth keep in typed
// stores (peers, subscriptions, dead letters): strings, lists, times,
// numbers, raw JSON.
type fuzzRecord struct {
	ID      string         `json:"id"`
	Addrs   []string       `json:"addrs"`
	Seq     uint64         `json:"seq"`
	At      time.Time      `json:"at"`
	Expires *time.Time     `json:"expires,omitempty"`
	Data    map[string]any `json:"data,omitempty"`
}

// FuzzStoreRecords: whatever bytes a stored record holds (a damaged disk, a
// record from another version), reading it never panics; a record that does
// not decode is ErrCorrupt from Get and from List, and a record that does
// decode round-trips through Put.
func FuzzStoreRecords(f *testing.F) {
	for _, s := range []string{
		`{"id":"a","addrs":["/ip4/127.0.0.1/tcp/1"],"seq":3,"at":"2026-11-27T00:00:00Z"}`,
		`{"id":"a","expires":"not a time"}`, `{"seq":-1}`, `{"addrs":"x"}`, `null`, `[]`, ``, "\xff", `{"data":{"k":[1,{"x":null}]}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		db := NewMemory()
		defer db.Close()
		ctx := t.Context()
		s := NewStore[fuzzRecord](db.Batching(), "/fuzz")
		if err := db.Batching().Put(ctx, ds.NewKey("/fuzz/rec"), raw); err != nil {
			t.Fatal(err)
		}
		v, err := s.Get(ctx, "rec")
		_, lerr := s.List(ctx)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Get of a damaged record: %v, want ErrCorrupt", err)
			}
			if !errors.Is(lerr, ErrCorrupt) {
				t.Fatalf("List with a damaged record: %v, want ErrCorrupt", lerr)
			}
			return
		}
		if lerr != nil {
			t.Fatalf("Get decoded the record but List failed: %v", lerr)
		}
		if err := s.Put(ctx, "rec", v); err != nil {
			t.Fatalf("re-storing a decoded record: %v", err)
		}
		if _, err := s.Get(ctx, "rec"); err != nil {
			t.Fatalf("a re-stored record does not decode: %v", err)
		}
	})
}
