package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// Type is the one-byte frame type that follows the length prefix.
type Type byte

// Frame types. The payload of each is described in docs/PROTOCOL.md.
const (
	THello   Type = 1 // JSON Hello or DeliverHello: first frame of a stream
	TError   Type = 2 // JSON Error: the request failed; the stream ends
	TOK      Type = 3 // JSON {}: Hello accepted
	TRequest Type = 4 // JSON request of the stream's protocol
	TLog     Type = 5 // JSON Log: one stderr line of a running action
	TDeliver Type = 6 // binary deliveries, publisher to subscriber
	TAck     Type = 7 // binary cumulative ack, subscriber to publisher
	TPublish Type = 8 // binary batch of publications
	TResult  Type = 9 // JSON response of the stream's protocol

	maxType = TResult
)

var typeNames = [...]string{
	THello: "hello", TError: "error", TOK: "ok", TRequest: "request", TLog: "log",
	TDeliver: "deliver", TAck: "ack", TPublish: "publish", TResult: "result",
}

// Valid reports whether t is a frame type of this version.
func (t Type) Valid() bool { return t >= THello && t <= maxType }

func (t Type) String() string {
	if t.Valid() {
		return typeNames[t]
	}
	return "type(" + strconv.Itoa(int(t)) + ")"
}

// Size limits.
const (
	// DefaultMaxPayload is the payload size a node accepts when its
	// configuration says nothing else.
	DefaultMaxPayload = 1 << 20
	// DefaultMaxFrame leaves 64 KiB over DefaultMaxPayload for the frame
	// type, message headers and a batch's per-item overhead.
	DefaultMaxFrame = DefaultMaxPayload + 64<<10

	// ioBufferSize is the bufio size on both sides. 64 KiB holds a batch of
	// hundreds of small deliveries, so one read or write syscall moves a
	// whole batch.
	ioBufferSize = 64 << 10
	// maxRetained bounds the scratch buffers kept between frames: a rare
	// large frame should not pin its memory for the life of a long-lived
	// subscription stream.
	maxRetained = 256 << 10
)

// AppendFrame appends a complete frame (length, type, payload) to dst.
func AppendFrame(dst []byte, t Type, payload []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(payload))+1)
	dst = append(dst, byte(t))
	return append(dst, payload...)
}

// Reader reads frames from an io.Reader. It is not safe for concurrent use.
type Reader struct {
	br  *bufio.Reader
	max int
	buf []byte
	err error // sticky: once the byte stream is out of sync, it stays so
}

// NewReader returns a Reader that refuses frames whose length (type byte
// plus payload) exceeds maxFrame; maxFrame <= 0 means DefaultMaxFrame.
func NewReader(r io.Reader, maxFrame int) *Reader {
	return NewReaderSize(r, maxFrame, ioBufferSize)
}

// NewReaderSize is NewReader with a chosen read buffer size: request
// streams that carry a few small frames use a small one, so opening a
// stream does not cost a 64 KiB allocation. Frames larger than the buffer
// are still read whole.
func NewReaderSize(r io.Reader, maxFrame, bufSize int) *Reader {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	return &Reader{br: bufio.NewReaderSize(r, bufSize), max: maxFrame}
}

// Next reads one frame. The payload is valid only until the next call.
//
// At a clean end of stream between frames Next returns io.EOF itself, so
// callers can tell a peer that closed its side from one that broke off
// mid-frame (an error wrapping io.ErrUnexpectedEOF). Errors from the
// underlying reader, such as a deadline, are wrapped. ErrEmptyFrame and
// ErrUnknownType leave the stream in sync (the frame was consumed); every
// other error is returned again by later calls.
func (r *Reader) Next() (Type, []byte, error) {
	if r.err != nil {
		return 0, nil, r.err
	}
	if cap(r.buf) > maxRetained {
		r.buf = nil
	}
	n, err := r.readLength()
	if err != nil {
		r.err = err
		return 0, nil, err
	}
	if n == 0 {
		return 0, nil, ErrEmptyFrame
	}
	tb, err := r.br.ReadByte()
	if err != nil {
		r.err = r.truncated(err)
		return 0, nil, r.err
	}
	t, size := Type(tb), int(n-1)
	if !t.Valid() {
		// Skip the payload so the caller may choose to carry on.
		if _, err := r.br.Discard(size); err != nil {
			r.err = r.truncated(err)
			return t, nil, r.err
		}
		return t, nil, fmt.Errorf("%w: %d", ErrUnknownType, tb)
	}
	payload, err := r.readPayload(size)
	if err != nil {
		r.err = r.truncated(err)
		return t, nil, r.err
	}
	return t, payload, nil
}

// readPayload reads a payload of size bytes into r.buf. When the buffer is
// too small it grows with the bytes that have arrived, not with what the
// header announced: a peer that announces a large frame and then stalls or
// trickles holds only about as much memory as it actually sent.
func (r *Reader) readPayload(size int) ([]byte, error) {
	if cap(r.buf) >= size {
		p := r.buf[:size]
		_, err := io.ReadFull(r.br, p)
		return p, err
	}
	// Grow geometrically so a stream of slowly growing frames does not
	// reallocate on each one, but never past the limit. The first step is
	// the size of the read buffer (4 KiB on a request stream), not a
	// fixed 64 KiB: a header followed by silence costs what a stream
	// costs anyway, and each later step doubles only what has arrived.
	target := min(max(size, 2*cap(r.buf)), r.max)
	buf := r.buf[:0]
	for len(buf) < size {
		if len(buf) == cap(buf) {
			nb := make([]byte, len(buf), min(max(2*cap(buf), r.br.Size()), target))
			copy(nb, buf)
			buf = nb
		}
		k, err := io.ReadFull(r.br, buf[len(buf):min(cap(buf), size)])
		buf = buf[:len(buf)+k]
		if err != nil {
			return nil, err
		}
	}
	r.buf = buf
	return buf, nil
}

// readLength reads the uvarint frame length and checks it against the limit
// as soon as the bytes read so far prove it too large, so a hostile header
// costs neither memory nor waiting for the rest of it.
func (r *Reader) readLength() (uint64, error) {
	var x uint64
	var s uint
	for i := range binary.MaxVarintLen64 {
		b, err := r.br.ReadByte()
		if err != nil {
			if i == 0 && errors.Is(err, io.EOF) {
				return 0, io.EOF
			}
			return 0, r.truncated(err)
		}
		if i == binary.MaxVarintLen64-1 && b > 1 {
			return 0, fmt.Errorf("%w: frame length overflows 64 bits", ErrMalformed)
		}
		x |= uint64(b&0x7f) << s
		if x > uint64(r.max) {
			return 0, fmt.Errorf("%w: header announces at least %d bytes, limit %d", ErrFrameTooLarge, x, r.max)
		}
		if b < 0x80 {
			return x, nil
		}
		s += 7
	}
	return 0, fmt.Errorf("%w: frame length overflows 64 bits", ErrMalformed)
}

// truncated maps an end of input inside a frame to io.ErrUnexpectedEOF and
// wraps any other read error with context.
func (r *Reader) truncated(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("wire: truncated frame: %w", io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("wire: read frame: %w", err)
}

// Expect reads the next frame and decodes its JSON payload into v. A TError
// frame is returned as an *Error, any other type than want as ErrUnexpected.
// v may be nil to accept any JSON payload of the right type (TOK).
func (r *Reader) Expect(want Type, v any) error {
	t, payload, err := r.Next()
	if err != nil {
		return err
	}
	switch {
	case t == TError && want != TError:
		var e Error
		if err := DecodeJSON(payload, &e); err != nil {
			return fmt.Errorf("wire: error frame: %w", err)
		}
		return &e
	case t != want:
		return fmt.Errorf("%w: got %s, want %s", ErrUnexpected, t, want)
	case v == nil:
		var ok OK
		return DecodeJSON(payload, &ok)
	}
	return DecodeJSON(payload, v)
}

// Writer writes frames to an io.Writer. Frames are buffered until Flush (or
// until the buffer fills), so many small frames coalesce into one write on
// the stream. It is not safe for concurrent use.
type Writer struct {
	bw      *bufio.Writer
	hdr     [binary.MaxVarintLen64 + 1]byte
	scratch bytes.Buffer
	enc     *json.Encoder
}

// NewWriter returns a Writer over w.
func NewWriter(w io.Writer) *Writer {
	return NewWriterSize(w, ioBufferSize)
}

// NewWriterSize is NewWriter with a chosen buffer size (see NewReaderSize).
func NewWriterSize(w io.Writer, bufSize int) *Writer {
	return &Writer{bw: bufio.NewWriterSize(w, bufSize)}
}

// Frame buffers one frame. Unknown types are refused rather than sent,
// because the peer would reject the whole stream for them.
func (w *Writer) Frame(t Type, payload []byte) error {
	if !t.Valid() {
		return fmt.Errorf("%w: %d", ErrUnknownType, byte(t))
	}
	h := binary.AppendUvarint(w.hdr[:0], uint64(len(payload))+1)
	h = append(h, byte(t))
	if _, err := w.bw.Write(h); err != nil {
		return fmt.Errorf("wire: write frame: %w", err)
	}
	if _, err := w.bw.Write(payload); err != nil {
		return fmt.Errorf("wire: write frame: %w", err)
	}
	return nil
}

// JSON buffers one frame whose payload is v encoded as JSON. HTML escaping
// is off: payloads are never embedded in HTML, and escaping would only grow
// log lines and action output.
func (w *Writer) JSON(t Type, v any) error {
	if w.enc == nil {
		w.enc = json.NewEncoder(&w.scratch)
		w.enc.SetEscapeHTML(false)
	}
	w.scratch.Reset()
	if err := w.enc.Encode(v); err != nil {
		return fmt.Errorf("%w %s: %w", ErrEncode, t, err)
	}
	b := bytes.TrimSuffix(w.scratch.Bytes(), []byte{'\n'}) // Encoder ends each value with a newline
	err := w.Frame(t, b)
	if w.scratch.Cap() > maxRetained {
		w.scratch = bytes.Buffer{} // the Encoder holds &w.scratch, which stays valid
	}
	return err
}

// Buffered returns the number of bytes waiting for Flush.
func (w *Writer) Buffered() int { return w.bw.Buffered() }

// Flush writes the buffered frames to the underlying writer.
func (w *Writer) Flush() error {
	if err := w.bw.Flush(); err != nil {
		return fmt.Errorf("wire: flush: %w", err)
	}
	return nil
}
