package node

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/coattail/coattail/node/wire"
)

// writeDeliveries splits a batch whose frame would be over the
// subscriber's limit into frames within it, keeping every delivery once,
// in order; a delivery alone over the limit still goes alone.
func TestWriteDeliveriesSplitsToTheLimit(t *testing.T) {
	const maxFrame = 4096
	var ds []wire.Delivery
	for i := range 100 {
		ds = append(ds, wire.Delivery{SubscriptionID: "s", Seq: uint64(i + 1),
			Publication: wire.Publication{Subject: "a.b", Data: []byte(`"` + strings.Repeat("x", 10+i*3) + `"`)}})
	}
	var out bytes.Buffer
	w := wire.NewWriter(&out)
	if _, err := writeDeliveries(w, nil, ds, maxFrame); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	r := wire.NewReader(&out, 1<<20)
	var seqs []uint64
	frames := 0
	for {
		typ, payload, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		frames++
		if typ != wire.TDeliver || 1+len(payload) > maxFrame {
			t.Fatalf("frame %d: type %v, %d bytes; want a TDeliver frame of at most %d", frames, typ, 1+len(payload), maxFrame)
		}
		if err := wire.DecodeDeliveries(payload, func(d *wire.Delivery) error {
			seqs = append(seqs, d.Seq)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if frames < 2 || len(seqs) != len(ds) {
		t.Fatalf("%d frames carried %d deliveries, want several frames carrying %d", frames, len(seqs), len(ds))
	}
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("delivery %d has seq %d: not each once, in order", i, s)
		}
	}

	out.Reset()
	big := []wire.Delivery{{SubscriptionID: "s", Seq: 7, Publication: wire.Publication{Subject: "a", Data: bytes.Repeat([]byte("1"), maxFrame)}}}
	if _, err := writeDeliveries(w, nil, big, maxFrame); err != nil {
		t.Fatal(err)
	}
	_ = w.Flush()
	if _, payload, err := wire.NewReader(&out, 1<<20).Next(); err != nil || len(payload) <= maxFrame {
		t.Fatalf("a delivery over the limit: %d bytes, %v; want it alone in its frame", len(payload), err)
	}
}
