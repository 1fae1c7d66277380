package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
)

// A remote perform whose input is over the peer's limits.max_payload fails
// at once with the peer's too_large, naming max_payload. The request went
// out pipelined behind the hello and the answer was read only once it was
// written: the peer refused it and stopped reading, so for an input larger
// than the stream's flow-control window the write blocked until
// stream_timeout (60 s by default) and only then was the refusal read.
func TestRemotePerformOverPeerMaxPayloadFailsAtOnce(t *testing.T) {
	long := withLimits(func(l *node.LimitsConfig) { l.StreamTimeout = 10 * time.Minute })
	a := newTestNode(t, long, withLimits(func(l *node.LimitsConfig) { l.MaxPayload = 1024 }))
	b := newTestNode(t, long)
	var echo counter
	register(t, a, "echo", echo.handler)
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})
	for _, size := range []int{200 << 10, 400 << 10, 1000 << 10} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			input := `"` + strings.Repeat("x", size) + `"`
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			began := time.Now()
			_, err := perform(ctx, b, pid, "echo", input)
			// Prompt: far within the 10 min stream_timeout the write used
			// to block for, however busy the machine.
			if took := time.Since(began); took > time.Minute {
				t.Fatalf("perform of %d bytes took %v (err %v), want a prompt refusal", size, took, err)
			}
			wantWireCode(t, err, wire.CodeTooLarge)
			errorsContain(t, err, "max_payload")
		})
	}
	// The small path still works, in one round trip.
	if _, err := perform(testCtx(t), b, pid, "echo", `"small"`); err != nil {
		t.Fatal(err)
	}
	if echo.count() != 1 {
		t.Fatalf("echo ran %d times, want 1", echo.count())
	}
}

// A large input within the peer's limit is performed (it is sent after the
// answer to the hello, and read while it is written).
func TestRemotePerformLargeInputWithinLimit(t *testing.T) {
	a, b := newTestNode(t, withQuietLog()), newTestNode(t, withQuietLog())
	var echo counter
	register(t, a, "echo", echo.handler)
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})
	input := `"` + strings.Repeat("y", 900<<10) + `"`
	res, err := perform(testCtx(t), b, pid, "echo", input)
	if err != nil {
		t.Fatal(err)
	}
	var out string
	if err := json.Unmarshal(res.Output, &out); err != nil || len(out) != 900<<10 {
		t.Fatalf("output of %d bytes (%v), want the input back", len(out), err)
	}
}

// The caller of a remote perform of an executable action whose token is
// revoked while it runs (and logs) is told that the token was revoked, at
// once; it used to see "reset the stream before answering".
func TestRevokeDuringExecutablePerformTellsCaller(t *testing.T) {
	a, b := newTestNode(t), newTestNode(t)
	writeAction(t, a, "slow", "#!/bin/sh\necho started >&2\nexec sleep 30\n")
	pid, tok := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})
	ctx := testCtx(t)
	logged := make(chan struct{}, 16)
	done := make(chan error, 1)
	go func() {
		_, err := b.Perform(ctx, localapi.PerformRequest{Peer: pid, Action: "slow", Input: json.RawMessage(`null`)}, func(string) { logged <- struct{}{} })
		done <- err
	}()
	waitFor(t, logged, "the action's first log line")
	began := time.Now()
	if err := a.RevokeToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	err := waitErr(t, done, "the perform to end after revocation")
	// At once: well before the action's 30 s sleep would have ended it,
	// however busy the machine.
	if took := time.Since(began); took > 20*time.Second {
		t.Errorf("the perform ended %v after the revocation", took)
	}
	if errors.Is(err, node.ErrPeer) {
		t.Fatalf("got %v, want the peer's unauthorized", err)
	}
	wantWireCode(t, err, wire.CodeUnauthorized)
	errorsContain(t, err, "token revoked")
}
