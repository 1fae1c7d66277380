package wire_test

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/coattail/coattail/node/wire"
)

func makeDeliveries(sub string, firstSeq uint64, n, size int) []wire.Delivery {
	ds := make([]wire.Delivery, n)
	for i := range ds {
		data := bytes.Repeat([]byte{byte('a' + i%26)}, size)
		ds[i] = wire.Delivery{
			SubscriptionID: sub,
			Seq:            firstSeq + uint64(i),
			Publication: wire.Publication{
				Subject: "orders.created",
				Data:    data,
				Hop:     uint32(i % 3),
				Time:    1_750_000_000_000_000_000 + int64(i),
			},
		}
	}
	return ds
}

// cloneDelivery copies the aliased fields so the value outlives the payload.
func cloneDelivery(d *wire.Delivery) wire.Delivery {
	c := *d
	c.SubscriptionID = strings.Clone(d.SubscriptionID)
	c.Subject = strings.Clone(d.Subject)
	c.Data = bytes.Clone(d.Data)
	return c
}

func clonePublication(p *wire.Publication) wire.Publication {
	c := *p
	c.Subject = strings.Clone(p.Subject)
	c.Data = bytes.Clone(p.Data)
	return c
}

func collectDeliveries(t testing.TB, payload []byte) []wire.Delivery {
	t.Helper()
	var out []wire.Delivery
	if err := wire.DecodeDeliveries(payload, func(d *wire.Delivery) error {
		out = append(out, cloneDelivery(d))
		return nil
	}); err != nil {
		t.Fatalf("DecodeDeliveries: %v", err)
	}
	return out
}

func equalPublication(a, b *wire.Publication) bool {
	return a.Subject == b.Subject && bytes.Equal(a.Data, b.Data) && a.Hop == b.Hop && a.Time == b.Time
}

func equalDeliveries(a, b []wire.Delivery) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].SubscriptionID != b[i].SubscriptionID || a[i].Seq != b[i].Seq || a[i].Omitted != b[i].Omitted || !equalPublication(&a[i].Publication, &b[i].Publication) {
			return false
		}
	}
	return true
}

func equalPublications(a, b []wire.Publication) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !equalPublication(&a[i], &b[i]) {
			return false
		}
	}
	return true
}

func edgeDeliveries() []wire.Delivery {
	return []wire.Delivery{
		{SubscriptionID: "a", Seq: math.MaxUint64, Publication: wire.Publication{Subject: "x.>", Hop: math.MaxUint32, Time: math.MinInt64}},
		{SubscriptionID: "b", Seq: 0, Publication: wire.Publication{Data: []byte{0, 0xff}, Time: -1}},
		{SubscriptionID: "", Seq: 5, Publication: wire.Publication{Subject: "é.ü", Time: math.MaxInt64}},
		{SubscriptionID: "a", Seq: 3},
	}
}

func TestDeliveriesRoundTrip(t *testing.T) {
	cases := map[string][]wire.Delivery{
		"empty":     nil,
		"shared":    makeDeliveries("sub-1", 1, 256, 128),
		"one":       makeDeliveries("s", 42, 1, 0),
		"mixed":     append(makeDeliveries("x", 10, 3, 5), makeDeliveries("y", 1, 3, 5)...),
		"edges":     edgeDeliveries(),
		"seq-wraps": {{SubscriptionID: "s", Seq: math.MaxUint64}, {SubscriptionID: "s", Seq: 1}},
		"omitted": {{SubscriptionID: "s", Seq: 9, Publication: wire.Publication{Subject: "a.b", Hop: 2, Time: 5}, Omitted: 2 << 20},
			{SubscriptionID: "s", Seq: 10, Publication: wire.Publication{Subject: "a.c"}, Omitted: math.MaxUint64}},
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			payload := wire.AppendDeliveries([]byte("prefix"), in)
			if !bytes.HasPrefix(payload, []byte("prefix")) {
				t.Fatal("AppendDeliveries did not append to dst")
			}
			got := collectDeliveries(t, payload[len("prefix"):])
			if !equalDeliveries(got, in) {
				t.Fatalf("round trip differs:\n got %+v\nwant %+v", got, in)
			}
		})
	}
}

func TestDeliveriesSharedIDWrittenOnce(t *testing.T) {
	const id = "subscription-0123456789"
	shared := wire.AppendDeliveries(nil, makeDeliveries(id, 1, 20, 8))
	if n := bytes.Count(shared, []byte(id)); n != 1 {
		t.Fatalf("shared id written %d times, want 1", n)
	}
	mixed := wire.AppendDeliveries(nil, append(makeDeliveries(id, 1, 10, 8), makeDeliveries("other", 1, 10, 8)...))
	if n := bytes.Count(mixed, []byte(id)); n != 10 {
		t.Fatalf("per-item id written %d times, want 10", n)
	}
}

func TestDeliveriesConsecutiveSeqIsOneByte(t *testing.T) {
	// Two batches differing only in how far apart the sequences are: with
	// delta encoding, consecutive high sequences cost no more than low ones.
	low := wire.AppendDeliveries(nil, makeDeliveries("s", 1, 100, 1))
	high := wire.AppendDeliveries(nil, makeDeliveries("s", 1<<40, 100, 1))
	if len(high)-len(low) > 8 {
		t.Fatalf("high sequences cost %d extra bytes, want only the first delta", len(high)-len(low))
	}
}

// Every strict prefix of a valid payload must be refused as a whole: no
// callback, no panic.
func TestDeliveriesTruncated(t *testing.T) {
	for name, ds := range map[string][]wire.Delivery{
		"shared":  makeDeliveries("sub", 7, 5, 3),
		"mixed":   edgeDeliveries(),
		"omitted": {{SubscriptionID: "s", Seq: 3, Publication: wire.Publication{Subject: "a"}, Omitted: 300}},
	} {
		payload := wire.AppendDeliveries(nil, ds)
		for cut := range len(payload) {
			calls := 0
			err := wire.DecodeDeliveries(payload[:cut], func(*wire.Delivery) error { calls++; return nil })
			if !errors.Is(err, wire.ErrMalformed) {
				t.Fatalf("%s cut at %d: got %v, want ErrMalformed", name, cut, err)
			}
			if calls != 0 {
				t.Fatalf("%s cut at %d: callback ran %d times on a malformed payload", name, cut, calls)
			}
		}
	}
}

func TestDeliveriesCorrupt(t *testing.T) {
	valid := wire.AppendDeliveries(nil, makeDeliveries("sub", 1, 2, 2))
	cases := map[string][]byte{
		"empty":          {},
		"unknown mode":   append([]byte{9}, valid[1:]...),
		"trailing":       append(bytes.Clone(valid), 0),
		"huge count":     {0, 0xff, 0xff, 0xff, 0xff, 0x0f, 0},
		"count too high": {0, 3, 0, 1, 1, 1, 1, 1},
		"id runs past":   {0, 1, 0x7f, 'a'},
		// mode 0, count 1, empty id, delta 1, subject claiming 127 bytes.
		"subject runs past": {0, 1, 0, 1, 0x7f, 0, 0, 0, 0},
		// mode 0, count 1, empty id, delta 1, empty subject, hop 2^32.
		"hop over u32":    {0, 1, 0, 1, 0, 0x80, 0x80, 0x80, 0x80, 0x10, 0, 0},
		"varint overflow": {0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		// mode 2, count 1, id "s", delta 1, empty subject, hop 0, time 0, then:
		"omitted with data":      {2, 1, 1, 's', 1, 0, 0, 0, 1, 'x', 5},
		"omitted length 0":       {2, 1, 1, 's', 1, 0, 0, 0, 0, 0},
		"omitted length missing": {2, 1, 1, 's', 1, 0, 0, 0, 0},
	}
	for name, payload := range cases {
		err := wire.DecodeDeliveries(payload, func(*wire.Delivery) error {
			t.Fatalf("%s: callback ran", name)
			return nil
		})
		if !errors.Is(err, wire.ErrMalformed) {
			t.Fatalf("%s: got %v, want ErrMalformed", name, err)
		}
	}
}

func TestDeliveriesCallbackErrorStops(t *testing.T) {
	stop := errors.New("stop")
	payload := wire.AppendDeliveries(nil, makeDeliveries("s", 1, 10, 1))
	calls := 0
	err := wire.DecodeDeliveries(payload, func(d *wire.Delivery) error {
		calls++
		if d.Seq == 3 {
			return stop
		}
		return nil
	})
	if err != stop || calls != 3 {
		t.Fatalf("got %v after %d calls, want the callback's error after 3", err, calls)
	}
}

func TestDecodedDataCannotClobberPayload(t *testing.T) {
	payload := wire.AppendDeliveries(nil, makeDeliveries("s", 1, 3, 4))
	orig := bytes.Clone(payload)
	if err := wire.DecodeDeliveries(payload, func(d *wire.Delivery) error {
		_ = append(d.Data, "overwrite"...)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(payload, orig) {
		t.Fatal("appending to a decoded Data modified the payload")
	}
}

// Decoding allocates at most the one value handed to the callback per call,
// however many items the payload holds.
func TestDecodeAllocationsIndependentOfBatchSize(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocation counts")
	}
	var sum uint64
	allocs := func(n int) float64 {
		deliveries := wire.AppendDeliveries(nil, makeDeliveries("sub", 1, n, 32))
		batch := wire.AppendPublishBatch(nil, make([]wire.Publication, n))
		ack := wire.AppendAck(nil, "sub", 99)
		return testing.AllocsPerRun(100, func() {
			_ = wire.DecodeDeliveries(deliveries, func(d *wire.Delivery) error { sum += d.Seq; return nil })
			_ = wire.DecodePublishBatch(batch, func(p *wire.Publication) error { sum += uint64(len(p.Data)); return nil })
			_, seq, _ := wire.DecodeAck(ack)
			sum += seq
		})
	}
	one, many := allocs(1), allocs(256)
	if one > 2 || many != one {
		t.Fatalf("allocations per run: %v for 1 item, %v for 256; want at most 2 and equal", one, many)
	}
}

func TestAckRoundTrip(t *testing.T) {
	for _, c := range []struct {
		id  string
		seq uint64
	}{{"sub-1", 1}, {"", 0}, {strings.Repeat("x", 300), math.MaxUint64}} {
		payload := wire.AppendAck(nil, c.id, c.seq)
		id, seq, err := wire.DecodeAck(payload)
		if err != nil || id != c.id || seq != c.seq {
			t.Fatalf("got %q %d %v, want %q %d", id, seq, err, c.id, c.seq)
		}
		for cut := range len(payload) {
			if _, _, err := wire.DecodeAck(payload[:cut]); !errors.Is(err, wire.ErrMalformed) {
				t.Fatalf("cut at %d: got %v, want ErrMalformed", cut, err)
			}
		}
		if _, _, err := wire.DecodeAck(append(payload, 0)); !errors.Is(err, wire.ErrMalformed) {
			t.Fatalf("trailing byte: got %v, want ErrMalformed", err)
		}
	}
}

func TestPublishBatchRoundTrip(t *testing.T) {
	in := []wire.Publication{
		{Subject: "orders.created", Data: []byte(`{"id":1}`), Hop: 1, Time: 123},
		{Subject: "", Data: nil, Hop: math.MaxUint32, Time: math.MinInt64},
		{Subject: "x", Data: bytes.Repeat([]byte{7}, 1000), Time: math.MaxInt64},
	}
	for _, ps := range [][]wire.Publication{nil, in} {
		payload := wire.AppendPublishBatch(nil, ps)
		var got []wire.Publication
		if err := wire.DecodePublishBatch(payload, func(p *wire.Publication) error {
			got = append(got, clonePublication(p))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if !equalPublications(got, ps) {
			t.Fatalf("got %+v, want %+v", got, ps)
		}
		for cut := range len(payload) {
			err := wire.DecodePublishBatch(payload[:cut], func(*wire.Publication) error {
				t.Fatalf("cut at %d: callback ran", cut)
				return nil
			})
			if !errors.Is(err, wire.ErrMalformed) {
				t.Fatalf("cut at %d: got %v, want ErrMalformed", cut, err)
			}
		}
		if err := wire.DecodePublishBatch(append(payload, 1), func(*wire.Publication) error { return nil }); !errors.Is(err, wire.ErrMalformed) {
			t.Fatalf("trailing byte: got %v, want ErrMalformed", err)
		}
	}
}

func TestPublicationLayout(t *testing.T) {
	got := wire.AppendPublication(nil, &wire.Publication{Subject: "a.b", Data: []byte{9}, Hop: 2, Time: 300})
	want := []byte{3, 'a', '.', 'b', 2, 0xac, 0x02, 1, 9} // 300 = 0xac 0x02 as uvarint
	if !bytes.Equal(got, want) {
		t.Fatalf("got % x, want % x", got, want)
	}
}

// The examples in docs/PROTOCOL.md.
func TestDocumentedExamples(t *testing.T) {
	pub := wire.Publication{Subject: "a", Data: []byte("x"), Time: 1}
	got := wire.AppendDeliveries(nil, []wire.Delivery{
		{SubscriptionID: "s", Seq: 10, Publication: pub},
		{SubscriptionID: "s", Seq: 11, Publication: pub},
	})
	want := []byte{0x00, 0x02, 0x01, 0x73, 0x0a, 0x01, 0x61, 0x00, 0x01, 0x01, 0x78, 0x01, 0x01, 0x61, 0x00, 0x01, 0x01, 0x78}
	if !bytes.Equal(got, want) {
		t.Fatalf("deliveries: got % x, want % x", got, want)
	}
	ack := wire.AppendFrame(nil, wire.TAck, wire.AppendAck(nil, "s1", 5))
	if want := []byte{0x05, 0x07, 0x02, 0x73, 0x31, 0x05}; !bytes.Equal(ack, want) {
		t.Fatalf("ack frame: got % x, want % x", ack, want)
	}
	if hdr := wire.AppendFrame(nil, wire.TResult, make([]byte, 300))[:2]; !bytes.Equal(hdr, []byte{0xad, 0x02}) {
		t.Fatalf("301-byte length: got % x, want ad 02", hdr)
	}
}

// What a DecodeDeliveries callback does to the reused *Delivery does not
// change the items after it, in either mode.
func TestDecodeDeliveriesIgnoresCallbackChanges(t *testing.T) {
	for _, ds := range [][]wire.Delivery{
		{{SubscriptionID: "s", Seq: 10}, {SubscriptionID: "s", Seq: 11}},
		{{SubscriptionID: "s", Seq: 10}, {SubscriptionID: "t", Seq: 11}},
	} {
		var seqs []uint64
		var ids []string
		err := wire.DecodeDeliveries(wire.AppendDeliveries(nil, ds), func(d *wire.Delivery) error {
			seqs = append(seqs, d.Seq)
			ids = append(ids, strings.Clone(d.SubscriptionID))
			d.Seq, d.SubscriptionID = 0, "x"
			return nil
		})
		if err != nil || seqs[1] != 11 || ids[1] != ds[1].SubscriptionID {
			t.Errorf("%v: seqs %v ids %q, %v", ds, seqs, ids, err)
		}
	}
}
