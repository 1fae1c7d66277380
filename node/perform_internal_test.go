package node

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/coattail/coattail/node/runner"
	"github.com/coattail/coattail/node/wire"
)

// wireLogLine keeps the JSON encoding of any line, whatever its bytes,
// within maxWireLogLine, and leaves a line that fits alone.
func TestWireLogLineBoundsTheEncoding(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []string{"a", "é", "\x01", "\xff", "\"", "\\", "\n", "\b", "\u2028", "<", "\x7f", "\xe2\x82"}
	for i := 0; i < 200; i++ {
		var sb strings.Builder
		n := rng.IntN(runner.MaxLogLine + 1)
		for sb.Len() < n {
			sb.WriteString(alphabet[rng.IntN(len(alphabet))])
		}
		line := sb.String()
		got := wireLogLine(line)
		var buf bytes.Buffer
		w := wire.NewWriter(&buf)
		if err := w.JSON(wire.TLog, wire.Log{Line: got}); err != nil {
			t.Fatal(err)
		}
		_ = w.Flush()
		if enc := buf.Bytes(); len(enc) > maxWireLogLine+len(`{"line":""}`)+4 {
			t.Fatalf("line of %d bytes encodes to %d bytes, over %d", len(line), len(enc), maxWireLogLine)
		}
		if got != line && (!strings.HasSuffix(got, runner.TruncatedMark) || !strings.HasPrefix(line, strings.TrimSuffix(got, runner.TruncatedMark))) {
			t.Fatalf("a line was changed other than by cutting it")
		}
	}
	short := "plain \x01 line"
	if wireLogLine(short) != short {
		t.Errorf("a short line was changed")
	}
}
