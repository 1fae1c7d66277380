package topics

import (
	"encoding/binary"
	"fmt"
)

// The codec here is append-style and hand-rolled rather than JSON or gob
// because it runs once per publication on the publish hot path: encoding
// appends into a caller-sized buffer without reflection, and decoding
// aliases the payload instead of copying it.

// Key layout under the /queue namespace (see package datastore):
//
//	/queue/log/<pos, 20 decimal digits, zero-padded>   encoded log entry
//	/queue/sub/<sub-id>                                encoded subMeta
//
// Every publication is stored once, as a log entry at the next global log
// position, whatever number of subscriptions it was routed to; a
// subscription's own sequence numbers are derived from the log (see
// Queues). Zero-padded positions make byte order, which pebble iterates
// in, numeric order.
const (
	queueNamespace = "/queue"
	subsNamespace  = "/subs/in"
	logPrefix      = queueNamespace + "/log/"
	subMetaPrefix  = queueNamespace + "/sub/"
	seqDigits      = 20 // decimal width of the largest uint64
)

// Record format versions; the first byte of every stored value.
const (
	logCodecV1     = 1
	subMetaCodecV1 = 1
	// subMetaCodecV2 is V1 with the corruption counters appended. A state
	// whose counters are zero is written as V1, which coattail releases
	// before V2 read too.
	subMetaCodecV2 = 2
)

// Routing of a log entry: which subscriptions it was queued for.
const (
	// routeMatching: every subscription whose pattern matches the subject
	// and that existed when the entry was logged (start <= position). It
	// is the common case and costs one byte.
	routeMatching = 0
	// routeListed: exactly the listed subscription ids (a publication
	// restricted with a filter, or one whose subscriptions changed between
	// routing and logging).
	routeListed = 1
)

// logKey appends the key of log position pos.
func appendLogKey(dst []byte, pos uint64) []byte {
	dst = append(dst, logPrefix...)
	return appendSeq(dst, pos)
}

// subMetaKey returns the key of a subscription's queue state.
func subMetaKey(id string) string {
	return subMetaPrefix + id
}

// subKey returns the key of a subscription record.
func subKey(id string) string {
	return subsNamespace + "/" + id
}

// appendSeq appends seq as exactly seqDigits decimal digits, so that byte
// order equals numeric order.
func appendSeq(dst []byte, seq uint64) []byte {
	var buf [seqDigits]byte
	for i := seqDigits - 1; i >= 0; i-- {
		buf[i] = byte('0' + seq%10)
		seq /= 10
	}
	return append(dst, buf[:]...)
}

// parseSeq parses a seqDigits-wide decimal sequence number.
func parseSeq(s string) (uint64, bool) {
	if len(s) != seqDigits {
		return 0, false
	}
	var v uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (^uint64(0)-d)/10 {
			return 0, false // overflows uint64
		}
		v = v*10 + d
	}
	return v, true
}

// encodedEntrySize returns an upper bound of the encoded size of a log
// entry for m routed to ids (nil for routeMatching), so the buffer is
// allocated once.
func encodedEntrySize(m *Message, ids []string) int {
	n := 2 + binary.MaxVarintLen32 + binary.MaxVarintLen64 + binary.MaxVarintLen32 + len(m.Subject) + len(m.Data)
	if ids != nil {
		n += binary.MaxVarintLen32
		for _, id := range ids {
			n += binary.MaxVarintLen32 + len(id)
		}
	}
	return n
}

// appendEntry appends the stored form of a log entry and returns the result
// and the offset at which m.Data starts in it:
//
//	version byte | route byte | [uvarint count | (uvarint len | id)...] |
//	uvarint hop | varint time | uvarint len(subject) | subject | data
//
// The id list is present only for routeListed (ids != nil). Data runs to
// the end of the value, so it needs no length prefix.
func appendEntry(dst []byte, m *Message, ids []string) ([]byte, int) {
	dst = append(dst, logCodecV1)
	if ids == nil {
		dst = append(dst, routeMatching)
	} else {
		dst = append(dst, routeListed)
		dst = binary.AppendUvarint(dst, uint64(len(ids)))
		for _, id := range ids {
			dst = binary.AppendUvarint(dst, uint64(len(id)))
			dst = append(dst, id...)
		}
	}
	dst = binary.AppendUvarint(dst, uint64(m.Hop))
	dst = binary.AppendVarint(dst, m.Time)
	dst = binary.AppendUvarint(dst, uint64(len(m.Subject)))
	dst = append(dst, m.Subject...)
	off := len(dst)
	return append(dst, m.Data...), off
}

// logEntry is a decoded log entry. Message.Data aliases the decoded value.
type logEntry struct {
	Message
	listed bool
	ids    []string // routeListed only
	// routed: the routing decoded, even if the rest did not (a listed
	// entry whose message is damaged): which subscriptions it was queued
	// for is known.
	routed bool
}

// decodeEntry decodes a value written by appendEntry. The returned Data
// aliases b (capacity clipped, so appending to it cannot overwrite b); the
// caller passes a buffer it owns. With skipIDs the id list is validated
// but not materialised (readers of a message do not need it).
func decodeEntry(b []byte, skipIDs bool) (logEntry, error) {
	var e logEntry
	if len(b) < 2 || b[0] != logCodecV1 {
		if string(b) == lostEntry {
			return e, errLostEntry
		}
		if n := len(lostEntry); len(b) > n && string(b[:n]) == lostEntry && b[n] == routeListed {
			// A lost entry whose routing is known (appendLostEntry):
			// whole, or its routing is not known after all.
			ids, p, err := decodeIDs(b, n+1, skipIDs)
			if err != nil {
				return logEntry{}, err
			}
			if p != len(b) {
				return logEntry{}, fmt.Errorf("%w: %d bytes after a lost entry's route", ErrCorruptQueue, len(b)-p)
			}
			e.listed, e.ids = true, ids
			e.routed = !skipIDs
			return e, errLostEntry
		}
		return e, fmt.Errorf("%w: unknown log entry format", ErrCorruptQueue)
	}
	p := 2
	switch b[1] {
	case routeMatching:
	case routeListed:
		e.listed = true
		var err error
		if e.ids, p, err = decodeIDs(b, p, skipIDs); err != nil {
			e.ids = nil
			return e, err
		}
	default:
		return e, fmt.Errorf("%w: unknown route kind %d", ErrCorruptQueue, b[1])
	}
	e.routed = e.listed && !skipIDs
	m, err := decodeBody(b, p)
	e.Message = m
	if err == nil {
		e.routed = true
	}
	return e, err
}

// decodeIDs decodes the subscription ids of a listed route starting at
// b[p:] (returning none with skipIDs), and returns the offset after them.
func decodeIDs(b []byte, p int, skipIDs bool) ([]string, int, error) {
	cnt, n := binary.Uvarint(b[p:])
	if n <= 0 || cnt > uint64(len(b)) {
		return nil, p, fmt.Errorf("%w: bad route count", ErrCorruptQueue)
	}
	p += n
	var ids []string
	if !skipIDs {
		ids = make([]string, 0, cnt)
	}
	for range cnt {
		l, n := binary.Uvarint(b[p:])
		if n <= 0 || l > uint64(len(b)-p-n) {
			return nil, p, fmt.Errorf("%w: bad route id", ErrCorruptQueue)
		}
		p += n
		if !skipIDs {
			ids = append(ids, string(b[p:p+int(l)]))
		}
		p += int(l)
	}
	return ids, p, nil
}

// appendLostEntry appends lostEntry for a lost publication that was
// queued for the subscriptions ids (cut out while the queues ran, when
// they know its routing): lostEntry, routeListed and the ids as
// appendEntry writes them. A load numbers it for those subscriptions
// only. (An older coattail, which does not know it, takes it for an
// entry of unknown routing, as lostEntry.)
func appendLostEntry(dst []byte, ids []string) []byte {
	dst = append(dst, lostEntry...)
	dst = append(dst, routeListed)
	dst = binary.AppendUvarint(dst, uint64(len(ids)))
	for _, id := range ids {
		dst = binary.AppendUvarint(dst, uint64(len(id)))
		dst = append(dst, id...)
	}
	return dst
}

// decodeBody decodes hop, time, subject and data starting at b[p:].
func decodeBody(b []byte, p int) (Message, error) {
	var m Message
	hop, n := binary.Uvarint(b[p:])
	if n <= 0 || hop > uint64(^uint32(0)) {
		return m, fmt.Errorf("%w: bad hop count", ErrCorruptQueue)
	}
	p += n
	t, n := binary.Varint(b[p:])
	if n <= 0 {
		return m, fmt.Errorf("%w: bad time", ErrCorruptQueue)
	}
	p += n
	sl, n := binary.Uvarint(b[p:])
	if n <= 0 || sl > uint64(len(b)-p-n) {
		return m, fmt.Errorf("%w: bad subject length", ErrCorruptQueue)
	}
	p += n
	m.Subject = string(b[p : p+int(sl)])
	p += int(sl)
	m.Hop = uint32(hop)
	m.Time = t
	m.Data = b[p:len(b):len(b)]
	return m, nil
}

// subMeta is the per-subscription state that cannot be derived from the
// log: where the subscription starts in it, how far it no longer needs it,
// the ack watermark and the counters.
//
// Every log entry at a position <= baseG that was routed to the
// subscription has a sequence <= baseSeq and is acknowledged or dropped;
// every entry routed to it above baseG is still in the log. So on restart
// the sequence of each later entry is baseSeq plus its rank among the
// subscription's entries above baseG. The record is rewritten in the same
// batch as any deletion of log entries it no longer needs, which keeps
// that invariant across crashes.
type subMeta struct {
	start         uint64 // first log position it may be routed (creation)
	baseG         uint64
	baseSeq       uint64
	acked         uint64
	dropped       uint64
	delivered     uint64
	redelivered   uint64
	sentMax       uint64
	lastDelivered int64 // unix nanos, 0 if never
	// corrupt counts the subscription's publications lost because their
	// log entry was unreadable; corruptSeen is the highest sequence
	// counted, so that one still stored is not counted again at a restart.
	corrupt, corruptSeen uint64
}

// subMetaMaxLen is the longest encoding of a subMeta.
const subMetaMaxLen = 1 + 10*binary.MaxVarintLen64 + binary.MaxVarintLen64

// appendSubMeta appends the stored form of m:
//
//	version byte | uvarint start, baseG, baseSeq, acked, dropped, delivered,
//	redelivered, sentMax | varint lastDelivered | V2: uvarint corrupt, corruptSeen
func appendSubMeta(dst []byte, m *subMeta) []byte {
	v2 := m.corrupt != 0 || m.corruptSeen != 0
	if v2 {
		dst = append(dst, subMetaCodecV2)
	} else {
		dst = append(dst, subMetaCodecV1)
	}
	for _, v := range [...]uint64{m.start, m.baseG, m.baseSeq, m.acked, m.dropped, m.delivered, m.redelivered, m.sentMax} {
		dst = binary.AppendUvarint(dst, v)
	}
	dst = binary.AppendVarint(dst, m.lastDelivered)
	if v2 {
		dst = binary.AppendUvarint(dst, m.corrupt)
		dst = binary.AppendUvarint(dst, m.corruptSeen)
	}
	return dst
}

// decodeSubMeta decodes a value written by appendSubMeta.
func decodeSubMeta(b []byte) (subMeta, error) {
	var m subMeta
	if len(b) == 0 || b[0] != subMetaCodecV1 && b[0] != subMetaCodecV2 {
		return m, fmt.Errorf("%w: unknown subscription state format", ErrCorruptQueue)
	}
	p := 1
	for _, f := range []*uint64{&m.start, &m.baseG, &m.baseSeq, &m.acked, &m.dropped, &m.delivered, &m.redelivered, &m.sentMax} {
		v, n := binary.Uvarint(b[p:])
		if n <= 0 {
			return m, fmt.Errorf("%w: truncated subscription state", ErrCorruptQueue)
		}
		*f = v
		p += n
	}
	v, n := binary.Varint(b[p:])
	if n <= 0 {
		return m, fmt.Errorf("%w: truncated subscription state", ErrCorruptQueue)
	}
	p += n
	m.lastDelivered = v
	if b[0] == subMetaCodecV2 {
		for _, f := range []*uint64{&m.corrupt, &m.corruptSeen} {
			v, n := binary.Uvarint(b[p:])
			if n <= 0 {
				return m, fmt.Errorf("%w: truncated subscription state", ErrCorruptQueue)
			}
			*f = v
			p += n
		}
	}
	if p != len(b) {
		return m, fmt.Errorf("%w: truncated subscription state", ErrCorruptQueue)
	}
	if m.start == 0 || m.baseG+1 < m.start {
		return m, fmt.Errorf("%w: subscription state start %d, base %d", ErrCorruptQueue, m.start, m.baseG)
	}
	return m, nil
}
