package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/coattail/coattail/auth"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
	"github.com/google/uuid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Telling the holder of a token that its issuer (this instance) revoked
// it: on revoke 1.1.0 (docs/PROTOCOL.md, "revoke"), to the peers known to
// hold it when it is revoked, and to a peer that presents it later, before
// its stream is refused. The holder's side is markTokenRevoked.

// tokenNoticeTimeout bounds telling a holder at revocation (a dial, when
// it is not connected); refusedNoticeTimeout the notice sent before a
// refusal, over the connection the refused stream came on.
const (
	tokenNoticeTimeout   = 15 * time.Second
	refusedNoticeTimeout = 5 * time.Second
)

// RevokeToken revokes a token; sessions that rely on it are closed by the
// OnRevoke hook the network registers. When online, the peers known to
// hold the token (its vt:// bearers, the peer that claimed it, peers with
// streams or subscriptions authorized by it) are told, in the background,
// that it was revoked.
func (n *Node) RevokeToken(ctx context.Context, id string) error {
	_, err := n.RevokeTokenResult(ctx, id)
	return err
}

// RevokeTokenResult is RevokeToken, saying the revoked token's id in its
// canonical form (a lower-case uuid with hyphens), whichever spelling id
// gave it in.
func (n *Node) RevokeTokenResult(ctx context.Context, id string) (localapi.RevokedToken, error) {
	var holders []peer.ID
	if n.net != nil {
		// Read before the revocation, which closes the streams and
		// removes the subscriptions.
		holders = n.net.tokenUsers(id)
	}
	rv, err := n.auth.RevokeRecord(ctx, id)
	if rv.At.IsZero() {
		return localapi.RevokedToken{}, err
	}
	n.log.Info("token revoked", "token_id", rv.Record.ID)
	if n.net != nil {
		holders = append(holders, tokenHolders(rv.Record)...)
		n.net.tellHolders(rv.Record.ID, rv.At, holders)
	}
	return localapi.RevokedToken{ID: rv.Record.ID}, err
}

// tokenUsers lists the peers whose open streams or subscriptions here
// token id authorizes.
func (nw *netsvc) tokenUsers(id string) []peer.ID {
	u, err := uuid.Parse(id)
	if err != nil {
		return nil
	}
	id = u.String() // as issued, and as grants name it
	out := nw.sess.peers(id)
	for _, q := range nw.n.queues.Status() {
		if q.TokenID != id {
			continue
		}
		if p, err := peer.Decode(q.Subscriber); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// tokenHolders lists the peers a token's record binds it to: its vt://
// bearers and the peer that claimed it.
func tokenHolders(rec auth.Record) []peer.ID {
	var out []peer.ID
	refs := []string{rec.ClaimedBy}
	for _, b := range rec.Claims.Bearers {
		if ref, ok := strings.CutPrefix(b, auth.SchemeVT); ok {
			refs = append(refs, ref)
		}
	}
	for _, r := range refs {
		if p, err := peer.Decode(r); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// tellHolders tells each of peers (once), in the background, that token
// id was revoked at at. A holder that cannot be reached now learns it from
// the refusal of its next stream.
func (nw *netsvc) tellHolders(id string, at time.Time, peers []peer.ID) {
	slices.Sort(peers)
	for _, p := range slices.Compact(peers) {
		if p == nw.host.ID() || !nw.handlers.Begin() {
			continue
		}
		go func() {
			defer nw.handlers.End()
			ctx, cancel := context.WithTimeout(nw.handlers.ctx, tokenNoticeTimeout)
			defer cancel()
			if err := nw.tellTokenRevoked(ctx, p, id, at); err != nil {
				nw.n.log.Info("could not tell a holder that its token was revoked; it learns it at its next contact", "peer", p.String(), "token_id", id, "err", err)
			}
		}()
	}
}

// tellRefused tells peer p, whose stream is being refused because it
// presented a token this instance revoked, which token that was, before
// the refusal goes out: a holder that speaks revoke 1.1.0 has recorded it
// by the time it reads the refusal, and says so to its user. Only over
// the connection the stream came on, and briefly.
func (nw *netsvc) tellRefused(p peer.ID, re *auth.RevokedError) {
	// Within the refused stream's own deadline, which its refusal needs.
	ctx, cancel := context.WithTimeout(nw.handlers.ctx, min(refusedNoticeTimeout, nw.n.cfg.Limits.StreamTimeout/2))
	defer cancel()
	if err := nw.tellTokenRevoked(network.WithNoDial(ctx, "coattail-revoke"), p, re.TokenID, re.At); err != nil {
		nw.n.log.Debug("could not tell a peer that the token it presented was revoked", "peer", p.String(), "token_id", re.TokenID, "err", err)
	}
}

// tellTokenRevoked sends peer p a revoke 1.1.0 notice that token id was
// revoked at at, and waits for its answer (its holder records it durably
// first). A peer that does not speak 1.1.0 is not told: the stream cannot
// be opened.
func (nw *netsvc) tellTokenRevoked(ctx context.Context, p peer.ID, id string, at time.Time) error {
	st, err := nw.host.NewStream(network.WithAllowLimitedConn(ctx, "coattail-revoke"), p, wire.ProtoRevoke11)
	if err != nil {
		return err
	}
	defer st.Close()
	defer context.AfterFunc(ctx, func() { _ = st.Reset() })()
	if d, ok := ctx.Deadline(); ok {
		_ = st.SetDeadline(d)
	}
	at = at.UTC()
	w := wire.NewWriterSize(st, requestBuffer)
	err = w.JSON(wire.TRequest, wire.RevokeNotice{TokenID: id, RevokedAt: &at, Reason: "token revoked"})
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		_ = st.Reset()
		return err
	}
	_ = st.CloseWrite()
	t, payload, err := wire.NewReaderSize(st, 64<<10, requestBuffer).Next()
	if err != nil {
		return err
	}
	switch t {
	case wire.TOK:
		return nil
	case wire.TError:
		var e wire.Error
		if err := wire.DecodeJSON(payload, &e); err != nil {
			return fmt.Errorf("%w %s sent a malformed error frame: %v", ErrPeer, p, err)
		}
		return &e
	}
	return fmt.Errorf("%w %s: unexpected frame type %d", ErrPeer, p, t)
}

// revokedRefusal returns the *auth.RevokedError an authentication failed
// with, if it did because the token was revoked here.
func revokedRefusal(err error) (*auth.RevokedError, bool) {
	var re *auth.RevokedError
	return re, errors.As(err, &re)
}
