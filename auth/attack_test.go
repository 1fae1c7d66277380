package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// forge signs claims with an arbitrary method and key, the way an attacker
// holding a captured token would.
func forge(t *testing.T, method jwt.SigningMethod, c Claims, key any) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, c).SignedString(key)
	if err != nil {
		t.Fatalf("forge %s: %v", method.Alg(), err)
	}
	return s
}

func segments(t *testing.T, raw string) []string {
	t.Helper()
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d segments", len(parts))
	}
	return parts
}

func TestVerifyRejects(t *testing.T) {
	ctx := context.Background()
	bob, carol := newPeer(t), newPeer(t)

	type attempt struct {
		raw string
		r   Remote
	}
	cases := []struct {
		name  string
		setup func(t *testing.T, f *fixture) attempt
		want  error
		frag  string
	}{
		{
			name: "tampered payload",
			setup: func(t *testing.T, f *fixture) attempt {
				rec := f.issue(t, IssueOptions{Reusable: true})
				p := segments(t, rec.Token)
				c := rec.Claims
				c.Perform = []string{">"} // escalate
				body, err := json.Marshal(c)
				if err != nil {
					t.Fatal(err)
				}
				p[1] = base64.RawURLEncoding.EncodeToString(body)
				return attempt{strings.Join(p, "."), direct(bob, "")}
			},
			want: ErrSignature, frag: "does not verify",
		},
		{
			name: "tampered signature",
			setup: func(t *testing.T, f *fixture) attempt {
				rec := f.issue(t, IssueOptions{Reusable: true})
				p := segments(t, rec.Token)
				sig := []byte(p[2])
				// A middle character: every bit of it is significant.
				if sig[20] == 'A' {
					sig[20] = 'B'
				} else {
					sig[20] = 'A'
				}
				p[2] = string(sig)
				return attempt{strings.Join(p, "."), direct(bob, "")}
			},
			want: ErrSignature, frag: "does not verify",
		},
		{
			name: "alg none",
			setup: func(t *testing.T, f *fixture) attempt {
				rec := f.issue(t, IssueOptions{Reusable: true})
				return attempt{forge(t, jwt.SigningMethodNone, rec.Claims, jwt.UnsafeAllowNoneSignatureType), direct(bob, "")}
			},
			want: ErrAlgorithm, frag: `"none"`,
		},
		{
			name: "HS256 keyed with the issuer's public key",
			setup: func(t *testing.T, f *fixture) attempt {
				rec := f.issue(t, IssueOptions{Reusable: true})
				c := rec.Claims
				c.Perform = []string{">"}
				pub, err := f.key.GetPublic().Raw()
				if err != nil {
					t.Fatal(err)
				}
				return attempt{forge(t, jwt.SigningMethodHS256, c, pub), direct(bob, "")}
			},
			want: ErrAlgorithm, frag: `"HS256"`,
		},
		{
			name: "RS256",
			setup: func(t *testing.T, f *fixture) attempt {
				rec := f.issue(t, IssueOptions{Reusable: true})
				k, err := rsa.GenerateKey(rand.Reader, 2048)
				if err != nil {
					t.Fatal(err)
				}
				return attempt{forge(t, jwt.SigningMethodRS256, rec.Claims, k), direct(bob, "")}
			},
			want: ErrAlgorithm, frag: `"RS256"`,
		},
		{
			name: "ES256",
			setup: func(t *testing.T, f *fixture) attempt {
				rec := f.issue(t, IssueOptions{Reusable: true})
				k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				if err != nil {
					t.Fatal(err)
				}
				return attempt{forge(t, jwt.SigningMethodES256, rec.Claims, k), direct(bob, "")}
			},
			want: ErrAlgorithm, frag: `"ES256"`,
		},
		{
			name: "token from another issuer",
			setup: func(t *testing.T, f *fixture) attempt {
				other := newFixture(t)
				rec := other.issue(t, IssueOptions{Reusable: true})
				return attempt{rec.Token, direct(bob, "")}
			},
			want: ErrWrongIssuer, frag: "issued by",
		},
		{
			name: "our iss signed with another key",
			setup: func(t *testing.T, f *fixture) attempt {
				rec := f.issue(t, IssueOptions{Reusable: true})
				raw, err := newKey(t).Raw()
				if err != nil {
					t.Fatal(err)
				}
				return attempt{forge(t, jwt.SigningMethodEdDSA, rec.Claims, ed25519Priv(raw)), direct(bob, "")}
			},
			want: ErrSignature, frag: "does not verify",
		},
		{
			name: "expired",
			setup: func(t *testing.T, f *fixture) attempt {
				rec := f.issue(t, IssueOptions{Reusable: true, ExpiresIn: time.Minute})
				f.advance(2 * time.Minute)
				return attempt{rec.Token, direct(bob, "")}
			},
			want: ErrExpired, frag: "expired at",
		},
		{
			name: "not yet valid",
			setup: func(t *testing.T, f *fixture) attempt {
				rec := f.issue(t, IssueOptions{Reusable: true, NotBefore: time.Hour})
				return attempt{rec.Token, direct(bob, "")}
			},
			want: ErrNotYetValid, frag: "valid from",
		},
		{
			name: "revoked",
			setup: func(t *testing.T, f *fixture) attempt {
				rec := f.issue(t, IssueOptions{Reusable: true})
				if err := f.a.Revoke(ctx, rec.ID); err != nil {
					t.Fatal(err)
				}
				return attempt{rec.Token, direct(bob, "")}
			},
			want: ErrRevoked, frag: "was revoked at ",
		},
		{
			name: "signed by our key but not the issued record",
			setup: func(t *testing.T, f *fixture) attempt {
				rec := f.issue(t, IssueOptions{Reusable: true})
				c := rec.Claims
				c.Perform = []string{">"}
				raw, err := f.a.sign(c)
				if err != nil {
					t.Fatal(err)
				}
				return attempt{raw, direct(bob, "")}
			},
			want: ErrRevoked, frag: "does not match the issued record",
		},
		{
			name: "wrong bearer peer",
			setup: func(t *testing.T, f *fixture) attempt {
				rec := f.issue(t, IssueOptions{Bearers: []string{SchemeVT + bob.String()}})
				return attempt{rec.Token, direct(carol, "")}
			},
			want: ErrBearer, frag: carol.String(),
		},
		{
			name: "already claimed by another peer",
			setup: func(t *testing.T, f *fixture) attempt {
				rec := f.issue(t, IssueOptions{})
				if _, err := f.a.Verify(ctx, rec.Token, direct(bob, "")); err != nil {
					t.Fatalf("first use: %v", err)
				}
				return attempt{rec.Token, direct(carol, "")}
			},
			want: ErrClaimed, frag: "first used it",
		},
		{
			name: "ipv4 outside the CIDR",
			setup: func(t *testing.T, f *fixture) attempt {
				rec := f.issue(t, IssueOptions{Bearers: []string{"ipv4://10.0.0.0/8"}})
				return attempt{rec.Token, direct(bob, "192.168.1.7")}
			},
			want: ErrBearer, frag: "from 192.168.1.7",
		},
		{
			name: "ipv4 bearer over a relayed connection",
			setup: func(t *testing.T, f *fixture) attempt {
				rec := f.issue(t, IssueOptions{Bearers: []string{"ipv4://10.0.0.0/8"}})
				r := direct(bob, "10.1.2.3")
				r.Relayed = true
				return attempt{rec.Token, r}
			},
			want: ErrBearer, frag: "relayed",
		},
		{
			name: "oversized",
			setup: func(t *testing.T, f *fixture) attempt {
				rec := f.issue(t, IssueOptions{Reusable: true})
				return attempt{rec.Token + strings.Repeat("A", MaxTokenSize), direct(bob, "")}
			},
			want: ErrTooLarge, frag: "limit is 16384",
		},
		{
			name: "non-JWT garbage",
			setup: func(t *testing.T, f *fixture) attempt {
				return attempt{"this is certainly not a json web token", direct(bob, "")}
			},
			want: ErrInvalid, frag: "not a well-formed JWT",
		},
		{
			name: "validation token used as capability",
			setup: func(t *testing.T, f *fixture) attempt {
				vt, err := f.a.IssueValidation(IssueOptions{})
				if err != nil {
					t.Fatal(err)
				}
				return attempt{vt, direct(bob, "")}
			},
			want: ErrTokenType, frag: TypeValidation,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			at := tc.setup(t, f)
			g, err := f.a.Verify(ctx, at.raw, at.r)
			if err == nil {
				t.Fatalf("Verify accepted the token: grant %+v", g)
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %q does not wrap %q", err, tc.want)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.frag) {
				t.Errorf("error %q lacks %q", msg, tc.frag)
			}
			if strings.Contains(msg, at.raw) {
				t.Errorf("error contains the raw token")
			}
			if p := strings.Split(at.raw, "."); len(p) == 3 && len(p[2]) > 8 && strings.Contains(msg, p[2]) {
				t.Errorf("error contains the signature")
			}
		})
	}
}
