//go:build !linux

package perf

import "os"

// fdatasync makes f's data durable; outside Linux, as pebble's SyncData
// does there, with a full sync.
func fdatasync(f *os.File) error { return f.Sync() }
