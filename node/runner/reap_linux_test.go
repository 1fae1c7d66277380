package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Programs that start a descendant outside their process group, the three
// usual ways, each writing the escaped process's pid to the file $1 once
// it runs (the program waits for the file, so that the run is not over
// before the escape is). Their output goes elsewhere, as a daemon's does:
// nothing holds the run's pipes, and only the cookie finds them.
var escapes = map[string]string{
	// setsid cmd &: a session (and process group) of its own.
	"setsid": `setsid sh -c 'echo $$ > "$0"; exec sleep 1000' "$1" >/dev/null 2>&1 </dev/null &`,
	// The classic double fork: the first child starts a session and
	// forks again and exits, so the daemon's parent is gone (it is
	// reparented to init) and it leads no group or session.
	"daemon": `( setsid sh -c 'sleep 1000 >/dev/null 2>&1 </dev/null & echo $! > "$0"' "$1" & ) >/dev/null 2>&1 </dev/null`,
	// nohup setsid, as one would start a server by hand.
	"nohup": `nohup setsid sh -c 'echo $$ > "$0"; exec sleep 1000' "$1" >/dev/null 2>&1 </dev/null &`,
}

// writeEscaper writes action name: it starts the escape, waits until the
// escaped process wrote its pid, then runs then.
func writeEscaper(t *testing.T, dir, name, escape, then string) {
	t.Helper()
	writeProgram(t, dir, KindAction, name, `set -- "$(cat | tr -d '"')"
`+escape+`
while [ ! -s "$1" ]; do sleep 0.01; done
`+then)
}

// runEscape runs action name with pidFile as its input and returns the
// escaped process's pid and the run's error; the escaped process is
// killed at the test's end, should the runner have missed it.
func runEscape(t *testing.T, ctx context.Context, r *Runner, name, pidFile string) (int, error) {
	t.Helper()
	t.Cleanup(func() { killPIDFile(pidFile) })
	_, err := r.Run(ctx, action(name, fmt.Sprintf("%q", pidFile)))
	return readPID(t, pidFile), err
}

// logBuffer collects a runner's log.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A timed-out program takes with it what it started outside its process
// group, however it escaped, and the log says how many there were (the
// group's own members, killed with the group, are not counted).
func TestTimeoutKillsEscapedDescendants(t *testing.T) {
	t.Parallel()
	for how, escape := range escapes {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			var logs logBuffer
			r, dir := newTestRunner(t, func(c *Config) {
				c.Timeout = 3 * time.Second
				c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			})
			writeEscaper(t, dir, "slow", escape, "sleep 1000")
			pid, err := runEscape(t, context.Background(), r, "slow", filepath.Join(dir, "escaped.pid"))
			if !errors.Is(err, ErrTimeout) {
				t.Fatalf("Run = %v, want ErrTimeout", err)
			}
			checkGone(t, "the escaped "+how, pid)
			if want := `msg="killed processes the program left running outside its process group (setsid, a daemon)" kind=action name=slow processes=1`; !strings.Contains(logs.String(), want) {
				t.Errorf("log lacks %s:\n%s", want, logs.String())
			}
		})
	}
}

// So does a run stopped by its context (a service stopping, a caller
// gone).
func TestCancelKillsEscapedDescendants(t *testing.T) {
	t.Parallel()
	for how, escape := range escapes {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			r, dir := newTestRunner(t, nil)
			pidFile := filepath.Join(dir, "escaped.pid")
			writeEscaper(t, dir, "slow", escape, "echo started > started; sleep 1000")
			ctx, cancel := context.WithCancel(context.Background())
			go func() {
				readPID(t, pidFile)
				checkFor(t, "the program to go on", func() bool {
					_, err := os.Stat(filepath.Join(dir, "started"))
					return err == nil
				})
				cancel()
			}()
			pid, err := runEscape(t, ctx, r, "slow", pidFile)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Run = %v, want context.Canceled", err)
			}
			checkGone(t, "the escaped "+how, pid)
		})
	}
}

// A program that exits by itself, successfully or not, leaves nothing
// running either: its process group is killed at its exit already, and
// what left the group goes too, as systemd's default KillMode does for a
// unit's leftovers. The output of a successful one stands.
func TestExitedProgramTakesEscapedDescendants(t *testing.T) {
	t.Parallel()
	for how, escape := range escapes {
		for _, exit := range []string{"0", "3"} {
			t.Run(how+"/exit"+exit, func(t *testing.T) {
				t.Parallel()
				r, dir := newTestRunner(t, nil)
				writeEscaper(t, dir, "bg", escape, `echo '"done"'; exit `+exit)
				pid, err := runEscape(t, context.Background(), r, "bg", filepath.Join(dir, "escaped.pid"))
				if exit == "0" && err != nil || exit != "0" && !errors.Is(err, ErrExit) {
					t.Fatalf("Run = %v, want the program's own result", err)
				}
				checkGone(t, "the escaped "+how, pid)
			})
		}
	}
}

// The cookie is the run's own: killing one run leaves another's escaped
// processes alone, and so a process that carries the cookie in another
// variable (not as its EnvCookie entry).
func TestKillSparesOtherRuns(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, func(c *Config) { c.Timeout = 3 * time.Second })
	long, longDir := newTestRunner(t, nil)
	writeEscaper(t, longDir, "holder", escapes["setsid"], "echo held > "+filepath.Join(longDir, "held")+"; sleep 1000")
	otherPID := filepath.Join(longDir, "escaped.pid")
	t.Cleanup(func() { killPIDFile(otherPID) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	held := make(chan error, 1)
	go func() {
		_, err := long.Run(ctx, action("holder", fmt.Sprintf("%q", otherPID)))
		held <- err
	}()
	other := readPID(t, otherPID)
	checkFor(t, "the other run to hold", func() bool {
		_, err := os.Stat(filepath.Join(longDir, "held"))
		return err == nil
	})

	// The timed-out run also starts a process that carries its cookie
	// only inside another variable's value.
	quoted := filepath.Join(dir, "quoted.pid")
	t.Cleanup(func() { killPIDFile(quoted) })
	writeEscaper(t, dir, "slow", escapes["setsid"], `env -u `+EnvCookie+` COATTAIL_X="`+EnvCookie+`=$`+EnvCookie+`" setsid sh -c 'echo $$ > "$0"; exec sleep 1000' `+quoted+` >/dev/null 2>&1 </dev/null &
sleep 1000`)
	pid, err := runEscape(t, context.Background(), r, "slow", filepath.Join(dir, "escaped.pid"))
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("Run = %v, want ErrTimeout", err)
	}
	checkGone(t, "the timed-out run's escaped process", pid)
	// A wrong kill was sent before Run returned; give it time to land.
	time.Sleep(200 * time.Millisecond)
	if processGone(other) {
		t.Errorf("another run's escaped process %d was killed", other)
	}
	if q := readPID(t, quoted); processGone(q) {
		t.Errorf("a process with the cookie in another variable (%d) was killed", q)
	}
	select {
	case err := <-held:
		t.Fatalf("the other run ended: %v", err)
	default:
	}

	cancel()
	<-held
	checkGone(t, "the other run's escaped process, once that run is stopped", other)
}

// A runner in a process that belongs to a run (a `coattail action perform`
// that runs the action itself, no service running) marks its runs with
// both cookies: killing the outer run reaches the nested run's
// processes, which are in a process group of their own.
func TestNestedRunsCarryTheOuterCookie(t *testing.T) {
	outer := newCookie()
	t.Setenv(EnvCookie, outer)
	r, dir := newTestRunner(t, nil)
	pidFile := filepath.Join(dir, "escaped.pid")
	writeEscaper(t, dir, "nested", escapes["setsid"], `echo "$`+EnvCookie+`" > `+filepath.Join(dir, "id")+`; sleep 1000`)
	done := make(chan error, 1)
	go func() {
		_, err := r.Run(context.Background(), action("nested", fmt.Sprintf("%q", pidFile)))
		done <- err
	}()
	t.Cleanup(func() { killPIDFile(pidFile) })
	pid := readPID(t, pidFile)
	var id string
	checkFor(t, "the nested run's cookie", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "id"))
		id = strings.TrimSpace(string(b))
		return strings.HasSuffix(string(b), "\n")
	})
	inner, ok := strings.CutPrefix(id, outer+":")
	if !ok || !isCookie(inner) {
		t.Fatalf("%s = %q, want %s:<cookie>", EnvCookie, id, outer)
	}
	// What the outer run's reaper does when that run is killed.
	if n := r.reaper.killAll(outer, 0); n < 2 {
		t.Errorf("killing the outer run signalled %d processes, want the nested program and its escaped child", n)
	}
	checkGone(t, "the nested run's escaped process", pid)
	if err := <-done; !errors.Is(err, ErrExit) {
		t.Errorf("nested Run = %v, want the program killed", err)
	}
}

func TestForPids(t *testing.T) {
	pids := func(lo, hi, limit int) ([]int, bool) {
		var ps []int
		ok := forPids(lo, hi, limit, func(p int) bool { ps = append(ps, p); return true })
		return ps, ok
	}
	if p, ok := pids(100, 103, 10); !ok || fmt.Sprint(p) != "[101 102 103]" {
		t.Errorf("forPids(100, 103) = %v, %v", p, ok)
	}
	if p, ok := pids(100, 100, 10); !ok || len(p) != 0 {
		t.Errorf("forPids(100, 100) = %v, %v", p, ok)
	}
	if _, ok := pids(100, 200, 10); ok {
		t.Error("forPids over the limit is ok")
	}
	max := pidMax()
	if p, ok := pids(max-2, 2, 10); !ok || fmt.Sprint(p) != fmt.Sprint([]int{max - 1, 1, 2}) {
		t.Errorf("forPids across pid_max (%d) = %v, %v", max, p, ok)
	}
	if _, ok := pids(max-2, 20, 10); ok {
		t.Error("forPids across pid_max over the limit is ok")
	}
	n := 0
	forPids(1, 100, 1000, func(int) bool { n++; return n < 3 })
	if n != 3 {
		t.Errorf("forPids went on after fn returned false: %d calls", n)
	}
}

// probeOnly makes rp's reapExited probe the pids allocated since a run
// started however many they are and however long the run took: on a busy
// machine (other packages' tests) a run may last over a second, or other
// processes take more pids than maxProbe meanwhile, and reapExited would
// rightly sweep instead.
func probeOnly(rp *reaper) {
	rp.fullAfter = time.Hour
	rp.probeLimit = func(int) int { return 1 << 22 }
}

// A run that exits by itself is checked without scanning /proc: only the
// pids allocated while it ran are looked at, and a scan happens only when
// one of them carries the run's cookie.
func TestExitedRunIsCheckedCheaply(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	probeOnly(r.reaper)
	writeProgram(t, dir, KindAction, "echo", "exec cat")
	writeProgram(t, dir, KindAction, "forks", `cat | tr -d x; sleep 0 & wait`)
	// A child left in the group is the group kill's: still dying when
	// the run is checked, it is not taken for one that left the group.
	writeProgram(t, dir, KindAction, "bg", `sleep 30 >/dev/null 2>&1 </dev/null & echo 1`)
	before := r.reaper.sweeps.Load()
	for i := 0; i < 10; i++ {
		for _, name := range []string{"echo", "forks", "bg"} {
			if _, err := r.Run(context.Background(), action(name, `{}`)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := r.reaper.sweeps.Load() - before; n != 0 {
		t.Errorf("30 runs that left nothing outside their group scanned /proc %d times", n)
	}

	writeEscaper(t, dir, "daemon", escapes["daemon"], `echo '"done"'`)
	pid, err := runEscape(t, context.Background(), r, "daemon", filepath.Join(dir, "escaped.pid"))
	if err != nil {
		t.Fatal(err)
	}
	if r.reaper.sweeps.Load() == before {
		t.Error("a run that left a daemon was not swept for")
	}
	checkGone(t, "the daemon", pid)
}

// startCarrier starts `sleep 1000` in a session of its own with cookie as
// its only environment, killed when t ends (if it still runs).
func startCarrier(t *testing.T, cookie string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "1000")
	cmd.Env = []string{EnvCookie + "=" + cookie}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd
}

// reapExited looks only at the pids allocated since the run's mark: it
// finds a process with the cookie started after it, and (this is what
// makes it cheap) not one started before.
func TestReapExitedLooksAtNewPids(t *testing.T) {
	t.Parallel()
	rp := newReaper(nil)
	if !rp.enabled {
		t.Skip("no usable /proc")
	}
	probeOnly(rp)
	cookie := newCookie()
	start := func() int { return startCarrier(t, cookie).Process.Pid }
	old := start()
	m := rp.mark()
	if n := rp.reapExited(cookie, m, 0); n != 0 {
		t.Fatalf("reapExited with nothing started since the mark killed %d", n)
	}
	if processGone(old) {
		t.Fatal("reapExited killed a process started before the mark")
	}
	m = rp.mark()
	fresh := start()
	if n := rp.reapExited(cookie, m, 0); n != 2 {
		t.Errorf("reapExited killed %d, want both processes (it sweeps once it found one)", n)
	}
	checkGone(t, "the process started after the mark", fresh)
	checkGone(t, "the process started before it", old)
}

// A process is looked at the moment it was started: Start returns once
// the exec is under way, before the kernel has recorded where the new
// program's environment lies, and an environ read then is empty (a third
// of the time on a loaded 2-core machine). The reaper waits for the exec
// to finish rather than take the process for one without a cookie.
func TestCarriesSeesProcessMidExec(t *testing.T) {
	t.Parallel()
	rp := newReaper(nil)
	if !rp.enabled {
		t.Skip("no usable /proc")
	}
	cookie := newCookie()
	match := func(c []byte) bool { return string(c) == cookie }
	var buf []byte
	missed := 0
	const n = 300
	for i := 0; i < n; i++ {
		cmd := startCarrier(t, cookie)
		if !rp.carries(strconv.Itoa(cmd.Process.Pid), match, &buf) {
			missed++
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	if missed > 0 {
		t.Errorf("%d of %d processes looked at just after their start were not seen to carry the cookie", missed, n)
	}
	// A process with an empty environment, a zombie and a kernel thread
	// read empty too, and are not waited for.
	waitUntil := func(what string, pid int, ok func(stat []string) bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if f, _ := procStat(pid); len(f) > 0 && ok(f) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s (pid %d): not there after 10s", what, pid)
			}
		}
	}
	cmd := exec.Command("sleep", "1000")
	cmd.Env = []string{}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	waitUntil("the exec of the process with no environment", cmd.Process.Pid,
		func(f []string) bool { return len(f) > statEnvEnd && f[statEnvEnd] != "0" })
	zombie := exec.Command("true")
	if err := zombie.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = zombie.Wait() }()
	waitUntil("the zombie", zombie.Process.Pid, func(f []string) bool { return f[0] == "Z" })
	cases := map[string]int{"empty environment": cmd.Process.Pid, "zombie": zombie.Process.Pid}
	if kthread := findKernelThread(); kthread > 0 {
		cases["kernel thread"] = kthread
	}
	for what, pid := range cases {
		start := time.Now()
		if rp.carries(strconv.Itoa(pid), match, &buf) {
			t.Errorf("%s: taken for a carrier", what)
		}
		if d := time.Since(start); d >= execWait {
			t.Errorf("%s: waited %v for an exec that is not happening", what, d)
		}
	}
}

// findKernelThread returns the pid of a kernel thread this /proc shows,
// 0 if none (a PID namespace of its own shows none).
func findKernelThread() int {
	names, _ := procPids()
	for _, name := range names {
		pid, _ := strconv.Atoi(name)
		if f, _ := procStat(pid); len(f) > statFlags {
			if fl, err := strconv.ParseUint(f[statFlags], 10, 64); err == nil && fl&pfKthread != 0 {
				return pid
			}
		}
	}
	return 0
}

// BenchmarkReap measures what the reaper adds to a run: a full scan of
// /proc (a killed run) and the check of a run that exited by itself and
// started nothing.
func BenchmarkReap(b *testing.B) {
	rp := newReaper(nil)
	if !rp.enabled {
		b.Skip("no usable /proc")
	}
	names, _ := procPids()
	b.Run(fmt.Sprintf("sweep/%dprocs", len(names)), func(b *testing.B) {
		for b.Loop() {
			rp.killAll(newCookie(), 0)
		}
	})
	b.Run("exited", func(b *testing.B) {
		for b.Loop() {
			rp.reapExited(newCookie(), rp.mark(), 0)
		}
	})
}
