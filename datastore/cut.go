package datastore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/sstable/block"
	"github.com/cockroachdb/pebble/v2/sstable/block/blockkind"
	"github.com/cockroachdb/pebble/v2/sstable/rowblk"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// KV is a key and its value.
type KV struct{ Key, Value []byte }

// DamageCutter is implemented by the Batching of a pebble DB: it makes a
// damaged table block unreachable.
//
// A table's index sends every key from just after the block before a
// damaged block up to the damaged block's index key to the damaged block,
// whichever table really holds the key. When that block is the last one a
// table holds under some prefix, its index key lies past every later key
// under the prefix, so none of them can be read, although a newer table
// holds them; and deleting keys over the block does not help (a read that
// meets a range deletion seeks the tables below to its end, which the
// damaged block's index key still covers).
type DamageCutter interface {
	// CutDamage removes from the database a span of keys around the
	// damaged table block that the read error cause (IsCorruption) met
	// at key at, and rewrites every key the span held that can still be
	// read (newer tables' keys, and the damaged table's keys beside the
	// block): only what the damaged block held is lost, and no read
	// loads it again (the rest of its table stays, as tables that end
	// before the span and start after it). A key the span held only in a
	// table below the damaged one is rewritten with that table's value
	// (the damaged block may have held a newer version or a deletion).
	//
	// Before anything is changed, mark is called with the first key from
	// at on, below limit, that the database holds but for the damaged
	// block (nil if none); the records it returns are written too. The
	// span's keys and mark's records in it replace the span at once (a
	// table ingested with the removal); mark's records past the span are
	// written before. An error from mark ends CutDamage, which has then
	// changed nothing.
	//
	// It reports false, having changed nothing, when it cannot locate
	// the damage: the error names no table of the database's directory,
	// or the block of that table a read of at loads is readable. It
	// raises the database's format major version to FormatVirtualSSTables
	// (what stays of the damaged table is virtual tables).
	//
	// The span's keys are read and then replaced: a write into the span
	// between the two (by anything but mark's records) is lost. The caller
	// makes sure nothing else writes while it runs (the span may reach
	// past the caller's keys, to the damaged table's last key). No two
	// cuts (CutDamage, DamageWatcher.CutBlock) run at once.
	CutDamage(ctx context.Context, cause error, at, limit []byte, mark func(next []byte) ([]KV, error)) (bool, error)
}

// DamageWatcher is implemented by the Batching of a pebble DB: it reports
// the damage pebble meets while the database is open, and cuts a damaged
// table block out while others use the database.
//
// A compaction whose input holds a damaged block fails, and pebble retries
// it for ever (in level 0 every few tens of milliseconds): the block must
// go, or level 0 fills and every write stalls for good. CutDamage cuts
// only where a read of a known key failed, with nothing else writing (the
// queues' load); CutBlock cuts the block that a report names, and only
// where the caller can keep every writer out.
type DamageWatcher interface {
	// DamageReported returns a channel that receives a value when pebble
	// has reported damage that TakeDamage has not returned yet.
	DamageReported() <-chan struct{}
	// TakeDamage returns the damage reported since its last call: each
	// damaged block (or file, when pebble names no block) once, at most
	// a few dozen (a block left out is reported again when pebble next
	// meets it).
	TakeDamage() []Damage
	// CutBlock does for the damaged table block that d names what
	// CutDamage does, where its span (the keys from the last readable
	// key before the block to the first after it, see CutDamage) lies
	// within lo to hi (excluded): the caller keeps every writer of that
	// range out while it runs. Before anything is changed, mark is given
	// the span and the keys in it that keep a value (sorted); the records
	// it returns are written too, as CutDamage writes mark's records.
	//
	// It reports false, having changed nothing, when no table holds the
	// block any more (cut out already, or compacted away with its whole
	// table). It fails, having changed nothing, when d names no block of
	// a table of the database's directory, when the span reaches outside
	// lo to hi, when writes are stalled (level 0 is full: the flush a cut
	// begins with would wait for ever), or on any error reading the
	// tables. It raises the database's format major version as CutDamage
	// does.
	CutBlock(ctx context.Context, d Damage, lo, hi []byte, mark func(start, end []byte, kept [][]byte) ([]KV, error)) (bool, error)
}

func (s pebbleBatching) DamageReported() <-chan struct{} { return s.damage.notify }

func (s pebbleBatching) TakeDamage() []Damage { return s.damage.take() }

// tableNum returns the number of the local table of the database's
// directory that info is about.
func (s pebbleBatching) tableNum(info *pebble.DataCorruptionInfo) (uint64, bool) {
	if info.IsRemote || !strings.HasSuffix(info.Path, ".sst") || filepath.Dir(info.Path) != s.dir {
		return 0, false
	}
	num, err := strconv.ParseUint(strings.TrimSuffix(filepath.Base(info.Path), ".sst"), 10, 64)
	return num, err == nil
}

func (s pebbleBatching) CutBlock(ctx context.Context, d Damage, lo, hi []byte, mark func(start, end []byte, kept [][]byte) ([]KV, error)) (bool, error) {
	if !s.g.enter() {
		return false, ErrClosed
	}
	defer s.g.exit()
	s.cutMu.Lock()
	defer s.cutMu.Unlock()
	for try := 0; ; try++ {
		cut, err := s.cutBlock(ctx, d, lo, hi, mark)
		if !errors.Is(err, fs.ErrNotExist) || try == 4 {
			return cut, err
		}
	}
}

// errStalled is CutBlock's error while level 0 is full.
var errStalled = errors.New("writes are stalled (level 0 of the database is full, its compaction fails on the damage), so nothing can be cut out")

// errOutside is CutBlock's error for a span that reaches outside lo to hi.
var errOutside = errors.New("the keys around the damaged block reach outside those that can be cut out while the database is in use")

func (s pebbleBatching) cutBlock(ctx context.Context, d Damage, lo, hi []byte, mark func(start, end []byte, kept [][]byte) ([]KV, error)) (bool, error) {
	fail := func(err error) (bool, error) {
		return false, fmt.Errorf("datastore: cut out the damaged block of %s: %w", d.File, err)
	}
	num, ok := s.tableNum(&d.info)
	if !ok {
		return fail(errors.New("not a table of the database's directory"))
	}
	held := func(levels [][]pebble.SSTableInfo) bool { return backedBy(levels, num, nil) != nil }
	// Most reports are of a block cut out already (pebble reports it
	// again until then): those cost no flush.
	levels, err := s.DB.SSTables()
	if err != nil {
		return fail(err)
	}
	if !held(levels) {
		return false, nil // compacted away (its keys all deleted), or cut out with what stayed of its table
	}
	// With level 0 full, the flush below, and the ingestion that ends the
	// cut, wait with every other write until a compaction makes room in
	// level 0: never, while the damage is there. Short of it, they do
	// not: no other flush is asked for meanwhile (DB.Reclaim waits for
	// cutMu), and a memtable that fills takes far longer than a cut.
	if l0 := s.DB.Metrics().Levels[0].Sublevels; int(l0) >= s.popts.L0StopWritesThreshold {
		return fail(errStalled)
	}
	// Every key in a table: each is then read on its own.
	if err := s.DB.Flush(); err != nil {
		return fail(err)
	}
	if levels, err = s.DB.SSTables(); err != nil {
		return fail(err)
	}
	if !held(levels) {
		return false, nil
	}
	dt, err := s.openTable(ctx, num)
	if err != nil {
		return fail(err)
	}
	defer dt.close()
	blocks, err := dt.blocks(ctx)
	if err != nil {
		return fail(err)
	}
	bi := namedBlock(d.info.Details, blocks)
	if bi < 0 {
		return fail(errors.New("pebble's error names no data block of the table"))
	}
	before, after, last, err := dt.readableAround(ctx, blocks, bi)
	if err != nil {
		return fail(err)
	}
	// Every key of the damaged blocks is at or above before and at or
	// below the index key of the last of them; the table that holds
	// them, physical or virtual (what stayed of a table after a cut),
	// is the one whose bounds meet that range: after a cut, none does.
	dmg := backedBy(levels, num, func(t *pebble.SSTableInfo) bool {
		return (before == nil || bytes.Compare(t.Largest.UserKey, before) >= 0) && bytes.Compare(t.Smallest.UserKey, blocks[last].sep) <= 0
	})
	if dmg == nil {
		return false, nil
	}
	start, end := spanOf(dmg, before, after)
	if bytes.Compare(start, lo) < 0 || bytes.Compare(end, hi) > 0 {
		return fail(fmt.Errorf("%w: %q to %q", errOutside, start, end))
	}
	return s.cutSpan(ctx, dmg, levels, start, end, func(keys []string, get func(string) ([]byte, error)) ([]KV, error) {
		var kept [][]byte
		for _, k := range keys {
			v, err := get(k)
			if err != nil {
				return nil, errCut(err)
			}
			if v != nil {
				kept = append(kept, []byte(k))
			}
		}
		return mark(start, end, kept)
	})
}

// backedBy returns the last of levels' tables, physical or virtual, that
// local table file num backs and match takes (nil: any), or nil.
func backedBy(levels [][]pebble.SSTableInfo, num uint64, match func(*pebble.SSTableInfo) bool) *pebble.SSTableInfo {
	var found *pebble.SSTableInfo
	for _, l := range levels {
		for i := range l {
			t := &l[i]
			if uint64(t.BackingSSTNum) == num && t.BackingType == pebble.BackingTypeLocal && (match == nil || match(t)) {
				found = t
			}
		}
	}
	return found
}

// cutTable is one table, read on its own (outside the LSM).
type cutTable struct {
	r *sstable.Reader
}

func (s pebbleBatching) openTable(ctx context.Context, num uint64) (*cutTable, error) {
	name := filepath.Join(s.dir, fmt.Sprintf("%06d.sst", num))
	f, err := vfs.Default.Open(name)
	if err != nil {
		return nil, err
	}
	rd, err := sstable.NewSimpleReadable(f)
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	r, err := sstable.NewReader(ctx, rd, s.popts.MakeReaderOptions())
	if err != nil {
		_ = rd.Close()
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return &cutTable{r: r}, nil
}

func (t *cutTable) close() { _ = t.r.Close() }

// cutEntry is where the newest version of a key is among the tables
// other than the damaged one.
type cutEntry struct {
	seq   pebble.SeqNum
	kind  pebble.InternalKeyKind
	table uint64 // its backing file; 0: in none
}

// scan calls fn for each of the table's keys in [lo, hi) until a read
// fails; it reports whether one did (a corruption error), and returns any
// other error.
func (t *cutTable) scan(lo, hi []byte, fn func(k pebble.InternalKey, val []byte, valErr error)) (bool, error) {
	it, err := t.r.NewIter(sstable.NoTransforms, lo, hi, sstable.AssertNoBlobHandles)
	if err != nil {
		return false, err
	}
	defer it.Close()
	for kv := it.SeekGE(lo, 0); kv != nil; kv = it.Next() {
		v, _, verr := kv.V.Value(nil)
		fn(kv.K, v, verr)
	}
	if err := it.Error(); err != nil {
		if IsCorruption(err) {
			return true, nil
		}
		return false, err
	}
	return false, nil
}

// dataBlock is a data block of a table, as its index names it.
type dataBlock struct {
	sep []byte // its index key: above its keys, below the next block's
	bh  block.Handle
}

// errUnsupported is returned for a table whose blocks are not read here.
var errUnsupported = errors.New("table format not supported")

// blocks lists the table's data blocks in key order, from its index
// (whose blocks have checksums of their own).
func (t *cutTable) blocks(ctx context.Context) ([]dataBlock, error) {
	format, err := t.r.TableFormat()
	if err != nil {
		return nil, err
	}
	if format.BlockColumnar() {
		return nil, errUnsupported
	}
	l, err := t.r.Layout()
	if err != nil {
		return nil, err
	}
	var out []dataBlock
	for _, ih := range l.Index {
		h, err := t.r.BlockReader().Read(ctx, block.NoReadEnv, nil, ih, blockkind.Index, noInit)
		if err != nil {
			return nil, err
		}
		var it rowblk.IndexIter
		if err := it.Init(t.r.Comparer, h.BlockData(), block.NoTransforms); err != nil {
			h.Release()
			return nil, err
		}
		for ok := it.First(); ok; ok = it.Next() {
			bh, err := it.BlockHandleWithProperties()
			if err != nil {
				h.Release()
				return nil, err
			}
			out = append(out, dataBlock{sep: bytes.Clone(it.Separator()), bh: bh.Handle})
		}
		_ = it.Close()
		h.Release()
	}
	return out, nil
}

func noInit(*block.Metadata, []byte) error { return nil }

// edgeKey reads data block b and returns its first key (last: its last),
// or reports that the block is damaged (a corruption error; any other
// error is returned).
func (t *cutTable) edgeKey(ctx context.Context, b dataBlock, last bool) ([]byte, bool, error) {
	h, err := t.r.BlockReader().Read(ctx, block.NoReadEnv, nil, b.bh, blockkind.SSTableData, noInit)
	if err != nil {
		if IsCorruption(err) {
			return nil, false, nil
		}
		return nil, false, err
	}
	defer h.Release()
	var it rowblk.Iter
	c := t.r.Comparer
	if err := it.Init(c.Compare, c.ComparePointSuffixes, c.Split, h.BlockData(), block.NoTransforms); err != nil {
		if IsCorruption(err) {
			return nil, false, nil
		}
		return nil, false, err
	}
	defer it.Close()
	kv := it.First()
	if last {
		kv = it.Last()
	}
	if kv == nil {
		return nil, false, it.Error()
	}
	return bytes.Clone(kv.K.UserKey), true, nil
}

func (s pebbleBatching) CutDamage(ctx context.Context, cause error, at, limit []byte, mark func(next []byte) ([]KV, error)) (bool, error) {
	if !s.g.enter() {
		return false, ErrClosed
	}
	defer s.g.exit()
	s.cutMu.Lock()
	defer s.cutMu.Unlock()
	// A compaction may delete a table between its listing and its
	// opening: list them again.
	for try := 0; ; try++ {
		cut, err := s.cutDamage(ctx, cause, at, limit, mark)
		if !errors.Is(err, fs.ErrNotExist) || try == 4 {
			return cut, err
		}
	}
}

func (s pebbleBatching) cutDamage(ctx context.Context, cause error, at, limit []byte, mark func(next []byte) ([]KV, error)) (bool, error) {
	info := pebble.ExtractDataCorruptionInfo(cause)
	if info == nil {
		return false, nil
	}
	num, ok := s.tableNum(info)
	if !ok {
		return false, nil
	}
	fail := func(err error) (bool, error) { return false, errCut(err) }
	// Every key in a table: each is then read on its own.
	if err := s.DB.Flush(); err != nil {
		return fail(err)
	}
	levels, err := s.DB.SSTables()
	if err != nil {
		return fail(err)
	}
	dmg := backedBy(levels, num, func(t *pebble.SSTableInfo) bool {
		return bytes.Compare(t.Smallest.UserKey, at) <= 0 && bytes.Compare(at, t.Largest.UserKey) <= 0
	})
	if dmg == nil {
		return false, nil
	}
	dt, err := s.openTable(ctx, num)
	if err != nil {
		return fail(err)
	}
	defer dt.close()
	blocks, err := dt.blocks(ctx)
	if errors.Is(err, errUnsupported) {
		return false, nil
	} else if err != nil {
		return fail(err)
	}
	// The damaged block: the one pebble's error names (its offset and
	// length), else the one a seek to at loads and finds damaged.
	if bi := namedBlock(info.Details, blocks); bi >= 0 {
		return s.cutBlocks(ctx, dmg, dt, blocks, bi, levels, at, limit, mark)
	}
	// A seek to at loads the first block whose index key is at or
	// above it, and the next one if that holds no key from at on.
	bi := 0
	for bi < len(blocks) && bytes.Compare(blocks[bi].sep, at) < 0 {
		bi++
	}
	if bi == len(blocks) {
		return false, nil
	}
	if last, ok, err := dt.edgeKey(ctx, blocks[bi], true); err != nil {
		return fail(err)
	} else if ok {
		// Readable: the damaged one is the next, if at is past this
		// one's keys.
		if bi++; bi == len(blocks) || bytes.Compare(last, at) >= 0 {
			return false, nil
		}
		if _, ok, err := dt.edgeKey(ctx, blocks[bi], false); err != nil {
			return fail(err)
		} else if ok {
			return false, nil // the damage is not where a read of at goes
		}
	}
	return s.cutBlocks(ctx, dmg, dt, blocks, bi, levels, at, limit, mark)
}

// blockErr matches the offset and length of the block in pebble's error
// for a block whose checksum does not match.
var blockErr = regexp.MustCompile(`block (\d+)/(\d+): \S+ checksum mismatch`)

// namedBlocks is false in tests of the search for the damaged block.
var namedBlocks = true

// namedBlock returns the index in blocks of the data block that err says
// is damaged, or -1.
func namedBlock(err error, blocks []dataBlock) int {
	if err == nil || !namedBlocks {
		return -1
	}
	m := blockErr.FindStringSubmatch(err.Error())
	if m == nil {
		return -1
	}
	off, err1 := strconv.ParseUint(m[1], 10, 64)
	n, err2 := strconv.ParseUint(m[2], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	for i, b := range blocks {
		if b.bh.Offset == off && b.bh.Length == n {
			return i
		}
	}
	return -1
}

// cutBlocks cuts blocks[bi] of table dmg (read as dt) out, with the
// damaged blocks beside it.
func (s pebbleBatching) cutBlocks(ctx context.Context, dmg *pebble.SSTableInfo, dt *cutTable, blocks []dataBlock, bi int,
	levels [][]pebble.SSTableInfo, at, limit []byte, mark func(next []byte) ([]KV, error)) (bool, error) {
	fail := func(err error) (bool, error) { return false, errCut(err) }
	before, after, _, err := dt.readableAround(ctx, blocks, bi)
	if err != nil {
		return fail(err)
	}
	start, end := spanOf(dmg, before, after)
	if bytes.Compare(start, at) > 0 || bytes.Compare(end, at) <= 0 {
		return false, nil
	}
	return s.cutSpan(ctx, dmg, levels, start, end, func(keys []string, get func(string) ([]byte, error)) ([]KV, error) {
		// The first key from at on: kept in the span, else after it.
		var next []byte
		for _, k := range keys {
			if k < string(at) {
				continue
			}
			v, err := get(k)
			if err != nil {
				return nil, errCut(err)
			}
			if v != nil {
				next = []byte(k)
				break
			}
		}
		if next == nil && bytes.Compare(end, limit) < 0 {
			it, err := s.DB.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: end, UpperBound: limit})
			if err != nil {
				return nil, errCut(err)
			}
			if it.First() {
				next = bytes.Clone(it.Key())
			}
			if err := errors.Join(it.Error(), it.Close()); err != nil {
				return nil, errCut(err)
			}
		}
		if next != nil && bytes.Compare(next, limit) >= 0 {
			next = nil
		}
		return mark(next)
	})
}

func errCut(err error) error { return fmt.Errorf("datastore: cut out a damaged block: %w", err) }

// readableAround returns the last key of the readable block before
// blocks[bi] and the first key of the readable one after it (nil: none),
// skipping the damaged blocks beside it, and the index of the last
// damaged block of that run.
func (t *cutTable) readableAround(ctx context.Context, blocks []dataBlock, bi int) (before, after []byte, last int, err error) {
	for i := bi - 1; i >= 0; i-- {
		k, ok, err := t.edgeKey(ctx, blocks[i], true)
		if err != nil {
			return nil, nil, 0, err
		}
		if ok {
			before = k
			break
		}
	}
	last = len(blocks) - 1
	for i := bi + 1; i < len(blocks); i++ {
		k, ok, err := t.edgeKey(ctx, blocks[i], false)
		if err != nil {
			return nil, nil, 0, err
		}
		if ok {
			after, last = k, i-1
			break
		}
	}
	return before, after, last, nil
}

// spanOf is the span cut out of table dmg around damaged blocks with the
// readable keys before and after them (nil: none). It starts at the last
// key of the readable block before the damaged ones: a reverse seek below
// it (Excise's, to bound what stays before the span) and a scan of what
// stays stop in that block. With none, it starts at the table's first key.
// It ends at the first key of the readable block after them: a seek there
// loads that block, never the damaged one. With none, it ends past the
// table's last key. (Keys beyond the bounds of a virtual table are not
// its own: the span stays within them.)
func spanOf(dmg *pebble.SSTableInfo, before, after []byte) (start, end []byte) {
	start = dmg.Smallest.UserKey
	if before != nil && bytes.Compare(before, start) > 0 {
		start = before
	}
	end = append(bytes.Clone(dmg.Largest.UserKey), 0)
	if after != nil && bytes.Compare(after, end) < 0 {
		end = after
	}
	return start, end
}

// cutSpan replaces the span start to end (excluded) of the database, which
// damaged blocks of table dmg make unreadable, with what the other tables
// hold there and the records mark returns. mark is given the span's keys
// (sorted; those of the other tables, and start) and how to read the value
// each keeps (nil: none; the newest version of another table where the
// database's read goes to the damaged block).
func (s pebbleBatching) cutSpan(ctx context.Context, dmg *pebble.SSTableInfo, levels [][]pebble.SSTableInfo, start, end []byte,
	mark func(keys []string, get func(string) ([]byte, error)) ([]KV, error)) (bool, error) {
	fail := func(err error) (bool, error) { return false, errCut(err) }
	// What the span holds, with the newest version each other table
	// has there.
	found := map[string]*cutEntry{}
	note := func(k []byte) *cutEntry {
		e := found[string(k)]
		if e == nil {
			e = &cutEntry{}
			found[string(k)] = e
		}
		return e
	}
	// Of the damaged table, the span holds start (and no other key the
	// damaged blocks did not hold).
	note(bytes.Clone(start))
	for _, l := range levels {
		for i := range l {
			t := &l[i]
			if t.FileNum == dmg.FileNum || bytes.Compare(t.Largest.UserKey, start) < 0 || bytes.Compare(t.Smallest.UserKey, end) >= 0 {
				continue
			}
			if t.BackingType != pebble.BackingTypeLocal {
				return fail(fmt.Errorf("table %s is not a local file", t.FileNum))
			}
			lo, hi := start, end
			if bytes.Compare(t.Smallest.UserKey, lo) > 0 {
				lo = t.Smallest.UserKey
			}
			if up := append(bytes.Clone(t.Largest.UserKey), 0); bytes.Compare(up, hi) < 0 {
				hi = up
			}
			ot, err := s.openTable(ctx, uint64(t.BackingSSTNum))
			if err != nil {
				return fail(err)
			}
			damaged, err := ot.scan(lo, hi, func(k pebble.InternalKey, _ []byte, _ error) {
				e := note(k.UserKey)
				if e.table == 0 || k.SeqNum() > e.seq {
					e.seq, e.kind, e.table = k.SeqNum(), k.Kind(), uint64(t.BackingSSTNum)
				}
			})
			ot.close()
			if err != nil {
				return fail(err)
			}
			if damaged {
				return fail(fmt.Errorf("table %s is damaged too in the span %q to %q", t.FileNum, start, end))
			}
		}
	}
	keys := make([]string, 0, len(found))
	for k := range found {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	// get returns a key's value (nil: it has none).
	get := func(k string) ([]byte, error) {
		v, closer, err := s.DB.Get([]byte(k))
		switch {
		case err == nil:
			v = bytes.Clone(v)
			return v, closer.Close()
		case errors.Is(err, pebble.ErrNotFound):
			return nil, nil
		case !IsCorruption(err):
			return nil, err
		}
		// Its newest version is where the damaged block sends the read:
		// what a table below holds is all there is.
		e := found[k]
		if e.table == 0 || e.kind != pebble.InternalKeyKindSet && e.kind != pebble.InternalKeyKindSetWithDelete {
			return nil, nil
		}
		ot, err := s.openTable(ctx, e.table)
		if err != nil {
			return nil, err
		}
		defer ot.close()
		var val []byte
		var verr error
		upper := append([]byte(k), 0)
		if _, err := ot.scan([]byte(k), upper, func(ik pebble.InternalKey, v []byte, err error) {
			if ik.SeqNum() == e.seq {
				val, verr = bytes.Clone(v), err
			}
		}); err != nil {
			return nil, err
		}
		if verr != nil && !IsCorruption(verr) {
			return nil, verr
		}
		return val, nil
	}
	extra, err := mark(keys, get)
	if err != nil {
		return false, err
	}
	slices.SortFunc(extra, func(a, b KV) int { return bytes.Compare(a.Key, b.Key) })
	// What mark adds past the span is written first: it stays, and is
	// found again if the cut does not happen.
	if i := slices.IndexFunc(extra, func(kv KV) bool { return bytes.Compare(kv.Key, end) >= 0 }); i >= 0 {
		b := s.DB.NewBatch()
		for _, kv := range extra[i:] {
			if err := b.Set(kv.Key, kv.Value, nil); err != nil {
				_ = b.Close()
				return fail(err)
			}
		}
		err := b.Commit(pebble.Sync)
		_ = b.Close()
		if err != nil {
			return fail(err)
		}
		extra = extra[:i]
	}
	if s.DB.FormatMajorVersion() < pebble.FormatVirtualSSTables {
		// Excise leaves what stays of a table as virtual tables.
		if err := s.DB.RatchetFormatMajorVersion(pebble.FormatVirtualSSTables); err != nil {
			return fail(err)
		}
	}
	// The span's keys are written to a table that replaces the span at
	// once (IngestAndExcise): at no moment are they gone.
	name := filepath.Join(s.dir, fmt.Sprintf("cut-%06d.sst.tmp", uint64(dmg.BackingSSTNum)))
	n, err := s.writeTable(name, keys, get, extra, start, end)
	if err != nil {
		_ = os.Remove(name)
		return fail(err)
	}
	var paths []string
	if n > 0 {
		paths = []string{name}
	} else {
		_ = os.Remove(name)
	}
	if _, err := s.DB.IngestAndExcise(ctx, paths, nil, nil, pebble.KeyRange{Start: start, End: end}); err != nil {
		_ = os.Remove(name)
		return fail(err)
	}
	return true, nil
}

// writeTable writes to a new table name the values (get) of keys that have
// one and the records of extra, in key order, all from start to before end,
// and returns how many it wrote.
func (s pebbleBatching) writeTable(name string, keys []string, get func(string) ([]byte, error), extra []KV, start, end []byte) (int, error) {
	f, err := vfs.Default.Create(name, vfs.WriteCategoryUnspecified)
	if err != nil {
		return 0, err
	}
	w := sstable.NewWriter(objstorageprovider.NewFileWritable(f), s.popts.MakeWriterOptions(0, s.DB.TableFormat()))
	n := 0
	put := func(k, v []byte) error {
		if bytes.Compare(k, start) < 0 || bytes.Compare(k, end) >= 0 {
			return fmt.Errorf("key %q is outside the span %q to %q", k, start, end)
		}
		n++
		return w.Set(k, v)
	}
	for _, k := range keys {
		for len(extra) > 0 && bytes.Compare(extra[0].Key, []byte(k)) < 0 {
			if err := put(extra[0].Key, extra[0].Value); err != nil {
				_ = w.Close()
				return 0, err
			}
			extra = extra[1:]
		}
		if len(extra) > 0 && string(extra[0].Key) == k {
			continue // what mark writes there is newer
		}
		v, err := get(k)
		if err == nil && v != nil {
			err = put([]byte(k), v)
		}
		if err != nil {
			_ = w.Close()
			return 0, err
		}
	}
	for _, kv := range extra {
		if err := put(kv.Key, kv.Value); err != nil {
			_ = w.Close()
			return 0, err
		}
	}
	return n, w.Close()
}
