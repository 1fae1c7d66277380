package main

// Found by checking the "Tokens" and "Peers and subscriptions" sections of
// docs/CLI.md against the binary: each test pins one place where they
// disagreed.

import (
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

// `peer remove --id` given the CIDv1 spelling says which peer it removed
// in base58, as docs/CLI.md says all output spells a peer id. It echoed
// --id as given ("Removed peer bafz...").
func TestPeerRemoveSaysBase58ID(t *testing.T) {
	t.Parallel()
	a, b := newInstance(t, "a"), newInstance(t, "b")
	a.start()
	b.start()
	b.addPeer(a)
	pid, err := peer.Decode(a.peerID())
	if err != nil {
		t.Fatal(err)
	}
	cid := peer.ToCid(pid).String()
	if out := b.mustRun("peer", "remove", "--id", cid); out != "Removed peer "+a.peerID()+"\n" {
		t.Errorf("peer remove --id %s printed %q, want %q", cid, out, "Removed peer "+a.peerID()+"\n")
	}
}

// `deadletters replay|drop --all --subscription ID` refuses an ID that is
// neither a subscription here nor one whose dead letters are still parked
// (they outlive it), rather than replay or drop nothing and exit 0 ("Dropped
// 0 dead letter(s)"), as a mistyped id, or a dead letter's id, did. An id
// with a '/' said that "ID.00000000000000000000" was not a dead letter id.
func TestDeadLettersAllOfUnknownSubscription(t *testing.T) {
	t.Parallel()
	a, b := refusingPair(t, "jobs")
	jobs := b.subscriptions()[0].ID
	a.mustPublishRange("jobs", 1, 1)
	dl := b.waitDeadLetters(1)[0].ID
	for _, verb := range []string{"replay", "drop"} {
		for _, c := range []struct{ sub, want string }{
			{"no-such-subscription", "no subscription with that id here"},
			{"a/b", "no subscription with that id here"},
			{dl, "it is a dead letter's id"},
		} {
			b.mustFail([]string{"deadletters", verb, "--all", "--subscription", c.sub}, c.want)
		}
	}
	b.waitDeadLetters(1)
	// A subscription's dead letters, after it ended, are still its own.
	b.mustRun("action", "unsubscribe", "--peer", a.peerID(), "--action", "jobs")
	if out := b.mustRun("deadletters", "drop", "--all", "--subscription", jobs); out != "Dropped 1 dead letter(s)\n" {
		t.Errorf("drop --all --subscription of an ended subscription with a dead letter printed %q", out)
	}
	b.mustFail([]string{"deadletters", "drop", "--all", "--subscription", jobs}, "no subscription with that id here")
	// A subscription held here with none parked: nothing to do, no error.
	id := b.subscribe(a, "jobs", "refuses")
	if out := b.mustRun("deadletters", "replay", "--all", "--subscription", id); out != "Replayed 0 dead letter(s)\n" {
		t.Errorf("replay --all --subscription of a subscription without dead letters printed %q", out)
	}
}

// `token issue --bearers ""` (a script's unset variable) or '[]' is
// refused, as docs/CLI.md says an empty value where a peer is expected
// is: it issued a token for whichever peer used it first, as if --bearers
// had not been given.
func TestTokenIssueEmptyBearersRefused(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	for _, b := range []string{"", " ", "[]"} {
		a.mustFail([]string{"token", "issue", "--bearers", b, "--print-raw-token"}, "--bearers", "names no bearer")
	}
	if out := a.mustRun("token", "list"); out != "No tokens issued.\n" {
		t.Errorf("token list after the refused issues:\n%s", out)
	}
	// Left out, it is the documented default.
	a.issue()
}

// `action unsubscribe` toward a publisher that cannot be reached fails,
// pointing at --force; with --force the subscription ends here and the
// command says, on stderr, that the publisher was not told (it keeps the
// subscription until it next tries to deliver here), as `peer remove` does.
// It said nothing: the user took the publisher to have been told.
func TestUnsubscribeForceSaysPublisherNotTold(t *testing.T) {
	t.Parallel()
	p, s := newInstance(t, "p"), newInstance(t, "s")
	s.recordingReceiver("rec", "got")
	p.start()
	s.start()
	s.addPeer(p, "--subscribable", "orders.>")
	id := s.subscribe(p, "orders.>", "rec")
	p.mustRun("service", "stop")

	_, stderr, code := s.run("action", "unsubscribe", "--peer", p.peerID(), "--action", "orders.>")
	if code != 1 || !strings.Contains(stderr, "--force") {
		t.Errorf("unsubscribe from a stopped publisher: exit %d, stderr %q; want a failure pointing at --force", code, stderr)
	}
	stdout, stderr, code := s.run("action", "unsubscribe", "--peer", p.peerID(), "--action", "orders.>", "--force")
	if code != 0 || stdout != "Removed 1 subscription(s)\n" ||
		!strings.Contains(stderr, "The publisher could not be told that 1 subscription(s) ended ("+id+")") {
		t.Errorf("unsubscribe --force from a stopped publisher: exit %d, stdout %q, stderr %q; want it removed and the publisher named untold", code, stdout, stderr)
	}
	if subs := s.subscriptions(); len(subs) != 0 {
		t.Errorf("subscriptions after unsubscribe --force: %+v, want none", subs)
	}
}
