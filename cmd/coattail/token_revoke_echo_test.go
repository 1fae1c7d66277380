package main

import (
	"strings"
	"testing"
)

// token revoke takes a token id in any spelling a uuid has (upper case,
// urn:uuid:, braces) and says the token it revoked by its id as token list
// shows it: it echoed the id as typed.
func TestTokenRevokeSaysCanonicalID(t *testing.T) {
	t.Parallel()
	i := newInstance(t, "i")
	revoke := func(spell func(string) string) {
		t.Helper()
		id := i.tokenID(i.issue("--performable", "x.y"))
		typed := spell(id)
		if out := i.mustRun("token", "revoke", "--force", typed); out != "Revoked token "+id+"\n" {
			t.Errorf("token revoke %s printed %q, want %q", typed, out, "Revoked token "+id+"\n")
		}
		i.mustFail([]string{"token", "show", id}, "was revoked")
	}
	// Offline (no service), then through the service.
	for _, spell := range []func(string) string{
		strings.ToUpper,
		func(id string) string { return "urn:uuid:" + strings.ToUpper(id) },
		func(id string) string { return "{" + id + "}" },
	} {
		revoke(spell)
	}
	i.start()
	revoke(strings.ToUpper)
}
