package wire

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"unsafe"
)

// Binary hot-path messages. Every integer is a uvarint, every string or byte
// string is uvarint(length) followed by the bytes. Decoders check every
// length against the bytes left before slicing, allocate nothing, and call
// back only once the whole payload has been checked, so a malformed frame
// is refused as a whole and never half-processed.

// Publication is one published message.
type Publication struct {
	Subject string
	Data    []byte
	Hop     uint32 // cascade depth, see PerformRequest.Hop
	Time    int64  // unix nanoseconds at the publisher
}

// Delivery is one message of a subscription in a TDeliver frame.
type Delivery struct {
	SubscriptionID string
	Seq            uint64
	Publication
	// Omitted, when not 0, is the length of the data the publisher left
	// out: the publication alone is larger than the subscriber's frames
	// (its max_frame), and Data is empty. The subscriber records it as
	// not delivered instead of waiting for it for ever.
	Omitted uint64
}

// Deliveries payload modes: whether the subscription id is written once for
// the frame or once per item, or (modeOmitted) once for items whose data
// was left out.
const (
	modeShared  = 0
	modePerItem = 1
	modeOmitted = 2
)

// Smallest encodings, used to refuse a count the payload cannot hold before
// looking at any item: subject length, hop, time and data length are one
// byte each at least; a delivery adds a sequence delta and, per item, a
// subscription id length.
const (
	minPublication = 4
	minDelivery    = 1 + minPublication
)

// AppendPublication appends p's encoding:
//
//	str(subject) | uvarint(hop) | uvarint(uint64(time)) | bytes(data)
//
// Time is sent as the uvarint of its two's complement bits, so any int64
// round-trips; real timestamps are positive.
func AppendPublication(dst []byte, p *Publication) []byte {
	dst = appendString(dst, p.Subject)
	dst = binary.AppendUvarint(dst, uint64(p.Hop))
	dst = binary.AppendUvarint(dst, uint64(p.Time))
	return appendBytes(dst, p.Data)
}

// MaxPublishBatch is the most publications a TPublish frame may carry
// (a node refuses more with too_large).
const MaxPublishBatch = 16384

// AppendPublishBatch appends a TPublish payload: uvarint(count) then each
// publication as AppendPublication writes it.
func AppendPublishBatch(dst []byte, ps []Publication) []byte {
	size := binary.MaxVarintLen64
	for i := range ps {
		size += publicationSize(&ps[i])
	}
	dst = slices.Grow(dst, size)
	dst = binary.AppendUvarint(dst, uint64(len(ps)))
	for i := range ps {
		dst = AppendPublication(dst, &ps[i])
	}
	return dst
}

// DecodePublishBatch decodes a TPublish payload and calls fn for each
// publication in order. fn is called only if the whole payload is well
// formed; its first error stops decoding and is returned as is. A nil fn
// only validates.
//
// The *Publication is reused between calls, and its Subject and Data alias
// payload: copy them (strings.Clone, bytes.Clone) to keep them past fn.
func DecodePublishBatch(payload []byte, fn func(*Publication) error) error {
	// One Publication per call, shared by both passes: it escapes to fn, so
	// it is the call's only allocation, whatever the batch size.
	var p Publication
	if err := walkPublishBatch(payload, &p, nil); err != nil {
		return err
	}
	return walkPublishBatch(payload, &p, fn)
}

func walkPublishBatch(b []byte, p *Publication, fn func(*Publication) error) error {
	count, b, ok := uvarint(b)
	if !ok {
		return malformed("publish batch", -1, "count")
	}
	if count > uint64(len(b)/minPublication) {
		return malformed("publish batch", -1, "count exceeds payload")
	}
	for i := range int(count) {
		var field string
		if b, field = decodePublication(b, p); field != "" {
			return malformed("publish batch", i, field)
		}
		if fn != nil {
			if err := fn(p); err != nil {
				return err
			}
		}
	}
	if len(b) != 0 {
		return malformed("publish batch", -1, "trailing bytes")
	}
	return nil
}

// AppendDeliveries appends a TDeliver payload:
//
//	mode byte | uvarint(count) | [mode 0: str(subscription id)] | item*
//	item = [mode 1: str(subscription id)] | uvarint(seq delta) | publication
//
// Mode 0 is used when every delivery belongs to the same subscription, the
// usual case, so the id is written once per frame. Each item's sequence is
// sent as its difference from the previous item's (the first from 0, modulo
// 2^64), so the consecutive sequences of a batch cost one byte each.
//
// Mode 2 is mode 0 for deliveries whose data was left out (Omitted > 0):
// each item's data is empty and followed by uvarint(Omitted). It is used
// when the first delivery has Omitted set; every delivery of such a frame
// must then be of the same subscription and have Omitted set.
func AppendDeliveries(dst []byte, ds []Delivery) []byte {
	mode := byte(modeShared)
	var shared string
	if len(ds) > 0 {
		shared = ds[0].SubscriptionID
		if ds[0].Omitted > 0 {
			mode = modeOmitted
		}
		for i := 1; i < len(ds) && mode == modeShared; i++ {
			if ds[i].SubscriptionID != shared {
				mode = modePerItem
			}
		}
	}
	size := 1 + 2*binary.MaxVarintLen64 + len(shared)
	for i := range ds {
		size += binary.MaxVarintLen64 + publicationSize(&ds[i].Publication)
		if mode == modePerItem {
			size += binary.MaxVarintLen64 + len(ds[i].SubscriptionID)
		}
	}
	dst = slices.Grow(dst, size)
	dst = append(dst, mode)
	dst = binary.AppendUvarint(dst, uint64(len(ds)))
	if mode != modePerItem {
		dst = appendString(dst, shared)
	}
	var prev uint64
	for i := range ds {
		d := &ds[i]
		if mode == modePerItem {
			dst = appendString(dst, d.SubscriptionID)
		}
		dst = binary.AppendUvarint(dst, d.Seq-prev)
		prev = d.Seq
		if mode == modeOmitted {
			p := d.Publication
			p.Data = nil
			dst = AppendPublication(dst, &p)
			dst = binary.AppendUvarint(dst, d.Omitted)
			continue
		}
		dst = AppendPublication(dst, &d.Publication)
	}
	return dst
}

// DecodeDeliveries decodes a TDeliver payload and calls fn for each delivery
// in order. fn is called only if the whole payload is well formed; its
// first error stops decoding and is returned as is. A nil fn only validates.
//
// The *Delivery is reused between calls, and its SubscriptionID, Subject and
// Data alias payload (which a Reader overwrites on its next frame): copy
// them to keep them past fn.
func DecodeDeliveries(payload []byte, fn func(*Delivery) error) error {
	var d Delivery // the call's only allocation, see DecodePublishBatch
	if err := walkDeliveries(payload, &d, nil); err != nil {
		return err
	}
	d = Delivery{}
	return walkDeliveries(payload, &d, fn)
}

func walkDeliveries(b []byte, d *Delivery, fn func(*Delivery) error) error {
	if len(b) == 0 {
		return malformed("deliveries", -1, "mode")
	}
	mode := b[0]
	if mode != modeShared && mode != modePerItem && mode != modeOmitted {
		return malformed("deliveries", -1, fmt.Sprintf("unknown mode %d", mode))
	}
	count, b, ok := uvarint(b[1:])
	if !ok {
		return malformed("deliveries", -1, "count")
	}
	// The shared id and the running seq live here, not in *d: what fn
	// does to *d must not change the items after it.
	minItem := minDelivery
	var id string
	if mode != modePerItem {
		if id, b, ok = str(b); !ok {
			return malformed("deliveries", -1, "subscription id")
		}
	} else {
		minItem++
	}
	if count > uint64(len(b)/minItem) {
		return malformed("deliveries", -1, "count exceeds payload")
	}
	var seq uint64
	for i := range int(count) {
		if mode == modePerItem {
			if id, b, ok = str(b); !ok {
				return malformed("deliveries", i, "subscription id")
			}
		}
		var delta uint64
		if delta, b, ok = uvarint(b); !ok {
			return malformed("deliveries", i, "seq")
		}
		seq += delta
		d.SubscriptionID, d.Seq = id, seq
		var field string
		if b, field = decodePublication(b, &d.Publication); field != "" {
			return malformed("deliveries", i, field)
		}
		d.Omitted = 0
		if mode == modeOmitted {
			if len(d.Data) != 0 {
				return malformed("deliveries", i, "data of an omitted publication")
			}
			if d.Omitted, b, ok = uvarint(b); !ok || d.Omitted == 0 {
				return malformed("deliveries", i, "omitted length")
			}
		}
		if fn != nil {
			if err := fn(d); err != nil {
				return err
			}
		}
	}
	if len(b) != 0 {
		return malformed("deliveries", -1, "trailing bytes")
	}
	return nil
}

// AppendAck appends a TAck payload: str(subscription id) | uvarint(seq). The
// ack is cumulative: every delivery of the subscription up to and including
// seq has been processed.
func AppendAck(dst []byte, subscriptionID string, seq uint64) []byte {
	dst = appendString(dst, subscriptionID)
	return binary.AppendUvarint(dst, seq)
}

// DecodeAck decodes a TAck payload. The subscription id aliases payload.
func DecodeAck(payload []byte) (subscriptionID string, seq uint64, err error) {
	id, b, ok := str(payload)
	if !ok {
		return "", 0, malformed("ack", -1, "subscription id")
	}
	if seq, b, ok = uvarint(b); !ok {
		return "", 0, malformed("ack", -1, "seq")
	}
	if len(b) != 0 {
		return "", 0, malformed("ack", -1, "trailing bytes")
	}
	return id, seq, nil
}

// decodePublication decodes one publication from the front of b and returns
// the rest, or the name of the field that did not decode.
func decodePublication(b []byte, p *Publication) ([]byte, string) {
	var ok bool
	if p.Subject, b, ok = str(b); !ok {
		return nil, "subject"
	}
	var hop, t uint64
	if hop, b, ok = uvarint(b); !ok || hop > math.MaxUint32 {
		return nil, "hop"
	}
	p.Hop = uint32(hop)
	if t, b, ok = uvarint(b); !ok {
		return nil, "time"
	}
	p.Time = int64(t)
	if p.Data, b, ok = byteString(b); !ok {
		return nil, "data"
	}
	return b, ""
}

func publicationSize(p *Publication) int {
	return 4*binary.MaxVarintLen64 + len(p.Subject) + len(p.Data)
}

func malformed(what string, item int, field string) error {
	if item < 0 {
		return fmt.Errorf("%w: %s: %s", ErrMalformed, what, field)
	}
	return fmt.Errorf("%w: %s: item %d: %s", ErrMalformed, what, item, field)
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func appendBytes(dst []byte, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

func uvarint(b []byte) (uint64, []byte, bool) {
	// Single-byte fast path: most lengths, deltas and hops are below 128.
	if len(b) > 0 && b[0] < 0x80 {
		return uint64(b[0]), b[1:], true
	}
	v, n := binary.Uvarint(b)
	if n <= 0 {
		return 0, nil, false
	}
	return v, b[n:], true
}

// byteString returns the length-prefixed bytes at the front of b, with
// capacity clipped so that a caller's append cannot overwrite the payload
// that follows.
func byteString(b []byte) ([]byte, []byte, bool) {
	n, b, ok := uvarint(b)
	if !ok || n > uint64(len(b)) {
		return nil, nil, false
	}
	if n == 0 {
		return nil, b, true
	}
	return b[:n:n], b[n:], true
}

// str is byteString as a string that aliases b instead of copying it: the
// copy would be the one allocation per message on the delivery path.
func str(b []byte) (string, []byte, bool) {
	s, rest, ok := byteString(b)
	if !ok {
		return "", nil, false
	}
	if len(s) == 0 {
		return "", rest, true
	}
	return unsafe.String(&s[0], len(s)), rest, true
}
