package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	"github.com/libp2p/go-libp2p/core/peer"
)

// storedKeys lists the keys under prefix straight from the store, past
// anything Authority filters.
func storedKeys(t *testing.T, store ds.Read, prefix ds.Key) []string {
	t.Helper()
	var keys []string
	for e, err := range ds.QueryIter(context.Background(), store, query.Query{Prefix: prefix.String(), KeysOnly: true}) {
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, e.Key)
	}
	return keys
}

// An Issue whose store sync failed returned an error, so nobody got the
// token, but its record stayed in the store: it was listed by Tokens and
// counted as issued. The record must be gone, and it must not be listed
// while Issue is still deciding either.
func TestFailedIssueLeavesNoRecord(t *testing.T) {
	ctx := context.Background()
	store := &syncFailStore{Batching: newStore()}
	f := fixtureOver(t, newKey(t), store)
	kept := f.issue(t, IssueOptions{Reusable: true})

	var inFlight []Record
	var inFlightErr error
	store.onSync = func(prefix ds.Key) {
		if prefix == tokensPrefix && inFlight == nil {
			inFlight, inFlightErr = f.a.Tokens(ctx)
		}
	}
	store.fail.Store(true)
	rec, err := f.a.Issue(ctx, IssueOptions{Reusable: true, Perform: []string{"x"}})
	store.fail.Store(false)
	store.onSync = nil
	if err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("Issue with a failing sync: %v, want the sync error", err)
	}
	if rec.ID != "" || rec.Token != "" {
		t.Errorf("a failed Issue returned a record %+v", rec)
	}
	if inFlightErr != nil {
		t.Fatal(inFlightErr)
	}
	if len(inFlight) != 1 || inFlight[0].ID != kept.ID {
		t.Errorf("while the failing Issue ran, Tokens listed %d records, want only %s", len(inFlight), kept.ID)
	}
	all, err := f.a.Tokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 || all[0].ID != kept.ID {
		t.Errorf("after the failed Issue, Tokens lists %d records, want only %s", len(all), kept.ID)
	}
	if keys := storedKeys(t, store, tokensPrefix); len(keys) != 1 || keys[0] != tokensPrefix.ChildString(kept.ID).String() {
		t.Errorf("the store holds token records %v, want only %s's", keys, kept.ID)
	}
	// The next Issue works and is listed.
	if _, err := f.a.Issue(ctx, IssueOptions{}); err != nil {
		t.Fatal(err)
	}
	if all, err := f.a.Tokens(ctx); err != nil || len(all) != 2 {
		t.Errorf("after a successful Issue, Tokens = %d records, %v; want 2", len(all), err)
	}
}

// listGateStore holds each listing of validations until a second one has
// started (or, when none comes, briefly), so that callers that each list
// and then store really do overlap. The wait only widens the race; no
// assertion depends on it.
type listGateStore struct {
	ds.Batching
	mu      sync.Mutex
	listing int
	two     chan struct{}
}

func (s *listGateStore) Query(ctx context.Context, q query.Query) (query.Results, error) {
	if q.Prefix == validationsPrefix.String() {
		s.mu.Lock()
		s.listing++
		if s.listing == 2 {
			close(s.two)
		}
		s.mu.Unlock()
		select {
		case <-s.two:
		case <-time.After(200 * time.Millisecond):
		}
	}
	return s.Batching.Query(ctx, q)
}

// Two concurrent AddValidation calls of one token each listed the stored
// validations, found none, and stored the token under two ids.
func TestConcurrentAddValidationStoresOnce(t *testing.T) {
	ctx := context.Background()
	store := &listGateStore{Batching: newStore(), two: make(chan struct{})}
	alice := fixtureOver(t, newKey(t), store)
	vt, err := newFixture(t).a.IssueValidation(IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	const n = 16
	ids := make([]string, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			v, err := alice.a.AddValidation(ctx, vt)
			ids[i], errs[i] = v.ID, err
		})
	}
	close(start)
	wg.Wait()
	all, err := alice.a.Validations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 {
		t.Fatalf("%d concurrent adds of one validation token stored %d records, want 1", n, len(all))
	}
	for i := range n {
		if errs[i] != nil {
			t.Errorf("add %d: %v", i, errs[i])
		} else if ids[i] != all[0].ID {
			t.Errorf("add %d returned id %s, but the stored record is %s", i, ids[i], all[0].ID)
		}
	}
}

// An AddValidation whose store sync failed returned an error but left its
// record: the operator, told it failed, added the token again and got the
// record back without any sync, or listed a validation they were told was
// not added.
func TestFailedAddValidationLeavesNoRecord(t *testing.T) {
	ctx := context.Background()
	store := &syncFailStore{Batching: newStore()}
	alice := fixtureOver(t, newKey(t), store)
	vt, err := newFixture(t).a.IssueValidation(IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var inFlight []Validation
	listed := false
	store.onSync = func(prefix ds.Key) {
		if prefix == validationsPrefix && !listed {
			listed = true
			inFlight, err = alice.a.Validations(ctx)
		}
	}
	store.fail.Store(true)
	_, addErr := alice.a.AddValidation(ctx, vt)
	store.fail.Store(false)
	store.onSync = nil
	if addErr == nil || !strings.Contains(addErr.Error(), "disk on fire") {
		t.Fatalf("AddValidation with a failing sync: %v, want the sync error", addErr)
	}
	if err != nil || !listed {
		t.Fatalf("listing during the add: listed %v, %v", listed, err)
	}
	if len(inFlight) != 0 {
		t.Errorf("while the failing add ran, Validations listed %d records", len(inFlight))
	}
	if keys := storedKeys(t, store, validationsPrefix); len(keys) != 0 {
		t.Errorf("after the failed add the store holds validation records %v", keys)
	}
	v, err := alice.a.AddValidation(ctx, vt)
	if err != nil {
		t.Fatal(err)
	}
	if all, err := alice.a.Validations(ctx); err != nil || len(all) != 1 || all[0].ID != v.ID {
		t.Errorf("after a successful retry, Validations = %v, %v; want only %s", all, err, v.ID)
	}
}

// sweepDone runs the done-channel sweep now, as the next new token's
// grant would once the map is large enough.
func sweepDone(a *Authority) {
	a.cacheMu.Lock()
	defer a.cacheMu.Unlock()
	a.pruneDoneLocked()
}

// The wall clock jumped ahead past a token's expiry, a sweep dropped the
// token's revocation channel, and the clock was set right: the token was
// valid again, but its grants (open streams, and the cached grant served
// to the same remote) held a channel that Revoke no longer closed.
func TestDoneSweepSurvivesWallClockJump(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	rec := f.issue(t, IssueOptions{Reusable: true, ExpiresIn: time.Hour})
	bob := direct(newPeer(t), "10.0.0.1")
	g, err := f.a.Verify(ctx, rec.Token, bob)
	if err != nil {
		t.Fatal(err)
	}
	f.stepWall(24 * time.Hour)
	sweepDone(f.a)
	f.stepWall(-24 * time.Hour)
	g2, err := f.a.Verify(ctx, rec.Token, bob)
	if err != nil {
		t.Fatalf("Verify once the clock is right again: %v", err)
	}
	g3, err := f.a.Verify(ctx, rec.Token, direct(newPeer(t), "10.0.0.2"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.a.Revoke(ctx, rec.ID); err != nil {
		t.Fatal(err)
	}
	for name, g := range map[string]*Grant{"grant made before the jump": g, "grant served after it": g2, "new grant": g3} {
		if !g.Revoked() {
			t.Errorf("%s did not see the revocation", name)
		}
	}
}

// A token expired, a sweep dropped its revocation channel, and then the
// wall clock stepped back before its expiry, so Verify accepted it again:
// the same remote was served the cached grant, which carried the dropped
// channel, so a stream opened with it missed the token's revocation.
func TestDoneSweepSurvivesWallClockStepBack(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	rec := f.issue(t, IssueOptions{Reusable: true, ExpiresIn: time.Hour})
	bob := direct(newPeer(t), "10.0.0.1")
	if _, err := f.a.Verify(ctx, rec.Token, bob); err != nil {
		t.Fatal(err)
	}
	f.advance(2 * time.Hour)
	sweepDone(f.a)
	f.a.cacheMu.Lock()
	_, kept := f.a.done[rec.ID]
	f.a.cacheMu.Unlock()
	if kept {
		t.Fatal("setup: the sweep kept the channel of a token that expired an hour ago")
	}
	f.stepWall(-2 * time.Hour)
	g, err := f.a.Verify(ctx, rec.Token, bob)
	if err != nil {
		t.Fatalf("Verify after the clock stepped back: %v", err)
	}
	if err := f.a.Revoke(ctx, rec.ID); err != nil {
		t.Fatal(err)
	}
	if !g.Revoked() {
		t.Error("a grant served after the clock stepped back did not see the revocation")
	}
}

// A token's remaining time on the monotonic clock saturates: for an expiry
// beyond what a Duration holds (exp may be up to the year 9999) adding it
// wrapped into the past, and the sweep would have dropped the channel of a
// token valid for centuries.
func TestMonoExpirySaturates(t *testing.T) {
	f := newFixture(t)
	near := f.a.monoExpiry(f.a.now().Add(time.Hour))
	for _, exp := range []time.Time{
		f.a.now().Add(time.Duration(math.MaxInt64)),
		time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC),
	} {
		if got := f.a.monoExpiry(exp); got < near {
			t.Errorf("monoExpiry(%s) = %v, before an hour from now (%v)", exp.Format(time.RFC3339), got, near)
		}
	}
}

// sub == iss was compared as text, so a validation token naming its peer
// in two spellings (base58 and CIDv1) was refused, although both name the
// same key; and the comparison must still refuse another peer.
func TestValidationSubComparedAsPeerID(t *testing.T) {
	ctx := context.Background()
	alice, bob := newFixture(t), newFixture(t)
	id := bob.a.PeerID()
	raw, err := bob.key.Raw()
	if err != nil {
		t.Fatal(err)
	}
	cidForm := peer.ToCid(id).String()
	if cidForm == id.String() {
		t.Fatal("setup: the CIDv1 spelling equals the base58 one")
	}
	sign := func(iss, sub string) string {
		now := time.Now().UTC().Truncate(time.Second)
		return forge(t, jwt.SigningMethodEdDSA, Claims{
			RegisteredClaims: jwt.RegisteredClaims{
				Issuer: iss, Subject: sub, ID: uuid.NewString(),
				IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now),
			},
			Type: TypeValidation,
		}, ed25519Priv(raw))
	}
	for _, c := range []struct{ iss, sub string }{{id.String(), cidForm}, {cidForm, id.String()}} {
		v, err := alice.a.AddValidation(ctx, sign(c.iss, c.sub))
		if err != nil {
			t.Errorf("iss %s, sub %s: %v", c.iss, c.sub, err)
			continue
		}
		if v.PeerID != id.String() {
			t.Errorf("iss %s, sub %s: stored peer id %s, want %s", c.iss, c.sub, v.PeerID, id)
		}
	}
	for _, sub := range []string{newPeer(t).String(), peer.ToCid(newPeer(t)).String(), "", "not-a-peer-id"} {
		if _, err := alice.a.AddValidation(ctx, sign(id.String(), sub)); !errors.Is(err, ErrInvalid) {
			t.Errorf("sub %q with bob's iss: %v, want ErrInvalid", sub, err)
		}
	}
}

// Decode and AddValidation take the verification key from the token's own
// iss, which makes them the place for the classic confusion attack: MAC the
// claims with the public key bytes (HS256), or send no signature at all.
// Only EdDSA is accepted there too.
func TestStoreLessPathsPinEdDSA(t *testing.T) {
	ctx := context.Background()
	alice, bob := newFixture(t), newFixture(t)
	pub, err := bob.key.GetPublic().Raw()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	c := Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer: bob.a.PeerID().String(), Subject: bob.a.PeerID().String(), ID: uuid.NewString(),
			IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now),
		},
		Type: TypeValidation,
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for name, raw := range map[string]string{
		"none":                        forge(t, jwt.SigningMethodNone, c, jwt.UnsafeAllowNoneSignatureType),
		"HS256 keyed with iss's key":  forge(t, jwt.SigningMethodHS256, c, pub),
		"HS512 keyed with iss's key":  forge(t, jwt.SigningMethodHS512, c, pub),
		"ES256 with an unrelated key": forge(t, jwt.SigningMethodES256, c, ecKey),
	} {
		if _, err := Decode(raw); !errors.Is(err, ErrAlgorithm) {
			t.Errorf("%s: Decode: %v, want ErrAlgorithm", name, err)
		}
		if _, err := alice.a.AddValidation(ctx, raw); !errors.Is(err, ErrAlgorithm) {
			t.Errorf("%s: AddValidation: %v, want ErrAlgorithm", name, err)
		}
	}
	if vs, err := alice.a.Validations(ctx); err != nil || len(vs) != 0 {
		t.Errorf("validations stored from forged tokens: %v, %v", vs, err)
	}
}
