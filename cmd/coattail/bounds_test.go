package main

// End-to-end tests of a publisher pushed past its bounds, with real
// service processes on loopback: a full queue under queue_full: reject.

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestPublishStdinFillsQueueToBound: `action publish --stdin` of more
// lines than the queue bound into an empty queue, its subscriber away.
// The lines go in batches, but each line is one publication: the first
// queue_bound of them are queued and the first that does not fit is named.
// (A batch larger than the bound was refused whole, at every try: nothing
// was queued, and the error said the empty queue "has reached its bound".)
// When the subscriber returns, it gets exactly those, once, in order.
func TestPublishStdinFillsQueueToBound(t *testing.T) {
	t.Parallel()
	p, s := newInstance(t, "p"), newInstance(t, "s")
	p.setConfig("queue_bound", "5")
	s.recordingReceiver("rec", "got")
	p.start()
	s.start()
	s.addPeer(p, "--subscribable", "fill.x")
	id := s.subscribe(p, "fill.x", "rec")
	s.mustRun("service", "stop")

	lines := make([]string, 8)
	for k := range lines {
		lines[k] = strconv.Itoa(k + 1)
	}
	code, stderr := p.publishStdin("fill.x", lines)
	if code == 0 {
		t.Fatalf("publish --stdin of 8 lines into a queue bound to 5 succeeded")
	}
	for _, want := range []string{"5 line(s) before stdin line 6 were published", "queue full", "bound of 5"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("publish --stdin of 8 lines into a queue bound to 5: stderr lacks %q: %s", want, stderr)
		}
	}
	if sub, ok := p.subscriberFor(id); !ok || sub.Depth != 5 {
		t.Fatalf("after publishing past the bound: subscriber %+v (found %v), want queue_depth 5", sub, ok)
	}
	// Full now: the next line is refused, and nothing of it queued.
	if code, stderr := p.publishStdin("fill.x", []string{"9"}); code == 0 ||
		!strings.Contains(stderr, "0 line(s) before stdin line 1 were published") || !strings.Contains(stderr, "reached its bound of 5") {
		t.Errorf("publish --stdin into the full queue: exit %d, stderr %q", code, stderr)
	}

	s.start()
	got := s.waitLines("got", 5, deliveryTimeout)
	p.waitDrained(id, 5, deliveryTimeout)
	var data []string
	for _, l := range s.readLines("got") {
		f := strings.Fields(l)
		data = append(data, f[len(f)-1])
	}
	if want := []string{"1", "2", "3", "4", "5"}; !slices.Equal(data, want) {
		t.Errorf("the subscriber received %q (lines %q), want the first 5 lines once each, in order", data, got)
	}
}

// TestDropOldestPublishSaysWhatItDropped: a publication into a full queue
// under limits.queue_full: drop_oldest says how many undelivered queue
// entries it pushed out, here, at a peer (--peer) and as the notification
// of a perform (here and at a peer). It said they were all queued: a batch
// larger than the bound reported its own first publications, dropped at
// once, as queued, and only the dropped counter told otherwise.
func TestDropOldestPublishSaysWhatItDropped(t *testing.T) {
	t.Parallel()
	p, s, r := newInstance(t, "p"), newInstance(t, "s"), newInstance(t, "r")
	p.setConfig("queue_bound", "5")
	p.setConfig("queue_full", "drop_oldest")
	p.writeScript("actions", "drop.x", "cat\n")
	s.recordingReceiver("rec", "got")
	p.start()
	s.start()
	r.start()
	s.addPeer(p, "--subscribable", "drop.x")
	id := s.subscribe(p, "drop.x", "rec")
	s.mustRun("service", "stop")
	r.addPeer(p, "--publishable", "drop.x", "--performable", "drop.x")

	note := func(n int) string {
		if n == 1 {
			return "; 1 undelivered queue entry dropped to make room (limits.queue_full: drop_oldest)"
		}
		return fmt.Sprintf("; %d undelivered queue entries dropped to make room (limits.queue_full: drop_oldest)", n)
	}
	lines := func(from, to int) string {
		var b strings.Builder
		for k := from; k <= to; k++ {
			fmt.Fprintf(&b, "%d\n", k)
		}
		return b.String()
	}
	// Room: nothing dropped, nothing said.
	if out := p.mustRun("action", "publish", "--action", "drop.x", "--data", "0"); out != "published to 1 subscription(s)\n" {
		t.Errorf("publish into a queue with room printed %q", out)
	}
	// 8 more into a queue of 1 bound to 5: 0 and the batch's own 1..3 go.
	if stdout, stderr, code := p.runStdin(lines(1, 8), "action", "publish", "--action", "drop.x", "--stdin"); code != 0 ||
		stdout != "published 8 message(s) to 8 subscription queue entries"+note(4)+"\n" {
		t.Errorf("publish --stdin of 8 past the bound: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if out := p.mustRun("action", "publish", "--action", "drop.x", "--data", "9"); out != "published to 1 subscription(s)"+note(1)+"\n" {
		t.Errorf("publish into the full queue printed %q", out)
	}
	// At the peer: 7 into its full queue of 5.
	if stdout, stderr, code := r.runStdin(lines(10, 16), "action", "publish", "--action", "drop.x", "--stdin", "--peer", p.peerID()); code != 0 ||
		stdout != "published 7 message(s) to 7 subscription queue entries"+note(7)+"\n" {
		t.Errorf("publish --stdin --peer of 7 into the peer's full queue: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if stdout, stderr, code := r.run("action", "publish", "--action", "drop.x", "--data", "17", "--peer", p.peerID()); code != 0 ||
		stdout != "published to 1 subscription(s)"+note(1)+"\n" {
		t.Errorf("publish --peer into the peer's full queue: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	// perform --notify, at the peer and here: on stderr.
	if stdout, stderr, code := r.run("action", "perform", "--action", "drop.x", "--data", "18", "--notify", "--peer", p.peerID()); code != 0 ||
		!strings.Contains(stderr, "published to 1 subscription(s)"+note(1)+"\n") {
		t.Errorf("perform --notify --peer into the peer's full queue: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if stdout, stderr, code := p.run("action", "perform", "--action", "drop.x", "--data", "19", "--notify"); code != 0 ||
		!strings.Contains(stderr, "published to 1 subscription(s)"+note(1)+"\n") {
		t.Errorf("perform --notify into the full queue: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	// A publish --stdin that fails part way says what its batches before
	// the failure dropped.
	if stdout, stderr, code := p.runStdin(lines(20, 21)+"not json\n", "action", "publish", "--action", "drop.x", "--stdin"); code == 0 ||
		!strings.Contains(stderr, "stdin line 3 is not valid JSON: the 2 line(s) before it were published, none from it on"+note(2)+"\n") {
		t.Errorf("publish --stdin that fails at its third line, into the full queue: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	// As many as the counters say, and the newest five are queued.
	if c := p.counters(); c.Dropped != 4+1+7+1+1+1+2 {
		t.Errorf("counters.dropped = %d, want %d, what the publications said", c.Dropped, 4+1+7+1+1+1+2)
	}
	if sub, ok := p.subscriberFor(id); !ok || sub.Depth != 5 {
		t.Errorf("the subscription: %+v (found %v), want 5 queued", sub, ok)
	}
}

// TestDiskGivenBackAfterDrain: a publisher that queued a large backlog
// for a subscriber away gives the disk space back once the subscriber has
// it all and the instance is idle, although another subscriber, gone for
// good, still has a publication queued. The space of delivered publications
// stayed taken in the datastore's tables (64 MiB of the 80 MiB here; as
// much as the backlog in a longer outage, across restarts) until the disk
// ran low, when publications were refused until it was reclaimed.
func TestDiskGivenBackAfterDrain(t *testing.T) {
	t.Parallel()
	p, s, gone := newInstance(t, "p"), newInstance(t, "s"), newInstance(t, "gone")
	s.writeScript("receivers", "rec", `data=$(head -c 12); cat >/dev/null
echo "$COATTAIL_SEQUENCE $data" >>got
`)
	gone.recordingReceiver("rec", "got")
	p.start()
	s.start()
	gone.start()
	s.addPeer(p, "--subscribable", "big.x")
	id := s.subscribe(p, "big.x", "rec")
	s.mustRun("service", "stop")
	// Another subscriber, gone for good, with a publication queued: it
	// does not keep the space of what s was delivered.
	gone.addPeer(p, "--subscribable", "other.x")
	goneID := gone.subscribe(p, "other.x", "rec")
	gone.mustRun("service", "stop")
	p.mustRun("action", "publish", "--action", "other.x", "--data", "1")

	const n = 160 // of 512 KiB: 80 MiB
	lines := bigLines(n)
	if code, stderr := p.publishStdin("big.x", lines); code != 0 {
		t.Fatalf("publish: exit %d: %s", code, stderr)
	}
	if used := dirSize(t, p.path("data"), ""); used < n*(512<<10) {
		t.Fatalf("the publisher's data/ takes %d bytes with %d publications of 512 KiB queued", used, n)
	}

	s.start()
	s.waitLines("got", n, deliveryTimeout)
	p.waitDrained(id, n, deliveryTimeout)
	// Its tables, where the backlog went, shrink to what is live; the
	// write-ahead logs (up to three, kept for reuse) are not counted.
	tablesShrink(t, p, "the publisher's datastore tables still take %d bytes after its queue drained")
	if sub, ok := p.subscriberFor(goneID); !ok || sub.Depth != 1 {
		t.Errorf("the gone subscriber's queue: %+v (found %v), want its 1 publication still queued", sub, ok)
	}
	// It still works: a publication after the reclaim is delivered.
	p.mustRun("action", "publish", "--action", "big.x", "--data", `{"n":"after"}`)
	s.waitLastLine("got", `{"n":"after"`, deliveryTimeout) // its first 12 bytes
}

// TestDiskGivenBackAfterDeepQueueRemoved: revoking a subscription whose
// subscriber is away with a deep queue deletes the queue, and its disk
// space comes back once the publisher is idle. The publisher had compacted
// its tables while idle with the queue live in them, so the deletion left
// them at their size, short of the doubling that makes it compact again:
// the queues did not say how much they deleted, and the 80 MiB stayed on
// disk (until the tables doubled or the disk ran low).
func TestDiskGivenBackAfterDeepQueueRemoved(t *testing.T) {
	t.Parallel()
	p, s := newInstance(t, "p"), newInstance(t, "s")
	s.recordingReceiver("rec", "got")
	id := compactedBacklog(t, p, s, "rec", 160)
	p.mustRun("subscribers", "revoke", id)
	if _, ok := p.subscriberFor(id); ok {
		t.Fatalf("subscription %s still listed after subscribers revoke", id)
	}
	tablesShrink(t, p, "the publisher's tables still take %d bytes after the deep queue of a revoked subscription was deleted")
}

// TestDiskGivenBackAfterCompactedBacklogDrained: a subscriber away long
// enough for its publisher to compact its tables while idle, with the
// backlog live in them, comes back and drains it: the space comes back
// once the publisher is idle again. The drain left the tables at their
// size, short of the doubling that makes the publisher compact again, and
// deliveries were not counted as deletions at all: the backlog's space
// stayed taken (TestDiskGivenBackAfterDrain drains before any compaction).
func TestDiskGivenBackAfterCompactedBacklogDrained(t *testing.T) {
	t.Parallel()
	p, s := newInstance(t, "p"), newInstance(t, "s")
	s.writeScript("receivers", "rec", `data=$(head -c 12); cat >/dev/null
echo "$COATTAIL_SEQUENCE $data" >>got
`)
	const n = 160
	id := compactedBacklog(t, p, s, "rec", n)
	s.start()
	s.waitLines("got", n, deliveryTimeout)
	p.waitDrained(id, n, deliveryTimeout)
	tablesShrink(t, p, "the publisher's tables still take %d bytes after the backlog it had compacted drained")
}

// bigLines returns n publications of 512 KiB for publish --stdin:
// {"n":<1..n>,"p":"xxx…"}.
func bigLines(n int) []string {
	pad := strings.Repeat("x", 512<<10)
	lines := make([]string, n)
	for k := range lines {
		lines[k] = fmt.Sprintf(`{"n":%d,"p":"%s"}`, k+1, pad)
	}
	return lines
}

// tablesShrink waits until i's datastore tables take at most 16 MiB (the
// idle reclaimer gave the space of deleted entries back); why formats
// their size when they do not.
func tablesShrink(t *testing.T, i *instance, why string) {
	t.Helper()
	checkFor(t, deliveryTimeout, func() error {
		if used := dirSize(t, i.path("data"), ".sst"); used > 16<<20 {
			return fmt.Errorf(why, used)
		}
		return nil
	})
}

// dirSize is the total size of the regular files under dir whose names
// end in suffix.
func dirSize(t *testing.T, dir, suffix string) int64 {
	t.Helper()
	var total int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed meanwhile (a compacted table)
			}
			return err
		}
		if d.Type().IsRegular() && strings.HasSuffix(path, suffix) {
			if info, err := d.Info(); err == nil {
				total += info.Size()
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

// TestPublishAtPeerFillsQueueToBound: `action publish --peer` of more
// publications than the peer's queue bound into its empty queue stores the
// first queue_bound of them and says so; the frame carrying them all was
// refused at every try ("stored 0 of 8 … retry later").
func TestPublishAtPeerFillsQueueToBound(t *testing.T) {
	t.Parallel()
	p, s, r := newInstance(t, "p"), newInstance(t, "s"), newInstance(t, "r")
	p.setConfig("queue_bound", "5")
	s.recordingReceiver("rec", "got")
	p.start()
	s.start()
	r.start()
	s.addPeer(p, "--subscribable", "fill.x")
	id := s.subscribe(p, "fill.x", "rec")
	s.mustRun("service", "stop")
	r.addPeer(p, "--publishable", "fill.x")

	lines := []string{"1", "2", "3", "4", "5", "6", "7", "8"}
	code, stderr := r.publishStdin("fill.x", lines, "--peer", p.peerID())
	if code == 0 || !strings.Contains(stderr, "stored 5 of 8 publications (the first 5, in order)") || !strings.Contains(stderr, "full") {
		t.Fatalf("publish --peer of 8 into a queue bound to 5: exit %d, stderr %q; want 5 of 8 stored and the queue full", code, stderr)
	}
	if sub, ok := p.subscriberFor(id); !ok || sub.Depth != 5 {
		t.Fatalf("after publishing past the bound: subscriber %+v (found %v), want queue_depth 5", sub, ok)
	}
	s.start()
	s.waitLines("got", 5, deliveryTimeout)
	p.waitDrained(id, 5, deliveryTimeout)
	var data []string
	for _, l := range s.readLines("got") {
		f := strings.Fields(l)
		data = append(data, f[len(f)-1])
	}
	if want := []string{"1", "2", "3", "4", "5"}; !slices.Equal(data, want) {
		t.Errorf("the subscriber received %q, want the first 5 once each, in order", data)
	}
}

// Dropping dead letters gives their disk space back once the subscriber
// is idle: deleting records does not grow the tables, so the reclaim that
// waits for them to double never came (80 MiB of dropped dead letters
// stayed on disk until the disk ran low).
func TestDiskGivenBackAfterDeadLettersDropped(t *testing.T) {
	t.Parallel()
	p, s := newInstance(t, "p"), newInstance(t, "s")
	s.setConfig("receiver_retries", "0")
	s.writeScript("receivers", "fails", "cat >/dev/null\necho no >&2\nexit 1\n")
	p.start()
	s.start()
	s.addPeer(p, "--subscribable", "big.x")
	s.subscribe(p, "big.x", "fails")

	const n = 160 // of 512 KiB: 80 MiB
	lines := bigLines(n)
	if code, stderr := p.publishStdin("big.x", lines); code != 0 {
		t.Fatalf("publish: exit %d: %s", code, stderr)
	}
	checkFor(t, deliveryTimeout, func() error {
		if got := len(s.deadLetters()); got != n {
			return fmt.Errorf("%d dead letters, want %d", got, n)
		}
		return nil
	})
	// Parked: in the subscriber's tables (compacted once they doubled).
	checkFor(t, deliveryTimeout, func() error {
		if used := dirSize(t, s.path("data"), ".sst"); used < n*(512<<10)/2 {
			return fmt.Errorf("the subscriber's tables take %d bytes with %d dead letters of 512 KiB", used, n)
		}
		return nil
	})
	if out := s.mustRun("deadletters", "drop", "--all"); !strings.Contains(out, fmt.Sprint(n)) {
		t.Fatalf("deadletters drop --all printed %q", out)
	}
	tablesShrink(t, s, "the subscriber's tables still take %d bytes after its dead letters were dropped")
}

// compactedBacklog starts p and s, subscribes s's receiver to big.x at p,
// stops s, queues n publications of 512 KiB for it at p (160: 80 MiB) and
// waits until p, idle, has compacted its tables with that backlog live in
// them. It returns the subscription's id.
func compactedBacklog(t *testing.T, p, s *instance, receiver string, n int) string {
	t.Helper()
	p.start()
	s.start()
	s.addPeer(p, "--subscribable", "big.x")
	id := s.subscribe(p, "big.x", receiver)
	s.mustRun("service", "stop")
	if code, stderr := p.publishStdin("big.x", bigLines(n)); code != 0 {
		t.Fatalf("publish: exit %d: %s", code, stderr)
	}
	checkFor(t, deliveryTimeout, func() error {
		if !p.logContains("compacted the datastore while idle") {
			return errors.New("the publisher did not compact its tables while idle with a deep queue")
		}
		return nil
	})
	if used := dirSize(t, p.path("data"), ".sst"); used < int64(n)*(512<<10) {
		t.Fatalf("the publisher's tables take %d bytes with %d publications of 512 KiB queued", used, n)
	}
	return id
}

// A publish --stdin line over the service's limits.max_payload stops it
// with every line before it published, wherever batching put it, as a line
// that is not JSON does: the service refused its whole batch, the lines
// before it too, and the error named an "item" of a batch the user never
// saw.
func TestPublishStdinStopsAtOversizeLine(t *testing.T) {
	t.Parallel()
	p := newInstance(t, "p")
	p.setConfig("max_payload", "1KiB")
	p.start()
	big := `"` + strings.Repeat("x", 2000) + `"`
	stdout, stderr, code := p.runStdin("1\n\n2\n"+big+"\n4\n", "action", "publish", "--action", "big.x", "--stdin")
	if code != 1 || stdout != "" || !strings.Contains(stderr, "stdin line 4 was refused: ") ||
		!strings.Contains(stderr, "over limits.max_payload") || !strings.Contains(stderr, "the 2 line(s) before it were published, none from it on") ||
		strings.Contains(stderr, "item") {
		t.Errorf("publish --stdin with line 4 over max_payload: exit %d, stdout %q, stderr %q; want lines 1-3 published and line 4 named", code, stdout, stderr)
	}
	if c := p.counters(); c.Published != 2 {
		t.Errorf("the service counts %d publications, want the 2 lines before the one refused", c.Published)
	}
}

// The same with --peer, the line over the peer's limits.max_payload: the
// peer refused the frame it went in, and its error named no line, so the
// CLI could say neither which line it was nor that the lines batched with
// it before it were not published. The peer names the publication (publish
// 1.3.0), the service maps it back to the line, and the CLI publishes the
// lines before it and names it, as without --peer.
func TestPublishStdinPeerStopsAtOversizeLine(t *testing.T) {
	t.Parallel()
	p, r := newInstance(t, "p"), newInstance(t, "r")
	p.setConfig("max_payload", "1KiB")
	p.start()
	r.start()
	r.addPeer(p, "--publishable", "big.x")
	big := `"` + strings.Repeat("x", 2000) + `"`
	stdout, stderr, code := r.runStdin("1\n\n2\n"+big+"\n4\n", "action", "publish", "--action", "big.x", "--stdin", "--peer", p.peerID())
	if code != 1 || stdout != "" || !strings.Contains(stderr, "stdin line 4 was refused: ") ||
		!strings.Contains(stderr, "over limits.max_payload") || !strings.Contains(stderr, "the 2 line(s) before it were published, none from it on") ||
		strings.Contains(stderr, "item") || strings.Contains(stderr, "of the batch") {
		t.Errorf("publish --stdin --peer with line 4 over the peer's max_payload: exit %d, stdout %q, stderr %q; want lines 1-3 published and line 4 named", code, stdout, stderr)
	}
	if c := p.counters(); c.Published != 2 {
		t.Errorf("the peer counts %d publications, want the 2 lines before the one refused", c.Published)
	}
}
