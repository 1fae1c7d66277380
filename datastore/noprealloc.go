package datastore

import "github.com/cockroachdb/pebble/v2/vfs"

// noPreallocFS is the file system pebble writes through: the OS's, except
// that files are not preallocated. pebble preallocates each write-ahead
// log to 110% of the memtable size (70 MiB here) whatever goes into it,
// and its memtables start at 256 KiB and double, so right after Open some
// eight logs holding a few MiB took ~560 MiB of disk: a restart on a disk
// with less room than that ended the process (pebble exits when a write
// finds the disk full), past any reserve the disk guard keeps. Without
// preallocation a log takes what is written to it; pebble reuses old logs
// for new ones, which keeps the cost of syncing them low.
type noPreallocFS struct{ vfs.FS }

func (fs noPreallocFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, category)
	return wrapNoPrealloc(f, err)
}

func (fs noPreallocFS) OpenReadWrite(name string, category vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := fs.FS.OpenReadWrite(name, category, opts...)
	return wrapNoPrealloc(f, err)
}

func (fs noPreallocFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, category)
	return wrapNoPrealloc(f, err)
}

func wrapNoPrealloc(f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return noPreallocFile{f}, nil
}

// noPreallocFile is a file whose Preallocate does nothing.
type noPreallocFile struct{ vfs.File }

func (noPreallocFile) Preallocate(offset, length int64) error { return nil }
