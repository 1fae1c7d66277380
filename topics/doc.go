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
// The package depends on the standard library only and knows nothing of
// libp2p, so it can be used (and fuzzed) in isolation. The subscription
// registry and queues that live in the datastore namespaces /subs/in and
// /queue (see package datastore) are built on top of these primitives:
// Queues stores each publication once, in a publisher log with its routing,
// and derives every subscription's sequence numbers from that log, so that
// fan-out to many subscriptions does not multiply datastore writes.
package topics
