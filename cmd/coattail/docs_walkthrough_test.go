package main

// Found by following README.md and docs/CLI.md literally, as a new user:
// each test pins one place where the product and the docs disagreed.

import (
	"strings"
	"testing"
)

// The usage lines of `action perform --help` and `action publish --help`
// show the syntax docs/CLI.md gives: publish's --data is optional (null
// without it) and --stdin and --to exist, and perform takes --to and -q.
// publish's --to says it does not go with --peer, which is refused.
func TestPerformPublishHelpMatchesDocs(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"action", "perform", "--help"}, []string{
			"coattail action perform --action NAME [--data JSON | --stdin] [--notify [--to ID,...]] [--peer ID] [-q]",
		}},
		{[]string{"action", "publish", "--help"}, []string{
			"coattail action publish --action NAME [--data JSON | --stdin] [--to ID,...] [--peer ID]",
			"JSON data (default null)",
			"(not with --peer",
		}},
	} {
		out := a.mustRun(c.args...)
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("coattail %s lacks %q:\n%s", strings.Join(c.args, " "), w, out)
			}
		}
	}
}

// `action publish --peer P --to X` is refused, as its help and docs/CLI.md
// say; `action perform --peer P --notify --to X` restricts the peer's
// subscribers, here to one that holds no subscription.
func TestPublishToWithPeerRefused(t *testing.T) {
	t.Parallel()
	a, b := newInstance(t, "a"), newInstance(t, "b")
	a.writeScript("actions", "orders.created", "cat\n")
	b.writeScript("receivers", "orders.log", "cat >/dev/null\n")
	a.start()
	b.start()
	tok := a.issue("--performable", "orders.created", "--publishable", "orders.>", "--subscribable", "orders.>")
	b.mustRun("peer", "add", "--token", tok)
	b.mustRun("action", "subscribe", "--peer", a.peerID(), "--action", "orders.>", "--receiver", "orders.log")
	b.mustFail([]string{"action", "publish", "--peer", a.peerID(), "--action", "orders.created", "--data", "1", "--to", b.peerID()},
		"--to cannot be combined with --peer")
	_, stderr, code := b.run("action", "perform", "--peer", a.peerID(), "--action", "orders.created", "--data", "1", "--notify", "--to", a.peerID())
	if code != 0 || !strings.Contains(stderr, "published to 0 subscription(s)") {
		t.Fatalf("perform --peer --notify --to a peer without subscriptions: exit %d, stderr %q; want 0 published", code, stderr)
	}
	_, stderr, code = b.run("action", "perform", "--peer", a.peerID(), "--action", "orders.created", "--data", "1", "--notify", "--to", b.peerID())
	if code != 0 || !strings.Contains(stderr, "published to 1 subscription(s)") {
		t.Fatalf("perform --peer --notify --to the subscriber: exit %d, stderr %q; want 1 published", code, stderr)
	}
}
