package datastore

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ownerFile is the file, beside pebble's LOCK, in which the process that
// has the database open says who it is (Owner): the lock itself tells
// another process only that the database is taken, not by whom. It is
// written once the lock is held and removed before the lock is released,
// and it is read only when the lock is found held, so it describes the
// holder (a file left by a killed process is overwritten by the next one
// to open the database, and a record whose process is gone is not
// believed).
const ownerFile = "LOCK.owner"

// maxOwnerFile bounds what is read of an owner file.
const maxOwnerFile = 4 << 10

// Owner is what the process that has a database open recorded about
// itself.
type Owner struct {
	PID int `json:"pid"`
	// Start is the process's start time (clock ticks since boot, from
	// /proc/<pid>/stat): it tells the holder apart from a later process
	// that got the same pid.
	Start uint64 `json:"start,omitempty"`
	// Kind and Command are what the holder passed to WithOwner: what
	// kind of process it is ("service", "offline command") and the
	// command it runs ("coattail peer list"). Empty when it did not say.
	Kind    string `json:"kind,omitempty"`
	Command string `json:"command,omitempty"`
}

// String describes the owner for a message: `offline command "coattail
// peer list" (pid 123)`, or `pid 123` when it did not say what it is.
func (o Owner) String() string {
	var b strings.Builder
	if o.Kind != "" {
		b.WriteString(o.Kind)
		b.WriteByte(' ')
	}
	if o.Command != "" {
		fmt.Fprintf(&b, "%q ", o.Command)
	}
	if b.Len() == 0 {
		return "pid " + strconv.Itoa(o.PID)
	}
	return b.String() + "(pid " + strconv.Itoa(o.PID) + ")"
}

// WithOwner records, for as long as the database is open, what kind of
// process has it open and which command it runs, so that another process
// that finds it taken can say by what (LockedError.Owner). Open records
// the pid whether or not this option is given.
func WithOwner(kind, command string) Option {
	return func(o *options) { o.ownerKind, o.ownerCommand = kind, command }
}

// LockedError is the error Open returns when the database is already open
// in another process (or in this one); errors.Is(err, ErrLocked) holds.
type LockedError struct {
	Dir string
	// Owner is what the holder recorded about itself, or nil when it
	// cannot be known: the holder recorded nothing (it is taking the
	// database over at this moment, or is an older version), or the
	// record's process is gone.
	Owner *Owner
}

func (e *LockedError) Error() string {
	switch {
	case e.Owner == nil:
		return fmt.Sprintf("%v: %s is already open in another process", ErrLocked, e.Dir)
	case e.Owner.PID == os.Getpid():
		return fmt.Sprintf("%v: %s is already open in this process", ErrLocked, e.Dir)
	default:
		return fmt.Sprintf("%v: %s is open in %s", ErrLocked, e.Dir, e.Owner)
	}
}

func (e *LockedError) Unwrap() error { return ErrLocked }

// writeOwner records this process as the holder of the database in dir
// (whose lock it holds). It is best effort: without the file, a process
// that finds the database taken cannot say by whom, nothing more.
func writeOwner(dir string, o options) {
	rec := Owner{PID: os.Getpid(), Kind: o.ownerKind, Command: o.ownerCommand}
	rec.Start, _ = ProcessStart(rec.PID)
	b, err := json.Marshal(rec)
	if err != nil {
		return
	}
	f, err := os.OpenFile(filepath.Join(dir, ownerFile), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return
	}
	// A file copied from elsewhere keeps its mode: owner only, as the
	// rest of the directory.
	_ = f.Chmod(0o600)
	_, _ = f.Write(append(b, '\n'))
	_ = f.Close()
}

// removeOwner removes the owner record of the database in dir; it is
// called while the lock is still held, so the record removed is ours.
func removeOwner(dir string) {
	_ = os.Remove(filepath.Join(dir, ownerFile))
}

// readOwner returns the owner recorded in dir if its process is alive and
// is the one that recorded it, else nil.
func readOwner(dir string) *Owner {
	f, err := os.OpenFile(filepath.Join(dir, ownerFile), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxOwnerFile))
	if err != nil {
		return nil
	}
	var o Owner
	if json.Unmarshal(b, &o) != nil || o.PID <= 0 {
		return nil
	}
	if err := syscall.Kill(o.PID, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return nil
	}
	if o.Start != 0 {
		if start, ok := ProcessStart(o.PID); ok && start != o.Start {
			return nil // the pid is another process's now
		}
	}
	return &o
}

// ProcessStart returns the start time of process pid in clock ticks
// since boot (field 22 of /proc/<pid>/stat; the fields after the command
// name, which may hold spaces and parentheses, start after its last ')');
// ok is false if it cannot be read. With the pid it names a process
// across pid reuse: the owner record here, and the node's service
// registrations.
func ProcessStart(pid int) (start uint64, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	s := string(b)
	k := strings.LastIndexByte(s, ')')
	if k < 0 {
		return 0, false
	}
	f := strings.Fields(s[k+1:])
	if len(f) < 20 {
		return 0, false
	}
	v, err := strconv.ParseUint(f[19], 10, 64)
	return v, err == nil
}
