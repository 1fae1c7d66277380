package datastore

import (
	"context"
	"sync"
	"time"

	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
)

// opGuard lets the operations on an open pebble database finish before
// Close closes it, and refuses those that come after with ErrClosed:
// pebble panics ("pebble: closed") on any use of a closed database, and a
// late user — an in-process receiver of an embedding program that returns
// after Node.Close, a method called on a closed node — crashed the whole
// program with it.
type opGuard struct {
	mu     sync.Mutex
	n      int           // operations in progress
	closed bool          // no new operation starts
	idle   chan struct{} // closed when n drops to 0 after closed is set
}

// enter starts an operation; false once the database is closing.
func (g *opGuard) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.n++
	return true
}

// exit ends an operation begun with enter.
func (g *opGuard) exit() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.n--
	if g.n == 0 && g.idle != nil {
		close(g.idle)
		g.idle = nil
	}
}

// shut refuses new operations and waits up to wait for those in progress
// to end; it reports whether they did. One that does not (a write stalled
// on a full disk) may still meet pebble's panic when the database closes
// under it: that is the price of not waiting for ever.
func (g *opGuard) shut(wait time.Duration) bool {
	g.mu.Lock()
	g.closed = true
	if g.n == 0 {
		g.mu.Unlock()
		return true
	}
	if g.idle == nil {
		g.idle = make(chan struct{})
	}
	idle := g.idle
	g.mu.Unlock()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-idle:
		return true
	case <-t.C:
		return false
	}
}

// closeWait bounds how long Close waits for operations in progress.
const closeWait = 10 * time.Second

// The datastore's operations, each inside the guard.

func (s pebbleBatching) Get(ctx context.Context, key ds.Key) ([]byte, error) {
	if !s.g.enter() {
		return nil, ErrClosed
	}
	defer s.g.exit()
	return s.Datastore.Get(ctx, key)
}

func (s pebbleBatching) Has(ctx context.Context, key ds.Key) (bool, error) {
	if !s.g.enter() {
		return false, ErrClosed
	}
	defer s.g.exit()
	return s.Datastore.Has(ctx, key)
}

func (s pebbleBatching) GetSize(ctx context.Context, key ds.Key) (int, error) {
	if !s.g.enter() {
		return -1, ErrClosed
	}
	defer s.g.exit()
	return s.Datastore.GetSize(ctx, key)
}

func (s pebbleBatching) Put(ctx context.Context, key ds.Key, value []byte) error {
	if !s.g.enter() {
		return ErrClosed
	}
	defer s.g.exit()
	return s.Datastore.Put(ctx, key, value)
}

func (s pebbleBatching) Delete(ctx context.Context, key ds.Key) error {
	if !s.g.enter() {
		return ErrClosed
	}
	defer s.g.exit()
	return s.Datastore.Delete(ctx, key)
}

func (s pebbleBatching) Sync(ctx context.Context, prefix ds.Key) error {
	if !s.g.enter() {
		return ErrClosed
	}
	defer s.g.exit()
	return s.Datastore.Sync(ctx, prefix)
}

// Batch is go-ds-pebble's batch, committed inside the guard.
func (s pebbleBatching) Batch(ctx context.Context) (ds.Batch, error) {
	if !s.g.enter() {
		return nil, ErrClosed
	}
	defer s.g.exit()
	b, err := s.Datastore.Batch(ctx)
	if err != nil {
		return nil, err
	}
	return guardedBatch{Batch: b, g: s.g}, nil
}

type guardedBatch struct {
	ds.Batch
	g *opGuard
}

func (b guardedBatch) Commit(ctx context.Context) error {
	if !b.g.enter() {
		return ErrClosed
	}
	defer b.g.exit()
	return b.Batch.Commit(ctx)
}

// query runs a query that go-ds-pebble answers itself (see Query) and
// reads all of it inside the guard: its results read pebble as they are
// iterated.
func (s pebbleBatching) query(ctx context.Context, q query.Query) (query.Results, error) {
	if !s.g.enter() {
		return nil, ErrClosed
	}
	defer s.g.exit()
	res, err := s.Datastore.Query(ctx, q)
	if err != nil {
		return nil, err
	}
	entries, err := res.Rest()
	if err != nil {
		return nil, err
	}
	return query.ResultsWithEntries(q, entries), nil
}
