// Package topics owns Coattail's subjects: the NATS-style syntax of action
// names and subscription patterns, matching a subject against a pattern,
// deciding whether one pattern covers another (for permission checks), and
// the generic subject Trie that routes every publication to the
// subscriptions and permissions whose patterns match it.
//
// A subject is a sequence of dot-separated tokens such as "orders.created".
// Because action names are subjects and also file names in an instance's
// actions/ directory, literal tokens are restricted to ASCII letters, digits,
// '_' and '-'. A pattern may additionally use the token "*" (exactly one
// token) and, as its final token, ">" (one or more remaining tokens).
//
// It also owns the durable subscription registry and queues, in the
// datastore namespaces /subs/in and /queue (see package datastore), built
// on these primitives: Queues stores each publication once, in a publisher
// log with its routing, and derives every subscription's sequence numbers
// from that log, so that fan-out to many subscriptions does not multiply
// datastore writes. After the first failed commit or Sync of the queues,
// Queues reports nothing durable any more and refuses every publication
// (ErrStorageFailed) until it is reopened. Damaged storage costs what it
// held and no more: a damaged log entry is skipped and counted, a damaged
// block of the log is cut out of the datastore at load and as soon as it
// is met while running, a subscription whose own records are damaged is
// dropped at load; damage the queues cannot cut out while running makes
// them refuse every publication (ErrStorageDamaged) until they are
// reopened.
//
// The package knows nothing of libp2p and depends only on the standard
// library, go-datastore's interfaces and package datastore (its errors for
// damaged data, and the cuts of damaged blocks), so it can be used (and
// fuzzed) in isolation.
package topics
