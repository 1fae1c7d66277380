package datastore

import (
	"errors"
	"slices"
	"strings"
	"testing"

	ds "github.com/ipfs/go-datastore"
)

type peerRecord struct {
	ID    string   `json:"id"`
	Addrs []string `json:"addrs"`
	Note  string   `json:"note,omitempty"`
}

// backends runs fn against both backends so Store behaves identically on
// each.
func backends(t *testing.T, fn func(t *testing.T, db *DB)) {
	t.Run("memory", func(t *testing.T) {
		db := NewMemory()
		t.Cleanup(func() { _ = db.Close() })
		fn(t, db)
	})
	t.Run("pebble", func(t *testing.T) {
		db, err := Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = db.Close() })
		fn(t, db)
	})
}

func TestStoreRoundTrip(t *testing.T) {
	backends(t, func(t *testing.T, db *DB) {
		ctx := t.Context()
		s := NewStore[peerRecord](db.Batching(), "/peers")
		want := peerRecord{ID: "12D3KooW", Addrs: []string{"/ip4/127.0.0.1/tcp/4001"}, Note: "lab"}

		if _, err := s.Get(ctx, "12D3KooW"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get before Put = %v, want ErrNotFound", err)
		}
		if ok, err := s.Has(ctx, "12D3KooW"); err != nil || ok {
			t.Fatalf("Has before Put = %v, %v; want false, nil", ok, err)
		}
		if err := s.Put(ctx, "12D3KooW", want); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(ctx, "12D3KooW")
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != want.ID || got.Note != want.Note || !slices.Equal(got.Addrs, want.Addrs) {
			t.Fatalf("Get = %+v, want %+v", got, want)
		}
		if ok, err := s.Has(ctx, "12D3KooW"); err != nil || !ok {
			t.Fatalf("Has after Put = %v, %v; want true, nil", ok, err)
		}
		// The value is stored as JSON at the documented key.
		raw, err := db.Batching().Get(ctx, ds.NewKey("/peers/12D3KooW"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(raw), `"note":"lab"`) {
			t.Fatalf("stored value %s is not the JSON encoding", raw)
		}

		want.Note = "replaced"
		if err := s.Put(ctx, "12D3KooW", want); err != nil {
			t.Fatal(err)
		}
		if got, err := s.Get(ctx, "12D3KooW"); err != nil || got.Note != "replaced" {
			t.Fatalf("Get after overwrite = %+v, %v", got, err)
		}

		if err := s.Delete(ctx, "12D3KooW"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(ctx, "12D3KooW"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get after Delete = %v, want ErrNotFound", err)
		}
		if err := s.Delete(ctx, "12D3KooW"); err != nil {
			t.Fatalf("deleting a missing id = %v, want nil", err)
		}
	})
}

func TestStoreListSortedAndScoped(t *testing.T) {
	backends(t, func(t *testing.T, db *DB) {
		ctx := t.Context()
		b := db.Batching()
		peers := NewStore[peerRecord](b, "peers") // cleaned to /peers
		other := NewStore[peerRecord](b, "/peersx")
		for _, id := range []string{"c", "a", "b", "A", "a-2"} {
			if err := peers.Put(ctx, id, peerRecord{ID: id}); err != nil {
				t.Fatal(err)
			}
		}
		if err := other.Put(ctx, "z", peerRecord{ID: "z"}); err != nil {
			t.Fatal(err)
		}
		// A nested key under the namespace is not a record of this store.
		if err := b.Put(ctx, ds.NewKey("/peers/a/nested"), []byte("not json")); err != nil {
			t.Fatal(err)
		}
		list, err := peers.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, p := range list {
			ids = append(ids, p.ID)
		}
		if want := []string{"A", "a", "a-2", "b", "c"}; !slices.Equal(ids, want) {
			t.Fatalf("List ids = %v, want %v", ids, want)
		}
		entries, err := peers.Entries(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 5 || entries[0].ID != "A" || entries[0].Value.ID != "A" {
			t.Fatalf("Entries = %+v", entries)
		}
		empty := NewStore[peerRecord](b, "/nothing")
		if l, err := empty.List(ctx); err != nil || len(l) != 0 {
			t.Fatalf("List of empty namespace = %v, %v", l, err)
		}
	})
}

func TestStoreInvalidIDs(t *testing.T) {
	ctx := t.Context()
	db := NewMemory()
	s := NewStore[int](db.Batching(), "/n")
	for _, id := range []string{"", "a/b", "/", ".", "..", strings.Repeat("x", MaxIDLen+1)} {
		if err := s.Put(ctx, id, 1); !errors.Is(err, ErrInvalidID) {
			t.Errorf("Put(%q) = %v, want ErrInvalidID", id, err)
		}
		if _, err := s.Get(ctx, id); !errors.Is(err, ErrInvalidID) {
			t.Errorf("Get(%q) = %v, want ErrInvalidID", id, err)
		}
		if err := s.Delete(ctx, id); !errors.Is(err, ErrInvalidID) {
			t.Errorf("Delete(%q) = %v, want ErrInvalidID", id, err)
		}
		if _, err := s.Has(ctx, id); !errors.Is(err, ErrInvalidID) {
			t.Errorf("Has(%q) = %v, want ErrInvalidID", id, err)
		}
	}
	if err := s.Put(ctx, "a/b", 1); err == nil || !strings.Contains(err.Error(), "contains '/'") {
		t.Errorf("error for a/b should say what is wrong, got %v", err)
	}
	// Nothing was written outside the namespace by the rejected ids.
	if ok, _ := db.Batching().Has(ctx, ds.NewKey("/1")); ok {
		t.Error("a rejected id escaped the namespace")
	}
}

func TestStoreCorruptRecord(t *testing.T) {
	ctx := t.Context()
	db := NewMemory()
	s := NewStore[peerRecord](db.Batching(), "/peers")
	if err := db.Batching().Put(ctx, ds.NewKey("/peers/bad"), []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "bad"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Get of corrupt record = %v, want ErrCorrupt", err)
	}
	if _, err := s.List(ctx); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("List with corrupt record = %v, want ErrCorrupt", err)
	}
}

func TestStoreBatch(t *testing.T) {
	backends(t, func(t *testing.T, db *DB) {
		ctx := t.Context()
		s := NewStore[string](db.Batching(), "/subs/out")
		if err := s.Put(ctx, "old", "x"); err != nil {
			t.Fatal(err)
		}
		b, err := db.Batching().Batch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.PutTo(ctx, b, "new", "y"); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteFrom(ctx, b, "old"); err != nil {
			t.Fatal(err)
		}
		// Nothing is visible before commit.
		if ok, err := s.Has(ctx, "new"); err != nil || ok {
			t.Fatalf("batched Put visible before Commit: %v, %v", ok, err)
		}
		if err := b.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		got, err := s.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, []string{"y"}) {
			t.Fatalf("List after batch = %v, want [y]", got)
		}
	})
}

func TestStoreKey(t *testing.T) {
	s := NewStore[int](NewMemory().Batching(), "/queue/sub-1/")
	k, err := s.Key("00000000000000000001")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := k.String(), "/queue/sub-1/00000000000000000001"; got != want {
		t.Fatalf("Key = %s, want %s", got, want)
	}
	if got := s.Namespace().String(); got != "/queue/sub-1" {
		t.Fatalf("Namespace = %s", got)
	}
}
