package auth

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Validation is a stored validation token: proof that the holder of PeerID's
// key vouched for itself, which lets an operator name that peer as a bearer
// ("vt://<validation id>") without copying its peer id around.
type Validation struct {
	ID      string     `json:"id"`
	PeerID  string     `json:"peer_id"`
	Token   string     `json:"token"`
	AddedAt time.Time  `json:"added_at"`
	Expires *time.Time `json:"expires,omitempty"`
}

// IssueValidation returns a validation token for this instance: a JWT with
// typ coattail/vt, self-signed, with iss = sub = this peer id. Only
// o.NotBefore and o.ExpiresIn are used. It is not stored; it is handed to
// another operator out of band.
func (a *Authority) IssueValidation(o IssueOptions) (string, error) {
	if err := o.checkTimes(); err != nil {
		return "", err
	}
	now := a.now().UTC().Truncate(time.Second)
	c := Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    a.id.String(),
			Subject:   a.id.String(),
			ID:        uuid.NewString(),
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now.Add(o.NotBefore)),
		},
		Type: TypeValidation,
	}
	if o.ExpiresIn > 0 {
		c.ExpiresAt = expiresAt(now, o.ExpiresIn)
	}
	return a.sign(c)
}

// AddValidation checks a validation token received from another peer (its
// self-signature against the key embedded in iss, its type and its validity
// period) and stores it under a new id. Adding the same token again, also
// concurrently, returns the existing record.
func (a *Authority) AddValidation(ctx context.Context, raw string) (Validation, error) {
	raw = strings.TrimSpace(raw)
	c, err := Decode(raw)
	if err != nil {
		return Validation{}, err
	}
	if c.Type != TypeValidation {
		return Validation{}, fmt.Errorf("%w: typ %q is not %s", ErrTokenType, truncate(c.Type), TypeValidation)
	}
	// Compared as peer ids, not as text: one id has several spellings
	// (base58 multihash, CIDv1 in any multibase), all naming the same key.
	id, err := c.IssuerID()
	if err != nil {
		return Validation{}, err
	}
	if sub, err := peer.Decode(c.Subject); err != nil || sub != id {
		return Validation{}, fmt.Errorf("%w: a validation token's sub must be the peer id in its iss", ErrInvalid)
	}
	if err := c.CheckTime(a.now()); err != nil {
		return Validation{}, err
	}
	// Concurrent adds of one token share one look-up-and-store: each on its
	// own could miss the other's record and store the token twice. The key
	// is the token itself, not its jti, which any signer can reuse. The
	// shared call does not stop when one of its callers gives up.
	shared, err, _ := a.addingVT.Do(raw, func() (any, error) {
		return a.addValidation(context.WithoutCancel(ctx), raw, c, id)
	})
	if err != nil {
		return Validation{}, err
	}
	return shared.(Validation), nil
}

// addValidation stores the checked validation token raw of peer id unless
// it is stored already. AddValidation runs one at a time per token.
func (a *Authority) addValidation(ctx context.Context, raw string, c Claims, id peer.ID) (Validation, error) {
	existing, err := a.Validations(ctx)
	if err != nil {
		return Validation{}, err
	}
	if i := slices.IndexFunc(existing, func(v Validation) bool { return v.Token == raw }); i >= 0 {
		return existing[i], nil
	}
	v := Validation{
		ID:      uuid.NewString(),
		PeerID:  id.String(),
		Token:   raw,
		AddedAt: a.now().UTC(),
	}
	if c.ExpiresAt != nil {
		exp := c.ExpiresAt.UTC()
		v.Expires = &exp
	}
	a.setPending(v.ID, true)
	defer a.setPending(v.ID, false)
	if err := a.putJSON(ctx, validationsPrefix, v.ID, v); err != nil {
		return Validation{}, a.undoPut(ctx, validationsPrefix, v.ID, err)
	}
	return v, nil
}

// Validation returns a stored validation by id.
func (a *Authority) Validation(ctx context.Context, id string) (Validation, error) {
	var v Validation
	if err := a.getJSON(ctx, validationsPrefix, id, &v); err != nil {
		return Validation{}, err
	}
	if a.isPending(v.ID) {
		return Validation{}, fmt.Errorf("%w: no validation with id %s", ErrNotFound, v.ID)
	}
	return v, nil
}

// Validations returns every stored validation, oldest first. Validations
// that AddValidation has not yet returned are left out.
func (a *Authority) Validations(ctx context.Context) ([]Validation, error) {
	vs, err := listJSON[Validation](ctx, a.store, validationsPrefix)
	if err != nil {
		return nil, err
	}
	vs = slices.DeleteFunc(vs, func(v Validation) bool { return a.isPending(v.ID) })
	slices.SortFunc(vs, func(x, y Validation) int {
		if c := x.AddedAt.Compare(y.AddedAt); c != 0 {
			return c
		}
		return strings.Compare(x.ID, y.ID)
	})
	return vs, nil
}

// RemoveValidation deletes a stored validation. Tokens already issued to
// "vt://<its id>" keep working: the bearer was resolved to the peer id at
// issue time, and revoking those tokens is what withdraws access.
func (a *Authority) RemoveValidation(ctx context.Context, id string) error {
	k, err := recordKey(validationsPrefix, id)
	if err != nil {
		return err
	}
	ok, err := a.store.Has(ctx, k)
	if err != nil {
		return fmt.Errorf("auth: read validation %s: %w", k.BaseNamespace(), err)
	}
	if !ok {
		return fmt.Errorf("%w: no validation with id %s", ErrNotFound, k.BaseNamespace())
	}
	return a.deleteKey(ctx, validationsPrefix, k.BaseNamespace())
}
