package auth

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/crypto/pb"
	"github.com/libp2p/go-libp2p/core/peer"
)

// decodeParser checks structure, algorithm and signature but not times:
// Decode is for inspecting tokens, including expired ones.
//
// Strict decoding matters for signatures: without it, base64 padding bits
// are ignored, so a "tampered" last character could still verify.
var decodeParser = jwt.NewParser(
	jwt.WithValidMethods([]string{algEdDSA}),
	jwt.WithStrictDecoding(),
	jwt.WithoutClaimsValidation(),
)

// Decode parses a token without the issuer's store. It checks the size,
// that every byte is base64url or '.' (so a line break is refused),
// that the algorithm is EdDSA, the signature against the Ed25519 public key
// embedded in the iss peer id (so a token whose signature does not match its
// claimed issuer is refused), and that exp, nbf and iat are dates between the
// years 1 and 9999. It does not check nbf/exp against the clock (see
// Claims.CheckTime), the token type, or revocation. Both capability and
// validation tokens decode.
func Decode(raw string) (Claims, error) {
	if err := checkInput(raw); err != nil {
		return Claims{}, err
	}
	var c Claims
	var keyErr error
	tok, err := decodeParser.ParseWithClaims(raw, &c, func(*jwt.Token) (any, error) {
		pub, err := issuerKey(c.Issuer)
		keyErr = err
		return pub, err
	})
	if err != nil {
		return Claims{}, classify(tok, err, keyErr, &c)
	}
	if err := checkDates(&c); err != nil {
		return Claims{}, err
	}
	return c, nil
}

// checkDates refuses exp, nbf and iat outside the years 1 to 9999. They are
// floats of the signer's choosing: beyond int64 seconds golang-jwt's
// conversion depends on the CPU (amd64 turns 1e19 into the distant past,
// arm64 into the distant future), and beyond year 9999 a time cannot be
// stored as JSON, so such a token would pass the time checks and then fail
// to be recorded with an encoder error.
func checkDates(c *Claims) error {
	for _, d := range []struct {
		name string
		v    *jwt.NumericDate
	}{{"exp", c.ExpiresAt}, {"nbf", c.NotBefore}, {"iat", c.IssuedAt}} {
		if d.v == nil {
			continue
		}
		if y := d.v.UTC().Year(); y < 1 || y > 9999 {
			return fmt.Errorf("%w: %s is not a time between the years 1 and 9999", ErrInvalid, d.name)
		}
	}
	return nil
}

func checkSize(raw string) error {
	if len(raw) > MaxTokenSize {
		return fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(raw), MaxTokenSize)
	}
	return nil
}

// checkInput is checkSize plus the alphabet: a compact JWS is base64url
// segments joined by '.', nothing else. Go's base64 decoders skip '\r' and
// '\n' even in strict mode, and the signature covers only header.payload,
// so without this a line break in or after the signature segment would
// still verify: one token would have many spellings, and Verify would blame
// the issuer's record ("revoked") for what is a pasting mistake.
func checkInput(raw string) error {
	if err := checkSize(raw); err != nil {
		return err
	}
	for i := 0; i < len(raw); i++ {
		if c := raw[i]; !isTokenByte(c) {
			what := fmt.Sprintf("byte 0x%02x", c)
			if c > ' ' && c < 0x7f {
				what = fmt.Sprintf("%q", c)
			}
			return fmt.Errorf("%w: not a well-formed JWT: %s at offset %d is not base64url or '.' (a line break or space copied with the token?)", ErrInvalid, what, i)
		}
	}
	return nil
}

func isTokenByte(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
}

// issuerKey recovers the Ed25519 verification key from an issuer peer id.
// Only identity-multihash ids embed their key, which Ed25519 ids always do.
func issuerKey(iss string) (ed25519.PublicKey, error) {
	if iss == "" {
		return nil, fmt.Errorf("%w: token has no iss", ErrInvalid)
	}
	id, err := peer.Decode(iss)
	if err != nil {
		return nil, fmt.Errorf("%w: iss is not a peer id", ErrInvalid)
	}
	pk, err := id.ExtractPublicKey()
	if err != nil {
		return nil, fmt.Errorf("%w: iss peer id %s does not embed a public key", ErrInvalid, truncate(id.String()))
	}
	return ed25519Public(pk)
}

func ed25519Public(pk crypto.PubKey) (ed25519.PublicKey, error) {
	if pk.Type() != pb.KeyType_Ed25519 {
		return nil, fmt.Errorf("%w: issuer key is %s, not Ed25519", ErrAlgorithm, pk.Type())
	}
	b, err := pk.Raw()
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: issuer Ed25519 key is malformed", ErrInvalid)
	}
	return ed25519.PublicKey(b), nil
}

// classify maps golang-jwt's errors onto this package's sentinels with our
// own messages: jwt's messages can quote attacker-controlled header fields
// and JSON decoder context, which must not reach logs or remote peers.
func classify(tok *jwt.Token, err, keyErr error, c *Claims) error {
	if keyErr != nil {
		return keyErr
	}
	if tok != nil && tok.Header != nil {
		alg, _ := tok.Header["alg"].(string)
		if alg != algEdDSA {
			return fmt.Errorf("%w: alg %q; only EdDSA tokens are accepted", ErrAlgorithm, truncate(alg))
		}
	}
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return fmt.Errorf("%w: not a well-formed JWT (header.payload.signature, base64url JSON)", ErrInvalid)
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return fmt.Errorf("%w: signature does not verify against the issuer's Ed25519 key", ErrSignature)
	case errors.Is(err, jwt.ErrTokenExpired) && c.ExpiresAt != nil:
		return fmt.Errorf("%w: expired at %s", ErrExpired, c.ExpiresAt.UTC().Format(time.RFC3339))
	case errors.Is(err, jwt.ErrTokenNotValidYet) && c.NotBefore != nil:
		return fmt.Errorf("%w: valid from %s", ErrNotYetValid, c.NotBefore.UTC().Format(time.RFC3339))
	default:
		return fmt.Errorf("%w: token could not be verified", ErrInvalid)
	}
}
