package runner

import (
	"errors"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// A reaper kills the processes of a run that left its process group: a
// program that starts `setsid cmd &`, a double-forking daemon or `nohup
// setsid cmd` puts cmd in a session of its own, where the group kill does
// not reach it. Every process of a run carries the run's cookie in its
// environment (EnvCookie); the reaper scans /proc for processes of this
// user whose environ holds it and SIGKILLs them, scanning again until a
// scan finds none (one may fork while we scan), at most maxSweeps times.
//
// What it cannot find: a process that cleared or rewrote its environment
// (`env -i`, exec with an empty one), changed its uid (a set-uid program)
// or made itself undumpable (its environ is then unreadable): a program
// that hides on purpose. Those need a cgroup (run the service as a
// systemd unit, whose default KillMode=control-group kills them at stop).
//
// Full scans are O(processes on the machine), an open and a read of
// environ each. They run only where a run is killed (timeout, stop, output
// overflow) or left something behind that still held its output; those of
// concurrent runs share one scan (a service stopping 1000 running programs
// scans /proc a few times, not 1000 times). A run that exited by itself
// is checked more cheaply, and swept for only if that finds something or
// cannot tell: see reapExited.
//
// The run's own process group is killed (killGroup) before the reaper
// looks: its members, maybe still dying, are left to that kill.
type reaper struct {
	enabled bool   // /proc is usable and is this process's PID namespace's
	self    string // this process in /proc ("1234")
	uid     int    // only processes of this effective uid are killed
	log     *slog.Logger
	noProc  sync.Once

	mu      sync.Mutex
	pending []*reapReq
	busy    bool // a goroutine is sweeping for pending

	// How reapExited chooses a full sweep; tests make it never do.
	fullAfter  time.Duration       // runs longer than this
	probeLimit func(tasks int) int // more pids allocated since the run started than this
	sweeps     atomic.Int64        // scans of all of /proc, for tests
}

type reapReq struct {
	cookie string
	pgid   int // the run's process group, killed already; 0 for none
	killed int
	done   chan struct{}
}

// maxSweeps bounds the scans of one reap: each round kills what it finds,
// and a process killed cannot fork any more, so only children forked
// during a scan by a process not yet reached can need another round.
const maxSweeps = 8

// exitedFullScanAfter: a run that lasted longer than this is checked, at a
// normal exit, with a full scan instead of the pids allocated meanwhile
// (see reapExited): the pid counter could have gone round.
const exitedFullScanAfter = time.Second

// maxProbe is the most pids reapExited probes one by one; a run during
// which more pids were allocated (by anyone), or more than there are
// tasks on the machine, gets a full scan instead.
const maxProbe = 1024

func newReaper(log *slog.Logger) *reaper {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	rp := &reaper{uid: os.Geteuid(), log: log, fullAfter: exitedFullScanAfter,
		probeLimit: func(tasks int) int { return min(tasks, maxProbe) }}
	// /proc must number processes as this process does: under a PID
	// namespace of its own with the parent's /proc still mounted (unshare
	// -p without a new /proc), a pid read there would name another process
	// here.
	self, err := os.Readlink("/proc/self")
	if err == nil && self == strconv.Itoa(os.Getpid()) {
		rp.enabled, rp.self = true, self
	}
	return rp
}

// pidMark is where the kernel's pid counter stood when a run started.
type pidMark struct {
	last int // the last pid allocated in this PID namespace
	at   time.Time
	ok   bool
}

// mark notes the pid counter before a run starts, for reapExited.
func (rp *reaper) mark() pidMark {
	if !rp.enabled {
		return pidMark{}
	}
	last, _, ok := loadavgPids()
	return pidMark{last: last, at: time.Now(), ok: ok}
}

// loadavgPids returns the last pid allocated in this process's PID
// namespace and the number of tasks (threads) on the machine, the fifth
// and fourth fields of /proc/loadavg ("0.00 0.01 0.05 1/123 4567"). Read
// with bare system calls: it is read twice per run.
func loadavgPids() (last, tasks int, ok bool) {
	fd, err := unix.Open("/proc/loadavg", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, 0, false
	}
	var b [128]byte
	n, err := unix.Read(fd, b[:])
	unix.Close(fd)
	if err != nil || n <= 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[:n]))
	if len(f) < 5 {
		return 0, 0, false
	}
	_, total, found := strings.Cut(f[3], "/")
	t, err1 := strconv.Atoi(total)
	l, err2 := strconv.Atoi(f[4])
	if !found || err1 != nil || err2 != nil || l <= 0 {
		return 0, 0, false
	}
	return l, t, true
}

// killAll kills every process of this user that carries cookie, outside
// the process group pgid (killed already by the caller; 0 for none), and
// returns how many it signalled. Concurrent calls share sweeps.
func (rp *reaper) killAll(cookie string, pgid int) int {
	if !rp.enabled {
		rp.noProc.Do(func() {
			rp.log.Warn("runner: processes that left a run's process group (setsid, daemons) cannot be found and are not killed: /proc is missing or belongs to another PID namespace; only the process group is killed")
		})
		return 0
	}
	req := &reapReq{cookie: cookie, pgid: pgid, done: make(chan struct{})}
	rp.mu.Lock()
	rp.pending = append(rp.pending, req)
	if !rp.busy {
		rp.busy = true
		go rp.loop()
	}
	rp.mu.Unlock()
	<-req.done
	return req.killed
}

// loop sweeps for whatever is pending, until nothing is; a request that
// arrives during a sweep waits for the next, which starts after it.
func (rp *reaper) loop() {
	for {
		rp.mu.Lock()
		batch := rp.pending
		rp.pending = nil
		if len(batch) == 0 {
			rp.busy = false
			rp.mu.Unlock()
			return
		}
		rp.mu.Unlock()
		reqs := make(map[string][]*reapReq, len(batch))
		for _, q := range batch {
			reqs[q.cookie] = append(reqs[q.cookie], q)
		}
		rp.sweep(reqs)
		for _, q := range batch {
			close(q.done)
		}
	}
}

// sweep scans /proc for the cookies of reqs and kills what carries them,
// until a scan finds nothing new.
func (rp *reaper) sweep(reqs map[string][]*reapReq) {
	var hit string
	match := func(c []byte) bool {
		if _, ok := reqs[string(c)]; ok {
			hit = string(c)
			return true
		}
		return false
	}
	signalled := map[string]bool{} // killed already: may show until it is gone
	var buf []byte
	for round := 0; round < maxSweeps; round++ {
		rp.sweeps.Add(1)
		names, err := procPids()
		if err != nil {
			return
		}
		fresh := 0
		for _, name := range names {
			if name == rp.self || signalled[name] {
				continue
			}
			if !rp.carries(name, match, &buf) || !outside(name, reqs[hit][0].pgid) {
				continue
			}
			if rp.kill(name, match, &buf) {
				signalled[name] = true
				fresh++
				for _, q := range reqs[hit] {
					q.killed++
				}
			}
		}
		if fresh == 0 {
			return
		}
	}
	rp.log.Warn("runner: processes carrying a killed run's cookie kept appearing; gave up after repeated scans", "scans", maxSweeps)
}

// procPids lists the numeric entries of /proc: one per process (threads
// other than a process's first are not listed).
func procPids() ([]string, error) {
	f, err := os.Open("/proc")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	pids := names[:0]
	for _, n := range names {
		if n != "" && n[0] >= '1' && n[0] <= '9' {
			pids = append(pids, n)
		}
	}
	return pids, err
}

// outside reports whether the process pid (a /proc name) still runs and
// is not in the process group pgid. The group's members were sent SIGKILL
// with the group, and a killed member cannot fork; one still dying, its
// environ still readable, is neither killed again nor counted.
func outside(pid string, pgid int) bool {
	n, err := strconv.Atoi(pid)
	if err != nil {
		return false
	}
	pg, err := unix.Getpgid(n)
	return err == nil && (pgid <= 0 || pg != pgid)
}

// carries reports whether the process pid (a /proc name) has an EnvCookie
// entry that match accepts. A process gone, of another user (its environ
// is unreadable unless we are root) or a zombie (empty environ) does not.
func (rp *reaper) carries(pid string, match func([]byte) bool, buf *[]byte) bool {
	return environCookies(readEnviron(unix.AT_FDCWD, "/proc/"+pid+"/", buf), match)
}

// execWait bounds how long readEnviron waits for a process in the middle
// of an exec to show its new environment.
const execWait = 2 * time.Second

// readEnviron reads the environ of the process whose /proc directory is
// prefix ("/proc/1234/", or "" with dir a descriptor of it), nil if it
// cannot. A process in the middle of an exec has an empty environ for a
// moment: the kernel switches it to the new program's memory before it
// records where the environment lies in it (for microseconds, for much
// longer on a loaded machine). `setsid cmd &` execs twice, and a run that
// exits at once is checked during those very moments, so an empty environ
// of a process that is neither a zombie nor a kernel thread is read
// again until the exec is through (at most execWait).
func readEnviron(dir int, prefix string, buf *[]byte) []byte {
	read := func() ([]byte, bool) {
		fd, err := unix.Openat(dir, prefix+"environ", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, false
		}
		env := readAll(fd, buf)
		unix.Close(fd)
		return env, true
	}
	var deadline time.Time
	pause := 50 * time.Microsecond
	for {
		env, ok := read()
		if !ok || len(env) > 0 {
			return env
		}
		if !inExec(dir, prefix) {
			// Read again: the exec may have finished since the read
			// above, the environment laid out before the code.
			env, _ = read()
			return env
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(execWait)
		} else if time.Now().After(deadline) {
			return nil
		}
		time.Sleep(pause)
		pause = min(2*pause, 5*time.Millisecond)
	}
}

// pfKthread is PF_KTHREAD, the flags bit of a kernel thread.
const pfKthread = 0x00200000

// Fields of /proc/<pid>/stat that inExec reads, counted from the state
// (field 3, the first after comm): state, flags (9), end_code (27) and
// env_end (51).
const statState, statFlags, statEndCode, statEnvEnd = 0, 6, 24, 48

// inExec reports whether the process whose /proc directory is prefix (see
// readEnviron), whose environ read empty, is still inside an exec: alive
// (not a zombie), not a kernel thread (which has no environment), and its
// new program not yet laid out. The kernel records where the environment
// lies (env_end, field 51 of stat) and then, last of all, where the code
// lies (end_code, field 27), both 0 in the fresh memory until then; a
// program started with an empty environment has both set. False when it
// cannot tell (gone, or a kernel before 3.5 without the fields).
func inExec(dir int, prefix string) bool {
	fd, err := unix.Openat(dir, prefix+"stat", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	var b [4096]byte // 52 fields of at most 20 digits, and comm
	n, err := unix.Read(fd, b[:])
	unix.Close(fd)
	if err != nil || n <= 0 {
		return false
	}
	// "pid (comm) state ppid ...": comm may hold anything, so the fields
	// are counted from its last ')'.
	i := strings.LastIndexByte(string(b[:n]), ')')
	if i < 0 {
		return false
	}
	f := strings.Fields(string(b[i+1 : n]))
	if len(f) <= statEnvEnd || f[statState] == "Z" || f[statState] == "X" {
		return false
	}
	fl, err := strconv.ParseUint(f[statFlags], 10, 64)
	return err == nil && fl&pfKthread == 0 && (f[statEnvEnd] == "0" || f[statEndCode] == "0")
}

// kill SIGKILLs the process pid if, checked again through a descriptor
// of its /proc directory (which stays bound to that process even if its
// pid is freed and reused), it still carries a cookie match accepts and
// runs as this user; it reports whether it signalled it.
func (rp *reaper) kill(pid string, match func([]byte) bool, buf *[]byte) bool {
	dfd, err := unix.Open("/proc/"+pid, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(dfd)
	if !environCookies(readEnviron(dfd, "", buf), match) {
		return false
	}
	var st unix.Stat_t
	if err := unix.Fstat(dfd, &st); err != nil || int(st.Uid) != rp.uid {
		return false
	}
	err = unix.PidfdSendSignal(dfd, unix.SIGKILL, nil, 0)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
		// Before Linux 5.1, or a seccomp filter that refuses the call:
		// by number, which /proc shares with us (newReaper checked).
		n, _ := strconv.Atoi(pid)
		err = unix.Kill(n, unix.SIGKILL)
	}
	return err == nil
}

// maxEnviron bounds what is read of one process's environ.
const maxEnviron = 16 << 20

// readAll reads fd to its end (or maxEnviron) into *buf and returns it.
func readAll(fd int, buf *[]byte) []byte {
	if cap(*buf) == 0 {
		*buf = make([]byte, 0, 16<<10)
	}
	b := (*buf)[:0]
	for len(b) < maxEnviron {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := unix.Read(fd, b[len(b):cap(b)])
		if n <= 0 || err != nil {
			break
		}
		b = b[:len(b)+n]
	}
	*buf = b
	return b
}

// reapExited kills what a run that exited by itself left running outside
// its process group, and returns how many it signalled. A full sweep
// after every run would cost it 10-45 times what this check does
// (docs/PERFORMANCE.md), and receivers may run hundreds of times a
// second, so it looks first at the only pids a descendant of the run can
// have: those the kernel allocated since m, read from /proc/loadavg's
// last pid. A run that started nothing costs three small reads; only if
// one of those pids carries the cookie (or the run lasted over fullAfter,
// or more pids went by than probeLimit) does it sweep /proc as killAll
// does. pgid is the program's process group (its pid: the program,
// reaped already, led it), killed already.
func (rp *reaper) reapExited(cookie string, m pidMark, pgid int) int {
	if !rp.enabled {
		return 0
	}
	last, tasks, ok := loadavgPids()
	if !m.ok || !ok || time.Since(m.at) > rp.fullAfter {
		return rp.killAll(cookie, pgid)
	}
	limit := rp.probeLimit(tasks)
	match := func(c []byte) bool { return string(c) == cookie }
	var buf []byte
	found := false
	probe := func(p int) bool {
		if p == pgid {
			return true
		}
		name := strconv.Itoa(p)
		found = name != rp.self && rp.carries(name, match, &buf) && outside(name, pgid)
		return !found
	}
	for lo, pass := m.last, 0; ; pass++ {
		if !forPids(lo, last, limit, probe) || found {
			return rp.killAll(cookie, pgid)
		}
		// A process probed may have forked (a daemon's second fork) and
		// exited just before the probe reached it: its child's pid is
		// past last, so the pids allocated during the probe are probed
		// too, once.
		if pass == 1 {
			return 0
		}
		lo = last
		if last, _, ok = loadavgPids(); !ok {
			return rp.killAll(cookie, pgid)
		}
	}
}

// forPids calls fn with each pid after lo up to and including hi, in
// allocation order (past pid_max the kernel starts again from the
// bottom), until fn returns false. It returns false, calling fn for none,
// if there are more than limit.
func forPids(lo, hi, limit int, fn func(pid int) bool) bool {
	if hi >= lo {
		if hi-lo > limit {
			return false
		}
		for p := lo + 1; p <= hi; p++ {
			if !fn(p) {
				break
			}
		}
		return true
	}
	max := pidMax()
	if max-1-lo+hi > limit {
		return false
	}
	for p := lo + 1; p < max; p++ {
		if !fn(p) {
			return true
		}
	}
	for p := 1; p <= hi; p++ {
		if !fn(p) {
			break
		}
	}
	return true
}

// pidMax is the kernel's pid_max (pids are below it), or the largest it
// can be when that cannot be read.
func pidMax() int {
	b, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n > 0 {
			return n
		}
	}
	return 1 << 22 // PID_MAX_LIMIT on 64-bit
}
