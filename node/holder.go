package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/coattail/coattail/datastore"
)

// Kinds of process that record themselves as the holder of an instance's
// datastore (datastore.WithOwner).
const (
	holderService = "service"
	holderOffline = "offline command"
)

// command is the CLI command this process runs, recorded beside the
// datastore lock while an offline node holds an instance's data.
var command = "coattail"

// SetCommand names the CLI command this process runs ("coattail peer
// list"). While it holds an instance's data without the service, another
// process that finds the data in use names it (and its pid) instead of
// guessing.
func SetCommand(path string) { command = path }

// dataInUseError is what a process that waited for an instance's data in
// vain returns: a message that says who holds it and what to do, wrapping
// the datastore's *LockedError (and so datastore.ErrLocked).
type dataInUseError struct {
	msg string
	err error
}

func (e *dataInUseError) Error() string { return e.msg }
func (e *dataInUseError) Unwrap() error { return e.err }

// holderText describes the process that holds l's data, from what it
// recorded about itself (nil: unknown).
func holderText(o *datastore.Owner) string {
	switch {
	case o == nil:
		return "another process (it does not say which)"
	case o.Kind == holderOffline && o.Command != "":
		return fmt.Sprintf("the offline command %q (pid %d)", o.Command, o.PID)
	case o.Kind == holderOffline:
		return fmt.Sprintf("an offline coattail command (pid %d)", o.PID)
	case o.Kind == holderService:
		return fmt.Sprintf("the coattail service pid %d", o.PID)
	default:
		return o.String()
	}
}

// ownerOf returns the holder a datastore.Open error names, if any.
func ownerOf(err error) *datastore.Owner {
	var le *datastore.LockedError
	if errors.As(err, &le) {
		return le.Owner
	}
	return nil
}

// How long a starting service waits for the instance's data while another
// process holds it. An offline command ends by itself, and an offline
// perform holds the data for as long as its action runs, so it is waited
// for longer than a holder that does not say what it is. A wait longer
// than dataWaitNotice is announced (ServiceOptions.Notice). Variables
// only so that tests can shorten them.
var (
	dataWaitOffline = 30 * time.Second
	dataWaitOther   = 10 * time.Second
	dataWaitNotice  = time.Second
)

// openDBRetry opens the datastore of a starting service, waiting while
// another process holds it: an offline CLI command, or a service of the
// instance that is still stopping. It says once that it waits, and whom
// for, when that takes longer than dataWaitNotice, and gives up, naming
// the holder, after dataWaitOffline (an offline command) or dataWaitOther.
func openDBRetry(ctx context.Context, l Layout, notice func(string)) (*datastore.DB, error) {
	start := time.Now()
	noticed := false
	for {
		db, err := datastore.Open(l.Data(), datastore.WithOwner(holderService, ""))
		if err == nil || !errors.Is(err, datastore.ErrLocked) {
			return db, err
		}
		owner := ownerOf(err)
		limit := dataWaitOther
		if owner != nil && owner.Kind == holderOffline {
			limit = dataWaitOffline
		}
		waited := time.Since(start)
		if waited >= limit {
			return nil, &dataInUseError{err: err, msg: fmt.Sprintf(
				"node: the instance's data (%s) is still in use by %s after %s; wait for it to finish, then start the service again",
				l.Data(), holderText(owner), limit.Round(time.Second))}
		}
		if !noticed && waited >= dataWaitNotice && notice != nil {
			noticed = true
			notice(fmt.Sprintf("Waiting for %s to finish with the instance's data (at most %s)...",
				holderText(owner), (limit - waited).Round(time.Second)))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
