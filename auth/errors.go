// Package auth owns Coattail's capability tokens: issuing them, verifying a
// token presented by a remote peer, binding it to its bearer, revoking it, and
// the validation tokens that let an operator name a peer id as a bearer.
//
// A capability token is an EdDSA JWT signed with the instance's libp2p Ed25519
// identity key, so the issuer's peer id is also its verification key. The
// issuer keeps every token it issued in a go-datastore; a token is usable only
// while its record exists, which is what makes revocation immediate.
//
// auth knows nothing of the network: callers describe who presents a token
// with a [Remote] (the peer id proved by the secure channel, the remote IP and
// whether the connection is relayed), and the resulting [Grant] answers
// permission questions with trie lookups, never with cryptography.
//
// Error messages never contain a token, a signature or key material, so they
// are safe to log and to return to the remote peer.
package auth

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors. Every error returned by this package wraps one of them
// (check with errors.Is) and adds a specific, token-free explanation.
var (
	// ErrNotFound: no token record or validation with that id.
	ErrNotFound = errors.New("auth: not found")
	// ErrInvalid: the input is not a well-formed Coattail token.
	ErrInvalid = errors.New("auth: invalid token")
	// ErrExpired: the token's exp (plus leeway) has passed.
	ErrExpired = errors.New("auth: token expired")
	// ErrNotYetValid: the token's nbf (minus leeway) is still in the future.
	ErrNotYetValid = errors.New("auth: token not yet valid")
	// ErrRevoked: the token is correctly signed by this instance but its
	// record is gone (revoked) or does not match.
	ErrRevoked = errors.New("auth: token revoked")
	// ErrWrongIssuer: the token names another issuer than this instance.
	ErrWrongIssuer = errors.New("auth: token issued by another peer")
	// ErrBearer: the presenting remote is not one of the token's bearers.
	ErrBearer = errors.New("auth: remote is not a bearer of this token")
	// ErrClaimed: a claim-on-first-use token already belongs to another peer.
	ErrClaimed = errors.New("auth: token already claimed")
	// ErrTooLarge: the token exceeds MaxTokenSize.
	ErrTooLarge = errors.New("auth: token too large")
	// ErrAlgorithm: the token is not signed with EdDSA.
	ErrAlgorithm = errors.New("auth: signing algorithm not accepted")
	// ErrSignature: the signature does not verify against the issuer's key.
	ErrSignature = errors.New("auth: token signature invalid")
	// ErrTokenType: a validation token used as a capability or vice versa.
	ErrTokenType = errors.New("auth: wrong token type")
	// ErrKey: the identity key cannot sign tokens (not Ed25519).
	ErrKey = errors.New("auth: unsupported identity key")
	// ErrOptions: IssueOptions (permissions, bearers, times) are invalid.
	ErrOptions = errors.New("auth: invalid issue options")
)

// RevokedError is the ErrRevoked of a token this instance signed and is
// known to have revoked (its revocation is recorded): Verify returns it
// only after the token's signature verified, so TokenID names a token of
// this issuer. A token whose record is merely missing or different gets a
// plain ErrRevoked.
type RevokedError struct {
	TokenID string
	At      time.Time // when it was revoked
}

func (e *RevokedError) Error() string {
	return fmt.Sprintf("%v: token %s was revoked at %s", ErrRevoked, e.TokenID, e.At.Format(time.RFC3339))
}

// Unwrap makes errors.Is(err, ErrRevoked) true.
func (e *RevokedError) Unwrap() error { return ErrRevoked }
