package node_test

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/runner"
)

// The smallest frame limit a peer may have is max_payload (at least 1 KiB)
// + 64 KiB. A stderr line of control bytes or invalid UTF-8, which JSON
// escapes to six bytes each, made a TLog frame of up to 96 KiB, and such a
// caller failed the whole perform over it ("frame too large"). It now gets
// the line cut, and the result.
func TestRemotePerformBinaryStderrFitsAnyCaller(t *testing.T) {
	a := newTestNode(t)
	b := newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.MaxPayload = 1024 }))
	// 40 KB of \x01, then of \xff with no newline at the end, then a result.
	writeAction(t, a, "binary", `#!/bin/sh
head -c 40000 /dev/zero | tr '\0' '\001' >&2
echo >&2
head -c 40000 /dev/zero | tr '\0' '\377' >&2
echo '{"ok":true}'`)
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})
	var lines []string
	res, err := b.Perform(testCtx(t), localapi.PerformRequest{Peer: pid, Action: "binary", Input: json.RawMessage(`1`)},
		func(l string) { lines = append(lines, l) })
	if err != nil {
		t.Fatalf("perform with binary stderr: %v", err)
	}
	if string(res.Output) != `{"ok":true}` {
		t.Errorf("output %s", res.Output)
	}
	if len(lines) != 2 {
		t.Fatalf("got %d log lines, want 2", len(lines))
	}
	for i, want := range []string{"\x01", "\uFFFD"} {
		l := lines[i]
		body, cut := strings.CutSuffix(l, runner.TruncatedMark)
		if !cut || !utf8.ValidString(l) || len(body) < 1000 || strings.Trim(body, want) != "" {
			t.Errorf("line %d: %d bytes (%q...), want a long line of %q cut with the mark", i, len(l), l[:min(len(l), 8)], want)
		}
	}
}
