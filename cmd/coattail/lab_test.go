package main

// Tests of `coattail lab`: its flag checks, topologies and delivery
// verification in-process, and a real 10-node mesh through the binary.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestLabFlagErrors(t *testing.T) {
	t.Setenv("COATTAIL_RUNTIME_DIR", t.TempDir())
	stdout, stderr, code := runCLI(t, "lab", "--nodes", "1", "--topology", "ring", "--batch", "0", "--messages", "0", "--idle-timeout", "10ms", "--conn-low", "9", "--conn-high", "3", "--chaos", "-1", "--chaos-stop", "2")
	if code != 1 || stdout != "" {
		t.Fatalf("exit %d, stdout %q; want exit 1 and nothing on stdout", code, stdout)
	}
	// Every problem is reported at once.
	for _, want := range []string{"lab: invalid options", "--nodes 1", `--topology "ring"`, "--batch 0", "--messages 0", "--idle-timeout", "conn-low <= conn-high", "--chaos -1", "--chaos-stop 2"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	_, stderr, code = runCLI(t, "lab", "--nodes", "4", "--degree", "4")
	if code != 1 || !strings.Contains(stderr, "--degree 4 is out of range for 4 nodes (1..3)") {
		t.Errorf("mesh degree too high: exit %d, stderr %q", code, stderr)
	}
}

func TestLabTopology(t *testing.T) {
	star, err := labTopology(labStar, 5, 0, 0)
	if err != nil || len(star) != 4 {
		t.Fatalf("star of 5: %v, %v", star, err)
	}
	for j, e := range star {
		if e != (labEdge{Pub: 0, Sub: j + 1}) {
			t.Errorf("star edge %d = %+v", j, e)
		}
	}
	chain, err := labTopology(labChain, 4, 0, 0)
	if err != nil || len(chain) != 3 || chain[2] != (labEdge{Pub: 2, Sub: 3}) {
		t.Fatalf("chain of 4: %v, %v", chain, err)
	}

	const n, degree = 20, 4
	mesh, err := labTopology(labMesh, n, degree, 7)
	if err != nil || len(mesh) != n*degree {
		t.Fatalf("mesh: %d edges, %v; want %d", len(mesh), err, n*degree)
	}
	seen := map[labEdge]bool{}
	in := map[int]int{}
	for _, e := range mesh {
		if e.Pub == e.Sub || e.Pub < 0 || e.Pub >= n || seen[e] {
			t.Errorf("bad or repeated mesh edge %+v", e)
		}
		seen[e] = true
		in[e.Sub]++
	}
	for j := range n {
		if in[j] != degree {
			t.Errorf("node %d subscribes to %d publishers, want %d", j, in[j], degree)
		}
	}
	again, _ := labTopology(labMesh, n, degree, 7)
	other, _ := labTopology(labMesh, n, degree, 8)
	if !equalEdges(mesh, again) {
		t.Error("the same seed gave a different mesh")
	}
	if equalEdges(mesh, other) {
		t.Error("seeds 7 and 8 gave the same mesh")
	}
	if _, err := labTopology(labMesh, 3, 3, 1); !errors.Is(err, errLabOptions) {
		t.Errorf("degree 3 over 3 nodes: %v, want errLabOptions", err)
	}
}

func equalEdges(a, b []labEdge) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestLabParseLine(t *testing.T) {
	rec, err := parseLabLine(`3 1700000000.250000 12D3KooWPub {"p":2,"n":7,"t":1700000000000000000}`)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Seq != 3 || rec.Publisher != "12D3KooWPub" || rec.Data != (labData{Pub: 2, N: 7, Sent: 1700000000000000000}) {
		t.Errorf("record %+v", rec)
	}
	if got := time.Duration(rec.Recv - rec.Data.Sent); got != 250*time.Millisecond {
		t.Errorf("latency %v, want 250ms", got)
	}
	// `date +%s%N` spells the time in nanoseconds.
	if rec, err := parseLabLine(`1 1700000000000000042 P {"p":0,"n":0,"t":1}`); err != nil || rec.Recv != 1700000000000000042 {
		t.Errorf("nanosecond time: %+v, %v", rec, err)
	}
	for _, bad := range []string{
		"",
		"1 1700000000.1 P",
		`x 1700000000.1 P {"p":0,"n":0,"t":1}`,
		`0 1700000000.1 P {"p":0,"n":0,"t":1}`,
		`1 1700000000,1 P {"p":0,"n":0,"t":1}`, // a locale's decimal comma
		`1 1700000000.1234567890 P {"p":0,"n":0,"t":1}`,
		`1 1700000000.1 P {"p":0,"n":0}`,
		`1 1700000000.1 P not json`,
	} {
		if _, err := parseLabLine(bad); !errors.Is(err, errLabLine) {
			t.Errorf("parseLabLine(%q) = %v, want errLabLine", bad, err)
		}
	}
	recs, badLines := parseLabLog(strings.NewReader("1 1.5 P {\"p\":0,\"n\":0,\"t\":1}\ngarbage\n2 2.5 P {\"p\":0,\"n\":1,\"t\":1}\n"))
	if len(recs) != 2 || badLines != 1 {
		t.Errorf("parseLabLog: %d records, %d bad; want 2 and 1", len(recs), badLines)
	}
}

func TestLabTally(t *testing.T) {
	// Node 0 publishes 3 messages to nodes 1 and 2.
	edges := []labEdge{{Pub: 0, Sub: 1}, {Pub: 0, Sub: 2}}
	ids := []string{"P0", "P1", "P2"}
	rec := func(seq uint64, n int, latency time.Duration) labRecord {
		return labRecord{Seq: seq, Recv: 1000 + int64(latency), Publisher: "P0", Data: labData{Pub: 0, N: n, Sent: 1000}}
	}
	perfect := func() map[int][]labRecord {
		return map[int][]labRecord{
			1: {rec(1, 0, time.Millisecond), rec(2, 1, 2*time.Millisecond), rec(3, 2, 3*time.Millisecond)},
			2: {rec(1, 0, 4*time.Millisecond), rec(2, 1, 5*time.Millisecond), rec(3, 2, 6*time.Millisecond)},
		}
	}

	got := tallyLab(edges, 3, ids, perfect())
	if got.Expected != 6 || got.Delivered != 6 || got.Duplicates+got.OutOfOrder+got.Unexpected != 0 || len(got.Examples) != 0 {
		t.Fatalf("perfect run: %+v", got)
	}
	if got.Received[1] != 3 || got.Received[2] != 3 || len(got.Latencies) != 6 {
		t.Errorf("perfect run: received %v, %d latencies", got.Received, len(got.Latencies))
	}
	if l := labLatencies(got.Latencies); l.P50 != 3 || l.P99 != 6 || l.Max != 6 {
		t.Errorf("latency summary %+v, want p50 3ms, p99 and max 6ms", l)
	}

	for _, tc := range []struct {
		name   string
		change func(map[int][]labRecord)
		check  func(labTally) bool
	}{
		{"lost", func(m map[int][]labRecord) { m[2] = m[2][:2] },
			func(x labTally) bool { return x.Delivered == 5 && x.Duplicates == 0 && x.OutOfOrder == 0 }},
		{"duplicate", func(m map[int][]labRecord) { m[1] = append(m[1], rec(3, 2, time.Millisecond)) },
			func(x labTally) bool { return x.Delivered == 6 && x.Duplicates == 1 }},
		{"reordered", func(m map[int][]labRecord) { m[1][1], m[1][2] = m[1][2], m[1][1] },
			func(x labTally) bool { return x.Delivered == 6 && x.OutOfOrder == 1 }},
		{"sequence went back", func(m map[int][]labRecord) { m[1][2].Seq = 1 },
			func(x labTally) bool { return x.Delivered == 6 && x.OutOfOrder == 1 }},
		{"not subscribed", func(m map[int][]labRecord) { m[0] = []labRecord{rec(1, 0, 0)} },
			func(x labTally) bool { return x.Delivered == 6 && x.Unexpected == 1 }},
		{"wrong publisher peer", func(m map[int][]labRecord) { m[2][0].Publisher = "P1" },
			func(x labTally) bool { return x.Delivered == 5 && x.Unexpected == 1 }},
		{"never published", func(m map[int][]labRecord) { m[2] = append(m[2], rec(4, 3, 0)) },
			func(x labTally) bool { return x.Delivered == 6 && x.Unexpected == 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := perfect()
			tc.change(m)
			x := tallyLab(edges, 3, ids, m)
			if !tc.check(x) || len(x.Examples) == 0 {
				t.Errorf("tally %+v", x)
			}
		})
	}
}

func TestLabReportVerdict(t *testing.T) {
	r := &labReport{Expected: 10, Delivered: 10}
	if !r.OK() {
		t.Fatalf("clean report not OK: %v", r.failures())
	}
	for _, bad := range []labReport{
		{Expected: 10, Delivered: 9, Lost: 1},
		{Expected: 10, Delivered: 10, Duplicates: 1},
		{Expected: 10, Delivered: 10, OutOfOrder: 1},
		{Expected: 10, Delivered: 10, BadLines: 1},
		{Expected: 10, Delivered: 10, DeadLetters: 1},
		{},
	} {
		if bad.OK() {
			t.Errorf("report %+v passed", bad)
		}
	}
}

func TestLabSummaries(t *testing.T) {
	if s := labSummarize([]int64{30, 10, 20, 40}); s != (labStat{Min: 10, Median: 20, Max: 40, Total: 100}) {
		t.Errorf("summary %+v", s)
	}
	rss, peak := labProcMemory(os.Getpid())
	if rss <= 0 || peak < rss {
		t.Errorf("own memory: rss %d KiB, peak %d KiB", rss, peak)
	}
}

// runLabCmd runs the built binary's `lab` with args plus --json and decodes
// the report.
func runLabCmd(t *testing.T, args ...string) (labReport, string) {
	t.Helper()
	needBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, append([]string{"lab", "--json", "--dir", t.TempDir()}, args...)...)
	cmd.Env = childEnv(t)
	cmd.WaitDelay = 5 * time.Second
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("coattail lab %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	var rep labReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("lab --json printed no report: %v\n%s", err, out.String())
	}
	return rep, errb.String()
}

// checkLabReport asserts what every successful lab must show.
func checkLabReport(t *testing.T, rep labReport, nodes, subs, messages int) {
	t.Helper()
	if rep.Nodes != nodes || rep.Subscriptions != subs || rep.MessagesPerPublisher != messages {
		t.Errorf("shape: %d nodes, %d subscriptions, %d messages; want %d, %d, %d", rep.Nodes, rep.Subscriptions, rep.MessagesPerPublisher, nodes, subs, messages)
	}
	if want := subs * messages; rep.Expected != want || rep.Delivered != want {
		t.Errorf("delivered %d of %d, want %d", rep.Delivered, rep.Expected, want)
	}
	if rep.Lost+rep.Duplicates+rep.OutOfOrder+rep.Unexpected+rep.BadLines != 0 || rep.DeadLetters != 0 || !rep.OK() {
		t.Errorf("deliveries not clean: %+v, problems %v", rep, rep.Problems)
	}
	if rep.Latency.P50 <= 0 || rep.Latency.P50 > rep.Latency.P99 || rep.Latency.P99 > rep.Latency.Max {
		t.Errorf("latency %+v is not ordered", rep.Latency)
	}
	if len(rep.PerNode) != nodes {
		t.Fatalf("%d per-node lines, want %d", len(rep.PerNode), nodes)
	}
	received := 0
	for _, n := range rep.PerNode {
		if n.PID <= 0 || n.RSSKiB <= 0 || n.PeakRSSKiB < n.RSSKiB || n.PeerID == "" {
			t.Errorf("node %+v lacks a pid, peer id or memory", n)
		}
		if n.Received != n.Subscriptions*messages {
			t.Errorf("node %s ran its receiver %d times for %d subscriptions of %d messages", n.Name, n.Received, n.Subscriptions, messages)
		}
		received += n.Received
		// Torn down: nothing the lab started survives it.
		if processAlive(n.PID) {
			t.Errorf("node %s (pid %d) still runs after the lab", n.Name, n.PID)
		}
	}
	if received != rep.Expected {
		t.Errorf("receivers ran %d times, want %d", received, rep.Expected)
	}
	if rep.Stopped+rep.Killed != nodes || rep.RSS.Min <= 0 || rep.RSS.Min > rep.RSS.Median || rep.RSS.Median > rep.RSS.Max {
		t.Errorf("teardown %d stopped + %d killed of %d; RSS %+v", rep.Stopped, rep.Killed, nodes, rep.RSS)
	}
	if rep.Dir != "" {
		t.Errorf("a clean run kept its directory %s", rep.Dir)
	}
}

func TestLabMesh10Nodes(t *testing.T) {
	t.Parallel()
	const nodes, degree, messages = 10, 3, 30
	rep, stderr := runLabCmd(t, "--nodes", "10", "--topology", "mesh", "--degree", "3", "--messages", "30", "--batch", "7")
	checkLabReport(t, rep, nodes, nodes*degree, messages)
	if rep.Published != rep.Publishers*messages {
		t.Errorf("published %d, want %d publishers x %d", rep.Published, rep.Publishers, messages)
	}
	for _, want := range []string{"started 10 services", "wired 30 subscriptions"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("progress lacks %q:\n%s", want, stderr)
		}
	}
	t.Logf("10-node mesh: p50 %.1fms p99 %.1fms, RSS median %d KiB, wall %v",
		rep.Latency.P50, rep.Latency.P99, rep.RSS.Median, time.Duration(rep.Wall))
}

func TestLabStarAndChain(t *testing.T) {
	t.Parallel()
	rep, _ := runLabCmd(t, "--nodes", "4", "--topology", "star", "--messages", "10")
	checkLabReport(t, rep, 4, 3, 10)
	if rep.Publishers != 1 || rep.PerNode[0].Subscribers != 3 {
		t.Errorf("star: %d publishers, hub has %d subscribers", rep.Publishers, rep.PerNode[0].Subscribers)
	}
	rep, _ = runLabCmd(t, "--nodes", "3", "--topology", "chain", "--messages", "10", "--rate", "1000")
	checkLabReport(t, rep, 3, 2, 10)
}

// The lab publishes the way `action publish --stdin` does: a batch with no
// data. That request once arrived with "data": null and was refused.
func TestPublishStdinBatch(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	stdout, stderr, code := a.runStdin("{\"n\":1}\n\n[2]\n", "action", "publish", "--action", "lab.0", "--stdin")
	if code != 0 || !strings.Contains(stdout, "published 2 message(s)") {
		t.Fatalf("publish --stdin: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	// Lines are numbered as in the input, blank ones included; the lines
	// before a bad one are published, whatever the batching, and none
	// after.
	_, stderr, code = a.runStdin("1\n\n{bad\n4\n", "action", "publish", "--action", "lab.0", "--stdin")
	if code == 0 || !strings.Contains(stderr, "stdin line 3 is not valid JSON: the 1 line(s) before it were published, none from it on") {
		t.Fatalf("publish --stdin of a bad line: exit %d, stderr: %s", code, stderr)
	}
	// 80 MB of 100 KB lines: batches are cut by bytes too, not only by
	// line count (the control API takes bodies up to 70 MiB).
	line := `{"pad":"` + strings.Repeat("x", 100<<10) + "\"}\n"
	stdout, stderr, code = a.runStdin(strings.Repeat(line, 800), "action", "publish", "--action", "lab.0", "--stdin")
	if code != 0 || !strings.Contains(stdout, "published 800 message(s)") {
		t.Fatalf("publish --stdin of 80 MB: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
}

// A mesh smaller than the default --degree (3) uses every other node
// instead of failing on a flag the user did not give; a --degree given
// explicitly is still checked (TestLabFlagErrors).
func TestLabSmallMeshDefaultDegree(t *testing.T) {
	t.Parallel()
	rep, _ := runLabCmd(t, "--nodes", "3", "--messages", "5")
	checkLabReport(t, rep, 3, 3*2, 5)
	if rep.Topology != labMesh {
		t.Errorf("topology %q, want the default mesh", rep.Topology)
	}
}

// When the service goes away during `action publish --stdin`, the error
// says which lines were published and which batch got no answer (it may
// or may not have been stored): it said "after 4096 published line(s):
// EOF", and publishing again from there published the unanswered batch
// twice.
func TestPublishStdinServiceGone(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	pid := a.start()
	cmd := exec.Command(binPath, "action", "publish", "--action", "lab.0", "--stdin")
	cmd.Dir, cmd.Env = a.dir, childEnv(t, a.env...)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	// The first batch (4096 lines) goes once full; wait for it to be in.
	if _, err := in.Write(bytes.Repeat([]byte("1\n"), publishBatch+2)); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 30*time.Second, func() error {
		if c := a.counters(); c.Published != publishBatch {
			return fmt.Errorf("published %d, want the first batch (%d)", c.Published, publishBatch)
		}
		return nil
	})
	killAndWait(t, pid)
	_ = in.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(commandTimeout):
		t.Fatal("publish --stdin did not exit after its service died")
	}
	want := fmt.Sprintf("%d line(s) before stdin line %d were published; the batch of stdin lines %d-%d (2 line(s)) got no answer, so it may or may not have been published",
		publishBatch, publishBatch+1, publishBatch+1, publishBatch+2)
	if err == nil || !strings.Contains(errb.String(), want) {
		t.Fatalf("publish --stdin whose service died: %v\nstdout: %s\nstderr: %s\nwant: %s", err, out.String(), errb.String(), want)
	}
}

// A chaos run's allowances: messages of a cut publish call are accepted
// but not required, whole or not at all; a subscriber taken down k times
// may re-run, per subscription, up to k publications, each right after
// the record it repeats; anything else still fails.
func TestLabTallyChaos(t *testing.T) {
	// Node 0 publishes 6 messages (3 calls of 2) to nodes 1 and 2; the
	// call of messages 2-3 was cut by an interruption.
	edges := []labEdge{{Pub: 0, Sub: 1}, {Pub: 0, Sub: 2}}
	ids := []string{"P0", "P1", "P2"}
	rec := func(seq uint64, n int) labRecord {
		return labRecord{Seq: seq, Recv: 2000, Publisher: "P0", Data: labData{Pub: 0, N: n, Sent: 1000}}
	}
	all := func(ns ...int) []labRecord {
		var rs []labRecord
		for i, n := range ns {
			rs = append(rs, rec(uint64(i+1), n))
		}
		return rs
	}
	cut := labExpect{Uncertain: map[int][]labBatch{0: {{First: 2, Count: 2}}}, Interrupted: map[int]int{1: 1}}
	for _, tc := range []struct {
		name string
		logs map[int][]labRecord
		x    labExpect
		ok   bool
		want func(labTally) bool
	}{
		{"cut batch arrived", map[int][]labRecord{1: all(0, 1, 2, 3, 4, 5), 2: all(0, 1, 2, 3, 4, 5)}, cut, true,
			func(x labTally) bool { return x.Expected == 8 && x.Delivered == 8 && x.Uncertain == 4 }},
		{"cut batch did not", map[int][]labRecord{1: all(0, 1, 4, 5), 2: all(0, 1, 4, 5)}, cut, true,
			func(x labTally) bool { return x.Delivered == 8 && x.Uncertain == 0 }},
		{"half a cut batch", map[int][]labRecord{1: all(0, 1, 2, 4, 5), 2: all(0, 1, 2, 4, 5)}, cut, false,
			func(x labTally) bool { return x.PartialBatches == 2 }},
		{"cut batch at one subscription only", map[int][]labRecord{1: all(0, 1, 2, 3, 4, 5), 2: all(0, 1, 4, 5)}, cut, false,
			func(x labTally) bool { return x.PartialBatches == 1 }},
		{"a returned batch is still required", map[int][]labRecord{1: all(0, 1, 2, 3, 4), 2: all(0, 1, 2, 3, 4, 5)}, cut, false,
			func(x labTally) bool { return x.Delivered == 7 }},
		{"re-run after the interrupted subscriber's restart",
			map[int][]labRecord{1: {rec(1, 0), rec(2, 1), rec(2, 1), rec(3, 4), rec(4, 5)}, 2: all(0, 1, 4, 5)}, cut, true,
			func(x labTally) bool { return x.Reruns == 1 && x.Duplicates == 0 && x.Received[1] == 5 }},
		{"two re-runs for one interruption",
			map[int][]labRecord{1: {rec(1, 0), rec(1, 0), rec(2, 1), rec(2, 1), rec(3, 4), rec(4, 5)}, 2: all(0, 1, 4, 5)}, cut, false,
			func(x labTally) bool { return x.Reruns == 1 && x.Duplicates == 1 }},
		{"re-run at a subscriber never interrupted",
			map[int][]labRecord{1: all(0, 1, 4, 5), 2: {rec(1, 0), rec(1, 0), rec(2, 1), rec(3, 4), rec(4, 5)}}, cut, false,
			func(x labTally) bool { return x.Duplicates == 1 }},
		{"a duplicate that is not the last record",
			map[int][]labRecord{1: {rec(1, 0), rec(2, 1), rec(1, 0), rec(3, 4), rec(4, 5)}, 2: all(0, 1, 4, 5)}, cut, false,
			func(x labTally) bool { return x.Duplicates == 1 && x.Reruns == 0 }},
		{"without chaos a re-run is a duplicate",
			map[int][]labRecord{1: {rec(1, 0), rec(1, 0), rec(2, 1), rec(3, 2)}, 2: all(0, 1, 2)}, labExpect{}, false,
			func(x labTally) bool { return x.Duplicates == 1 && x.Reruns == 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msgs := 6
			if tc.x.Uncertain == nil {
				msgs = 3
			}
			x := tallyLabExpect(edges, msgs, ids, tc.logs, tc.x)
			ok := x.Delivered == x.Expected && x.Duplicates+x.OutOfOrder+x.Unexpected+x.PartialBatches == 0
			if ok != tc.ok || !tc.want(x) || (!ok && len(x.Examples) == 0) {
				t.Errorf("ok %v, want %v; tally %+v", ok, tc.ok, x)
			}
		})
	}
	r := &labReport{Expected: 10, Delivered: 10, PartialBatches: 1}
	if r.OK() {
		t.Error("a partly delivered batch passed")
	}
	r = &labReport{Expected: 10, Delivered: 10, ChaosFailures: 1}
	if r.OK() {
		t.Error("a node that did not come back passed")
	}
}

// A small chaos lab: three interruptions (SIGKILL or service stop) of
// random nodes during the storm and the drain, each node restarted; every
// publication whose call returned arrives once, in order, and nothing the
// lab started survives it.
func TestLabChaos(t *testing.T) {
	t.Parallel()
	const nodes, degree, messages = 6, 2, 60
	rep, stderr := runLabCmd(t, "--nodes", "6", "--topology", "mesh", "--degree", "2", "--messages", "60", "--batch", "5",
		"--rate", "60", "--chaos", "3", "--chaos-stop", "0.3", "--seed", "5")
	if !rep.OK() || rep.Lost+rep.Duplicates+rep.OutOfOrder+rep.Unexpected+rep.BadLines+rep.PartialBatches != 0 || rep.DeadLetters != 0 {
		t.Fatalf("chaos lab failed: %+v\nproblems %v\n%s", rep, rep.Problems, stderr)
	}
	if rep.Chaos != 3 || len(rep.ChaosEvents) != 3 || rep.Kills+rep.Stops != 3 || rep.Restarts != 3 || rep.ChaosFailures != 0 {
		t.Errorf("chaos: %d asked, %d events, %d kills + %d stops, %d restarts, %d failures",
			rep.Chaos, len(rep.ChaosEvents), rep.Kills, rep.Stops, rep.Restarts, rep.ChaosFailures)
	}
	if all := nodes * degree * messages; rep.Expected > all || rep.Expected < all-rep.Uncertain*degree*nodes || rep.Delivered != rep.Expected {
		t.Errorf("delivered %d of %d required (%d in all, %d messages in cut calls)", rep.Delivered, rep.Expected, all, rep.Uncertain)
	}
	if rep.Published+rep.Uncertain != rep.Publishers*messages {
		t.Errorf("published %d + %d uncertain, want %d", rep.Published, rep.Uncertain, rep.Publishers*messages)
	}
	for _, e := range rep.ChaosEvents {
		if e.OldPID <= 0 || e.NewPID <= 0 || e.Error != "" || (e.Kind != "kill" && e.Kind != "stop") {
			t.Errorf("chaos event %+v", e)
		}
		if processAlive(e.OldPID) {
			t.Errorf("%s's old service (pid %d) still runs", e.Node, e.OldPID)
		}
	}
	for _, n := range rep.PerNode {
		if processAlive(n.PID) {
			t.Errorf("node %s (pid %d) still runs after the lab", n.Name, n.PID)
		}
	}
	if rep.LogErrors != 0 {
		t.Errorf("%d ERROR lines in the services' logs: %v", rep.LogErrors, rep.Problems)
	}
	if rep.Dir != "" {
		t.Errorf("a clean run kept its directory %s", rep.Dir)
	}
	if !strings.Contains(stderr, "chaos 3/3") {
		t.Errorf("progress lacks the chaos:\n%s", stderr)
	}
}
