package main

// `coattail bench`: durable delivery between real instances on loopback,
// beside a raw libp2p stream and the disk measured in the same run
// (package perf, which `make bench` runs too).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/perf"
	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
)

// errBenchOptions is returned for bad flags of `coattail bench`.
var errBenchOptions = errors.New("bench: invalid options")

// benchOptions are the flags of `coattail bench`.
type benchOptions struct {
	size, window string
	subscribers  int
	messages     int
	mode         string
	publishers   int
	transport    string
	receiver     string
	dir          string
	keep         bool
	timeout      time.Duration
	asJSON       bool
	cpuProfile   string
	processes    bool
	serveSub     bool // hidden: be one subscriber process of a --processes bench
	windowGiven  bool // --window was on the command line
}

func newBenchCmd(a *app) *cobra.Command {
	o := &benchOptions{}
	cmd := &cobra.Command{
		Use:   "bench [--size 128B] [--subscribers 1] [--mode paced|burst]",
		Short: "Measure durable delivery on this machine against a raw libp2p stream, the disk and the datastore",
		Long: `Start a publisher and --subscribers subscriber instances in one process, on
127.0.0.1, each with its own datastore in a new directory inside --dir (default:
the system temp directory), removed afterwards unless --keep or the run failed; subscribe each
to the publisher with a receiver; publish --messages publications of --size
bytes and wait until every subscriber has processed (and durably recorded)
them all. In the same run and between the same hosts, send the same payloads
over a raw libp2p stream to every subscriber at once (nothing stored or
acknowledged; once before and once after the durable run, the faster counts),
write the same bytes to the disk with the syncs a durable queue needs, and
store them in a datastore of the kind the queues use (pebble), with nothing
else running: durable delivery stores every byte, so it cannot go faster
than that. Prints the four rates and the ratios, and the CPU used.

Modes: paced keeps at most --window bytes published but not yet processed
(subscribers that keep up), or one batch per --publishers goroutine when that
is more (the output says which); burst publishes everything at once (a backlog read
back from the datastore, as after an outage). The instances share this
machine's cores, so the numbers are a lower bound for separate machines.

With --processes every subscriber instance runs in a process of its own (this
binary, started by the bench), as separate services on one machine would; the
publisher stays in the bench's process, and the CPU counted is that of all of
them. --cpuprofile profiles the bench's process only.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.serveSub {
				tuneGC()
				return perf.ServeSubscriber(cmd.Context(), a.in, a.out)
			}
			o.windowGiven = cmd.Flags().Changed("window")
			po, err := o.options()
			if err != nil {
				return err
			}
			var prof *os.File
			if o.cpuProfile != "" {
				// The profile is written beside the target and moved onto
				// it once the run succeeded: a run that fails (bad options
				// found by perf, a timeout) leaves an earlier profile at
				// that path as it was.
				if st, err := os.Stat(o.cpuProfile); err == nil && st.IsDir() {
					return fmt.Errorf("bench: --cpuprofile %s is a directory", o.cpuProfile)
				}
				if prof, err = os.CreateTemp(filepath.Dir(o.cpuProfile), "."+filepath.Base(o.cpuProfile)+".*"); err != nil {
					return fmt.Errorf("bench: --cpuprofile: %w", err)
				}
				defer func() {
					prof.Close()
					os.Remove(prof.Name()) // gone already when it was moved
				}()
				po.CPUProfile = prof
			}
			// The instances go in a directory of their own inside --dir
			// (default: the system temp directory), as lab's do, so that
			// runs into the same --dir do not collide; it is removed
			// afterwards unless --keep, or the run failed (not
			// interrupted), for inspection.
			dir, err := runDir(o.dir, "coattail-bench-")
			if err != nil {
				return fmt.Errorf("bench: --dir: %w", err)
			}
			po.Dir = dir
			tuneGC() // measure what the service runs
			fmt.Fprintf(a.err, "bench: %d publications of %s to %d subscriber host(s), %s...\n",
				po.Messages, humanize.IBytes(uint64(po.Size)), po.Subscribers, o.mode)
			r, err := perf.Delivery(cmd.Context(), po)
			if o.keep || (err != nil && cmd.Context().Err() == nil) {
				fmt.Fprintf(a.err, "bench: kept %s\n", dir)
			} else if rerr := os.RemoveAll(dir); rerr != nil {
				fmt.Fprintf(a.err, "bench: removing %s: %v\n", dir, rerr)
			}
			if err != nil {
				if errors.Is(err, perf.ErrOptions) {
					return fmt.Errorf("%w: %w", errBenchOptions, err)
				}
				return fmt.Errorf("bench: %w", err)
			}
			if prof != nil {
				if err := prof.Close(); err != nil {
					return fmt.Errorf("bench: --cpuprofile: %w", err)
				}
				if err := os.Rename(prof.Name(), o.cpuProfile); err != nil {
					return fmt.Errorf("bench: --cpuprofile: %w", err)
				}
			}
			if o.asJSON {
				return printJSON(a.out, r)
			}
			printBench(a.out, r)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.size, "size", "128B", "payload size of each publication (8B..1MiB)")
	f.IntVar(&o.subscribers, "subscribers", 1, fmt.Sprintf("subscriber instances (1..%d)", perf.MaxSubscribers))
	f.IntVar(&o.messages, "messages", 0, "publications (default: 512MiB worth, at most 1000000 and at least 10000)")
	f.StringVar(&o.mode, "mode", "paced", "paced or burst")
	f.StringVar(&o.window, "window", humanize.IBytes(perf.DefaultWindow), "paced: bytes published but not yet processed")
	f.IntVar(&o.publishers, "publishers", perf.DefaultPublishers, "goroutines publishing at once")
	f.StringVar(&o.transport, "transport", node.PreferTCP, "tcp or quic")
	f.StringVar(&o.receiver, "receiver", perf.ReceiverInProcess, "inprocess (a Go function) or executable (a shell script: a process per publication)")
	f.StringVar(&o.dir, "dir", "", "parent directory for the run's instances, created in a new subdirectory of it (default: the system temp directory)")
	f.BoolVar(&o.keep, "keep", false, "keep the instance directories after the run (a failed run keeps them anyway)")
	f.DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up after this long")
	f.BoolVar(&o.asJSON, "json", false, "print the result as JSON")
	f.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile (pprof) of the durable run to this file")
	f.BoolVar(&o.processes, "processes", false, "run each subscriber instance in a process of its own, as separate services would")
	f.BoolVar(&o.serveSub, "serve-subscriber", false, "run one subscriber instance of a --processes bench, driven over stdin and stdout")
	_ = f.MarkHidden("serve-subscriber")
	return cmd
}

// options turns the flags into perf options, reporting every bad flag at
// once; perf checks the ranges.
func (o *benchOptions) options() (perf.DeliveryOptions, error) {
	var errs []error
	bad := func(f string, a ...any) { errs = append(errs, fmt.Errorf(f, a...)) }
	parseSize := func(flag, s string) int {
		v, err := humanize.ParseBytes(s)
		if err != nil {
			bad("--%s %q is not a size (examples: 128B, 64KiB, 1MiB)", flag, s)
			return 0
		}
		if v > math.MaxInt32 {
			bad("--%s %s is too large", flag, s)
			return 0
		}
		return int(v)
	}
	po := perf.DeliveryOptions{
		Size:        parseSize("size", o.size),
		Window:      parseSize("window", o.window),
		Subscribers: o.subscribers,
		Messages:    o.messages,
		Publishers:  o.publishers,
		Transport:   o.transport,
		Receiver:    o.receiver,
		Dir:         o.dir,
		Timeout:     o.timeout,
	}
	switch o.mode {
	case "paced":
		po.Paced = true
	case "burst":
		// A burst keeps no window: a --window given would be ignored.
		if o.windowGiven {
			bad("--window is for --mode paced, not burst")
		}
	default:
		bad("--mode %q is not paced or burst", o.mode)
	}
	if o.messages < 0 {
		bad("--messages %d is negative", o.messages)
	}
	// perf reads 0 as its default; a --publishers 0 is a mistake.
	if o.publishers < 1 || o.publishers > 1024 {
		bad("--publishers %d is out of range (1..1024)", o.publishers)
	}
	if o.messages == 0 {
		po.Messages = min(1_000_000, max(10_000, (512<<20)/max(po.Size, 1)))
	}
	if o.timeout <= 0 {
		bad("--timeout %v must be positive", o.timeout)
	}
	if po.Window == 0 && len(errs) == 0 {
		bad("--window must be positive")
	}
	if o.processes {
		exe, err := os.Executable()
		if err != nil {
			bad("--processes: cannot find this program to start subscriber processes: %v", err)
		}
		po.Spawn = func(ctx context.Context) *exec.Cmd {
			return exec.CommandContext(ctx, exe, "bench", "--serve-subscriber")
		}
	}
	if len(errs) > 0 {
		return po, fmt.Errorf("%w: %w", errBenchOptions, errors.Join(errs...))
	}
	// What perf refuses is refused before anything is created or printed.
	if err := po.Check(); err != nil {
		return po, fmt.Errorf("%w: %w", errBenchOptions, err)
	}
	return po, nil
}

// runDir creates a new directory, its name starting with prefix, for the
// instances of a bench or lab run inside parent (created if missing;
// default: the system temp directory), so that runs into the same --dir
// do not collide.
func runDir(parent, prefix string) (string, error) {
	if parent == "" {
		parent = os.TempDir()
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", err
	}
	return os.MkdirTemp(parent, prefix)
}

// printBench prints a result as a short table.
func printBench(w io.Writer, r perf.DeliveryResult) {
	mode := r.Mode
	if r.Window > 0 {
		mode = fmt.Sprintf("%s (at most %s outstanding)", mode, humanize.IBytes(uint64(r.Window)))
	}
	where := "all in this process"
	if r.Processes {
		where = "each subscriber in its own process"
	}
	fmt.Fprintf(w, "durable delivery on loopback: 1 publisher -> %d subscriber host(s), %s each, %s receiver, %s\n",
		r.Subscribers, humanize.IBytes(uint64(r.Size)), r.Receiver, where)
	fmt.Fprintf(w, "%d publications, %s, batches of %d from %d goroutines, over %s\n\n", r.Messages, mode, r.Batch, r.Publishers, r.Transport)
	rate := func(v float64) string { return humanize.Comma(int64(math.Round(v))) }
	_ = table(w, []string{"", "MSGS/S", "MB/S", "DURABLE / BASELINE"}, [][]string{
		{"coattail, durable", rate(r.MsgsPerSec), fmt.Sprintf("%.1f", r.MBPerSec), ""},
		{"raw libp2p stream", rate(r.RawMsgsPerSec), fmt.Sprintf("%.1f", r.RawMBPerSec), fmt.Sprintf("%.2fx", r.XRaw)},
		{"disk (fdatasync)", rate(r.DiskMBPerSec * 1e6 / float64(r.Size)), fmt.Sprintf("%.1f", r.DiskMBPerSec), fmt.Sprintf("%.2fx", r.XDisk)},
		{"datastore alone", rate(r.StoreMBPerSec * 1e6 / float64(r.Size)), fmt.Sprintf("%.1f", r.StoreMBPerSec), fmt.Sprintf("%.2fx", r.XStore)},
	})
	fmt.Fprintf(w, "\ndurable run took %.2fs and %.2f cores; rates are per subscriber host (every host got every publication)\n", r.Seconds, r.Cores)
	if r.Processes && r.PublisherCPUPerMsg > 0 {
		fmt.Fprintf(w, "publisher process: %.2f cores, %.2f µs of CPU per publication (one core: %s publications/s); raw sender: %.2f µs per message (%.2fx)\n",
			r.PublisherCores, r.PublisherCPUPerMsg, rate(1e6/r.PublisherCPUPerMsg), r.RawSenderCPUPerMsg, r.XRawCPU)
	}
	fmt.Fprintf(w, "raw stream: the faster of a run before (%s msgs/s) and after (%s msgs/s) the durable run\n", rate(r.RawRuns[0]), rate(r.RawRuns[1]))
	fmt.Fprintf(w, "datastore alone: the same bytes stored in pebble (a batch per key, synced, nothing else running) is %.2fx the raw stream: durable delivery, which stores every byte, cannot go faster here\n", r.StoreXRaw)
}
