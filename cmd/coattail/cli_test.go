package main

// In-process tests of run: flag and argument errors are reported on stderr
// with exit code 1 before any instance is touched.

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

func runCLI(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, strings.NewReader(""), &out, &errb)
	return out.String(), errb.String(), code
}

func TestRunFlagErrors(t *testing.T) {
	// An empty directory as the instance: a command that got past its flag
	// checks would fail differently ("no coattail instance"), which the
	// wanted messages below exclude.
	t.Setenv("COATTAIL_INSTANCE", t.TempDir())
	t.Setenv("COATTAIL_RUNTIME_DIR", t.TempDir())
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing --name", []string{"action", "create"}, `required flag(s) "name" not set`},
		{"missing --action", []string{"action", "perform", "--data", "1"}, `required flag(s) "action" not set`},
		{"missing --action on publish", []string{"action", "publish"}, `required flag(s) "action" not set`},
		{"bad --data JSON", []string{"action", "perform", "--action", "echo", "--data", "{bad"}, "--data is not valid JSON"},
		{"bad --data JSON on publish", []string{"action", "publish", "--action", "echo", "--data", "[1,"}, "--data is not valid JSON"},
		{"empty --stdin on perform", []string{"action", "perform", "--action", "echo", "--stdin"}, "stdin is empty"},
		{"--stdin and --data on perform", []string{"action", "perform", "--action", "echo", "--stdin", "--data", "1"}, "--stdin and --data cannot be combined"},
		{"bad --expires-in", []string{"token", "issue", "--expires-in", "soon"}, `--expires-in "soon": use a duration such as`},
		{"negative --not-before", []string{"token", "issue", "--not-before", "-1h"}, "--not-before"},
		{"bad --expires-in on validation", []string{"validation", "issue", "--expires-in", "3 fortnights"}, "--expires-in"},
		{"bare number --expires-in", []string{"token", "issue", "--expires-in", "100"}, `--expires-in "100" needs a unit`},
		// 0 is how the control API says "never": a token meant to expire
		// at once must not become one that never does.
		{"zero --expires-in", []string{"token", "issue", "--expires-in", "0s"}, `--expires-in "0s" must be longer than 0`},
		{"zero --expires-in on validation", []string{"validation", "issue", "--expires-in", "0"}, `--expires-in "0" must be longer than 0`},
		{"bad --performable list", []string{"token", "issue", "--performable", `["unterminated`}, "--performable"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"unknown subcommand", []string{"token", "mint"}, "mint"},
		{"unknown help topic", []string{"help", "frob"}, `unknown help topic "frob"`},
		{"unknown help subtopic", []string{"help", "token", "mint"}, `unknown help topic "token mint"`},
		{"unknown completion shell", []string{"completion", "frob"}, `unknown command "frob"`},
		{"unknown flag", []string{"service", "status", "--jsn"}, "unknown flag: --jsn"},
		// The original Coattail's README has token commands take --config.
		{"original --config", []string{"token", "list", "--config", "config.yml"}, "unknown flag: --config (the original Coattail's --config FILE: here each instance reads the config.yml in its own directory; choose the instance with --instance DIR)"},
		{"original --config=", []string{"token", "issue", "--config=other.yml"}, "choose the instance with --instance DIR"},
		{"missing peer id", []string{"peer", "show"}, `required flag(s) "id" not set`},
		{"missing token", []string{"peer", "add"}, `required flag(s) "token" not set`},
		{"decode without token", []string{"token", "decode"}, "accepts 1 arg(s), received 0"},
		{"bad pid", []string{"service", "stop", "abc"}, `invalid pid "abc"`},
		{"extra argument", []string{"version", "extra"}, "unknown command"},
		{"bad port", []string{"new", t.TempDir() + "/x", "--port", "70000"}, "port 70000 out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := runCLI(t, tc.args...)
			if code != 1 {
				t.Errorf("exit code %d, want 1 (stderr %q)", code, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr %q lacks %q", stderr, tc.want)
			}
			if !strings.HasPrefix(stderr, "coattail: ") {
				t.Errorf("stderr %q does not start with the program name", stderr)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing on a flag error", stdout)
			}
		})
	}
}

func TestRunVersion(t *testing.T) {
	stdout, stderr, code := runCLI(t, "version")
	if code != 0 || stderr != "" || !strings.HasPrefix(stdout, "coattail ") || !strings.HasSuffix(stdout, "\n") {
		t.Errorf("version: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

func TestRunNoInstance(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("COATTAIL_INSTANCE", dir)
	stdout, stderr, code := runCLI(t, "token", "list")
	if code != 1 || stdout != "" || !strings.Contains(stderr, "no coattail instance in "+dir) || !strings.Contains(stderr, "coattail new") {
		t.Errorf("token list without an instance: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

// help and completion still work for what exists.
func TestRunHelpAndCompletion(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"help"}, "Available Commands:"},
		{[]string{"help", "token"}, "coattail token [command]"},
		{[]string{"help", "token", "issue"}, "--expires-in"},
		{[]string{"completion", "bash"}, "bash completion"},
		{[]string{"completion"}, "coattail completion [command]"},
	} {
		stdout, stderr, code := runCLI(t, tc.args...)
		if code != 0 || stderr != "" || !strings.Contains(stdout, tc.want) {
			t.Errorf("coattail %q: exit %d, stderr %q, stdout lacks %q:\n%s", tc.args, code, stderr, tc.want, stdout)
		}
	}
}

// COATTAIL_HOP that is not a hop count is refused, not read as 0 (which
// would restart the count that stops cascade loops) nor overflowed into a
// negative hop.
func TestBadHopEnvironment(t *testing.T) {
	t.Setenv("COATTAIL_INSTANCE", t.TempDir())
	t.Setenv("COATTAIL_RUNTIME_DIR", t.TempDir())
	for _, v := range []string{"abc", "-1", "1.5", "9223372036854775807"} {
		t.Setenv("COATTAIL_HOP", v)
		for _, args := range [][]string{
			{"action", "perform", "--action", "echo", "--data", "1"},
			{"action", "publish", "--action", "echo", "--data", "1"},
		} {
			stdout, stderr, code := runCLI(t, args...)
			if code != 1 || stdout != "" || !strings.Contains(stderr, "COATTAIL_HOP") {
				t.Errorf("COATTAIL_HOP=%s %s: exit %d, stdout %q, stderr %q; want refused naming COATTAIL_HOP", v, args[1], code, stdout, stderr)
			}
		}
	}
}

// An expiry that has passed is marked: a peer whose token expired was
// listed with what it allowed, like any other.
func TestExpiresColumn(t *testing.T) {
	past, future := time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	if got := expires(nil); got != "never" {
		t.Errorf("expires(nil) = %q", got)
	}
	if got := expires(&past); !strings.HasSuffix(got, " (expired)") || !strings.HasPrefix(got, past.Local().Format(time.RFC3339)) {
		t.Errorf("expires(an hour ago) = %q, want the time marked expired", got)
	}
	if got := expires(&future); got != future.Local().Format(time.RFC3339) {
		t.Errorf("expires(in an hour) = %q, want the time alone", got)
	}
}
