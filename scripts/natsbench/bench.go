package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"
	"time"

	"github.com/coattail/coattail/node/perf"
	"github.com/dustin/go-humanize"
)

// options configures run.
type options struct {
	Size         int           // payload bytes
	Messages     int           // messages per system
	SyncMessages int           // at most this many for JetStream with sync always
	Runs         int           // every system this many times
	Timeout      time.Duration // bounds each system's measurement
	progress     io.Writer     // one line per measurement, if not nil
}

// Result is what run measured.
type Result struct {
	Size            int    `json:"size"`
	Messages        int    `json:"messages"`
	SyncMessages    int    `json:"sync_always_messages"`
	CoattailWindow  int    `json:"coattail_window_bytes"`
	JetStreamWindow int    `json:"jetstream_window_msgs"`
	GOMAXPROCS      int    `json:"gomaxprocs"`
	GOGC            int    `json:"gogc"`
	NATSServer      string `json:"nats_server"`
	NATSClient      string `json:"nats_go"`
	Runs            []Run  `json:"runs"`
}

// Run is one measurement of every system, in this order.
type Run struct {
	Coattail       Measure             `json:"coattail"`
	CoattailDetail perf.DeliveryResult `json:"coattail_detail"`
	Core           Measure             `json:"nats_core"`
	JetStream      Measure             `json:"jetstream"`
	JetStreamSync  Measure             `json:"jetstream_sync_always"`
}

// Measure is one system's measurement.
type Measure struct {
	System string `json:"system"`
	// Messages were published; Delivered were counted by the subscriber,
	// each exactly once (and, for JetStream, in stream order); a run in
	// which they differ fails instead.
	Messages   int     `json:"messages"`
	Delivered  int     `json:"delivered"`
	Seconds    float64 `json:"seconds"`
	MsgsPerSec float64 `json:"msgs_per_sec"`
	MBPerSec   float64 `json:"mb_per_sec"`
	// Cores is the CPU this process used during the measurement (user and
	// system) over its duration.
	Cores float64 `json:"cores"`
	// PublishSeconds (JetStream) is from the first publish to the last
	// PubAck; Window (JetStream) is how many publishes at most awaited a
	// PubAck.
	PublishSeconds float64 `json:"publish_seconds,omitempty"`
	Window         int     `json:"window_msgs,omitempty"`
	// XCoattail is Coattail's msgs/s over this system's, measured in the
	// same run (0 for Coattail itself).
	XCoattail float64 `json:"coattail_over_this,omitempty"`
}

// System names, as printed.
const (
	sysCoattail      = "coattail, durable"
	sysCore          = "NATS core"
	sysJetStream     = "JetStream, defaults"
	sysJetStreamSync = "JetStream, sync always"
)

// coattailWindow is the window in bytes a paced perf.Delivery of size
// payloads keeps with the defaults: perf.DefaultWindow, or one batch per
// publishing goroutine when that is more (16 MiB at 64 KiB).
func coattailWindow(size int) int {
	return max(perf.DefaultWindow, perf.DefaultPublishers*perf.BatchFor(size)*size)
}

// jetStreamWindow returns how many async publishes may await a PubAck:
// Coattail's paced window in bytes (coattailWindow), at most 4096
// messages. At 64 KiB it gave JetStream 128 where Coattail kept 256.
func jetStreamWindow(size int) int {
	return max(1, min(4096, coattailWindow(size)/size))
}

// run measures every system o.Runs times, one after the other (never two
// at once).
func run(ctx context.Context, o options) (Result, error) {
	syncN := min(o.Messages, o.SyncMessages)
	r := Result{Size: o.Size, Messages: o.Messages, SyncMessages: syncN,
		CoattailWindow: coattailWindow(o.Size), JetStreamWindow: jetStreamWindow(o.Size),
		GOMAXPROCS: maxprocs(), GOGC: gogc(), NATSServer: natsServerVersion, NATSClient: natsClientVersion}
	say := func(f string, a ...any) {
		if o.progress != nil {
			fmt.Fprintf(o.progress, "natsbench: "+f+"\n", a...)
		}
	}
	for i := range o.Runs {
		var run Run
		say("run %d/%d: %s, %d messages of %s...", i+1, o.Runs, sysCoattail, o.Messages, humanize.IBytes(uint64(o.Size)))
		d, err := perf.Delivery(ctx, perf.DeliveryOptions{Size: o.Size, Subscribers: 1, Messages: o.Messages, Paced: true, Timeout: o.Timeout})
		if err != nil {
			return r, fmt.Errorf("%s: %w", sysCoattail, err)
		}
		run.CoattailDetail = d
		// perf.Delivery fails unless the subscriber processed every
		// publication exactly once.
		run.Coattail = Measure{System: sysCoattail, Messages: d.Messages, Delivered: d.Messages, Seconds: d.Seconds,
			MsgsPerSec: d.MsgsPerSec, MBPerSec: d.MBPerSec, Cores: d.Cores}

		steps := []struct {
			name string
			n    int
			dst  *Measure
			f    func(context.Context) (Measure, error)
		}{
			{sysCore, o.Messages, &run.Core, func(ctx context.Context) (Measure, error) { return natsCore(ctx, o.Size, o.Messages) }},
			{sysJetStream, o.Messages, &run.JetStream, func(ctx context.Context) (Measure, error) {
				return jetStream(ctx, o.Size, o.Messages, false)
			}},
			{sysJetStreamSync, syncN, &run.JetStreamSync, func(ctx context.Context) (Measure, error) {
				return jetStream(ctx, o.Size, syncN, true)
			}},
		}
		for _, s := range steps {
			say("run %d/%d: %s, %d messages...", i+1, o.Runs, s.name, s.n)
			m, err := measure(ctx, o.Timeout, o.Size, s.f)
			if err != nil {
				return r, fmt.Errorf("%s: %w", s.name, err)
			}
			m.System = s.name
			m.XCoattail = run.Coattail.MsgsPerSec / m.MsgsPerSec
			*s.dst = m
		}
		r.Runs = append(r.Runs, run)
	}
	return r, nil
}

// measure runs f with a timeout and fills in the rates from what f
// measured (Messages, Delivered, Seconds).
func measure(ctx context.Context, timeout time.Duration, size int, f func(context.Context) (Measure, error)) (Measure, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	m, err := f(ctx)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("%w (gave up after %v)", err, timeout)
		}
		return m, err
	}
	if m.Seconds <= 0 || m.Delivered != m.Messages {
		return m, fmt.Errorf("measured %d of %d messages in %.3fs", m.Delivered, m.Messages, m.Seconds)
	}
	m.MsgsPerSec = float64(m.Messages) / m.Seconds
	m.MBPerSec = m.MsgsPerSec * float64(size) / 1e6
	return m, nil
}

// cpuMeter measures this process's CPU (user and system) and wall time
// from its start.
type cpuMeter struct {
	wall time.Time
	cpu  time.Duration
}

func startMeter() (cpuMeter, error) {
	cpu, err := selfCPU()
	return cpuMeter{wall: time.Now(), cpu: cpu}, err
}

// stop returns the seconds from start to end and the cores used from
// start until now.
func (c cpuMeter) stop(end time.Time) (seconds, cores float64, err error) {
	cpu, err := selfCPU()
	return end.Sub(c.wall).Seconds(), (cpu - c.cpu).Seconds() / time.Since(c.wall).Seconds(), err
}

// selfCPU returns the CPU time (user and system) this process has used.
func selfCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// payload returns the bytes every system sends: the same as perf's, a
// JSON string of exactly size bytes.
func payload(size int) []byte {
	return []byte(`"` + strings.Repeat("x", size-2) + `"`)
}
