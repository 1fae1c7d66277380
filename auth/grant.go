package auth

import (
	"time"

	"github.com/coattail/coattail/topics"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Grant is the result of a successful verification. It is immutable and may
// be shared: the same *Grant is returned for repeated verifications of one
// token by one remote. Permission checks are trie lookups, cheap enough for
// every message.
type Grant struct {
	// TokenID is the token's jti, the handle for revocation.
	TokenID string
	// Issuer is the instance that issued (and verified) the token.
	Issuer peer.ID
	// Bearer is the remote peer the grant was verified for.
	Bearer peer.ID
	// Expires is when the token stops being valid; zero means never.
	Expires time.Time

	claims    Claims
	perform   *topics.Trie[struct{}]
	publish   *topics.Trie[struct{}]
	subscribe []string
	done      <-chan struct{}
}

// newGrant compiles the permission lists. Patterns were validated when the
// token was issued and the token is signed by us, so an insert error can only
// mean a pattern this build no longer accepts; that pattern then grants
// nothing rather than everything.
func newGrant(c *Claims, issuer, bearer peer.ID, done <-chan struct{}) *Grant {
	g := &Grant{
		TokenID: c.ID,
		Issuer:  issuer,
		Bearer:  bearer,
		Expires: c.Expires(),
		claims:  c.clone(),
		perform: compile(c.Perform),
		publish: compile(c.Publish),
		done:    done,
	}
	for _, p := range c.Subscribe {
		if topics.ValidatePattern(p) == nil {
			g.subscribe = append(g.subscribe, p)
		}
	}
	return g
}

func compile(patterns []string) *topics.Trie[struct{}] {
	t := topics.NewTrie[struct{}]()
	for _, p := range patterns {
		_ = t.Insert(p, struct{}{}) // see newGrant: a refused pattern grants nothing
	}
	return t
}

// CanPerform reports whether the bearer may perform the action subject. A
// pattern or otherwise invalid subject is never allowed (the trie refuses it),
// so "orders.*" cannot sneak past a permission for "orders.*".
func (g *Grant) CanPerform(subject string) bool {
	return g != nil && g.perform.HasMatch(subject)
}

// CanPublish reports whether the bearer may publish to subject, with the
// same rules as CanPerform.
func (g *Grant) CanPublish(subject string) bool {
	return g != nil && g.publish.HasMatch(subject)
}

// CanSubscribe reports whether the bearer may subscribe with pattern: every
// subject the pattern can match must be allowed by one subscribe permission,
// so "orders.>" is refused under a permission of "orders.eu.>".
func (g *Grant) CanSubscribe(pattern string) bool {
	if g == nil {
		return false
	}
	// Covers is false for an invalid pattern on either side.
	for _, p := range g.subscribe {
		if topics.Covers(p, pattern) {
			return true
		}
	}
	return false
}

// Claims returns a copy of the token's claims.
func (g *Grant) Claims() Claims {
	if g == nil {
		return Claims{}
	}
	return g.claims.clone()
}

// Done is closed when the token is revoked, so a long-lived stream can select
// on it instead of registering an OnRevoke callback. Check it after
// registering a stream to close the gap between Verify and registration.
func (g *Grant) Done() <-chan struct{} {
	if g == nil {
		return nil
	}
	return g.done
}

// Revoked reports whether the token has been revoked since this grant was made.
func (g *Grant) Revoked() bool {
	select {
	case <-g.Done():
		return true
	default:
		return false
	}
}

func (g *Grant) expired(now time.Time) bool {
	return expiredAt(g.Expires, now)
}

// expiredAt reports whether a token expiring at exp (zero: never) is
// expired at now, with Leeway, as Verify decides.
func expiredAt(exp, now time.Time) bool {
	return !exp.IsZero() && !now.Before(exp.Add(Leeway))
}
