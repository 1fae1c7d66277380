package main

// `coattail lab --chaos K`: during the storm and the drain, take a random
// node down K times (SIGKILL, or `service stop` for a share of them) and
// start it again after a short random pause, as the lab started it. The
// verification stays strict, with the two allowances that a crash
// honestly leaves open:
//
//   - a publish call cut by its publisher's interruption may or may not
//     have queued its batch: its messages are accepted but not required,
//     and the batch must have arrived whole or not at all, at every
//     subscription of its publisher (one group commit queues it);
//   - a subscriber interrupted while a receiver ran, or after it ran but
//     before its progress was saved, runs that publication again after its
//     restart (at least once): one re-run per subscription per
//     interruption of the subscriber is counted, and only as the record
//     right after the one it repeats (same message, same sequence).
//
// The receiver appends its line with one write(2) on an O_APPEND file, and
// its process group outlives a killed service (it finishes its append), so
// a torn line cannot come from a kill: any unreadable line still fails the
// run.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
)

// errLabChaos: a node the chaos took down did not come back.
var errLabChaos = errors.New("lab: chaos")

// labChaosEvent is one interruption of a node, in the report.
type labChaosEvent struct {
	At      localapi.Duration `json:"at_s"`  // since the storm began
	Node    string            `json:"node"`  // its name
	Kind    string            `json:"kind"`  // "kill" (SIGKILL) or "stop" (service stop)
	Phase   string            `json:"phase"` // "storm" or "drain"
	OldPID  int               `json:"old_pid"`
	NewPID  int               `json:"new_pid,omitempty"`
	Down    localapi.Duration `json:"down_s"`    // from the kill or stop to the restart's ready control socket
	Restart localapi.Duration `json:"restart_s"` // `service start` until ready
	Error   string            `json:"error,omitempty"`
	// Interrupted: the run was interrupted (Ctrl-C) while the node was
	// down; it was not restarted, and that is no failure of it.
	Interrupted bool `json:"interrupted,omitempty"`
}

// labBatch is a run of messages published in one call.
type labBatch struct{ First, Count int }

// labExpect is what an interrupted run may and must show. The zero value
// requires every message once and allows nothing else.
type labExpect struct {
	// Uncertain are, per publisher, the batches whose publish call an
	// interruption cut: each may or may not have been queued.
	Uncertain map[int][]labBatch
	// Interrupted counts, per node, how often it was taken down.
	Interrupted map[int]int
}

// uncertain reports whether message m of publisher p was in a cut call.
func (x labExpect) uncertain(p, m int) bool {
	for _, b := range x.Uncertain[p] {
		if m >= b.First && m < b.First+b.Count {
			return true
		}
	}
	return false
}

// labNodeState is what the chaos changes about a node: its process and
// control connection, and whether it is up.
type labNodeState struct {
	mu    sync.Mutex
	epoch uint64        // incremented each time the node is taken down
	up    chan struct{} // closed while the node is up
}

// session returns the node's control connection and epoch, waiting until
// the node is up.
func (n *labNode) session(ctx context.Context) (*node.Conn, uint64, error) {
	for {
		n.st.mu.Lock()
		up, conn, ep := n.st.up, n.conn, n.st.epoch
		n.st.mu.Unlock()
		select {
		case <-up:
			return conn, ep, nil
		default:
		}
		select {
		case <-up:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
}

// interruptedSince reports whether the node was taken down after epoch ep.
func (n *labNode) interruptedSince(ep uint64) bool {
	n.st.mu.Lock()
	defer n.st.mu.Unlock()
	return n.st.epoch != ep
}

// labChaos takes nodes down and brings them back.
type labChaos struct {
	l       *labRun
	rng     *rand.Rand
	begin   time.Time
	inDrain atomic.Bool

	mu          sync.Mutex
	events      []labChaosEvent
	interrupted map[int]int
}

func newLabChaos(l *labRun, begin time.Time) *labChaos {
	return &labChaos{l: l, begin: begin, interrupted: map[int]int{},
		rng: rand.New(rand.NewPCG(l.o.seed^0xc4a05, l.o.seed+0x5eed))}
}

// Chaos timing: the gap before each interruption and the pause before
// the restart are drawn uniformly from these ranges.
const (
	labChaosGapMin   = 200 * time.Millisecond
	labChaosGapMax   = 1500 * time.Millisecond
	labChaosPauseMin = 100 * time.Millisecond
	labChaosPauseMax = 2 * time.Second
)

func (c *labChaos) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(c.rng.Int64N(int64(hi-lo)+1))
}

// run makes o.chaos interruptions, one after another. It returns an
// error (and the run fails) when a node does not come back.
func (c *labChaos) run(ctx context.Context) error {
	o := c.l.o
	for k := 0; k < o.chaos; k++ {
		gap := c.between(labChaosGapMin, labChaosGapMax)
		i := c.rng.IntN(len(c.l.nodes))
		stop := c.rng.Float64() < o.chaosStop
		pause := c.between(labChaosPauseMin, labChaosPauseMax)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(gap):
		}
		ev, err := c.bounce(ctx, c.l.nodes[i], stop, pause)
		c.mu.Lock()
		c.events = append(c.events, ev)
		c.interrupted[i]++
		c.mu.Unlock()
		if err != nil {
			c.l.progress("chaos %d/%d: %s %s (pid %d) in the %s: %s", k+1, o.chaos, ev.Kind, ev.Node, ev.OldPID, ev.Phase, ev.Error)
			return err
		}
		c.l.progress("chaos %d/%d: %s %s (pid %d) in the %s, back as pid %d after %.1fs",
			k+1, o.chaos, ev.Kind, ev.Node, ev.OldPID, ev.Phase, ev.NewPID, time.Duration(ev.Down).Seconds())
	}
	return nil
}

// bounce takes n down (SIGKILL, or service stop) and restarts it after
// pause.
func (c *labChaos) bounce(ctx context.Context, n *labNode, stop bool, pause time.Duration) (labChaosEvent, error) {
	ev := labChaosEvent{At: localapi.Duration(time.Since(c.begin)), Node: n.name, Kind: "kill", Phase: "storm"}
	if stop {
		ev.Kind = "stop"
	}
	if c.inDrain.Load() {
		ev.Phase = "drain"
	}
	n.st.mu.Lock()
	n.st.epoch++
	n.st.up = make(chan struct{})
	conn, pid := n.conn, n.pid
	n.conn, n.pid = nil, 0
	n.st.mu.Unlock()
	ev.OldPID = pid
	down := time.Now()
	fail := func(f string, a ...any) (labChaosEvent, error) {
		ev.Error = fmt.Sprintf(f, a...)
		ev.Down = localapi.Duration(time.Since(down))
		return ev, fmt.Errorf("%w: %s: %s", errLabChaos, n.name, ev.Error)
	}
	if stop {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := node.StopService(sctx, n.layout, 0)
		cancel()
		if err != nil || pidAlive(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			if conn != nil {
				_ = conn.Close()
			}
			return fail("service stop: %v (pid %d alive: %v)", err, pid, pidAlive(pid))
		}
	} else if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fail("kill pid %d: %v", pid, err)
	}
	for range 500 {
		if !pidAlive(pid) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if conn != nil {
		_ = conn.Close()
	}
	if pidAlive(pid) {
		return fail("pid %d still runs after SIGKILL", pid)
	}
	select {
	case <-ctx.Done():
		ev.Interrupted = true
		return fail("interrupted while down")
	case <-time.After(pause):
	}
	restart := time.Now()
	newPID, newConn, err := c.l.launch(ctx, n)
	ev.Restart = localapi.Duration(time.Since(restart))
	if err != nil {
		n.st.mu.Lock()
		n.pid = newPID // 0 unknown: teardown looks for it
		n.st.mu.Unlock()
		ev.Interrupted = ctx.Err() != nil
		return fail("restart: %v", err)
	}
	ev.NewPID = newPID
	ev.Down = localapi.Duration(time.Since(down))
	n.st.mu.Lock()
	n.pid, n.conn = newPID, newConn
	close(n.st.up)
	n.st.mu.Unlock()
	return ev, nil
}

func (c *labChaos) expect(uncertain map[int][]labBatch) labExpect {
	c.mu.Lock()
	defer c.mu.Unlock()
	inter := make(map[int]int, len(c.interrupted))
	for k, v := range c.interrupted {
		inter[k] = v
	}
	return labExpect{Uncertain: uncertain, Interrupted: inter}
}

func (c *labChaos) report(rep *labReport) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rep.ChaosEvents = append([]labChaosEvent(nil), c.events...)
	for _, e := range c.events {
		if e.Kind == "stop" {
			rep.Stops++
		} else {
			rep.Kills++
		}
		switch {
		case e.Error == "":
			rep.Restarts++
		case e.Interrupted:
			rep.Problems = append(rep.Problems, fmt.Sprintf("chaos: %s %s: the run was interrupted while it was down", e.Kind, e.Node))
		default:
			rep.ChaosFailures++
			rep.Problems = append(rep.Problems, fmt.Sprintf("chaos: %s %s: %s", e.Kind, e.Node, e.Error))
		}
	}
}

// queuesEmpty reports whether no publisher holds a publication that its
// subscriber has not acknowledged (asked of every node that publishes).
func (l *labRun) queuesEmpty(ctx context.Context) bool {
	for i, n := range l.nodes {
		if l.fanout[i] == 0 {
			continue
		}
		conn, _, err := n.session(ctx)
		if err != nil {
			return false
		}
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		st, err := conn.Status(sctx)
		cancel()
		if err != nil {
			return false
		}
		for _, q := range st.Queues {
			if q.Depth > 0 {
				return false
			}
		}
	}
	return true
}

// labLogErrors returns the ERROR lines of every node's service.log (at
// most limit of them) and how many there were.
func (l *labRun) logErrors(limit int) ([]string, int) {
	var lines []string
	total := 0
	for _, n := range l.nodes {
		b, err := os.ReadFile(filepath.Join(n.layout.Dir, "service.log"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if !strings.Contains(line, "level=ERROR") && !strings.Contains(line, `"level":"ERROR"`) {
				continue
			}
			total++
			if len(lines) < limit {
				lines = append(lines, n.name+": "+clipLine(line, 300))
			}
		}
	}
	return lines, total
}

func clipLine(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// labFreePort picks a port free for TCP and UDP on 127.0.0.1 and not in
// used, below the kernel's ephemeral range (so that an outgoing
// connection is not given it while its node is down), and adds it to used.
func labFreePort(used map[int]bool) (int, error) {
	lo, hi := 20000, 32767
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if eph, err := strconv.Atoi(f[0]); err == nil && eph > 2048 {
				hi = eph - 1
				lo = min(lo, hi/2)
			}
		}
	}
	for range 1000 {
		p := lo + rand.IntN(hi-lo+1)
		if used[p] {
			continue
		}
		t, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		_ = t.Close()
		if err != nil {
			continue
		}
		_ = u.Close()
		used[p] = true
		return p, nil
	}
	return 0, fmt.Errorf("no free port for TCP and UDP in %d..%d", lo, hi)
}
