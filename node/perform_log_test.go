package node_test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/runner"
	"github.com/coattail/coattail/node/wire"
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

// A caller that sends its request and then stops reading is cut off once
// a write of its log lines has blocked for stream_timeout (PROTOCOL.md:
// every flush has its own deadline): the action, stalled on its full
// stderr pipe, is stopped and the stream's slot freed. Both waited for
// the perform's overall deadline, action_timeout (here an hour) later.
func TestRemotePerformCallerNeverReads(t *testing.T) {
	a := newTestNode(t, withLimits(func(l *node.LimitsConfig) {
		l.MaxStreamsPerPeer = 1
		l.ActionTimeout = time.Hour
		l.StreamTimeout = time.Second
	}))
	dir := t.TempDir()
	writeAction(t, a, "noisy", `#!/bin/sh
echo $$ > `+filepath.Join(dir, "main.pid")+`
exec yes 'a noisy log line that nobody reads' >&2`)
	var echo counter
	register(t, a, "echo", echo.handler)
	h := newStockHost(t, a)
	tok := issue(t, a, localapi.IssueRequest{Perform: []string{">"}, Bearers: []string{"vt://" + h.ID().String()}})
	hello := jsonFrame(t, wire.THello, wire.Hello{Token: tok.Token, Version: wire.Version})
	s := rawStream(t, h, a, wire.ProtoPerform)
	rvWrite(t, s, hello, jsonFrame(t, wire.TRequest, wire.PerformRequest{Action: "noisy"}))
	main := readPID(t, filepath.Join(dir, "main.pid"))
	checkFor(t, testTimeout, 10*time.Millisecond, func() error {
		if !processGone(main) {
			return fmt.Errorf("action %d still runs, its caller not reading", main)
		}
		return nil
	})
	// The slot is free again: the same peer can perform while the first
	// stream is still open and unread.
	checkFor(t, testTimeout, 50*time.Millisecond, func() error {
		s2 := rawStream(t, h, a, wire.ProtoPerform)
		defer s2.Reset()
		_ = s2.SetDeadline(time.Now().Add(10 * time.Second))
		rvWrite(t, s2, hello, jsonFrame(t, wire.TRequest, wire.PerformRequest{Action: "echo", Input: json.RawMessage(`1`)}))
		r := wire.NewReader(s2, 0)
		for _, want := range []wire.Type{wire.TOK, wire.TResult} {
			typ, payload, err := r.Next()
			if err != nil || typ != want {
				return fmt.Errorf("second perform answered %s %s %v, want %s", typ, payload, err, want)
			}
		}
		return nil
	})
	if echo.count() != 1 {
		t.Errorf("echo ran %d times, want 1", echo.count())
	}
}

// A caller that reads slowly, but within stream_timeout per frame, gets
// every log line and the result of an action that runs longer than
// stream_timeout: the per-flush deadline does not cut off a live caller,
// nor the answer after a quiet spell.
func TestRemotePerformSlowActionKeepsItsAnswer(t *testing.T) {
	a := newTestNode(t, withLimits(func(l *node.LimitsConfig) {
		l.ActionTimeout = testTimeout
		l.StreamTimeout = time.Second
	}))
	b := newTestNode(t)
	writeAction(t, a, "slow", `#!/bin/sh
echo start >&2
sleep 2.5
echo end >&2
echo '"done"'`)
	writeAction(t, a, "slowfail", `#!/bin/sh
echo start >&2
sleep 2.5
exit 3`)
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})
	var lines []string
	res, err := b.Perform(testCtx(t), localapi.PerformRequest{Peer: pid, Action: "slow"}, func(l string) { lines = append(lines, l) })
	if err != nil || string(res.Output) != `"done"` || strings.Join(lines, ",") != "start,end" {
		t.Fatalf("slow action: %s, %v, lines %q", res.Output, err, lines)
	}
	_, err = b.Perform(testCtx(t), localapi.PerformRequest{Peer: pid, Action: "slowfail"}, nil)
	wantWireCode(t, err, wire.CodeActionFailed)
}
