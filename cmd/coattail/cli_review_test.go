package main

// Bad input a user (or a script with an unset variable) can give the CLI:
// each must fail with a clear message on stderr, a non-zero exit and
// nothing on stdout.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// An empty id, as `coattail token show "$ID"` with ID unset gives, is
// refused by the CLI with a message naming what is missing; it used to
// reach the control API as a path without an id and come back as "no
// route GET /v1/tokens/". An empty --peer, --to or --receiver is refused
// too: it used to mean "none given", so `--peer "$PEER"` ran the action
// here instead of on the peer, `--to "$IDS"` notified every subscriber
// and `unsubscribe --receiver "$R"` ended the subscriptions of every
// receiver.
func TestEmptyArgumentsAreRefused(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	a.writeScript("actions", "echo", "cat\n")
	a.writeScript("receivers", "log", "cat >/dev/null\n")
	const pid = "12D3KooWPXuFEH7Bb9kpKaXrAd8qeRTfLyDof9EKyvSdcAu7EZ5o"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"token", "show", ""}, "token id"},
		{[]string{"token", "show", "  "}, "token id"},
		{[]string{"token", "revoke", "", "--force"}, "token id"},
		{[]string{"validation", "show", ""}, "validation id"},
		{[]string{"validation", "remove", ""}, "validation id"},
		{[]string{"subscribers", "revoke", ""}, "subscription id"},
		{[]string{"deadletters", "replay", ""}, "dead letter id"},
		{[]string{"deadletters", "drop", ""}, "dead letter id"},
		{[]string{"peer", "show", "--id", ""}, "--id"},
		{[]string{"peer", "remove", "--id", ""}, "--id"},
		{[]string{"action", "perform", "--action", "echo", "--peer", ""}, "--peer"},
		{[]string{"action", "perform", "--action", "echo", "--notify", "--to", ""}, "--to"},
		{[]string{"action", "perform", "--action", "echo", "--notify", "--to", pid + ","}, "--to"},
		{[]string{"action", "publish", "--action", "echo", "--peer", ""}, "--peer"},
		{[]string{"action", "publish", "--action", "echo", "--to", ""}, "--to"},
		{[]string{"action", "list", "--peer", ""}, "--peer"},
		{[]string{"action", "subscribe", "--peer", "", "--action", "x", "--receiver", "log"}, "--peer"},
		{[]string{"action", "subscribe", "--peer", pid, "--action", "x", "--receiver", ""}, "--receiver"},
		{[]string{"action", "unsubscribe", "--peer", "", "--action", "x"}, "--peer"},
		{[]string{"action", "unsubscribe", "--peer", pid, "--action", "x", "--receiver", ""}, "--receiver"},
		{[]string{"new", ""}, "directory"},
	} {
		stderr := a.mustFail(tc.args, "must not be empty", tc.want)
		if strings.Contains(stderr, "no route") {
			t.Errorf("coattail %q: %s", tc.args, stderr)
		}
	}
}

// --json output writes subjects and patterns as they are: "orders.>", not
// "orders.\u003e" (encoding/json escapes <, > and & for HTML by default,
// which made `grep 'orders.>'` on the output miss). The output stays
// JSON that decodes to the same values.
func TestJSONOutputDoesNotEscapeHTML(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	out := a.mustRun("token", "issue", "--json", "--subscribable", "orders.>,x.*")
	var tok struct {
		Token     string   `json:"token"`
		Subscribe []string `json:"subscribe"`
	}
	a.decodeJSON(out, &tok)
	if len(tok.Subscribe) != 2 || tok.Subscribe[0] != "orders.>" {
		t.Fatalf("token issue --json: subscribe %q", tok.Subscribe)
	}
	for name, s := range map[string]string{
		"token issue --json":  out,
		"token list --json":   a.mustRun("token", "list", "--json"),
		"token decode --json": a.mustRun("token", "decode", "--json", tok.Token),
	} {
		if strings.Contains(s, `\u003e`) || !strings.Contains(s, `"orders.>"`) {
			t.Errorf("%s writes the pattern escaped:\n%s", name, s)
		}
	}
}

// Text that comes from elsewhere (an action's or receiver's stderr, which
// a peer controls for a remote perform; a peer's error message; a decoded
// token's claims) reaches the user's terminal with its control characters
// shown escaped, never as raw escape sequences that could clear the
// screen, retitle the window or write the clipboard (OSC 52).
func TestUntrustedTextIsEscapedOnTheTerminal(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	a.writeScript("actions", "evil", `printf 'log \033]0;pwned\007 \033[31mred\033[0m\tok\n' >&2
printf '\033[2J' >&2
echo null
`)
	a.writeScript("actions", "evilfail", `printf 'boom \033[31mred\033[0m\n' >&2; exit 1
`)
	stdout, stderr, code := a.run("action", "perform", "--action", "evil")
	if code != 0 || strings.TrimSpace(stdout) != "null" {
		t.Fatalf("perform evil: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if strings.ContainsAny(stderr, "\x1b\x07") {
		t.Errorf("perform printed raw control characters from the action's log: %q", stderr)
	}
	if !strings.Contains(stderr, `[evil] log \x1b]0;pwned\x07 \x1b[31mred\x1b[0m`+"\tok\n") {
		t.Errorf("perform's log lines do not show the escapes: %q", stderr)
	}
	stderr = a.mustFail([]string{"action", "perform", "--action", "evilfail", "-q"}, `boom \x1b[31mred`)
	if strings.Contains(stderr, "\x1b") {
		t.Errorf("a failed perform printed raw control characters: %q", stderr)
	}
}

func TestTableAndKVEscapeControlCharacters(t *testing.T) {
	var b strings.Builder
	if err := table(&b, []string{"A", "B"}, [][]string{{"x\x1b[2J", "line1\nline2\tcol"}}); err != nil {
		t.Fatal(err)
	}
	if err := kv(&b, "Key", "v\x1b]52;c;aGk=\x07\nnext"); err != nil {
		t.Fatal(err)
	}
	got := b.String()
	if strings.ContainsAny(got, "\x1b\x07") {
		t.Errorf("raw control characters in %q", got)
	}
	for _, want := range []string{`x\x1b[2J`, "line1 line2 col", `v\x1b]52;c;aGk=\x07 next`} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if n := strings.Count(got, "\n"); n != 3 {
		t.Errorf("%d lines, want 3 (a cell's newline must not start a row):\n%s", n, got)
	}
}

// openPTY returns a pseudo-terminal pair, or skips the test where there is
// none.
func openPTY(t *testing.T) (master, tty *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Skipf("unlocking the pseudo-terminal: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Skipf("pseudo-terminal number: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("opening the pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

// token revoke asks on a terminal, and asks on stderr: the question is not
// a result, so a cancelled revoke leaves stdout empty (it printed the
// prompt there and then failed) and a confirmed one prints only its result.
func TestTokenRevokePromptsOnStderr(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	id := a.tokenID(a.issue())
	revoke := func(answer string) (stdout, stderr string, code int) {
		t.Helper()
		master, tty := openPTY(t)
		if _, err := master.WriteString(answer + "\n"); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(binPath, "token", "revoke", id)
		cmd.Dir, cmd.Env, cmd.Stdin = a.dir, childEnv(t), tty
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return out.String(), errb.String(), code
	}
	stdout, stderr, code := revoke("n")
	if code == 0 || stdout != "" || !strings.Contains(stderr, "Revoke token "+id+"?") || !strings.Contains(stderr, "revocation cancelled") {
		t.Errorf("revoke answered n: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	stdout, stderr, code = revoke("y")
	if code != 0 || stdout != "Revoked token "+id+"\n" || !strings.Contains(stderr, "Revoke token "+id+"?") {
		t.Errorf("revoke answered y: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

// A bearer ipv4://0.0.0.0/0 lets any peer that connects directly use the
// token, as --reusable does; issuing one says so on stderr (a narrower
// CIDR, or none, does not).
func TestTokenIssueWarnsOfAnyAddressBearer(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	for _, tc := range []struct {
		bearers string
		warn    bool
	}{
		{"ipv4://0.0.0.0/0", true},
		{"ipv4://10.0.0.0/8", false},
		{"", false},
	} {
		args := []string{"token", "issue", "--print-raw-token", "--quiet"}
		if tc.bearers != "" {
			args = append(args, "--bearers", tc.bearers)
		}
		stdout, stderr, code := a.run(args...)
		if code != 0 {
			t.Fatalf("token issue --bearers %q: exit %d: %s", tc.bearers, code, stderr)
		}
		if strings.Count(strings.TrimSpace(stdout), ".") != 2 {
			t.Errorf("token issue --bearers %q printed %q, want only the token on stdout", tc.bearers, stdout)
		}
		if got := strings.Contains(stderr, "any peer"); got != tc.warn {
			t.Errorf("token issue --bearers %q: warned %v, want %v (stderr: %q)", tc.bearers, got, tc.warn, stderr)
		}
	}
}

// `action perform --stdin` takes an input too large for an argument
// (Linux caps one at 128 KiB; max_payload is 1 MiB): --data could not carry
// it at all. Stdin must hold one JSON value.
func TestPerformStdinInput(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	a.writeScript("actions", "echo", "cat\n")
	big := `{"pad":"` + strings.Repeat("x", 300<<10) + `"}`
	stdout, stderr, code := a.runStdin(big+"\n", "action", "perform", "--action", "echo", "--stdin", "--quiet")
	if code != 0 || strings.TrimSpace(stdout) != big {
		t.Fatalf("perform --stdin: exit %d, %d bytes out (want the %d-byte input back), stderr: %s", code, len(stdout), len(big), stderr)
	}
	for _, tc := range []struct{ in, want string }{
		{"1\n2\n", "stdin is not one valid JSON value"},
		{"{bad", "stdin is not one valid JSON value"},
	} {
		_, stderr, code := a.runStdin(tc.in, "action", "perform", "--action", "echo", "--stdin")
		if code == 0 || !strings.Contains(stderr, tc.want) {
			t.Errorf("perform --stdin of %q: exit %d, stderr %q, want %q", tc.in, code, stderr, tc.want)
		}
	}
}

// An id that names nothing is refused in the user's terms: dead letters
// said "datastore: not found: /deadletters/<id>", the datastore's key, and
// peer remove of a peer that is not added said to add it first.
func TestUnknownIDsAreNamed(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	for _, cmd := range []string{"replay", "drop"} {
		stderr := a.mustFail([]string{"deadletters", cmd, "nope"}, `no dead letter "nope" (see: coattail deadletters list)`)
		if strings.Contains(stderr, "/deadletters/") {
			t.Errorf("deadletters %s of an unknown id names a datastore key: %s", cmd, stderr)
		}
	}
	// Removing a peer that is not added said to add it first.
	const pid = "12D3KooWPXuFEH7Bb9kpKaXrAd8qeRTfLyDof9EKyvSdcAu7EZ5o"
	if stderr := a.mustFail([]string{"peer", "remove", "--id", pid}, "nothing to remove", "peer list"); strings.Contains(stderr, "add it first") {
		t.Errorf("peer remove of an unknown peer advises adding it: %s", stderr)
	}
}
