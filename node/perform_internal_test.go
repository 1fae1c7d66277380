package node

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/coattail/coattail/node/runner"
	"github.com/coattail/coattail/node/wire"
	"github.com/coattail/coattail/topics"
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

// A failed queue storage is unavailable to the remote, without the
// datastore's error text, which names local files (PROTOCOL.md: never local
// paths or error text); it was sent whole, also as the reason a remote
// perform --notify could not publish.
func TestStorageFailureNamesNoLocalPath(t *testing.T) {
	cause := errors.New("pebble: open /home/owner/inst/data/000042.log: no space left on device")
	err := fmt.Errorf(`node: action "x" ran but publishing its output failed: %w`, fmt.Errorf("%w: %w", topics.ErrStorageFailed, cause))
	we := toWireError(err)
	if we.Code != wire.CodeUnavailable {
		t.Errorf("code %s, want %s", we.Code, wire.CodeUnavailable)
	}
	if strings.Contains(we.Message, "/home") || strings.Contains(we.Message, "pebble") {
		t.Errorf("message %q carries the local error", we.Message)
	}
}
