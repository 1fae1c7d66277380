// Package wire owns the byte-level format of every Coattail libp2p protocol:
// the protocol IDs, the length-prefixed frame, the JSON control messages, the
// binary hot-path messages (publications, deliveries, acks) and the typed
// errors that cross the wire.
//
// It reads and writes plain io.Reader and io.Writer values and knows nothing
// of libp2p streams, so a test can drive it through io.Pipe and any transport
// can carry it. Authorization, deadlines, rate limits and the stream
// sequences themselves are enforced by package node; docs/PROTOCOL.md is the
// normative description of both halves.
//
// The hot path (TDeliver, TAck, TPublish) is encoded with append-style
// functions and decoded without reflection or per-message allocation:
// decoded strings and byte slices alias the frame payload, which the Reader
// reuses, so a caller that retains them must copy them first.
package wire

// Version is the wire version this package speaks. Every protocol ID below
// ends in it, and Hello and DeliverHello carry it.
const Version = "1.0.0"

// Protocol IDs, one per operation. They are untyped so they convert to
// libp2p's protocol.ID without this package importing libp2p.
const (
	ProtoList        = "/coattail/list/" + Version
	ProtoPerform     = "/coattail/perform/" + Version
	ProtoPublish     = "/coattail/publish/" + Version
	ProtoSubscribe   = "/coattail/subscribe/" + Version
	ProtoUnsubscribe = "/coattail/unsubscribe/" + Version
	ProtoDeliver     = "/coattail/deliver/" + Version
	ProtoRevoke      = "/coattail/revoke/" + Version
)

// Protocols lists every protocol ID of this version, in a stable order, so a
// host can register or advertise them together.
func Protocols() []string {
	return []string{ProtoList, ProtoPerform, ProtoPublish, ProtoSubscribe, ProtoUnsubscribe, ProtoDeliver, ProtoRevoke}
}
