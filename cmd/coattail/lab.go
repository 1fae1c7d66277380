package main

// `coattail lab`: a mesh of real instances on loopback. Each node is its own
// `service start --headless` process; the lab wires tokens and
// subscriptions in a topology, publishes a storm through each publisher's
// control API (the path `action publish --stdin` takes), and checks what
// every receiver saw: each message once, in order, with its latency from
// publish to receiver run. Then it stops every service it started.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/spf13/cobra"
)

// Lab errors.
var (
	errLabOptions = errors.New("lab: invalid options")
	errLabSetup   = errors.New("lab: setup failed")
	errLabVerify  = errors.New("lab: deliveries failed verification")
	errLabLine    = errors.New("lab: bad receiver log line")
)

// Lab topologies.
const (
	labStar  = "star"  // node 0 publishes, every other node subscribes to it
	labChain = "chain" // node i subscribes to node i-1
	labMesh  = "mesh"  // every node subscribes to --degree random others
)

const (
	labReceiver = "lab"     // the receiver every lab instance has
	labLog      = "lab.log" // what it appends to, in the instance directory
	labPattern  = "lab.>"   // what tokens grant and subscriptions ask for
)

// labOptions are the flags of `coattail lab`.
type labOptions struct {
	nodes       int
	topology    string
	degree      int
	messages    int
	batch       int
	rate        float64
	seed        uint64
	dir         string
	keep        bool
	parallel    int
	idleTimeout time.Duration
	connLow     int
	connHigh    int
	asJSON      bool
	chaos       int     // interruptions during the storm and drain
	chaosStop   float64 // share of them that are `service stop`, not SIGKILL
	// given reports whether a flag was on the command line (nil: none
	// was), so that one the run would ignore is refused.
	given func(flag string) bool
}

func newLabCmd(a *app) *cobra.Command {
	o := &labOptions{}
	cmd := &cobra.Command{
		Use:   "lab [--nodes N] [--topology star|chain|mesh] [--messages M]",
		Short: "Run a mesh of instances on loopback, publish a storm and verify every delivery",
		Long: `Start N instances on 127.0.0.1 (each its own service process) in a temporary
directory, wire tokens and subscriptions in a topology, publish --messages
messages from every publisher in batches, and verify that each subscription's
receiver ran exactly once per message, in order. Prints per-node memory (RSS),
delivery latency (publish to receiver run) p50/p99 and loss, stops every
service, and exits non-zero when anything was lost, duplicated or reordered.

Topologies: star (node 0 publishes to all others), chain (node i subscribes to
node i-1), mesh (each node subscribes to --degree random others, --seed).

--chaos K takes a random node down K times during the storm and the drain
(SIGKILL, or service stop for a --chaos-stop share), restarting it after a
short random pause (--seed). Every publication whose publish call returned
must still arrive once, in order; one whose call the interruption cut may
arrive (whole, never half a batch) or not; a subscriber interrupted while its
receiver ran may run that one publication again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// The default degree fits any mesh: with fewer than 4 nodes
			// it is every other node, not an error about a flag the user
			// did not give.
			if !cmd.Flags().Changed("degree") && o.nodes >= 2 {
				o.degree = min(o.degree, o.nodes-1)
			}
			o.given = cmd.Flags().Changed
			if err := o.validate(); err != nil {
				return err
			}
			bin, err := os.Executable()
			if err != nil {
				return fmt.Errorf("%w: locating the coattail binary: %w", errLabSetup, err)
			}
			// A reader of the lab's output that goes away (coattail lab |
			// head, a pager quit, Ctrl-C in a pipeline that ends tee)
			// stops the run as Ctrl-C does: its services are stopped and
			// its directories removed. SIGPIPE used to kill the lab at its
			// next progress line, leaving every service it had started
			// running. Caught, SIGPIPE only makes the write fail (EPIPE);
			// a handler, unlike an ignored signal, is not inherited by the
			// services the lab starts.
			signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
			ctx, stop := context.WithCancel(cmd.Context())
			defer stop()
			progress := func(f string, args ...any) {
				if _, err := fmt.Fprintf(a.err, "lab: "+f+"\n", args...); errors.Is(err, syscall.EPIPE) {
					stop()
				}
			}
			rep, err := runLab(ctx, *o, bin, progress)
			// A run that failed before its storm has nothing to report
			// beyond the error (and the kept directory, said above).
			if rep != nil && rep.PerNode != nil {
				if o.asJSON {
					if perr := printJSON(a.out, rep); perr != nil {
						return perr
					}
				} else {
					printLabReport(a.out, rep)
				}
			}
			if err != nil {
				return err
			}
			if !rep.OK() {
				return fmt.Errorf("%w: %s", errLabVerify, strings.Join(rep.failures(), "; "))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.nodes, "nodes", 10, "number of instances (2..1000; 100 fits a 2-core machine)")
	f.StringVar(&o.topology, "topology", labMesh, "star, chain or mesh")
	f.IntVar(&o.degree, "degree", 3, "mesh: publishers each node subscribes to (without --degree: 3, or every other node when there are fewer)")
	f.IntVar(&o.messages, "messages", 100, "messages each publisher publishes")
	f.IntVar(&o.batch, "batch", 50, "messages per publish call (1..4096)")
	f.Float64Var(&o.rate, "rate", 0, "messages per second per publisher; 0 publishes as fast as the services take them")
	f.Uint64Var(&o.seed, "seed", 1, "mesh: random seed, so a run can be repeated")
	f.StringVar(&o.dir, "dir", "", "parent directory for the lab (default: the system temp directory)")
	f.BoolVar(&o.keep, "keep", false, "keep the instance directories (logs, data) after the run")
	f.IntVar(&o.parallel, "parallel", 8, "concurrent service starts and subscription set-ups")
	f.DurationVar(&o.idleTimeout, "idle-timeout", time.Minute, "give up waiting for deliveries after this long without one")
	f.IntVar(&o.connLow, "conn-low", 32, "network.conn_low of every instance")
	f.IntVar(&o.connHigh, "conn-high", 192, "network.conn_high of every instance")
	f.BoolVar(&o.asJSON, "json", false, "print the report as JSON")
	f.IntVar(&o.chaos, "chaos", 0, "take a random node down this many times during the storm and drain, and restart it (0: none)")
	f.Float64Var(&o.chaosStop, "chaos-stop", 0.25, "--chaos: share of the interruptions that are a graceful service stop rather than SIGKILL (0..1)")
	return cmd
}

// validate reports every bad flag at once.
func (o *labOptions) validate() error {
	var errs []error
	bad := func(f string, a ...any) { errs = append(errs, fmt.Errorf(f, a...)) }
	if o.nodes < 2 || o.nodes > 1000 {
		bad("--nodes %d is out of range (2..1000)", o.nodes)
	}
	given := func(f string) bool { return o.given != nil && o.given(f) }
	switch o.topology {
	case labStar, labChain:
		if given("degree") {
			bad("--degree is for --topology mesh, not %s", o.topology)
		}
	case labMesh:
		if o.degree < 1 || (o.nodes >= 2 && o.degree > o.nodes-1) {
			bad("--degree %d is out of range for %d nodes (1..%d)", o.degree, o.nodes, max(o.nodes-1, 1))
		}
	default:
		bad("--topology %q is not one of star, chain, mesh", o.topology)
	}
	if o.messages < 1 || o.messages > 1_000_000 {
		bad("--messages %d is out of range (1..1000000)", o.messages)
	}
	if o.batch < 1 || o.batch > publishBatch {
		bad("--batch %d is out of range (1..%d)", o.batch, publishBatch)
	}
	if o.rate < 0 || math.IsNaN(o.rate) || math.IsInf(o.rate, 0) {
		bad("--rate %v must be 0 (unpaced) or a positive number", o.rate)
	}
	if o.parallel < 1 || o.parallel > 256 {
		bad("--parallel %d is out of range (1..256)", o.parallel)
	}
	if o.idleTimeout < time.Second {
		bad("--idle-timeout %v is too short (minimum 1s)", o.idleTimeout)
	}
	if o.connLow < 1 || o.connHigh < o.connLow {
		bad("--conn-low/--conn-high: need 1 <= conn-low <= conn-high (got %d, %d)", o.connLow, o.connHigh)
	}
	if o.chaos < 0 || o.chaos > 10_000 {
		bad("--chaos %d is out of range (0..10000)", o.chaos)
	}
	if !(o.chaosStop >= 0 && o.chaosStop <= 1) {
		bad("--chaos-stop %v is out of range (0..1)", o.chaosStop)
	}
	// Flags the run would ignore: a user who gives one expects it to act.
	if o.chaos == 0 && given("chaos-stop") {
		bad("--chaos-stop is for a run with --chaos")
	}
	if o.chaos == 0 && o.topology != labMesh && given("seed") {
		bad("--seed is for --topology mesh or --chaos")
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", errLabOptions, errors.Join(errs...))
	}
	return nil
}

// labEdge is one subscription: Sub's receiver subscribes to Pub's subjects.
type labEdge struct{ Pub, Sub int }

// labTopology returns the subscriptions of a topology over n nodes, each
// (publisher, subscriber) pair at most once and never a node to itself.
func labTopology(kind string, n, degree int, seed uint64) ([]labEdge, error) {
	var edges []labEdge
	switch kind {
	case labStar:
		for j := 1; j < n; j++ {
			edges = append(edges, labEdge{Pub: 0, Sub: j})
		}
	case labChain:
		for j := 1; j < n; j++ {
			edges = append(edges, labEdge{Pub: j - 1, Sub: j})
		}
	case labMesh:
		if degree < 1 || degree > n-1 {
			return nil, fmt.Errorf("%w: mesh degree %d out of range for %d nodes", errLabOptions, degree, n)
		}
		rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
		others := make([]int, 0, n-1)
		for j := range n {
			others = others[:0]
			for i := range n {
				if i != j {
					others = append(others, i)
				}
			}
			rng.Shuffle(len(others), func(a, b int) { others[a], others[b] = others[b], others[a] })
			pubs := slices.Clone(others[:degree])
			slices.Sort(pubs)
			for _, p := range pubs {
				edges = append(edges, labEdge{Pub: p, Sub: j})
			}
		}
	default:
		return nil, fmt.Errorf("%w: unknown topology %q", errLabOptions, kind)
	}
	return edges, nil
}

// labNode is one instance of the lab.
type labNode struct {
	index  int
	name   string
	layout node.Layout
	peerID string
	pid    int
	conn   *node.Conn
	// launched: `service start` was run; the service may be up even when
	// pid is 0 (the launcher was interrupted before it printed the pid).
	launched bool
	// st guards pid and conn while the chaos takes the node down.
	st labNodeState
}

func (n *labNode) subject() string { return "lab." + strconv.Itoa(n.index) }

// labRun is one run of the lab.
type labRun struct {
	o        labOptions
	bin      string
	dir      string
	env      []string // of the service processes
	nodes    []*labNode
	edges    []labEdge
	fanout   []int // subscriptions per publisher
	progress func(string, ...any)
}

// labLatency is in milliseconds.
type labLatency struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// labStat summarises one number over the nodes.
type labStat struct {
	Min    int64 `json:"min"`
	Median int64 `json:"median"`
	Max    int64 `json:"max"`
	Total  int64 `json:"total"`
}

// labNodeReport is one node's line of the report.
type labNodeReport struct {
	Name          string `json:"name"`
	PeerID        string `json:"peer_id"`
	PID           int    `json:"pid"`
	RSSKiB        int64  `json:"rss_kib"`
	PeakRSSKiB    int64  `json:"peak_rss_kib"`
	Subscriptions int    `json:"subscriptions"` // held at publishers
	Subscribers   int    `json:"subscribers"`   // held here by others
	Received      int    `json:"received"`      // receiver runs
}

// labReport is what a run found; JSON with --json.
type labReport struct {
	Topology             string            `json:"topology"`
	Nodes                int               `json:"nodes"`
	Degree               int               `json:"degree,omitempty"`
	Seed                 uint64            `json:"seed,omitempty"`
	Subscriptions        int               `json:"subscriptions"`
	Publishers           int               `json:"publishers"`
	MessagesPerPublisher int               `json:"messages_per_publisher"`
	Batch                int               `json:"batch"`
	Rate                 float64           `json:"rate,omitempty"`
	Published            int               `json:"published"`
	Expected             int               `json:"expected_deliveries"`
	Delivered            int               `json:"delivered"`
	Lost                 int               `json:"lost"`
	Duplicates           int               `json:"duplicates"`
	OutOfOrder           int               `json:"out_of_order"`
	Unexpected           int               `json:"unexpected"`
	BadLines             int               `json:"bad_lines"`
	DeadLetters          uint64            `json:"dead_letters"`
	Latency              labLatency        `json:"latency_ms"`
	RSS                  labStat           `json:"rss_kib"`
	PeakRSS              labStat           `json:"peak_rss_kib"`
	Setup                localapi.Duration `json:"setup_s"`
	Storm                localapi.Duration `json:"storm_s"`
	Drain                localapi.Duration `json:"drain_s"`
	Teardown             localapi.Duration `json:"teardown_s"`
	Chaos                int               `json:"chaos,omitempty"`
	Kills                int               `json:"kills,omitempty"`
	Stops                int               `json:"stops,omitempty"`
	Restarts             int               `json:"restarts,omitempty"`
	ChaosFailures        int               `json:"chaos_failures,omitempty"` // nodes that did not come back
	Uncertain            int               `json:"uncertain,omitempty"`      // messages in publish calls cut by a kill or stop
	UncertainDelivered   int               `json:"uncertain_delivered,omitempty"`
	Reruns               int               `json:"reruns,omitempty"` // receiver re-runs of a publication in flight at an interruption
	PartialBatches       int               `json:"partial_batches,omitempty"`
	LogErrors            int               `json:"log_errors"` // ERROR lines in the services' logs
	ChaosEvents          []labChaosEvent   `json:"chaos_events,omitempty"`
	Wall                 localapi.Duration `json:"wall_s"`
	Throughput           float64           `json:"deliveries_per_s"`
	Stopped              int               `json:"stopped"`
	Killed               int               `json:"killed"`
	PerNode              []labNodeReport   `json:"per_node"`
	Problems             []string          `json:"problems,omitempty"`
	Dir                  string            `json:"dir,omitempty"`
}

// OK reports whether every message reached every subscription once, in order.
func (r *labReport) OK() bool { return len(r.failures()) == 0 }

func (r *labReport) failures() []string {
	var f []string
	add := func(n int, what string) {
		if n != 0 {
			f = append(f, fmt.Sprintf("%d %s", n, what))
		}
	}
	add(r.Lost, "lost")
	add(r.Duplicates, "duplicated")
	add(r.OutOfOrder, "out of order")
	add(r.Unexpected, "unexpected")
	add(r.BadLines, "unreadable receiver lines")
	add(int(r.DeadLetters), "dead letters")
	add(r.PartialBatches, "partly delivered batches")
	add(r.ChaosFailures, "nodes that did not come back")
	if r.Expected == 0 {
		f = append(f, "nothing was expected: no subscriptions")
	}
	return f
}

// runLab runs the whole lab and always stops what it started. The report
// is nil only when the run failed before any service started.
func runLab(ctx context.Context, o labOptions, bin string, progress func(string, ...any)) (*labReport, error) {
	wall := time.Now()
	edges, err := labTopology(o.topology, o.nodes, o.degree, o.seed)
	if err != nil {
		return nil, err
	}
	dir, err := runDir(o.dir, "ctlab")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errLabSetup, err)
	}
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		return nil, fmt.Errorf("%w: %w", errLabSetup, err)
	}
	l := &labRun{o: o, bin: bin, dir: dir, edges: edges, fanout: make([]int, o.nodes), progress: progress}
	for _, e := range edges {
		l.fanout[e.Pub]++
	}
	rep := &labReport{Topology: o.topology, Nodes: o.nodes, Subscriptions: len(edges),
		MessagesPerPublisher: o.messages, Batch: o.batch, Rate: o.rate, Chaos: o.chaos}
	if o.topology == labMesh {
		rep.Degree, rep.Seed = o.degree, o.seed
	}
	for _, f := range l.fanout {
		if f > 0 {
			rep.Publishers++
		}
	}
	runErr := l.exercise(ctx, rep)
	td := time.Now()
	rep.Stopped, rep.Killed = l.teardown()
	rep.Teardown = localapi.Duration(time.Since(td))
	if rep.Killed > 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("%d service(s) did not stop when asked and were killed", rep.Killed))
	}
	// An interrupted run (Ctrl-C, SIGTERM) is the user's choice, not a
	// failure to inspect: its directories go unless --keep.
	interrupted := ctx.Err() != nil
	if interrupted {
		runErr = fmt.Errorf("lab: interrupted; stopped the %d service(s) it had started", rep.Stopped+rep.Killed)
	}
	if o.keep || (!interrupted && (runErr != nil || !rep.OK())) {
		rep.Dir = dir
		progress("kept %s for inspection", dir)
	} else if err := os.RemoveAll(dir); err != nil {
		rep.Problems = append(rep.Problems, fmt.Sprintf("removing %s: %v", dir, err))
	}
	rep.Wall = localapi.Duration(time.Since(wall))
	return rep, runErr
}

// exercise sets the lab up, runs the storm and measures; it leaves
// teardown to the caller.
func (l *labRun) exercise(ctx context.Context, rep *labReport) error {
	start := time.Now()
	if err := l.create(); err != nil {
		return err
	}
	l.progress("created %d instances in %s", len(l.nodes), l.dir)
	if err := l.startAll(ctx); err != nil {
		return err
	}
	l.progress("started %d services (%.1fs)", len(l.nodes), time.Since(start).Seconds())
	if err := l.wire(ctx); err != nil {
		return err
	}
	rep.Setup = localapi.Duration(time.Since(start))
	l.progress("wired %d subscriptions in a %s (%.1fs)", len(l.edges), l.o.topology, time.Since(start).Seconds())

	storm := time.Now()
	// The chaos runs beside the storm and the drain; a node it cannot
	// bring back ends both.
	sctx, scancel := context.WithCancelCause(ctx)
	defer scancel(nil)
	var chaos *labChaos
	chaosDone := make(chan struct{})
	var chaosErr error
	if l.o.chaos > 0 {
		chaos = newLabChaos(l, storm)
		go func() {
			defer close(chaosDone)
			if chaosErr = chaos.run(sctx); chaosErr != nil && sctx.Err() == nil {
				scancel(chaosErr)
			}
		}()
	} else {
		close(chaosDone)
	}
	// waitChaos ends the chaos (if still running) and reports it.
	waitChaos := func(stop bool) {
		if stop {
			scancel(context.Canceled)
		}
		<-chaosDone
		if chaos != nil {
			chaos.report(rep)
		}
	}
	published, uncertain, err := l.storm(sctx)
	rep.Published = published
	rep.Storm = localapi.Duration(time.Since(storm))
	if err != nil {
		waitChaos(true)
		if cause := context.Cause(sctx); ctx.Err() == nil && cause != nil && !errors.Is(cause, context.Canceled) {
			return cause
		}
		return err
	}
	for _, bs := range uncertain {
		for _, b := range bs {
			rep.Uncertain += b.Count
		}
	}
	l.progress("published %d messages from %d publishers (%.1fs)", published, rep.Publishers, time.Since(storm).Seconds())
	rep.Expected = len(l.edges) * l.o.messages
	for _, e := range l.edges {
		for _, b := range uncertain[e.Pub] {
			rep.Expected -= b.Count
		}
	}
	if chaos != nil {
		chaos.inDrain.Store(true)
		if rep.Uncertain > 0 {
			l.progress("%d message(s) in publish calls cut by the chaos may or may not arrive", rep.Uncertain)
		}
	}
	expect := func() labExpect {
		if chaos == nil {
			return labExpect{}
		}
		return chaos.expect(uncertain)
	}
	drained := l.drain(sctx, rep.Expected, chaosDone, expect)
	waitChaos(!drained)
	if chaosErr != nil && ctx.Err() == nil && !errors.Is(chaosErr, context.Canceled) {
		return chaosErr
	}
	rep.Drain = localapi.Duration(time.Since(storm) - time.Duration(rep.Storm))

	// Memory first: what the services hold with their work done.
	rep.PerNode = make([]labNodeReport, len(l.nodes))
	var rss, peak []int64
	for i, n := range l.nodes {
		r := labNodeReport{Name: n.name, PeerID: n.peerID, PID: n.pid, Subscribers: l.fanout[i]}
		r.RSSKiB, r.PeakRSSKiB = labProcMemory(n.pid)
		rss, peak = append(rss, r.RSSKiB), append(peak, r.PeakRSSKiB)
		rep.PerNode[i] = r
	}
	for _, e := range l.edges {
		rep.PerNode[e.Sub].Subscriptions++
	}
	rep.RSS, rep.PeakRSS = labSummarize(rss), labSummarize(peak)
	for _, n := range l.nodes {
		if n.conn == nil {
			// Interrupted while the chaos had it down.
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: down at the end of the run", n.name))
			continue
		}
		// Measured even after an interrupt: the report says what arrived.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		st, err := n.conn.Status(sctx)
		cancel()
		if err != nil {
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: status: %v", n.name, err))
			continue
		}
		rep.DeadLetters += st.Counters.DeadLetters
	}

	logs, bad := l.readLogs()
	t := tallyLabExpect(l.edges, l.o.messages, l.peerIDs(), logs, expect())
	rep.BadLines = bad + t.BadRecords
	rep.UncertainDelivered, rep.Reruns, rep.PartialBatches = t.Uncertain, t.Reruns, t.PartialBatches
	errLines, nerr := l.logErrors(5)
	rep.LogErrors = nerr
	rep.Problems = append(rep.Problems, errLines...)
	rep.Delivered, rep.Lost, rep.Duplicates = t.Delivered, t.Expected-t.Delivered, t.Duplicates
	rep.OutOfOrder, rep.Unexpected = t.OutOfOrder, t.Unexpected
	rep.Problems = append(rep.Problems, t.Examples...)
	for i, c := range t.Received {
		rep.PerNode[i].Received = c
	}
	rep.Latency = labLatencies(t.Latencies)
	if busy := time.Duration(rep.Storm) + time.Duration(rep.Drain); busy > 0 {
		rep.Throughput = float64(t.Delivered) / busy.Seconds()
	}
	switch {
	case ctx.Err() != nil:
		rep.Problems = append(rep.Problems, "interrupted before every delivery arrived")
		return fmt.Errorf("lab: interrupted: %w", ctx.Err())
	case !drained:
		rep.Problems = append(rep.Problems, fmt.Sprintf("gave up waiting: no delivery for %v", l.o.idleTimeout))
	}
	return nil
}

func (l *labRun) peerIDs() []string {
	ids := make([]string, len(l.nodes))
	for i, n := range l.nodes {
		ids[i] = n.peerID
	}
	return ids
}

// create lays out every instance with the lab receiver.
func (l *labRun) create() error {
	receiver, err := labReceiverScript()
	if err != nil {
		return err
	}
	width := len(strconv.Itoa(l.o.nodes - 1))
	ports := map[int]bool{}
	for i := range l.o.nodes {
		name := fmt.Sprintf("n%0*d", width, i)
		dir := filepath.Join(l.dir, name)
		if sock := (node.Layout{Dir: dir}).Socket(); len(sock) > 107 {
			return fmt.Errorf("%w: socket path %s is too long for a unix socket; use a shorter --dir", errLabSetup, sock)
		}
		lay, err := node.CreateInstance(dir, node.CreateOptions{Port: 0, Loopback: true})
		if err != nil {
			return fmt.Errorf("%w: %s: %w", errLabSetup, name, err)
		}
		cfg, err := node.LoadConfig(lay.Config())
		if err != nil {
			return fmt.Errorf("%w: %s: %w", errLabSetup, name, err)
		}
		cfg.Network.ConnLow, cfg.Network.ConnHigh = l.o.connLow, l.o.connHigh
		if l.o.chaos > 0 {
			// A restarted node listens where it did, as a real instance
			// (its configured port) does: on a new ephemeral port, the
			// subscribers of a restarted publisher that had restarted
			// too could reach it no more (each knows only the other's
			// old address).
			port, err := labFreePort(ports)
			if err != nil {
				return fmt.Errorf("%w: %s: %w", errLabSetup, name, err)
			}
			cfg.Network.Listen = node.LoopbackConfig(port).Network.Listen
		}
		conf, err := node.RenderConfig(cfg, 0)
		if err != nil {
			return fmt.Errorf("%w: %s: %w", errLabSetup, name, err)
		}
		if err := os.WriteFile(lay.Config(), conf, 0o644); err != nil {
			return fmt.Errorf("%w: %s: %w", errLabSetup, name, err)
		}
		if err := os.WriteFile(filepath.Join(lay.Receivers(), labReceiver), receiver, 0o755); err != nil {
			return fmt.Errorf("%w: %s: %w", errLabSetup, name, err)
		}
		id, err := node.PeerIDOf(lay)
		if err != nil {
			return fmt.Errorf("%w: %s: %w", errLabSetup, name, err)
		}
		l.nodes = append(l.nodes, &labNode{index: i, name: name, layout: lay, peerID: id.String()})
	}
	// The services register in a runtime dir of their own, so the lab's
	// nodes do not crowd `coattail service status` of the user's instances.
	l.env = []string{node.EnvRuntimeDir + "=" + filepath.Join(l.dir, "run")}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "COATTAIL_") {
			l.env = append(l.env, kv)
		}
	}
	return nil
}

// labReceiverScript is the receiver every node runs once per delivery. It
// appends "<seq> <receive time> <publisher> <data>" in one write. Under
// bash it reads the clock and stdin with builtins: no fork per message, so
// the measured latency is the broker's, not the cost of `date`.
func labReceiverScript() ([]byte, error) {
	if bash, err := exec.LookPath("bash"); err == nil {
		return []byte("#!" + bash + `
# Coattail lab receiver (written by coattail lab).
LC_ALL=C
IFS= read -r -d '' input
input=${input//$'\n'/}
printf '%s %s %s %s\n' "$COATTAIL_SEQUENCE" "$EPOCHREALTIME" "$COATTAIL_PUBLISHER" "$input" >>"$COATTAIL_INSTANCE/` + labLog + `"
`), nil
	}
	if _, err := exec.LookPath("date"); err != nil {
		return nil, fmt.Errorf("%w: the lab receiver needs bash or date on PATH", errLabSetup)
	}
	return []byte(`#!/bin/sh
# Coattail lab receiver (written by coattail lab).
t=$(date +%s%N)
input=$(tr -d '\n')
printf '%s %s %s %s\n' "$COATTAIL_SEQUENCE" "$t" "$COATTAIL_PUBLISHER" "$input" >>"$COATTAIL_INSTANCE/` + labLog + `"
`), nil
}

// labEach runs fn for 0..n-1 on up to parallel goroutines and returns the
// first error; after one, no new item starts.
func labEach(ctx context.Context, n, parallel int, fn func(context.Context, int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(parallel, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(ctx, i); err != nil {
					cancel(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

// startAll starts every service and opens its control API.
func (l *labRun) startAll(ctx context.Context) error {
	var mu sync.Mutex
	started := 0
	return labEach(ctx, len(l.nodes), l.o.parallel, func(ctx context.Context, i int) error {
		n := l.nodes[i]
		if err := l.start(ctx, n); err != nil {
			return err
		}
		mu.Lock()
		started++
		if started%25 == 0 && started < len(l.nodes) {
			l.progress("started %d/%d services", started, len(l.nodes))
		}
		mu.Unlock()
		return nil
	})
}

func (l *labRun) start(ctx context.Context, n *labNode) error {
	pid, c, err := l.launch(ctx, n)
	if err != nil {
		n.st.mu.Lock()
		n.pid = pid // 0 unknown: teardown looks for it
		n.st.mu.Unlock()
		return err
	}
	up := make(chan struct{})
	close(up)
	n.st.mu.Lock()
	n.pid, n.conn, n.st.up = pid, c, up
	n.st.mu.Unlock()
	return nil
}

// launch runs `service start --headless` in n's directory and opens the
// service's control API.
func (l *labRun) launch(ctx context.Context, n *labNode) (int, *node.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, l.bin, "--instance", n.layout.Dir, "service", "start", "--headless")
	cmd.Env = l.env
	cmd.Dir = n.layout.Dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	// The service it leaves behind inherits neither pipe (it logs to its
	// file), but bound the wait in case that ever changes.
	cmd.WaitDelay = 5 * time.Second
	n.launched = true
	if err := cmd.Run(); err != nil {
		return 0, nil, fmt.Errorf("%w: %s: service start: %w: %s", errLabSetup, n.name, err, strings.TrimSpace(errb.String()))
	}
	pid, err := strconv.Atoi(strings.TrimSpace(out.String()))
	if err != nil || pid <= 0 {
		return 0, nil, fmt.Errorf("%w: %s: service start printed %q, want a pid", errLabSetup, n.name, out.String())
	}
	c, err := node.Connect(ctx, n.layout)
	if err != nil {
		return pid, nil, fmt.Errorf("%w: %s: %w", errLabSetup, n.name, err)
	}
	if !c.Online {
		_ = c.Close()
		return pid, nil, fmt.Errorf("%w: %s: the service (pid %d) does not answer on its control socket", errLabSetup, n.name, pid)
	}
	return pid, c, nil
}

// wire gives each subscriber a token from its publisher, bound to its peer
// id, and subscribes its lab receiver.
func (l *labRun) wire(ctx context.Context) error {
	return labEach(ctx, len(l.edges), l.o.parallel, func(ctx context.Context, k int) error {
		pub, sub := l.nodes[l.edges[k].Pub], l.nodes[l.edges[k].Sub]
		tok, err := pub.conn.IssueToken(ctx, localapi.IssueRequest{Subscribe: []string{labPattern}, Bearers: []string{"vt://" + sub.peerID}})
		if err != nil {
			return fmt.Errorf("%w: %s issuing a token for %s: %w", errLabSetup, pub.name, sub.name, err)
		}
		if _, err := sub.conn.AddPeer(ctx, tok.Token); err != nil {
			return fmt.Errorf("%w: %s adding %s: %w", errLabSetup, sub.name, pub.name, err)
		}
		if _, err := sub.conn.Subscribe(ctx, localapi.SubscribeRequest{Peer: pub.peerID, Pattern: labPattern, Receiver: labReceiver}); err != nil {
			return fmt.Errorf("%w: %s subscribing to %s: %w", errLabSetup, sub.name, pub.name, err)
		}
		return nil
	})
}

// labData is the payload of one storm message.
type labData struct {
	Pub  int   `json:"p"` // publisher index
	N    int   `json:"n"` // message number at that publisher, from 0
	Sent int64 `json:"t"` // unix nanoseconds just before the publish call
}

// storm publishes o.messages from every publisher at once and returns how
// many messages went out. Each publish must reach every subscription of
// its publisher: the answer counts the queue entries written. A publish
// call that fails because the chaos took its publisher down meanwhile is
// not an error: its batch is returned as uncertain (it may or may not have
// been queued; it is not published again, which would publish it twice),
// and the publisher goes on with the next batch once it is back.
func (l *labRun) storm(ctx context.Context) (int, map[int][]labBatch, error) {
	var published atomic.Int64
	var mu sync.Mutex
	uncertain := map[int][]labBatch{}
	var pubs []int
	for i, f := range l.fanout {
		if f > 0 {
			pubs = append(pubs, i)
		}
	}
	err := labEach(ctx, len(pubs), len(pubs), func(ctx context.Context, k int) error {
		n := l.nodes[pubs[k]]
		begin := time.Now()
		batch := make([]json.RawMessage, 0, l.o.batch)
		for first := 0; first < l.o.messages; first += l.o.batch {
			if l.o.rate > 0 {
				due := begin.Add(time.Duration(float64(first) / l.o.rate * float64(time.Second)))
				if d := time.Until(due); d > 0 {
					select {
					case <-ctx.Done():
						return ctx.Err()
					case <-time.After(d):
					}
				}
			}
			conn, epoch, err := n.session(ctx)
			if err != nil {
				return err
			}
			batch = batch[:0]
			now := time.Now().UnixNano()
			for m := first; m < min(first+l.o.batch, l.o.messages); m++ {
				b, err := json.Marshal(labData{Pub: n.index, N: m, Sent: now})
				if err != nil {
					return err
				}
				batch = append(batch, b)
			}
			res, err := conn.Publish(ctx, localapi.PublishRequest{Action: n.subject(), Batch: batch})
			if err != nil && ctx.Err() == nil && n.interruptedSince(epoch) {
				mu.Lock()
				uncertain[n.index] = append(uncertain[n.index], labBatch{First: first, Count: len(batch)})
				mu.Unlock()
				l.progress("%s: the publish call of messages %d-%d was cut (it may or may not have queued them): %v", n.name, first, first+len(batch)-1, err)
				continue
			}
			if err != nil {
				return fmt.Errorf("%s: publish after %d message(s): %w", n.name, first, err)
			}
			if want := len(batch) * l.fanout[n.index]; res.Published != want {
				return fmt.Errorf("%s: publish queued %d entries, want %d (%d messages x %d subscriptions)", n.name, res.Published, want, len(batch), l.fanout[n.index])
			}
			published.Add(int64(len(batch)))
		}
		return nil
	})
	return int(published.Load()), uncertain, err
}

// drain waits until the receivers have written want lines in all, or no
// line arrived for the idle timeout. It reports whether all arrived. With
// chaos, line counts include re-runs and publications of cut calls, so
// it waits for the chaos to end and then until every required delivery is
// in the logs and every publisher's queues are empty (nothing unacked: a
// cut call's batch, if queued, has arrived); the idle timeout runs only
// once the chaos has ended.
func (l *labRun) drain(ctx context.Context, want int, chaosDone <-chan struct{}, expect func() labExpect) bool {
	last, lastChange, lastReport, lastCheck := -1, time.Now(), time.Now(), time.Time{}
	for {
		got := 0
		for _, n := range l.nodes {
			got += labCountLines(filepath.Join(n.layout.Dir, labLog))
		}
		chaosOver := true
		if l.o.chaos > 0 {
			select {
			case <-chaosDone:
			default:
				chaosOver = false
			}
		}
		if got >= want {
			if l.o.chaos == 0 {
				return true
			}
			if chaosOver && time.Since(lastCheck) >= 500*time.Millisecond {
				lastCheck = time.Now()
				logs, _ := l.readLogs()
				t := tallyLabExpect(l.edges, l.o.messages, l.peerIDs(), logs, expect())
				if t.Delivered >= t.Expected && l.queuesEmpty(ctx) {
					return true
				}
			}
		}
		if got != last || !chaosOver {
			last, lastChange = got, time.Now()
		}
		if time.Since(lastChange) > l.o.idleTimeout {
			return false
		}
		if time.Since(lastReport) >= 5*time.Second {
			l.progress("delivered %d/%d", got, want)
			lastReport = time.Now()
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// labCountLines counts complete lines; a line being appended is not one yet.
func labCountLines(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return bytes.Count(b, []byte{'\n'})
}

// readLogs parses every node's receiver log, indexed by node, and counts
// the lines it could not parse.
func (l *labRun) readLogs() (map[int][]labRecord, int) {
	logs := map[int][]labRecord{}
	bad := 0
	for _, n := range l.nodes {
		f, err := os.Open(filepath.Join(n.layout.Dir, labLog))
		if err != nil {
			continue // a node nobody published to has no log
		}
		recs, b := parseLabLog(f)
		f.Close()
		logs[n.index], bad = recs, bad+b
	}
	return logs, bad
}

// labRecord is one receiver run, as the lab receiver logged it.
type labRecord struct {
	Seq       uint64
	Recv      int64 // unix nanoseconds
	Publisher string
	Data      labData
}

// parseLabLog reads complete lines and returns the records and the number
// of lines that are not records.
func parseLabLog(r io.Reader) ([]labRecord, int) {
	var recs []labRecord
	bad := 0
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		rec, err := parseLabLine(sc.Text())
		if err != nil {
			bad++
			continue
		}
		recs = append(recs, rec)
	}
	if sc.Err() != nil {
		bad++
	}
	return recs, bad
}

// parseLabLine parses "<seq> <time> <publisher> <json>".
func parseLabLine(line string) (labRecord, error) {
	f := strings.SplitN(line, " ", 4)
	if len(f) != 4 {
		return labRecord{}, fmt.Errorf("%w: %q has %d fields, want 4", errLabLine, line, len(f))
	}
	seq, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil || seq == 0 {
		return labRecord{}, fmt.Errorf("%w: sequence %q", errLabLine, f[0])
	}
	recv, err := labParseEpoch(f[1])
	if err != nil {
		return labRecord{}, err
	}
	if f[2] == "" {
		return labRecord{}, fmt.Errorf("%w: no publisher", errLabLine)
	}
	var d labData
	if err := json.Unmarshal([]byte(f[3]), &d); err != nil || d.Sent <= 0 {
		return labRecord{}, fmt.Errorf("%w: data %.80q", errLabLine, f[3])
	}
	return labRecord{Seq: seq, Recv: recv, Publisher: f[2], Data: d}, nil
}

// labParseEpoch reads bash's $EPOCHREALTIME ("1700000000.123456") or
// `date +%s%N` (nanoseconds) as unix nanoseconds.
func labParseEpoch(s string) (int64, error) {
	sec, frac, dotted := strings.Cut(s, ".")
	if !dotted {
		ns, err := strconv.ParseInt(s, 10, 64)
		if err != nil || ns <= 0 {
			return 0, fmt.Errorf("%w: time %q", errLabLine, s)
		}
		return ns, nil
	}
	if frac == "" || len(frac) > 9 {
		return 0, fmt.Errorf("%w: time %q", errLabLine, s)
	}
	secs, err := strconv.ParseInt(sec, 10, 64)
	if err != nil || secs <= 0 {
		return 0, fmt.Errorf("%w: time %q", errLabLine, s)
	}
	fr, err := strconv.ParseInt(frac+strings.Repeat("0", 9-len(frac)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: time %q", errLabLine, s)
	}
	return secs*int64(time.Second) + fr, nil
}

// labTally is what the receiver logs show against the topology.
type labTally struct {
	Expected       int // required deliveries
	Delivered      int // distinct required (subscription, message) pairs
	Uncertain      int // distinct deliveries of messages from cut publish calls
	Reruns         int // allowed re-runs after an interruption of the subscriber
	Duplicates     int
	OutOfOrder     int
	Unexpected     int // not from a publisher of this subscriber, or no such message
	PartialBatches int // cut publish calls that arrived in part
	BadRecords     int
	Received       map[int]int // receiver runs per node
	Latencies      []time.Duration
	Examples       []string // the first few problems, for the report
}

// tallyLab checks logs (per subscriber node, in append order)
// against the topology: every publisher's messages 0..messages-1 must
// appear exactly once at each of its subscribers, in order, with rising
// sequence numbers, and come from the publisher's peer id.
func tallyLab(edges []labEdge, messages int, peerIDs []string, logs map[int][]labRecord) labTally {
	return tallyLabExpect(edges, messages, peerIDs, logs, labExpect{})
}

// tallyLabExpect is tallyLab with the allowances of a chaos run (see
// labExpect): messages of cut publish calls are not required, but each
// such batch arrives whole at every subscription of its publisher or at
// none; and a subscriber node taken down k times may show, per
// subscription, up to k re-runs, each right after the record it repeats.
func tallyLabExpect(edges []labEdge, messages int, peerIDs []string, logs map[int][]labRecord, x labExpect) labTally {
	type state struct {
		seen     []bool
		lastN    int
		lastSeq  uint64
		prev     *labRecord // the subscription's previous record
		reruns   int
		required int
	}
	subs := map[labEdge]*state{}
	t := labTally{Received: map[int]int{}}
	for _, e := range edges {
		st := &state{seen: make([]bool, messages), lastN: -1, required: messages}
		for _, b := range x.Uncertain[e.Pub] {
			st.required -= b.Count
		}
		subs[e] = st
		t.Expected += st.required
	}
	example := func(f string, a ...any) {
		if len(t.Examples) < 10 {
			t.Examples = append(t.Examples, fmt.Sprintf(f, a...))
		}
	}
	for sub, recs := range logs {
		for i := range recs {
			r := &recs[i]
			t.Received[sub]++
			e := labEdge{Pub: r.Data.Pub, Sub: sub}
			st := subs[e]
			switch {
			case st == nil:
				t.Unexpected++
				example("node %d received message %d from node %d, which it did not subscribe to", sub, r.Data.N, r.Data.Pub)
				continue
			case r.Data.Pub < 0 || r.Data.Pub >= len(peerIDs) || peerIDs[r.Data.Pub] != r.Publisher:
				t.Unexpected++
				example("node %d received node %d's message %d from peer %s", sub, r.Data.Pub, r.Data.N, r.Publisher)
				continue
			case r.Data.N < 0 || r.Data.N >= messages:
				t.Unexpected++
				example("node %d received message %d from node %d, which never published it", sub, r.Data.N, r.Data.Pub)
				continue
			case st.seen[r.Data.N]:
				if p := st.prev; p != nil && p.Data == r.Data && p.Seq == r.Seq && st.reruns < x.Interrupted[sub] {
					// The publication in flight when the subscriber went
					// down, run again after its restart.
					st.reruns++
					t.Reruns++
					continue
				}
				t.Duplicates++
				example("node %d ran its receiver twice for node %d's message %d", sub, r.Data.Pub, r.Data.N)
				continue
			}
			st.seen[r.Data.N] = true
			st.prev = r
			if x.uncertain(r.Data.Pub, r.Data.N) {
				t.Uncertain++
			} else {
				t.Delivered++
			}
			if r.Data.N < st.lastN || r.Seq <= st.lastSeq {
				t.OutOfOrder++
				example("node %d got node %d's message %d (seq %d) after message %d (seq %d)", sub, r.Data.Pub, r.Data.N, r.Seq, st.lastN, st.lastSeq)
			}
			st.lastN, st.lastSeq = max(st.lastN, r.Data.N), max(st.lastSeq, r.Seq)
			t.Latencies = append(t.Latencies, time.Duration(r.Recv-r.Data.Sent))
		}
	}
	for _, e := range edges {
		st := subs[e]
		for n, ok := range st.seen {
			if !ok && !x.uncertain(e.Pub, n) {
				example("node %d never received node %d's message %d", e.Sub, e.Pub, n)
				break
			}
		}
	}
	// A cut publish call queued its batch for every subscription of its
	// publisher in one commit, or for none.
	for p, bs := range x.Uncertain {
		for _, b := range bs {
			whole, none := 0, 0
			for _, e := range edges {
				if e.Pub != p {
					continue
				}
				got := 0
				for m := b.First; m < b.First+b.Count; m++ {
					if subs[e].seen[m] {
						got++
					}
				}
				switch got {
				case 0:
					none++
				case b.Count:
					whole++
				default:
					t.PartialBatches++
					example("node %d received %d of the %d messages %d-%d of node %d's cut publish call", e.Sub, got, b.Count, b.First, b.First+b.Count-1, p)
				}
			}
			if whole > 0 && none > 0 {
				t.PartialBatches++
				example("node %d's cut publish call of messages %d-%d reached %d of its subscriptions and not %d", p, b.First, b.First+b.Count-1, whole, none)
			}
		}
	}
	return t
}

// labLatencies returns percentiles in milliseconds (nearest rank).
func labLatencies(d []time.Duration) labLatency {
	if len(d) == 0 {
		return labLatency{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	at := func(q float64) float64 {
		i := int(math.Ceil(q*float64(len(s)))) - 1
		return float64(s[max(i, 0)]) / float64(time.Millisecond)
	}
	return labLatency{P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: at(1)}
}

// labSummarize gives min, median, max and total of xs.
func labSummarize(xs []int64) labStat {
	if len(xs) == 0 {
		return labStat{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	var total int64
	for _, x := range s {
		total += x
	}
	return labStat{Min: s[0], Median: s[(len(s)-1)/2], Max: s[len(s)-1], Total: total}
}

// labProcMemory reads VmRSS and VmHWM (peak RSS) of pid in KiB; 0 when gone.
func labProcMemory(pid int) (rss, peak int64) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			continue
		}
		if k == "VmRSS" {
			rss = n
		} else {
			peak = n
		}
	}
	return rss, peak
}

// teardown stops every service the lab started, kills any that does not
// stop, and closes the control connections. It returns how many stopped
// when asked and how many had to be killed.
func (l *labRun) teardown() (stopped, killed int) {
	var mu sync.Mutex
	_ = labEach(context.Background(), len(l.nodes), max(l.o.parallel, 16), func(_ context.Context, i int) error {
		n := l.nodes[i]
		if n.conn != nil {
			_ = n.conn.Close()
		}
		if n.pid == 0 && n.launched {
			n.pid = launchedPID(n.layout)
		}
		if n.pid == 0 {
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := node.StopService(ctx, n.layout, 0)
		cancel()
		ok := err == nil && !pidAlive(n.pid)
		if !ok {
			_ = syscall.Kill(n.pid, syscall.SIGKILL)
			for range 100 {
				if !pidAlive(n.pid) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		mu.Lock()
		if ok {
			stopped++
		} else {
			killed++
		}
		mu.Unlock()
		return nil
	})
	return stopped, killed
}

// launchedPID finds the service of an instance whose launcher did not
// report its pid (interrupted, or timed out): from its control socket, or
// its pid file once it is ready. A service still starting gets a few
// seconds to get there; 0 if none shows up.
func launchedPID(l node.Layout) int {
	for range 50 {
		if st, err := node.Running(l); err == nil && st.PID > 0 {
			return st.PID
		}
		if b, err := os.ReadFile(l.PIDFile()); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pidAlive(pid) {
				return pid
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 0
}

// pidAlive reports whether pid still runs; a zombie counts as gone (it
// only waits for its parent to reap it: init, or a headless start that
// released it and never will).
func pidAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	if k := strings.LastIndexByte(s, ')'); k >= 0 && k+2 < len(s) {
		return s[k+2] != 'Z'
	}
	return true
}

func printLabReport(w io.Writer, r *labReport) {
	rows := make([][]string, 0, len(r.PerNode))
	for _, n := range r.PerNode {
		rows = append(rows, []string{n.Name, strconv.Itoa(n.PID), labMiB(n.RSSKiB), labMiB(n.PeakRSSKiB),
			strconv.Itoa(n.Subscriptions), strconv.Itoa(n.Subscribers), strconv.Itoa(n.Received)})
	}
	_ = table(w, []string{"NODE", "PID", "RSS", "PEAK RSS", "SUBSCRIPTIONS", "SUBSCRIBERS", "RECEIVED"}, rows)
	fmt.Fprintln(w)
	shape := r.Topology
	if r.Topology == labMesh {
		shape = fmt.Sprintf("mesh (degree %d, seed %d)", r.Degree, r.Seed)
	}
	pace := "unpaced"
	if r.Rate > 0 {
		pace = fmt.Sprintf("%g msgs/s per publisher", r.Rate)
	}
	verdict := "OK"
	if !r.OK() {
		verdict = "FAILED: " + strings.Join(r.failures(), ", ")
	}
	_ = kv(w,
		"topology", fmt.Sprintf("%s, %d nodes, %d subscriptions, %d publishers", shape, r.Nodes, r.Subscriptions, r.Publishers),
		"storm", fmt.Sprintf("%d messages per publisher in batches of %d, %s: %d published", r.MessagesPerPublisher, r.Batch, pace, r.Published),
		"deliveries", fmt.Sprintf("%d/%d; lost %d, duplicates %d, out of order %d, unexpected %d, dead letters %d",
			r.Delivered, r.Expected, r.Lost, r.Duplicates, r.OutOfOrder, r.Unexpected, r.DeadLetters),
		"latency", fmt.Sprintf("p50 %s  p90 %s  p99 %s  max %s (publish to receiver run)", labMs(r.Latency.P50), labMs(r.Latency.P90), labMs(r.Latency.P99), labMs(r.Latency.Max)),
		"memory", fmt.Sprintf("RSS min %s  median %s  max %s  total %s; peak RSS median %s  max %s",
			labMiB(r.RSS.Min), labMiB(r.RSS.Median), labMiB(r.RSS.Max), labMiB(r.RSS.Total), labMiB(r.PeakRSS.Median), labMiB(r.PeakRSS.Max)),
		"time", fmt.Sprintf("setup %s, storm %s, drain %s, teardown %s, wall %s; %.0f deliveries/s",
			labSecs(r.Setup), labSecs(r.Storm), labSecs(r.Drain), labSecs(r.Teardown), labSecs(r.Wall), r.Throughput),
		"teardown", fmt.Sprintf("%d stopped, %d killed", r.Stopped, r.Killed),
		"service logs", fmt.Sprintf("%d ERROR line(s)", r.LogErrors),
	)
	if r.Chaos > 0 {
		_ = kv(w, "chaos", fmt.Sprintf("%d interruption(s): %d killed, %d stopped, %d restarted; %d message(s) in cut publish calls (%d deliveries of them), %d receiver re-run(s), %d partly delivered batch(es)",
			r.Chaos, r.Kills, r.Stops, r.Restarts, r.Uncertain, r.UncertainDelivered, r.Reruns, r.PartialBatches))
		for _, e := range r.ChaosEvents {
			line := fmt.Sprintf("  %7.2fs %-4s %s (pid %d) in the %s, down %s, restart %s, now pid %d",
				time.Duration(e.At).Seconds(), e.Kind, e.Node, e.OldPID, e.Phase, labSecs(e.Down), labSecs(e.Restart), e.NewPID)
			if e.Error != "" {
				line += ": " + e.Error
			}
			fmt.Fprintln(w, line)
		}
	}
	_ = kv(w, "result", verdict)
	for _, p := range r.Problems {
		fmt.Fprintln(w, "  -", p)
	}
	if r.Dir != "" {
		fmt.Fprintln(w, "kept:", r.Dir)
	}
}

func labMiB(kib int64) string { return fmt.Sprintf("%.1fMiB", float64(kib)/1024) }
func labMs(v float64) string  { return fmt.Sprintf("%.1fms", v) }
func labSecs(d localapi.Duration) string {
	if time.Duration(d) < 10*time.Second {
		return time.Duration(d).Round(10 * time.Millisecond).String()
	}
	return time.Duration(d).Round(100 * time.Millisecond).String()
}
