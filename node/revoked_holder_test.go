package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// peerRevokedAt returns when n was told that peer id revoked the token n
// holds for it (nil: not revoked), checking that list and show agree.
func peerRevokedAt(t testing.TB, n *node.Node, id string) *time.Time {
	t.Helper()
	ctx := testCtx(t)
	// List first: a notice may come in between, never go away.
	ps, err := n.ListPeers(ctx)
	if err != nil {
		t.Fatalf("ListPeers: %v", err)
	}
	p, err := n.ShowPeer(ctx, id)
	if err != nil {
		t.Fatalf("ShowPeer: %v", err)
	}
	for _, l := range ps {
		if l.ID == id && l.RevokedAt != nil && (p.RevokedAt == nil || !p.RevokedAt.Equal(*l.RevokedAt)) {
			t.Fatalf("peer list says revoked_at %v, peer show %v", l.RevokedAt, p.RevokedAt)
		}
	}
	return p.RevokedAt
}

// waitRevokedAt waits until n marks peer id's token revoked.
func waitRevokedAt(t testing.TB, n *node.Node, id string) time.Time {
	t.Helper()
	var at *time.Time
	checkFor(t, testTimeout, 10*time.Millisecond, func() error {
		if at = peerRevokedAt(t, n, id); at == nil {
			return errors.New("the holder does not show the token revoked yet")
		}
		return nil
	})
	return *at
}

// wantLocalRevoked fails unless err is the holder's own refusal of a call
// with a token its issuer revoked.
func wantLocalRevoked(t testing.TB, err error, peerID, tokenID string) {
	t.Helper()
	var re *node.TokenRevokedError
	if !errors.As(err, &re) || !errors.Is(err, node.ErrPeerTokenRevoked) {
		t.Fatalf("got %T %v, want a *node.TokenRevokedError", err, err)
	}
	var we *wire.Error
	if errors.As(err, &we) {
		t.Fatalf("the local refusal carries a remote error: %v", err)
	}
	errorsContain(t, err, "the token for peer "+peerID, tokenID, "revoked by its issuer at", "coattail peer add --token")
}

// sendRevokeNotice opens proto from h to the node to and sends notice,
// returning the answer's frame type and error (if a TError).
func sendRevokeNotice(t testing.TB, h host.Host, to peer.ID, proto string, notice wire.RevokeNotice) (wire.Type, *wire.Error) {
	t.Helper()
	s, err := h.NewStream(testCtx(t), to, protocol.ID(proto))
	if err != nil {
		t.Fatalf("open %s: %v", proto, err)
	}
	defer s.Close()
	w := wire.NewWriter(s)
	if err := w.JSON(wire.TRequest, notice); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = s.CloseWrite()
	typ, payload, err := wire.NewReader(s, 1<<20).Next()
	if err != nil {
		t.Fatalf("reading the answer to the notice: %v", err)
	}
	if typ != wire.TError {
		return typ, nil
	}
	var e wire.Error
	if err := wire.DecodeJSON(payload, &e); err != nil {
		t.Fatal(err)
	}
	return typ, &e
}

// The issuer tells the holder which token it revoked: the holder shows it
// revoked (durably: also after a restart), and refuses calls that need it
// itself, with what to do, without asking the issuer (which is gone).
func TestRevokedTokenShownAndRefusedAtHolder(t *testing.T) {
	a := newTestNode(t)
	var echo counter
	register(t, a, "echo", echo.handler)
	_, openB := reopenable(t)
	b := openB(false, nil)
	ctx := testCtx(t)
	pid, tok := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})
	if at := peerRevokedAt(t, b, pid); at != nil {
		t.Fatalf("a fresh token shows revoked at %v", at)
	}
	before := time.Now().Add(-time.Second)
	if err := a.RevokeToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	// No call needed: the issuer tells the holder it knows of.
	at := waitRevokedAt(t, b, pid)
	if at.Before(before) || at.After(time.Now()) {
		t.Errorf("revoked at %v, want the issuer's revocation time", at)
	}

	if err := a.Close(); err != nil { // the issuer is not asked again
		t.Fatal(err)
	}
	_, err := perform(ctx, b, pid, "echo", `1`)
	wantLocalRevoked(t, err, pid, tok.ID)
	_, err = b.ListActions(ctx, false, pid)
	wantLocalRevoked(t, err, pid, tok.ID)
	_, err = b.PublishRequest(ctx, localapi.PublishRequest{Peer: pid, Action: "echo"})
	wantLocalRevoked(t, err, pid, tok.ID)
	if echo.count() != 0 {
		t.Errorf("echo ran %d times", echo.count())
	}

	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = openB(false, nil)
	if got := peerRevokedAt(t, b, pid); got == nil || !got.Equal(at) {
		t.Fatalf("after a restart the holder shows revoked at %v, want %v", got, at)
	}
	_, err = perform(ctx, b, pid, "echo", `1`)
	wantLocalRevoked(t, err, pid, tok.ID)
}

// A holder that was down when its token was revoked learns it from the
// refusal of its next call: the issuer tells it which token first, so
// already that call's error says what to do, and the next ones fail here.
func TestRevokedTokenLearnedAtNextContact(t *testing.T) {
	var logs syncBuffer
	a := newTestNode(t, func(o *node.Options) {
		o.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	var echo counter
	register(t, a, "echo", echo.handler)
	_, openB := reopenable(t)
	b := openB(false, nil)
	ctx := testCtx(t)
	pid, tok := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.RevokeToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	// The issuer tried to tell it, and could not.
	checkFor(t, testTimeout, 20*time.Millisecond, func() error {
		if !strings.Contains(logs.String(), "could not tell a holder that its token was revoked") {
			return errors.New("the issuer has not given up telling the holder yet")
		}
		return nil
	})

	b = openB(false, nil)
	if at := peerRevokedAt(t, b, pid); at != nil {
		t.Fatalf("the holder shows the token revoked at %v before it heard of it", at)
	}
	_, err := perform(ctx, b, pid, "echo", `1`)
	wantLocalRevoked(t, err, pid, tok.ID)
	waitRevokedAt(t, b, pid) // recorded already: no waiting needed
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = perform(ctx, b, pid, "echo", `1`)
	wantLocalRevoked(t, err, pid, tok.ID)
	if echo.count() != 0 {
		t.Errorf("echo ran %d times", echo.count())
	}
}

// Only the issuer of the token held for a peer can mark it revoked: a
// notice from another peer naming it (even one the holder also holds a
// token of) is refused and changes nothing, so is the issuer's notice of
// a token no longer held, and a 1.0.0 notice cannot carry a token.
func TestForgedTokenRevocationIgnored(t *testing.T) {
	a, b, c := newTestNode(t), newTestNode(t), newTestNode(t)
	var echo counter
	register(t, a, "echo", echo.handler)
	ctx := testCtx(t)
	pid, tok := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})
	connectPeers(t, c, b, localapi.IssueRequest{Perform: []string{">"}})

	now := time.Now().UTC()
	forged := wire.RevokeNotice{TokenID: tok.ID, RevokedAt: &now, Reason: "token revoked"}
	if typ, we := sendRevokeNotice(t, c.Host(), b.ID(), wire.ProtoRevoke11, forged); typ != wire.TError || we.Code != wire.CodeNotFound {
		t.Errorf("another peer's revocation of the issuer's token: answered %v %v, want not_found", typ, we)
	}
	if typ, we := sendRevokeNotice(t, c.Host(), b.ID(), wire.ProtoRevoke, forged); typ != wire.TError || we.Code != wire.CodeBadRequest {
		t.Errorf("a token notice on revoke 1.0.0: answered %v %v, want bad_request", typ, we)
	}
	// A stock libp2p host, not a peer of the holder at all.
	stock := newStockHost(t, b)
	if typ, we := sendRevokeNotice(t, stock, b.ID(), wire.ProtoRevoke11, forged); typ != wire.TError || we.Code != wire.CodeNotFound {
		t.Errorf("a stranger's revocation of the issuer's token: answered %v %v, want not_found", typ, we)
	}
	// The issuer itself, about a token it did not give the holder.
	other := issue(t, a, localapi.IssueRequest{Perform: []string{">"}})
	if typ, we := sendRevokeNotice(t, a.Host(), b.ID(), wire.ProtoRevoke11, wire.RevokeNotice{TokenID: other.ID}); typ != wire.TError || we.Code != wire.CodeNotFound {
		t.Errorf("the issuer's revocation of a token the holder does not hold: answered %v %v, want not_found", typ, we)
	}
	if at := peerRevokedAt(t, b, pid); at != nil {
		t.Fatalf("forged notices marked the token revoked at %v", at)
	}
	if at := peerRevokedAt(t, b, c.ID().String()); at != nil {
		t.Fatalf("the forger's own token shows revoked at %v", at)
	}
	if _, err := perform(ctx, b, pid, "echo", `1`); err != nil {
		t.Fatalf("perform after forged notices: %v", err)
	}
}

// peer add with a new token of the issuer clears the revoked state: the
// new token works, and a late notice about the old one changes nothing.
func TestPeerAddReplacesRevokedToken(t *testing.T) {
	a, b := newTestNode(t), newTestNode(t)
	var echo counter
	register(t, a, "echo", echo.handler)
	ctx := testCtx(t)
	pid, old := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})
	if err := a.RevokeToken(ctx, old.ID); err != nil {
		t.Fatal(err)
	}
	waitRevokedAt(t, b, pid)
	_, err := perform(ctx, b, pid, "echo", `1`)
	wantLocalRevoked(t, err, pid, old.ID)

	// Adding the revoked token again is refused by the issuer.
	_, err = b.AddPeer(ctx, old.Token)
	wantWireCode(t, err, wire.CodeUnauthorized)
	errorsContain(t, err, "revoked")

	fresh := issue(t, a, localapi.IssueRequest{Perform: []string{">"}})
	p, err := b.AddPeer(ctx, fresh.Token)
	if err != nil {
		t.Fatal(err)
	}
	if p.RevokedAt != nil || p.TokenID != fresh.ID {
		t.Fatalf("after peer add of a new token: token %s revoked at %v, want %s not revoked", p.TokenID, p.RevokedAt, fresh.ID)
	}
	if at := peerRevokedAt(t, b, pid); at != nil {
		t.Fatalf("the new token shows revoked at %v", at)
	}
	if _, err := perform(ctx, b, pid, "echo", `1`); err != nil {
		t.Fatalf("perform with the new token: %v", err)
	}
	// The issuer repeating the old token's revocation is about a token
	// no longer held.
	now := time.Now().UTC()
	if typ, we := sendRevokeNotice(t, a.Host(), b.ID(), wire.ProtoRevoke11, wire.RevokeNotice{TokenID: old.ID, RevokedAt: &now}); typ != wire.TError || we.Code != wire.CodeNotFound {
		t.Errorf("a late notice about the replaced token: answered %v %v, want not_found", typ, we)
	}
	if at := peerRevokedAt(t, b, pid); at != nil {
		t.Fatalf("a late notice about the old token marked the new one revoked at %v", at)
	}
	if echo.count() != 1 {
		t.Errorf("echo ran %d times, want 1", echo.count())
	}
}

// A holder that speaks only revoke 1.0.0 (before this release) is not
// told; it is refused as before, with the issuer's own error.
func TestRevokedTokenOldHolderRefusedAsBefore(t *testing.T) {
	a, b := newTestNode(t), newTestNode(t)
	var echo counter
	register(t, a, "echo", echo.handler)
	ctx := testCtx(t)
	pid, tok := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})
	b.Host().RemoveStreamHandler(protocol.ID(wire.ProtoRevoke11))
	if err := a.RevokeToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	_, err := perform(ctx, b, pid, "echo", `1`)
	wantWireCode(t, err, wire.CodeUnauthorized)
	errorsContain(t, err, "token revoked", tok.ID)
	if at := peerRevokedAt(t, b, pid); at != nil {
		t.Fatalf("a holder without revoke 1.1.0 shows the token revoked at %v", at)
	}
}

// A subscriber whose token is revoked forgets its subscriptions, as
// before, shows the token revoked, and a new subscribe fails at once.
func TestRevokedTokenSubscriber(t *testing.T) {
	pub, sub := newTestNode(t), newTestNode(t)
	if err := sub.RegisterReceiver("rec", func(context.Context, json.RawMessage) (json.RawMessage, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	pid, tok := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"rt.>"}})
	if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "rt.>", Receiver: "rec"}); err != nil {
		t.Fatal(err)
	}
	if err := pub.RevokeToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	waitRevokedAt(t, sub, pid)
	checkFor(t, testTimeout, 10*time.Millisecond, func() error {
		if subs, err := sub.Subscriptions(ctx); err != nil || len(subs) != 0 {
			return fmt.Errorf("the subscriber still holds %v (%v)", subs, err)
		}
		return nil
	})
	_, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "rt.a", Receiver: "rec"})
	wantLocalRevoked(t, err, pid, tok.ID)
}
