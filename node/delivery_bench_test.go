package node_test

import (
	"fmt"
	"testing"

	"github.com/coattail/coattail/node/perf"
)

// Durable delivery benchmarks (issue 5, "Benchmarks"): publish → subscriber
// ack throughput between real instances on loopback, pebble datastores on
// both sides, measured beside a raw libp2p stream between the same hosts
// and the disk, in the same run (package perf, which `coattail bench` runs
// too). Run them with `make bench` or
//
//	go test -run '^$' -bench 'Delivery$/.*/size=128/' -benchtime 2000x ./node/
//
// -benchtime Nx publishes N × perf.MaxBatch messages per case; results are
// recorded in docs/PERFORMANCE.md.

// BenchmarkDelivery measures 128 B and 64 KiB publications from one
// publisher to 1 and to 10 subscriber hosts, each with an in-process Go
// receiver, in two modes: "paced" keeps at most perf.DefaultWindow bytes
// published but not yet processed (the steady state of subscribers that
// keep up, and what a raw stream's flow control does to the baseline);
// "burst" publishes everything at once, so the backlog is read back from
// the datastore. x-raw is the ratio to the raw stream per subscriber host,
// x-disk to the disk; store-x-raw is the datastore alone over the raw
// stream, the most x-raw can be on this machine.
func BenchmarkDelivery(b *testing.B) {
	var results []perf.DeliveryResult
	for _, mode := range []string{"paced", "burst"} {
		for _, size := range []int{128, 64 << 10} {
			for _, subs := range []int{1, 10} {
				b.Run(fmt.Sprintf("%s/size=%d/subs=%d", mode, size, subs), func(b *testing.B) {
					r := benchDelivery(b, perf.DeliveryOptions{Size: size, Subscribers: subs,
						Messages: b.N * perf.MaxBatch, Paced: mode == "paced"})
					b.ReportMetric(r.XRaw, "x-raw")
					b.ReportMetric(r.RawMsgsPerSec, "raw-msgs/s")
					b.ReportMetric(r.DiskMBPerSec, "disk-MB/s")
					b.ReportMetric(r.XDisk, "x-disk")
					b.ReportMetric(r.StoreXRaw, "store-x-raw")
					if n := len(results); n > 0 && results[n-1].Mode == r.Mode && results[n-1].Size == r.Size && results[n-1].Subscribers == r.Subscribers {
						results[n-1] = r // b.Run calls again with a larger b.N
					} else {
						results = append(results, r)
					}
				})
			}
		}
	}
	b.Logf("durable delivery, one publisher, batches of min(%d messages, %d KiB), %d publishing goroutines, paced window %d MiB; rates per subscriber host",
		perf.MaxBatch, perf.BatchBytes>>10, perf.DefaultPublishers, perf.DefaultWindow>>20)
	b.Logf("%-6s %6s %4s %12s %9s %12s %7s %10s %7s %11s %11s %6s", "mode", "size", "subs", "msgs/s", "MB/s", "raw msgs/s", "x-raw", "disk MB/s", "x-disk", "store MB/s", "store x-raw", "cores")
	for _, r := range results {
		b.Logf("%-6s %6d %4d %12.0f %9.1f %12.0f %7.2f %10.1f %7.2f %11.1f %11.2f %6.2f", r.Mode, r.Size, r.Subscribers,
			r.MsgsPerSec, r.MBPerSec, r.RawMsgsPerSec, r.XRaw, r.DiskMBPerSec, r.XDisk, r.StoreMBPerSec, r.StoreXRaw, r.Cores)
	}
}

// BenchmarkDeliveryExecReceiver measures durable delivery to an executable
// receiver, which costs one process start per publication (and one
// progress sync each, so a crash re-runs at most the one in flight). b.N
// is the number of publications; they are published in batches.
func BenchmarkDeliveryExecReceiver(b *testing.B) {
	r := benchDelivery(b, perf.DeliveryOptions{Size: 128, Subscribers: 1, Messages: b.N, Receiver: perf.ReceiverExecutable})
	b.ReportMetric(1e6/r.MsgsPerSec, "us/msg")
	b.Logf("executable receiver: %d publications in %.3fs, %.0f msgs/s", r.Messages, r.Seconds, r.MsgsPerSec)
}

// benchDelivery runs one perf.Delivery in the benchmark's temporary
// directory and reports its common metrics.
func benchDelivery(b *testing.B, o perf.DeliveryOptions) perf.DeliveryResult {
	o.Dir = b.TempDir()
	b.ResetTimer()
	r, err := perf.Delivery(b.Context(), o)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(r.MsgsPerSec, "msgs/s")
	b.ReportMetric(r.MBPerSec, "MB/s")
	b.ReportMetric(r.Cores, "cores")
	return r
}
