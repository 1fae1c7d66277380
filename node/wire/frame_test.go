package wire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"testing"

	"github.com/coattail/coattail/node/wire"
)

type frame struct {
	t       wire.Type
	payload []byte
}

func encodeFrames(t testing.TB, frames []frame) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := wire.NewWriter(&buf)
	for _, f := range frames {
		if err := w.Frame(f.t, f.payload); err != nil {
			t.Fatalf("Frame: %v", err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	return buf.Bytes()
}

// readAll reads frames until the first error, copying payloads because the
// Reader reuses its buffer.
func readAll(r *wire.Reader) ([]frame, error) {
	var out []frame
	for {
		t, p, err := r.Next()
		if err != nil {
			return out, err
		}
		out = append(out, frame{t, bytes.Clone(p)})
	}
}

func equalFrames(a, b []frame) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].t != b[i].t || !bytes.Equal(a[i].payload, b[i].payload) {
			return false
		}
	}
	return true
}

func sampleFrames() []frame {
	big := bytes.Repeat([]byte("0123456789abcdef"), 200<<10/16) // larger than the bufio buffers
	return []frame{
		{wire.THello, []byte(`{"token":"t","version":"1.0.0"}`)},
		{wire.TOK, []byte(`{}`)},
		{wire.TLog, nil},
		{wire.TDeliver, []byte{0, 1, 2, 3}},
		{wire.TPublish, big},
		{wire.TAck, []byte{1, 'a', 7}},
		{wire.TResult, bytes.Repeat([]byte{'x'}, 300)}, // two-byte length prefix
	}
}

func TestFrameRoundTrip(t *testing.T) {
	in := sampleFrames()
	data := encodeFrames(t, in)
	out, err := readAll(wire.NewReader(bytes.NewReader(data), 1<<20))
	if err != io.EOF {
		t.Fatalf("end of stream: got %v, want io.EOF itself", err)
	}
	if !equalFrames(in, out) {
		t.Fatalf("frames differ after round trip")
	}
}

func TestFrameLayout(t *testing.T) {
	got := encodeFrames(t, []frame{{wire.TAck, []byte{0xAA, 0xBB}}})
	want := []byte{3, byte(wire.TAck), 0xAA, 0xBB} // len = 1 (type) + 2 (payload)
	if !bytes.Equal(got, want) {
		t.Fatalf("got % x, want % x", got, want)
	}
	if app := wire.AppendFrame(nil, wire.TAck, []byte{0xAA, 0xBB}); !bytes.Equal(app, want) {
		t.Fatalf("AppendFrame: got % x, want % x", app, want)
	}
}

func TestReaderTruncated(t *testing.T) {
	in := sampleFrames()[:4]
	data := encodeFrames(t, in)
	boundaries := map[int]bool{0: true}
	off := 0
	for _, f := range in {
		off += len(wire.AppendFrame(nil, f.t, f.payload))
		boundaries[off] = true
	}
	for cut := 0; cut < len(data); cut++ {
		r := wire.NewReader(bytes.NewReader(data[:cut]), 1<<20)
		_, err := readAll(r)
		if boundaries[cut] {
			if err != io.EOF {
				t.Fatalf("cut at frame boundary %d: got %v, want io.EOF", cut, err)
			}
			continue
		}
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("cut at %d: got %v, want io.ErrUnexpectedEOF", cut, err)
		}
		if _, _, again := r.Next(); !errors.Is(again, io.ErrUnexpectedEOF) {
			t.Fatalf("cut at %d: error not sticky, second call gave %v", cut, again)
		}
	}
}

// failReader fails the test's expectation by returning a distinctive error
// if the Reader asks for bytes past the header.
type failReader struct{}

var errReadPastHeader = errors.New("read past the header")

func (failReader) Read([]byte) (int, error) { return 0, errReadPastHeader }

func TestReaderMaxFrameBeforeAllocation(t *testing.T) {
	hdr := binary.AppendUvarint(nil, 1<<30) // claims 1 GiB
	r := wire.NewReader(io.MultiReader(bytes.NewReader(hdr), failReader{}), 1<<20)

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, _, err := r.Next()
	runtime.ReadMemStats(&after)

	if !errors.Is(err, wire.ErrFrameTooLarge) {
		t.Fatalf("got %v, want ErrFrameTooLarge", err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Fatalf("allocated %d bytes while refusing the frame", grew)
	}
	if _, _, err := r.Next(); !errors.Is(err, wire.ErrFrameTooLarge) {
		t.Fatalf("error not sticky: %v", err)
	}
}

func TestReaderMaxFrameBoundary(t *testing.T) {
	const limit = 1000
	ok := wire.AppendFrame(nil, wire.TLog, make([]byte, limit-1)) // length exactly limit
	if _, _, err := wire.NewReader(bytes.NewReader(ok), limit).Next(); err != nil {
		t.Fatalf("frame at the limit refused: %v", err)
	}
	over := wire.AppendFrame(nil, wire.TLog, make([]byte, limit))
	if _, _, err := wire.NewReader(bytes.NewReader(over), limit).Next(); !errors.Is(err, wire.ErrFrameTooLarge) {
		t.Fatalf("frame over the limit: got %v", err)
	}
}

func TestReaderLengthOverflow(t *testing.T) {
	hdr := bytes.Repeat([]byte{0xff}, 11)
	_, _, err := wire.NewReader(bytes.NewReader(hdr), int(^uint(0)>>1)).Next()
	if !errors.Is(err, wire.ErrMalformed) {
		t.Fatalf("got %v, want ErrMalformed", err)
	}
}

func TestReaderEmptyAndUnknownFramesAreSkippable(t *testing.T) {
	var data []byte
	data = append(data, 0) // empty frame
	data = wire.AppendFrame(data, wire.Type(200), []byte("future"))
	data = wire.AppendFrame(data, wire.TOK, []byte("{}"))
	r := wire.NewReader(bytes.NewReader(data), 1<<10)

	if _, _, err := r.Next(); !errors.Is(err, wire.ErrEmptyFrame) {
		t.Fatalf("got %v, want ErrEmptyFrame", err)
	}
	typ, _, err := r.Next()
	if !errors.Is(err, wire.ErrUnknownType) || typ != 200 {
		t.Fatalf("got type %d, %v; want 200, ErrUnknownType", typ, err)
	}
	typ, p, err := r.Next()
	if err != nil || typ != wire.TOK || string(p) != "{}" {
		t.Fatalf("frame after skipped ones: %v %q %v", typ, p, err)
	}
}

func TestReaderWrapsTransportErrors(t *testing.T) {
	r := wire.NewReader(io.MultiReader(bytes.NewReader([]byte{5, byte(wire.TLog)}), errReader{os.ErrDeadlineExceeded}), 1<<10)
	if _, _, err := r.Next(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("got %v, want a wrapped os.ErrDeadlineExceeded", err)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func TestWriterRefusesUnknownType(t *testing.T) {
	var buf bytes.Buffer
	w := wire.NewWriter(&buf)
	for _, typ := range []wire.Type{0, 10, 255} {
		if err := w.Frame(typ, nil); !errors.Is(err, wire.ErrUnknownType) {
			t.Fatalf("type %d: got %v, want ErrUnknownType", typ, err)
		}
	}
	if err := w.Flush(); err != nil || buf.Len() != 0 {
		t.Fatalf("refused frames reached the stream: %d bytes, %v", buf.Len(), err)
	}
}

type countingWriter struct {
	writes int
	buf    bytes.Buffer
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.writes++
	return c.buf.Write(p)
}

func TestWriterCoalesces(t *testing.T) {
	cw := &countingWriter{}
	w := wire.NewWriter(cw)
	var in []frame
	for i := range 1000 {
		f := frame{wire.TAck, wire.AppendAck(nil, "sub", uint64(i))}
		in = append(in, f)
		if err := w.Frame(f.t, f.payload); err != nil {
			t.Fatal(err)
		}
	}
	if cw.writes != 0 {
		t.Fatalf("%d writes before Flush", cw.writes)
	}
	if w.Buffered() == 0 {
		t.Fatal("Buffered reports nothing pending")
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if cw.writes != 1 {
		t.Fatalf("1000 small frames took %d writes, want 1", cw.writes)
	}
	out, err := readAll(wire.NewReader(&cw.buf, 0))
	if err != io.EOF || !equalFrames(in, out) {
		t.Fatalf("coalesced frames do not read back: %v", err)
	}
}

func TestWriterFlushError(t *testing.T) {
	w := wire.NewWriter(errWriter{os.ErrDeadlineExceeded})
	if err := w.Frame(wire.TOK, []byte("{}")); err != nil {
		t.Fatalf("buffered frame failed early: %v", err)
	}
	if err := w.Flush(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("got %v, want wrapped os.ErrDeadlineExceeded", err)
	}
}

type errWriter struct{ err error }

func (e errWriter) Write([]byte) (int, error) { return 0, e.err }

func TestPipeEndToEnd(t *testing.T) {
	pr, pw := io.Pipe()
	const batches = 50
	want := make([][]wire.Delivery, batches)
	for i := range want {
		want[i] = makeDeliveries(fmt.Sprintf("sub-%d", i%3), uint64(i*10+1), 10, 64)
	}

	var wg sync.WaitGroup
	var werr error
	wg.Go(func() {
		w := wire.NewWriter(pw)
		werr = func() error {
			if err := w.JSON(wire.THello, &wire.DeliverHello{Version: wire.Version, SubscriptionIDs: []string{"sub-0"}}); err != nil {
				return err
			}
			var buf []byte
			for _, ds := range want {
				buf = wire.AppendDeliveries(buf[:0], ds)
				if err := w.Frame(wire.TDeliver, buf); err != nil {
					return err
				}
			}
			return w.Flush()
		}()
		pw.CloseWithError(werr)
	})

	r := wire.NewReader(pr, 0)
	var hello wire.DeliverHello
	if err := r.Expect(wire.THello, &hello); err != nil {
		t.Fatalf("hello: %v", err)
	}
	if hello.Version != wire.Version || len(hello.SubscriptionIDs) != 1 {
		t.Fatalf("hello: %+v", hello)
	}
	for i := range batches {
		typ, p, err := r.Next()
		if err != nil || typ != wire.TDeliver {
			t.Fatalf("batch %d: %v %v", i, typ, err)
		}
		got := collectDeliveries(t, p)
		if !equalDeliveries(got, want[i]) {
			t.Fatalf("batch %d differs", i)
		}
	}
	if _, _, err := r.Next(); err != io.EOF {
		t.Fatalf("end: got %v, want io.EOF", err)
	}
	wg.Wait()
	if werr != nil {
		t.Fatalf("writer: %v", werr)
	}
}

func TestExpect(t *testing.T) {
	var buf bytes.Buffer
	w := wire.NewWriter(&buf)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.JSON(wire.TOK, wire.OK{}))
	must(w.JSON(wire.TError, &wire.Error{Code: wire.CodeRateLimited, Message: "slow down", RetryAfterMs: 1500}))
	must(w.JSON(wire.TLog, &wire.Log{Line: "x"}))
	must(w.Frame(wire.TOK, []byte(`{"surprise":1}`)))
	must(w.Flush())

	r := wire.NewReader(&buf, 0)
	if err := r.Expect(wire.TOK, nil); err != nil {
		t.Fatalf("ok: %v", err)
	}
	err := r.Expect(wire.TResult, &wire.PerformResult{})
	var we *wire.Error
	if !errors.As(err, &we) || we.Code != wire.CodeRateLimited || we.RetryAfterMs != 1500 {
		t.Fatalf("error frame: got %v", err)
	}
	if err := r.Expect(wire.TResult, &wire.PerformResult{}); !errors.Is(err, wire.ErrUnexpected) {
		t.Fatalf("wrong type: got %v, want ErrUnexpected", err)
	}
	if err := r.Expect(wire.TOK, nil); !errors.Is(err, wire.ErrMalformed) {
		t.Fatalf("TOK with unknown field: got %v, want ErrMalformed", err)
	}
}

func TestTypeString(t *testing.T) {
	if s := wire.TDeliver.String(); s != "deliver" {
		t.Fatalf("TDeliver: %q", s)
	}
	if s := wire.Type(42).String(); s != "type(42)" {
		t.Fatalf("unknown: %q", s)
	}
	if wire.Type(0).Valid() || !wire.TResult.Valid() || wire.Type(10).Valid() {
		t.Fatal("Valid disagrees with the defined range 1..9")
	}
}
