package wire_test

// Frame reader and writer under a hostile peer (found by review).

import (
	"encoding/binary"
	"io"
	"runtime"
	"testing"

	"github.com/coattail/coattail/node/wire"
)

// stallReader hands out its bytes, then reports on stalled and blocks until
// release is closed (a peer that announced a frame and went quiet).
type stallReader struct {
	data    []byte
	stalled chan struct{}
	release chan struct{}
}

func (s *stallReader) Read(p []byte) (int, error) {
	if len(s.data) > 0 {
		n := copy(p, s.data)
		s.data = s.data[n:]
		return n, nil
	}
	close(s.stalled)
	<-s.release
	return 0, io.ErrUnexpectedEOF
}

// A header announcing a large frame, followed by a few bytes and silence,
// costs about the reader's buffer size, not a 64 KiB step (SECURITY.md:
// "buffers grow with bytes actually received"). Request streams read with
// a 4 KiB buffer, so each stalled one held 68 KiB instead of about 8:
// sixteen times as much for the streams a peer may hold open.
func TestWireReaderStalledFrameCostsItsBufferOnly(t *testing.T) {
	const bufSize = 4 << 10
	for _, sent := range []int{0, 100, 3000} {
		hdr := binary.AppendUvarint(nil, wire.DefaultMaxFrame)
		hdr = append(hdr, byte(wire.TPublish))
		sr := &stallReader{data: append(hdr, make([]byte, sent)...), stalled: make(chan struct{}), release: make(chan struct{})}
		r := wire.NewReaderSize(sr, wire.DefaultMaxFrame, bufSize)

		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		done := make(chan error, 1)
		go func() {
			_, _, err := r.Next()
			done <- err
		}()
		<-sr.stalled
		runtime.ReadMemStats(&after)
		close(sr.release)
		if err := <-done; err == nil {
			t.Fatalf("%d bytes sent: a frame cut short read without error", sent)
		}
		// The reader itself was allocated before; what remains is the
		// payload buffer (and the goroutine's few bytes).
		// TotalAlloc counts the whole process (the runtime allocates a
		// little on its own under load): the margin is generous, still far
		// below the 64 KiB a stalled frame used to cost.
		if grew := after.TotalAlloc - before.TotalAlloc; grew > uint64(2*bufSize+sent+16<<10) {
			t.Errorf("a stalled frame of which %d bytes arrived cost %d bytes, want at most about %d", sent, grew, 2*bufSize+sent)
		}
	}
}
