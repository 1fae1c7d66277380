package auth

import (
	"context"
	"errors"
	"strings"
	"testing"
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
