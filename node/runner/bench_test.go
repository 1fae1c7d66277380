package runner

import (
	"context"
	"encoding/json"
	"testing"
	"time"
)

// BenchmarkRunInProcessVsExec runs the same echo action as an in-process
// handler and as a /bin/sh script in each iteration, and reports both
// costs and their ratio, so that the cost of a process spawn per run is
// visible against a baseline measured on the same noisy machine.
func BenchmarkRunInProcessVsExec(b *testing.B) {
	r, dir := newTestRunner(b, nil)
	writeProgram(b, dir, KindAction, "echo.exec", "exec cat")
	if err := r.Register(KindAction, "echo.go", func(_ context.Context, inv Invocation) (json.RawMessage, error) {
		return inv.Input, nil
	}); err != nil {
		b.Fatal(err)
	}
	input := json.RawMessage(`{"order":{"id":7,"items":["a","b","c"]}}`)
	ctx := context.Background()

	var inProc, spawn time.Duration
	n := 0
	for b.Loop() {
		t0 := time.Now()
		if _, err := r.Run(ctx, Invocation{Kind: KindAction, Name: "echo.go", Input: input}); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := r.Run(ctx, Invocation{Kind: KindAction, Name: "echo.exec", Input: input}); err != nil {
			b.Fatal(err)
		}
		spawn += time.Since(t1)
		inProc += t1.Sub(t0)
		n++
	}
	b.ReportMetric(float64(inProc.Nanoseconds())/float64(n), "inproc-ns/run")
	b.ReportMetric(float64(spawn.Nanoseconds())/float64(n), "exec-ns/run")
	b.ReportMetric(float64(spawn)/float64(inProc), "exec/inproc")
}
