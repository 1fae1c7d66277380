package datastore

import (
	"testing"

	dstest "github.com/ipfs/go-datastore/test"
)

// The conformance suite is what makes the two backends interchangeable:
// unit tests of other packages run on NewMemory and production on Open.
func TestConformancePebble(t *testing.T) {
	db, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Error(err)
		}
	})
	dstest.SubtestAll(t, db.Batching())
}

func TestConformanceMemory(t *testing.T) {
	db := NewMemory()
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Error(err)
		}
	})
	dstest.SubtestAll(t, db.Batching())
}
