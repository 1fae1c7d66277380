package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
)

// A loop a → b → a of executable receivers, with retries configured: the
// receiver whose cascade limits.max_hops refuses fails (the nested
// `coattail action perform` exits non-zero, and so does the receiver).
// The service refused that cascade itself, so it knows why the receiver
// failed: the publication is parked after that one run, its dead letter
// naming the hop limit, instead of being run again on every retry (each
// refused the same, as the hop is the publication's). A replay of the
// dead letter is refused the same, and says so.
func TestSubsHopLimitFailureNotRetried(t *testing.T) {
	t.Parallel()
	a, b := newInstance(t, "a"), newInstance(t, "b")
	for _, i := range []*instance{a, b} {
		i.setConfig("max_hops", "3")
		i.setConfig("receiver_retries", "2")
		i.setConfig("receiver_backoff", "20ms")
	}
	for _, x := range []struct {
		i    *instance
		mine string
	}{{a, "loop.a"}, {b, "loop.b"}} {
		x.i.writeScript("actions", x.mine, "exec cat\n")
		x.i.writeScript("receivers", "loop.r", `read -r data
echo "$COATTAIL_SUBJECT $COATTAIL_SEQUENCE $COATTAIL_HOP $data${COATTAIL_REPLAY:+ replay}" >>loop.txt
exec coattail action perform --quiet --action `+x.mine+` --data "$data" --notify >/dev/null
`)
	}
	a.start()
	b.start()
	b.addPeer(a, "--subscribable", "loop.a")
	a.addPeer(b, "--subscribable", "loop.b")
	a.subscribe(b, "loop.b", "loop.r")
	b.subscribe(a, "loop.a", "loop.r")

	// hop 0 reaches b, 1 a, 2 b, 3 a; a's receiver then performs at hop
	// 4 > max_hops 3, which is refused, and it exits 1. Nothing is in
	// flight once the dead letter shows: the files are final.
	a.mustRun("action", "perform", "--quiet", "--action", "loop.a", "--data", `"ping"`, "--notify")
	var dls []deadLetterJSON
	checkFor(t, deliveryTimeout, func() error {
		dls = a.deadLetters()
		if len(dls) == 0 {
			return fmt.Errorf("no dead letter at a yet; a's loop.txt %q, b's %q", a.readLines("loop.txt"), b.readLines("loop.txt"))
		}
		return nil
	})
	if len(dls) != 1 || dls[0].Subject != "loop.b" || dls[0].Seq != 2 || dls[0].Attempts != 1 ||
		!strings.HasPrefix(dls[0].Error, "cascade hop limit: ") || !strings.Contains(dls[0].Error, `perform of "loop.a" at hop 4 was refused (limits.max_hops 3)`) {
		t.Errorf("dead letters at a = %+v, want loop.b seq 2 parked after 1 attempt for the cascade hop limit", dls)
	}
	// One run per instance and hop: the run at the limit is not retried.
	if got, want := a.readLines("loop.txt"), []string{`loop.b 1 1 "ping"`, `loop.b 2 3 "ping"`}; !slices.Equal(got, want) {
		t.Errorf("a's loop receiver ran with %q, want %q", got, want)
	}
	if got, want := b.readLines("loop.txt"), []string{`loop.a 1 0 "ping"`, `loop.a 2 2 "ping"`}; !slices.Equal(got, want) {
		t.Errorf("b's loop receiver ran with %q, want %q", got, want)
	}
	// Logged once: one refusal, no retry, one park saying why.
	if n := countLogLines(t, a, `"cascade stopped"`); n != 1 {
		t.Errorf("a's service.log has %d \"cascade stopped\" lines, want 1", n)
	}
	if n := countLogLines(t, a, `"receiver failed; will retry"`); n != 0 {
		t.Errorf("a's service.log has %d \"receiver failed; will retry\" lines, want none", n)
	}
	if !a.logContains(`"receiver failed after the hop limit refused its cascade; publication parked in dead letters without retries"`, `"attempts":1`) {
		t.Error("a's service.log does not say the publication was parked for the hop limit")
	}
	if dl := b.deadLetters(); len(dl) != 0 {
		t.Errorf("b parked %+v", dl)
	}
	if t.Failed() {
		t.FailNow()
	}

	// A replay runs the receiver at the publication's hop: its cascade is
	// refused again, and the replay says so and what would change it.
	_, stderr, code := a.run("deadletters", "replay", dls[0].ID)
	if code == 0 || !strings.Contains(stderr, "dead letter "+dls[0].ID+" failed again on the cascade hop limit") ||
		!strings.Contains(stderr, "raise limits.max_hops") || !strings.Contains(stderr, "deadletters drop "+dls[0].ID) {
		t.Errorf("replay of the hop-limited dead letter: exit %d, stderr %q; want a failure naming the hop limit", code, stderr)
	}
	if got, want := a.readLines("loop.txt"), []string{`loop.b 1 1 "ping"`, `loop.b 2 3 "ping"`, `loop.b 2 3 "ping" replay`}; !slices.Equal(got, want) {
		t.Errorf("after the replay a's loop receiver ran with %q, want %q", got, want)
	}
	dls = a.deadLetters()
	if len(dls) != 1 || dls[0].Attempts != 2 || !strings.HasPrefix(dls[0].Error, "cascade hop limit: ") {
		t.Errorf("dead letters at a after the replay = %+v, want it kept with 2 attempts, failing on the hop limit", dls)
	}
	if got := b.readLines("loop.txt"); len(got) != 2 {
		t.Errorf("b's loop receiver ran %d times after the replay, want 2: %q", len(got), got)
	}
}

// countLogLines counts the lines of i's service.log that hold want (as
// often as it occurs: a log message occurs once in its line).
func countLogLines(t *testing.T, i *instance, want string) int {
	t.Helper()
	b, err := os.ReadFile(i.path("service.log"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), want)
}
