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

import "strings"

// Version is the wire version of every protocol this package speaks. Every
// protocol ID below ends in a version, and Hello and DeliverHello carry the
// version of their stream's protocol ID.
const Version = "1.0.0"

// Version11 is the second version of subscribe, publish and revoke, served
// beside their 1.0.0 (docs/PROTOCOL.md, "Versioning"). On subscribe and
// publish it adds frame limits: on subscribe, SubscribeRequest.MaxFrame and
// TDeliver mode 2 (a publication sent without its data); on both, the
// acceptor's OK.MaxFrame in answer to the hello. On revoke it adds
// RevokeNotice.TokenID and RevokedAt: the issuer of a token tells its
// holder that the token was revoked.
const Version11 = "1.1.0"

// Version12 is the third version of publish, served beside its 1.1.0 and
// 1.0.0: what 1.1.0 has, and PublishResult.Dropped. Version11 of perform,
// served beside its 1.0.0, adds PerformResult.Dropped. Both say how many
// undelivered queue entries a publication pushed out of full queues
// (drop_oldest); JSON decoding is strict, so an older opener must not be
// sent the key (docs/PROTOCOL.md, "Versioning").
const Version12 = "1.2.0"

// Version13 is the fourth version of publish, served beside the older
// ones: what 1.2.0 has, and Error.Item in the TError that refuses a batch
// for one of its publications (over the acceptor's max_payload, not JSON
// in UTF-8), so that the publisher knows which one it was; an older
// opener must not be sent the key (docs/PROTOCOL.md, "Versioning").
const Version13 = "1.3.0"

// Protocol IDs, one per operation and version. They are untyped so they
// convert to libp2p's protocol.ID without this package importing libp2p.
const (
	ProtoList        = "/coattail/list/" + Version
	ProtoPerform     = "/coattail/perform/" + Version
	ProtoPublish     = "/coattail/publish/" + Version
	ProtoSubscribe   = "/coattail/subscribe/" + Version
	ProtoUnsubscribe = "/coattail/unsubscribe/" + Version
	ProtoDeliver     = "/coattail/deliver/" + Version
	ProtoRevoke      = "/coattail/revoke/" + Version

	ProtoPublish11   = "/coattail/publish/" + Version11
	ProtoSubscribe11 = "/coattail/subscribe/" + Version11
	ProtoRevoke11    = "/coattail/revoke/" + Version11
	ProtoPerform11   = "/coattail/perform/" + Version11

	ProtoPublish12 = "/coattail/publish/" + Version12

	ProtoPublish13 = "/coattail/publish/" + Version13
)

// Protocols lists every protocol ID this package speaks, in a stable order,
// so a host can register or advertise them together.
func Protocols() []string {
	return []string{ProtoList, ProtoPerform, ProtoPublish, ProtoSubscribe, ProtoUnsubscribe, ProtoDeliver, ProtoRevoke, ProtoPublish11, ProtoSubscribe11, ProtoRevoke11, ProtoPerform11, ProtoPublish12, ProtoPublish13}
}

// VersionOf returns the version a protocol ID ends in ("" for an ID that
// is not /coattail/<op>/<version>).
func VersionOf(id string) string {
	rest, ok := strings.CutPrefix(id, "/coattail/")
	if !ok {
		return ""
	}
	i := strings.IndexByte(rest, '/')
	if i < 1 || i == len(rest)-1 {
		return ""
	}
	return rest[i+1:]
}

// Newest returns the protocol IDs to offer for an operation given by its
// 1.0.0 ID, newest version first: the opener of a stream offers them all
// and the acceptor picks the newest it serves.
func Newest(id string) []string {
	switch id {
	case ProtoSubscribe:
		return []string{ProtoSubscribe11, ProtoSubscribe}
	case ProtoPublish:
		return []string{ProtoPublish13, ProtoPublish12, ProtoPublish11, ProtoPublish}
	case ProtoPerform:
		return []string{ProtoPerform11, ProtoPerform}
	}
	return []string{id}
}
