package node

import (
	"context"
	"time"

	"github.com/coattail/coattail/auth"
	"github.com/coattail/coattail/node/localapi"
	ma "github.com/multiformats/go-multiaddr"
)

// IssueToken issues a capability token carrying this instance's current
// dialable addresses, so it doubles as a join ticket.
func (n *Node) IssueToken(ctx context.Context, req localapi.IssueRequest) (localapi.Token, error) {
	rec, err := n.auth.Issue(ctx, auth.IssueOptions{
		Perform:   req.Perform,
		Publish:   req.Publish,
		Subscribe: req.Subscribe,
		Bearers:   req.Bearers,
		NotBefore: time.Duration(req.NotBefore),
		ExpiresIn: time.Duration(req.ExpiresIn),
		Addrs:     n.advertisedAddrs(),
		Reusable:  req.Reusable,
	})
	if err != nil {
		return localapi.Token{}, err
	}
	n.log.Info("token issued", "token_id", rec.ID, "perform", rec.Claims.Perform, "publish", rec.Claims.Publish,
		"subscribe", rec.Claims.Subscribe, "bearers", rec.Claims.Bearers)
	return tokenView(rec), nil
}

// PruneTokens deletes the records of tokens that expired more than
// req.ExpiredFor ago (they are refused either way) and lists them. A token
// a subscription held here still names is kept: the subscription ends with
// it when its expiry is handled, and its record says which token it was.
func (n *Node) PruneTokens(ctx context.Context, req localapi.PruneTokensRequest) (localapi.PruneTokensResult, error) {
	if req.ExpiredFor < 0 {
		return localapi.PruneTokensResult{}, badRequest("--expired-for must not be negative")
	}
	inUse := map[string]bool{}
	for _, q := range n.queues.Status() {
		inUse[q.TokenID] = true
	}
	recs, err := n.auth.PruneExpired(ctx, time.Now().Add(-time.Duration(req.ExpiredFor)), func(r auth.Record) bool { return inUse[r.ID] }, req.DryRun)
	out := localapi.PruneTokensResult{Pruned: make([]localapi.Token, 0, len(recs)), DryRun: req.DryRun}
	for _, r := range recs {
		t := tokenView(r)
		t.Token = ""
		out.Pruned = append(out.Pruned, t)
	}
	if len(recs) > 0 && !req.DryRun {
		n.log.Info("expired tokens pruned", "tokens", len(recs))
	}
	return out, err
}

// advertisedAddrs are the addresses put in tokens: the live host's
// addresses when online (including relay addresses), else the configured
// listen and announce addresses that name a concrete host.
func (n *Node) advertisedAddrs() []string {
	var out []string
	seen := map[string]bool{}
	add := func(s string) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	// Canonical forms, so that an announce address spelled differently
	// from the host's own rendering of it is listed once.
	for _, a := range n.cfg.Network.Announce {
		if m, err := ma.NewMultiaddr(a); err == nil {
			add(m.String())
		}
	}
	if n.host != nil {
		for _, a := range n.host.Addrs() {
			add(a.String())
		}
		return out
	}
	for _, s := range n.cfg.Network.Listen {
		m, err := ma.NewMultiaddr(s)
		if err != nil || isUnspecified(m) || zeroPort(m) {
			continue
		}
		add(m.String())
	}
	return out
}

// zeroPort reports whether m asks for any free TCP or UDP port (the real
// one is known only once the host listens).
func zeroPort(m ma.Multiaddr) bool {
	for _, p := range []int{ma.P_TCP, ma.P_UDP} {
		if v, err := m.ValueForProtocol(p); err == nil && v == "0" {
			return true
		}
	}
	return false
}

func isUnspecified(m ma.Multiaddr) bool {
	if v, err := m.ValueForProtocol(ma.P_IP4); err == nil && v == "0.0.0.0" {
		return true
	}
	if v, err := m.ValueForProtocol(ma.P_IP6); err == nil && v == "::" {
		return true
	}
	return false
}

func tokenView(r auth.Record) localapi.Token {
	c := r.Claims
	t := localapi.Token{
		ID:        r.ID,
		Token:     r.Token,
		Issuer:    c.Issuer,
		IssuedAt:  r.IssuedAt,
		Perform:   nonNil(c.Perform),
		Publish:   nonNil(c.Publish),
		Subscribe: nonNil(c.Subscribe),
		Bearers:   nonNil(c.Bearers),
		Addrs:     nonNil(c.Addrs),
		Reusable:  c.Reusable,
		ClaimedBy: r.ClaimedBy,
	}
	if c.NotBefore != nil {
		v := c.NotBefore.Time
		t.NotBefore = &v
	}
	if c.ExpiresAt != nil {
		v := c.ExpiresAt.Time
		t.ExpiresAt = &v
	}
	return t
}

func validationView(v auth.Validation) localapi.Validation {
	return localapi.Validation{ID: v.ID, PeerID: v.PeerID, AddedAt: v.AddedAt, ExpiresAt: v.Expires}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
