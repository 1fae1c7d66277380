// Command natsbench measures Coattail's durable delivery against NATS in
// one process and one run, on 127.0.0.1, so that every ratio it prints is
// against baselines measured on the same machine at the same time:
//
//   - coattail, durable: perf.Delivery (what `coattail bench` runs), paced;
//   - NATS core: an embedded nats-server, one publisher connection and one
//     subscriber connection, nothing stored;
//   - JetStream with the server's defaults (file storage, no fsync per
//     write), async publish with a bounded window, a durable pull consumer
//     acking every message;
//   - JetStream with sync always (an fsync per write), the same, with fewer
//     messages.
//
// It owns only this comparison. The nats-server it embeds, the JetStream
// store and the Coattail instances exist only during their measurement, in
// temporary directories removed afterwards. It is a module of its own so
// that Coattail's module does not depend on NATS.
//
// A run fails (exit status 1) if Coattail's receiver runs other than once
// per publication, a NATS subscriber misses a message, receives one
// altered or is cut off as a slow consumer, or the JetStream consumer
// receives one twice or out of order; every wait is bounded by --timeout.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/coattail/coattail/node/perf"
	"github.com/dustin/go-humanize"
)

// gcPercent is the GOGC that `coattail bench` and the service run with
// (cmd/coattail: serviceGCPercent), for the whole process and so for
// every system measured here; a GOGC in the environment wins.
const gcPercent = 200

// Defaults of the flags.
const (
	defaultSyncMessages = 50_000
	defaultTimeout      = 10 * time.Minute
)

func main() {
	os.Exit(mainErr(os.Args[1:], os.Stdout, os.Stderr))
}

// mainErr runs the program with args and returns its exit status: 0, 1 for
// a failed run, 2 for bad flags.
func mainErr(args []string, stdout, stderr io.Writer) int {
	o, asJSON, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "natsbench: %v\n", err)
		return 2
	}
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(gcPercent)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	o.progress = stderr
	r, err := run(ctx, o)
	if err != nil {
		fmt.Fprintf(stderr, "natsbench: %v\n", err)
		return 1
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			fmt.Fprintf(stderr, "natsbench: %v\n", err)
			return 1
		}
		return 0
	}
	printResult(stdout, r)
	return 0
}

// parseFlags turns the command line into options, reporting every bad
// flag at once.
func parseFlags(args []string, stderr io.Writer) (options, bool, error) {
	fs := flag.NewFlagSet("natsbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	size := fs.String("size", "128B", "payload size of each message (8B..1MiB)")
	messages := fs.Int("messages", 0, "messages per system (default: 512MiB worth, at most 1000000 and at least 10000)")
	syncMessages := fs.Int("sync-messages", defaultSyncMessages, "at most this many messages for JetStream with sync always (an fsync per message)")
	runs := fs.Int("runs", 1, "measure every system this many times, in turn")
	timeout := fs.Duration("timeout", defaultTimeout, "give up on one system's measurement after this long")
	asJSON := fs.Bool("json", false, "print the whole result as JSON")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: natsbench [--size 128B] [--messages N] [--runs 1] [--json]\n\n"+
			"Measures Coattail's durable delivery, NATS core and JetStream (embedded nats-server %s)\n"+
			"in this process on 127.0.0.1, one publisher -> one subscriber, and prints the ratios.\n\n", natsServerVersion)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return options{}, false, err
	}
	var errs []error
	bad := func(f string, a ...any) { errs = append(errs, fmt.Errorf(f, a...)) }
	if fs.NArg() > 0 {
		bad("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	o := options{Messages: *messages, SyncMessages: *syncMessages, Runs: *runs, Timeout: *timeout}
	if v, err := humanize.ParseBytes(*size); err != nil {
		bad("--size %q is not a size (examples: 128B, 64KiB, 1MiB)", *size)
	} else if v < perf.MinSize || v > perf.MaxSize {
		bad("--size %s is out of range (%d..%d bytes)", *size, perf.MinSize, perf.MaxSize)
	} else {
		o.Size = int(v)
	}
	if o.Messages < 0 {
		bad("--messages %d is negative", o.Messages)
	}
	if o.Messages == 0 && o.Size > 0 {
		o.Messages = min(1_000_000, max(10_000, (512<<20)/o.Size))
	}
	if o.SyncMessages < 1 {
		bad("--sync-messages %d: need at least 1", o.SyncMessages)
	}
	if o.Runs < 1 {
		bad("--runs %d: need at least 1", o.Runs)
	}
	if o.Timeout <= 0 {
		bad("--timeout %v must be positive", o.Timeout)
	}
	if len(errs) > 0 {
		return o, false, errors.Join(errs...)
	}
	return o, *asJSON, nil
}

// printResult prints r as a table per run and, for several runs, the
// ranges over them.
func printResult(w io.Writer, r Result) {
	fmt.Fprintf(w, "coattail against NATS %s (nats.go %s) on 127.0.0.1, all in this process: 1 publisher -> 1 subscriber, %s payloads\n",
		r.NATSServer, r.NATSClient, humanize.IBytes(uint64(r.Size)))
	syncN := "the same"
	if r.SyncMessages < r.Messages {
		syncN = fmt.Sprintf("%d (capped by --sync-messages)", r.SyncMessages)
	}
	fmt.Fprintf(w, "GOMAXPROCS %d, GOGC %d; %d messages per system, JetStream sync always %s; window: coattail %s outstanding, JetStream %d PubAcks pending\n",
		r.GOMAXPROCS, r.GOGC, r.Messages, syncN, humanize.IBytes(uint64(r.CoattailWindow)), r.JetStreamWindow)
	for i, run := range r.Runs {
		fmt.Fprintf(w, "\nrun %d of %d\n", i+1, len(r.Runs))
		rows := [][]string{}
		for _, m := range run.all() {
			rows = append(rows, []string{m.System, humanize.Comma(int64(m.Delivered)), rate(m.MsgsPerSec),
				fmt.Sprintf("%.1f", m.MBPerSec), fmt.Sprintf("%.2f", m.Cores), ratio(m)})
		}
		printTable(w, []string{"", "MSGS", "MSGS/S", "MB/S", "CORES", "COATTAIL / BASELINE"}, rows)
		fmt.Fprintf(w, "JetStream PubAcks all in after %.2fs (defaults, %s msgs/s published) and %.2fs (sync always, %s msgs/s)\n",
			run.JetStream.PublishSeconds, rate(published(run.JetStream)), run.JetStreamSync.PublishSeconds, rate(published(run.JetStreamSync)))
	}
	if len(r.Runs) > 1 {
		fmt.Fprintf(w, "\nranges over %d runs\n", len(r.Runs))
		rows := [][]string{}
		for i, m := range r.Runs[0].all() {
			var rates, mbs, xs []float64
			for _, run := range r.Runs {
				o := run.all()[i]
				rates, mbs, xs = append(rates, o.MsgsPerSec), append(mbs, o.MBPerSec), append(xs, o.XCoattail)
			}
			x := ""
			if i > 0 {
				x = span(xs, func(v float64) string { return fmt.Sprintf("%.2fx", v) })
			}
			rows = append(rows, []string{m.System, span(rates, rate), span(mbs, func(v float64) string { return fmt.Sprintf("%.1f", v) }), x})
		}
		printTable(w, []string{"", "MSGS/S", "MB/S", "COATTAIL / BASELINE"}, rows)
	}
	fmt.Fprintf(w, `
coattail, durable: perf.Delivery, %d publishing goroutines, batches of %d; fsync before a publish returns and before the subscriber acks;
  measured until the subscriber has processed and durably recorded every message
NATS core: one publishing goroutine, nothing stored; measured from the first publish to the last message received
JetStream: one publishing goroutine, async publish, a durable pull consumer (Consume, %d buffered, explicit ack of every message);
  measured from the first publish to every PubAck received and the last ack confirmed by the server;
  server defaults do not fsync each write (sync_interval 2m), sync always fsyncs every message
`, perf.DefaultPublishers, perf.BatchFor(r.Size), pullBatch)
}

// all returns the run's measurements in table order.
func (r Run) all() []Measure {
	return []Measure{r.Coattail, r.Core, r.JetStream, r.JetStreamSync}
}

// published returns m's publish rate: messages over the time until the
// last PubAck.
func published(m Measure) float64 {
	if m.PublishSeconds <= 0 {
		return 0
	}
	return float64(m.Messages) / m.PublishSeconds
}

func rate(v float64) string { return humanize.Comma(int64(math.Round(v))) }

func ratio(m Measure) string {
	if m.XCoattail == 0 {
		return ""
	}
	return fmt.Sprintf("%.2fx", m.XCoattail)
}

// span formats the range of vs as "lo – hi" (or one value).
func span(vs []float64, f func(float64) string) string {
	lo, hi := vs[0], vs[0]
	for _, v := range vs {
		lo, hi = min(lo, v), max(hi, v)
	}
	if f(lo) == f(hi) {
		return f(lo)
	}
	return f(lo) + " – " + f(hi)
}

func printTable(w io.Writer, header []string, rows [][]string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	_ = tw.Flush()
}

// gogc returns the collector's current GOGC percentage.
func gogc() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

// maxprocs reports GOMAXPROCS.
func maxprocs() int { return runtime.GOMAXPROCS(0) }
