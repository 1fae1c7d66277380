package main

import (
	"strings"
	"testing"
)

// token show and token list say that a token is reusable (only token
// decode did), also when it names its bearers; --json has reusable.
func TestTokenShowListReusable(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	anyone := a.tokenID(a.issue("--reusable"))
	cidr := a.tokenID(a.issue("--reusable", "--bearers", "ipv4://10.0.0.0/8"))
	single := a.tokenID(a.issue())

	for id, want := range map[string]string{anyone: "yes", cidr: "yes", single: "no"} {
		out := a.mustRun("token", "show", id)
		if !strings.Contains(out, "Reusable:") || !strings.Contains(out, want+"\n") {
			t.Errorf("token show %s lacks Reusable: %s:\n%s", id, want, out)
		}
		var tok struct {
			Reusable *bool `json:"reusable"`
		}
		a.decodeJSON(a.mustRun("token", "show", "--json", id), &tok)
		if tok.Reusable == nil || *tok.Reusable != (want == "yes") {
			t.Errorf("token show --json %s: reusable %v, want %s", id, tok.Reusable, want)
		}
	}
	rows := map[string]string{}
	for _, l := range strings.Split(a.mustRun("token", "list"), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			rows[f[0]] = l
		}
	}
	if l := rows[anyone]; !strings.HasSuffix(l, "anyone (reusable)") {
		t.Errorf("token list row of a reusable token without bearers: %q", l)
	}
	if l := rows[cidr]; !strings.HasSuffix(l, "ipv4://10.0.0.0/8 (reusable)") {
		t.Errorf("token list row of a reusable token with bearers: %q", l)
	}
	if l := rows[single]; strings.Contains(l, "reusable") {
		t.Errorf("token list row of a single-use token says reusable: %q", l)
	}

	// Revoking twice: the second says it was revoked already, and when.
	a.mustRun("token", "revoke", "--force", single)
	a.mustFail([]string{"token", "revoke", "--force", single}, "token "+single+" was revoked already, at ")
}

// An --expires-in (or --not-before) that is well-formed but longer than a
// duration can be says it is too long and gives the maximum, instead of
// asking for a duration such as 30s.
func TestTokenIssueDurationTooLong(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	for _, tc := range []struct{ flag, val string }{
		{"--expires-in", "99999999w"},
		{"--expires-in", "15251w"},
		{"--not-before", "9999999999999999999999s"},
	} {
		stderr := a.mustFail([]string{"token", "issue", tc.flag, tc.val}, tc.flag+` "`+tc.val+`" is too long: at most 15250w1d23h47m16s`)
		if strings.Contains(stderr, "use a duration such as") {
			t.Errorf("token issue %s %s: %s", tc.flag, tc.val, stderr)
		}
	}
	a.mustFail([]string{"token", "issue", "--expires-in", "1x"}, "use a duration such as 30s")
	a.issue("--expires-in", "15250w1d23h47m16s") // the maximum itself is accepted
}
