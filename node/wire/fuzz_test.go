package wire_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"

	"github.com/coattail/coattail/node/wire"
)

// Each fuzzer checks two things: decoding arbitrary bytes never panics, and
// whatever decodes successfully re-encodes to something that decodes to the
// same value.

func FuzzReader(f *testing.F) {
	for _, fr := range sampleFrames()[:4] {
		f.Add(wire.AppendFrame(nil, fr.t, fr.payload))
	}
	f.Add([]byte{0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f, 1})
	f.Add(wire.AppendFrame(wire.AppendFrame(nil, wire.Type(77), []byte("x")), wire.TOK, []byte("{}")))
	f.Fuzz(func(t *testing.T, data []byte) {
		const limit = 1 << 16
		r := wire.NewReader(bytes.NewReader(data), limit)
		var frames []frame
		for range len(data) + 1 { // every frame consumes at least one byte
			typ, p, err := r.Next()
			if errors.Is(err, wire.ErrEmptyFrame) || errors.Is(err, wire.ErrUnknownType) {
				continue
			}
			if err != nil {
				break
			}
			if len(p)+1 > limit || !typ.Valid() {
				t.Fatalf("Reader returned %s frame of %d bytes past its checks", typ, len(p))
			}
			frames = append(frames, frame{typ, bytes.Clone(p)})
		}
		var again []byte
		for _, fr := range frames {
			again = wire.AppendFrame(again, fr.t, fr.payload)
		}
		got, err := readAll(wire.NewReader(bytes.NewReader(again), limit))
		if err != io.EOF || !equalFrames(got, frames) {
			t.Fatalf("re-encoded frames do not read back: %v", err)
		}
	})
}

func FuzzDecodeDeliveries(f *testing.F) {
	f.Add(wire.AppendDeliveries(nil, makeDeliveries("sub", 1, 3, 4)))
	f.Add(wire.AppendDeliveries(nil, edgeDeliveries()))
	f.Add(wire.AppendDeliveries(nil, nil))
	f.Add(wire.AppendDeliveries(nil, []wire.Delivery{{SubscriptionID: "s", Seq: 2, Publication: wire.Publication{Subject: "a"}, Omitted: 1 << 21}}))
	f.Add([]byte{1, 1, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		var ds []wire.Delivery
		err := wire.DecodeDeliveries(data, func(d *wire.Delivery) error {
			ds = append(ds, cloneDelivery(d))
			return nil
		})
		if err != nil {
			if !errors.Is(err, wire.ErrMalformed) || len(ds) != 0 {
				t.Fatalf("failed decode: %v after %d callbacks", err, len(ds))
			}
			return
		}
		if got := collectDeliveries(t, wire.AppendDeliveries(nil, ds)); !equalDeliveries(got, ds) {
			t.Fatalf("re-encoded deliveries differ")
		}
	})
}

func FuzzDecodeAck(f *testing.F) {
	f.Add(wire.AppendAck(nil, "sub-1", 42))
	f.Add(wire.AppendAck(nil, "", 1<<63))
	f.Fuzz(func(t *testing.T, data []byte) {
		id, seq, err := wire.DecodeAck(data)
		if err != nil {
			if !errors.Is(err, wire.ErrMalformed) {
				t.Fatalf("unwrapped error: %v", err)
			}
			return
		}
		id = string([]byte(id)) // detach from data before re-encoding
		id2, seq2, err := wire.DecodeAck(wire.AppendAck(nil, id, seq))
		if err != nil || id2 != id || seq2 != seq {
			t.Fatalf("re-encoded ack: %q %d %v, want %q %d", id2, seq2, err, id, seq)
		}
	})
}

func FuzzDecodePublishBatch(f *testing.F) {
	f.Add(wire.AppendPublishBatch(nil, []wire.Publication{{Subject: "a.b", Data: []byte("{}"), Hop: 1, Time: 5}}))
	f.Add(wire.AppendPublishBatch(nil, nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		var ps []wire.Publication
		err := wire.DecodePublishBatch(data, func(p *wire.Publication) error {
			ps = append(ps, clonePublication(p))
			return nil
		})
		if err != nil {
			if !errors.Is(err, wire.ErrMalformed) || len(ps) != 0 {
				t.Fatalf("failed decode: %v after %d callbacks", err, len(ps))
			}
			return
		}
		var got []wire.Publication
		if err := wire.DecodePublishBatch(wire.AppendPublishBatch(nil, ps), func(p *wire.Publication) error {
			got = append(got, clonePublication(p))
			return nil
		}); err != nil || !equalPublications(got, ps) {
			t.Fatalf("re-encoded batch differs: %v", err)
		}
	})
}

// FuzzDecodeJSON decodes the input as every control message. Equality is
// checked on the canonical encoding because JSON has several spellings of
// one value (whitespace inside raw input, [] versus an omitted list).
func FuzzDecodeJSON(f *testing.F) {
	f.Add([]byte(`{"token":"t","version":"1.0.0"}`))
	f.Add([]byte(`{"action":"a","input":{ "x" : [1, 2] },"notify":true,"hop":1,"to":[]}`))
	f.Add([]byte(`{"subscription_id":"s","pattern":"a.>","receiver":"r","resume_after":3,"window":8}`))
	f.Add([]byte(`{"code":"forbidden","message":"m","retry_after_ms":5}`))
	f.Add([]byte(`{"actions":[{"name":"x","performable":true}]}`))
	f.Add([]byte(`{"version":"1.0.0","subscription_ids":["a"]} `))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, mk := range []func() any{
			func() any { return new(wire.Hello) },
			func() any { return new(wire.OK) },
			func() any { return new(wire.ListRequest) },
			func() any { return new(wire.ListResponse) },
			func() any { return new(wire.PerformRequest) },
			func() any { return new(wire.PerformResult) },
			func() any { return new(wire.PublishResult) },
			func() any { return new(wire.Log) },
			func() any { return new(wire.SubscribeRequest) },
			func() any { return new(wire.SubscribeResponse) },
			func() any { return new(wire.UnsubscribeRequest) },
			func() any { return new(wire.RevokeNotice) },
			func() any { return new(wire.DeliverHello) },
			func() any { return new(wire.Error) },
		} {
			v := mk()
			if err := wire.DecodeJSON(data, v); err != nil {
				if !errors.Is(err, wire.ErrMalformed) {
					t.Fatalf("%T: unwrapped error %v", v, err)
				}
				continue
			}
			enc1, err := json.Marshal(v)
			if err != nil {
				t.Fatalf("%T: decoded value does not encode: %v", v, err)
			}
			v2 := mk()
			if err := wire.DecodeJSON(enc1, v2); err != nil {
				t.Fatalf("%T: own encoding %s refused: %v", v, enc1, err)
			}
			enc2, err := json.Marshal(v2)
			if err != nil || !bytes.Equal(enc1, enc2) {
				t.Fatalf("%T: %s re-decoded as %s (%v)", v, enc1, enc2, err)
			}
		}
	})
}
