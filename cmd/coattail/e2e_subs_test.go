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
	"syscall"
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
echo "$COATTAIL_PUBLISHER" >>from
exec coattail action perform --quiet --action shipping.requested --data "$data" --notify >/dev/null
`)
	b.writeScript("actions", "shipping.requested", "exec cat\n")
	// c records what it got and from whom: the shipping request must come
	// from b (c is no peer of a), as a consequence of a's order.
	c.writeScript("receivers", "ship", `read -r data
echo "$COATTAIL_SUBJECT $COATTAIL_SEQUENCE $COATTAIL_HOP $data" >>got
echo "$COATTAIL_PUBLISHER" >>from
`)

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
	ordersID := b.subscribe(a, "orders.>", "orders.log")
	shipID := c.subscribe(b, "shipping.requested", "ship")
	// Nothing published yet: c has received nothing, so what it gets below
	// is the cascade.
	if got := c.readLines("got"); len(got) != 0 {
		t.Fatalf("c received %q before anything was published", got)
	}

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
	aID, bID := a.peerID(), b.peerID()
	if got, want := b.readLines("from"), []string{aID, aID}; !slices.Equal(got, want) {
		t.Errorf("b's receiver saw publishers %q, want a (%s) twice", got, aID)
	}
	if got, want := c.readLines("from"), []string{bID, bID}; !slices.Equal(got, want) {
		t.Errorf("c's receiver saw publishers %q, want b (%s) twice", got, bID)
	}
	// Each hop's queue got exactly the two publications and was drained:
	// no further run of either receiver is pending.
	a.waitDrained(ordersID, 2, deliveryTimeout)
	b.waitDrained(shipID, 2, deliveryTimeout)

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
	// The loop ran on other subjects: the cascade's receivers still ran
	// exactly once per order.
	if got := b.readLines("got"); len(got) != 2 {
		t.Errorf("b's orders receiver ran %d times in all, want 2: %q", len(got), got)
	}
	if got := c.readLines("got"); len(got) != 2 {
		t.Errorf("c's shipping receiver ran %d times in all, want 2: %q", len(got), got)
	}
}

func TestSubsWildcards(t *testing.T) {
	t.Parallel()
	a, b := newInstance(t, "a"), newInstance(t, "b")
	// Each pattern with the subjects it must receive, in publication
	// order; everything else published must not reach it.
	patterns := []struct {
		pattern, receiver string
		want              []string
	}{
		{"orders.*", "star", []string{"orders.new", "orders.eu", "orders.end"}},
		{"orders.>", "tail", []string{"orders.new", "orders.new.eu", "orders.de.eu", "orders.new.eu.x", "orders.eu", "orders.end"}},
		{">", "all", nil}, // every subject
		{"orders.*.eu", "mid", []string{"orders.new.eu", "orders.de.eu"}},
		{"*.new", "first", []string{"orders.new", "ordersx.new", "billing.new"}},
		{"shipping.>", "none", []string{}},
	}
	// The subjects, with how many of the patterns above match each. The
	// near misses: "orders" (no token for * or >), "ordersx.new" (a prefix
	// that is not a token), "x.orders.new" (the pattern is anchored),
	// "orders.new.eu.x" (* is one token, not several), "orders.eu" (too
	// short for orders.*.eu).
	subjects := []struct {
		subject string
		matches int
	}{
		{"orders.new", 4}, {"orders.new.eu", 3}, {"billing.x", 1}, {"orders", 1},
		{"ordersx.new", 2}, {"x.orders.new", 1}, {"orders.de.eu", 3},
		{"orders.new.eu.x", 2}, {"billing.new", 2}, {"orders.eu", 3}, {"orders.end", 3},
	}
	for k := range patterns {
		if patterns[k].want == nil {
			for _, p := range subjects {
				patterns[k].want = append(patterns[k].want, p.subject)
			}
		}
		b.recordingReceiver(patterns[k].receiver, patterns[k].receiver+".txt")
	}
	a.start()
	b.start()
	b.addPeer(a) // default: subscribe to everything
	ids := make([]string, len(patterns))
	for k, p := range patterns {
		ids[k] = b.subscribe(a, p.pattern, p.receiver)
	}

	for _, p := range subjects {
		out := a.mustRun("action", "publish", "--action", p.subject, "--data", `"`+p.subject+`"`)
		if want := fmt.Sprintf("published to %d subscription(s)", p.matches); !strings.Contains(out, want) {
			t.Errorf("publish %s printed %q, want %q", p.subject, out, want)
		}
	}
	// Once a's queue for a subscription holds exactly the matching
	// publications and b acked them all, its receiver has run for each
	// and will run for nothing more: the files are final.
	for k, p := range patterns {
		a.waitDrained(ids[k], uint64(len(p.want)), deliveryTimeout)
		var want []string
		for n, subj := range p.want {
			want = append(want, fmt.Sprintf(`%s %d 0 "%s"`, subj, n+1, subj))
		}
		if got := b.readLines(p.receiver + ".txt"); !slices.Equal(got, want) {
			t.Errorf("%s (%s) received\n  %q\nwant exactly\n  %q", p.pattern, p.receiver, got, want)
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
// data equal to the sequence, and raw.txt (every run of the receiver,
// before its own de-duplication) every sequence 1..n in order, nothing
// skipped, each exactly once but for re-runs of what was in flight at a
// kill: inFlight holds, per kill, the last sequence raw.txt showed right
// after it. The run of that one or of the next (started, not yet logged)
// may have finished without its progress being saved, so one of them may
// run once more; any other repeat is the product running a receiver
// twice.
func checkExactlyOnce(t *testing.T, i *instance, n int, inFlight []int) {
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
	used := make([]bool, len(inFlight))
	prev, dups := 0, 0
	for k, l := range raw {
		s, err := strconv.Atoi(l)
		if err != nil {
			t.Fatalf("raw.txt line %d: %q", k+1, l)
		}
		switch {
		case s == prev:
			dups++
			j := slices.IndexFunc(inFlight, func(f int) bool { return f == s || f+1 == s })
			for j >= 0 && used[j] {
				next := slices.IndexFunc(inFlight[j+1:], func(f int) bool { return f == s || f+1 == s })
				if next < 0 {
					j = -1
					break
				}
				j += 1 + next
			}
			if j < 0 {
				t.Errorf("raw.txt line %d: the receiver ran sequence %d again, which was not in flight at a kill (in flight at the kills: %v)", k+1, s, inFlight)
				continue
			}
			used[j] = true
		case s != prev+1:
			t.Fatalf("raw.txt line %d: sequence %d after %d (want in order, nothing skipped)", k+1, s, prev)
		}
		prev = s
	}
	if prev != n {
		t.Errorf("raw.txt ends at sequence %d, want %d", prev, n)
	}
	t.Logf("%d publications, %d receiver runs (%d re-runs of an in-flight publication, %d kills)", n, len(raw), dups, len(inFlight))
}

// lastRaw is the last sequence in raw.txt, 0 when none.
func lastRaw(t *testing.T, i *instance) int {
	t.Helper()
	l := last(i.readLines("raw.txt"))
	if l == "" {
		return 0
	}
	n, err := strconv.Atoi(l)
	if err != nil {
		t.Fatalf("raw.txt: last line %q", l)
	}
	return n
}

func TestSubsSubscriberKilledMidStream(t *testing.T) {
	t.Parallel()
	const total = 10_000
	a, b := newInstance(t, "a"), newInstance(t, "b")
	b.writeScript("receivers", "apply", idempotentReceiver)
	a.start()
	b.start()
	b.addPeer(a, "--subscribable", "bulk.>")
	id := b.subscribe(a, "bulk.>", "apply")
	begin := time.Now()

	// Three kills at random moments; publications arrive in batches while
	// delivery is under way, and one batch while b is down. Each kill must
	// land in the middle of the stream: after the restarted b ran its
	// receiver at least once, and with publications still to run. The
	// thresholds leave hundreds of publications (seconds of receiver runs)
	// after the kill; the assertions make sure of it.
	var inFlight []int // the last sequence run at each kill
	published := 0
	kill := func(n, atLeast int) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Minute)
		for lastRaw(t, b) < atLeast {
			if time.Now().After(deadline) {
				t.Fatalf("kill %d: the receiver ran up to sequence %d, waited for %d", n, lastRaw(t, b), atLeast)
			}
			time.Sleep(5 * time.Millisecond) // poll closely: the kill lands near atLeast
		}
		killAndWait(t, b.pid)
		k := lastRaw(t, b)
		prev := 0
		if len(inFlight) > 0 {
			prev = inFlight[len(inFlight)-1]
		}
		if k <= prev+1 {
			t.Fatalf("kill %d landed at sequence %d: the restarted subscriber had run nothing since the previous kill at %d", n, k, prev)
		}
		if k >= published-1 {
			t.Fatalf("kill %d landed at sequence %d of %d published: after the stream, not in the middle of it", n, k, published)
		}
		inFlight = append(inFlight, k)
		t.Logf("kill %d at sequence %d of %d published (%v)", n, k, published, time.Since(begin).Round(time.Millisecond))
	}
	publish := func(from, to int) {
		t.Helper()
		a.mustPublishRange("bulk.x", from, to)
		published = to
	}
	publish(1, 4000)
	kill(1, 100+rand.IntN(2500))
	b.start()
	publish(4001, 7000)
	kill(2, 4200+rand.IntN(1800))
	publish(7001, total)
	b.start()
	kill(3, 7200+rand.IntN(2000))
	b.start()

	b.waitLines("applied.txt", total, 4*time.Minute)
	// Every publication acked: no run of the receiver is pending, so
	// raw.txt is final.
	a.waitDrained(id, total, deliveryTimeout)
	t.Logf("all %d applied after %v", total, time.Since(begin).Round(time.Millisecond))
	checkExactlyOnce(t, b, total, inFlight)
	if subs := b.subscriptions(); len(subs) != 1 || subs[0].LastSeq != total {
		t.Errorf("subscriptions list = %+v, want last_seq %d", subs, total)
	}
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
	const first, total = 2000, 2500
	a, b := newInstance(t, "a"), newInstance(t, "b")
	a.fixPort() // b must find a again after its restart
	b.writeScript("receivers", "apply", idempotentReceiver)
	a.start()
	b.start()
	b.addPeer(a, "--subscribable", "bulk.>")
	id := b.subscribe(a, "bulk.>", "apply")
	begin := time.Now()

	// Accepted means durable: kill -9 the moment the command returns,
	// long before b can have run them all, so most of what was accepted
	// must come out of the datastore of the restarted publisher.
	a.mustPublishRange("bulk.x", 1, first)
	killAndWait(t, a.pid)
	k1 := lastRaw(t, b)
	t.Logf("publisher killed after accepting %d, with %d run at b", first, k1)
	if k1 >= first-1 {
		t.Fatalf("b had run %d of %d when the publisher was killed: the kill did not come before delivery ended", k1, first)
	}
	// Accepted while the service is down: publish writes the queue itself.
	a.mustPublishRange("bulk.x", first+1, total)
	a.start()

	// Killed again in the middle of delivering: once the restarted
	// publisher has delivered some (so deliveries and acks are in flight),
	// and with many still queued.
	atLeast := k1 + 200 + rand.IntN(800)
	deadline := time.Now().Add(3 * time.Minute)
	for lastRaw(t, b) < atLeast {
		if time.Now().After(deadline) {
			t.Fatalf("the restarted publisher delivered up to %d, waited for %d", lastRaw(t, b), atLeast)
		}
		time.Sleep(5 * time.Millisecond)
	}
	killAndWait(t, a.pid)
	k2 := lastRaw(t, b)
	t.Logf("publisher killed again with %d of %d run at b", k2, total)
	if k2 >= total-1 {
		t.Fatalf("b had run %d of %d at the second kill: it did not land in the middle of delivery", k2, total)
	}
	a.start()

	b.waitLines("applied.txt", total, 3*time.Minute)
	a.waitDrained(id, total, deliveryTimeout)
	t.Logf("all %d applied after %v", total, time.Since(begin).Round(time.Millisecond))
	// The subscriber was never killed, so even the raw runs are exactly
	// once: what the restarted publisher resends is dropped as duplicate
	// before the receiver.
	checkExactlyOnce(t, b, total, nil)
}

// TestSubsStoppedSubscriberDoesNotBlockOthers: of four subscribers, d is
// stopped (its service exits: unreachable) and e hangs (SIGSTOP: its
// connection and delivery stream stay open but nothing reads them, and the
// publications are large enough to fill the stream's flow-control window).
// b and c must receive every publication while d and e are still down —
// the publisher waiting for either would never get there — and d and e
// catch up, exactly once and in order, when they return.
func TestSubsStoppedSubscriberDoesNotBlockOthers(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	subs := []*instance{newInstance(t, "b"), newInstance(t, "c"), newInstance(t, "d"), newInstance(t, "e")}
	a.start()
	ids := map[*instance]string{}
	for _, s := range subs {
		s.recordingReceiver("rec", "got")
		s.start()
		s.addPeer(a, "--subscribable", "news.>")
		ids[s] = s.subscribe(a, "news.>", "rec")
	}
	b, c, d, e := subs[0], subs[1], subs[2], subs[3]
	// e hangs with its delivery stream open.
	checkFor(t, deliveryTimeout, func() error {
		if s, ok := a.subscriberFor(ids[e]); !ok || !s.Connected {
			return fmt.Errorf("e's subscription is not connected at a: %+v", s)
		}
		return nil
	})
	ePid := e.pid
	if err := syscall.Kill(ePid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// Before e's own clean-up (which stops it): a stopped process would
	// not answer `service stop`.
	t.Cleanup(func() { _ = syscall.Kill(ePid, syscall.SIGCONT) })
	d.mustRun("service", "stop")

	// 16 KiB each: a batch is far more than a stream's flow-control window
	// holds, so a deliverer writing to e blocks.
	pad := strings.Repeat("x", 16<<10)
	line := func(k int) string { return fmt.Sprintf(`{"n":%d,"pad":"%s"}`, k, pad) }
	want := func(n int) []string {
		var out []string
		for k := 1; k <= n; k++ {
			out = append(out, fmt.Sprintf("news.today %d 0 %s", k, line(k)))
		}
		return out
	}
	// brief shortens receiver lines for failure messages.
	brief := func(lines []string) []string {
		var out []string
		for _, l := range lines {
			out = append(out, strings.Replace(l, pad, "…", 1))
		}
		return out
	}
	const batch = 50
	for upTo := batch; upTo <= 2*batch; upTo += batch {
		var lines []string
		for k := upTo - batch + 1; k <= upTo; k++ {
			lines = append(lines, line(k))
		}
		// Returns although two subscribers do not take anything.
		if code, stderr := a.publishStdin("news.today", lines); code != 0 {
			t.Fatalf("publish %d..%d: exit %d: %s", upTo-batch+1, upTo, code, stderr)
		}
		// b and c get all of it, exactly, while d and e are still down.
		for _, s := range []*instance{b, c} {
			if got := s.waitLines("got", upTo, deliveryTimeout); !slices.Equal(got, want(upTo)) {
				t.Fatalf("%s received %q, want 1..%d in order, once each", s.name, brief(got), upTo)
			}
		}
		if !processAlive(ePid) || processAlive(d.pid) {
			t.Fatalf("e (pid %d) must still be alive and hung, d (pid %d) stopped", ePid, d.pid)
		}
		// Nothing reached d or e, so all of it waits in their queues.
		for _, s := range []*instance{d, e} {
			q, ok := a.subscriberFor(ids[s])
			if !ok {
				t.Fatalf("a's subscribers list lost %s's subscription %s", s.name, ids[s])
			}
			if q.Depth != uint64(upTo) || q.Acked != 0 {
				t.Errorf("after %d publications, %s's queue_depth = %d, acked %d; want %d and 0", upTo, s.name, q.Depth, q.Acked, upTo)
			}
			if s == e && (!q.Connected || q.Delivered >= uint64(upTo)) {
				// The point of e: its stream is open and a write to it is
				// stuck on flow control, not finished or failed.
				t.Errorf("after %d publications, e's stream at a: connected %v, %d written; want still connected and stalled (fewer written)", upTo, q.Connected, q.Delivered)
			}
			if got := s.readLines("got"); len(got) != 0 {
				t.Errorf("%s, down, ran its receiver: %q", s.name, brief(got))
			}
		}
	}

	// Back: d restarts, e resumes; both catch up.
	d.start()
	if err := syscall.Kill(ePid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	for _, s := range subs {
		a.waitDrained(ids[s], 2*batch, 2*deliveryTimeout)
	}
	for _, s := range subs {
		if got := s.readLines("got"); !slices.Equal(got, want(2*batch)) {
			t.Errorf("%s received %d: %q, want 1..%d in order, once each", s.name, len(got), brief(got), 2*batch)
		}
	}
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

	// Replay while still broken: fails, and the letter stays; the
	// receiver's stderr lines come with its name, as an action's do.
	b.mustFail([]string{"deadletters", "replay", dls[0].ID}, "[picky] cannot digest")
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
	// A --to that reaches nobody (a peer without a matching subscription)
	// says so on stderr; it is no error.
	if stdout, stderr, code := p1.run("action", "publish", "--action", "full.x", "--data", `"nobody"`, "--to", s2.peerID()); code != 0 ||
		!strings.Contains(stdout, "published to 0 subscription(s)") || !strings.Contains(stderr, `none of the --to peer(s) holds a subscription matching "full.x"`) {
		t.Errorf("publish --to a peer without a matching subscription: exit %d, stdout %q, stderr %q", code, stdout, stderr)
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
