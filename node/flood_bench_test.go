package node_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
)

// BenchmarkPerformUnderFlood shows per-peer throttling at work: one peer
// floods an instance with performs from many goroutines, ignoring every
// retry-after, while another peer performs at a steady pace under its own
// rate limit. The steady peer's latency is measured with and without the
// flood in the same run — in alternating chunks, so machine noise hits
// both alike — and reported as a ratio, with how much of the flood the
// instance refused. It is a report, not an assertion.
func BenchmarkPerformUnderFlood(b *testing.B) {
	const (
		rateLimit = 2000
		flooders  = 16
		chunk     = 50
		// The steady peer stays at half its limit, so it is never refused
		// for its own sake.
		pace = time.Second / (rateLimit / 2)
	)
	a := newTestNode(b, withQuietLog(), withLimits(func(l *node.LimitsConfig) { l.RateLimit = rateLimit; l.RateBurst = 100 }))
	steady, flooder := newTestNode(b, withQuietLog()), newTestNode(b, withQuietLog())
	var echo counter
	register(b, a, "echo", echo.handler)
	req := localapi.IssueRequest{Perform: []string{">"}}
	pidS, _ := connectPeers(b, a, steady, req)
	pidF, _ := connectPeers(b, a, flooder, req)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := perform(ctx, steady, pidS, "echo", `1`); err != nil {
		b.Fatal(err)
	}

	// The flood runs while on is set, and pauses (without sending) when not.
	var on atomic.Bool
	var mu sync.Mutex
	cond := sync.NewCond(&mu)
	var accepted, refused, failed atomic.Int64
	var wg sync.WaitGroup
	for range flooders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				mu.Lock()
				for !on.Load() && ctx.Err() == nil {
					cond.Wait()
				}
				mu.Unlock()
				_, err := perform(ctx, flooder, pidF, "echo", `1`)
				switch {
				case err == nil:
					accepted.Add(1)
				case wire.IsCode(err, wire.CodeRateLimited):
					refused.Add(1)
				default:
					failed.Add(1)
				}
			}
		}()
	}
	setFlood := func(v bool) {
		mu.Lock()
		on.Store(v)
		mu.Unlock()
		cond.Broadcast()
	}
	defer func() {
		cancel()
		setFlood(false)
		wg.Wait()
	}()

	var quiet, flooded latencies
	var steadyErrs int
	var floodTime time.Duration // wall time with the flood on
	var floodStart time.Time
	tick := time.NewTicker(pace)
	defer tick.Stop()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		flood := (i/chunk)%2 == 1
		if i%chunk == 0 {
			if flood {
				floodStart = time.Now()
			} else if !floodStart.IsZero() {
				floodTime += time.Since(floodStart)
				floodStart = time.Time{}
			}
			setFlood(flood)
		}
		<-tick.C
		start := time.Now()
		_, err := perform(ctx, steady, pidS, "echo", `1`)
		d := time.Since(start)
		if err != nil {
			steadyErrs++
			continue
		}
		if flood {
			flooded = append(flooded, d)
		} else {
			quiet = append(quiet, d)
		}
	}
	b.StopTimer()
	setFlood(false)
	if !floodStart.IsZero() {
		floodTime += time.Since(floodStart)
	}

	ratio := 0.0
	if p := quiet.percentile(50); p > 0 && len(flooded) > 0 {
		ratio = float64(flooded.percentile(50)) / float64(p)
	}
	b.ReportMetric(us(quiet.percentile(50)), "quiet-p50-us")
	b.ReportMetric(us(flooded.percentile(50)), "flood-p50-us")
	b.ReportMetric(us(flooded.percentile(99)), "flood-p99-us")
	b.ReportMetric(ratio, "x-flood-p50")
	b.ReportMetric(float64(steadyErrs), "steady-errors")
	if floodTime > 0 {
		b.ReportMetric(float64(refused.Load())/floodTime.Seconds(), "flood-refused/s")
		b.ReportMetric(float64(accepted.Load())/floodTime.Seconds(), "flood-accepted/s")
	}
	b.Logf("steady peer at %v/request while another peer floods from %d goroutines (limit %d/s, burst 100)", pace, flooders, rateLimit)
	b.Logf("%-8s %8s %10s %10s", "steady", "n", "p50", "p99")
	b.Logf("%-8s %8d %10v %10v", "quiet", len(quiet), quiet.percentile(50).Round(time.Microsecond), quiet.percentile(99).Round(time.Microsecond))
	b.Logf("%-8s %8d %10v %10v", "flood", len(flooded), flooded.percentile(50).Round(time.Microsecond), flooded.percentile(99).Round(time.Microsecond))
	b.Logf("flood p50 / quiet p50 = %.2fx; steady peer errors %d; flooder: %d accepted, %d refused (rate_limited), %d other errors",
		ratio, steadyErrs, accepted.Load(), refused.Load(), failed.Load())
}
