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
	holderService  = "service"
	holderOffline  = "offline command"
	holderEmbedded = "embedding program"
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
	case o.Kind == holderEmbedded:
		return fmt.Sprintf("the program %q (pid %d), which embeds this instance (package node); commands reach it only if it serves the control socket (Node.ServeControl)", o.Command, o.PID)
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

// serviceReady reports whether process pid is a service that has been
// ready: it registered (after it began to listen on its control socket),
// and its registration's start time is the process's.
func serviceReady(pid int) bool {
	r, ok := registrationOf(pid)
	return ok && r.registered()
}

// unansweredService says what is known of the service pid of l, which
// holds the instance (its pid file, or its data) but did not answer on its
// control socket, and what to do about it: a phrase that follows "the
// service" or "it".
func unansweredService(l Layout, pid int) string {
	switch {
	case socketListening(l.Socket()):
		return fmt.Sprintf("does not answer on its control socket (stopped or stuck?); resume it (kill -CONT %d) or end it (kill %d)", pid, pid)
	case serviceReady(pid):
		return fmt.Sprintf("runs, but its control socket %s is gone; stop it with 'coattail service stop' (or kill %d) and start it again", l.Socket(), pid)
	default:
		return fmt.Sprintf("is starting (it does not listen on %s yet); retry in a moment, or stop it with 'coattail service stop' (or kill %d)", l.Socket(), pid)
	}
}

// SocketGone reports whether nothing listens on the control socket of the
// instance in dir: its file is missing, or no process listens on it.
func SocketGone(dir string) bool {
	return !socketListening(Layout{Dir: dir}.Socket())
}
