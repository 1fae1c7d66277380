// Package datastore owns Coattail's persistent storage: opening the embedded
// pebble database of an instance (one process at a time: the holder records
// its pid, and what it is, in LOCK.owner beside pebble's LOCK, so that
// another process is told by whom it is taken (LockedError); created only in
// a new or empty directory, never among other files: ErrNotDatastore), its
// schema version, the in-memory variant used by unit tests, and Store, a
// typed JSON store over one namespace. Packages that need more than Store
// (ordered queues, batches spanning namespaces) use DB.Batching directly, but
// only under the namespaces they own in the table below.
//
// # Key layout
//
// Every key in the product is listed here; a package adding a namespace adds
// a row. <id> segments never contain '/'.
//
//	Key                                        Value                               Owner
//	/meta/schema-version                       decimal schema version ("1")        datastore
//	/meta/peer-id                              peer id of the key the data is for  node
//	/auth/tokens/<id>                          issued capability token record      auth
//	/auth/validations/<id>                     imported validation token           auth
//	/auth/revoked/<id>                         when a revoked token was revoked    auth
//	/peers/<peer-id>                           peer this instance added            node
//	/subs/out/<sub-id>                         subscription held at another peer   node
//	/subs/in/<sub-id>                          subscription another peer holds here topics
//	/subs/seq/<sub-id>                         last processed sequence (8 bytes BE) node
//	/subs/addrs/<peer-id>                      where a subscriber listens (JSON)   node
//	/deadletters/<sub-id>.<seq, 20 digits>     publication whose receiver failed   node
//	/queue/log/<pos, 20 digits, 0-padded>      publication, stored once, + routing topics
//	/queue/sub/<sub-id>                        queue state: log base, ack, counters topics
//
// Log positions are zero-padded to 20 digits (the width of the largest
// uint64) so that byte order, which pebble iterates in, is numeric order.
// A subscription's sequence numbers are derived from the log rather than
// stored (see topics.Queues).
//
// # Durability
//
// go-ds-pebble writes with pebble.NoSync by default, and Open keeps that:
// every Put and committed Batch is appended to pebble's write-ahead log
// before it returns, so it survives a crash of the process, but the WAL is
// not fsynced, so an operating-system crash or power loss may lose the most
// recent writes. A caller that must not lose a write across a machine crash
// (for example before acknowledging a publication) calls DB.Sync after its
// writes: one fsync then covers every earlier write from every goroutine, so
// concurrent publishers share the cost instead of paying an fsync each.
// WithSyncWrites makes every write synchronous instead, for callers that
// prefer simplicity to throughput.
//
// # Memory
//
// The pebble block cache is DefaultCacheSize (8 MiB), set explicitly rather
// than left to pebble's default because an instance's idle memory budget is
// small and the default may grow between pebble releases. Memtables start at
// 256 KiB and grow only under write load, up to MemTableSize (64 MiB, so
// that a queued publication and its deletion usually meet in memory; see
// Open). Tables are not compressed: most bytes written are short-lived
// queue data.
//
// # Beyond go-datastore
//
// The pebble Batching also implements SortedGetter (many keys read in order
// with one iterator), Scanner (an ordered scan of a key range from any key)
// and SizedBatcher (a batch allocated at its final size, whose batches
// implement RangeDeleter: one tombstone for a key range). The queues use
// them when present and fall back to plain go-datastore calls on the
// in-memory store.
//
// # Damaged data
//
// A read of data pebble finds damaged (a table block whose checksum does
// not match) fails with an error IsCorruption recognises; pebble's default
// of ending the process then is replaced by an error log. Plain prefix
// queries are answered by the Batching itself, so that such an error is
// returned (go-ds-pebble's scan ends early without one), and GetSorted
// reports a damaged key and goes on with the next. A damaged block that
// no read steps over (a table's index sends every later key under its
// prefix there, also those newer tables hold) can be cut out with
// DamageCutter, keeping everything else. Damage pebble meets while the
// database is open (a compaction in the background fails on it, and is
// retried for ever, until level 0 is full and every write stalls) is
// logged at most once a minute per file, counted (DB.CorruptionEvents) and
// kept for DamageWatcher, whose user cuts the damaged block out while it
// keeps the writers of its keys away (CutBlock). A database pebble cannot
// open at all is refused with ErrCorrupt and what to do.
//
// The datastore returned by DB.Batching must not be used after DB.Close:
// pebble treats use after close as a programming error.
package datastore
