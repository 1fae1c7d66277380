package main

// Crash consistency, end to end: publisher and subscriber services are
// SIGKILLed while several publish commands (local, and remote through the
// subscriber) are in flight, and restarted. The contract checked:
//   - a publication whose publish command exited 0 runs the subscriber's
//     receiver exactly once;
//   - one whose command failed (interrupted by the kill) is applied at
//     most once, never twice;
//   - publications are applied in the order their commands ran (a command
//     that ended before another started is applied first), the
//     interrupted-but-stored ones included, and a batch in line order;
//   - sequence numbers only grow across restarts and are never reused:
//     each seq carries one publication, each publication one seq, and
//     every seq the publisher queued reached the receiver.
// The test fails if no kill interrupted a publish: that case is the point.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
echo "$COATTAIL_SEQUENCE $input" >> "$d/invocations.log"
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
	// The subscriber may also publish on the publisher (remote publish), so
	// that path is killed in flight too.
	sub.addPeer(pub, "--subscribable", "orders.>", "--publishable", "orders.>")
	subID := sub.subscribe(pub, "orders.>", "recv")
	pubID := pub.peerID()

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))

	// Every publish command the test ran, and for each publication (its n)
	// the command that carried it.
	var (
		mu    sync.Mutex
		ops   []*crashOp
		opOf  = map[int]*crashOp{}
		nextN = 0
	)
	newOp := func(round, count int, remote bool) *crashOp {
		mu.Lock()
		defer mu.Unlock()
		op := &crashOp{round: round, remote: remote}
		for range count {
			nextN++
			op.ns = append(op.ns, nextN)
			opOf[nextN] = op
		}
		ops = append(ops, op)
		return op
	}
	// runOp runs one publish command for op and records when it started and
	// ended (as the test saw it: the real command ran within that span).
	// Safe in a goroutine: it never fails the test itself.
	runOp := func(op *crashOp) {
		var lines []string
		for _, n := range op.ns {
			lines = append(lines, fmt.Sprintf(`{"n":%d}`, n))
		}
		inst, args := pub, []string{"action", "publish", "--action", "orders.created"}
		if op.remote {
			inst, args = sub, append(args, "--peer", pubID)
		}
		input := ""
		if len(lines) == 1 {
			args = append(args, "--data", lines[0])
		} else {
			args = append(args, "--stdin")
			input = strings.Join(lines, "\n") + "\n"
		}
		op.start = time.Now()
		op.code, op.stderr = inst.runQuiet(input, args...)
		op.end = time.Now()
	}
	// publishNow publishes with no kill in progress: it must succeed.
	publishNow := func(round, count int) {
		op := newOp(round, count, false)
		runOp(op)
		if op.code != 0 {
			t.Fatalf("round %d: publish %v with no kill in progress failed (exit %d): %s", round, op.ns, op.code, op.stderr)
		}
	}

	// Each round runs several publishers in a loop (local ones on pub's
	// socket, one remote through sub), kills pub or sub a random short
	// moment after the first publish of the round completed, while the
	// others are in flight, and restarts it. A round may start with a
	// burst, so that a subscriber kill lands while receivers run.
	const rounds, localPublishers = 24, 3
	subKills, pubKills, roundsInterrupted, interrupted := 0, 0, 0, 0
	remoteInterrupted := 0
	for round := range rounds {
		if rng.IntN(3) == 0 {
			publishNow(round, 4+rng.IntN(8))
		}
		victim, victimName := pub, "publisher"
		if rng.IntN(3) == 0 {
			victim, victimName = sub, "subscriber"
			subKills++
		} else {
			pubKills++
		}
		var stop atomic.Bool
		firstDone := make(chan struct{})
		var once sync.Once
		var localWG, remoteWG sync.WaitGroup
		for k := range localPublishers + 1 {
			remote := k == localPublishers
			wg := &localWG
			if remote {
				wg = &remoteWG
			}
			prng := rand.New(rand.NewPCG(seed, uint64(2+round*(localPublishers+1)+k)))
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !stop.Load() {
					count := 1
					if !remote && prng.IntN(4) == 0 {
						count = 2 + prng.IntN(4) // a --stdin batch
					}
					op := newOp(round, count, remote)
					runOp(op)
					if op.code == 0 {
						once.Do(func() { close(firstDone) })
					}
				}
			}()
		}
		select {
		case <-firstDone:
		case <-time.After(time.Minute):
			stop.Store(true)
			t.Fatalf("round %d: no publish completed within a minute", round)
		}
		time.Sleep(time.Duration(rng.IntN(30)) * time.Millisecond)
		// No publish starts after this: what runs now is in flight.
		stop.Store(true)
		killAt := time.Now()
		killAndWait(t, victim.pid)
		// A publish whose service is gone falls back to opening the
		// instance's datastore directly (to write the queue, or to fail:
		// an offline instance cannot publish remotely): those on the
		// victim finish before it restarts. A remote publish in flight to
		// a killed pub may need pub back to end (its connection is stale).
		localWG.Wait()
		if victim == sub {
			remoteWG.Wait()
		}
		if victim == pub {
			// With the service down, publish writes the queue directly.
			for range rng.IntN(3) {
				publishNow(round, 1)
			}
		}
		victim.start()
		remoteWG.Wait()

		n := 0
		mu.Lock()
		for _, op := range ops {
			if op.round != round || op.code == 0 {
				continue
			}
			if op.end.Before(killAt) {
				// Both services ran: nothing may fail, a remote publish
				// on a connection the restarted publisher no longer has
				// included (it is resent on a new one).
				mu.Unlock()
				t.Fatalf("round %d: publish %v (remote %v) failed before the kill (exit %d): %s", round, op.ns, op.remote, op.code, op.stderr)
			}
			op.interrupted = true
			n++
			if op.remote {
				remoteInterrupted++
			}
			t.Logf("round %d: %s kill interrupted publish %v (remote %v): %s", round, victimName, op.ns, op.remote, strings.TrimSpace(op.stderr))
		}
		mu.Unlock()
		interrupted += n
		if n > 0 {
			roundsInterrupted++
		}
	}
	publishNow(rounds, 4+rng.IntN(8))

	// Everything pub queued is delivered and acked (the interrupted
	// publications it stored as well, so a late duplicate cannot arrive
	// after the checks), and every acknowledged publication was applied.
	var queued uint64
	checkFor(t, 3*time.Minute, func() error {
		s, ok := pub.subscriberFor(subID)
		if !ok {
			return fmt.Errorf("pub does not list subscription %s", subID)
		}
		if s.Acked != s.NextSeq-1 || s.Depth != 0 {
			return fmt.Errorf("pub: subscription acked %d of %d, queue_depth %d", s.Acked, s.NextSeq-1, s.Depth)
		}
		queued = s.NextSeq - 1
		return nil
	})
	applied := readApplied(t, sub)
	got := map[int]bool{}
	for _, e := range applied {
		got[e.n] = true
	}
	accepted := 0
	for _, op := range ops {
		if op.code != 0 {
			continue
		}
		for _, n := range op.ns {
			accepted++
			if !got[n] {
				t.Errorf("publication %d (round %d, remote %v) was acknowledged but never applied", n, op.round, op.remote)
			}
		}
	}

	// At most once, each: a publication is applied under one sequence
	// number only, and sequence numbers only grow (across restarts too).
	seen := map[int]uint64{}
	var lastSeq uint64
	for _, e := range applied {
		if e.seq <= lastSeq {
			t.Fatalf("applied seq %d after %d", e.seq, lastSeq)
		}
		lastSeq = e.seq
		if s, dup := seen[e.n]; dup {
			t.Fatalf("publication %d applied twice, as seq %d and seq %d", e.n, s, e.seq)
		}
		seen[e.n] = e.seq
		if opOf[e.n] == nil {
			t.Fatalf("applied publication %d was never published", e.n)
		}
	}
	if lastSeq > queued {
		t.Fatalf("applied seq %d, but pub queued only %d", lastSeq, queued)
	}

	// In order: when a publish command ended before another one started,
	// its publications (acknowledged, or interrupted yet stored) are
	// applied before the other's; within one command, in line order.
	// Scanning back to front, minEnd is the earliest end among the
	// commands of the publications applied later.
	minEnd := time.Time{}
	var minEndN int
	for k := len(applied) - 1; k >= 0; k-- {
		n := applied[k].n
		op := opOf[n]
		if !minEnd.IsZero() && minEnd.Before(op.start) {
			t.Fatalf("publication %d applied before %d, but %d's publish ended before %d's started", n, minEndN, minEndN, n)
		}
		if minEnd.IsZero() || op.end.Before(minEnd) {
			minEnd, minEndN = op.end, n
		}
	}
	for _, op := range ops {
		var prev uint64
		for _, n := range op.ns {
			if s, ok := seen[n]; ok {
				if s < prev {
					t.Fatalf("publications %v of one command applied out of order", op.ns)
				}
				prev = s
			}
		}
	}

	// Sequence numbers are never reused: the receiver saw each sequence
	// with one publication only, and each publication under one sequence.
	// Every sequence pub queued reached the receiver.
	raw, err := os.ReadFile(sub.path("invocations.log"))
	if err != nil {
		t.Fatal(err)
	}
	runs := map[uint64]int{}
	dataOf := map[uint64]string{}
	seqOf := map[string]uint64{}
	extra := 0
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		seqS, data, _ := strings.Cut(l, " ")
		seq, err := strconv.ParseUint(seqS, 10, 64)
		if err != nil {
			t.Fatalf("invocations.log line %q: %v", l, err)
		}
		if d, ok := dataOf[seq]; ok && d != data {
			t.Fatalf("seq %d reused: delivered with %s and with %s", seq, d, data)
		}
		if s, ok := seqOf[data]; ok && s != seq {
			t.Fatalf("publication %s delivered as seq %d and as seq %d", data, s, seq)
		}
		dataOf[seq], seqOf[data] = data, seq
		runs[seq]++
		if runs[seq] > 1 {
			extra++
		}
	}
	for seq := uint64(1); seq <= queued; seq++ {
		if runs[seq] == 0 {
			t.Errorf("pub queued seq %d, but the receiver never ran for it", seq)
		}
	}
	if len(runs) != int(queued) {
		t.Errorf("the receiver ran for %d distinct sequences, pub queued %d", len(runs), queued)
	}
	for _, e := range applied {
		if runs[e.seq] == 0 {
			t.Errorf("seq %d applied without a logged invocation", e.seq)
		}
	}
	t.Logf("%d publish commands; %d publications acknowledged, %d queued; %d publisher and %d subscriber kills; %d interrupted publish commands (%d local, %d remote) in %d of %d rounds; %d receiver runs, %d re-runs",
		len(ops), accepted, queued, pubKills, subKills, interrupted, interrupted-remoteInterrupted, remoteInterrupted, roundsInterrupted, rounds, len(strings.Split(strings.TrimSpace(string(raw)), "\n")), extra)
	// The in-flight case is the point of this test: it must have happened.
	if interrupted == 0 {
		t.Errorf("no kill landed while a publish was in flight in %d rounds: the interrupted case was not exercised", rounds)
	}
	// The receiver re-ran only for what was in flight when a subscriber
	// was killed: at most one extra invocation per subscriber kill.
	if extra > subKills {
		t.Errorf("%d receiver re-runs for %d subscriber kills: more than the one in flight was re-run", extra, subKills)
	}
}

// crashOp is one publish command of TestCrashConsistency.
type crashOp struct {
	round       int
	remote      bool  // --peer: published by sub on pub
	ns          []int // the publications it carried, in order
	start, end  time.Time
	code        int
	stderr      string
	interrupted bool // failed while a kill was in progress
}

// runQuiet runs coattail in the instance directory with input on stdin (if
// any) and returns the exit code (-1 when it did not exit normally) and
// stderr. Unlike exec it never fails the test, so it may run in a
// goroutine.
func (i *instance) runQuiet(input string, args ...string) (code int, stderr string) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, args...)
	cmd.Dir = i.dir
	cmd.Env = childEnv(i.t, i.env...)
	cmd.WaitDelay = 5 * time.Second
	if input != "" {
		cmd.Stdin = strings.NewReader(input)
	}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		code = ee.ExitCode()
	default:
		code = -1
		errb.WriteString(" [" + err.Error() + "]")
	}
	// As in exec: the datastore is never "locked" to the user (Errorf is
	// safe in a goroutine).
	if showsLocked(errb.String()) {
		i.t.Errorf("%s: coattail %s showed a locked error: %s", i.name, strings.Join(args, " "), errb.String())
	}
	return code, errb.String()
}
