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
//	/queue/<sub-id>/<seq, 20 decimal digits, zero-padded>   encoded Message
//	/queue/<sub-id>/meta                                     encoded queueMeta
//
// "meta" sorts after every digit, so an ordered scan of a queue returns its
// messages in sequence order and then its meta record.
const (
	queueNamespace = "/queue"
	subsNamespace  = "/subs/in"
	metaSuffix     = "meta"
	seqDigits      = 20 // decimal width of the largest uint64
)

// Record format versions; the first byte of every stored value.
const (
	messageCodecV1 = 1
	metaCodecV1    = 1
)

// queuePrefix returns "/queue/<id>/", the prefix of every key of one queue.
func queuePrefix(id string) string {
	return queueNamespace + "/" + id + "/"
}

// subKey returns the key of a subscription record.
func subKey(id string) string {
	return subsNamespace + "/" + id
}

// metaKey returns the key of a queue's meta record.
func metaKey(id string) string {
	return queuePrefix(id) + metaSuffix
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

// appendSeqKey appends the key of message seq in the queue whose prefix
// (from queuePrefix) is prefix.
func appendSeqKey(dst []byte, prefix string, seq uint64) []byte {
	dst = append(dst, prefix...)
	return appendSeq(dst, seq)
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

// splitQueueKey splits "/queue/<id>/<rest>" into id and rest.
func splitQueueKey(key string) (id, rest string, ok bool) {
	const p = queueNamespace + "/"
	if len(key) <= len(p) || key[:len(p)] != p {
		return "", "", false
	}
	tail := key[len(p):]
	for i := 0; i < len(tail); i++ {
		if tail[i] == '/' {
			if i == 0 || i == len(tail)-1 {
				return "", "", false
			}
			return tail[:i], tail[i+1:], true
		}
	}
	return "", "", false
}

// encodedMessageSize returns an upper bound of the encoded size of m, so the
// buffer is allocated once.
func encodedMessageSize(m *Message) int {
	return 1 + binary.MaxVarintLen32 + binary.MaxVarintLen64 + binary.MaxVarintLen32 + len(m.Subject) + len(m.Data)
}

// appendMessage appends the stored form of m to dst and returns the result
// and the offset at which m.Data starts in it:
//
//	version byte | uvarint hop | varint time | uvarint len(subject) | subject | data
//
// Data runs to the end of the value, so it needs no length prefix.
func appendMessage(dst []byte, m *Message) ([]byte, int) {
	dst = append(dst, messageCodecV1)
	dst = binary.AppendUvarint(dst, uint64(m.Hop))
	dst = binary.AppendVarint(dst, m.Time)
	dst = binary.AppendUvarint(dst, uint64(len(m.Subject)))
	dst = append(dst, m.Subject...)
	off := len(dst)
	return append(dst, m.Data...), off
}

// decodeMessage decodes a value written by appendMessage. The returned Data
// aliases b (capacity clipped, so appending to it cannot overwrite b); the
// caller passes a buffer it owns.
func decodeMessage(b []byte) (Message, error) {
	var m Message
	if len(b) == 0 || b[0] != messageCodecV1 {
		return m, fmt.Errorf("%w: unknown message format", ErrCorruptQueue)
	}
	p := 1
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

// queueMeta is the per-queue state that cannot be derived from the message
// keys: the next sequence (the keys may all be gone after acks or drops, and
// a sequence must never be reused), the ack watermark and the counters.
type queueMeta struct {
	next          uint64
	acked         uint64
	dropped       uint64
	delivered     uint64
	redelivered   uint64
	sentMax       uint64
	lastDelivered int64 // unix nanos, 0 if never
}

// appendMeta appends the stored form of m:
//
//	version byte | uvarint next, acked, dropped, delivered, redelivered, sentMax | varint lastDelivered
func appendMeta(dst []byte, m *queueMeta) []byte {
	dst = append(dst, metaCodecV1)
	dst = binary.AppendUvarint(dst, m.next)
	dst = binary.AppendUvarint(dst, m.acked)
	dst = binary.AppendUvarint(dst, m.dropped)
	dst = binary.AppendUvarint(dst, m.delivered)
	dst = binary.AppendUvarint(dst, m.redelivered)
	dst = binary.AppendUvarint(dst, m.sentMax)
	return binary.AppendVarint(dst, m.lastDelivered)
}

// decodeMeta decodes a value written by appendMeta.
func decodeMeta(b []byte) (queueMeta, error) {
	var m queueMeta
	if len(b) == 0 || b[0] != metaCodecV1 {
		return m, fmt.Errorf("%w: unknown queue meta format", ErrCorruptQueue)
	}
	p := 1
	for _, f := range []*uint64{&m.next, &m.acked, &m.dropped, &m.delivered, &m.redelivered, &m.sentMax} {
		v, n := binary.Uvarint(b[p:])
		if n <= 0 {
			return m, fmt.Errorf("%w: truncated queue meta", ErrCorruptQueue)
		}
		*f = v
		p += n
	}
	v, n := binary.Varint(b[p:])
	if n <= 0 || p+n != len(b) {
		return m, fmt.Errorf("%w: truncated queue meta", ErrCorruptQueue)
	}
	m.lastDelivered = v
	if m.next == 0 || m.acked >= m.next {
		return m, fmt.Errorf("%w: queue meta next %d, acked %d", ErrCorruptQueue, m.next, m.acked)
	}
	return m, nil
}
