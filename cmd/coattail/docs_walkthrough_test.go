package main

// Found by following README.md and docs/CLI.md literally, as a new user:
// each test pins one place where the product and the docs disagreed.

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
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
			"do not print the action's log lines, nor (with --notify) how many subscriptions it was published to",
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
	// -q leaves out that count, as its help says.
	if _, stderr, code = b.run("action", "perform", "--peer", a.peerID(), "--action", "orders.created", "--data", "1", "--notify", "-q"); code != 0 || stderr != "" {
		t.Fatalf("perform --notify -q: exit %d, stderr %q; want nothing on stderr", code, stderr)
	}
}

// The command for the next page that `deadletters list` prints on stderr
// keeps the page size (--limit) and the instance (--instance) it was
// given: run as printed, from another directory, it lists the next page of
// the same size. It used to drop both: the "next page" was up to 100
// entries, of whatever instance the current directory held.
func TestDeadLettersNextPageCommandKeepsFlags(t *testing.T) {
	t.Parallel()
	a, b := refusingPair(t, "jobs")
	a.mustPublishRange("jobs", 1, 5)
	checkFor(t, deliveryTimeout, func() error {
		if n := len(b.deadLetters()); n != 5 {
			return fmt.Errorf("%d dead letters, want 5", n)
		}
		return nil
	})
	got := b.deadLetters()
	elsewhere := t.TempDir()

	_, stderr, code := b.runIn(elsewhere, "--instance", b.dir, "deadletters", "list", "--limit", "2")
	want := "coattail deadletters list --instance " + b.dir + " --limit 2 --after " + got[1].ID
	if code != 0 || !strings.Contains(stderr, want) {
		t.Fatalf("deadletters list --limit 2: exit %d, stderr %q; want the next page's command %q", code, stderr, want)
	}
	// The printed command, run as it is, lists the next 2.
	i := strings.Index(stderr, "coattail deadletters list")
	args := strings.Fields(strings.TrimSpace(stderr[i:]))[1:]
	out, stderr, code := b.runIn(elsewhere, args...)
	if code != 0 || strings.Count(out, "\n") != 3 || !strings.Contains(out, got[2].ID) || !strings.Contains(out, got[3].ID) ||
		!strings.Contains(stderr, "--limit 2 --after "+got[3].ID) {
		t.Fatalf("the printed next-page command: exit %d; want a header and entries 3 and 4, and the command for the page after:\n%s\nstderr: %s", code, out, stderr)
	}
	// Without flags it stays the short form.
	_, stderr, _ = b.run("deadletters", "list", "--limit", "4")
	if !strings.Contains(stderr, "coattail deadletters list --limit 4 --after "+got[3].ID) || strings.Contains(stderr, "--instance") {
		t.Errorf("deadletters list --limit 4 in the instance: stderr %q", stderr)
	}
}

// `coattail new` ends with the command to run next. Created in the current
// directory (`coattail new "./"`, as the original Coattail's README has
// it, or no directory at all) that is only `coattail service start
// --headless`; it said "cd ./ && ...". A directory with a space is quoted
// so that the line can be pasted into a shell.
func TestNewNextStep(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	for _, c := range []struct {
		dir  string // made first, and where coattail new runs
		args []string
		want string
	}{
		{"here", []string{"./"}, "  next:    coattail service start --headless\n"},
		{"bare", nil, "  next:    coattail service start --headless\n"},
		{"", []string{"my shop"}, "  next:    cd 'my shop' && coattail service start --headless\n"},
		{"", []string{"shop"}, "  next:    cd shop && coattail service start --headless\n"},
	} {
		parent := t.TempDir()
		dir := parent
		if c.dir != "" {
			dir = filepath.Join(parent, c.dir)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		out, stderr, code := a.runIn(dir, append(append([]string{"new"}, c.args...), "--loopback", "--port", "0")...)
		if code != 0 || !strings.HasSuffix(out, c.want) {
			t.Errorf("coattail new %q in %s: exit %d, stdout %q (stderr %q); want it to end with %q", c.args, c.dir, code, out, stderr, c.want)
		}
	}
}

// A peer id in its CIDv1 spelling (bafz..., as other libp2p tools print
// it) names the same peer as its base58 spelling wherever a peer is
// expected (--peer, --id), as it already did for --to. It used to be
// "unknown peer bafz...: add it first" for a peer that was added.
func TestPeerIDSpellings(t *testing.T) {
	t.Parallel()
	a, b := newInstance(t, "a"), newInstance(t, "b")
	a.writeScript("actions", "orders.created", "cat\n")
	b.writeScript("receivers", "orders.log", "cat >/dev/null\n")
	a.start()
	b.start()
	b.addPeer(a, "--performable", "orders.created")
	pid, err := peer.Decode(a.peerID())
	if err != nil {
		t.Fatal(err)
	}
	cid := peer.ToCid(pid).String()

	if out := b.mustRun("peer", "show", "--id", cid); !strings.Contains(out, a.peerID()) {
		t.Errorf("peer show --id %s:\n%s", cid, out)
	}
	if out := b.mustRun("action", "list", "--peer", cid); !strings.Contains(out, "orders.created") {
		t.Errorf("action list --peer %s:\n%s", cid, out)
	}
	if out := b.mustRun("action", "perform", "--peer", cid, "--action", "orders.created", "--data", `{"x":1}`); strings.TrimSpace(out) != `{"x":1}` {
		t.Errorf("action perform --peer %s: %q", cid, out)
	}
	id := strings.TrimSpace(b.mustRun("action", "subscribe", "--peer", cid, "--action", "orders.>", "--receiver", "orders.log"))
	// The same subscription, whichever spelling: not a second one.
	if again := strings.TrimSpace(b.mustRun("action", "subscribe", "--peer", a.peerID(), "--action", "orders.>", "--receiver", "orders.log")); again != id {
		t.Errorf("subscribing again with the base58 id gave %s, want the existing %s", again, id)
	}
	if subs := b.subscriptions(); len(subs) != 1 || subs[0].Publisher != a.peerID() {
		t.Errorf("subscriptions %+v; want one, at %s", subs, a.peerID())
	}
	b.mustRun("action", "unsubscribe", "--peer", cid, "--action", "orders.>")
	if subs := b.subscriptions(); len(subs) != 0 {
		t.Errorf("after unsubscribe --peer %s: subscriptions %+v", cid, subs)
	}
	b.mustRun("peer", "remove", "--id", cid)
	if out := b.mustRun("peer", "list"); strings.Contains(out, a.peerID()) {
		t.Errorf("after peer remove --id %s:\n%s", cid, out)
	}
}

// `token decode` says Reusable: yes or no, as `token show` does (it said
// true or false).
func TestTokenDecodeReusableYesNo(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	for _, c := range []struct {
		args []string
		want string
	}{{nil, "no"}, {[]string{"--reusable"}, "yes"}} {
		tok := a.issue(c.args...)
		for _, cmd := range [][]string{{"token", "decode", tok}, {"token", "show", a.tokenID(tok)}} {
			out := a.mustRun(cmd...)
			if !regexp.MustCompile(`(?m)^Reusable: +` + c.want + `$`).MatchString(out) {
				t.Errorf("coattail %s %s (issued with %q): want Reusable: %s:\n%s", cmd[0], cmd[1], c.args, c.want, out)
			}
		}
	}
}
