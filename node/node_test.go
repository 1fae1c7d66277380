package node_test

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coattail/coattail/auth"
	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/protocol/identify"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
)

// blocker is an in-process action that runs until released or until its
// context ends, so a test can hold a perform stream open.
type blocker struct {
	started  chan struct{} // one send per invocation
	release  chan struct{} // closed to let every invocation return
	canceled chan struct{} // one send per invocation stopped by its context
	once     sync.Once
}

func newBlocker() *blocker {
	return &blocker{started: make(chan struct{}, 16), release: make(chan struct{}), canceled: make(chan struct{}, 16)}
}

func (b *blocker) handler(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
	b.started <- struct{}{}
	select {
	case <-b.release:
		return json.RawMessage(`"released"`), nil
	case <-ctx.Done():
		b.canceled <- struct{}{}
		return nil, ctx.Err()
	}
}

func (b *blocker) unblock() { b.once.Do(func() { close(b.release) }) }

// waitFor waits for a signal on ch, failing the test after testTimeout.
func waitFor(t testing.TB, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(testTimeout):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// waitErr waits for the result of an asynchronous call.
func waitErr(t testing.TB, ch <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(testTimeout):
		t.Fatalf("timed out waiting for %s", what)
		return nil
	}
}

func TestRemoteListAndPerform(t *testing.T) {
	a, b := newTestNode(t), newTestNode(t)
	var echo, secret counter
	register(t, a, "orders.echo", echo.handler)
	register(t, a, "admin.secret", secret.handler)
	ctx := testCtx(t)

	// An explicit empty subscribe list: by default a token may subscribe
	// to everything, which would list every action.
	pid, tok := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{"orders.*"}, Subscribe: []string{}})

	actions, err := b.ListActions(ctx, false, pid)
	if err != nil {
		t.Fatalf("remote list: %v", err)
	}
	if len(actions) != 1 || actions[0].Name != "orders.echo" || actions[0].Performable == nil || !*actions[0].Performable ||
		*actions[0].Subscribable || *actions[0].Publishable {
		t.Fatalf("remote list = %+v, want only orders.echo, performable", actions)
	}
	if _, err := b.ListActions(ctx, true, pid); err == nil {
		t.Error("a peer's receivers were listed")
	}

	// With the default subscribe permission every action is listed, with
	// what the token allows on each.
	c := newTestNode(t)
	pidC, _ := connectPeers(t, a, c, localapi.IssueRequest{Perform: []string{"orders.*"}})
	all, err := c.ListActions(ctx, false, pidC)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || all[0].Name != "admin.secret" || *all[0].Performable || !*all[0].Subscribable ||
		all[1].Name != "orders.echo" || !*all[1].Performable {
		t.Errorf("remote list with default subscribe = %+v", all)
	}

	res, err := perform(ctx, b, pid, "orders.echo", `{"n":42}`)
	if err != nil {
		t.Fatalf("remote perform: %v", err)
	}
	if string(res.Output) != `{"n":42}` {
		t.Errorf("output = %s, want the echoed input", res.Output)
	}
	if echo.count() != 1 || secret.count() != 0 {
		t.Errorf("invocations: echo %d, secret %d; want 1, 0", echo.count(), secret.count())
	}
	if got := a.Status().Counters.Performed; got != 1 {
		t.Errorf("issuer counts %d performs, want 1", got)
	}

	peers, err := b.ListPeers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(peers) != 1 || peers[0].ID != pid || peers[0].TokenID != tok.ID || !peers[0].Connected || peers[0].Connection != "direct" {
		t.Errorf("peer list = %+v, want %s connected directly with token %s", peers, pid, tok.ID)
	}
	show, err := b.ShowPeer(ctx, pid)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(show.Perform, []string{"orders.*"}) || show.RTT <= 0 {
		t.Errorf("peer show = %+v, want perform [orders.*] and a measured round trip", show)
	}
	// The stored record is a credential: nothing shown carries the token.
	if raw, _ := json.Marshal(show); strings.Contains(string(raw), tok.Token) {
		t.Error("peer show leaks the token")
	}

	// Unknown peers and removed peers are clear local errors.
	if _, err := perform(ctx, b, a.ID().String()+"x", "orders.echo", `1`); !errors.Is(err, node.ErrUnknownPeer) {
		t.Errorf("bad peer id: got %v, want ErrUnknownPeer", err)
	}
	if err := b.RemovePeer(ctx, pid); err != nil {
		t.Fatal(err)
	}
	if _, err := perform(ctx, b, pid, "orders.echo", `1`); !errors.Is(err, node.ErrUnknownPeer) {
		t.Errorf("removed peer: got %v, want ErrUnknownPeer", err)
	}
	if echo.count() != 1 {
		t.Errorf("echo ran %d times, want 1", echo.count())
	}
}

func TestAddPeerRefusesOwnToken(t *testing.T) {
	a := newTestNode(t)
	tok := issue(t, a, localapi.IssueRequest{Perform: []string{">"}})
	if _, err := a.AddPeer(testCtx(t), tok.Token); !errors.Is(err, node.ErrBadRequest) {
		t.Errorf("adding own token: got %v, want ErrBadRequest", err)
	}
	if _, err := a.AddPeer(testCtx(t), "not.a.jwt"); !errors.Is(err, auth.ErrInvalid) {
		t.Errorf("garbage token: got %v, want auth.ErrInvalid", err)
	}
}

func TestPerformDeniedNeverRuns(t *testing.T) {
	a, b := newTestNode(t), newTestNode(t)
	var echo, secret counter
	register(t, a, "echo", echo.handler)
	register(t, a, "secret", secret.handler)
	ctx := testCtx(t)
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{"echo"}})

	_, err := perform(ctx, b, pid, "secret", `{}`)
	wantWireCode(t, err, wire.CodeForbidden)
	errorsContain(t, err, "secret")

	// --notify needs the publish permission too, checked before running.
	_, err = b.Perform(ctx, localapi.PerformRequest{Peer: pid, Action: "echo", Input: json.RawMessage(`1`), Notify: true}, nil)
	wantWireCode(t, err, wire.CodeForbidden)

	// A subject that is not a valid name is refused as such.
	_, err = perform(ctx, b, pid, "bad..name", `1`)
	wantWireCode(t, err, wire.CodeBadRequest)

	if echo.count() != 0 || secret.count() != 0 {
		t.Fatalf("denied performs ran: echo %d, secret %d", echo.count(), secret.count())
	}
	// The control API maps a remote denial to 403 forbidden.
	c := localapi.InProcess(b.Handler(nil))
	defer c.Close()
	_, err = c.Perform(ctx, localapi.PerformRequest{Peer: pid, Action: "secret", Input: json.RawMessage(`1`)}, nil)
	var le *localapi.Error
	if !errors.As(err, &le) || le.Code != localapi.CodeForbidden {
		t.Errorf("control API denial: got %v, want code %s", err, localapi.CodeForbidden)
	}
	if _, err := perform(ctx, b, pid, "echo", `1`); err != nil {
		t.Fatalf("permitted perform after denials: %v", err)
	}
	if echo.count() != 1 || secret.count() != 0 {
		t.Fatalf("invocations: echo %d, secret %d; want 1, 0", echo.count(), secret.count())
	}
}

// forgeExpired signs, with n's identity key, a capability token that
// expired an hour ago: the issuer's own API cannot issue one, and waiting
// for a real token to expire would make the test slow.
func forgeExpired(t *testing.T, n *node.Node) string {
	t.Helper()
	k, err := node.LoadKey(filepath.Join(n.Dir(), "keys", "identity.key"))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := k.Raw()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	c := auth.Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    n.ID().String(),
			ID:        uuid.NewString(),
			IssuedAt:  jwt.NewNumericDate(now.Add(-2 * time.Hour)),
			NotBefore: jwt.NewNumericDate(now.Add(-2 * time.Hour)),
			ExpiresAt: jwt.NewNumericDate(now.Add(-time.Hour)),
		},
		Type:    auth.TypeCapability,
		Perform: []string{">"},
	}
	for _, a := range n.Host().Addrs() {
		c.Addrs = append(c.Addrs, a.String())
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c).SignedString(ed25519.PrivateKey(raw))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestExpiredAndNotYetValidTokensRefused(t *testing.T) {
	a, b := newTestNode(t), newTestNode(t)
	var echo counter
	register(t, a, "echo", echo.handler)
	ctx := testCtx(t)

	_, err := b.AddPeer(ctx, forgeExpired(t, a))
	wantWireCode(t, err, wire.CodeUnauthorized)
	errorsContain(t, err, "expired")

	later := issue(t, a, localapi.IssueRequest{Perform: []string{">"}, NotBefore: localapi.Duration(time.Hour), ExpiresIn: localapi.Duration(2 * time.Hour)})
	_, err = b.AddPeer(ctx, later.Token)
	wantWireCode(t, err, wire.CodeUnauthorized)
	errorsContain(t, err, "not yet valid")

	if peers, err := b.ListPeers(ctx); err != nil || len(peers) != 0 {
		t.Errorf("refused tokens left peers behind: %+v, %v", peers, err)
	}
	if echo.count() != 0 {
		t.Errorf("echo ran %d times", echo.count())
	}
}

// A revoked token's perform in flight is stopped at once, and its caller
// told that the token was revoked; the next is refused.
func TestRevokeClosesOpenStreamAndRefusesNext(t *testing.T) {
	a, b := newTestNode(t), newTestNode(t)
	blk := newBlocker()
	defer blk.unblock()
	var echo counter
	register(t, a, "block", blk.handler)
	register(t, a, "echo", echo.handler)
	ctx := testCtx(t)
	pid, tok := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})

	done := make(chan error, 1)
	go func() {
		_, err := perform(ctx, b, pid, "block", `null`)
		done <- err
	}()
	waitFor(t, blk.started, "the blocking action to start")

	if err := a.RevokeToken(ctx, tok.ID); err != nil {
		t.Fatalf("RevokeToken: %v", err)
	}
	// The caller of the perform in flight is told why it ended; it used to
	// see only "reset the stream before answering".
	err := waitErr(t, done, "the open perform stream to end after revocation")
	wantWireCode(t, err, wire.CodeUnauthorized)
	errorsContain(t, err, "token revoked", tok.ID)
	// The action under the revoked stream is cancelled, not left running.
	waitFor(t, blk.canceled, "the action's context to end")

	// The next is refused: by the issuer, which tells the holder which
	// token it revoked first, or, once the holder knows, by the holder
	// itself; either way the holder's error says what to do.
	_, err = perform(ctx, b, pid, "echo", `1`)
	if !errors.Is(err, node.ErrPeerTokenRevoked) {
		t.Fatalf("perform after revocation: %T %v, want node.ErrPeerTokenRevoked", err, err)
	}
	errorsContain(t, err, "revoked by its issuer", tok.ID, "coattail peer add --token")
	if echo.count() != 0 {
		t.Errorf("echo ran %d times after revocation", echo.count())
	}
	if _, err := a.Authority().Token(ctx, tok.ID); !errors.Is(err, auth.ErrNotFound) {
		t.Errorf("revoked token record: got %v, want auth.ErrNotFound", err)
	}
}

func TestTokenBoundToOtherPeerRefused(t *testing.T) {
	a, b, c := newTestNode(t), newTestNode(t), newTestNode(t)
	var echo counter
	register(t, a, "echo", echo.handler)
	ctx := testCtx(t)

	// Claim on first use: B claims the token, C then presents the same one.
	pid, tok := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})
	_, err := c.AddPeer(ctx, tok.Token)
	wantWireCode(t, err, wire.CodeUnauthorized)
	errorsContain(t, err, "claimed")
	if rec, err := a.Authority().Token(ctx, tok.ID); err != nil || rec.ClaimedBy != b.ID().String() {
		t.Errorf("token claimed by %q (%v), want %s", rec.ClaimedBy, err, b.ID())
	}

	// Explicit bearer: a token for vt://B is refused from C.
	bound := issue(t, a, localapi.IssueRequest{Perform: []string{">"}, Bearers: []string{"vt://" + b.ID().String()}})
	_, err = c.AddPeer(ctx, bound.Token)
	wantWireCode(t, err, wire.CodeUnauthorized)
	errorsContain(t, err, "not a bearer")

	if echo.count() != 0 {
		t.Fatalf("echo ran %d times for refused peers", echo.count())
	}
	// The rightful bearer is unaffected.
	if _, err := perform(ctx, b, pid, "echo", `1`); err != nil {
		t.Fatalf("claimer's perform: %v", err)
	}

	// A reusable token serves several peers.
	shared := issue(t, a, localapi.IssueRequest{Perform: []string{">"}, Reusable: true})
	d := newTestNode(t)
	for _, n := range []*node.Node{c, d} {
		if _, err := n.AddPeer(ctx, shared.Token); err != nil {
			t.Fatalf("reusable token: %v", err)
		}
		if _, err := perform(ctx, n, pid, "echo", `1`); err != nil {
			t.Fatalf("perform with reusable token: %v", err)
		}
	}
	if echo.count() != 3 {
		t.Errorf("echo ran %d times, want 3", echo.count())
	}
}

// rawStream opens a protocol stream from a stock libp2p host to n.
func rawStream(t *testing.T, h host.Host, n *node.Node, proto string) network.Stream {
	t.Helper()
	s, err := h.NewStream(testCtx(t), n.ID(), protocol.ID(proto))
	if err != nil {
		t.Fatalf("NewStream %s: %v", proto, err)
	}
	t.Cleanup(func() { _ = s.Reset() })
	return s
}

// sendFrames writes raw bytes and closes the write half. Write errors are
// expected and ignored: the node may refuse the stream after the first
// frame and stop reading, and what matters is what it answers.
func sendFrames(t *testing.T, s network.Stream, frames ...[]byte) {
	t.Helper()
	for _, f := range frames {
		if _, err := s.Write(f); err != nil {
			t.Logf("write refused (the node stopped reading): %v", err)
			return
		}
	}
	if err := s.CloseWrite(); err != nil {
		t.Logf("close write refused (the node stopped reading): %v", err)
	}
}

func jsonFrame(t *testing.T, typ wire.Type, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return wire.AppendFrame(nil, typ, b)
}

func TestUnauthenticatedStreamGetsOnlyAnError(t *testing.T) {
	a, b := newTestNode(t), newTestNode(t)
	var echo counter
	register(t, a, "echo", echo.handler)
	h := newStockHost(t, a)
	forB := issue(t, a, localapi.IssueRequest{Perform: []string{">"}, Bearers: []string{"vt://" + b.ID().String()}})
	req := wire.PerformRequest{Action: "echo", Input: json.RawMessage(`1`)}

	cases := []struct {
		name   string
		frames [][]byte
		code   wire.Code
	}{
		{"garbage", [][]byte{[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")}, wire.CodeBadRequest},
		{"nothing", nil, wire.CodeBadRequest},
		{"request without hello", [][]byte{jsonFrame(t, wire.TRequest, req)}, wire.CodeUnauthorized},
		{"hello without token", [][]byte{jsonFrame(t, wire.THello, wire.Hello{Version: wire.Version}), jsonFrame(t, wire.TRequest, req)}, wire.CodeUnauthorized},
		{"hello with garbage token", [][]byte{jsonFrame(t, wire.THello, wire.Hello{Token: "a.b.c", Version: wire.Version}), jsonFrame(t, wire.TRequest, req)}, wire.CodeUnauthorized},
		{"hello with another peer's token", [][]byte{jsonFrame(t, wire.THello, wire.Hello{Token: forB.Token, Version: wire.Version}), jsonFrame(t, wire.TRequest, req)}, wire.CodeUnauthorized},
		{"hello of another version", [][]byte{jsonFrame(t, wire.THello, wire.Hello{Token: forB.Token, Version: "9.0.0"}), jsonFrame(t, wire.TRequest, req)}, wire.CodeVersion},
		{"hello without a version", [][]byte{jsonFrame(t, wire.THello, wire.Hello{Token: forB.Token}), jsonFrame(t, wire.TRequest, req)}, wire.CodeVersion},
		{"hello with unknown field", [][]byte{wire.AppendFrame(nil, wire.THello, []byte(`{"token":"x","version":"1.0.0","admin":true}`)), jsonFrame(t, wire.TRequest, req)}, wire.CodeBadRequest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := rawStream(t, h, a, wire.ProtoPerform)
			sendFrames(t, s, c.frames...)
			e := readErrorFrame(t, wire.NewReader(s, 0))
			if e.Code != c.code {
				t.Errorf("error code %s (%s), want %s", e.Code, e.Message, c.code)
			}
		})
	}
	if echo.count() != 0 {
		t.Fatalf("an unauthenticated stream ran the action %d times", echo.count())
	}
	// B's token still works for B: the stock host's attempt did not claim
	// or otherwise change it.
	if _, err := b.AddPeer(testCtx(t), forB.Token); err != nil {
		t.Fatalf("B with its own token: %v", err)
	}
}

func TestStockLibp2pPeerPingsAndIdentifies(t *testing.T) {
	a := newTestNode(t)
	h := newStockHost(t, a)
	ctx := testCtx(t)
	res := <-ping.Ping(ctx, h, a.ID())
	if res.Error != nil {
		t.Fatalf("ping: %v", res.Error)
	}
	want := []protocol.ID{wire.ProtoList, wire.ProtoPerform, wire.ProtoPublish, ping.ID, identify.ID}
	checkFor(t, testTimeout, 10*time.Millisecond, func() error {
		got, err := h.Peerstore().GetProtocols(a.ID())
		if err != nil {
			return err
		}
		for _, p := range want {
			if !slices.Contains(got, p) {
				return fmt.Errorf("identify shows protocols %v, missing %s", got, p)
			}
		}
		return nil
	})
	av, err := h.Peerstore().Get(a.ID(), "AgentVersion")
	if err != nil || !strings.HasPrefix(fmt.Sprint(av), "coattail/") {
		t.Errorf("agent version %v (%v), want coattail/<version>", av, err)
	}
}

func TestRateLimitIsPerPeer(t *testing.T) {
	// Three streams, then effectively none: refill is one per 1000 s, so
	// the test does not depend on how fast it runs.
	a := newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.RateLimit = 0.001; l.RateBurst = 3 }))
	b, c := newTestNode(t), newTestNode(t)
	var echo counter
	register(t, a, "echo", echo.handler)
	ctx := testCtx(t)
	req := localapi.IssueRequest{Perform: []string{">"}}
	pidB, _ := connectPeers(t, a, b, req) // stream 1 of B's burst
	pidC, _ := connectPeers(t, a, c, req) // stream 1 of C's burst

	for i := 0; i < 2; i++ {
		if _, err := perform(ctx, b, pidB, "echo", `1`); err != nil {
			t.Fatalf("B perform %d within the burst: %v", i, err)
		}
	}
	_, err := perform(ctx, b, pidB, "echo", `1`)
	wantWireCode(t, err, wire.CodeRateLimited)
	var we *wire.Error
	if errors.As(err, &we) && we.RetryAfterMs <= 0 {
		t.Errorf("rate_limited error without retry_after_ms: %+v", we)
	}
	if echo.count() != 2 {
		t.Fatalf("echo ran %d times, want 2 (the refused request must not run)", echo.count())
	}
	// B is throttled; C is not.
	for i := 0; i < 2; i++ {
		if _, err := perform(ctx, c, pidC, "echo", `1`); err != nil {
			t.Fatalf("C perform %d while B is limited: %v", i, err)
		}
	}
	_, err = perform(ctx, b, pidB, "echo", `1`)
	wantWireCode(t, err, wire.CodeRateLimited)
	if echo.count() != 4 {
		t.Fatalf("echo ran %d times, want 4", echo.count())
	}
}

// startBlocked starts a remote perform of action and returns once the
// action runs. A refusal by the stream limit is retried: the issuer frees
// a stream slot just after its answer leaves, so a request sent right after
// an earlier one finished may still find that slot taken.
func startBlocked(t *testing.T, ctx context.Context, n *node.Node, pid, action string, blk *blocker) <-chan error {
	t.Helper()
	for {
		done := make(chan error, 1)
		go func() {
			_, err := perform(ctx, n, pid, action, `null`)
			done <- err
		}()
		select {
		case <-blk.started:
			return done
		case err := <-done:
			if !wire.IsCode(err, wire.CodeRateLimited) {
				t.Fatalf("blocking perform ended early: %v", err)
			}
		case <-ctx.Done():
			t.Fatalf("blocking perform did not start: %v", ctx.Err())
		}
	}
}

func TestMaxStreamsPerPeer(t *testing.T) {
	a := newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.MaxStreamsPerPeer = 2 }))
	b, c := newTestNode(t), newTestNode(t)
	blk := newBlocker()
	defer blk.unblock()
	var echo counter
	register(t, a, "block", blk.handler)
	register(t, a, "echo", echo.handler)
	ctx := testCtx(t)
	req := localapi.IssueRequest{Perform: []string{">"}}
	pidB, _ := connectPeers(t, a, b, req)
	pidC, _ := connectPeers(t, a, c, req)

	first := startBlocked(t, ctx, b, pidB, "block", blk)
	second := startBlocked(t, ctx, b, pidB, "block", blk)

	_, err := perform(ctx, b, pidB, "echo", `1`)
	wantWireCode(t, err, wire.CodeRateLimited)
	errorsContain(t, err, "concurrent streams")
	if echo.count() != 0 {
		t.Fatalf("echo ran over the stream limit")
	}
	// Another peer is not affected by B's open streams.
	if _, err := perform(ctx, c, pidC, "echo", `1`); err != nil {
		t.Fatalf("C while B holds its maximum: %v", err)
	}

	blk.unblock()
	for _, ch := range []<-chan error{first, second} {
		if err := waitErr(t, ch, "a released perform"); err != nil {
			t.Fatalf("released perform: %v", err)
		}
	}
	// Slots are freed once the streams end.
	checkFor(t, testTimeout, 5*time.Millisecond, func() error {
		_, err := perform(ctx, b, pidB, "echo", `1`)
		return err
	})
}

func TestOversizedFrameRefusedAndNodeKeepsServing(t *testing.T) {
	a := newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.MaxPayload = 1024 }))
	b := newTestNode(t)
	var echo counter
	register(t, a, "echo", echo.handler)
	ctx := testCtx(t)
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})

	// Over the frame limit (max_payload + 64 KiB of headroom).
	big := `"` + strings.Repeat("x", 100<<10) + `"`
	_, err := perform(ctx, b, pid, "echo", big)
	wantWireCode(t, err, wire.CodeTooLarge)

	// Within a frame but over max_payload: the runner refuses the input.
	medium := `"` + strings.Repeat("x", 2<<10) + `"`
	_, err = perform(ctx, b, pid, "echo", medium)
	wantWireCode(t, err, wire.CodeTooLarge)
	if echo.count() != 0 {
		t.Fatalf("echo ran %d times with oversized input", echo.count())
	}

	// A stock peer announcing a huge hello gets an error frame, before the
	// node reads (or allocates) the payload.
	h := newStockHost(t, a)
	s := rawStream(t, h, a, wire.ProtoPerform)
	hdr := binary.AppendUvarint(nil, 1<<30)
	sendFrames(t, s, append(hdr, byte(wire.THello)))
	if e := readErrorFrame(t, wire.NewReader(s, 0)); e.Code != wire.CodeTooLarge {
		t.Errorf("huge hello: code %s (%s), want %s", e.Code, e.Message, wire.CodeTooLarge)
	}

	if _, err := perform(ctx, b, pid, "echo", `"small"`); err != nil {
		t.Fatalf("node stopped serving after oversized frames: %v", err)
	}
	if echo.count() != 1 {
		t.Errorf("echo ran %d times, want 1", echo.count())
	}
}

// chattyScript logs five lines on stderr, then waits until the file named
// in its input exists, so the caller can prove it saw the lines while the
// action was still running.
const chattyScript = `#!/bin/sh
input=$(cat)
gate=$(printf '%s' "$input" | tr -d '"')
for i in 1 2 3 4 5; do echo "line $i" >&2; done
while [ -n "$gate" ] && [ ! -e "$gate" ]; do sleep 0.01; done
echo "after gate" >&2
echo '{"done":true}'
`

// gateLogger records log lines and opens the gate file when it sees want.
type gateLogger struct {
	mu    sync.Mutex
	lines []string
	gate  string
	want  string
	err   error
}

func (g *gateLogger) log(line string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.lines = append(g.lines, line)
	if line == g.want && g.gate != "" {
		g.err = os.WriteFile(g.gate, nil, 0o600)
	}
}

func (g *gateLogger) got() ([]string, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.lines), g.err
}

var chattyLines = []string{"line 1", "line 2", "line 3", "line 4", "line 5", "after gate"}

func TestActionLogsStreamLiveInOrder(t *testing.T) {
	a := newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.ActionTimeout = testTimeout }))
	b := newTestNode(t)
	writeAction(t, a, "chatty", chattyScript)
	ctx := testCtx(t)
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{"chatty"}})

	gate := filepath.Join(t.TempDir(), "gate")
	g := &gateLogger{gate: gate, want: "line 5"}
	in, _ := json.Marshal(gate)
	res, err := b.Perform(ctx, localapi.PerformRequest{Peer: pid, Action: "chatty", Input: in}, g.log)
	if err != nil {
		t.Fatalf("remote perform: %v (log lines seen: %v)", err, g.lines)
	}
	lines, gerr := g.got()
	if gerr != nil {
		t.Fatal(gerr)
	}
	if !slices.Equal(lines, chattyLines) {
		t.Errorf("log lines = %q, want %q", lines, chattyLines)
	}
	if string(res.Output) != `{"done":true}` {
		t.Errorf("output = %s", res.Output)
	}
}

func TestControlAPI(t *testing.T) {
	a, b := newTestNode(t), newTestNode(t)
	var echo counter
	register(t, a, "echo", echo.handler)
	writeAction(t, a, "chatty", chattyScript)
	ctx := testCtx(t)
	stopped := make(chan struct{})
	ca := localapi.InProcess(a.Handler(func() { close(stopped) }))
	defer ca.Close()
	cb := localapi.InProcess(b.Handler(nil))
	defer cb.Close()

	st, err := ca.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.PeerID != a.ID().String() || !st.Online || len(st.ListenAddrs) == 0 || st.Version != node.Version || st.Instance != a.Dir() {
		t.Errorf("status = %+v", st)
	}
	// The relay transport's bare /p2p-circuit is no address to list.
	if slices.Contains(st.ListenAddrs, "/p2p-circuit") {
		t.Errorf("status lists /p2p-circuit among the listen addresses: %v", st.ListenAddrs)
	}

	acts, err := ca.Actions(ctx, false, "")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]localapi.ActionInfo{}
	for _, x := range acts {
		names[x.Name] = x
	}
	if !names["echo"].InProcess || !names["chatty"].Executable || names["chatty"].InProcess || len(acts) != 2 {
		t.Errorf("actions = %+v, want echo (in-process) and chatty (executable)", acts)
	}

	// Local perform streams the log lines, then the result.
	var lines []string
	res, err := ca.Perform(ctx, localapi.PerformRequest{Action: "chatty", Input: json.RawMessage(`""`)}, func(l string) { lines = append(lines, l) })
	if err != nil {
		t.Fatalf("perform via control API: %v", err)
	}
	if !slices.Equal(lines, chattyLines) || string(res.Output) != `{"done":true}` {
		t.Errorf("perform: lines %q, output %s", lines, res.Output)
	}
	var le *localapi.Error
	if _, err := ca.Perform(ctx, localapi.PerformRequest{Action: "missing", Input: json.RawMessage(`1`)}, nil); !errors.As(err, &le) || le.Code != localapi.CodeNotFound {
		t.Errorf("perform of a missing action: got %v, want code %s", err, localapi.CodeNotFound)
	}

	// Tokens: issue, list (without the secret), show, use, revoke.
	tok, err := ca.IssueToken(ctx, localapi.IssueRequest{Perform: []string{"echo"}, Subscribe: []string{}, ExpiresIn: localapi.Duration(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if tok.Token == "" || tok.ID == "" || tok.Issuer != a.ID().String() || len(tok.Addrs) == 0 || tok.ExpiresAt == nil {
		t.Fatalf("issued token = %+v", tok)
	}
	list, err := ca.Tokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != tok.ID || list[0].Token != "" {
		t.Errorf("token list = %+v, want %s without its secret", list, tok.ID)
	}
	if one, err := ca.Token(ctx, tok.ID); err != nil || one.ID != tok.ID || one.Token != "" {
		t.Errorf("token show = %+v, %v", one, err)
	}

	p, err := cb.AddPeer(ctx, tok.Token)
	if err != nil {
		t.Fatalf("peer add via control API: %v", err)
	}
	remote, err := cb.Actions(ctx, false, p.ID)
	if err != nil || len(remote) != 1 || remote[0].Name != "echo" {
		t.Errorf("remote actions via control API = %+v, %v", remote, err)
	}
	out, err := cb.Perform(ctx, localapi.PerformRequest{Peer: p.ID, Action: "echo", Input: json.RawMessage(`[1,2]`)}, nil)
	if err != nil || string(out.Output) != `[1,2]` {
		t.Errorf("remote perform via control API = %+v, %v", out, err)
	}

	if err := ca.RevokeToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	if list, err := ca.Tokens(ctx); err != nil || len(list) != 0 {
		t.Errorf("token list after revoke = %+v, %v", list, err)
	}
	if err := ca.RevokeToken(ctx, tok.ID); !errors.As(err, &le) || le.Status != http.StatusNotFound {
		t.Errorf("second revoke: got %v, want 404", err)
	}
	_, err = cb.Perform(ctx, localapi.PerformRequest{Peer: p.ID, Action: "echo", Input: json.RawMessage(`1`)}, nil)
	if !errors.As(err, &le) || le.Code != localapi.CodeForbidden {
		t.Errorf("perform with revoked token via control API: got %v, want %s", err, localapi.CodeForbidden)
	}

	// Unknown routes and bad bodies are JSON errors.
	err = ca.Do(ctx, http.MethodGet, "/no/such/route", nil, nil)
	if !errors.As(err, &le) || le.Status != http.StatusNotFound || le.Code != localapi.CodeNotFound || !strings.Contains(le.Message, "/v1/no/such/route") {
		t.Errorf("unknown route: got %#v", err)
	}
	err = ca.Do(ctx, http.MethodPost, "/tokens", map[string]any{"perform": []string{"x"}, "admin": true}, nil)
	if !errors.As(err, &le) || le.Status != http.StatusBadRequest || le.Code != localapi.CodeBadRequest {
		t.Errorf("unknown field in body: got %#v", err)
	}
	if err := cb.Stop(ctx); !errors.As(err, &le) || le.Code != localapi.CodeConflict {
		t.Errorf("stop without a service: got %v, want %s", err, localapi.CodeConflict)
	}
	if err := ca.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, stopped, "the stop callback")
}
