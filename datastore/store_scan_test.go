package datastore

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	ds "github.com/ipfs/go-datastore"
)

// scanPage reads up to limit records after after with Scan, and whether
// more follow.
func scanPage(t *testing.T, s *Store[peerRecord], after string, limit int) ([]string, bool) {
	t.Helper()
	var ids []string
	more := false
	err := s.Scan(t.Context(), after, func(id string, get func() (peerRecord, error)) (bool, error) {
		if len(ids) == limit {
			more = true
			return false, nil
		}
		v, err := get()
		if err != nil {
			return false, err
		}
		if v.ID != id {
			return false, fmt.Errorf("record %s decoded as %q", id, v.ID)
		}
		ids = append(ids, id)
		return true, nil
	})
	if err != nil {
		t.Fatalf("Scan after %q: %v", after, err)
	}
	return ids, more
}

// Scan pages through a namespace in id order from any id, present or not,
// without the records of neighbouring namespaces or nested keys.
func TestStoreScanPages(t *testing.T) {
	backends(t, func(t *testing.T, db *DB) {
		ctx := t.Context()
		s := NewStore[peerRecord](db.Batching(), "/dl")
		var want []string
		for i := range 250 {
			id := fmt.Sprintf("sub%d.%020d", i%3, i)
			want = append(want, id)
			if err := s.Put(ctx, id, peerRecord{ID: id}); err != nil {
				t.Fatal(err)
			}
		}
		slices.Sort(want)
		// Neighbours: a namespace sharing the prefix, one sorting right
		// after it, and a key nested under a record.
		for _, k := range []string{"/dlx/a", "/dl0", "/dk/z", "/dl/sub1.00000000000000000001/nested"} {
			if err := db.Batching().Put(ctx, ds.NewKey(k), []byte(`{"id":"x"}`)); err != nil {
				t.Fatal(err)
			}
		}
		var got []string
		after := ""
		for pages := 0; ; pages++ {
			if pages > 3 {
				t.Fatal("more than 3 pages of 100 for 250 records")
			}
			ids, more := scanPage(t, s, after, 100)
			got = append(got, ids...)
			if !more {
				break
			}
			after = ids[len(ids)-1]
		}
		if !slices.Equal(got, want) {
			t.Fatalf("pages gave %d ids, want the %d in order", len(got), len(want))
		}
		// After an id that is not stored: from the next one on.
		if ids, _ := scanPage(t, s, "sub1.", 2); !slices.Equal(ids, want[84:86]) || ids[0] != "sub1.00000000000000000001" {
			t.Errorf("after a missing id: %v, want %v", ids, want[84:86])
		}
		if ids, more := scanPage(t, s, want[len(want)-1], 10); len(ids) != 0 || more {
			t.Errorf("after the last id: %v, %v", ids, more)
		}
		if err := s.Scan(ctx, "a/b", func(string, func() (peerRecord, error)) (bool, error) { return true, nil }); !errors.Is(err, ErrInvalidID) {
			t.Errorf("Scan after an invalid id: %v, want ErrInvalidID", err)
		}
		stop := errors.New("stop")
		if err := s.Scan(ctx, "", func(string, func() (peerRecord, error)) (bool, error) { return true, stop }); !errors.Is(err, stop) {
			t.Errorf("Scan with fn failing: %v", err)
		}
	})
}

func TestStoreScanCorrupt(t *testing.T) {
	backends(t, func(t *testing.T, db *DB) {
		ctx := t.Context()
		s := NewStore[peerRecord](db.Batching(), "/peers")
		if err := db.Batching().Put(ctx, ds.NewKey("/peers/a"), []byte("{")); err != nil {
			t.Fatal(err)
		}
		err := s.Scan(ctx, "", func(_ string, get func() (peerRecord, error)) (bool, error) {
			_, err := get()
			return err == nil, err
		})
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("Scan of a corrupt record: %v, want ErrCorrupt", err)
		}
	})
}

func TestPrefixEnd(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []byte
	}{{"/dl/", []byte("/dl0")}, {"/", []byte("0")}, {"a\xff", []byte("b")}, {"\xff\xff", nil}} {
		if got := prefixEnd(c.in); !slices.Equal(got, c.want) {
			t.Errorf("prefixEnd(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
