// Package inflight owns Tracker, the count of work in progress (requests,
// stream handlers, handler calls) that whoever closes what that work uses
// must refuse new work for, and wait for, with a bound.
package inflight

import (
	"sync"
	"time"
)

// Tracker counts work in progress. The zero value is ready to use.
type Tracker struct {
	mu     sync.Mutex
	n      int
	shut   bool
	idle   chan struct{} // closed when n drops to 0; nil while n is 0
	onIdle func()        // called once when n drops to 0
}

// Begin admits one piece of work, to be ended with End; false once Shut.
func (t *Tracker) Begin() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.shut {
		return false
	}
	if t.n == 0 {
		t.idle = make(chan struct{})
	}
	t.n++
	return true
}

// End ends one piece of work admitted by Begin.
func (t *Tracker) End() {
	t.mu.Lock()
	t.n--
	var fn func()
	if t.n == 0 {
		close(t.idle)
		t.idle = nil
		fn, t.onIdle = t.onIdle, nil
	}
	t.mu.Unlock()
	if fn != nil {
		fn()
	}
}

// Shut admits no more work.
func (t *Tracker) Shut() {
	t.mu.Lock()
	t.shut = true
	t.mu.Unlock()
}

// Count is the work in progress.
func (t *Tracker) Count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n
}

// Wait waits, up to timeout, until no work is in progress, and reports
// whether none is.
func (t *Tracker) Wait(timeout time.Duration) bool {
	t.mu.Lock()
	idle := t.idle
	t.mu.Unlock()
	if idle == nil {
		return true
	}
	tm := time.NewTimer(timeout)
	defer tm.Stop()
	select {
	case <-idle:
		return true
	case <-tm.C:
		return false
	}
}

// WhenIdle arranges for fn to be called when the last piece of work in
// progress ends and reports true; with none in progress it reports false
// and fn is the caller's to call.
func (t *Tracker) WhenIdle(fn func()) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == 0 {
		return false
	}
	t.onIdle = fn
	return true
}
