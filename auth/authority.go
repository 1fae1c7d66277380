package auth

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/crypto/pb"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/sync/singleflight"
)

// Datastore layout. Values are JSON. The prefixes are also the Sync
// prefixes, so a write is durable before the call that made it returns.
var (
	tokensPrefix      = ds.NewKey("/auth/tokens")
	validationsPrefix = ds.NewKey("/auth/validations")
	// revokedPrefix keeps, per revoked token id, when it was revoked
	// (the token's record is deleted), so that a revoked token presented
	// again, or revoked again, is named as such.
	revokedPrefix = ds.NewKey("/auth/revoked")
	authPrefix    = ds.NewKey("/auth")
)

// maxCachedGrants bounds the verification cache. Every entry stands for a
// successful verification, so only legitimate use can fill it; the bound is
// a backstop against a reusable token presented from very many addresses.
const maxCachedGrants = 4096

// Remote describes who presents a token.
type Remote struct {
	// Peer is the peer id proved by the connection's secure channel.
	Peer peer.ID
	// IP is the remote address of the connection; zero when unknown.
	IP netip.Addr
	// Relayed is true when the connection goes through a circuit relay, in
	// which case IP is the relay's, not the bearer's.
	Relayed bool
}

// Record is what the issuer stores for every token it issued. Deleting the
// record revokes the token.
type Record struct {
	ID        string    `json:"id"`
	Token     string    `json:"token"`
	Claims    Claims    `json:"claims"`
	IssuedAt  time.Time `json:"issued_at"`
	ClaimedBy string    `json:"claimed_by,omitempty"`
}

// cacheKey identifies one verification: the same token presented by another
// peer, from another address or over another kind of path must be checked
// again, because bearer rules depend on all three.
type cacheKey struct {
	sum     [sha256.Size]byte
	peer    peer.ID
	ip      netip.Addr
	relayed bool
}

// Authority issues, verifies and revokes this instance's tokens.
//
// Lock order: mu before cacheMu; cbMu is never held with either, so OnRevoke
// callbacks may call back into the Authority.
type Authority struct {
	priv  ed25519.PrivateKey
	pub   ed25519.PublicKey
	id    peer.ID
	store ds.Batching
	now   func() time.Time
	// mono is the time since the Authority was made on the monotonic
	// clock, which, unlike now, never steps back or jumps.
	mono   func() time.Duration
	parser *jwt.Parser

	// mu serialises changes to token records (claim, revoke) against
	// verifications that read a record and then cache a grant: holding it
	// from read to cache insert is what makes Revoke impossible to miss.
	mu sync.RWMutex

	cacheMu sync.Mutex
	cache   map[cacheKey]*Grant
	// done holds, per token id with live grants, the channel that Revoke
	// closes so holders of a Grant learn about it without polling.
	// Entries of expired tokens are swept when the map has doubled since
	// the last sweep (donePruneAt), so it does not grow with every token
	// ever used; see pruneDoneLocked for what "expired" must mean there.
	done        map[string]doneEntry
	donePruneAt int

	cbMu     sync.Mutex
	onRevoke []func(tokenID string)

	// pending holds the ids of the tokens Issue and the validations
	// AddValidation are storing. Their records can be in the store before
	// the call knows whether it succeeded, and a failed call removes its
	// record again, so look-ups and lists leave them out: a record is
	// listed only once its call has returned it.
	pendingMu sync.Mutex
	pending   map[string]struct{}

	// addingVT runs concurrent AddValidation calls of one token as one.
	addingVT singleflight.Group
}

// NewAuthority returns the Authority for the instance whose identity is key.
// key must be Ed25519: it is both the libp2p identity and the signing key.
func NewAuthority(key crypto.PrivKey, store ds.Batching) (*Authority, error) {
	if key == nil {
		return nil, fmt.Errorf("%w: no key", ErrKey)
	}
	if store == nil {
		return nil, errors.New("auth: no datastore")
	}
	if key.Type() != pb.KeyType_Ed25519 {
		return nil, fmt.Errorf("%w: %s key; tokens are signed with Ed25519", ErrKey, key.Type())
	}
	raw, err := key.Raw()
	if err != nil || len(raw) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("%w: Ed25519 key is malformed", ErrKey)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("%w: derive peer id: %w", ErrKey, err)
	}
	priv := ed25519.PrivateKey(raw)
	start := time.Now()
	a := &Authority{
		priv:    priv,
		pub:     priv.Public().(ed25519.PublicKey),
		id:      id,
		store:   store,
		now:     time.Now,
		mono:    func() time.Duration { return time.Since(start) },
		cache:   make(map[cacheKey]*Grant),
		done:    make(map[string]doneEntry),
		pending: make(map[string]struct{}),
	}
	a.parser = jwt.NewParser(
		jwt.WithValidMethods([]string{algEdDSA}),
		jwt.WithStrictDecoding(),
		jwt.WithLeeway(Leeway),
		// Indirect so tests can move the clock after construction.
		jwt.WithTimeFunc(func() time.Time { return a.now() }),
	)
	return a, nil
}

// PeerID returns the instance's peer id, which is every token's iss.
func (a *Authority) PeerID() peer.ID { return a.id }

// Issue creates, signs and durably stores a capability token.
func (a *Authority) Issue(ctx context.Context, o IssueOptions) (Record, error) {
	if err := o.checkTimes(); err != nil {
		return Record{}, err
	}
	perform, err := normalisePatterns("perform", o.Perform)
	if err != nil {
		return Record{}, err
	}
	publish, err := normalisePatterns("publish", o.Publish)
	if err != nil {
		return Record{}, err
	}
	sub := o.Subscribe
	if sub == nil {
		sub = []string{everything}
	}
	subscribe, err := normalisePatterns("subscribe", sub)
	if err != nil {
		return Record{}, err
	}
	bearers, err := a.resolveBearers(ctx, o.Bearers)
	if err != nil {
		return Record{}, err
	}
	addrs := make([]string, 0, len(o.Addrs))
	for _, s := range o.Addrs {
		if s = strings.TrimSpace(s); s == "" {
			return Record{}, fmt.Errorf("%w: empty address", ErrOptions)
		}
		addrs = append(addrs, s)
	}

	// JWT times have one-second precision; truncating here keeps the stored
	// claims identical to the signed ones.
	now := a.now().UTC().Truncate(time.Second)
	c := Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    a.id.String(),
			ID:        uuid.NewString(),
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now.Add(o.NotBefore)),
		},
		Type:      TypeCapability,
		Perform:   perform,
		Publish:   publish,
		Subscribe: subscribe,
		Bearers:   bearers,
		Addrs:     addrs,
		Reusable:  o.Reusable,
	}
	if o.ExpiresIn > 0 {
		c.ExpiresAt = expiresAt(now, o.ExpiresIn)
	}
	signed, err := a.sign(c)
	if err != nil {
		return Record{}, err
	}
	rec := Record{ID: c.ID, Token: signed, Claims: c, IssuedAt: now}
	a.setPending(rec.ID, true)
	defer a.setPending(rec.ID, false)
	if err := a.putJSON(ctx, tokensPrefix, rec.ID, rec); err != nil {
		// The caller gets no token, so nobody can hold this one: its
		// record must not stay behind as an issued token.
		return Record{}, a.undoPut(ctx, tokensPrefix, rec.ID, err)
	}
	return rec, nil
}

func (a *Authority) setPending(id string, on bool) {
	a.pendingMu.Lock()
	defer a.pendingMu.Unlock()
	if on {
		a.pending[id] = struct{}{}
	} else {
		delete(a.pending, id)
	}
}

func (a *Authority) isPending(id string) bool {
	a.pendingMu.Lock()
	defer a.pendingMu.Unlock()
	_, ok := a.pending[id]
	return ok
}

// undoPut removes the record of a putJSON that failed and returns cause.
// A failed put may still have reached the live store (the Put wrote and the
// Sync failed), where it would be read as a record the caller was told does
// not exist. ctx may be why the put failed, so the removal does not depend
// on it. If the removal's own sync fails, a crash can bring the record back;
// it then names a token or validation nobody was given, which revoking or
// removing clears.
func (a *Authority) undoPut(ctx context.Context, prefix ds.Key, id string, cause error) error {
	k, err := recordKey(prefix, id)
	if err != nil {
		return cause
	}
	ctx = context.WithoutCancel(ctx)
	if err := a.store.Delete(ctx, k); err != nil {
		return fmt.Errorf("%w (removing the %s's record also failed, so it may still be listed: %w)", cause, kindOf(prefix), err)
	}
	_ = a.store.Sync(ctx, prefix)
	return cause
}

func (a *Authority) sign(c Claims) (string, error) {
	signed, err := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c).SignedString(a.priv)
	if err != nil {
		return "", fmt.Errorf("auth: sign token: %w", err)
	}
	// A token we cannot verify ourselves must not be handed out.
	if err := checkSize(signed); err != nil {
		return "", fmt.Errorf("%w (too many permissions, bearers or addresses)", err)
	}
	return signed, nil
}

// resolveBearers validates bearers and turns "vt://<validation id>" into
// "vt://<peer id>", so the token binds the key, not a local alias that could
// later be removed or reused.
func (a *Authority) resolveBearers(ctx context.Context, in []string) ([]string, error) {
	out := make([]string, 0, len(in))
	for _, b := range in {
		b = strings.TrimSpace(b)
		switch {
		case strings.HasPrefix(b, SchemeVT):
			ref := strings.TrimPrefix(b, SchemeVT)
			if id, err := peer.Decode(ref); err == nil {
				b = SchemeVT + id.String()
				break
			}
			v, err := a.Validation(ctx, ref)
			if errors.Is(err, ErrNotFound) {
				return nil, fmt.Errorf("%w: bearer %q is neither a peer id nor a stored validation id", ErrOptions, truncate(b))
			}
			if err != nil {
				return nil, err
			}
			if v.Expires != nil && !a.now().Before(*v.Expires) {
				return nil, fmt.Errorf("%w: validation %s for bearer expired at %s", ErrOptions, v.ID, v.Expires.UTC().Format(time.RFC3339))
			}
			b = SchemeVT + v.PeerID
		case strings.HasPrefix(b, SchemeIPv4):
			p, err := parseIPv4Bearer(b)
			if err != nil {
				return nil, err
			}
			b = SchemeIPv4 + p.String()
		default:
			return nil, fmt.Errorf("%w: bearer %q must start with %s or %s", ErrOptions, truncate(b), SchemeVT, SchemeIPv4)
		}
		if !slices.Contains(out, b) {
			out = append(out, b)
		}
	}
	return out, nil
}

// Verify checks a capability token presented by r and returns its Grant.
// The first successful verification of a token by a remote is cached until
// the token expires or is revoked, so callers may verify once per stream
// without paying for a signature check each time.
func (a *Authority) Verify(ctx context.Context, raw string, r Remote) (*Grant, error) {
	if err := checkInput(raw); err != nil {
		return nil, err
	}
	key := cacheKey{sum: sha256.Sum256([]byte(raw)), peer: r.Peer, ip: r.IP, relayed: r.Relayed}
	if g, err, ok := a.cached(key); ok {
		return g, err
	}

	var c Claims
	var keyErr error
	tok, err := a.parser.ParseWithClaims(raw, &c, func(*jwt.Token) (any, error) {
		// Checked before the signature so that another instance's token is
		// reported as such rather than as a bad signature.
		if c.Issuer != a.id.String() {
			keyErr = a.wrongIssuer(c.Issuer)
			return nil, keyErr
		}
		return a.pub, nil
	})
	if err != nil {
		return nil, classify(tok, err, keyErr, &c)
	}
	if c.Type != TypeCapability {
		return nil, fmt.Errorf("%w: typ %q is not %s", ErrTokenType, truncate(c.Type), TypeCapability)
	}
	if _, err := uuid.Parse(c.ID); err != nil {
		return nil, fmt.Errorf("%w: jti is not a token id", ErrInvalid)
	}
	if err := checkBearers(&c, r); err != nil {
		return nil, err
	}
	return a.admit(ctx, &c, raw, r, key)
}

func (a *Authority) wrongIssuer(iss string) error {
	if id, err := peer.Decode(iss); err == nil {
		// truncate: an identity-multihash id can be kilobytes of the
		// sender's choosing, and this error is logged and sent back.
		return fmt.Errorf("%w: issued by %s, this instance is %s", ErrWrongIssuer, truncate(id.String()), a.id)
	}
	return fmt.Errorf("%w: iss is not a peer id; this instance is %s", ErrWrongIssuer, a.id)
}

// checkBearers applies explicit bearer restrictions. A bearer-less token
// passes here; claim-on-first-use is decided against the store in admit.
func checkBearers(c *Claims, r Remote) error {
	if len(c.Bearers) == 0 {
		return nil
	}
	ip := r.IP.Unmap()
	for _, b := range c.Bearers {
		if ref, ok := strings.CutPrefix(b, SchemeVT); ok {
			if r.Peer != "" && ref == r.Peer.String() {
				return nil
			}
			continue
		}
		// Behind a relay the connection's IP is the relay's, so an address
		// bearer would admit everyone using that relay.
		if p, err := parseIPv4Bearer(b); err == nil && !r.Relayed && ip.IsValid() && p.Contains(ip) {
			return nil
		}
	}
	who := "unidentified peer"
	if r.Peer != "" {
		who = "peer " + r.Peer.String()
	}
	switch {
	case r.Relayed:
		return fmt.Errorf("%w: %s (relayed connection; ipv4 bearers need a direct connection)", ErrBearer, who)
	case ip.IsValid():
		return fmt.Errorf("%w: %s from %s", ErrBearer, who, ip)
	default:
		return fmt.Errorf("%w: %s", ErrBearer, who)
	}
}

// admit checks the token's record and, for a claim-on-first-use token,
// claims it for r.Peer, then caches the grant. The read lock is held from the
// record read to the cache insert so that a concurrent Revoke either
// happens first (and this fails) or after (and drops the cached grant).
func (a *Authority) admit(ctx context.Context, c *Claims, raw string, r Remote, key cacheKey) (*Grant, error) {
	claimable := len(c.Bearers) == 0 && !c.Reusable
	if claimable && r.Peer == "" {
		return nil, fmt.Errorf("%w: a claim-on-first-use token needs a peer id proved by the secure channel", ErrBearer)
	}
	me := r.Peer.String()

	a.mu.RLock()
	rec, err := a.liveRecord(ctx, c.ID, raw)
	if err == nil && (!claimable || rec.ClaimedBy == me) {
		g := a.grant(key, c, r)
		a.mu.RUnlock()
		return g, nil
	}
	a.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	if rec.ClaimedBy != "" {
		return nil, claimedErr(c.ID)
	}

	// Re-read under the write lock: another peer may have claimed it, or
	// Revoke may have deleted it, since the read above.
	a.mu.Lock()
	defer a.mu.Unlock()
	rec, err = a.liveRecord(ctx, c.ID, raw)
	if err != nil {
		return nil, err
	}
	switch rec.ClaimedBy {
	case me:
	case "":
		claim := rec
		claim.ClaimedBy = me
		if err := a.putJSON(ctx, tokensPrefix, rec.ID, claim); err != nil {
			// The claim may have reached the live store without being
			// durable. Left there, a retry by this peer would be granted
			// without a sync, and a crash could then free the token for
			// another peer. Put the unclaimed record back so the next
			// attempt claims, and syncs, again.
			if k, kerr := recordKey(tokensPrefix, rec.ID); kerr == nil {
				if b, merr := json.Marshal(rec); merr == nil {
					_ = a.store.Put(context.WithoutCancel(ctx), k, b)
				}
			}
			return nil, fmt.Errorf("auth: record claim of token %s: %w", c.ID, err)
		}
	default:
		return nil, claimedErr(c.ID)
	}
	return a.grant(key, c, r), nil
}

func claimedErr(id string) error {
	// The claimer's id is deliberately left out: the error may be sent to
	// the losing peer, which has no business learning who holds the token.
	return fmt.Errorf("%w: token %s is bound to the peer that first used it", ErrClaimed, id)
}

// liveRecord returns the stored record of a token, requiring that it still
// exists and holds exactly this token. Callers hold mu.
func (a *Authority) liveRecord(ctx context.Context, id, raw string) (Record, error) {
	var rec Record
	err := a.getJSON(ctx, tokensPrefix, id, &rec)
	if errors.Is(err, ErrNotFound) {
		if at, ok := a.revokedAt(ctx, id); ok {
			return Record{}, &RevokedError{TokenID: id, At: at}
		}
		return Record{}, fmt.Errorf("%w: token %s has been revoked or was not issued by this store", ErrRevoked, id)
	}
	if err != nil {
		return Record{}, err
	}
	if rec.Token != raw {
		return Record{}, fmt.Errorf("%w: token %s does not match the issued record", ErrRevoked, id)
	}
	return rec, nil
}

// cached returns a cached grant (ok=true), or an expiry error for an entry
// that outlived its token; ok=false means verify from scratch.
func (a *Authority) cached(key cacheKey) (*Grant, error, bool) {
	a.cacheMu.Lock()
	defer a.cacheMu.Unlock()
	g, ok := a.cache[key]
	if !ok {
		return nil, nil, false
	}
	if g.expired(a.now()) {
		delete(a.cache, key)
		return nil, fmt.Errorf("%w: expired at %s", ErrExpired, g.Expires.UTC().Format(time.RFC3339)), true
	}
	return g, nil, true
}

// grant builds and caches the Grant. Callers hold mu (read or write).
func (a *Authority) grant(key cacheKey, c *Claims, r Remote) *Grant {
	a.cacheMu.Lock()
	defer a.cacheMu.Unlock()
	e, ok := a.done[c.ID]
	if !ok {
		if len(a.done) >= a.donePruneAt {
			a.pruneDoneLocked()
		}
		e = doneEntry{ch: make(chan struct{}), expires: c.Expires()}
	}
	if !e.expires.IsZero() {
		e.until = max(e.until, a.monoExpiry(e.expires))
	}
	a.done[c.ID] = e
	g := newGrant(c, a.id, r.Peer, e.ch)
	if len(a.cache) >= maxCachedGrants {
		a.evictLocked()
	}
	a.cache[key] = g
	return g
}

// doneEntry is a token's revocation channel and the token's expiry.
type doneEntry struct {
	ch      chan struct{}
	expires time.Time // zero: never
	// until is when, on a.mono's clock, every grant made with ch has
	// outlived the token, as each grant's holder counted its remaining
	// time when the grant was made (plus doneGrace).
	until time.Duration
}

// minDonePrune is the size below which the done map is never swept.
const minDonePrune = 1024

// doneGrace is how long after its expiry a grant's holder may take to end
// what the grant allowed (the node ends a stream a second after Verify's
// leeway), during which its revocation channel is kept.
const doneGrace = time.Minute

// monoExpiry returns when, on a.mono's clock, a token that expires at exp
// stops being valid by Verify's rule as the wall clock tells it now, plus
// doneGrace; saturated instead of overflowing for far expiries.
func (a *Authority) monoExpiry(exp time.Time) time.Duration {
	u := a.mono() + doneGrace
	rem := exp.Add(Leeway).Sub(a.now())
	if rem > 0 && rem > time.Duration(math.MaxInt64)-u {
		return time.Duration(math.MaxInt64)
	}
	return u + rem
}

// pruneDoneLocked forgets the revocation channels of expired tokens. A
// valid token's channel must never be dropped, or its older grants would
// miss a revocation, and the wall clock that Verify uses can step: jump
// ahead (a token looks expired, and is valid again once the clock is set
// right) or step back (an expired token becomes valid again). So a channel
// goes only when the token is expired by Verify's rule now (expiredAt) and
// also on the monotonic clock, counted from each of its grants (until),
// by which time the holders of those grants have ended their streams. The
// token's cached grants go with it: served after a step back of the clock,
// they would carry the dropped channel, which no Revoke closes any more.
// Callers hold cacheMu.
func (a *Authority) pruneDoneLocked() {
	now, mono := a.now(), a.mono()
	var pruned map[string]bool
	for id, e := range a.done {
		if expiredAt(e.expires, now) && mono >= e.until {
			delete(a.done, id)
			if pruned == nil {
				pruned = make(map[string]bool)
			}
			pruned[id] = true
		}
	}
	if pruned != nil {
		for k, g := range a.cache {
			if pruned[g.TokenID] {
				delete(a.cache, k)
			}
		}
	}
	a.donePruneAt = max(2*len(a.done), minDonePrune)
}

// evictLocked makes room: expired entries first, then arbitrary ones (Go's
// randomised map order), since a miss only costs a re-verification.
func (a *Authority) evictLocked() {
	now := a.now()
	for k, g := range a.cache {
		if g.expired(now) {
			delete(a.cache, k)
		}
	}
	for k := range a.cache {
		if len(a.cache) < maxCachedGrants {
			break
		}
		delete(a.cache, k)
	}
}

// Revoke deletes a token's record, which makes every later Verify fail,
// drops its cached grants, closes their Done channels, and then calls each
// OnRevoke callback with the id (so the node can close open streams).
// If the delete succeeds but syncing the store fails, all of that still
// happens and the sync error is returned: the token is revoked in this
// process, but the revocation may not survive a crash.
func (a *Authority) Revoke(ctx context.Context, id string) error {
	_, err := a.RevokeRecord(ctx, id)
	return err
}

// Revocation describes a token that RevokeRecord revoked.
type Revocation struct {
	// Record is the token's record as it was (its claims name its
	// bearers, ClaimedBy its claimer): zero if it could not be decoded.
	Record Record
	// At is when it was revoked.
	At time.Time
}

// RevokeRecord is Revoke, also returning what was revoked, so that the
// caller can tell the token's holders. It returns a non-zero Revocation
// whenever the token was revoked, also with the error of a failed sync.
func (a *Authority) RevokeRecord(ctx context.Context, id string) (Revocation, error) {
	k, err := recordKey(tokensPrefix, id)
	if err != nil {
		return Revocation{}, err
	}
	// Canonical form, so the cache and callbacks see the id Issue produced.
	id = k.BaseNamespace()
	a.mu.Lock()
	// The raw bytes, decoded only for the caller: a record too corrupt to
	// decode must still be revocable.
	raw, err := a.store.Get(ctx, k)
	if errors.Is(err, ds.ErrNotFound) {
		err = nil
		raw = nil
	}
	if err != nil || raw == nil {
		a.mu.Unlock()
		if err != nil {
			return Revocation{}, fmt.Errorf("auth: read token %s: %w", id, err)
		}
		if at, ok := a.revokedAt(ctx, id); ok {
			return Revocation{}, fmt.Errorf("%w: token %s was revoked already, at %s", ErrNotFound, id, at.Format(time.RFC3339))
		}
		// Revoked before revocations were recorded (their records
		// were only deleted), or never issued.
		return Revocation{}, fmt.Errorf("%w: no token with id %s (never issued here, or revoked already)", ErrNotFound, id)
	}
	var rv Revocation
	if json.Unmarshal(raw, &rv.Record) != nil {
		rv.Record = Record{ID: id}
	}
	rv.At = time.Now().UTC()
	// The revocation record first, synced with the delete below: lost in
	// a crash with it (the token then stays live: revoke it again), or
	// kept without it (the token is not revoked; the record only names
	// tokens that were, and a later revocation rewrites it).
	rk, _ := recordKey(revokedPrefix, id) // id is a valid uuid (k above)
	rb, _ := json.Marshal(revocation{RevokedAt: rv.At})
	if err := a.store.Put(ctx, rk, rb); err != nil {
		a.mu.Unlock()
		return Revocation{}, fmt.Errorf("auth: record the revocation of token %s: %w", id, err)
	}
	if err := a.store.Delete(ctx, k); err != nil {
		a.mu.Unlock()
		return Revocation{}, fmt.Errorf("auth: delete token %s: %w", id, err)
	}
	// From here the record is gone from the live store, so the token is
	// revoked whether or not the sync succeeds: its grants must go too, or
	// they would be served from the cache while a retried Revoke reports
	// "no token with id".
	var syncErr error
	if err := a.store.Sync(ctx, authPrefix); err != nil {
		syncErr = fmt.Errorf("auth: token %s is revoked, but syncing the store failed, so the revocation may not survive a crash: %w", id, err)
	}
	a.cacheMu.Lock()
	for k, g := range a.cache {
		if g.TokenID == id {
			delete(a.cache, k)
		}
	}
	if e, ok := a.done[id]; ok {
		close(e.ch)
		delete(a.done, id)
	}
	a.cacheMu.Unlock()
	a.mu.Unlock()

	a.cbMu.Lock()
	cbs := slices.Clone(a.onRevoke)
	a.cbMu.Unlock()
	for _, fn := range cbs {
		fn(id)
	}
	return rv, syncErr
}

// pruneBatch is how many records PruneExpired deletes per hold of mu (in
// one datastore batch). A variable for tests.
var pruneBatch = 256

// testHookPrune, when set (by tests, before PruneExpired runs), is called
// by PruneExpired once it has chosen the records to delete and after each
// batch of deletions, without mu.
var testHookPrune func()

// PruneExpired deletes the records of tokens that expired before cutoff
// (by Verify's rule, leeway included), except those keep says to keep, and
// returns them, oldest first. A pruned token stays refused: its signed
// expiry is checked before its record. Pruning is final even if the clock
// was wrong (a token is not valid again once the clock is set right), so
// callers pass a cutoff in the past. With dryRun nothing is deleted.
//
// The scan of every record, the slow part, holds no lock: verifications
// need mu (a read lock from record to cached grant), and a prune that held
// it throughout stalled the first check of every stream's token for
// seconds with 100 000 records. The records are then deleted pruneBatch
// at a time under mu, each read again first: one revoked since the scan is
// not deleted (nor returned), one changed since (claimed) is judged, and
// returned, as it is now. keep is called without a lock or with mu held:
// it must not call back into a.
func (a *Authority) PruneExpired(ctx context.Context, cutoff time.Time, keep func(Record) bool, dryRun bool) ([]Record, error) {
	prunable := func(r Record) bool {
		return r.Claims.ExpiresAt != nil && expiredAt(r.Claims.ExpiresAt.Time, cutoff) && (keep == nil || !keep(r))
	}
	var cands []pruneCandidate
	for e, err := range ds.QueryIter(ctx, a.store, query.Query{Prefix: tokensPrefix.String()}) {
		if err != nil {
			return nil, fmt.Errorf("auth: list tokens: %w", err)
		}
		var r Record
		if err := json.Unmarshal(e.Value, &r); err != nil {
			return nil, fmt.Errorf("auth: stored token %s is corrupt: %w", e.Key, err)
		}
		// Pending: an Issue in progress (Tokens leaves it out too).
		if prunable(r) && !a.isPending(r.ID) {
			cands = append(cands, pruneCandidate{rec: r, sum: sha256.Sum256(e.Value)})
		}
	}
	slices.SortFunc(cands, func(x, y pruneCandidate) int { return compareRecords(x.rec, y.rec) })
	if dryRun {
		out := make([]Record, len(cands))
		for i, c := range cands {
			out[i] = c.rec
		}
		return out, nil
	}
	if testHookPrune != nil {
		testHookPrune()
	}
	var out []Record
	for len(cands) > 0 {
		n := min(len(cands), pruneBatch)
		recs, err := a.pruneSome(ctx, cands[:n], prunable)
		out = append(out, recs...)
		if err != nil {
			return out, err
		}
		cands = cands[n:]
		if testHookPrune != nil {
			testHookPrune()
		}
	}
	if len(out) > 0 {
		if err := a.store.Sync(ctx, authPrefix); err != nil {
			return out, fmt.Errorf("auth: pruned %d token record(s), but syncing the store failed, so some may come back after a crash: %w", len(out), err)
		}
	}
	return out, nil
}

// pruneCandidate is a record PruneExpired's scan chose, and the sum of
// its stored bytes, to tell whether it changed since.
type pruneCandidate struct {
	rec Record
	sum [sha256.Size]byte
}

// pruneSome deletes, in one batch under mu, the records of cands that are
// still stored and, if changed since the scan, still prunable, and returns
// them as they were deleted.
func (a *Authority) pruneSome(ctx context.Context, cands []pruneCandidate, prunable func(Record) bool) ([]Record, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	b, err := a.store.Batch(ctx)
	if err != nil {
		return nil, fmt.Errorf("auth: prune tokens: %w", err)
	}
	var out []Record
	for _, c := range cands {
		k, err := recordKey(tokensPrefix, c.rec.ID)
		if err != nil {
			return nil, fmt.Errorf("auth: prune token %s: %w", c.rec.ID, err)
		}
		raw, err := a.store.Get(ctx, k)
		if errors.Is(err, ds.ErrNotFound) {
			continue // revoked since the scan
		}
		if err != nil {
			return nil, fmt.Errorf("auth: prune token %s: %w", c.rec.ID, err)
		}
		rec := c.rec
		if sha256.Sum256(raw) != c.sum {
			var r Record
			if json.Unmarshal(raw, &r) != nil || r.ID != rec.ID || !prunable(r) {
				continue // left to a prune that reads it as it is
			}
			rec = r
		}
		if err := b.Delete(ctx, k); err != nil {
			return nil, fmt.Errorf("auth: prune token %s: %w", rec.ID, err)
		}
		out = append(out, rec)
	}
	if len(out) > 0 {
		if err := b.Commit(ctx); err != nil {
			return nil, fmt.Errorf("auth: prune tokens: %w", err)
		}
	}
	return out, nil
}

// revocation is the record a revoked token leaves.
type revocation struct {
	RevokedAt time.Time `json:"revoked_at"`
}

// revokedAt reports when token id was revoked, if this store recorded it.
func (a *Authority) revokedAt(ctx context.Context, id string) (time.Time, bool) {
	var r revocation
	if err := a.getJSON(ctx, revokedPrefix, id, &r); err != nil {
		return time.Time{}, false
	}
	return r.RevokedAt, true
}

// OnRevoke registers fn to be called, synchronously and in registration
// order, with the id of every token revoked after this call.
func (a *Authority) OnRevoke(fn func(tokenID string)) {
	if fn == nil {
		return
	}
	a.cbMu.Lock()
	defer a.cbMu.Unlock()
	a.onRevoke = append(a.onRevoke, fn)
}

// Token returns the record of an issued, unrevoked token. For a token
// revoked here, the ErrNotFound says when.
func (a *Authority) Token(ctx context.Context, id string) (Record, error) {
	var rec Record
	if err := a.getJSON(ctx, tokensPrefix, id, &rec); err != nil {
		if k, kerr := recordKey(tokensPrefix, id); errors.Is(err, ErrNotFound) && kerr == nil {
			if at, ok := a.revokedAt(ctx, k.BaseNamespace()); ok {
				return Record{}, fmt.Errorf("%w: token %s was revoked, at %s", ErrNotFound, k.BaseNamespace(), at.Format(time.RFC3339))
			}
		}
		return Record{}, err
	}
	if a.isPending(rec.ID) {
		return Record{}, fmt.Errorf("%w: no token with id %s", ErrNotFound, rec.ID)
	}
	return rec, nil
}

// Tokens returns every unrevoked token record, oldest first. Tokens that
// Issue has not yet returned are left out.
func (a *Authority) Tokens(ctx context.Context) ([]Record, error) {
	recs, err := listJSON[Record](ctx, a.store, tokensPrefix)
	if err != nil {
		return nil, err
	}
	recs = slices.DeleteFunc(recs, func(r Record) bool { return a.isPending(r.ID) })
	slices.SortFunc(recs, compareRecords)
	return recs, nil
}

// compareRecords orders token records oldest first (then by id).
func compareRecords(x, y Record) int {
	if c := x.IssuedAt.Compare(y.IssuedAt); c != 0 {
		return c
	}
	return strings.Compare(x.ID, y.ID)
}

// recordKey maps an id to its key. Ids are uuids; anything else cannot name
// a record, and refusing it keeps path-like input out of the key space.
func recordKey(prefix ds.Key, id string) (ds.Key, error) {
	u, err := uuid.Parse(id)
	if err != nil {
		return ds.Key{}, fmt.Errorf("%w: %q is not a token or validation id (a uuid)", ErrNotFound, truncate(id))
	}
	return prefix.ChildString(u.String()), nil
}

func (a *Authority) getJSON(ctx context.Context, prefix ds.Key, id string, v any) error {
	k, err := recordKey(prefix, id)
	if err != nil {
		return err
	}
	b, err := a.store.Get(ctx, k)
	if errors.Is(err, ds.ErrNotFound) {
		return fmt.Errorf("%w: no %s with id %s", ErrNotFound, kindOf(prefix), k.BaseNamespace())
	}
	if err != nil {
		return fmt.Errorf("auth: read %s %s: %w", kindOf(prefix), k.BaseNamespace(), err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("auth: stored %s %s is corrupt: %w", kindOf(prefix), k.BaseNamespace(), err)
	}
	return nil
}

func (a *Authority) putJSON(ctx context.Context, prefix ds.Key, id string, v any) error {
	k, err := recordKey(prefix, id)
	if err != nil {
		return err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("auth: encode %s %s: %w", kindOf(prefix), id, err)
	}
	if err := a.store.Put(ctx, k, b); err != nil {
		return fmt.Errorf("auth: store %s %s: %w", kindOf(prefix), id, err)
	}
	if err := a.store.Sync(ctx, prefix); err != nil {
		return fmt.Errorf("auth: sync %s: %w", prefix, err)
	}
	return nil
}

func (a *Authority) deleteKey(ctx context.Context, prefix ds.Key, id string) error {
	k, err := recordKey(prefix, id)
	if err != nil {
		return err
	}
	if err := a.store.Delete(ctx, k); err != nil {
		return fmt.Errorf("auth: delete %s %s: %w", kindOf(prefix), id, err)
	}
	if err := a.store.Sync(ctx, prefix); err != nil {
		return fmt.Errorf("auth: sync %s: %w", prefix, err)
	}
	return nil
}

func kindOf(prefix ds.Key) string {
	switch prefix {
	case validationsPrefix:
		return "validation"
	case revokedPrefix:
		return "revocation"
	}
	return "token"
}

func listJSON[T any](ctx context.Context, store ds.Read, prefix ds.Key) ([]T, error) {
	var out []T
	for e, err := range ds.QueryIter(ctx, store, query.Query{Prefix: prefix.String()}) {
		if err != nil {
			return nil, fmt.Errorf("auth: list %ss: %w", kindOf(prefix), err)
		}
		var v T
		if err := json.Unmarshal(e.Value, &v); err != nil {
			return nil, fmt.Errorf("auth: stored %s %s is corrupt: %w", kindOf(prefix), e.Key, err)
		}
		out = append(out, v)
	}
	return out, nil
}
