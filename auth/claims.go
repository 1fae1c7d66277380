package auth

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/coattail/coattail/topics"
	"github.com/golang-jwt/jwt/v5"
	"github.com/libp2p/go-libp2p/core/peer"
)

const (
	// TypeCapability is the typ claim of a capability token.
	TypeCapability = "coattail/cap"
	// TypeValidation is the typ claim of a validation token.
	TypeValidation = "coattail/vt"

	// MaxTokenSize bounds what is parsed at all, so an attacker cannot make
	// the verifier base64- and JSON-decode megabytes per stream.
	MaxTokenSize = 16 << 10

	// Leeway absorbs clock skew between issuer and bearer on nbf and exp.
	Leeway = 5 * time.Second

	// SchemeVT and SchemeIPv4 prefix the two kinds of bearer.
	SchemeVT   = "vt://"
	SchemeIPv4 = "ipv4://"

	// anyAction is the original Coattail's "every action" spelling, which in
	// NATS semantics would only match single-token subjects.
	anyAction  = "*"
	everything = ">"

	algEdDSA = "EdDSA"
)

// Claims is the payload of a Coattail token. The JSON names are part of the
// wire contract shared with other instances.
type Claims struct {
	jwt.RegisteredClaims
	// Type is TypeCapability or TypeValidation.
	Type string `json:"typ"`
	// Perform, Publish and Subscribe are subject patterns; an empty or absent
	// list grants nothing (defaults are applied at issue time, not here).
	Perform   []string `json:"perform,omitempty"`
	Publish   []string `json:"publish,omitempty"`
	Subscribe []string `json:"subscribe,omitempty"`
	// Bearers are "vt://<peer-id>" or "ipv4://<cidr>".
	Bearers []string `json:"bearers,omitempty"`
	// Addrs are the issuer's multiaddrs, so the token doubles as a join ticket.
	Addrs []string `json:"addrs,omitempty"`
	// Reusable exempts a bearer-less token from claim-on-first-use.
	Reusable bool `json:"reusable,omitempty"`
}

// clone returns a deep copy so callers can never mutate a cached grant.
func (c Claims) clone() Claims {
	out := c
	out.Perform = slices.Clone(c.Perform)
	out.Publish = slices.Clone(c.Publish)
	out.Subscribe = slices.Clone(c.Subscribe)
	out.Bearers = slices.Clone(c.Bearers)
	out.Addrs = slices.Clone(c.Addrs)
	out.Audience = slices.Clone(c.Audience)
	// The time claims are pointers: share them and a caller's copy aliases
	// the grant's.
	out.ExpiresAt = cloneDate(c.ExpiresAt)
	out.NotBefore = cloneDate(c.NotBefore)
	out.IssuedAt = cloneDate(c.IssuedAt)
	return out
}

func cloneDate(d *jwt.NumericDate) *jwt.NumericDate {
	if d == nil {
		return nil
	}
	v := *d
	return &v
}

// IssuerID returns the issuer as a peer id.
func (c Claims) IssuerID() (peer.ID, error) {
	id, err := peer.Decode(c.Issuer)
	if err != nil {
		return "", fmt.Errorf("%w: iss is not a peer id", ErrInvalid)
	}
	return id, nil
}

// Expires returns the expiry time, or the zero time for a token that never
// expires.
func (c Claims) Expires() time.Time {
	if c.ExpiresAt == nil {
		return time.Time{}
	}
	return c.ExpiresAt.Time
}

// CheckTime reports whether the token is usable at now, with the same Leeway
// as Verify. Decode does not check times, so that an expired token can still
// be inspected; callers that act on a decoded token call this.
func (c Claims) CheckTime(now time.Time) error {
	if c.ExpiresAt != nil && !now.Before(c.ExpiresAt.Add(Leeway)) {
		return fmt.Errorf("%w: expired at %s", ErrExpired, c.ExpiresAt.UTC().Format(time.RFC3339))
	}
	if c.NotBefore != nil && now.Add(Leeway).Before(c.NotBefore.Time) {
		return fmt.Errorf("%w: valid from %s", ErrNotYetValid, c.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// IssueOptions describe a capability token to issue.
type IssueOptions struct {
	// Perform and Publish default to nothing. Subscribe nil means [">"]
	// (everything), as in the original Coattail; a non-nil empty slice means
	// no subscriptions. A lone "*" entry means every action and becomes ">".
	Perform, Publish, Subscribe []string
	// Bearers restrict who may present the token. With none and Reusable
	// false, the first peer to verify successfully claims the token.
	Bearers []string
	// NotBefore delays validity, counted from now.
	NotBefore time.Duration
	// ExpiresIn is counted from now and rounded up to whole seconds (JWT's
	// precision); 0 means the token never expires.
	ExpiresIn time.Duration
	// Addrs are this instance's multiaddrs, copied verbatim into the token.
	Addrs []string
	// Reusable lets a bearer-less token be used by any number of peers.
	Reusable bool
}

func (o IssueOptions) checkTimes() error {
	if o.NotBefore < 0 {
		return fmt.Errorf("%w: not-before must not be negative", ErrOptions)
	}
	if o.ExpiresIn < 0 {
		return fmt.Errorf("%w: expires-in must not be negative", ErrOptions)
	}
	if o.ExpiresIn != 0 && o.ExpiresIn <= o.NotBefore {
		return fmt.Errorf("%w: token would expire (in %s) before it becomes valid (in %s)", ErrOptions, o.ExpiresIn, o.NotBefore)
	}
	return nil
}

// expiresAt is now+d rounded up to JWT's whole seconds. NumericDate
// truncates, which made a token last less than asked: one issued to expire
// in 500ms had exp == iat, and a sub-second window after nbf expired no
// later than it became valid. Rounding up keeps exp > nbf (checkTimes
// requires d > the not-before delay, which is rounded down).
func expiresAt(now time.Time, d time.Duration) *jwt.NumericDate {
	t := now.Add(d)
	if r := t.Truncate(time.Second); !r.Equal(t) {
		t = r.Add(time.Second)
	}
	return jwt.NewNumericDate(t)
}

// normalisePatterns validates a permission list, maps a lone "*" to ">" and
// drops duplicates, keeping the first occurrence's order. It never returns
// nil for a non-nil input, so "no permission" stays distinguishable.
func normalisePatterns(kind string, in []string) ([]string, error) {
	out := make([]string, 0, len(in))
	for _, p := range in {
		p = strings.TrimSpace(p)
		if p == anyAction {
			p = everything
		}
		if err := topics.ValidatePattern(p); err != nil {
			return nil, fmt.Errorf("%w: %s pattern: %w", ErrOptions, kind, err)
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// parseIPv4Bearer returns the CIDR of an "ipv4://a.b.c.d/n" bearer.
func parseIPv4Bearer(b string) (netip.Prefix, error) {
	rest, ok := strings.CutPrefix(b, SchemeIPv4)
	if !ok {
		return netip.Prefix{}, fmt.Errorf("%w: bearer is not %s", ErrOptions, SchemeIPv4)
	}
	p, err := netip.ParsePrefix(rest)
	if err != nil || !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("%w: bearer %q is not an IPv4 CIDR such as ipv4://10.0.0.0/8", ErrOptions, truncate(b))
	}
	return p, nil
}

// ParseList parses a CLI list: a JSON array of strings (`["a","b"]`) or a
// comma-separated list (`a,b`). Items are trimmed; an empty item is an error;
// an empty or blank string yields nil (so the option's default applies),
// while `[]` yields an empty, non-nil list.
func ParseList(s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	var items []string
	if strings.HasPrefix(s, "[") {
		if err := json.Unmarshal([]byte(s), &items); err != nil {
			return nil, fmt.Errorf("auth: list is not a JSON array of strings: %w", err)
		}
		if items == nil {
			items = []string{}
		}
	} else {
		items = strings.Split(s, ",")
	}
	for i, it := range items {
		it = strings.TrimSpace(it)
		if it == "" {
			return nil, fmt.Errorf("auth: list item %d is empty", i+1)
		}
		items[i] = it
	}
	return items, nil
}

// truncate keeps operator-supplied text out of error messages once it is
// long enough to be a pasted token rather than a name.
func truncate(s string) string {
	const limit = 64
	if len(s) <= limit {
		return s
	}
	return fmt.Sprintf("<%d-byte value>", len(s))
}
