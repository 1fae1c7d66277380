package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/coattail/coattail/auth"
	"github.com/coattail/coattail/datastore"
	"github.com/coattail/coattail/node/internal/jsonx"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/runner"
	"github.com/coattail/coattail/node/wire"
	"github.com/coattail/coattail/topics"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/quic-go/quic-go"
)

// Peer errors.
var (
	ErrUnknownPeer = errors.New("node: unknown peer")
	ErrPeer        = errors.New("node: peer")
)

// peerRecord is a peer this instance added, stored under /peers/<peer-id>.
// Token is the raw JWT the peer issued us: a credential, never logged.
type peerRecord struct {
	ID        string     `json:"id"`
	Token     string     `json:"token"`
	TokenID   string     `json:"token_id"`
	AddedAt   time.Time  `json:"added_at"`
	Addrs     []string   `json:"addrs"`
	Perform   []string   `json:"perform"`
	Publish   []string   `json:"publish"`
	Subscribe []string   `json:"subscribe"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// RevokedAt is set when the peer told us that it revoked Token, and
	// when (markTokenRevoked). Added later: older records lack it (not
	// revoked). A new token for the peer replaces the whole record.
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}

func (r peerRecord) view() localapi.Peer {
	return localapi.Peer{ID: r.ID, TokenID: r.TokenID, AddedAt: r.AddedAt, Addrs: nonNil(r.Addrs),
		Perform: nonNil(r.Perform), Publish: nonNil(r.Publish), Subscribe: nonNil(r.Subscribe), ExpiresAt: r.ExpiresAt,
		RevokedAt: r.RevokedAt}
}

// revoked returns the error of a call that would need the record's
// token, if its issuer told us that it revoked it.
func (r peerRecord) revoked() error {
	if r.RevokedAt == nil {
		return nil
	}
	return &TokenRevokedError{Peer: r.ID, TokenID: r.TokenID, At: *r.RevokedAt}
}

// ErrPeerTokenRevoked is matched (errors.Is) by every *TokenRevokedError.
var ErrPeerTokenRevoked = errors.New("node: the peer revoked its token")

// TokenRevokedError is the local refusal of a call to a peer whose token,
// the one held here for it, its issuer (that peer) told us it revoked:
// the call is not even sent. It also matches auth.ErrRevoked.
type TokenRevokedError struct {
	Peer    string
	TokenID string
	At      time.Time // when the issuer revoked it
}

func (e *TokenRevokedError) Error() string {
	return fmt.Sprintf("the token for peer %s (token id %s) was revoked by its issuer at %s; ask for a new one and run `coattail peer add --token <token>`",
		e.Peer, e.TokenID, e.At.Local().Format(time.RFC3339))
}

// Is matches ErrPeerTokenRevoked and auth.ErrRevoked.
func (e *TokenRevokedError) Is(target error) bool {
	return target == ErrPeerTokenRevoked || target == auth.ErrRevoked
}

// AddPeer adds the issuer of a token: it checks the token's signature
// against the issuer id it names, dials the addresses it carries (the
// secure channel proves the remote is that issuer), and authenticates once
// so the issuer verifies — and, for a claim-on-first-use token, binds — it.
func (n *Node) AddPeer(ctx context.Context, raw string) (localapi.Peer, error) {
	return n.AddPeerRequest(ctx, localapi.AddPeerRequest{Token: raw})
}

// AddPeerRequest is AddPeer, and with req.Force it replaces a peer's token
// by one that does not allow every subscription held at the peer, ending
// those first. Without Force such a replacement is refused: the publisher
// checks each subscription against the token its subscriber presents when
// it reconnects, so the subscriptions the new token does not allow would
// be removed there at their next reconnect, with what was queued for
// them, and nobody told.
func (n *Node) AddPeerRequest(ctx context.Context, req localapi.AddPeerRequest) (localapi.Peer, error) {
	// A token pasted from a terminal or read from a file usually ends in
	// a newline; only the token itself is verified.
	raw := strings.TrimSpace(req.Token)
	c, err := auth.Decode(raw)
	if err != nil {
		return localapi.Peer{}, err
	}
	if c.Type != "" && c.Type != "coattail/cap" {
		return localapi.Peer{}, fmt.Errorf("%w: this is a validation token; peer add takes a capability token (coattail token issue)", auth.ErrInvalid)
	}
	pid, err := peer.Decode(c.Issuer)
	if err != nil {
		return localapi.Peer{}, fmt.Errorf("%w: token issuer %q is not a peer id", auth.ErrInvalid, c.Issuer)
	}
	if pid == n.id {
		return localapi.Peer{}, fmt.Errorf("%w: this token was issued by this instance; give it to another instance", ErrBadRequest)
	}
	if n.net == nil {
		return localapi.Peer{}, ErrOffline
	}
	rec := peerRecord{ID: pid.String(), Token: raw, TokenID: c.ID, AddedAt: time.Now().UTC(), Addrs: c.Addrs,
		Perform: c.Perform, Publish: c.Publish, Subscribe: c.Subscribe}
	if c.ExpiresAt != nil {
		t := c.ExpiresAt.Time
		rec.ExpiresAt = &t
	}
	addrs := parseAddrs(c.Addrs)
	if len(addrs) == 0 {
		return localapi.Peer{}, fmt.Errorf("%w: the token carries no usable address of its issuer (was it issued while the issuer's service was stopped?)", auth.ErrInvalid)
	}
	// For the verification only: kept for good once it succeeds. A token
	// that fails (a wrong address, another instance's) left its addresses
	// dialled for this peer until the service restarted.
	n.host.Peerstore().AddAddrs(pid, addrs, peerstore.TempAddrTTL)
	if _, err := n.net.remoteListWith(ctx, pid, raw); err != nil {
		return localapi.Peer{}, err
	}
	uncovered, err := n.subscriptionsNotAllowed(ctx, rec.ID, c.Subscribe)
	if err != nil {
		return localapi.Peer{}, err
	}
	if len(uncovered) > 0 && !req.Force {
		var list []string
		for _, s := range uncovered {
			list = append(list, fmt.Sprintf("%q (subscription %s, receiver %s)", s.Pattern, s.ID, s.Receiver))
		}
		return localapi.Peer{}, &localapi.Error{Status: http.StatusConflict, Code: localapi.CodeConflict,
			Message: fmt.Sprintf("the new token of %s does not allow subscribing to %s; the peer would remove %s at the next reconnect, with what is queued there. "+
				"Ask the peer for a token that also allows %s, or add this one with --force, which ends %s now, at both ends",
				rec.ID, strings.Join(list, ", "), them(len(list)), them(len(list)), them(len(list)))}
	}
	for _, s := range uncovered {
		// Ended with the new token, just verified: the old one is often
		// being replaced because it expired or was revoked, and the peer
		// would refuse it (which unsubscribe otherwise takes for "gone
		// already"), keeping the subscription and queueing for nobody.
		// Unsubscribing needs only to be the subscription's subscriber.
		if err := n.unsubscribeWith(ctx, pid, raw, s.ID); err != nil {
			n.log.Warn("subscription not allowed by the peer's new token: the peer could not be told; forgotten here", "subscription", s.ID, "peer", rec.ID, "err", err)
		}
		n.subscriber.forget(ctx, s.ID)
		n.log.Info("subscription ended: the peer's new token does not allow it", "subscription", s.ID, "peer", rec.ID, "pattern", s.Pattern)
	}
	replaced := false
	if err := n.changePeer(rec.ID, func() error {
		if old, err := n.peers.Get(ctx, rec.ID); err == nil {
			replaced = old.TokenID != rec.TokenID
		}
		if err := n.peers.Put(ctx, rec.ID, rec); err != nil {
			return err
		}
		return n.db.Sync(ctx, n.peers.Namespace())
	}); err != nil {
		return localapi.Peer{}, err
	}
	n.host.Peerstore().AddAddrs(pid, addrs, peerstore.PermanentAddrTTL)
	n.log.Info("peer added", "peer", rec.ID, "token_id", rec.TokenID)
	if replaced {
		n.subscriber.rotated(rec.ID)
	}
	return n.ShowPeer(ctx, rec.ID)
}

// unsubscribeWith ends subscription id at peer pid, authenticated with
// token; a subscription the peer no longer has counts as ended.
func (n *Node) unsubscribeWith(ctx context.Context, pid peer.ID, token, id string) error {
	s, err := n.net.openWith(ctx, pid, wire.ProtoUnsubscribe, token, wire.UnsubscribeRequest{SubscriptionID: id})
	if err != nil {
		return err
	}
	defer s.s.Close()
	var ok wire.OK
	var we *wire.Error
	if err := s.result(&ok, nil); err != nil && !(errors.As(err, &we) && we.Code == wire.CodeNotFound) {
		return err
	}
	return nil
}

// them is "that subscription" or "those subscriptions".
func them(n int) string {
	if n == 1 {
		return "that subscription"
	}
	return "those subscriptions"
}

// subscriptionsNotAllowed lists the subscriptions this instance holds at
// peer id whose pattern no pattern of subscribe (a token's grants)
// covers.
func (n *Node) subscriptionsNotAllowed(ctx context.Context, id string, subscribe []string) ([]outSub, error) {
	subs, err := n.subscriber.subs.List(ctx)
	if err != nil {
		return nil, err
	}
	var out []outSub
	for _, s := range subs {
		if s.Publisher != id || slices.ContainsFunc(subscribe, func(p string) bool { return topics.Covers(p, s.Pattern) }) {
			continue
		}
		out = append(out, s)
	}
	return out, nil
}

func parseAddrs(ss []string) []ma.Multiaddr {
	var out []ma.Multiaddr
	for _, s := range ss {
		if m, err := ma.NewMultiaddr(s); err == nil {
			out = append(out, m)
		}
	}
	return out
}

// ListPeers lists added peers.
func (n *Node) ListPeers(ctx context.Context) ([]localapi.Peer, error) {
	recs, err := n.peers.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]localapi.Peer, 0, len(recs))
	for _, r := range recs {
		v := r.view()
		n.fillConn(ctx, &v, false)
		out = append(out, v)
	}
	return out, nil
}

// ShowPeer describes one peer: its permissions and, when online, whether it
// is connected, directly or through a relay, and the round-trip time.
func (n *Node) ShowPeer(ctx context.Context, id string) (localapi.Peer, error) {
	r, err := n.peerRecord(ctx, id)
	if err != nil {
		return localapi.Peer{}, err
	}
	v := r.view()
	n.fillConn(ctx, &v, true)
	return v, nil
}

func (n *Node) fillConn(ctx context.Context, v *localapi.Peer, measure bool) {
	if n.host == nil {
		return
	}
	pid, err := peer.Decode(v.ID)
	if err != nil {
		return
	}
	conns := n.host.Network().ConnsToPeer(pid)
	if len(conns) == 0 {
		return
	}
	v.Connected = true
	v.Connection = "relayed"
	for _, c := range conns {
		v.RemoteAddrs = append(v.RemoteAddrs, c.RemoteMultiaddr().String())
		if !isRelayed(c) {
			v.Connection = "direct"
		}
	}
	if measure {
		pctx, cancel := context.WithTimeout(network.WithAllowLimitedConn(ctx, "ping"), 3*time.Second)
		defer cancel()
		select {
		case res := <-ping.Ping(pctx, n.host, pid):
			if res.Error == nil {
				v.RTT = localapi.Duration(res.RTT)
			}
		case <-pctx.Done():
		}
	}
}

func (n *Node) peerRecord(ctx context.Context, id string) (peerRecord, error) {
	if _, err := peer.Decode(id); err != nil {
		return peerRecord{}, fmt.Errorf("%w %q: not a peer id (see: coattail peer list)", ErrUnknownPeer, id)
	}
	if r, ok := n.peerCache.Load(id); ok {
		return r.(peerRecord), nil
	}
	n.peerMu.Lock()
	defer n.peerMu.Unlock()
	if r, ok := n.peerCache.Load(id); ok {
		return r.(peerRecord), nil
	}
	r, err := n.peers.Get(ctx, id)
	if err == nil {
		n.peerCache.Store(id, r)
	}
	if errors.Is(err, datastore.ErrNotFound) {
		return peerRecord{}, fmt.Errorf("%w %s: add it first with: coattail peer add --token <token>", ErrUnknownPeer, id)
	}
	return r, err
}

// changePeer runs change (a write of peer id's record) and drops the
// cached record, with no cache fill in between (see peerMu).
func (n *Node) changePeer(id string, change func() error) error {
	n.peerMu.Lock()
	defer n.peerMu.Unlock()
	defer n.peerCache.Delete(id) // also after a failed change: the datastore decides
	return change()
}

// markTokenRevoked records, durably, that peer p revoked the token held
// here for it, at at: p must be that token's issuer. The claim alone is not
// trusted: the record kept under p's id must hold a token with that id
// whose signed iss is p (Decode checks the signature against the key in
// iss). A notice from any other peer finds another record, or none, and is
// answered not_found; so is a notice for a token no longer held (replaced
// by peer add).
func (n *Node) markTokenRevoked(ctx context.Context, p peer.ID, tokenID string, at time.Time) error {
	id := p.String()
	notHeld := wire.Errorf(wire.CodeNotFound, "no token %s of yours is held here", clip(tokenID))
	marked := false
	err := n.changePeer(id, func() error {
		rec, err := n.peers.Get(ctx, id)
		if errors.Is(err, datastore.ErrNotFound) {
			return notHeld
		}
		if err != nil {
			return err
		}
		if rec.TokenID != tokenID {
			return notHeld
		}
		c, err := auth.Decode(rec.Token)
		if err != nil || c.ID != tokenID {
			return notHeld
		}
		if iss, err := peer.Decode(c.Issuer); err != nil || iss != p {
			return notHeld
		}
		if rec.RevokedAt != nil {
			return nil // told already
		}
		rec.RevokedAt = &at
		if err := n.peers.Put(ctx, id, rec); err != nil {
			return err
		}
		marked = true
		return n.db.Sync(ctx, n.peers.Namespace())
	})
	if err != nil {
		var we *wire.Error
		if !errors.As(err, &we) {
			n.log.Error("cannot record that a peer revoked its token", "peer", id, "token_id", tokenID, "err", err)
		}
		return err
	}
	if marked {
		n.log.Warn("the peer revoked the token it issued us; ask it for a new one and add it with: coattail peer add --token <token>",
			"peer", id, "token_id", tokenID, "revoked_at", at.Format(time.RFC3339))
	}
	return nil
}

// RemovePeer forgets a peer and closes connections to it.
func (n *Node) RemovePeer(ctx context.Context, id string) error {
	_, err := n.RemovePeerResult(ctx, id)
	return err
}

// RemovePeerResult is RemovePeer, saying which of the subscriptions held
// at the peer the peer could not be told had ended.
func (n *Node) RemovePeerResult(ctx context.Context, id string) (localapi.RemovedPeer, error) {
	rec, err := n.peerRecord(ctx, id)
	if errors.Is(err, ErrUnknownPeer) {
		return localapi.RemovedPeer{}, fmt.Errorf("%w %s: it is not added here, so there is nothing to remove (see: coattail peer list)", ErrUnknownPeer, id)
	} else if err != nil {
		return localapi.RemovedPeer{}, err
	}
	untold := n.removePeerSubscriptions(ctx, id)
	if err := n.changePeer(id, func() error {
		if err := n.peers.Delete(ctx, id); err != nil {
			return err
		}
		return n.db.Sync(ctx, n.peers.Namespace())
	}); err != nil {
		return localapi.RemovedPeer{}, err
	}
	if n.host != nil {
		if pid, err := peer.Decode(id); err == nil {
			n.host.Peerstore().ClearAddrs(pid)
			_ = n.host.Network().ClosePeer(pid)
		}
	}
	n.log.Info("peer removed", "peer", id, "subscriptions_untold", len(untold))
	return localapi.RemovedPeer{ID: rec.ID, Untold: untold}, nil
}

// open opens an authorized stream to an added peer. A non-nil req is sent
// right behind the hello, in the same write, so a request costs one round
// trip: the remote reads the request only if the hello was accepted.
func (n *Node) open(ctx context.Context, id string, proto protocol.ID, req any) (*session, error) {
	if n.net == nil {
		return nil, ErrOffline
	}
	r, err := n.peerRecord(ctx, id)
	if err != nil {
		return nil, err
	}
	// Its issuer told us: the call would only be refused.
	if err := r.revoked(); err != nil {
		return nil, err
	}
	pid, _ := peer.Decode(r.ID)
	// The record's addresses are in the peerstore for good since the
	// peer was added (AddPeer) or the service started (restorePeers), so
	// each request need not parse and add them again; only if libp2p
	// knows none at all.
	if len(n.host.Peerstore().Addrs(pid)) == 0 {
		n.net.knowPeerAddrs(pid, r)
	}
	s, err := n.net.openWith(ctx, pid, proto, r.Token, req)
	if wire.IsCode(err, wire.CodeUnauthorized) {
		// A peer that refuses a token because it revoked it tells us
		// so (a revoke 1.1.0 notice) before it answers: the record is
		// marked by now. Say what to do rather than relay the refusal.
		if cur, cerr := n.peerRecord(ctx, id); cerr == nil && cur.TokenID == r.TokenID {
			if rerr := cur.revoked(); rerr != nil {
				return nil, rerr
			}
		}
	}
	return s, err
}

// knowPeerAddrs puts the addresses of an added peer's record (those of the
// token last added for it) in the peerstore, for good. They are added to
// whatever else the peerstore knows of the peer (what identify told, a
// subscriber's remembered addresses, restored at start): libp2p dials
// every known address, and one that fails does not stop the others. They
// used to be added only by a request that found the peerstore knowing
// none, so a peer that moved stayed unreachable at the address its
// refreshed record gave while an older one (remembered from when it
// subscribed) was known: restorePeers adds them at start.
func (nw *netsvc) knowPeerAddrs(pid peer.ID, r peerRecord) {
	nw.host.Peerstore().AddAddrs(pid, parseAddrs(r.Addrs), peerstore.PermanentAddrTTL)
}

// restorePeers puts every added peer's record addresses in the peerstore
// at start, so that dials made without the record (a publisher's nudge of
// a subscriber, a revocation notice) try them too.
func (nw *netsvc) restorePeers(ctx context.Context) {
	recs, err := nw.n.peers.List(ctx)
	if err != nil {
		nw.n.log.Warn("cannot load peer addresses", "err", err)
		return
	}
	for _, r := range recs {
		if pid, err := peer.Decode(r.ID); err == nil {
			nw.knowPeerAddrs(pid, r)
		}
	}
}

func (nw *netsvc) openWith(ctx context.Context, pid peer.ID, proto protocol.ID, token string, req any) (*session, error) {
	began := time.Now()
	s, err := nw.openWithOnce(ctx, pid, proto, token, req)
	var reset *quic.StatelessResetError
	// The stream went out, or was being opened, on a QUIC connection the
	// peer no longer has (it restarted, or crashed, since): its new
	// process answered with a stateless reset, so it never saw the
	// request. That connection is closed now; again on another (or a new)
	// one, a couple of times (there may be more than one stale).
	// Likewise a TCP connection to the peer's old process that the swarm
	// has not yet seen closed: the peer's kernel resets it, and its new
	// process never saw the request either.
	for retry := 0; retry < 2 && (errors.As(err, &reset) || staleTCP(err)) && ctx.Err() == nil; retry++ {
		// The peer restarted: every QUIC connection to it from before
		// this call is to its old process (the one that failed may not
		// even show as closed yet, and the old process may have dialed
		// us too). Close them, or the next stream would be opened on one
		// of them again; TCP connections would have been reset by the
		// peer's kernel and are left to the swarm.
		for _, c := range nw.host.Network().ConnsToPeer(pid) {
			if c.ConnState().Transport == "quic-v1" && c.Stat().Opened.Before(began) {
				_ = c.Close()
			}
		}
		s, err = nw.openWithOnce(ctx, pid, proto, token, req)
	}
	return s, err
}

// staleTCP reports whether err is a TCP connection reset by the peer's
// kernel (ECONNRESET, or EPIPE for a write after it): the connection was
// to a process that no longer has it.
func staleTCP(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func (nw *netsvc) openWithOnce(ctx context.Context, pid peer.ID, proto protocol.ID, token string, req any) (*session, error) {
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	// Every version of the operation is offered, the newest first; the
	// hello names the one the peer chose (from what identify told, so
	// without a round trip of its own).
	var protos []protocol.ID
	for _, p := range wire.Newest(string(proto)) {
		protos = append(protos, protocol.ID(p))
	}
	st, err := nw.host.NewStream(network.WithAllowLimitedConn(dctx, "coattail"), pid, protos...)
	if err != nil {
		return nil, fmt.Errorf("%w %s is unreachable: %w", ErrPeer, pid, nw.explainOpen(pid, err))
	}
	version := wire.VersionOf(string(st.Protocol()))
	if sr, ok := req.(wire.SubscribeRequest); ok && version != wire.Version11 {
		sr.MaxFrame = 0 // a 1.0.0 publisher knows no such key
		req = sr
	}
	s := newSession(st, nw.n.maxFrame(), pid, st.Protocol())
	_ = st.SetDeadline(time.Now().Add(nw.n.cfg.Limits.StreamTimeout))
	// The deadline bounds a silent peer; ctx (a closing node, a caller
	// that gave up) ends the wait at once.
	stop := context.AfterFunc(ctx, func() { _ = st.Reset() })
	defer stop()
	err = s.w.JSON(wire.THello, wire.Hello{Token: token, Version: version})
	if err == nil && req != nil {
		err = s.w.JSON(wire.TRequest, req)
	}
	if errors.Is(err, wire.ErrEncode) {
		// Nothing was sent: the request itself is bad, not the peer.
		_ = st.Reset()
		return nil, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	if err == nil {
		err = s.w.Flush()
	}
	if err != nil {
		// The remote may have refused the request and stopped reading
		// before we finished writing it (a frame over its limit): its error
		// frame says why, where the write error only says "reset".
		_ = st.SetReadDeadline(time.Now().Add(2 * time.Second))
		if rerr := expectOK(s); rerr != nil {
			err = rerr
		} else if rerr := s.result(&struct{}{}, nil); rerr != nil {
			var we *wire.Error
			if errors.As(rerr, &we) {
				err = we
			}
		}
		_ = st.Reset()
		var we *wire.Error
		if errors.As(err, &we) {
			return nil, we
		}
		return nil, fmt.Errorf("%w %s: %w", ErrPeer, pid, err)
	}
	if err := expectOK(s); err != nil {
		_ = st.Reset()
		if !stop() {
			// ctx ended and reset the stream under the read: the
			// "reset" is ours, not a peer failure.
			return nil, ctx.Err()
		}
		return nil, err
	}
	if !stop() {
		return nil, ctx.Err() // ctx ended just now: the stream was reset
	}
	return s, nil
}

// expectOK reads the answer to a hello, and the frame limit it tells.
func expectOK(s *session) error {
	t, payload, err := s.r.Next()
	if err != nil {
		return fmt.Errorf("%w %s closed the stream: %w", ErrPeer, s.peer, explainLimit(err))
	}
	switch t {
	case wire.TOK:
		var ok wire.OK
		if err := wire.DecodeJSON(payload, &ok); err != nil {
			return fmt.Errorf("%w %s sent a malformed answer to the hello: %v", ErrPeer, s.peer, err)
		}
		s.peerMaxFrame = ok.MaxFrame
		return nil
	case wire.TError:
		return s.remoteError(payload)
	default:
		return fmt.Errorf("%w %s: unexpected frame type %d", ErrPeer, s.peer, t)
	}
}

// result reads frames until a TResult (decoded into v) or a TError; TLog
// frames go to onLog. Anything else the peer sends, or a frame it sends
// malformed, is a protocol violation reported as ErrPeer naming the peer:
// a broken answer must neither pass for a result nor be skipped.
func (s *session) result(v any, onLog func(string)) error {
	for {
		t, payload, err := s.r.Next()
		if err != nil {
			return s.noAnswer(err)
		}
		switch t {
		case wire.TResult:
			if err := wire.DecodeJSON(payload, v); err != nil {
				return fmt.Errorf("%w %s sent a malformed answer: %v", ErrPeer, s.peer, err)
			}
			return nil
		case wire.TError:
			return s.remoteError(payload)
		case wire.TLog:
			var l wire.Log
			if err := wire.DecodeJSON(payload, &l); err != nil {
				return fmt.Errorf("%w %s sent a malformed log line: %v", ErrPeer, s.peer, err)
			}
			if onLog != nil {
				onLog(l.Line)
			}
		default:
			return fmt.Errorf("%w %s: unexpected frame type %d", ErrPeer, s.peer, t)
		}
	}
}

// noAnswer says why reading the answer failed: a peer that stays silent
// past the stream's deadline did not close anything, and a frame over the
// limit is this side's refusal. A timeout also matches
// os.ErrDeadlineExceeded.
func (s *session) noAnswer(err error) error {
	var ne net.Error
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("%w %s did not answer in time: %w", ErrPeer, s.peer, os.ErrDeadlineExceeded)
	case errors.Is(err, wire.ErrFrameTooLarge):
		return fmt.Errorf("%w %s sent a frame over this instance's limit (limits.max_payload + 64 KiB): %w", ErrPeer, s.peer, err)
	case errors.Is(err, network.ErrReset):
		return fmt.Errorf("%w %s reset the stream before answering: %v", ErrPeer, s.peer, explainLimit(err))
	}
	return fmt.Errorf("%w %s closed the stream before answering: %v", ErrPeer, s.peer, err)
}

// remoteError decodes an error frame of the session's peer.
func (s *session) remoteError(payload []byte) error {
	var e wire.Error
	if err := wire.DecodeJSON(payload, &e); err != nil {
		return fmt.Errorf("%w %s sent a malformed error frame: %v", ErrPeer, s.peer, err)
	}
	return &e
}

func (n *Node) remoteList(ctx context.Context, id string) ([]localapi.ActionInfo, error) {
	s, err := n.open(ctx, id, wire.ProtoList, wire.ListRequest{})
	if err != nil {
		return nil, err
	}
	return listOn(s)
}

func (nw *netsvc) remoteListWith(ctx context.Context, pid peer.ID, token string) ([]localapi.ActionInfo, error) {
	// A list changes nothing at the peer, so it is asked again, on
	// another connection or a new one, when the one it went out on was
	// closed under it (twice at most).
	for retry := 0; ; retry++ {
		s, err := nw.openWith(ctx, pid, wire.ProtoList, token, wire.ListRequest{})
		var acts []localapi.ActionInfo
		if err == nil {
			acts, err = listOn(s)
		}
		if err == nil || retry == 2 || !connClosedUnder(err) || ctx.Err() != nil {
			return acts, err
		}
	}
}

// connClosedUnder reports whether err is the peer closing the QUIC
// connection a stream was on, before it answered. Two hosts that dial each
// other at once (each adding the other as a peer, as `coattail lab` does)
// can each keep one connection and close a later one; a stream the other
// host had just opened on that one fails so (a `peer add` failed with
// "closed the stream: … Application error 0x0 (remote)").
func connClosedUnder(err error) bool {
	var app *quic.ApplicationError
	return errors.As(err, &app) && app.Remote
}

func listOn(s *session) ([]localapi.ActionInfo, error) {
	defer s.s.Close()
	var resp wire.ListResponse
	if err := s.result(&resp, nil); err != nil {
		return nil, err
	}
	out := make([]localapi.ActionInfo, 0, len(resp.Actions))
	for _, a := range resp.Actions {
		a := a
		out = append(out, localapi.ActionInfo{Name: a.Name, Kind: "action", Performable: &a.Performable, Publishable: &a.Publishable, Subscribable: &a.Subscribable})
	}
	return out, nil
}

// pipelineMax is the largest perform input sent right behind the hello,
// in the same write. A request that size is within any peer's frame limit
// (max_payload is at least 1 KiB, a frame 64 KiB more) and within the
// stream's flow-control window, so the write cannot block on a peer that
// refused it.
const pipelineMax = 32 << 10

func (n *Node) remotePerform(ctx context.Context, req localapi.PerformRequest, onLog func(string)) (localapi.PerformResult, error) {
	// Refused here as a local perform's is (the request carries the input
	// as JSON, so it could not even be encoded).
	if len(req.Input) > 0 && !jsonx.Valid(req.Input) {
		return localapi.PerformResult{}, fmt.Errorf("%w: input for action %q is not valid JSON in UTF-8", runner.ErrBadInput, req.Action)
	}
	wreq := wire.PerformRequest{Action: req.Action, Input: req.Input, Notify: req.Notify, Hop: req.Hop, To: req.To}
	// A larger request is sent once the hello is accepted, and the answer
	// is read while it is written: a peer that refuses it (over its
	// max_payload) stops reading, and a write that waited for the peer to
	// take it all blocked until stream_timeout before the refusal was read.
	large := len(req.Input) > pipelineMax
	var first any = wreq
	if large {
		first = nil
	}
	s, err := n.open(ctx, req.Peer, wire.ProtoPerform, first)
	if err != nil {
		return localapi.PerformResult{}, err
	}
	defer s.s.Close()
	_ = s.s.SetDeadline(time.Now().Add(n.cfg.Limits.ActionTimeout + 2*n.cfg.Limits.StreamTimeout))
	// The stream stays open both ways until the result: if this caller goes
	// away, the stream is reset and the remote cancels the action.
	stop := context.AfterFunc(ctx, func() { _ = s.s.Reset() })
	defer stop()
	var written chan error
	if large {
		written = make(chan error, 1)
		go func() {
			_ = s.s.SetWriteDeadline(time.Now().Add(n.cfg.Limits.StreamTimeout))
			err := s.w.JSON(wire.TRequest, wreq)
			if err == nil {
				err = s.w.Flush()
			}
			if err != nil {
				// The peer may have refused the request and stopped
				// reading: its error frame, if it sent one, says why.
				_ = s.s.SetReadDeadline(time.Now().Add(2 * time.Second))
			}
			written <- err
		}()
	}
	var res wire.PerformResult
	err = s.result(&res, onLog)
	if large {
		if err != nil {
			_ = s.s.Reset() // a write still blocked on a peer that stopped reading
		}
		var we *wire.Error
		if werr := <-written; werr != nil && err != nil && !errors.As(err, &we) && ctx.Err() == nil {
			err = fmt.Errorf("%w %s: sending the perform request: %w", ErrPeer, s.peer, werr)
		}
	}
	if err != nil {
		if !stop() && ctx.Err() != nil {
			// The reset was ours: the caller gave up, the peer did nothing.
			return localapi.PerformResult{}, fmt.Errorf("node: perform of %q on %s stopped: %w", req.Action, req.Peer, ctx.Err())
		}
		if errors.Is(err, wire.ErrFrameTooLarge) {
			// The answer, not the request: the action ran there.
			return localapi.PerformResult{}, fmt.Errorf("%w; the action ran on %s, but its output is larger than this instance takes (raise limits.max_payload here to receive it)", err, req.Peer)
		}
		var we *wire.Error
		if large && errors.As(err, &we) && we.Code == wire.CodeTooLarge && !strings.Contains(we.Message, "max_payload") {
			// A peer before this release says only "frame too large".
			err = fmt.Errorf("node: %s refused the perform request of %d bytes of input: it is over the peer's limits.max_payload: %w", req.Peer, len(req.Input), err)
		}
		return localapi.PerformResult{}, err
	}
	return localapi.PerformResult{Output: res.Output, Published: res.Published, Dropped: res.Dropped}, nil
}

// PublishRequest publishes data (or a batch of data) to an action's
// subscribers, here or on a peer.
func (n *Node) PublishRequest(ctx context.Context, req localapi.PublishRequest) (localapi.PublishResult, error) {
	if err := topics.ValidateSubject(req.Action); err != nil {
		return localapi.PublishResult{}, err
	}
	req.Hop = cascadeHop(ctx, req.Hop)
	// The wire carries a hop in 32 bits: a larger one was cut to its low
	// bits (2^32 went out as 0, past the remote's max_hops), a negative
	// one wrapped.
	if req.Hop < 0 || uint64(req.Hop) > math.MaxUint32 {
		return localapi.PublishResult{}, fmt.Errorf("%w: hop %d is out of range (0..%d)", ErrBadRequest, req.Hop, uint32(math.MaxUint32))
	}
	datas := req.Batch
	if len(datas) == 0 {
		if len(req.Data) == 0 {
			req.Data = json.RawMessage("null")
		}
		datas = []json.RawMessage{req.Data}
	} else if len(req.Data) != 0 {
		return localapi.PublishResult{}, fmt.Errorf("%w: give data or batch, not both", ErrBadRequest)
	}
	pubs := make([]publication, 0, len(datas))
	for i, d := range datas {
		if !jsonx.Valid(d) {
			return localapi.PublishResult{}, itemError{item: i + 1, err: fmt.Errorf("%w: data (item %d) is not valid JSON in UTF-8", ErrBadRequest, i+1)}
		}
		if len(d) > int(n.cfg.Limits.MaxPayload) {
			return localapi.PublishResult{}, itemError{item: i + 1, err: fmt.Errorf("%w: data (item %d) is %d bytes, over limits.max_payload %v", ErrBadRequest, i+1, len(d), n.cfg.Limits.MaxPayload)}
		}
		pubs = append(pubs, publication{Subject: req.Action, Data: d, Hop: req.Hop})
	}
	if req.Peer != "" {
		if len(req.To) > 0 {
			return localapi.PublishResult{}, fmt.Errorf("%w: --to cannot be combined with --peer (the peer chooses its subscribers)", ErrBadRequest)
		}
		// Our own limit first, as perform does: a loop through this
		// instance stops here, whatever the peer's limit.
		if err := n.checkHop(req.Action, req.Hop, "not published"); err != nil {
			n.noteHopLimit(ctx, err, req.Run, "publish", req.Action, req.Hop)
			return localapi.PublishResult{}, err
		}
		res, err := n.remotePublish(ctx, req.Peer, pubs)
		err = remoteHopLimit(err)
		n.noteHopLimit(ctx, err, req.Run, "publish", req.Action, req.Hop)
		return res, err
	}
	to, err := canonicalPeerIDs(req.To)
	if err != nil {
		return localapi.PublishResult{}, err
	}
	res, err := n.publish(ctx, pubs, to)
	n.noteHopLimit(ctx, err, req.Run, "publish", req.Action, req.Hop)
	return localapi.PublishResult{Published: res.Queued, Dropped: res.Dropped}, err
}

// canonicalPeerIDs returns a --to list as the peer ids subscriptions are
// recorded under (base58), once each. A peer id has other spellings (CIDv1)
// that matched no subscription, so a publish --to one of them reached
// nobody without a word. An entry that is no peer id is a bad request.
func canonicalPeerIDs(ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	out := make([]string, 0, len(ids))
	seen := make(map[peer.ID]bool, len(ids))
	for _, id := range ids {
		p, err := peer.Decode(id)
		if err != nil {
			return nil, fmt.Errorf("%w: --to %q is not a peer id (see: coattail subscribers list)", ErrBadRequest, clip(id))
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p.String())
		}
	}
	return out, nil
}

// remotePublish sends publications to a peer in frames of at most 1 MiB
// of publications (wire.DefaultMaxPayload, or this instance's smaller
// max_payload; see below), pipelined: the answers are read while frames are still
// being written, so a refusal of an early frame ends the publish at once
// with the peer's reason (the peer stops reading: waiting to finish
// writing first held the stream until its deadline, and then reported the
// failed write). On an error, it says how many publications the peer
// stored: the first ones, in order, up to the last answer read
// (PROTOCOL.md: last_seq), and none after when the peer refused the next;
// when no answer came (the stream broke) it may have stored more.
func (n *Node) remotePublish(ctx context.Context, peerID string, pubs []publication) (localapi.PublishResult, error) {
	// A frame the peer refuses as unavailable (a full queue under
	// queue_full: reject, a nearly full disk) stored nothing of it, and
	// the peer read nothing after it: fewer publications may fit, so the
	// rest is sent again in frames of half as many, until the publications
	// stored are all those that fit and the refusal is of one. (A frame
	// larger than a queue's bound was refused at every try, with "retry
	// later", even into an empty queue.)
	total, stored, maxCount := 0, 0, wire.MaxPublishBatch
	var dropped uint64
	for {
		r, err := n.remotePublishOnce(ctx, peerID, pubs[stored:], maxCount)
		total += r.published
		dropped += r.dropped
		if r.refusedItem > 0 {
			r.refusedItem += stored
		}
		stored += r.stored
		var refused *wire.Error
		if err != nil && errors.As(err, &refused) && refused.Code == wire.CodeUnavailable && r.refusedCount > 1 && ctx.Err() == nil {
			maxCount = r.refusedCount / 2
			continue
		}
		if err == nil {
			return localapi.PublishResult{Published: total, Dropped: dropped}, nil
		}
		if r.refusedItem > 0 && errors.As(err, &refused) {
			// As a local publish refuses the item (PublishRequest): the
			// caller learns which one, and that the first stored were
			// (they came before it), none from it on.
			// Its place in a frame is not the caller's business: the
			// caller never saw the frames (an older peer says it in
			// the message, of a publication alone in its frame).
			e := *refused
			e.Item = 0
			e.Message = strings.Replace(e.Message, "publication 1 of the batch (", "the publication (", 1)
			return localapi.PublishResult{Published: total, Dropped: dropped},
				itemError{item: r.refusedItem, done: stored, err: fmt.Errorf("node: %s refused data (item %d): %w", peerID, r.refusedItem, &e)}
		}
		var notSent notSentError
		switch {
		case errors.As(err, &notSent) && !errors.As(err, &refused) && stored == 0:
			// Nothing was sent (offline, an unknown or revoked peer, no
			// connection): the error as a perform gives it, not "no
			// answer, so it may or may not have stored them".
			err = notSent.err
		case errors.As(err, &notSent) && !errors.As(err, &refused):
			err = fmt.Errorf("node: %s stored %d of %d publications (the first %d, in order); the rest were not sent: %w", peerID, stored, len(pubs), stored, notSent.err)
		case !errors.As(err, &refused):
			// No answer for the rest: the peer may have stored some.
			err = fmt.Errorf("node: %s confirmed %d of %d publications (the first %d, in order); the rest got no answer, so it may or may not have stored them: %w", peerID, stored, len(pubs), stored, err)
		case len(pubs) == 1:
			err = fmt.Errorf("node: %s did not store the publication: %w", peerID, err)
		case stored == 0:
			err = fmt.Errorf("node: %s stored 0 of %d publications: %w", peerID, len(pubs), err)
		default:
			err = fmt.Errorf("node: %s stored %d of %d publications (the first %d, in order), not the rest: %w", peerID, stored, len(pubs), stored, err)
		}
		return localapi.PublishResult{Published: total, Dropped: dropped}, err
	}
}

// itemError is the error of a batch request refused for its item number
// item (from 1): the control API says which (localapi.Error.Item), so that
// a client can do the items before it. Its first done items were done (a
// batch a peer stored in part: publish --peer), nothing from there on;
// a local batch is refused before anything of it is done.
type itemError struct {
	item, done int
	err        error
}

func (e itemError) Error() string { return e.err.Error() }
func (e itemError) Unwrap() error { return e.err }

// notSentError is an error of remotePublishOnce before it sent any
// publication (the stream could not be opened): the peer has none of them.
type notSentError struct{ err error }

func (e notSentError) Error() string { return e.err.Error() }
func (e notSentError) Unwrap() error { return e.err }

// remotePublishResult is what one publish stream achieved: publications
// the peer confirmed storing (the first ones, in order), the subscription
// queue entries they made and those they pushed out of full queues
// (drop_oldest; a peer before it was reported says 0), and, when the
// peer refused a frame, how many publications that frame carried and,
// when known, which of the publications sent (from 1) it was refused for.
type remotePublishResult struct {
	stored, published, refusedCount, refusedItem int
	dropped                                      uint64
}

// remotePublishOnce sends pubs to the peer over one stream, in frames of
// at most maxCount publications (see remotePublish).
func (n *Node) remotePublishOnce(ctx context.Context, peerID string, pubs []publication, maxCount int) (remotePublishResult, error) {
	s, err := n.open(ctx, peerID, wire.ProtoPublish, nil)
	if err != nil {
		return remotePublishResult{}, notSentError{err}
	}
	defer s.s.Close()
	stop := context.AfterFunc(ctx, func() { _ = s.s.Reset() })
	defer stop()
	// Split into frames first, so that the answers can be read, and
	// checked against what each frame carried, while the frames go out.
	// Frames carry at most 1 MiB of publications, less when the peer
	// reads smaller frames (its max_payload + 64 KiB, told in its answer
	// to the hello; a peer that does not say reads 1 MiB + 64 KiB) or
	// this instance's max_payload is smaller. A publication over the
	// limit still goes, alone in its frame.
	limit := min(int(n.cfg.Limits.MaxPayload), wire.DefaultMaxPayload)
	if s.peerMaxFrame > 0 {
		limit = min(limit, s.peerMaxFrame-frameOverhead)
	}
	var counts []int
	for i, size := 0, 0; i < len(pubs); i++ {
		sz := len(pubs[i].Subject) + len(pubs[i].Data) + 32
		if len(counts) == 0 || size+sz > limit || counts[len(counts)-1] >= maxCount {
			counts, size = append(counts, 0), 0
		}
		counts[len(counts)-1]++
		size += sz
	}
	st := n.cfg.Limits.StreamTimeout
	var stored, total, frame int // frame: the index of the frame awaited
	var dropped uint64
	answers := make(chan error, 1)
	go func() {
		err := func() error {
			for i, c := range counts {
				frame = i
				_ = s.s.SetReadDeadline(time.Now().Add(st))
				var res wire.PublishResult
				if err := s.result(&res, nil); err != nil {
					return err
				}
				if res.Accepted != c || res.LastSeq != uint64(stored+c) || res.Published < 0 {
					return fmt.Errorf("%w %s answered batch %d of %d publications with accepted %d, last_seq %d (want %d), published %d",
						ErrPeer, s.peer, i+1, c, res.Accepted, res.LastSeq, stored+c, res.Published)
				}
				stored += c
				total += res.Published
				dropped += res.Dropped
			}
			return nil
		}()
		if err != nil {
			// The peer refused a frame and reads no more: a write still
			// blocked on it would wait for its deadline.
			_ = s.s.Reset()
		}
		answers <- err
	}()
	werr := func() error {
		now := time.Now().UnixNano()
		var batch []wire.Publication
		var buf []byte
		next := 0
		for _, c := range counts {
			batch = batch[:0]
			for _, p := range pubs[next : next+c] {
				batch = append(batch, wire.Publication{Subject: p.Subject, Data: p.Data, Hop: uint32(p.Hop), Time: now})
			}
			next += c
			buf = wire.AppendPublishBatch(buf[:0], batch)
			s.wmu.Lock()
			_ = s.s.SetWriteDeadline(time.Now().Add(st))
			err := s.w.Frame(wire.TPublish, buf)
			s.wmu.Unlock()
			if err != nil {
				return err
			}
		}
		s.wmu.Lock()
		defer s.wmu.Unlock()
		_ = s.s.SetWriteDeadline(time.Now().Add(st))
		return s.w.Flush()
	}()
	if werr != nil {
		// The peer's refusal, which makes it stop reading, or a deadline.
		// An answer already in says why; otherwise end the reading.
		select {
		case err = <-answers:
		case <-time.After(2 * time.Second):
			_ = s.s.Reset()
			err = <-answers
		}
		var we *wire.Error
		if !errors.As(err, &we) {
			err = werr
		}
	} else {
		err = <-answers
	}
	r := remotePublishResult{stored: stored, published: total, dropped: dropped}
	if err != nil {
		if !stop() && ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		var refused *wire.Error
		if errors.As(err, &refused) && frame < len(counts) {
			r.refusedCount = counts[frame]
			// The refused frame starts right after the publications
			// stored. A peer of publish 1.3.0 names the publication it
			// refused the frame for; a publication alone in its frame
			// refused too_large is that one whatever the peer's version
			// (over its max_payload, or a frame over its limit, which it
			// refuses from the header without reading the publication).
			// An item on any other refusal (forbidden, unavailable) is not
			// about one publication: a lying or buggy peer's, ignored.
			itemCode := refused.Code == wire.CodeTooLarge || refused.Code == wire.CodeBadRequest
			switch {
			case !itemCode:
			case refused.Item > 0 && refused.Item <= r.refusedCount:
				r.refusedItem = stored + refused.Item
			case refused.Item == 0 && r.refusedCount == 1 && refused.Code == wire.CodeTooLarge:
				r.refusedItem = stored + 1
			}
		}
		return r, err
	}
	return r, nil
}
