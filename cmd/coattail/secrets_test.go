package main

// Secrets stay secret: a full flow (tokens, peering, remote perform,
// subscription, publication, validation, revocation, and failing attempts
// with bad tokens) must leave no token, signature or identity key material
// in any service log or command output, except where printing a token is
// the command's purpose. Key files are private and refused when not.

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
)

// transcript records every command's output for the secrets check.
type transcript struct {
	t       *testing.T
	outputs []recorded
}

type recorded struct {
	what string
	text string
	// printsToken: the command exists to print a raw token (token issue
	// --print-raw-token, validation issue); its stdout is exempt.
	printsToken bool
}

// run runs a command on i, records its output and returns it with the exit
// code.
func (tr *transcript) run(i *instance, printsToken bool, args ...string) (string, string, int) {
	tr.t.Helper()
	stdout, stderr, code := i.run(args...)
	what := i.name + ": coattail " + strings.Join(args, " ")
	tr.outputs = append(tr.outputs, recorded{what + " (stdout)", stdout, printsToken}, recorded{what + " (stderr)", stderr, false})
	return stdout, stderr, code
}

func (tr *transcript) ok(i *instance, args ...string) string {
	tr.t.Helper()
	stdout, stderr, code := tr.run(i, false, args...)
	if code != 0 {
		tr.t.Fatalf("%s: coattail %s: exit %d: %s", i.name, strings.Join(args, " "), code, stderr)
	}
	return stdout
}

func (tr *transcript) fail(i *instance, want string, args ...string) {
	tr.t.Helper()
	stdout, stderr, code := tr.run(i, false, args...)
	if code == 0 || !strings.Contains(stderr, want) {
		tr.t.Fatalf("%s: coattail %s: exit %d, stderr %q; want a failure mentioning %q (stdout %q)", i.name, strings.Join(args, " "), code, stderr, want, stdout)
	}
}

// token issues a raw token; its stdout is allowed to hold it.
func (tr *transcript) token(i *instance, args ...string) string {
	tr.t.Helper()
	stdout, stderr, code := tr.run(i, true, append([]string{"token", "issue", "--print-raw-token", "--quiet"}, args...)...)
	tok := strings.TrimSpace(stdout)
	if code != 0 || strings.Count(tok, ".") != 2 {
		tr.t.Fatalf("%s: token issue: exit %d, stdout %q, stderr %q", i.name, code, stdout, stderr)
	}
	return tok
}

// keyForms returns the encodings in which identity key material of the
// instance could show up: the private seed as raw bytes, hex and base64
// (standard and URL alphabets, at each of the three byte alignments it
// could have inside a larger encoded blob).
func keyForms(t *testing.T, i *instance) map[string][]byte {
	t.Helper()
	k, err := node.LoadKey(i.path("keys", "identity.key"))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := k.Raw()
	if err != nil {
		t.Fatal(err)
	}
	seed := raw[:32] // the rest of Raw is the public key, which peer ids embed
	forms := map[string][]byte{
		"raw seed": seed,
		"hex seed": []byte(hex.EncodeToString(seed)),
		"HEX seed": []byte(strings.ToUpper(hex.EncodeToString(seed))),
	}
	file, err := os.ReadFile(i.path("keys", "identity.key"))
	if err != nil {
		t.Fatal(err)
	}
	forms["hex identity.key"] = []byte(hex.EncodeToString(file))
	for off := range 3 {
		for name, enc := range map[string]*base64.Encoding{"base64": base64.StdEncoding, "base64url": base64.URLEncoding} {
			s := enc.EncodeToString(seed[off:])
			// The last characters depend on the bytes that follow.
			forms[fmt.Sprintf("%s seed at offset %d", name, off)] = []byte(strings.TrimRight(s, "=")[:len(strings.TrimRight(s, "="))-3])
		}
	}
	return forms
}

func TestNoSecretsInLogsOrOutput(t *testing.T) {
	t.Parallel()
	a, b, c := newInstance(t, "a"), newInstance(t, "b"), newInstance(t, "c")
	a.writeScript("actions", "orders.created", "echo 'creating' >&2\nexec cat\n")
	b.writeScript("receivers", "orders.log", `input=$(cat)
printf '%s %s\n' "$COATTAIL_SEQUENCE" "$input" >> "$COATTAIL_INSTANCE/received.txt"
echo "received $COATTAIL_SEQUENCE" >&2
`)
	// Debug level: whatever the operator turns on must be safe too.
	for _, i := range []*instance{a, b, c} {
		i.setConfig("level", "debug")
		i.start()
	}
	tr := &transcript{t: t}
	aID := a.peerID()

	tok := tr.token(a, "--performable", "orders.created", "--subscribable", "orders.>", "--publishable", "orders.created")
	tr.ok(b, "peer", "add", "--token", tok)
	tr.ok(b, "action", "list", "--peer", aID)
	if out := tr.ok(b, "action", "perform", "--peer", aID, "--action", "orders.created", "--data", `{"id":1}`); !strings.Contains(out, `"id":1`) {
		t.Fatalf("remote perform printed %q", out)
	}
	tr.ok(b, "action", "subscribe", "--peer", aID, "--action", "orders.>", "--receiver", "orders.log")
	tr.ok(a, "action", "perform", "--action", "orders.created", "--data", `{"id":2}`, "--notify")
	tr.ok(b, "action", "publish", "--peer", aID, "--action", "orders.created", "--data", `{"id":3}`)
	checkFor(t, time.Minute, func() error {
		got, _ := os.ReadFile(b.path("received.txt"))
		if strings.Count(string(got), "\n") < 2 {
			return fmt.Errorf("receiver output so far: %q", got)
		}
		return nil
	})
	for _, args := range [][]string{
		{"token", "list", "--json"}, {"token", "list"}, {"token", "show", a.tokenID(tok), "--json"},
		{"subscribers", "list", "--json"}, {"service", "status", "--json"},
	} {
		tr.ok(a, args...)
	}
	for _, args := range [][]string{
		{"peer", "list", "--json"}, {"peer", "show", "--id", aID, "--json"}, {"peer", "show", "--id", aID},
		{"subscriptions", "list", "--json"}, {"token", "decode", tok},
	} {
		tr.ok(b, args...)
	}

	// Validation: b proves its key to a, a binds a token to it.
	vtOut, stderr, code := tr.run(b, true, "validation", "issue", "--print-raw-token", "--quiet")
	vt := strings.TrimSpace(vtOut)
	if code != 0 || strings.Count(vt, ".") != 2 {
		t.Fatalf("validation issue: exit %d, %q, %s", code, vtOut, stderr)
	}
	vid := strings.TrimSpace(tr.ok(a, "validation", "add", vt))
	tr.ok(a, "validation", "list", "--json")
	tr.ok(a, "validation", "show", vid)
	bound := tr.token(a, "--performable", "orders.created", "--bearers", "vt://"+vid)

	// Failing attempts, each with a token in hand.
	parts := strings.Split(tok, ".")
	sig := []byte(parts[2])
	// Another base64url character: still well-formed, no longer the
	// signature. (Flipping a bit could make one that is not base64url,
	// 'A' -> '@', which is refused before the signature is checked.)
	if sig[10] == 'A' {
		sig[10] = 'B'
	} else {
		sig[10] = 'A'
	}
	tampered := parts[0] + "." + parts[1] + "." + string(sig)
	forged := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"iss":"`+aID+`","perform":[">"]}`)) + "." + parts[2]
	tr.fail(c, "claimed", "peer", "add", "--token", tok)
	tr.fail(c, "bearer", "peer", "add", "--token", bound)
	tr.fail(c, "signature", "peer", "add", "--token", tampered)
	tr.fail(c, "", "peer", "add", "--token", forged)
	tr.fail(c, "", "token", "decode", tampered)
	tr.fail(a, "", "validation", "add", tok) // a capability token is not a validation
	tr.fail(c, "", "peer", "add", "--token", vt)

	// Revocation: the open subscription and the next request end.
	tr.ok(a, "token", "revoke", "--force", a.tokenID(tok))
	tr.fail(b, "revoked", "action", "perform", "--peer", aID, "--action", "orders.created", "--data", "1")
	tr.ok(a, "validation", "remove", vid)
	for _, i := range []*instance{a, b, c} {
		tr.ok(i, "service", "stop")
	}

	secrets := map[string][]byte{}
	for n, s := range map[string]string{"capability token": tok, "bound token": bound, "validation token": vt, "tampered token": tampered, "forged token": forged} {
		secrets[n] = []byte(s)
		secrets[n+" signature"] = []byte(s[strings.LastIndexByte(s, '.')+1:])
	}
	for _, i := range []*instance{a, b, c} {
		for form, v := range keyForms(t, i) {
			secrets[i.name+" identity key, "+form] = v
		}
	}
	check := func(where string, text []byte) {
		for name, s := range secrets {
			if len(s) > 0 && bytes.Contains(text, s) {
				t.Errorf("%s contains the %s", where, name)
			}
		}
	}
	for _, o := range tr.outputs {
		text := o.text
		if o.printsToken {
			// The one token it printed is its purpose; nothing else.
			text = strings.Replace(text, strings.TrimSpace(text), "", 1)
		}
		check(o.what, []byte(text))
	}
	logged := 0
	for _, i := range []*instance{a, b, c} {
		logs, err := filepath.Glob(i.path("*.log"))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range logs {
			text, err := os.ReadFile(l)
			if err != nil {
				t.Fatal(err)
			}
			logged += len(text)
			check(l, text)
		}
	}
	if logged == 0 {
		t.Fatal("no service log was written: nothing was checked")
	}
}

// TestKeyFilePermissions checks that a new instance's key is owner-only,
// and that every command that loads it refuses it once it is readable by
// others, naming the fix.
func TestKeyFilePermissions(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	key := a.path("keys", "identity.key")
	st, err := os.Stat(key)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("new identity key has mode %04o, want 0600", st.Mode().Perm())
	}
	if dst, err := os.Stat(a.path("keys")); err != nil || dst.Mode().Perm()&0o077 != 0 {
		t.Fatalf("keys directory: %v, mode %04o, want owner-only", err, dst.Mode().Perm())
	}
	// The datastore keeps issued tokens: owner-only too, also when an older
	// instance created it readable (opening it restricts it).
	if dst, err := os.Stat(a.path("data")); err != nil || dst.Mode().Perm()&0o077 != 0 {
		t.Fatalf("data directory: %v, mode %04o, want owner-only", err, dst.Mode().Perm())
	}
	if err := os.Chmod(a.path("data"), 0o755); err != nil {
		t.Fatal(err)
	}
	a.mustRun("token", "list")
	if dst, err := os.Stat(a.path("data")); err != nil || dst.Mode().Perm()&0o077 != 0 {
		t.Fatalf("data directory after opening a 0755 one: %v, mode %04o, want owner-only", err, dst.Mode().Perm())
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660} {
		if err := os.Chmod(key, mode); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("%04o", mode)
		a.mustFail([]string{"service", "start", "--headless"}, "chmod 600", want)
		a.mustFail([]string{"token", "issue", "--print-raw-token"}, "chmod 600")
		a.mustFail([]string{"token", "issuer"}, "chmod 600")
	}
	if err := os.Chmod(key, 0o600); err != nil {
		t.Fatal(err)
	}
	a.start()
	if out := a.mustRun("token", "issuer"); strings.TrimSpace(out) == "" {
		t.Fatal("token issuer printed nothing with the key restored to 0600")
	}
}
