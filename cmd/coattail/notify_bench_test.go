package main

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkNotifyLatency measures what the original Coattail took ~330 ms
// for: from starting `coattail action perform --notify` on one instance to
// the receiver of a subscriber instance running, both services on
// loopback, the action and the receiver executables. b.N is the number of
// performs, one after another. In the same run it measures the floor that
// path cannot go below, two process starts: the coattail CLI doing nothing
// (`coattail version`) and a bash receiver taking its timestamp; x-floor
// is the ratio of the two p50s.
//
//	go test -run '^$' -bench NotifyLatency -benchtime 50x ./cmd/coattail/
func BenchmarkNotifyLatency(b *testing.B) {
	pub, sub := newInstance(b, "pub"), newInstance(b, "sub")
	pub.writeScript("actions", "bench.notify", "exec cat\n")
	const stamps = "notify.txt"
	receiver := "#!/bin/bash\nread -r data\necho \"$data $EPOCHREALTIME\" >>\"$COATTAIL_INSTANCE/" + stamps + "\"\n"
	if err := os.WriteFile(sub.path("receivers", "stamp"), []byte(receiver), 0o755); err != nil {
		b.Fatal(err)
	}
	pub.start()
	sub.start()
	sub.addPeer(pub, "--subscribable", "bench.>")
	sub.subscribe(pub, "bench.>", "stamp")

	// stampTime parses a receiver line's $EPOCHREALTIME.
	stampTime := func(line string) time.Time {
		f := strings.Fields(line)
		sec, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			b.Fatalf("bad receiver line %q: %v", line, err)
		}
		return time.Unix(0, int64(sec*1e9))
	}
	var notify, cli, spawn []time.Duration
	b.ResetTimer()
	for n := 1; n <= b.N; n++ {
		t0 := time.Now()
		pub.mustRun("action", "perform", "--quiet", "--action", "bench.notify", "--notify", "--data", fmt.Sprintf(`{"n":%d}`, n))
		lines := sub.waitLines(stamps, n, time.Minute)
		notify = append(notify, stampTime(lines[n-1]).Sub(t0))

		t0 = time.Now()
		pub.mustRun("version")
		cli = append(cli, time.Since(t0))

		t0 = time.Now()
		out, err := exec.Command("/bin/bash", "-c", `echo "$EPOCHREALTIME"`).Output()
		if err != nil {
			b.Fatal(err)
		}
		spawn = append(spawn, stampTime(string(out)).Sub(t0))
	}
	b.StopTimer()
	p := func(d []time.Duration, q int) time.Duration {
		s := slices.Clone(d)
		slices.Sort(s)
		return s[(len(s)-1)*q/100]
	}
	floor := p(cli, 50) + p(spawn, 50)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(p(notify, 50).Microseconds())/1e3, "p50-ms")
	b.ReportMetric(float64(p(notify, 99).Microseconds())/1e3, "p99-ms")
	b.ReportMetric(float64(floor.Microseconds())/1e3, "floor-ms")
	b.ReportMetric(float64(p(notify, 50))/float64(floor), "x-floor")
	b.Logf("perform --notify -> remote receiver running, %d runs: p50 %v, p99 %v", b.N, p(notify, 50).Round(10*time.Microsecond), p(notify, 99).Round(10*time.Microsecond))
	b.Logf("floor (same run): coattail CLI start p50 %v + bash receiver start p50 %v = %v; p50 / floor = %.2fx (the original Coattail: ~330 ms)",
		p(cli, 50).Round(10*time.Microsecond), p(spawn, 50).Round(10*time.Microsecond), floor.Round(10*time.Microsecond), float64(p(notify, 50))/float64(floor))
}
