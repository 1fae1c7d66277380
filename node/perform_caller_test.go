package node_test

// The caller's side of remote perform against a peer that breaks the
// protocol, never answers, or is left by its caller (found by review).

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coattail/coattail/auth"
	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
)

// newFakePeer starts a stock libp2p host that poses as a Coattail peer and
// adds it as a peer of n, with a token it signed itself. It answers list
// streams (so that peer add works) and hands each perform stream, once it
// read the hello and the request, to perform, with a function that writes
// raw bytes to it. It returns the peer id as n knows it.
func newFakePeer(t *testing.T, n *node.Node, perform func(s network.Stream, w func(frames ...[]byte))) string {
	t.Helper()
	priv, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	h, err := libp2p.New(libp2p.Identity(priv), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	writer := func(s network.Stream) func(frames ...[]byte) {
		return func(frames ...[]byte) {
			for _, fr := range frames {
				if _, err := s.Write(fr); err != nil {
					return
				}
			}
		}
	}
	ok := wire.AppendFrame(nil, wire.TOK, []byte(`{}`))
	h.SetStreamHandler(wire.ProtoList, func(s network.Stream) {
		defer s.Close()
		r := wire.NewReader(s, 0)
		_, _, _ = r.Next() // hello
		_, _, _ = r.Next() // request
		writer(s)(ok, wire.AppendFrame(nil, wire.TResult, []byte(`{"actions":[]}`)))
	})
	h.SetStreamHandler(wire.ProtoPerform, func(s network.Stream) {
		r := wire.NewReader(s, 0)
		_, _, _ = r.Next()
		_, _, _ = r.Next()
		perform(s, writer(s))
	})

	raw, err := priv.Raw()
	if err != nil {
		t.Fatal(err)
	}
	c := auth.Claims{
		RegisteredClaims: jwt.RegisteredClaims{Issuer: h.ID().String(), ID: uuid.NewString(), IssuedAt: jwt.NewNumericDate(time.Now())},
		Type:             auth.TypeCapability,
		Perform:          []string{">"},
	}
	for _, a := range h.Addrs() {
		c.Addrs = append(c.Addrs, a.String())
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c).SignedString(ed25519.PrivateKey(raw))
	if err != nil {
		t.Fatal(err)
	}
	p, err := n.AddPeer(testCtx(t), tok)
	if err != nil {
		t.Fatalf("adding the fake peer: %v", err)
	}
	return p.ID
}

// A server that breaks the protocol after accepting the hello gets the
// caller an error that names the peer and matches node.ErrPeer, whatever
// it sends: a malformed result or error frame came back as a bare decoding
// error, and a malformed log line was skipped, so the perform succeeded.
func TestRemotePerformAgainstBrokenServer(t *testing.T) {
	b := newTestNode(t)
	ok := wire.AppendFrame(nil, wire.TOK, []byte(`{}`))
	result := wire.AppendFrame(nil, wire.TResult, []byte(`{"output":1}`))
	cases := []struct {
		name   string
		frames [][]byte
	}{
		{"garbage", [][]byte{ok, []byte("HTTP/1.1 200 OK\r\n\r\n")}},
		{"unknown frame type", [][]byte{ok, wire.AppendFrame(nil, wire.Type(200), []byte(`{}`)), result}},
		{"oversized header", [][]byte{ok, append(binary.AppendUvarint(nil, 1<<40), byte(wire.TResult))}},
		{"truncated result", [][]byte{ok, result[:5]}},
		{"malformed result", [][]byte{ok, wire.AppendFrame(nil, wire.TResult, []byte(`{"output":`))}},
		{"result with an unknown key", [][]byte{ok, wire.AppendFrame(nil, wire.TResult, []byte(`{"output":1,"admin":true}`))}},
		{"malformed log line", [][]byte{ok, wire.AppendFrame(nil, wire.TLog, []byte(`{"line":1}`)), result}},
		{"malformed error", [][]byte{ok, wire.AppendFrame(nil, wire.TError, []byte(`nope`))}},
		{"a second OK", [][]byte{ok, ok, result}},
		{"nothing, then close", [][]byte{ok}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pid := newFakePeer(t, b, func(s network.Stream, w func(...[]byte)) {
				w(c.frames...)
				_ = s.Close()
			})
			res, err := perform(testCtx(t), b, pid, "x", `1`)
			if err == nil {
				t.Fatalf("perform against a broken server succeeded: %+v", res)
			}
			if !errors.Is(err, node.ErrPeer) {
				t.Errorf("error %q (%T) does not match node.ErrPeer", err, err)
			}
			if !strings.Contains(err.Error(), pid) {
				t.Errorf("error %q does not name the peer", err)
			}
		})
	}
	// A well-formed answer still works, log lines included.
	pid := newFakePeer(t, b, func(s network.Stream, w func(...[]byte)) {
		w(ok, wire.AppendFrame(nil, wire.TLog, []byte(`{"line":"hi"}`)), result)
		_ = s.Close()
	})
	var lines []string
	res, err := b.Perform(testCtx(t), performReq(pid, "x"), func(l string) { lines = append(lines, l) })
	if err != nil || string(res.Output) != "1" || len(lines) != 1 || lines[0] != "hi" {
		t.Fatalf("well-formed answer: %+v, %v, lines %q", res, err, lines)
	}
}

func performReq(pid, action string) localapi.PerformRequest {
	return localapi.PerformRequest{Peer: pid, Action: action, Input: json.RawMessage(`1`)}
}

// A server that accepts the hello and then says nothing ends the call at
// the caller's deadline (action_timeout + 2 stream_timeout) with an error
// that says so; it said the peer "closed the stream".
func TestRemotePerformServerNeverAnswers(t *testing.T) {
	b := newTestNode(t, withLimits(func(l *node.LimitsConfig) {
		l.ActionTimeout = 100 * time.Millisecond
		l.StreamTimeout = time.Second
	}))
	hold := make(chan struct{})
	defer close(hold)
	pid := newFakePeer(t, b, func(s network.Stream, w func(...[]byte)) {
		w(wire.AppendFrame(nil, wire.TOK, []byte(`{}`)))
		<-hold
	})
	_, err := perform(testCtx(t), b, pid, "x", `1`)
	if !errors.Is(err, node.ErrPeer) || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("perform against a silent server: %v, want node.ErrPeer and os.ErrDeadlineExceeded", err)
	}
	if strings.Contains(err.Error(), "closed the stream") || !strings.Contains(err.Error(), "did not answer") {
		t.Errorf("error %q should say that the peer did not answer in time", err)
	}
}

// holdScript starts a child that ignores SIGTERM and holds stdout, records
// both pids in the directory named by its input, and waits.
const holdScript = `#!/bin/sh
trap '' TERM
dir=$(cat | tr -d '"')
sh -c 'trap "" TERM; exec sleep 1000' &
echo $! > "$dir/child.pid"
echo $$ > "$dir/main.pid"
wait
`

// A caller that gives up mid-perform is told it stopped the call (its
// error matches context.Canceled; it was a "stream reset" error of the
// peer), and the remote action stops: the program and its child, which
// ignore SIGTERM and hold stdout, die, and the stream's slot in
// max_streams_per_peer is freed.
func TestRemotePerformCallerGoneKillsAction(t *testing.T) {
	a := newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.MaxStreamsPerPeer = 1; l.ActionTimeout = time.Hour }))
	b := newTestNode(t)
	writeAction(t, a, "hold", holdScript)
	var echo counter
	register(t, a, "echo", echo.handler)
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})
	dir := t.TempDir()
	in, _ := json.Marshal(dir)

	ctx, cancel := context.WithCancel(testCtx(t))
	done := make(chan error, 1)
	go func() {
		_, err := b.Perform(ctx, localapi.PerformRequest{Peer: pid, Action: "hold", Input: in}, nil)
		done <- err
	}()
	main, child := readPID(t, filepath.Join(dir, "main.pid")), readPID(t, filepath.Join(dir, "child.pid"))
	cancel()
	if err := waitErr(t, done, "the cancelled perform"); !errors.Is(err, context.Canceled) || errors.Is(err, node.ErrPeer) {
		t.Errorf("cancelled perform: %v, want context.Canceled, not a peer failure", err)
	}
	checkFor(t, testTimeout, 10*time.Millisecond, func() error {
		if !processGone(main) || !processGone(child) {
			return fmt.Errorf("action processes %d/%d still run after the caller left", main, child)
		}
		return nil
	})
	checkFor(t, testTimeout, 10*time.Millisecond, func() error {
		_, err := perform(testCtx(t), b, pid, "echo", `1`)
		return err
	})
	if echo.count() != 1 {
		t.Errorf("echo ran %d times, want 1", echo.count())
	}
}

// A caller that closes its write half after the request (as after a list
// request), or sends another frame, still reads: its action is stopped and
// it is told why with bad_request. It was told "internal error", which
// PROTOCOL.md keeps for a bug or local failure of the sender.
func TestRemotePerformCallerHalfCloseIsToldWhy(t *testing.T) {
	a := newTestNode(t)
	blk := newBlocker()
	defer blk.unblock()
	register(t, a, "block", blk.handler)
	h := newStockHost(t, a)
	tok := issue(t, a, localapi.IssueRequest{Perform: []string{">"}, Bearers: []string{"vt://" + h.ID().String()}})
	hello := jsonFrame(t, wire.THello, wire.Hello{Token: tok.Token, Version: wire.Version})
	req := jsonFrame(t, wire.TRequest, wire.PerformRequest{Action: "block"})
	for name, after := range map[string]func(s network.Stream){
		"close write": func(s network.Stream) { _ = s.CloseWrite() },
		"extra frame": func(s network.Stream) { rvWrite(t, s, req) },
	} {
		t.Run(name, func(t *testing.T) {
			s := rawStream(t, h, a, wire.ProtoPerform)
			rvWrite(t, s, hello, req)
			r := wire.NewReader(s, 0)
			rvExpect(t, r, wire.TOK, nil)
			waitFor(t, blk.started, "the action to start")
			after(s)
			waitFor(t, blk.canceled, "the action to be stopped")
			if e := readErrorFrame(t, r); e.Code != wire.CodeBadRequest {
				t.Errorf("answered %s (%s), want %s", e.Code, e.Message, wire.CodeBadRequest)
			}
		})
	}
}

// Closing a node while a peer's stream is being served: the handler's
// context is cancelled and Close waits for it to return before it closes
// the queues and the datastore under it. Handlers ran on a context of
// their own and were not waited for, so one still finishing (here the
// perform handler, whose runner waits a second for the pipes a grandchild
// outside the action's process group holds) went on after Close, towards
// a closed datastore.
func TestCloseWaitsForStreamHandlers(t *testing.T) {
	var logs syncBuffer
	a := newTestNode(t, func(o *node.Options) { o.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	b := newTestNode(t, withQuietLog())
	writeAction(t, a, "hold", `#!/bin/sh
dir=$(cat | tr -d '"')
setsid sh -c 'echo $$ > "$0/escaped.pid"; exec sleep 30' "$dir" &
echo $$ > "$dir/main.pid"
wait
`)
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})
	dir := t.TempDir()
	in, _ := json.Marshal(dir)
	done := make(chan error, 1)
	go func() {
		_, err := b.Perform(testCtx(t), localapi.PerformRequest{Peer: pid, Action: "hold", Input: in}, nil)
		done <- err
	}()
	readPID(t, filepath.Join(dir, "main.pid"))
	escaped := readPID(t, filepath.Join(dir, "escaped.pid"))
	t.Cleanup(func() { _ = syscall.Kill(escaped, syscall.SIGKILL) })
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !strings.Contains(logs.String(), `msg="request failed"`) {
		t.Fatalf("Close returned before the perform handler finished; log so far:\n%s", logs.String())
	}
	if err := waitErr(t, done, "the perform at a closed node"); err == nil {
		t.Error("a perform at a node that closed succeeded")
	}
}

// An in-process action that ignores its context outlives its run: Run
// returns when the caller gives up, and the handler goes on. Closing the
// node waits for it before closing the datastore the handler may use; it
// used to close at once.
func TestCloseWaitsForAbandonedInProcessHandler(t *testing.T) {
	a := newTestNode(t, withQuietLog())
	started, abandoned := make(chan struct{}), make(chan struct{})
	var finished atomic.Bool
	register(t, a, "stubborn", func(ctx context.Context, _ json.RawMessage) (json.RawMessage, error) {
		close(started)
		<-ctx.Done()
		// Ignores the cancellation: runs on until the test has seen the
		// perform return, then for a while longer, into the node's Close.
		<-abandoned
		time.Sleep(300 * time.Millisecond)
		finished.Store(true)
		return nil, nil
	})
	ctx, cancel := context.WithCancel(testCtx(t))
	done := make(chan error, 1)
	go func() {
		_, err := a.Perform(ctx, localapi.PerformRequest{Action: "stubborn", Input: json.RawMessage(`1`)}, nil)
		done <- err
	}()
	<-started
	cancel()
	if err := waitErr(t, done, "the cancelled perform"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled perform: %v", err)
	}
	if finished.Load() {
		t.Fatal("the perform waited for the handler; this test needs it abandoned")
	}
	close(abandoned)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if !finished.Load() {
		t.Fatal("Close returned while an abandoned in-process handler still ran")
	}
}

// A subscription loop inside an in-process receiver that ignores its
// cancelled context cannot be ended; closing the node waited for it for
// ever (a service stop hung). It now waits handlersDrain, logs, and closes.
func TestCloseDoesNotHangOnStuckReceiver(t *testing.T) {
	pub, sub := newTestNode(t, withQuietLog()), newTestNode(t, withQuietLog())
	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	defer close(release)
	if err := sub.RegisterReceiver("stuck", func(context.Context, json.RawMessage) (json.RawMessage, error) {
		once.Do(func() { close(started) })
		<-release // ignores its context
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{">"}})
	if _, err := sub.Subscribe(testCtx(t), localapi.SubscribeRequest{Peer: pid, Pattern: "s.>", Receiver: "stuck"}); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(testCtx(t), "s.a", json.RawMessage(`1`)); err != nil {
		t.Fatal(err)
	}
	<-started
	defer node.SetHandlersDrain(200 * time.Millisecond)()
	closed := make(chan error, 1)
	go func() { closed <- sub.Close() }()
	if err := waitErr(t, closed, "Close of a node whose receiver is stuck"); err != nil {
		t.Fatal(err)
	}
}

// A peer making one request at a time is never refused by
// max_streams_per_peer: the stream's slot is freed as its answer goes out.
// It was freed once the handler had returned, a moment later, and a peer
// that opened its next stream at once was refused rate_limited (here,
// with a limit of 1, within a few dozen requests).
func TestOneRequestAtATimeIsNeverRateLimited(t *testing.T) {
	a := newTestNode(t, withQuietLog(), withLimits(func(l *node.LimitsConfig) { l.MaxStreamsPerPeer = 1 }))
	b := newTestNode(t, withQuietLog())
	var echo counter
	register(t, a, "echo", echo.handler)
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})
	for i := range 300 {
		if _, err := perform(testCtx(t), b, pid, "echo", `1`); err != nil {
			t.Fatalf("perform %d: %v", i, err)
		}
		if i%10 == 0 {
			if _, err := b.ListActions(testCtx(t), false, pid); err != nil {
				t.Fatalf("list after perform %d: %v", i, err)
			}
		}
	}
}
