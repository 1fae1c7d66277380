package perf

import (
	"os"
	"syscall"
)

// fdatasync makes f's data durable as the datastore's log syncs do
// (pebble's SyncData: fdatasync on Linux).
func fdatasync(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }
