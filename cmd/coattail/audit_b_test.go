package main

// A docs-vs-behaviour audit of "Instances and services", "Actions and
// receivers" and "Environment of actions and receivers" in docs/CLI.md.

import (
	"strings"
	"testing"
)

// A publish at a peer that never got the publications (the service not
// running, a peer not added) says why, as a perform there does, and not
// that the peer "may or may not have stored them": nothing was sent.
func TestPublishAtPeerNotSentSaysWhy(t *testing.T) {
	t.Parallel()
	pub, other := newInstance(t, "pub"), newInstance(t, "other")
	unknown := other.peerID()
	notSent := func(stderr string) {
		t.Helper()
		if strings.Contains(stderr, "may or may not") || strings.Contains(stderr, "confirmed 0") {
			t.Errorf("a publish that sent nothing says the peer may have stored it: %s", stderr)
		}
	}

	// Offline: the command needs the network, and says so.
	notSent(pub.mustFail([]string{"action", "publish", "--peer", unknown, "--action", "orders.created", "--data", "1"},
		"coattail: node: the service is not running (start it with: coattail service start --headless)"))

	// Running, at a peer never added.
	pub.start()
	notSent(pub.mustFail([]string{"action", "publish", "--peer", unknown, "--action", "orders.created", "--data", "1"},
		"unknown peer "+unknown, "coattail peer add"))
	_, stderr, code := pub.runStdin("1\n2\n", "action", "publish", "--peer", unknown, "--action", "orders.created", "--stdin")
	if code == 0 || !strings.Contains(stderr, "unknown peer "+unknown) {
		t.Errorf("publish --stdin at a peer never added: exit %d, stderr %s; want a failure naming the unknown peer", code, stderr)
	}
	notSent(stderr)
}

// --stdin and --data cannot be combined, also when --data is empty (a
// script's unset variable): publish took the lines of stdin and ignored
// it, where perform refused it.
func TestStdinWithEmptyDataIsRefused(t *testing.T) {
	t.Parallel()
	i := newInstance(t, "a")
	for _, cmd := range []string{"perform", "publish"} {
		_, stderr, code := i.runStdin("1\n", "action", cmd, "--action", "orders.created", "--stdin", "--data", "")
		if code == 0 || !strings.Contains(stderr, "--stdin and --data cannot be combined") {
			t.Errorf("action %s --stdin --data '': exit %d, stderr %q; want a failure saying they cannot be combined", cmd, code, stderr)
		}
	}
}

// An empty --instance (a script's unset variable) is an error, as an empty
// --peer is: it acted on the instance of the current directory, so
// `coattail --instance "$DIR" service stop` stopped whatever ran there.
func TestEmptyInstanceFlagIsRefused(t *testing.T) {
	t.Parallel()
	i := newInstance(t, "a")
	pid := i.start()
	for _, args := range [][]string{
		{"--instance", "", "service", "stop"},
		{"--instance= ", "config", "check"},
	} {
		stdout, stderr, code := i.run(args...)
		if code != 1 || stdout != "" || !strings.Contains(stderr, "coattail: --instance must not be empty") {
			t.Errorf("coattail %q in an instance directory: exit %d, stdout %q, stderr %q; want exit 1 saying --instance must not be empty", args, code, stdout, stderr)
		}
	}
	if !processAlive(pid) {
		t.Fatal(`--instance "" service stop stopped the service of the current directory`)
	}
	i.mustRun("service", "stop")
}

// publish --stdin stops at a line that is not JSON in UTF-8 (what the
// service takes) with every line before it published, as at any line that
// is not JSON: one with invalid UTF-8 was sent, and the service refused
// its whole batch, the lines before it too.
func TestPublishStdinStopsAtInvalidUTF8Line(t *testing.T) {
	t.Parallel()
	i := newInstance(t, "a")
	stdout, stderr, code := i.runStdin("1\n2\n\"\xff\"\n4\n", "action", "publish", "--action", "orders.created", "--stdin")
	if code != 1 || stdout != "" || !strings.Contains(stderr, "stdin line 3 is not valid JSON: the 2 line(s) before it were published, none from it on") {
		t.Errorf("publish --stdin with invalid UTF-8 on line 3: exit %d, stdout %q, stderr %q; want lines 1-2 published and line 3 named", code, stdout, stderr)
	}
}
