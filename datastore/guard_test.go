package datastore

import (
	"context"
	"errors"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
)

// Every operation on a closed pebble DB returns ErrClosed: pebble itself
// panics ("pebble: closed"), which took down a program whose in-process
// receiver returned after Node.Close. Batches made before Close fail at
// Commit the same way.
func TestClosedDBRefusesWithoutPanic(t *testing.T) {
	ctx := context.Background()
	db, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := db.Batching()
	k := ds.NewKey("/x/1")
	if err := b.Put(ctx, k, []byte("1")); err != nil {
		t.Fatal(err)
	}
	early, err := b.Batch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sized, err := b.(SizedBatcher).SizedBatch(ctx, 64)
	if err != nil {
		t.Fatal(err)
	}
	_ = early.Put(ctx, k, []byte("2"))
	_ = sized.Put(ctx, k, []byte("3"))
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	for name, op := range map[string]func() error{
		"Get":    func() error { _, err := b.Get(ctx, k); return err },
		"Has":    func() error { _, err := b.Has(ctx, k); return err },
		"Size":   func() error { _, err := b.GetSize(ctx, k); return err },
		"Put":    func() error { return b.Put(ctx, k, []byte("x")) },
		"Delete": func() error { return b.Delete(ctx, k) },
		"Sync":   func() error { return b.Sync(ctx, k) },
		"Query":  func() error { _, err := b.Query(ctx, query.Query{Prefix: "/x"}); return err },
		"Query with a limit": func() error {
			_, err := b.Query(ctx, query.Query{Prefix: "/x", Limit: 1})
			return err
		},
		"Batch":       func() error { _, err := b.Batch(ctx); return err },
		"SizedBatch":  func() error { _, err := b.(SizedBatcher).SizedBatch(ctx, 64); return err },
		"early Batch": func() error { return early.Commit(ctx) },
		"early SizedBatch": func() error {
			return sized.Commit(ctx)
		},
		"GetSorted": func() error {
			return b.(SortedGetter).GetSorted(ctx, [][]byte{k.Bytes()}, func(int, []byte, error) error { return nil })
		},
		"Scan": func() error {
			return b.(Scanner).Scan(ctx, []byte("/x"), []byte("/y"), func(_, _ []byte) error { return nil })
		},
		"Store.Scan": func() error {
			return NewStore[int](b, "/x").Scan(ctx, "", func(string, func() (int, error)) (bool, error) { return true, nil })
		},
	} {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("%s after Close panicked: %v", name, r)
				}
			}()
			if err := op(); !errors.Is(err, ErrClosed) {
				t.Errorf("%s after Close: %v, want ErrClosed", name, err)
			}
		}()
	}
}

// Close waits for an operation in progress (here a scan whose callback is
// slow) instead of closing pebble under it; what starts meanwhile is
// refused.
func TestCloseWaitsForOperationInProgress(t *testing.T) {
	ctx := context.Background()
	db, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := db.Batching()
	if err := b.Put(ctx, ds.NewKey("/x/1"), []byte("1")); err != nil {
		t.Fatal(err)
	}
	inScan, release := make(chan struct{}), make(chan struct{})
	scanned := make(chan error, 1)
	go func() {
		scanned <- b.(Scanner).Scan(ctx, []byte("/x"), []byte("/y"), func(_, _ []byte) error {
			close(inScan)
			<-release
			return nil
		})
	}()
	<-inScan
	closed := make(chan error, 1)
	go func() { closed <- db.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a scan was in progress", err)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := b.Get(ctx, ds.NewKey("/x/1")); !errors.Is(err, ErrClosed) {
		t.Errorf("Get while closing: %v, want ErrClosed", err)
	}
	close(release)
	if err := <-scanned; err != nil {
		t.Errorf("the scan in progress: %v", err)
	}
	if err := <-closed; err != nil {
		t.Errorf("Close: %v", err)
	}
}
