package auth

import (
	"context"
	"errors"
	"strings"
	"testing"
)

var sentinels = []error{
	ErrNotFound, ErrInvalid, ErrExpired, ErrNotYetValid, ErrRevoked, ErrWrongIssuer,
	ErrBearer, ErrClaimed, ErrTooLarge, ErrAlgorithm, ErrSignature, ErrTokenType,
}

func wrapsSentinel(err error) bool {
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// seedTokens adds a valid token and mutations of it: each segment dropped,
// swapped, truncated and bit-flipped.
func seedTokens(f *testing.F, raw string) {
	f.Add(raw)
	f.Add("")
	f.Add("..")
	f.Add("e30.e30.")
	p := strings.Split(raw, ".")
	f.Add(p[0] + "." + p[1] + ".")
	f.Add(p[1] + "." + p[0] + "." + p[2])
	f.Add(raw[:len(raw)/2])
	f.Add(raw + ".")
	f.Add(strings.Replace(raw, "e", "f", 1))
	f.Add(p[0] + "." + p[1] + "x." + p[2])
}

func checkErr(t *testing.T, raw string, err error) {
	t.Helper()
	if !wrapsSentinel(err) {
		t.Fatalf("error %q wraps no auth sentinel", err)
	}
	if len(raw) >= 16 && strings.Contains(err.Error(), raw) {
		t.Fatalf("error %q quotes the input", err)
	}
}

func FuzzDecode(f *testing.F) {
	fx := newFixture(f)
	rec := fx.issue(f, IssueOptions{Publish: []string{"a.>"}})
	seedTokens(f, rec.Token)
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := Decode(raw)
		if err != nil {
			checkErr(t, raw, err)
			return
		}
		// Anything that decodes is signed by the key in its iss.
		if _, err := c.IssuerID(); err != nil {
			t.Fatalf("decoded token has bad iss: %v", err)
		}
	})
}

func FuzzVerify(f *testing.F) {
	fx := newFixture(f)
	rec := fx.issue(f, IssueOptions{Reusable: true, Publish: []string{"a.>"}})
	seedTokens(f, rec.Token)
	r := direct(newPeer(f), "127.0.0.1")
	f.Fuzz(func(t *testing.T, raw string) {
		_, err := fx.a.Verify(context.Background(), raw, r)
		if err != nil {
			checkErr(t, raw, err)
			return
		}
		// Strict base64 and canonical Ed25519 signatures leave exactly one
		// accepted encoding: the issued token itself.
		if raw != rec.Token {
			t.Fatalf("accepted a token other than the one issued")
		}
	})
}
