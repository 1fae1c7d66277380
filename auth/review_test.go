package auth

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	ds "github.com/ipfs/go-datastore"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Go's base64 decoders skip '\r' and '\n' even in strict mode, and a JWS
// signature covers only header.payload, so a line break inside the signature
// segment (or after it, as pasted from a file) left a token that still
// verified: Decode accepted it, and Verify blamed the issuer's record
// ("revoked") instead of the input. Every such spelling must be refused as
// malformed, so the issued string is the only one that decodes.
func TestTokenWithStrayBytesRefused(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	rec := f.issue(t, IssueOptions{Reusable: true})
	vt, err := f.a.IssueValidation(IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	splice := func(s, ins string, back int) string { return s[:len(s)-back] + ins + s[len(s)-back:] }
	for name, raw := range map[string]string{
		"trailing newline":         rec.Token + "\n",
		"CRLF inside signature":    splice(rec.Token, "\r\n", 10),
		"newline inside signature": splice(rec.Token, "\n", 40),
		"space inside signature":   splice(rec.Token, " ", 10),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Decode(raw); !errors.Is(err, ErrInvalid) {
				t.Errorf("Decode: %v, want ErrInvalid", err)
			}
			_, err := f.a.Verify(ctx, raw, direct(newPeer(t), ""))
			if !errors.Is(err, ErrInvalid) || errors.Is(err, ErrRevoked) {
				t.Fatalf("Verify: %v, want ErrInvalid", err)
			}
			if strings.Contains(err.Error(), strings.TrimSpace(raw)) {
				t.Error("error contains the token")
			}
		})
	}
	// A validation token spliced the same way is not stored as a second,
	// differently spelled copy.
	if _, err := newFixture(t).a.AddValidation(ctx, splice(vt, "\n", 10)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("AddValidation of a spliced token: %v, want ErrInvalid", err)
	}
	// The issued spellings still work.
	if _, err := f.a.Verify(ctx, rec.Token, direct(newPeer(t), "")); err != nil {
		t.Fatal(err)
	}
	if _, err := Decode(vt); err != nil {
		t.Fatal(err)
	}
}

// unsignedToken builds header.payload.signature with an arbitrary payload
// and a junk signature, as any remote can send.
func unsignedToken(t *testing.T, claims map[string]any) string {
	t.Helper()
	body, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"EdDSA","typ":"JWT"}`)) + "." + enc(body) + "." + strings.Repeat("A", 86)
}

// A peer id with an identity multihash can be kilobytes long and is chosen by
// whoever sends the token. Verify's errors are logged and sent back to the
// remote, so such an iss must not be echoed in full (SECURITY.md: attacker-
// controlled fields are quoted only when short).
func TestLongIssuerNotEchoed(t *testing.T) {
	junk := make([]byte, 4000)
	for i := range junk {
		junk[i] = byte('a' + i%26)
	}
	// An identity multihash: code 0x00, length, the bytes themselves.
	h := binary.AppendUvarint([]byte{0x00}, uint64(len(junk)))
	iss := peer.ID(append(h, junk...)).String()
	if _, err := peer.Decode(iss); err != nil {
		t.Fatalf("setup: long id does not decode: %v", err)
	}
	raw := unsignedToken(t, map[string]any{"iss": iss, "typ": TypeCapability, "jti": "00000000-0000-0000-0000-000000000000"})
	f := newFixture(t)
	_, verr := f.a.Verify(context.Background(), raw, direct(newPeer(t), ""))
	_, derr := Decode(raw)
	for name, c := range map[string]struct {
		err  error
		want error
	}{"Verify": {verr, ErrWrongIssuer}, "Decode": {derr, ErrInvalid}} {
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: %v, want %v", name, c.err, c.want)
			continue
		}
		if msg := c.err.Error(); len(msg) > 300 || strings.Contains(msg, iss[:64]) {
			t.Errorf("%s error echoes the %d-byte issuer (%d bytes): %.120s...", name, len(iss), len(msg), msg)
		}
	}
	// An ordinary peer id is still named.
	other := newPeer(t)
	raw = unsignedToken(t, map[string]any{"iss": other.String(), "typ": TypeCapability})
	if _, err := f.a.Verify(context.Background(), raw, direct(newPeer(t), "")); !errors.Is(err, ErrWrongIssuer) || !strings.Contains(err.Error(), other.String()) {
		t.Errorf("ordinary foreign issuer: %v", err)
	}
}

// Claims() promises a copy that cannot change the cached grant; the time
// claims are pointers and were shared, so a caller adjusting exp, nbf or iat
// on its copy changed what every later holder of the grant saw.
func TestGrantClaimsTimesAreCopies(t *testing.T) {
	f := newFixture(t)
	rec := f.issue(t, IssueOptions{Reusable: true, ExpiresIn: time.Hour})
	g, err := f.a.Verify(context.Background(), rec.Token, direct(newPeer(t), ""))
	if err != nil {
		t.Fatal(err)
	}
	want := g.Claims()
	wantExp, wantNbf, wantIat := want.ExpiresAt.Time, want.NotBefore.Time, want.IssuedAt.Time
	c := g.Claims()
	c.ExpiresAt.Time = c.ExpiresAt.Add(1000 * time.Hour)
	c.NotBefore.Time = time.Time{}
	c.IssuedAt.Time = time.Time{}
	got := g.Claims()
	if !got.ExpiresAt.Equal(wantExp) || !got.NotBefore.Equal(wantNbf) || !got.IssuedAt.Equal(wantIat) {
		t.Fatalf("mutating a copy changed the grant: exp %v nbf %v iat %v, want %v %v %v",
			got.ExpiresAt, got.NotBefore, got.IssuedAt, wantExp, wantNbf, wantIat)
	}
	// The same holds for the claims a grant is built from.
	if !got.ExpiresAt.Equal(rec.Claims.ExpiresAt.Time) {
		t.Fatalf("grant exp %v, issued %v", got.ExpiresAt, rec.Claims.ExpiresAt)
	}
}

// JWT times have one-second precision. The expiry was truncated, so a token
// issued to expire in 500ms expired the second it was issued (exp == iat) and
// one for 1.9s lasted 1s; with a not-before in the same second it expired no
// later than it became valid. A token must last at least as long as asked.
func TestSubSecondExpiryIsNotShortened(t *testing.T) {
	f := newFixture(t)
	cases := []struct{ nbf, exp time.Duration }{
		{0, 500 * time.Millisecond},
		{0, 1900 * time.Millisecond},
		{1200 * time.Millisecond, 1800 * time.Millisecond},
		{0, time.Hour},
	}
	for _, c := range cases {
		o := IssueOptions{NotBefore: c.nbf, ExpiresIn: c.exp}
		rec := f.issue(t, o)
		vt, err := f.a.IssueValidation(o)
		if err != nil {
			t.Fatal(err)
		}
		vc, err := Decode(vt)
		if err != nil {
			t.Fatal(err)
		}
		for name, cl := range map[string]Claims{"capability": rec.Claims, "validation": vc} {
			iat, nbf, exp := cl.IssuedAt.Time, cl.NotBefore.Time, cl.ExpiresAt.Time
			if exp.Sub(iat) < c.exp {
				t.Errorf("%s nbf %v exp %v: token lasts %v from issue", name, c.nbf, c.exp, exp.Sub(iat))
			}
			if !exp.After(nbf) {
				t.Errorf("%s nbf %v exp %v: exp %v is not after nbf %v", name, c.nbf, c.exp, exp, nbf)
			}
		}
	}
}

// syncFailStore fails Sync while fail is set, after the write it follows
// has reached the store: the state a full or failing disk leaves. It calls
// onSync, if set, at the start of every Sync: the moment a write is in the
// live store but its call has not returned. syncs counts the Syncs that
// succeeded.
type syncFailStore struct {
	ds.Batching
	fail   atomic.Bool
	syncs  atomic.Int64
	onSync func(prefix ds.Key)
}

func (s *syncFailStore) Sync(ctx context.Context, prefix ds.Key) error {
	if s.onSync != nil {
		s.onSync(prefix)
	}
	if s.fail.Load() {
		return errors.New("disk on fire")
	}
	s.syncs.Add(1)
	return s.Batching.Sync(ctx, prefix)
}

// A revocation whose delete reached the store but whose sync failed left the
// record gone (a retry said "no token with id", so the operator believed it
// revoked) while the cached grants kept being served, their Done channels
// stayed open and OnRevoke was never called: streams opened with the token
// lived on, and the same remote verifying again got the cached grant.
func TestRevokeWithFailedSyncStillDropsGrants(t *testing.T) {
	ctx := context.Background()
	store := &syncFailStore{Batching: newStore()}
	f := fixtureOver(t, newKey(t), store)
	rec := f.issue(t, IssueOptions{Reusable: true, Publish: []string{"x"}})
	bob := direct(newPeer(t), "10.0.0.1")
	g, err := f.a.Verify(ctx, rec.Token, bob)
	if err != nil {
		t.Fatal(err)
	}
	var called []string
	f.a.OnRevoke(func(id string) { called = append(called, id) })

	store.fail.Store(true)
	err = f.a.Revoke(ctx, rec.ID)
	store.fail.Store(false)
	if err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("Revoke with a failing sync: %v, want the sync error", err)
	}
	if _, err := f.a.Token(ctx, rec.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("setup: record still there after the delete: %v", err)
	}
	if g2, err := f.a.Verify(ctx, rec.Token, bob); err == nil {
		t.Errorf("the deleted token was still served from the cache (grant %s)", g2.TokenID)
	} else if !errors.Is(err, ErrRevoked) {
		t.Errorf("Verify after revoke: %v, want ErrRevoked", err)
	}
	if !g.Revoked() {
		t.Error("the grant's Done channel was not closed")
	}
	if len(called) != 1 || called[0] != rec.ID {
		t.Errorf("OnRevoke saw %v", called)
	}
}

// A claim whose sync failed stayed in the live store: the peer got an error,
// but its retry found the record naming it and was granted without any sync,
// so the binding that SECURITY.md says is durable before Verify returns could
// vanish in a crash and the token be claimed again by someone else. The
// failed claim must be undone, so the retry claims, and syncs, again.
func TestClaimWithFailedSyncIsNotKept(t *testing.T) {
	ctx := context.Background()
	store := &syncFailStore{Batching: newStore()}
	f := fixtureOver(t, newKey(t), store)
	rec := f.issue(t, IssueOptions{Perform: []string{"x"}})
	bob := direct(newPeer(t), "")

	store.fail.Store(true)
	_, err := f.a.Verify(ctx, rec.Token, bob)
	store.fail.Store(false)
	if err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("claim with a failing sync: %v, want the sync error", err)
	}
	got, err := f.a.Token(ctx, rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.ClaimedBy != "" {
		t.Errorf("the record names %s as claimer though the claim failed", got.ClaimedBy)
	}
	before := store.syncs.Load()
	if _, err := f.a.Verify(ctx, rec.Token, bob); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if store.syncs.Load() == before {
		t.Error("the retry was granted without syncing the claim")
	}
	if got, _ := f.a.Token(ctx, rec.ID); got.ClaimedBy != bob.Peer.String() {
		t.Errorf("after the retry the record names %q", got.ClaimedBy)
	}
}

// Verifications racing a revocation, cached and uncached, from remotes that
// are new or already cached: once Revoke returns, no Verify succeeds, and
// every grant handed out before reports Revoked.
func TestRevokeRacingVerify(t *testing.T) {
	ctx := context.Background()
	for round := range 20 {
		f := newFixture(t)
		rec := f.issue(t, IssueOptions{Reusable: true})
		remotes := make([]Remote, 8)
		for i := range remotes {
			remotes[i] = direct(newPeer(t), "10.0.0.1")
			if i%2 == 0 { // half of them cached before the race
				if _, err := f.a.Verify(ctx, rec.Token, remotes[i]); err != nil {
					t.Fatal(err)
				}
			}
		}
		var revoked atomic.Bool
		var wg sync.WaitGroup
		var mu sync.Mutex
		var grants []*Grant
		for _, r := range remotes {
			wg.Go(func() {
				for range 50 {
					after := revoked.Load()
					g, err := f.a.Verify(ctx, rec.Token, r)
					if err == nil {
						if after {
							t.Errorf("round %d: Verify succeeded after Revoke returned", round)
						}
						mu.Lock()
						grants = append(grants, g)
						mu.Unlock()
					} else if !errors.Is(err, ErrRevoked) {
						t.Errorf("round %d: %v", round, err)
					}
				}
			})
		}
		if err := f.a.Revoke(ctx, rec.ID); err != nil {
			t.Fatal(err)
		}
		revoked.Store(true)
		wg.Wait()
		for _, g := range grants {
			if !g.Revoked() {
				t.Fatalf("round %d: a grant handed out during the race does not report Revoked", round)
			}
		}
	}
}

// NumericDates are floats chosen by whoever signs the token. One beyond year
// 9999 decoded, passed AddValidation's time check and then failed to store
// with a JSON encoder error wrapping no sentinel; one beyond int64 seconds
// depends on the CPU's float conversion (amd64: "expired at" year
// 292277026596; arm64: never expires). Decode refuses such dates as invalid.
func TestOutlandishDatesRefused(t *testing.T) {
	bob := newFixture(t)
	raw, err := bob.key.Raw()
	if err != nil {
		t.Fatal(err)
	}
	id := bob.a.PeerID().String()
	for _, c := range []struct {
		claim string
		v     float64
	}{
		{"exp", 253402300800}, // 10000-01-01
		{"exp", 1e15},
		{"exp", 1e19},
		{"exp", -1e15},
		{"nbf", 1e19},
		{"iat", 1e15},
	} {
		claims := jwt.MapClaims{"iss": id, "sub": id, "typ": TypeValidation, c.claim: c.v}
		s, err := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims).SignedString(ed25519Priv(raw))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Decode(s); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.claim) {
			t.Errorf("Decode with %s %g: %v, want ErrInvalid naming %s", c.claim, c.v, err, c.claim)
		}
		if _, err := newFixture(t).a.AddValidation(context.Background(), s); !errors.Is(err, ErrInvalid) {
			t.Errorf("AddValidation with %s %g: %v, want ErrInvalid", c.claim, c.v, err)
		}
	}
	// Ordinary dates, past ones included, still decode.
	s, err := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{"iss": id, "typ": TypeCapability, "exp": 1, "nbf": 0, "iat": 4102444800}).SignedString(ed25519Priv(raw))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Decode(s); err != nil {
		t.Errorf("ordinary dates: %v", err)
	}
}

// A revoked token is named as such when it is presented again, revoked
// again or asked for (token show: it said "no token with that id"; its
// record is deleted, a revocation record says when), while an id that was
// never issued is "never issued here".
func TestRevokedTokenNamedAsRevoked(t *testing.T) {
	ctx := context.Background()
	f := fixtureOver(t, newKey(t), newStore())
	rec := f.issue(t, IssueOptions{Reusable: true, Publish: []string{"x"}})
	if err := f.a.Revoke(ctx, rec.ID); err != nil {
		t.Fatal(err)
	}
	_, err := f.a.Verify(ctx, rec.Token, direct(newPeer(t), "10.0.0.1"))
	if !errors.Is(err, ErrRevoked) || !strings.Contains(err.Error(), "was revoked at 20") {
		t.Errorf("Verify of a revoked token: %v, want it named revoked with the time", err)
	}
	err = f.a.Revoke(ctx, rec.ID)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "was revoked already, at 20") {
		t.Errorf("second Revoke: %v, want ErrNotFound naming the earlier revocation", err)
	}
	_, err = f.a.Token(ctx, strings.ToUpper(rec.ID))
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "token "+rec.ID+" was revoked, at 20") {
		t.Errorf("Token of a revoked token (its id in capitals): %v, want ErrNotFound naming the revocation", err)
	}
	err = f.a.Revoke(ctx, "8c5c8b8e-4a52-4f43-9d55-7d1c1e6e4a10")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "never issued here") {
		t.Errorf("Revoke of an unknown id: %v", err)
	}
	if _, err := f.a.Token(ctx, "8c5c8b8e-4a52-4f43-9d55-7d1c1e6e4a10"); !errors.Is(err, ErrNotFound) || strings.Contains(err.Error(), "revoked") {
		t.Errorf("Token of an unknown id: %v", err)
	}
	if recs, err := f.a.Tokens(ctx); err != nil || len(recs) != 0 {
		t.Errorf("tokens after revocation: %v (%v), want none", recs, err)
	}
}
