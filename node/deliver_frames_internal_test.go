package node

import (
	"bytes"
	"errors"
	"io"
	"math"
	"strings"
	"testing"

	"github.com/coattail/coattail/node/wire"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
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
	if _, err := writeDeliveries(w, nil, ds, maxFrame, true, func(d *wire.Delivery) { t.Errorf("delivery %d omitted", d.Seq) }); err != nil {
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

	// A delivery too large for a frame of its own goes without its data,
	// in its own frame; those around it go whole.
	out.Reset()
	big := []wire.Delivery{ds[0], {SubscriptionID: "s", Seq: 7, Publication: wire.Publication{Subject: "a", Data: bytes.Repeat([]byte("1"), maxFrame)}}, ds[1]}
	var omitted []uint64
	if _, err := writeDeliveries(w, nil, big, maxFrame, true, func(d *wire.Delivery) { omitted = append(omitted, d.Seq) }); err != nil {
		t.Fatal(err)
	}
	_ = w.Flush()
	if len(omitted) != 1 || omitted[0] != 7 || len(big[1].Data) != maxFrame {
		t.Fatalf("omitted %v (want [7]); the caller's delivery has %d bytes of data left (want it untouched)", omitted, len(big[1].Data))
	}
	var got []wire.Delivery
	r = wire.NewReader(&out, maxFrame)
	for range 3 {
		_, payload, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if err := wire.DecodeDeliveries(payload, func(d *wire.Delivery) error {
			got = append(got, wire.Delivery{Seq: d.Seq, Omitted: d.Omitted, Publication: wire.Publication{Data: bytes.Clone(d.Data)}})
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != 3 || got[0].Seq != 1 || got[0].Omitted != 0 || !bytes.Equal(got[0].Data, ds[0].Data) ||
		got[1].Seq != 7 || got[1].Omitted != uint64(maxFrame) || len(got[1].Data) != 0 ||
		got[2].Seq != 2 || got[2].Omitted != 0 || !bytes.Equal(got[2].Data, ds[1].Data) {
		t.Fatalf("frames carried %+v; want seq 1 whole, seq 7 without its %d bytes, seq 2 whole", got, maxFrame)
	}
}

// statConn is a connection that only reports its stats.
type statConn struct {
	network.Conn
	stat network.ConnStats
}

func (c statConn) Stat() network.ConnStats { return c.stat }

// circuitFrameLimit leaves circuitMargin of a relay's data limit for what
// else crosses a circuit, half of a small limit, and nothing to limit
// when the relay set no data limit.
func TestCircuitFrameLimit(t *testing.T) {
	limited := func(data any) network.Conn {
		st := network.ConnStats{}
		st.Limited = true
		st.Extra = map[any]any{client.StatLimitData: data}
		return statConn{stat: st}
	}
	for _, tc := range []struct {
		c    network.Conn
		want int
	}{
		{limited(uint64(128 << 10)), 128<<10 - circuitMargin},
		{limited(uint64(20 << 10)), 10 << 10},
		{limited(uint64(1)), 1},
		{limited(uint64(0)), 0},
		{limited("not a number"), 0},
		{statConn{stat: network.ConnStats{}}, 0},
		{limited(uint64(1) << 63), math.MaxInt32},
	} {
		if got := circuitFrameLimit(tc.c); got != tc.want {
			t.Errorf("circuitFrameLimit(%v) = %d, want %d", tc.c.Stat().Extra, got, tc.want)
		}
	}
}
