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
// (ErrStorageFailed) until it is reopened.
//
// The package knows nothing of libp2p and depends only on the standard
// library and go-datastore's interfaces, so it can be used (and fuzzed) in
// isolation.
package topics
