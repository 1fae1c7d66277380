package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/runner"
	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
)

// envReadyFD tells a headless child which inherited fd reports readiness.
const envReadyFD = "COATTAIL_READY_FD"

type newOptions struct {
	dir      string
	port     int
	loopback bool
}

func newNewCmd(a *app) *cobra.Command {
	o := &newOptions{}
	cmd := &cobra.Command{
		Use:   "new [dir]",
		Short: "Create a new instance (default: the current directory)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.dir = "."
			if len(args) == 1 {
				if strings.TrimSpace(args[0]) == "" {
					return errors.New("the directory must not be empty (without one, the instance is created in the current directory)")
				}
				o.dir = args[0]
			}
			// `coattail --instance DIR new`, as every other command takes
			// its instance, creates it in DIR. (It was ignored: the
			// instance was created in the current directory.)
			// $COATTAIL_INSTANCE, which names an existing instance, is not
			// used: without a directory, the instance is created here.
			if a.instance != "" {
				if len(args) == 1 && !samePath(a.instance, args[0]) {
					return fmt.Errorf("--instance %s and the directory %s differ: give the new instance's directory once", a.instance, args[0])
				}
				o.dir = a.instance
			}
			if inst, sub, ok := enclosingProgramDir(o.dir); ok {
				return fmt.Errorf("%s is inside the %s/ directory of the instance in %s: the new instance's files (config.yml, keys, socket) would be listed as that instance's %s; choose a directory outside %s",
					o.dir, sub, inst, sub, filepath.Join(inst, sub))
			}
			l, err := node.CreateInstance(o.dir, node.CreateOptions{Port: o.port, Loopback: o.loopback})
			if err != nil {
				return err
			}
			id, err := node.PeerIDOf(l)
			if err != nil {
				return err
			}
			next := "coattail service start --headless"
			if !sameDir(l.Dir, ".") {
				next = "cd " + shellArg(o.dir) + " && " + next
			}
			fmt.Fprintf(a.out, "Created Coattail instance in %s\n  peer id: %s\n  config:  %s\n  next:    %s\n", l.Dir, id, l.Config(), safeText(next))
			return nil
		},
	}
	cmd.Flags().IntVar(&o.port, "port", node.DefaultPort, "TCP and UDP (QUIC) port to listen on; 0 picks free ports at start")
	cmd.Flags().BoolVar(&o.loopback, "loopback", false, "listen on 127.0.0.1 only and never ask routers for port mappings (labs, demos, tests)")
	return cmd
}

// samePath reports whether the paths a and b name the same directory,
// which need not exist yet.
func samePath(a, b string) bool {
	if sameDir(a, b) {
		return true
	}
	aa, errA := filepath.Abs(a)
	ab, errB := filepath.Abs(b)
	return errA == nil && errB == nil && aa == ab
}

// sameDir reports whether the directories a and b are the same one.
func sameDir(a, b string) bool {
	sa, errA := os.Stat(a)
	sb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(sa, sb)
}

// enclosingProgramDir reports the instance, if any, whose actions/ or
// receivers/ directory holds dir at any depth, judging dir both as written
// and with the symlinks of its existing part resolved.
func enclosingProgramDir(dir string) (inst, sub string, found bool) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", "", false
	}
	for _, d := range []string{abs, resolveExisting(abs)} {
		for p := d; ; {
			parent := filepath.Dir(p)
			if parent == p {
				break
			}
			l := node.Layout{Dir: parent}
			if (p == l.Actions() || p == l.Receivers()) && node.IsInstance(parent) {
				return parent, filepath.Base(p), true
			}
			p = parent
		}
	}
	return "", "", false
}

// resolveExisting resolves the symlinks in the longest existing prefix of
// the absolute path p and appends the rest unchanged.
func resolveExisting(p string) string {
	rest := ""
	for d := p; ; {
		if r, err := filepath.EvalSymlinks(d); err == nil {
			return filepath.Join(r, rest)
		}
		parent := filepath.Dir(d)
		if parent == d {
			return p
		}
		rest = filepath.Join(filepath.Base(d), rest)
		d = parent
	}
}

func newServiceCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "service", Short: "Start, stop and list instance services"}
	cmd.AddCommand(newServiceStartCmd(a), newServiceStatusCmd(a), newServiceStopCmd(a), newServiceRestartCmd(a), newServiceLogsCmd(a))
	return cmd
}

type startOptions struct {
	headless bool
	relay    bool
}

func newServiceStartCmd(a *app) *cobra.Command {
	o := &startOptions{}
	cmd := &cobra.Command{
		Use:   "start",
		Short: "Run the instance's service (foreground, or --headless in the background)",
		Long: `Run the instance's service: in the foreground, or with --headless in the
background (it returns once the service is ready and prints its pid; Ctrl-C
before then stops the service). Starting an instance whose service already
runs, or is starting, fails (exit 1) and names its pid; so does starting a
copy of an instance directory while the original's service runs (the two
would be one peer id): give a copy its own identity with 'coattail new DIR'
and copy actions/, receivers/ and config.yml into it, not keys/ or data/.

The service logs JSON lines to log.file (service.log). When the file (a
regular file; never a device such as /dev/stderr) would grow past
log.rotate_size (10MiB) it is renamed service.log.1 (older ones shift to .2 and
.3; the oldest beyond log.rotate_keep, 3, is deleted), so the log never takes
more than 40 MiB by default. rotate_size 0 never rotates.

Signals: SIGTERM and SIGINT (Ctrl-C) stop the service gracefully, as
'coattail service stop' does, and it exits 0. SIGHUP reopens the log file (for
an external logrotate that moves it away) and the service runs on; only a
foreground service whose stdin is a terminal stops on SIGHUP, as on Ctrl-C
(its terminal has closed).

A service whose instance directory is deleted while it runs stops by itself
(exit 1). One whose directory is moved runs on: stop it from its new place or
with 'coattail service stop PID'. One whose control socket file is removed
listens on a new one within 2s.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := a.layout()
			if err != nil {
				return err
			}
			if o.headless {
				pid, err := a.startHeadless(cmd.Context(), l, o)
				if err != nil {
					return err
				}
				fmt.Fprintf(a.out, "%d\n", pid)
				return nil
			}
			return a.startForeground(cmd.Context(), l, o)
		},
	}
	cmd.Flags().BoolVar(&o.headless, "headless", false, "run in the background; returns once the service is ready and prints its pid")
	cmd.Flags().BoolVar(&o.relay, "relay", false, "also serve as a circuit-relay v2 relay for peers behind NAT")
	return cmd
}

// serviceGCPercent is the garbage collector's GOGC for the processes that
// move publications: the service and `coattail bench`. A broker allocates
// per publication and keeps little live heap, so collecting at 3x the live
// heap instead of Go's 2x costs a few MiB (+8 % RSS in a 20-node lab) and
// buys +13 % delivery throughput (docs/PERFORMANCE.md). A GOGC in the
// environment wins.
const serviceGCPercent = 200

// cgroupMemoryShare is the part of a cgroup's memory limit given to Go's
// soft memory limit. It bounds only Go's heap: pebble's memtables and
// block cache are C allocations in a cgo build, and the kernel charges the
// cgroup for page cache too (reclaimable), so the limit steers the
// collector rather than guaranteeing the process stays inside the cgroup.
const cgroupMemoryShare = 0.9

// tuneGC applies serviceGCPercent unless the user set GOGC, and, in a
// cgroup with a memory limit (a container), a soft memory limit of 90 % of
// it unless the user set GOMEMLIMIT: with GOGC=200 the heap may grow to
// three times what is live, and near the cgroup's limit the collector
// should work harder rather than the kernel end the process.
func tuneGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(serviceGCPercent)
	}
	if mem := node.MachineMemory(); mem.Cgroup {
		if _, set := os.LookupEnv("GOMEMLIMIT"); !set {
			debug.SetMemoryLimit(int64(float64(mem.Bytes) * cgroupMemoryShare))
		}
	}
}

func (a *app) startForeground(ctx context.Context, l node.Layout, o *startOptions) error {
	tuneGC()
	var ready *os.File
	if fd := os.Getenv(envReadyFD); fd != "" {
		if n, err := strconv.Atoi(fd); err == nil {
			ready = os.NewFile(uintptr(n), "ready")
		}
		os.Unsetenv(envReadyFD)
	}
	// SIGTERM and SIGINT stop the service gracefully (main). SIGHUP
	// reopens the log file, except that a service running in a terminal
	// stops as on Ctrl-C: its terminal has gone.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var reopen <-chan os.Signal = hup
	if ready == nil && isTerminal(os.Stdin) {
		reopen = nil
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		go func() {
			select {
			case <-hup:
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	bin, _ := os.Executable()
	err := node.RunService(ctx, l, node.ServiceOptions{
		Relay:     o.relay,
		Binary:    bin,
		ReopenLog: reopen,
		Notice: func(msg string) {
			if ready != nil {
				fmt.Fprintf(ready, "wait %s\n", strings.ReplaceAll(msg, "\n", "; "))
				return
			}
			fmt.Fprintln(a.err, msg)
		},
		Ready: func(pid int) {
			if ready != nil {
				fmt.Fprintf(ready, "ready %d\n", pid)
				ready.Close()
				ready = nil
				return
			}
			fmt.Fprintf(a.out, "Coattail service running for %s (pid %d); press Ctrl-C to stop\n", l.Dir, pid)
		},
	})
	if err != nil && ready != nil {
		fmt.Fprintf(ready, "error %s\n", strings.ReplaceAll(humanError(err), "\n", "; "))
		ready.Close()
	}
	return err
}

// startHeadless re-executes this binary as a detached foreground service
// and waits on an inherited pipe until it reports ready (or its error); it
// returns the service's pid.
func (a *app) startHeadless(ctx context.Context, l node.Layout, o *startOptions) (int, error) {
	if st, err := node.Running(l); err == nil {
		return 0, fmt.Errorf("%w: instance %s (pid %d)", node.ErrAlreadyRunning, l.Dir, st.PID)
	}
	cfg, err := node.LoadConfig(l.Config())
	if err != nil {
		return 0, err
	}
	bin, err := os.Executable()
	if err != nil {
		return 0, err
	}
	logf, err := os.OpenFile(l.LogFile(cfg), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, fmt.Errorf("log file: %w", err)
	}
	defer logf.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer pr.Close()
	args := []string{"--instance", l.Dir, "service", "start"}
	if o.relay {
		args = append(args, "--relay")
	}
	child := exec.Command(bin, args...)
	child.Dir = l.Dir
	// Not part of a run that started it (an action running `service
	// start --headless`): the run's cookie would have the service, and
	// every program it runs, killed when that run ends.
	child.Env = append(runner.WithoutCookie(os.Environ()), envReadyFD+"=3")
	child.Stdout, child.Stderr = logf, logf // a panic lands in the log
	child.ExtraFiles = []*os.File{pw}
	child.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := child.Start(); err != nil {
		pw.Close()
		return 0, fmt.Errorf("start service: %w", err)
	}
	pw.Close()
	pid := child.Process.Pid
	_ = child.Process.Release()
	// The child reports "ready PID" or "error MSG", after any number of
	// "wait MSG" (what it waits for, when that takes long).
	lines, quit := make(chan string), make(chan struct{})
	defer close(quit)
	go func() {
		defer close(lines)
		r := bufio.NewReader(pr)
		for {
			s, err := r.ReadString('\n')
			if s != "" {
				select {
				case lines <- strings.TrimSpace(s):
				case <-quit:
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case s, ok := <-lines:
			switch {
			case ok && strings.HasPrefix(s, "wait "):
				fmt.Fprintln(a.err, safeText(strings.TrimPrefix(s, "wait ")))
				continue
			case ok && strings.HasPrefix(s, "ready "):
				return pid, nil
			case ok && strings.HasPrefix(s, "error "):
				msg := strings.TrimPrefix(s, "error ")
				if rest, found := strings.CutPrefix(msg, node.ErrAlreadyRunning.Error()); found {
					// Another start of the instance won the race.
					return 0, fmt.Errorf("%w%s", node.ErrAlreadyRunning, rest)
				}
				return 0, errors.New(msg)
			default:
				return 0, fmt.Errorf("the service exited during start-up; see %s", l.LogFile(cfg))
			}
		case <-timeout:
			return 0, fmt.Errorf("the service (pid %d) did not become ready within 60s; see %s", pid, l.LogFile(cfg))
		case <-ctx.Done():
			// Interrupted (Ctrl-C) before the service was ready: the user
			// gave up on starting it, so it does not come up behind their
			// back. SIGTERM stops it as `service stop` would.
			_ = syscall.Kill(pid, syscall.SIGTERM)
			for range 500 {
				if !pidAlive(pid) {
					return 0, fmt.Errorf("interrupted: the service (pid %d) was stopped before it was ready", pid)
				}
				time.Sleep(20 * time.Millisecond)
			}
			return 0, fmt.Errorf("interrupted: the service (pid %d) was asked to stop before it was ready, and still runs; see %s", pid, l.LogFile(cfg))
		}
	}
}

func newServiceStatusCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "List the Coattail services this user runs on this machine",
		Long: `List the Coattail services this user runs on this machine: those registered in
the runtime directory ($COATTAIL_RUNTIME_DIR, else $XDG_RUNTIME_DIR/coattail,
else coattail-<uid> in the system temp directory). Another user's services, or
those started with another runtime directory, are not listed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			list, err := node.ListServices(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.out, list)
			}
			if len(list) == 0 {
				fmt.Fprintln(a.out, "No Coattail service is running.")
				return nil
			}
			rows := [][]string{}
			for _, s := range list {
				reach := s.Reachable
				switch {
				case !s.Online && node.SocketGone(s.Instance):
					// Moved or deleted with its directory, or removed.
					reach = "not answering (control socket gone)"
				case !s.Online:
					reach = "not answering"
				case reach == "":
					reach = "-"
				}
				if n := len(s.Relays); n > 0 {
					reach += fmt.Sprintf(" (%d relay address(es))", n)
				}
				rows = append(rows, []string{strconv.Itoa(s.PID), s.Instance, s.PeerID, strings.Join(s.ListenAddrs, " "), reach, time.Duration(s.Uptime).Round(time.Second).String()})
			}
			if err := table(a.out, []string{"PID", "INSTANCE", "PEER ID", "LISTEN", "REACHABILITY", "UPTIME"}, rows); err != nil {
				return err
			}
			for _, s := range list {
				if s.DiskLow {
					fmt.Fprintf(a.err, "warning: %s: the disk holding its data has %s free, less than limits.min_free_disk (plus what its datastore has yet to write from memory): it refuses publications\n", s.Instance, humanize.IBytes(s.DiskFree))
				}
				if s.StorageError != "" {
					fmt.Fprintf(a.err, "warning: %s: it refuses every publication until it restarts: %s\n", s.Instance, s.StorageError)
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newServiceRestartCmd(a *app) *cobra.Command {
	o := &startOptions{headless: true}
	cmd := &cobra.Command{
		Use:   "restart",
		Short: "Check config.yml, stop the instance's service and start it again in the background",
		Long: `Check config.yml as 'config check' does; if it is invalid, say why and
leave the running service as it is (exit 1). Otherwise stop the instance's
service as 'service stop' does (waiting for running actions and receivers),
then start it in the background as 'service start --headless' does, with
--relay if the stopped one was started with it (--relay=false turns that
off), and print "Stopped service (pid OLD)" and the new pid. The service
reads config.yml only at start: this is how a change takes effect.

A service that is not running is started. One that runs in the foreground in
a terminal is stopped there and comes back in the background. If the new
start fails, the service stays stopped and the error says why (exit 1). Two
restarts at once both succeed and leave one service running.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := a.layout()
			if err != nil {
				return err
			}
			st, running := node.Running(l)
			if _, err := node.LoadConfig(l.Config()); err != nil {
				if running == nil {
					return fmt.Errorf("%w\nnot restarted: the service (pid %d) runs on with the config it started with", err, st.PID)
				}
				return err
			}
			switch {
			case errors.Is(running, node.ErrNotRunning):
				fmt.Fprintln(a.err, "The service was not running; starting it.")
			case running != nil:
				return running
			default:
				if !cmd.Flags().Changed("relay") {
					o.relay = st.Relay
				}
				ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
				// Another command stopping it at the same time is
				// waited for (see node.StopService).
				stopped, err := node.StopService(ctx, l, 0)
				cancel()
				switch {
				case errors.Is(err, node.ErrNotRunning):
					// Stopped meanwhile by another command: started below.
				case err != nil:
					return err
				default:
					fmt.Fprintf(a.out, "Stopped service (pid %d)\n", stopped)
				}
			}
			pid, err := a.startHeadless(cmd.Context(), l, o)
			if errors.Is(err, node.ErrAlreadyRunning) {
				// Another command (a second restart, a start) started it
				// after the stop above, with config.yml as it is: once
				// that service is ready, this restart is done too.
				for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline) && cmd.Context().Err() == nil; time.Sleep(100 * time.Millisecond) {
					if st, rerr := node.Running(l); rerr == nil {
						fmt.Fprintf(a.err, "The service was started meanwhile by another command (pid %d).\n", st.PID)
						fmt.Fprintf(a.out, "%d\n", st.PID)
						return nil
					}
				}
			}
			if err != nil {
				if _, rerr := node.Running(l); running == nil && rerr != nil {
					return fmt.Errorf("the service was stopped, and starting it again failed (it is not running now): %w", err)
				}
				return err
			}
			fmt.Fprintf(a.out, "%d\n", pid)
			return nil
		},
	}
	cmd.Flags().BoolVar(&o.relay, "relay", false, "also serve as a circuit-relay v2 relay for peers behind NAT (default: as the stopped service did)")
	return cmd
}

func newServiceStopCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "stop [pid]",
		Short: "Stop a service (default: the instance of the current directory) and wait until it has exited",
		Long: `Stop a service (default: the instance of the current directory, or of PID)
and wait until it has exited; actions and receivers still running stop with it.

Without PID, a service still starting is stopped once it is ready. One that
does not answer within 5s (stopped with SIGSTOP, or stuck) is reported with its
pid and the command fails; a pid file left by a killed service means "not
running". 'stop PID' also stops a service whose instance directory was moved or
deleted. A service that another command is stopping at the same time is waited
for until it has exited, as if this command had stopped it.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pid := 0
			var l node.Layout
			if len(args) == 1 {
				p, err := strconv.Atoi(args[0])
				if err != nil || p <= 0 {
					return fmt.Errorf("invalid pid %q", args[0])
				}
				pid = p
			} else {
				var err error
				if l, err = a.layout(); err != nil {
					return err
				}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			stopped, err := node.StopService(ctx, l, pid)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.out, "Stopped service (pid %d)\n", stopped)
			return nil
		},
	}
}
