package main

// Crash consistency, end to end: publisher and subscriber services are
// SIGKILLed at random moments during a stream of publications and
// restarted; every publication whose publish command succeeded must run
// the subscriber's receiver exactly once, in order.

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// crashReceiver follows the documented idempotent pattern: it remembers
// the last COATTAIL_SEQUENCE it applied and skips any sequence at or below
// it. It logs every raw invocation too, so the test can count re-runs. The
// lock is needed because a receiver runs in its own process group and
// outlives a SIGKILLed service, so the re-run by the restarted service may
// overlap the original run.
const crashReceiver = `input=$(cat)
d=$COATTAIL_INSTANCE
echo "$COATTAIL_SEQUENCE" >> "$d/invocations.log"
sleep 0.02
until mkdir "$d/recv.lock" 2>/dev/null; do sleep 0.01; done
last=$(cat "$d/last" 2>/dev/null || echo 0)
if [ "$COATTAIL_SEQUENCE" -gt "$last" ]; then
  printf '%s %s\n' "$COATTAIL_SEQUENCE" "$input" >> "$d/applied.log"
  echo "$COATTAIL_SEQUENCE" > "$d/last"
fi
rmdir "$d/recv.lock"
`

// appliedEntry is one line of the receiver's applied.log.
type appliedEntry struct {
	seq uint64
	n   int
}

func readApplied(t *testing.T, i *instance) []appliedEntry {
	t.Helper()
	b, err := os.ReadFile(i.path("applied.log"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []appliedEntry
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		seqS, data, ok := strings.Cut(l, " ")
		seq, err := strconv.ParseUint(seqS, 10, 64)
		var v struct{ N *int }
		if !ok || err != nil || json.Unmarshal([]byte(data), &v) != nil || v.N == nil {
			t.Fatalf("applied.log line %q is not \"<seq> {\\\"n\\\":N}\"", l)
		}
		out = append(out, appliedEntry{seq, *v.N})
	}
	return out
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// logTail logs the last n lines of the instance's service.log, to explain
// a failure.
func logTail(t *testing.T, i *instance, n int) {
	t.Helper()
	b, err := os.ReadFile(i.path("service.log"))
	if err != nil {
		t.Logf("%s: service.log: %v", i.name, err)
		return
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	t.Logf("%s: last lines of service.log:\n%s", i.name, strings.Join(lines[max(0, len(lines)-n):], "\n"))
}

func TestCrashConsistency(t *testing.T) {
	t.Parallel()
	pub, sub := newInstance(t, "pub"), newInstance(t, "sub")
	sub.writeScript("receivers", "recv", crashReceiver)
	// Fixed ports: a restarted publisher must be found where its token said
	// it listens (with --port 0 every restart would pick a new port).
	for _, i := range []*instance{pub, sub} {
		p := freePort(t)
		i.setConfig("listen", fmt.Sprintf(`["/ip4/127.0.0.1/tcp/%d", "/ip4/127.0.0.1/udp/%d/quic-v1"]`, p, p))
	}
	pub.start()
	sub.start()
	t.Cleanup(func() {
		if t.Failed() {
			for _, i := range []*instance{pub, sub} {
				logTail(t, i, 60)
			}
		}
	})
	tok := pub.issue("--subscribable", "orders.>")
	sub.mustRun("peer", "add", "--token", tok)
	sub.mustRun("action", "subscribe", "--peer", pub.peerID(), "--action", "orders.>", "--receiver", "recv")

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	var accepted []int           // n of every publication whose command exited 0, in order
	unaccepted := map[int]bool{} // publish failed: may or may not have been queued
	next := 0
	data := func() string { next++; return fmt.Sprintf(`{"n":%d}`, next) }
	publishOne := func() {
		d := data()
		_, stderr, code := pub.run("action", "publish", "--action", "orders.created", "--data", d)
		if code != 0 {
			t.Fatalf("publish %s with no kill in progress failed: %s", d, stderr)
		}
		accepted = append(accepted, next)
	}
	// A burst in one command (accepted as a whole) builds a backlog, so the
	// kill that follows lands while receivers are running.
	publishBurst := func() {
		var lines []string
		first := next + 1
		for range 4 + rng.IntN(8) {
			lines = append(lines, data())
		}
		_, stderr, code := pub.runStdin(strings.Join(lines, "\n")+"\n", "action", "publish", "--action", "orders.created", "--stdin")
		if code != 0 {
			t.Fatalf("publish --stdin failed: %s", stderr)
		}
		for n := first; n <= next; n++ {
			accepted = append(accepted, n)
		}
	}
	// jitter picks the kill moment. It is not synchronisation: any moment
	// must be safe, and varying it is the point.
	jitter := func() { time.Sleep(time.Duration(rng.IntN(120)) * time.Millisecond) }

	const rounds = 30
	subKills, pubKills := 0, 0
	for round := range rounds {
		publishBurst()
		for range rng.IntN(3) {
			publishOne()
		}
		if rng.IntN(2) == 0 {
			// Kill the publisher while one more publish is in flight.
			pubKills++
			d := data()
			p := pub.spawn("action", "publish", "--action", "orders.created", "--data", d)
			jitter()
			killAndWait(t, pub.pid)
			if code := p.wait(t); code == 0 {
				accepted = append(accepted, next)
			} else {
				unaccepted[next] = true
				t.Logf("round %d: publish %s interrupted by the kill: %s", round, d, strings.TrimSpace(p.stderr()))
			}
			// With the service down, publish writes the queue directly.
			for range rng.IntN(3) {
				publishOne()
			}
			pub.start()
		} else {
			subKills++
			jitter()
			killAndWait(t, sub.pid)
			for range rng.IntN(3) {
				publishOne() // queued at the publisher for the stopped subscriber
			}
			sub.start()
		}
	}
	publishBurst()

	var applied []appliedEntry
	checkFor(t, 3*time.Minute, func() error {
		applied = readApplied(t, sub)
		got := map[int]bool{}
		for _, e := range applied {
			got[e.n] = true
		}
		for _, n := range accepted {
			if !got[n] {
				return fmt.Errorf("accepted publication %d not applied yet (%d of %d accepted applied)", n, len(applied), len(accepted))
			}
		}
		return nil
	})

	// Exactly once, in order: the accepted publications, in the order
	// their commands succeeded; an interrupted one at most once.
	seen := map[int]bool{}
	var order []int
	var lastSeq uint64
	for _, e := range applied {
		if e.seq <= lastSeq {
			t.Fatalf("applied seq %d after %d", e.seq, lastSeq)
		}
		lastSeq = e.seq
		if seen[e.n] {
			t.Fatalf("publication %d applied twice", e.n)
		}
		seen[e.n] = true
		if !unaccepted[e.n] {
			order = append(order, e.n)
		}
	}
	if fmt.Sprint(order) != fmt.Sprint(accepted) {
		t.Fatalf("applied order differs from accepted order:\napplied  %v\naccepted %v", order, accepted)
	}

	// The receiver re-ran only for what was in flight when a subscriber
	// was killed: at most one extra invocation per subscriber kill.
	raw, err := os.ReadFile(sub.path("invocations.log"))
	if err != nil {
		t.Fatal(err)
	}
	runs := map[string]int{}
	extra := 0
	for _, s := range strings.Fields(string(raw)) {
		runs[s]++
		if runs[s] > 1 {
			extra++
		}
	}
	for _, e := range applied {
		if runs[strconv.FormatUint(e.seq, 10)] == 0 {
			t.Errorf("seq %d applied without a logged invocation", e.seq)
		}
	}
	t.Logf("%d publications accepted, %d interrupted; %d publisher and %d subscriber kills; %d receiver runs, %d re-runs",
		len(accepted), len(unaccepted), pubKills, subKills, len(strings.Fields(string(raw))), extra)
	if extra > subKills {
		t.Errorf("%d receiver re-runs for %d subscriber kills: more than the one in flight was re-run", extra, subKills)
	}
}
