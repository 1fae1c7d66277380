package wire_test

import (
	"encoding/json"
	"io"
	"testing"
	"time"

	"github.com/coattail/coattail/node/wire"
)

const (
	benchBatch = 256
	benchSize  = 128
)

// BenchmarkDeliveriesEncodeDecode encodes and decodes one TDeliver payload of
// 256 deliveries of 128 bytes per iteration. The baseline is the same batch
// through encoding/json, measured in the same run, because the machines that
// run these are noisy; "x-json" is how many times faster the binary path is.
func BenchmarkDeliveriesEncodeDecode(b *testing.B) {
	ds := makeDeliveries("sub-0123456789abcdef", 1_000_000, benchBatch, benchSize)
	var sum uint64
	fn := func(d *wire.Delivery) error { sum += d.Seq; return nil }

	b.StopTimer()
	jsonPerBatch := measure(min(b.N, 200), func() {
		enc, _ := json.Marshal(ds)
		var back []wire.Delivery
		_ = json.Unmarshal(enc, &back)
	})
	b.StartTimer()

	b.ReportAllocs()
	b.SetBytes(benchBatch * benchSize)
	var buf []byte
	for range b.N {
		buf = wire.AppendDeliveries(buf[:0], ds)
		if err := wire.DecodeDeliveries(buf, fn); err != nil {
			b.Fatal(err)
		}
	}
	perBatch := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(float64(benchBatch*b.N)/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(float64(jsonPerBatch)/float64(max(perBatch, 1)), "x-json")
}

// BenchmarkFramePipe writes TDeliver frames of 256 x 128 B deliveries through
// an io.Pipe and reads and decodes them on the other side. The baseline,
// measured in the same run, moves the same bytes through an io.Pipe with no
// framing or decoding; "x-raw" is framed time over raw time (1.0 = free).
func BenchmarkFramePipe(b *testing.B) {
	payload := wire.AppendDeliveries(nil, makeDeliveries("sub-0123456789abcdef", 1, benchBatch, benchSize))
	frameLen := len(wire.AppendFrame(nil, wire.TDeliver, payload))

	b.StopTimer()
	n := min(b.N, 2000)
	raw := measure(1, func() { rawPipe(b, n, frameLen) }) / time.Duration(n)
	b.StartTimer()

	b.ReportAllocs()
	b.SetBytes(int64(frameLen))
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		w := wire.NewWriter(pw)
		for range b.N {
			if err := w.Frame(wire.TDeliver, payload); err != nil {
				done <- err
				return
			}
			// Flush per frame, as the node does when its queue runs dry:
			// the worst case for coalescing.
			if err := w.Flush(); err != nil {
				done <- err
				return
			}
		}
		done <- pw.Close()
	}()
	r := wire.NewReader(pr, 0)
	var msgs int
	count := func(*wire.Delivery) error { msgs++; return nil }
	for range b.N {
		_, p, err := r.Next()
		if err != nil {
			b.Fatal(err)
		}
		if err := wire.DecodeDeliveries(p, count); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	if msgs != benchBatch*b.N {
		b.Fatalf("decoded %d deliveries, want %d", msgs, benchBatch*b.N)
	}
	perFrame := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(float64(msgs)/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(float64(perFrame)/float64(max(raw, 1)), "x-raw")
}

// rawPipe moves n chunks of size bytes through an io.Pipe.
func rawPipe(b *testing.B, n, size int) {
	pr, pw := io.Pipe()
	go func() {
		chunk := make([]byte, size)
		for range n {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
		pw.Close()
	}()
	if _, err := io.Copy(io.Discard, pr); err != nil {
		b.Fatal(err)
	}
}

// measure returns the mean wall time of f over n runs.
func measure(n int, f func()) time.Duration {
	start := time.Now()
	for range n {
		f()
	}
	return time.Since(start) / time.Duration(max(n, 1))
}
