package main

// End-to-end tests of subscriptions and durable publication (issue 5),
// each with separate instance processes on loopback: cascades and the hop
// limit, wildcard matching, crashes of either side in the middle of a
// stream of publications, a stopped subscriber that must not hold back the
// others, cleanup on unsubscribe / revoke / token revoke / peer remove,
// dead letters, --to and full queues.

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// deliveryTimeout bounds a wait for deliveries that need only a few
// receiver runs; reconnecting after a restart can take a back-off of up
// to 10 s.
const deliveryTimeout = 60 * time.Second

func TestSubsCascadeAndHopLimit(t *testing.T) {
	t.Parallel()
	a, b, c := newInstance(t, "a"), newInstance(t, "b"), newInstance(t, "c")
	for _, i := range []*instance{a, b} {
		i.setConfig("max_hops", "3")
		i.setConfig("receiver_retries", "0")
	}
	a.writeScript("actions", "orders.created", "exec cat\n")
	// b's receiver records the order, then performs b's own action with
	// --notify: the cascade. COATTAIL_HOP flows into the nested coattail.
	b.writeScript("receivers", "orders.log", `read -r data
echo "$COATTAIL_SUBJECT $COATTAIL_SEQUENCE $COATTAIL_HOP $data" >>got
exec coattail action perform --quiet --action shipping.requested --data "$data" --notify >/dev/null
`)
	b.writeScript("actions", "shipping.requested", "exec cat\n")
	c.recordingReceiver("ship", "got")

	// A loop: a subscribes to b's loop.b and b to a's loop.a, each
	// receiver performing its own loop action with --notify.
	for _, x := range []struct {
		i    *instance
		mine string
	}{{a, "loop.a"}, {b, "loop.b"}} {
		x.i.writeScript("actions", x.mine, "exec cat\n")
		x.i.writeScript("receivers", "loop.r", `read -r data
echo "$COATTAIL_SUBJECT $COATTAIL_SEQUENCE $COATTAIL_HOP $data" >>loop.txt
exec coattail action perform --quiet --action `+x.mine+` --data "$data" --notify >/dev/null
`)
	}
	a.start()
	b.start()
	c.start()
	b.addPeer(a, "--performable", "orders.created", "--subscribable", "orders.>,loop.a")
	c.addPeer(b, "--subscribable", "shipping.requested")
	a.addPeer(b, "--subscribable", "loop.b")
	b.subscribe(a, "orders.>", "orders.log")
	c.subscribe(b, "shipping.requested", "ship")

	// Publish both ways: perform --notify and publish.
	_, stderr, code := a.run("action", "perform", "--action", "orders.created", "--data", `{"id":1}`, "--notify")
	if code != 0 || !strings.Contains(stderr, "published to 1 subscription(s)") {
		t.Fatalf("perform --notify: exit %d, stderr %q", code, stderr)
	}
	if out := a.mustRun("action", "publish", "--action", "orders.created", "--data", `{"id":2}`); !strings.Contains(out, "published to 1 subscription(s)") {
		t.Fatalf("publish printed %q", out)
	}
	gotB := b.waitLines("got", 2, deliveryTimeout)
	gotC := c.waitLines("got", 2, deliveryTimeout)
	if want := []string{`orders.created 1 0 {"id":1}`, `orders.created 2 0 {"id":2}`}; !slices.Equal(gotB, want) {
		t.Errorf("b's receiver ran with %q, want %q", gotB, want)
	}
	if want := []string{`shipping.requested 1 1 {"id":1}`, `shipping.requested 2 1 {"id":2}`}; !slices.Equal(gotC, want) {
		t.Errorf("c's receiver (the cascade) ran with %q, want %q", gotC, want)
	}

	// The loop: hop 0 reaches b, 1 a, 2 b, 3 a; a's receiver then tries
	// hop 4 > max_hops 3, which is refused and logged, and its
	// publication is parked (no retries). Nothing is in flight after that,
	// so the files are final once the dead letter shows.
	a.subscribe(b, "loop.b", "loop.r")
	b.subscribe(a, "loop.a", "loop.r")
	a.mustRun("action", "perform", "--quiet", "--action", "loop.a", "--data", `"ping"`, "--notify")
	var dls []deadLetterJSON
	checkFor(t, deliveryTimeout, func() error {
		dls = a.deadLetters()
		if len(dls) == 0 {
			return fmt.Errorf("no dead letter at a yet; a's loop.txt %q, b's %q", a.readLines("loop.txt"), b.readLines("loop.txt"))
		}
		return nil
	})
	if len(dls) != 1 || dls[0].Subject != "loop.b" || dls[0].Seq != 2 || !strings.Contains(dls[0].Error, "hop limit") {
		t.Errorf("dead letters at a = %+v, want loop.b seq 2 failing on the hop limit", dls)
	}
	if got, want := b.readLines("loop.txt"), []string{`loop.a 1 0 "ping"`, `loop.a 2 2 "ping"`}; !slices.Equal(got, want) {
		t.Errorf("b's loop receiver ran with %q, want %q", got, want)
	}
	if got, want := a.readLines("loop.txt"), []string{`loop.b 1 1 "ping"`, `loop.b 2 3 "ping"`}; !slices.Equal(got, want) {
		t.Errorf("a's loop receiver ran with %q, want %q", got, want)
	}
	if !a.logContains(`"cascade stopped"`, `"hop":4`) {
		t.Error("a's service.log has no \"cascade stopped\" error for hop 4")
	}
	if dl := b.deadLetters(); len(dl) != 0 {
		t.Errorf("b parked %+v", dl)
	}
}

func TestSubsWildcards(t *testing.T) {
	t.Parallel()
	a, b := newInstance(t, "a"), newInstance(t, "b")
	b.recordingReceiver("star", "star.txt")
	b.recordingReceiver("tail", "tail.txt")
	b.recordingReceiver("all", "all.txt")
	a.start()
	b.start()
	b.addPeer(a) // default: subscribe to everything
	b.subscribe(a, "orders.*", "star")
	b.subscribe(a, "orders.>", "tail")
	b.subscribe(a, ">", "all")

	for _, p := range []struct {
		subject string
		matches int
	}{{"orders.new", 3}, {"orders.new.eu", 2}, {"billing.x", 1}, {"orders", 1}, {"orders.end", 3}} {
		out := a.mustRun("action", "publish", "--action", p.subject, "--data", `"`+p.subject+`"`)
		if want := fmt.Sprintf("published to %d subscription(s)", p.matches); !strings.Contains(out, want) {
			t.Errorf("publish %s printed %q, want %q", p.subject, out, want)
		}
	}
	// orders.end matches every pattern and comes last: once each receiver
	// has seen it, it has seen everything meant for it.
	subjects := func(lines []string) []string {
		var out []string
		for _, l := range lines {
			out = append(out, strings.Fields(l)[0])
		}
		return out
	}
	for _, c := range []struct {
		file string
		want []string
	}{
		{"star.txt", []string{"orders.new", "orders.end"}},
		{"tail.txt", []string{"orders.new", "orders.new.eu", "orders.end"}},
		{"all.txt", []string{"orders.new", "orders.new.eu", "billing.x", "orders", "orders.end"}},
	} {
		got := subjects(b.waitLastLine(c.file, `"orders.end"`, deliveryTimeout))
		if !slices.Equal(got, c.want) {
			t.Errorf("%s received %v, want %v", c.file, got, c.want)
		}
	}
}

// idempotentReceiver is the documented exactly-once pattern: the receiver
// remembers the last sequence it applied and skips anything at or below
// it. It also appends every raw invocation to raw.txt, and only shell
// builtins run, to keep one process per publication.
const idempotentReceiver = `read -r data
seq=$COATTAIL_SEQUENCE
echo "$seq" >>raw.txt
last=0
[ -f last.txt ] && read -r last <last.txt
[ "$seq" -le "$last" ] && exit 0
echo "x $seq $data" >>applied.txt
echo "$seq" >last.txt
`

// checkExactlyOnce checks applied.txt holds exactly 1..n in order, with
// data equal to the sequence, and raw.txt every sequence in non-decreasing
// order with at most maxDups re-runs, each of one sequence at most twice.
func checkExactlyOnce(t *testing.T, i *instance, n, maxDups int) {
	t.Helper()
	applied := i.readLines("applied.txt")
	if len(applied) != n {
		t.Errorf("applied.txt has %d lines, want %d", len(applied), n)
	}
	for k, l := range applied {
		if want := fmt.Sprintf("x %d %d", k+1, k+1); l != want {
			t.Fatalf("applied.txt line %d is %q, want %q", k+1, l, want)
		}
	}
	raw := i.readLines("raw.txt")
	prev, dups := 0, 0
	for k, l := range raw {
		s, err := strconv.Atoi(l)
		if err != nil {
			t.Fatalf("raw.txt line %d: %q", k+1, l)
		}
		switch {
		case s == prev:
			dups++
			if k >= 2 && raw[k-2] == l {
				t.Errorf("sequence %d ran three times or more", s)
			}
		case s != prev+1:
			t.Fatalf("raw.txt line %d: sequence %d after %d (want in order, nothing skipped)", k+1, s, prev)
		}
		prev = s
	}
	if prev != n {
		t.Errorf("raw.txt ends at sequence %d, want %d", prev, n)
	}
	if dups > maxDups {
		t.Errorf("%d receiver re-runs, want at most %d (one per kill)", dups, maxDups)
	}
	t.Logf("%d publications, %d receiver runs (%d re-runs of an in-flight publication)", n, len(raw), dups)
}

func TestSubsSubscriberKilledMidStream(t *testing.T) {
	t.Parallel()
	const total = 10_000
	a, b := newInstance(t, "a"), newInstance(t, "b")
	b.writeScript("receivers", "apply", idempotentReceiver)
	a.start()
	b.start()
	b.addPeer(a, "--subscribable", "bulk.>")
	b.subscribe(a, "bulk.>", "apply")
	begin := time.Now()

	// Three kills at random moments; publications arrive in batches while
	// delivery is under way, and one batch while b is down.
	kill := func(n int, atLeast int) {
		t.Helper()
		b.waitLines("raw.txt", atLeast, 3*time.Minute)
		killAndWait(t, b.pid)
		t.Logf("kill %d after %d receiver runs (%v)", n, len(b.readLines("raw.txt")), time.Since(begin).Round(time.Millisecond))
	}
	a.mustPublishRange("bulk.x", 1, 4000)
	kill(1, 100+rand.IntN(3000))
	b.start()
	a.mustPublishRange("bulk.x", 4001, 7000)
	kill(2, 4200+rand.IntN(2000))
	a.mustPublishRange("bulk.x", 7001, total)
	b.start()
	kill(3, 7200+rand.IntN(2500))
	b.start()

	b.waitLines("applied.txt", total, 4*time.Minute)
	t.Logf("all %d applied after %v", total, time.Since(begin).Round(time.Millisecond))
	checkExactlyOnce(t, b, total, 3)
	checkFor(t, deliveryTimeout, func() error {
		subs := b.subscriptions()
		if len(subs) != 1 || subs[0].LastSeq != total {
			return fmt.Errorf("subscriptions list = %+v, want last_seq %d", subs, total)
		}
		return nil
	})
}

// TestSubsReceiverOutlivesKilledService kills the subscriber's service
// while its receiver runs and has not read its input yet: the receiver (in
// its own process group) outlives the service and must still read the
// whole publication, not what fit in a pipe, and the publication runs
// again after the restart because its progress was never saved. The
// input is larger than a pipe buffer, so this does not depend on when the
// kill lands.
func TestSubsReceiverOutlivesKilledService(t *testing.T) {
	t.Parallel()
	a, b := newInstance(t, "a"), newInstance(t, "b")
	// Waits (bounded, so a failed test leaves nothing behind) for the test
	// to say go, then records the sequence and the input's length.
	b.writeScript("receivers", "measure", `touch started
n=0
while [ ! -e go ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done
read -r data
echo "$COATTAIL_SEQUENCE ${#data}" >>raw.txt
`)
	a.start()
	b.start()
	b.addPeer(a, "--subscribable", "bulk.>")
	b.subscribe(a, "bulk.>", "measure")
	big := `"` + strings.Repeat("a", 300_000) + `"`
	if code, stderr := a.publishStdin("bulk.x", []string{big}); code != 0 {
		t.Fatalf("publish: exit %d: %s", code, stderr)
	}
	checkFor(t, deliveryTimeout, func() error {
		if !fileExists(b.path("started")) {
			return fmt.Errorf("the receiver has not started")
		}
		return nil
	})
	killAndWait(t, b.pid)
	writeFile(t, b.path("go"), "")
	want := fmt.Sprintf("1 %d", len(big))
	if got := b.waitLines("raw.txt", 1, deliveryTimeout); got[0] != want {
		t.Fatalf("the receiver orphaned by the kill read %q (sequence, input length), want %q", got[0], want)
	}
	b.start()
	if got := b.waitLines("raw.txt", 2, deliveryTimeout); !slices.Equal(got, []string{want, want}) {
		t.Errorf("receiver runs %q, want %q twice (the in-flight publication re-runs after the restart)", got, want)
	}
}

func TestSubsPublisherKilledAfterAccepting(t *testing.T) {
	t.Parallel()
	const total = 2000
	a, b := newInstance(t, "a"), newInstance(t, "b")
	a.fixPort() // b must find a again after its restart
	b.writeScript("receivers", "apply", idempotentReceiver)
	a.start()
	b.start()
	b.addPeer(a, "--subscribable", "bulk.>")
	b.subscribe(a, "bulk.>", "apply")
	begin := time.Now()

	// Accepted means durable: kill -9 the moment the command returns.
	a.mustPublishRange("bulk.x", 1, total)
	killAndWait(t, a.pid)
	t.Logf("publisher killed after %d receiver runs", len(b.readLines("raw.txt")))
	a.start()

	b.waitLines("applied.txt", total, 3*time.Minute)
	t.Logf("all %d applied after %v", total, time.Since(begin).Round(time.Millisecond))
	// The subscriber was never killed, so even the raw runs are exactly
	// once: redelivered duplicates are dropped before the receiver.
	checkExactlyOnce(t, b, total, 0)
}

func TestSubsStoppedSubscriberDoesNotBlockOthers(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	subs := []*instance{newInstance(t, "b"), newInstance(t, "c"), newInstance(t, "d")}
	a.start()
	ids := map[*instance]string{}
	for _, s := range subs {
		s.recordingReceiver("rec", "got")
		s.start()
		s.addPeer(a, "--subscribable", "news.>")
		ids[s] = s.subscribe(a, "news.>", "rec")
	}
	b, c, d := subs[0], subs[1], subs[2]
	d.mustRun("service", "stop")

	depthOfD := func() uint64 {
		t.Helper()
		s, ok := a.subscriberFor(ids[d])
		if !ok {
			t.Fatalf("a's subscribers list lost d's subscription %s", ids[d])
		}
		return s.Depth
	}
	for batch, upTo := range []int{50, 100} {
		a.mustPublishRange("news.today", upTo-49, upTo)
		for _, s := range []*instance{b, c} {
			got := seqs(t, s.waitLines("got", upTo, deliveryTimeout))
			if len(got) != upTo || got[upTo-1] != uint64(upTo) {
				t.Fatalf("%s received %d publications (last seq %d), want %d", s.name, len(got), got[len(got)-1], upTo)
			}
		}
		// Nothing reached d, which is down, so all of it waits in its queue.
		if got := depthOfD(); got != uint64(upTo) {
			t.Errorf("after batch %d, d's queue_depth = %d, want %d", batch+1, got, upTo)
		}
	}

	d.start()
	got := seqs(t, d.waitLines("got", 100, deliveryTimeout))
	for k, s := range got {
		if s != uint64(k+1) {
			t.Fatalf("d caught up with sequences %v, want 1..100 in order", got)
		}
	}
	checkFor(t, deliveryTimeout, func() error {
		if n := depthOfD(); n != 0 {
			return fmt.Errorf("d's queue_depth is %d after catching up", n)
		}
		return nil
	})
}

func TestSubsCleanup(t *testing.T) {
	t.Parallel()
	a, b, c := newInstance(t, "a"), newInstance(t, "b"), newInstance(t, "c")
	b.recordingReceiver("rec", "got")
	a.start()
	b.start()
	c.start()
	aID := a.peerID()
	tok := b.addPeer(a) // subscribe to everything

	gone := func(id string) func() error {
		return func() error {
			if s := b.subscriptions(); slices.ContainsFunc(s, func(x subscriptionJSON) bool { return x.ID == id }) {
				return fmt.Errorf("b still lists subscription %s: %+v", id, s)
			}
			if _, ok := a.subscriberFor(id); ok {
				return fmt.Errorf("a still lists subscriber %s", id)
			}
			return nil
		}
	}

	// Unsubscribe removes both sides at once.
	id := b.subscribe(a, "x.a", "rec")
	if s, ok := a.subscriberFor(id); !ok || s.Subscriber != b.peerID() || s.Pattern != "x.a" || s.TokenID != a.tokenID(tok) {
		t.Fatalf("a's subscribers list has %+v (found %v), want b's x.a with token %s", s, ok, a.tokenID(tok))
	}
	if out := b.mustRun("action", "unsubscribe", "--peer", aID, "--action", "x.a", "--receiver", "rec"); !strings.Contains(out, "Removed 1") {
		t.Errorf("unsubscribe printed %q", out)
	}
	if err := gone(id)(); err != nil {
		t.Error(err)
	}
	b.mustFail([]string{"action", "unsubscribe", "--peer", aID, "--action", "x.a", "--receiver", "rec"}, "no subscription")

	// Revoked by the publisher: the subscriber is told.
	id = b.subscribe(a, "x.b", "rec")
	a.mustRun("subscribers", "revoke", id)
	checkFor(t, deliveryTimeout, gone(id))

	// Revoking the token removes every subscription made with it.
	id1, id2 := b.subscribe(a, "x.c", "rec"), b.subscribe(a, "x.d", "rec")
	a.mustRun("token", "revoke", "--force", a.tokenID(tok))
	checkFor(t, deliveryTimeout, gone(id1))
	checkFor(t, deliveryTimeout, gone(id2))

	// Removing a peer removes the subscriptions held there, on both sides.
	b.addPeer(c)
	id = b.subscribe(c, "y.>", "rec")
	if _, ok := c.subscriberFor(id); !ok {
		t.Fatalf("c does not list b's subscription %s", id)
	}
	b.mustRun("peer", "remove", "--id", c.peerID())
	if s := b.subscriptions(); len(s) != 0 {
		t.Errorf("b's subscriptions after peer remove: %+v", s)
	}
	checkFor(t, deliveryTimeout, func() error {
		if s := c.subscribers(); len(s) != 0 {
			return fmt.Errorf("c still lists subscribers %+v after b removed it", s)
		}
		return nil
	})
}

func TestSubsDeadLetters(t *testing.T) {
	t.Parallel()
	a, b := newInstance(t, "a"), newInstance(t, "b")
	b.setConfig("receiver_retries", "1")
	b.setConfig("receiver_backoff", "10ms")
	// Fails on "poison" (counting its attempts), handles anything else.
	b.writeScript("receivers", "picky", `read -r data
if [ "$data" = '"poison"' ]; then echo attempt >>attempts.txt; echo "cannot digest $data" >&2; exit 1; fi
echo "$COATTAIL_SUBJECT $COATTAIL_SEQUENCE $COATTAIL_HOP $data" >>got
`)
	a.start()
	b.start()
	b.addPeer(a)
	b.subscribe(a, "jobs", "picky")

	for _, d := range []string{`"poison"`, "1", "2"} {
		a.mustRun("action", "publish", "--action", "jobs", "--data", d)
	}
	// The publications behind the failing one are still delivered.
	if got, want := b.waitLines("got", 2, deliveryTimeout), []string{"jobs 2 0 1", "jobs 3 0 2"}; !slices.Equal(got, want) {
		t.Errorf("receiver ran with %q, want %q", got, want)
	}
	dls := b.deadLetters()
	if len(dls) != 1 || dls[0].Seq != 1 || dls[0].Subject != "jobs" || dls[0].Data != "poison" || dls[0].Attempts != 2 ||
		!strings.Contains(dls[0].Error, "cannot digest") {
		t.Fatalf("dead letters = %+v, want seq 1 \"poison\" after 2 attempts", dls)
	}
	if n := len(b.readLines("attempts.txt")); n != 2 {
		t.Errorf("the failing receiver ran %d times, want 2 (one retry)", n)
	}
	if c := b.counters(); c.DeadLetters != 1 {
		t.Errorf("counters.dead_letters = %d, want 1", c.DeadLetters)
	}
	if out := b.mustRun("deadletters", "list"); !strings.Contains(out, dls[0].ID) || !strings.Contains(out, "picky") {
		t.Errorf("deadletters list:\n%s", out)
	}

	// Replay while still broken: fails, and the letter stays.
	b.mustFail([]string{"deadletters", "replay", dls[0].ID}, "cannot digest")
	if n := len(b.deadLetters()); n != 1 {
		t.Fatalf("a failed replay left %d dead letters, want 1", n)
	}
	// Fixed: the replay succeeds and the letter leaves the list.
	b.writeScript("receivers", "picky", `read -r data
echo "$COATTAIL_SUBJECT $COATTAIL_SEQUENCE $COATTAIL_HOP $data replay=$COATTAIL_REPLAY" >>got
`)
	b.mustRun("deadletters", "replay", dls[0].ID)
	if n := len(b.deadLetters()); n != 0 {
		t.Errorf("%d dead letters after a successful replay, want 0", n)
	}
	if got := last(b.readLines("got")); got != `jobs 1 0 "poison" replay=1` {
		t.Errorf("replayed receiver wrote %q", got)
	}
	b.mustFail([]string{"deadletters", "replay", dls[0].ID})
}

func TestSubsToAndFullQueues(t *testing.T) {
	t.Parallel()
	p1, p2 := newInstance(t, "p1"), newInstance(t, "p2")
	s, s2 := newInstance(t, "s"), newInstance(t, "s2")
	p1.setConfig("queue_bound", "3")
	p1.setConfig("queue_full", "reject")
	p2.setConfig("queue_bound", "3")
	p2.setConfig("queue_full", "drop_oldest")
	for _, i := range []*instance{p1, p2, s, s2} {
		i.start()
	}
	for _, i := range []*instance{s, s2} {
		i.recordingReceiver("rec", "got")
		i.addPeer(p1)
	}
	s.addPeer(p2)
	s.subscribe(p1, "to.x", "rec")
	s2.subscribe(p1, "to.x", "rec")
	s.subscribe(p1, "full.x", "rec")
	s.subscribe(p2, "drop.x", "rec")

	// --to restricts a publication to the chosen subscriber.
	if out := p1.mustRun("action", "publish", "--action", "to.x", "--data", `"only s2"`, "--to", s2.peerID()); !strings.Contains(out, "published to 1 subscription(s)") {
		t.Errorf("publish --to printed %q", out)
	}
	// A --to that is not a peer id, or --to without --notify, is refused:
	// it would otherwise publish to nobody (or to everybody) silently.
	p1.mustFail([]string{"action", "publish", "--action", "to.x", "--data", `1`, "--to", "not-a-peer"}, `--to "not-a-peer" is not a peer id`)
	p1.mustFail([]string{"action", "perform", "--action", "to.x", "--data", `1`, "--to", s2.peerID()}, "needs --notify")
	p1.mustRun("action", "publish", "--action", "to.x", "--data", `"everyone"`)
	if got, want := s2.waitLines("got", 2, deliveryTimeout), []string{`to.x 1 0 "only s2"`, `to.x 2 0 "everyone"`}; !slices.Equal(got, want) {
		t.Errorf("s2 received %q, want %q", got, want)
	}
	// In order per subscription: s saw "everyone" last, so never the other.
	if got, want := s.waitLastLine("got", `"everyone"`, deliveryTimeout), []string{`to.x 1 0 "everyone"`}; !slices.Equal(got, want) {
		t.Errorf("s received %q, want %q", got, want)
	}

	s.mustRun("service", "stop")
	// reject: the bound holds 3 undelivered messages; the 4th publish
	// fails clearly and queues nothing.
	for k := 1; k <= 3; k++ {
		p1.mustRun("action", "publish", "--action", "full.x", "--data", strconv.Itoa(k))
	}
	p1.mustFail([]string{"action", "publish", "--action", "full.x", "--data", "4"}, "queue full", "bound of 3")
	if code, stderr := p1.publishStdin("full.x", []string{"5", "6"}); code == 0 || !strings.Contains(stderr, "queue full") {
		t.Errorf("publish --stdin into a full queue: exit %d, stderr %q", code, stderr)
	}
	// drop_oldest: publishing always succeeds and the oldest go.
	for k := 1; k <= 5; k++ {
		p2.mustRun("action", "publish", "--action", "drop.x", "--data", strconv.Itoa(k))
	}
	if c := p2.counters(); c.Dropped != 2 {
		t.Errorf("p2 counters.dropped = %d, want 2", c.Dropped)
	}
	if c := p1.counters(); c.Dropped != 0 {
		t.Errorf("p1 (reject) counters.dropped = %d, want 0", c.Dropped)
	}

	// Back up: s gets the 3 accepted full.x and the 3 newest drop.x.
	s.start()
	lines := s.waitLines("got", 7, deliveryTimeout)
	var full, drop []string
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		switch f[0] {
		case "full.x":
			full = append(full, f[3])
		case "drop.x":
			drop = append(drop, f[3])
		default:
			t.Errorf("unexpected publication %q", l)
		}
	}
	if !slices.Equal(full, []string{"1", "2", "3"}) || !slices.Equal(drop, []string{"3", "4", "5"}) {
		t.Errorf("after restart s received full.x %v and drop.x %v, want [1 2 3] and [3 4 5]", full, drop)
	}
}

// TestSubsPublisherMovesToANewPort: the publisher restarts on another port
// (here: port 0, a fresh random port), so the address in the subscriber's
// token is stale. The publisher remembered where its subscriber listens
// and nudges it; the subscriber reconnects over that connection and
// receives what was queued and what follows.
func TestSubsPublisherMovesToANewPort(t *testing.T) {
	t.Parallel()
	a, b := newInstance(t, "a"), newInstance(t, "b")
	b.fixPort() // the subscriber stays put; only the publisher moves
	b.recordingReceiver("rec", "got")
	a.start()
	b.start()
	b.addPeer(a, "--subscribable", "moves.>")
	b.subscribe(a, "moves.>", "rec")
	a.mustPublishRange("moves.x", 1, 10)
	b.waitLines("got", 10, deliveryTimeout)

	a.mustRun("service", "stop")
	a.start() // port 0: new random ports
	a.mustPublishRange("moves.x", 11, 20)
	got := seqs(t, b.waitLines("got", 20, 2*time.Minute))
	for i, s := range got {
		if s != uint64(i+1) {
			t.Fatalf("received sequences %v, want 1..20 in order", got)
		}
	}
}
