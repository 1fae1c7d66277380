package datastore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	dssync "github.com/ipfs/go-datastore/sync"
	pebbleds "github.com/ipfs/go-ds-pebble"
)

var (
	// ErrNotFound is returned when a requested record does not exist.
	ErrNotFound = errors.New("datastore: not found")
	// ErrLocked is returned by Open when another process (or another Open in
	// this process) has the database open.
	ErrLocked = errors.New("datastore: in use by another process")
	// ErrSchemaTooNew is returned by Open when the database was written by a
	// newer Coattail whose schema this build does not understand.
	ErrSchemaTooNew = errors.New("datastore: schema version too new")
	// ErrCorrupt is returned when a stored record or the schema version
	// cannot be decoded, and by Open for a database pebble finds damaged.
	// Errors of pebble's that report damaged data (a block whose checksum
	// does not match) do not wrap it: IsCorruption recognises both.
	ErrCorrupt = errors.New("datastore: corrupt record")
	// ErrInvalidID is returned when a record id is empty, contains '/' or is
	// otherwise unusable as a key segment.
	ErrInvalidID = errors.New("datastore: invalid id")
	// ErrClosed is returned by DB.Sync after Close.
	ErrClosed = errors.New("datastore: closed")
	// ErrNotDatastore is returned by Open for a directory that holds other
	// files but no database: Open does not create one among them.
	ErrNotDatastore = errors.New("datastore: directory holds no datastore")
)

// SchemaVersion is the on-disk schema this build reads and writes. Bump it
// with a migration when a stored format changes incompatibly.
const SchemaVersion = 1

// SchemaVersionKey holds SchemaVersion as a decimal string.
var SchemaVersionKey = ds.NewKey("/meta/schema-version")

// DefaultCacheSize is the pebble block cache size used by Open.
const DefaultCacheSize = 8 << 20

// MemTableSize is the size of each pebble memtable (see Open).
const MemTableSize = 64 << 20

// DB is an open datastore: either pebble on disk (Open) or a map in memory
// (NewMemory). It is safe for concurrent use.
type DB struct {
	batching ds.Batching
	guard    *opGuard            // of batching's operations; nil for the in-memory backend
	pebble   *pebbleds.Datastore // nil for the in-memory backend
	lock     *pebble.Lock        // directory lock, released after the database closes
	// dir and dirInfo are the database's directory as Open found it
	// (pebble only): Close does not flush into a directory that is gone.
	dir     string
	dirInfo os.FileInfo

	closeOnce sync.Once
	closeErr  error
	mu        sync.RWMutex // guards closed against Sync racing Close
	closed    bool
	// stop is cancelled as Close begins, so that a Reclaim in progress
	// (which holds mu) gives up instead of keeping Close waiting for a
	// compaction of the whole database.
	stop       context.Context
	cancelStop context.CancelFunc
	damage     *damageLog  // nil for the in-memory backend
	cutMu      *sync.Mutex // the Batching's (Reclaim's flush waits for a cut)
}

// CorruptionEvents is how many times the database met damaged data on
// disk (a read, or a compaction in the background, failing a checksum)
// since it was opened. A count that keeps growing while the instance runs
// is damage that background work keeps meeting (see damageLog).
func (d *DB) CorruptionEvents() uint64 {
	if d.damage == nil {
		return 0
	}
	return d.damage.events.Load()
}

// damageLog logs pebble's reports of damaged data and the errors of its
// background work. A compaction whose input is damaged is retried by
// pebble, in level 0 every few tens of milliseconds, each retry reporting
// the damage and the failed compaction again: logged each time, that was
// ~100 error lines a second, rotating every other line out of the log.
// Each file's first report (and the first background error) is logged at
// once, then at most one line a minute saying how many more there were.
//
// It also keeps the reports for DamageWatcher: each damaged block (or
// file, when pebble names no block) once until it is taken.
type damageLog struct {
	log    *slog.Logger
	events atomic.Uint64
	mu     sync.Mutex
	files  map[string]*damagedFile

	// pending are the reports not taken yet, at most maxPendingDamage,
	// each once (pendingKeys); notify receives when one is added.
	pending     []Damage
	pendingKeys map[string]bool
	notify      chan struct{}
}

// maxPendingDamage bounds the reports kept until they are taken (a
// compaction retrying over a block reports it again).
const maxPendingDamage = 64

// Damage is damaged data that pebble reported while the database was open:
// a read, or a compaction in the background, failing a checksum.
type Damage struct {
	File string // the damaged file
	Keys string // the key range pebble says is affected (the file's)
	Err  error  // pebble's error (IsCorruption)

	info pebble.DataCorruptionInfo
}

func (d Damage) String() string {
	return fmt.Sprintf("%s (keys %s): %v", d.File, d.Keys, d.Err)
}

// Block names the damaged block (or the file, when pebble names no
// block): every report of the same block has the same name.
func (d Damage) Block() string { return damageKey(&d.info) }

func damageKey(info *pebble.DataCorruptionInfo) string {
	if m := blockErr.FindString(fmt.Sprint(info.Details)); m != "" {
		return info.Path + " " + m
	}
	return info.Path + " " + fmt.Sprint(info.Details)
}

// keep adds the report to those not taken yet, unless its block (or file)
// is among them already.
func (l *damageLog) keep(info pebble.DataCorruptionInfo) {
	key := damageKey(&info)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pendingKeys[key] || len(l.pending) >= maxPendingDamage {
		return
	}
	if l.pendingKeys == nil {
		l.pendingKeys = map[string]bool{}
	}
	l.pendingKeys[key] = true
	l.pending = append(l.pending, Damage{File: info.Path, Keys: info.Bounds.String(), Err: info.Details, info: info})
	select {
	case l.notify <- struct{}{}:
	default:
	}
}

// take returns the reports not taken yet.
func (l *damageLog) take() []Damage {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.pending
	l.pending, l.pendingKeys = nil, nil
	return out
}

type damagedFile struct {
	logged time.Time // last line
	more   uint64    // reports since
}

// damageLogEvery is the least time between two lines about one file (a
// variable for tests).
var damageLogEvery = time.Minute

func (l *damageLog) event(info pebble.DataCorruptionInfo) {
	l.events.Add(1)
	l.keep(info)
	ok, more := l.allow(info.Path)
	if !ok {
		return
	}
	attrs := []any{"component", "pebble", "file", info.Path, "keys", info.Bounds.String(), "err", info.Details}
	if more > 0 {
		attrs = append(attrs, "reports_since_last_line", more,
			"hint", "met again and again (pebble retries a compaction over it): a damaged block of queued publications is cut out of the datastore as soon as it is reported (what it held is lost), also at start; damage elsewhere makes the instance refuse publications, and needs a restart or a backup (README, Damaged storage)")
	}
	l.log.Error("on-disk corruption in the datastore", attrs...)
}

// background logs the errors of pebble's background work (flushes and
// compactions, which it retries: a damaged block or a full disk failed
// the same compaction again and again), as the reports of one file are.
func (l *damageLog) background(err error) {
	ok, more := l.allow("")
	if !ok {
		return
	}
	attrs := []any{"component", "pebble", "err", err}
	if more > 0 {
		attrs = append(attrs, "errors_since_last_line", more)
	}
	l.log.Error("datastore background work failed (pebble retries it)", attrs...)
}

// allow reports whether a line about key (a file; "" for background
// errors) may be logged now, and how many were left out since the last.
func (l *damageLog) allow(key string) (bool, uint64) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.files[key]
	if f == nil {
		f = &damagedFile{}
		l.files[key] = f
	}
	if !f.logged.IsZero() && now.Sub(f.logged) < damageLogEvery {
		f.more++
		return false, 0
	}
	more := f.more
	f.logged, f.more = now, 0
	return true, more
}

// Option configures Open.
type Option func(*options)

type options struct {
	logger     *slog.Logger
	cacheSize  int64
	syncWrites bool
	// ownerKind and ownerCommand are recorded beside the lock (WithOwner).
	ownerKind, ownerCommand string
}

// WithLogger routes pebble's own log messages to l. Without it they are
// discarded, because pebble logs routine compaction and recovery details.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// WithCacheSize sets the pebble block cache size in bytes (default
// DefaultCacheSize).
func WithCacheSize(n int64) Option {
	return func(o *options) { o.cacheSize = n }
}

// WithSyncWrites makes every Put, Delete and Batch commit fsync the WAL
// before returning, instead of relying on explicit Sync calls.
func WithSyncWrites() Option {
	return func(o *options) { o.syncWrites = true }
}

// Open opens, creating it if needed, the pebble database in dir. If another
// process has it open the error is a *LockedError (it wraps ErrLocked) that
// says which process, when that can be known; if it was written by a newer
// schema the error wraps ErrSchemaTooNew. A database is created only in a
// new or empty directory: one that holds other files but no database is
// refused with ErrNotDatastore (a mistyped path must not scatter pebble's
// files among the user's).
func Open(dir string, opts ...Option) (*DB, error) {
	o := options{cacheSize: DefaultCacheSize}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("datastore: create %s: %w", dir, err)
	}
	// Before anything is changed in it (its permissions included).
	if err := checkDir(dir); err != nil {
		return nil, err
	}
	// Its records include secrets (issued tokens): owner only, also for a
	// directory of ours an older version created 0755 (pebble's files are
	// 0644). A directory someone else owns is left as its owner set it.
	if fi, err := os.Stat(dir); err == nil && fi.Mode().Perm()&0o077 != 0 {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) == os.Getuid() {
			if err := os.Chmod(dir, fi.Mode().Perm()&0o700); err != nil {
				return nil, fmt.Errorf("datastore: restrict %s to its owner: %w", dir, err)
			}
		}
	}
	// One spelling per directory: pebble refuses a second lock in this
	// process by comparing paths, and fcntl locks are per process, so a
	// second Open through a symlink or a relative path would succeed (and
	// closing it would release the lock another process then takes).
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		if abs, err := filepath.Abs(real); err == nil {
			dir = abs
		}
	}

	// Take the directory lock ourselves rather than letting pebble.Open do
	// it: pebble's lock failure is an unexported, unwrapped error mixed in
	// with every other open failure, while here it is the only thing that
	// can go wrong, so it can be reported as ErrLocked reliably.
	lock, err := pebble.LockDirectory(dir, vfs.Default)
	if err != nil {
		if isLockConflict(err) {
			// Who holds it is for the caller to judge (a service, a
			// short command that will finish): say who, not what to do.
			return nil, &LockedError{Dir: dir, Owner: readOwner(dir)}
		}
		return nil, fmt.Errorf("datastore: lock %s: %w", dir, err)
	}
	writeOwner(dir, o)

	logger := o.logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	// Most bytes written here are queued publications, deleted once
	// delivered. A memtable larger than what subscribers typically hold
	// unacked lets an entry and its deletion meet in memory, so neither is
	// flushed and compacted (pebble's default of 4 MiB flushed most of
	// them; compaction then took a third of the CPU of a 64 KiB delivery).
	// The arena is touched only as it fills, so an idle instance's memory
	// does not grow. Compressing such short-lived data is wasted CPU.
	popts := &pebble.Options{
		FS:           noPreallocFS{vfs.Default},
		Lock:         lock,
		Logger:       pebbleLogger{l: logger},
		MemTableSize: MemTableSize,
	}
	// pebble's default for a checksum mismatch found on a read is to end
	// the process (through Fatalf): one damaged block then took the whole
	// service down, at every start. The read itself fails with an error
	// that IsCorruption recognises, which the caller handles (the queues
	// skip the publication it held); here it is only logged.
	damage := &damageLog{log: logger, files: map[string]*damagedFile{}, notify: make(chan struct{}, 1)}
	popts.AddEventListener(pebble.EventListener{DataCorruption: damage.event, BackgroundError: damage.background})
	popts.ApplyCompressionSettings(func() pebble.DBCompressionSettings { return pebble.DBCompressionNone })
	popts.WithFSDefaults() // pebble's disk health checks, around noPreallocFS
	dsopts := []pebbleds.Option{
		pebbleds.WithPebbleOpts(popts),
		pebbleds.WithCacheSize(o.cacheSize),
	}
	if o.syncWrites {
		dsopts = append(dsopts, pebbleds.WithPebbleWriteOptions(pebble.Sync))
	}
	pds, err := pebbleds.NewDatastore(dir, dsopts...)
	if err != nil {
		removeOwner(dir)
		if pebble.IsCorruptionError(err) {
			// A damaged manifest or write-ahead log: pebble cannot
			// reconstruct the database, and nothing here can repair it.
			err = fmt.Errorf("%w: %s is damaged and cannot be opened (%w); restore it from a backup, or move it aside (for example to %s.damaged) to start with an empty one: everything it held (subscriptions, queued publications, peers, issued tokens, dead letters) is then gone", ErrCorrupt, dir, err, dir)
			return nil, errors.Join(err, lock.Close())
		}
		return nil, errors.Join(fmt.Errorf("datastore: open %s: %w", dir, err), lock.Close())
	}
	wo := pebble.NoSync
	if o.syncWrites {
		wo = pebble.Sync
	}
	g := &opGuard{}
	// popts has pebble's defaults now (NewDatastore set them): the
	// tables are read with its comparer when a damaged block is cut out.
	cutMu := &sync.Mutex{}
	db := &DB{batching: pebbleBatching{Datastore: pds, wo: wo, g: g, dir: dir, popts: popts, damage: damage, cutMu: cutMu},
		guard: g, pebble: pds, lock: lock, dir: dir, damage: damage, cutMu: cutMu}
	db.stop, db.cancelStop = context.WithCancel(context.Background())
	db.dirInfo, _ = os.Stat(dir)
	if err := db.checkSchema(context.Background(), dir); err != nil {
		return nil, errors.Join(err, db.Close())
	}
	return db, nil
}

// Dir is the database's directory ("" for the in-memory backend).
func (db *DB) Dir() string { return db.dir }

// FreeSpace is how many bytes the file system holding the database has
// available to this process (statfs's available blocks).
func (db *DB) FreeSpace() (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(db.dir, &st); err != nil {
		return 0, fmt.Errorf("datastore: free space of %s: %w", db.dir, err)
	}
	// Bavail is signed on some systems (FreeBSD: negative past the
	// reserve for root).
	return uint64(max(st.Bavail, 0)) * uint64(st.Bsize), nil
}

// checkDir refuses a directory that holds files of its own but no pebble
// database. Files pebble creates are allowed without a manifest (an Open
// interrupted while creating the database leaves them, and another Open
// creating it at this moment holds them), so only a file pebble would not
// have written marks the directory as someone else's.
func checkDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("datastore: read %s: %w", dir, err)
	}
	foreign := ""
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasPrefix(name, "marker.manifest."), strings.HasPrefix(name, "MANIFEST-"), name == "CURRENT":
			return nil // a database, whatever else lies beside it
		case foreign == "" && !isPebbleFile(name):
			foreign = name
		}
	}
	if foreign != "" {
		return fmt.Errorf("%w: %s is not empty (it holds %.64q, for example) and holds no database; refusing to create one among other files: use a new or empty directory", ErrNotDatastore, dir, foreign)
	}
	return nil
}

// isPebbleFile reports whether name is one that pebble creates in its
// directory: LOCK, OPTIONS-<n>, marker.*, <n>.log, <n>.sst, <n>.blob or a
// temporary *.dbtmp; or Open's own LOCK.owner, which it writes beside LOCK
// before pebble creates the database.
func isPebbleFile(name string) bool {
	switch {
	case name == "LOCK", name == ownerFile, strings.HasPrefix(name, "OPTIONS-"), strings.HasPrefix(name, "marker."), strings.HasSuffix(name, ".dbtmp"):
		return true
	}
	base, ext, ok := strings.Cut(name, ".")
	if !ok || base == "" || strings.Trim(base, "0123456789") != "" {
		return false
	}
	return ext == "log" || ext == "sst" || ext == "blob"
}

// isLockConflict reports whether err from pebble.LockDirectory means the
// lock is held. fcntl(F_SETLK) fails with EAGAIN or EACCES when another
// process holds it; pebble refuses a second lock from the same process with
// a plain error of its own. Failures to create the lock file arrive as
// *os.PathError (EACCES there means a permission problem, not a conflict).
func isLockConflict(err error) bool {
	var pathErr *os.PathError
	if errors.As(err, &pathErr) {
		return false
	}
	if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EWOULDBLOCK) {
		return true
	}
	return strings.Contains(err.Error(), "lock held by current process")
}

// checkSchema writes SchemaVersion into a new database and refuses one
// written by a newer schema, before any other package reads data it might
// misinterpret.
func (d *DB) checkSchema(ctx context.Context, dir string) error {
	raw, err := d.batching.Get(ctx, SchemaVersionKey)
	switch {
	case errors.Is(err, ds.ErrNotFound):
		// Open has written the version before anything else since the
		// first release, so a database holding data without one is not
		// ours (or lost its version): stamping it would let packages read
		// and delete data they do not understand.
		if key, err := d.anyKey(); err != nil {
			return fmt.Errorf("datastore: read %s: %w", dir, err)
		} else if key != nil {
			return fmt.Errorf("%w: %s holds data (key %.64q) but no schema version: not a coattail datastore", ErrCorrupt, dir, key)
		}
		if err := d.batching.Put(ctx, SchemaVersionKey, []byte(strconv.Itoa(SchemaVersion))); err != nil {
			return fmt.Errorf("datastore: write schema version in %s: %w", dir, err)
		}
		if err := d.batching.Sync(ctx, SchemaVersionKey); err != nil {
			return fmt.Errorf("datastore: sync schema version in %s: %w", dir, err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("datastore: read schema version in %s: %w", dir, err)
	}
	v, err := strconv.Atoi(string(raw))
	if err != nil || v < 1 {
		return fmt.Errorf("%w: schema version %q in %s is not a positive integer", ErrCorrupt, raw, dir)
	}
	if v > SchemaVersion {
		return fmt.Errorf("%w: %s was written with schema version %d, but this coattail understands only up to %d; upgrade coattail", ErrSchemaTooNew, dir, v, SchemaVersion)
	}
	return nil
}

// anyKey returns some key of the pebble database, or nil if it is empty.
func (d *DB) anyKey() ([]byte, error) {
	it, err := d.pebble.DB.NewIter(nil)
	if err != nil {
		return nil, err
	}
	var key []byte
	if it.First() {
		key = bytes.Clone(it.Key())
	}
	return key, errors.Join(it.Error(), it.Close())
}

// NewMemory returns an empty in-memory DB for unit tests. It holds no schema
// version: nothing in it outlives the process.
func NewMemory() *DB {
	return &DB{batching: dssync.MutexWrap(ds.NewMapDatastore())}
}

// Batching returns the underlying datastore for packages that manage their
// own namespaces (see the key layout in the package documentation).
func (d *DB) Batching() ds.Batching {
	return d.batching
}

// Sync makes every write so far under prefix durable against a machine crash.
// For pebble it fsyncs the write-ahead log, which covers all keys regardless
// of prefix; for memory it does nothing.
func (d *DB) Sync(ctx context.Context, prefix ds.Key) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return ErrClosed
	}
	if err := d.batching.Sync(ctx, prefix); err != nil {
		return fmt.Errorf("datastore: sync: %w", err)
	}
	return nil
}

// Unflushed is how many bytes pebble has yet to write to its tables: what
// its memtables hold, which a flush writes again although it is in the
// write-ahead logs already (0 for the in-memory backend or once closed).
// A flush that finds no room for them fails and is retried for ever, and
// writes wait for it: the disk's reserve must hold them.
func (d *DB) Unflushed() uint64 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed || d.pebble == nil {
		return 0
	}
	return d.pebble.DB.Metrics().WAL.Size
}

// TableSize is how many bytes the database's tables take on disk, also
// those holding deleted entries that no compaction has dropped yet; not
// its write-ahead logs (what the memtables hold, and up to three logs
// kept for reuse). 0 for the in-memory backend or once closed.
func (d *DB) TableSize() uint64 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed || d.pebble == nil {
		return 0
	}
	m := d.pebble.DB.Metrics()
	return uint64(max(m.Total().TablesSize, 0))
}

// Reclaim gives disk space held by deleted entries back as soon as it can.
// It flushes the memtable: deletions still in memory free nothing on disk
// (and with writes refused for want of room the memtable would not fill
// and flush on its own); once flushed, pebble drops the files whose
// entries were all deleted (deletion-only compactions), which is where
// delivered publications end up. With compact, it then also compacts
// every key, which drops deleted entries from files that hold live ones
// too — costly (it rewrites the database), so for rare use. The in-memory
// backend has nothing to reclaim.
func (d *DB) Reclaim(ctx context.Context, compact bool) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return ErrClosed
	}
	if d.pebble == nil {
		return nil
	}
	// Not while a damaged block is cut out (DamageWatcher.CutBlock):
	// flushes while level 0 cannot be compacted (the damage fails every
	// compaction) fill it, and once it is full a flush waits for a
	// compaction holding pebble's commit lock, which the cut's ingestion
	// then waits for: for ever.
	d.cutMu.Lock()
	err := d.pebble.DB.Flush()
	d.cutMu.Unlock()
	if err != nil {
		return fmt.Errorf("datastore: reclaim: flush: %w", err)
	}
	if !compact {
		return nil
	}
	// A compaction writes its output before it deletes its inputs: with
	// less room than the database takes it would fill the disk, and
	// pebble ends the process when a write then finds it full.
	free, err := d.FreeSpace()
	if err != nil {
		return err
	}
	if used := d.pebble.DB.Metrics().DiskSpaceUsage(); free < used {
		return fmt.Errorf("datastore: reclaim: not compacting: %d bytes free, less than the %d the database takes", free, used)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(d.stop, cancel)
	defer stop()
	// Every key starts with '/' (ds.Key), the byte before '0'.
	if err := d.pebble.DB.Compact(ctx, []byte("/"), []byte("0"), false); err != nil {
		return fmt.Errorf("datastore: reclaim: compact: %w", err)
	}
	return nil
}

// Close flushes and closes the database and releases the directory lock. It
// is safe to call more than once.
func (d *DB) Close() error {
	d.closeOnce.Do(func() {
		if d.cancelStop != nil {
			d.cancelStop()
		}
		d.mu.Lock()
		d.closed = true
		d.mu.Unlock()
		if d.dirGone() {
			// Deleted (or replaced) under the open database: pebble's
			// flush on close would create files in a directory that does
			// not exist, and pebble ends the process when that fails.
			// Nothing written now could be found again anyway.
			d.closeErr = fmt.Errorf("%w: %s was removed while the database was open; it was not flushed", ErrClosed, d.dir)
			if d.lock != nil {
				_ = d.lock.Close()
			}
			return
		}
		if d.guard != nil && !d.guard.shut(closeWait) {
			d.closeErr = fmt.Errorf("datastore: close: operations still running after %v; closed under them", closeWait)
		}
		if err := d.batching.Close(); err != nil {
			d.closeErr = errors.Join(d.closeErr, fmt.Errorf("datastore: close: %w", err))
		}
		if d.lock != nil {
			removeOwner(d.dir) // while the lock is still ours
			// pebble dropped its reference on close; this releases ours and
			// with it the file lock, so another process may open the
			// directory.
			if err := d.lock.Close(); err != nil {
				d.closeErr = errors.Join(d.closeErr, fmt.Errorf("datastore: release lock: %w", err))
			}
		}
	})
	return d.closeErr
}

// SortedGetter is implemented by the Batching of a pebble DB: it reads many
// keys in ascending order with one iterator, which is far cheaper than one
// Get each (a Get builds and tears down an iterator over every level), and
// is how a queue reads a backlog back.
type SortedGetter interface {
	// GetSorted calls fn(i, value, nil) for each keys[i] in order; value
	// is nil for a missing key and valid only during the call. keys must
	// be in ascending byte order. A key whose data cannot be read because
	// it is damaged (IsCorruption) is passed as fn(i, nil, err), and the
	// read goes on with the next key; any other read error ends the read
	// and is returned, as is an error from fn.
	GetSorted(ctx context.Context, keys [][]byte, fn func(i int, value []byte, err error) error) error
}

// Scanner is implemented by the Batching of a pebble DB: an ordered scan of
// a key range that reports a read error, unlike go-ds-pebble's Query,
// which ends its results early without one when its iterator fails
// (a damaged block looked like the end of the data).
type Scanner interface {
	// Scan calls fn for each key k with start <= k < end, in order, until
	// fn returns an error (returned as is). key and value are valid only
	// during the call. A read error ends the scan and is returned
	// (IsCorruption for damaged data); a scan started again after the
	// damaged part (a later start) goes on from there.
	Scan(ctx context.Context, start, end []byte, fn func(key, value []byte) error) error
}

// SizedBatcher is implemented by the Batching of a pebble DB: a batch whose
// buffer is allocated for size bytes of keys and values up front. A large
// batch built without it grows by doubling, copying everything written so
// far each time (a 16 MiB batch of queued publications costs ~64 MiB of
// allocation that way).
//
// Its batches also implement RangeDeleter.
type SizedBatcher interface {
	SizedBatch(ctx context.Context, size int) (ds.Batch, error)
}

// RangeDeleter is implemented by the batches of SizedBatcher: one range
// tombstone instead of a tombstone per key, which is how a queue deletes a
// run of delivered entries.
type RangeDeleter interface {
	// DeleteRange deletes every key k with start <= k < end in byte order.
	DeleteRange(ctx context.Context, start, end []byte) error
}

// pebbleBatching adds GetSorted and SizedBatch to the pebble datastore.
// Every use of pebble goes through its guard g (guard.go).
type pebbleBatching struct {
	*pebbleds.Datastore
	wo    *pebble.WriteOptions
	g     *opGuard
	dir   string          // the database's directory (CutDamage)
	popts *pebble.Options // its options, with pebble's defaults (CutDamage)
	// damage holds the reports of damage (DamageWatcher); cutMu is held
	// by CutDamage and CutBlock, so that no two cuts run at once, and by
	// DB.Reclaim's flush.
	damage *damageLog
	cutMu  *sync.Mutex
}

func (s pebbleBatching) SizedBatch(_ context.Context, size int) (ds.Batch, error) {
	if !s.g.enter() {
		return nil, ErrClosed
	}
	defer s.g.exit()
	return &sizedBatch{b: s.DB.NewBatchWithSize(size), wo: s.wo, g: s.g}, nil
}

// sizedBatch is a ds.Batch over a pre-sized pebble batch.
type sizedBatch struct {
	b  *pebble.Batch
	wo *pebble.WriteOptions
	g  *opGuard
}

// errBatchCommitted is returned by a sizedBatch used after Commit.
var errBatchCommitted = errors.New("datastore: batch already committed")

func (b *sizedBatch) Put(_ context.Context, key ds.Key, value []byte) error {
	if b.b == nil {
		return errBatchCommitted
	}
	return b.b.Set(key.Bytes(), value, nil)
}

func (b *sizedBatch) Delete(_ context.Context, key ds.Key) error {
	if b.b == nil {
		return errBatchCommitted
	}
	return b.b.Delete(key.Bytes(), nil)
}

// DeleteRange deletes every key k with start <= k < end (byte order).
func (b *sizedBatch) DeleteRange(_ context.Context, start, end []byte) error {
	if b.b == nil {
		return errBatchCommitted
	}
	return b.b.DeleteRange(start, end, nil)
}

func (b *sizedBatch) Commit(context.Context) error {
	if b.b == nil {
		return errBatchCommitted
	}
	if !b.g.enter() {
		return ErrClosed
	}
	defer b.g.exit()
	err := b.b.Commit(b.wo)
	_ = b.b.Close()
	b.b = nil
	if err != nil {
		return fmt.Errorf("datastore: commit batch: %w", err)
	}
	return nil
}

func (s pebbleBatching) GetSorted(ctx context.Context, keys [][]byte, fn func(int, []byte, error) error) error {
	if len(keys) == 0 {
		return nil
	}
	if !s.g.enter() {
		return ErrClosed
	}
	defer s.g.exit()
	upper := append(bytes.Clone(keys[len(keys)-1]), 0)
	// iterFrom is an iterator over keys from k on.
	iterFrom := func(k []byte) (*pebble.Iterator, error) {
		it, err := s.DB.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: k, UpperBound: upper})
		if err != nil {
			return nil, fmt.Errorf("datastore: read: %w", err)
		}
		return it, nil
	}
	var it *pebble.Iterator
	var err error
	for i := 0; i < len(keys) && err == nil; i++ {
		k := keys[i]
		if it == nil {
			if it, err = iterFrom(k); err != nil {
				return err
			}
		}
		// Ascending seeks let pebble continue from the current position
		// instead of searching every level again.
		val, rerr := seekValue(it, k)
		if rerr != nil && IsCorruption(rerr) {
			// Continuing from the previous key may have stepped into a
			// damaged block before this key's: ask a new iterator that
			// starts at the key. A damaged block costs the keys in it,
			// not those after (the failed iterator keeps its error, and
			// Close returns it).
			_ = it.Close()
			if it, err = iterFrom(k); err != nil {
				return err
			}
			if val, rerr = seekValue(it, k); rerr != nil && IsCorruption(rerr) {
				_ = it.Close()
				it, val = nil, nil
			}
		}
		if rerr != nil {
			rerr = fmt.Errorf("datastore: read %s: %w", k, rerr)
			if !IsCorruption(rerr) {
				err = rerr
				break
			}
		}
		err = fn(i, val, rerr)
	}
	if it != nil {
		err = errors.Join(err, it.Close())
	}
	return err
}

// seekValue positions it at k and returns k's value (nil when missing).
func seekValue(it *pebble.Iterator, k []byte) ([]byte, error) {
	if !it.SeekGE(k) {
		return nil, it.Error()
	}
	if !bytes.Equal(it.Key(), k) {
		return nil, nil
	}
	return it.ValueAndErr()
}

func (s pebbleBatching) Scan(ctx context.Context, start, end []byte, fn func(key, value []byte) error) error {
	if !s.g.enter() {
		return ErrClosed
	}
	defer s.g.exit()
	it, err := s.DB.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: start, UpperBound: end})
	if err != nil {
		return fmt.Errorf("datastore: scan: %w", err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		val, verr := it.ValueAndErr()
		if verr != nil {
			err = fmt.Errorf("datastore: scan: read %s: %w", it.Key(), verr)
			break
		}
		if err = fn(it.Key(), val); err != nil {
			break
		}
	}
	if err == nil {
		if ierr := it.Error(); ierr != nil {
			err = fmt.Errorf("datastore: scan: %w", ierr)
		}
	}
	return errors.Join(err, it.Close())
}

// Query is go-ds-pebble's, but for the plain queries every caller makes (a
// prefix, in key order or none): those are answered here, so that a read
// error is returned rather than ending the results early as if the data
// ended there (go-ds-pebble stops at a failed iterator step without
// reporting its error).
func (s pebbleBatching) Query(ctx context.Context, q query.Query) (query.Results, error) {
	plain := len(q.Filters) == 0 && q.Limit == 0 && q.Offset == 0 && !q.ReturnsSizes &&
		(len(q.Orders) == 0 || len(q.Orders) == 1 && isOrderByKey(q.Orders[0]))
	if !plain {
		return s.query(ctx, q)
	}
	prefix := ds.NewKey(q.Prefix).String()
	if prefix != "/" {
		prefix += "/"
	}
	var entries []query.Entry
	err := s.Scan(ctx, []byte(prefix), prefixEnd(prefix), func(k, v []byte) error {
		e := query.Entry{Key: string(k)}
		if !q.KeysOnly {
			e.Value = bytes.Clone(v)
		}
		entries = append(entries, e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return query.ResultsWithEntries(q, entries), nil
}

func isOrderByKey(o query.Order) bool {
	switch o.(type) {
	case query.OrderByKey, *query.OrderByKey:
		return true
	}
	return false
}

// IsCorruption reports whether err says that stored data is damaged: a
// record that does not decode (ErrCorrupt), or data pebble found damaged
// (a checksum mismatch in a table, a damaged log or manifest), rather than
// a failure to read it (an I/O error, a closed database).
func IsCorruption(err error) bool {
	return err != nil && (errors.Is(err, ErrCorrupt) || pebble.IsCorruptionError(err))
}

// dirGone reports whether the database's directory is no longer the one
// Open opened (false for the in-memory backend).
func (d *DB) dirGone() bool {
	if d.dirInfo == nil {
		return false
	}
	fi, err := os.Stat(d.dir)
	return err != nil || !os.SameFile(fi, d.dirInfo)
}

// pebbleLogger adapts pebble's printf-style logger to slog.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Info(fmt.Sprintf(format, args...), "component", "pebble")
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
}

// Fatalf is called by pebble only for unrecoverable conditions such as
// on-disk corruption, and pebble's contract is that it does not return:
// continuing could write corrupted state. It therefore logs and then defers
// to pebble's default logger, which exits the process.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble", "fatal", true)
	pebble.DefaultLogger.Fatalf(format, args...)
}
