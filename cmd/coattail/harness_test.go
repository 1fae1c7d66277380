package main

// The end-to-end harness: TestMain builds the coattail binary once, and
// each test drives it as a user would, in its own temporary directories,
// with its own COATTAIL_RUNTIME_DIR so that `service status` sees only the
// services that test started. Modelled on kubo's test/cli/harness and
// nats-server's checkFor.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binPath is the coattail binary TestMain built; empty under -short.
var binPath string

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if bin := os.Getenv(watchdogEnv); bin != "" {
		return watchdog(bin)
	}
	if testing.Short() {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "ctbin")
	if err != nil {
		fmt.Fprintln(os.Stderr, "harness:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binPath = filepath.Join(dir, "coattail")
	build := exec.Command("go", "build", "-o", binPath, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "harness: building coattail:", err)
		return 1
	}
	stop, err := startWatchdog(binPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "harness: starting the watchdog:", err)
		return 1
	}
	defer stop()
	return m.Run()
}

// watchdogEnv names, in the environment of the test binary started again
// as a watchdog, the coattail binary whose processes it kills.
const watchdogEnv = "COATTAIL_TEST_WATCHDOG"

// startWatchdog starts this test binary again as a watchdog over the
// processes of bin: services the tests start detach themselves (`service
// start --headless`), so when the test binary dies without its cleanups
// (go test's -timeout panics, a crash), they would run on. The watchdog
// holds the read end of a pipe whose write end only this process holds;
// when it reads EOF (this process exited, however), it kills every process
// running bin. stop closes the pipe and waits for it, at the normal end.
func startWatchdog(bin string) (stop func(), err error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), watchdogEnv+"="+bin)
	cmd.Stdin, cmd.Stderr = r, os.Stderr
	// A group of its own: a Ctrl-C to go test's group does not kill it
	// before it has killed the services.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	r.Close()
	if err != nil {
		w.Close()
		return nil, err
	}
	return func() { w.Close(); _ = cmd.Wait() }, nil
}

// watchdog waits for EOF on stdin, then SIGKILLs every process whose
// executable is bin (only the tests start it: a fresh temporary path) and
// says how many were left. Linux only (/proc); elsewhere it only waits.
func watchdog(bin string) int {
	_, _ = io.Copy(io.Discard, os.Stdin)
	names, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	killed := 0
	for _, e := range names {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil || strings.TrimSuffix(exe, " (deleted)") != bin {
			continue
		}
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			killed++
		}
	}
	if killed > 0 {
		fmt.Fprintf(os.Stderr, "harness watchdog: killed %d coattail process(es) the tests left running\n", killed)
	}
	return 0
}

// needBinary skips end-to-end tests under -short.
func needBinary(t testing.TB) {
	t.Helper()
	if binPath == "" {
		t.Skip("end-to-end test: needs the built binary (not built under -short)")
	}
}

// commandTimeout bounds one CLI invocation, so a hung command fails the
// test instead of the whole run.
const commandTimeout = 90 * time.Second

// runtimeDirs gives each test one COATTAIL_RUNTIME_DIR shared by all its
// instances.
var runtimeDirs sync.Map // testing.TB -> string

func runtimeDir(t testing.TB) string {
	if d, ok := runtimeDirs.Load(t); ok {
		return d.(string)
	}
	d := t.TempDir()
	runtimeDirs.Store(t, d)
	t.Cleanup(func() { runtimeDirs.Delete(t) })
	return d
}

// childEnv is the environment of every coattail process a test starts: the
// parent's, minus any COATTAIL_* setting that could point it at a real
// instance, plus the test's runtime dir.
func childEnv(t testing.TB, extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "COATTAIL_") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "COATTAIL_RUNTIME_DIR="+runtimeDir(t))
	return append(env, extra...)
}

// instance is one coattail instance directory, driven through the binary.
type instance struct {
	t    testing.TB
	name string
	dir  string
	env  []string // extra KEY=VALUE for every command
	pid  int      // of the service this harness started, 0 when none
}

// newInstance runs `coattail new <dir> --loopback --port 0` and returns
// the instance.
func newInstance(t testing.TB, name string) *instance {
	t.Helper()
	needBinary(t)
	// Canonical, so paths compare equal to what the service reports.
	parent, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	inst := &instance{t: t, name: name, dir: filepath.Join(parent, name)}
	if n := len(inst.dir) + len("/coattail.sock"); n > 107 {
		t.Fatalf("instance path %s is too long for a unix socket (%d bytes); set TMPDIR to a shorter directory", inst.dir, n)
	}
	stdout, stderr, code := inst.runIn(parent, "new", name, "--loopback", "--port", "0")
	if code != 0 {
		t.Fatalf("coattail new %s: exit %d\nstdout: %s\nstderr: %s", name, code, stdout, stderr)
	}
	return inst
}

// run runs coattail with args in the instance directory.
func (i *instance) run(args ...string) (stdout, stderr string, code int) {
	i.t.Helper()
	return i.runIn(i.dir, args...)
}

func (i *instance) runIn(dir string, args ...string) (stdout, stderr string, code int) {
	i.t.Helper()
	return i.exec(dir, "", args...)
}

// runStdin runs coattail in the instance directory with input on stdin.
func (i *instance) runStdin(input string, args ...string) (stdout, stderr string, code int) {
	i.t.Helper()
	return i.exec(i.dir, input, args...)
}

// exec is the one way tests run the binary: bounded in time, with the
// test's environment, never leaving a "locked" error unnoticed.
func (i *instance) exec(dir, input string, args ...string) (stdout, stderr string, code int) {
	i.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, args...)
	cmd.Dir = dir
	cmd.Env = childEnv(i.t, i.env...)
	// A headless start leaves a service behind; it must not hold our pipes.
	cmd.WaitDelay = 5 * time.Second
	if input != "" {
		cmd.Stdin = strings.NewReader(input)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		code = ee.ExitCode()
	default:
		i.t.Fatalf("%s: coattail %s: %v (stderr: %s)", i.name, strings.Join(args, " "), err, errb.String())
	}
	// The datastore is never "locked" to the user, whatever runs.
	if showsLocked(errb.String()) {
		i.t.Errorf("%s: coattail %s showed a locked error: %s", i.name, strings.Join(args, " "), errb.String())
	}
	return out.String(), errb.String(), code
}

// lockedWord matches "locked" as a word, in any case.
var lockedWord = regexp.MustCompile(`(?i)\blocked\b`)

// showsLocked reports whether stderr shows a "locked" error. It matches
// the word only: net/http's own error text for a connection the service
// reset before answering (a service killed mid-request) names its internal
// function, "readLoopPeekFailLocked: read unix ...: connection reset by
// peer", which is not a lock of the datastore.
func showsLocked(stderr string) bool { return lockedWord.MatchString(stderr) }

// mustRun runs coattail and fails the test unless it exits 0; it returns
// stdout.
func (i *instance) mustRun(args ...string) string {
	i.t.Helper()
	stdout, stderr, code := i.run(args...)
	if code != 0 {
		i.t.Fatalf("%s: coattail %s: exit %d\nstdout: %s\nstderr: %s", i.name, strings.Join(args, " "), code, stdout, stderr)
	}
	return stdout
}

// mustFail runs coattail, fails the test unless it exits non-zero with
// every want string in stderr and nothing on stdout, and returns stderr.
func (i *instance) mustFail(args []string, want ...string) string {
	i.t.Helper()
	stdout, stderr, code := i.run(args...)
	if code == 0 {
		i.t.Fatalf("%s: coattail %s succeeded, want failure\nstdout: %s\nstderr: %s", i.name, strings.Join(args, " "), stdout, stderr)
	}
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			i.t.Fatalf("%s: coattail %s: stderr lacks %q\nstderr: %s", i.name, strings.Join(args, " "), w, stderr)
		}
	}
	if strings.TrimSpace(stdout) != "" {
		i.t.Errorf("%s: coattail %s failed but printed on stdout: %s", i.name, strings.Join(args, " "), stdout)
	}
	return stderr
}

// start runs `service start --headless` and returns the pid it printed.
// The service is stopped when the test ends: by `service stop`, else by
// SIGKILL.
func (i *instance) start() int {
	i.t.Helper()
	out := strings.TrimSpace(i.mustRun("service", "start", "--headless"))
	pid, err := strconv.Atoi(out)
	if err != nil || pid <= 0 {
		i.t.Fatalf("%s: service start --headless printed %q, want a pid", i.name, out)
	}
	i.pid = pid
	i.t.Cleanup(func() { i.cleanupService(pid) })
	return pid
}

func (i *instance) cleanupService(pid int) {
	if !processAlive(pid) {
		return
	}
	_, stderr, code := i.run("service", "stop")
	if code != 0 && processAlive(pid) {
		i.t.Logf("%s: service stop at cleanup: %s; killing pid %d", i.name, strings.TrimSpace(stderr), pid)
	}
	killAndWait(i.t, pid)
}

// killAndWait SIGKILLs pid (if still alive) and waits until it is gone.
func killAndWait(t testing.TB, pid int) {
	t.Helper()
	if !processAlive(pid) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	checkFor(t, 10*time.Second, func() error {
		if processAlive(pid) {
			return fmt.Errorf("pid %d still alive after SIGKILL", pid)
		}
		return nil
	})
}

// processAlive reports whether pid runs; a zombie (exited, not yet reaped
// by its new parent) counts as gone.
func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	// The state follows the parenthesised command name.
	s := string(b)
	if k := strings.LastIndexByte(s, ')'); k >= 0 && k+2 < len(s) {
		return s[k+2] != 'Z'
	}
	return true
}

// stopUnderPerform stops i's service while an `action perform` runs (its
// exit code comes on done): the perform must fail and return, and process
// pid (what it is, for the error) must be gone soon after.
func (i *instance) stopUnderPerform(done <-chan int, pid int, what string) {
	i.t.Helper()
	i.mustRun("service", "stop")
	select {
	case code := <-done:
		if code == 0 {
			i.t.Error("perform succeeded although the service stopped under it")
		}
	case <-time.After(20 * time.Second):
		i.t.Fatal("perform did not return after the service stopped")
	}
	checkFor(i.t, 10*time.Second, func() error {
		if processAlive(pid) {
			return fmt.Errorf("%s %d still runs after the service stopped", what, pid)
		}
		return nil
	})
}

// peerID is the instance's peer id, from `token issuer` (works offline).
func (i *instance) peerID() string {
	i.t.Helper()
	return strings.TrimSpace(i.mustRun("token", "issuer"))
}

// path joins elems to the instance directory.
func (i *instance) path(elems ...string) string {
	return filepath.Join(append([]string{i.dir}, elems...)...)
}

// writeScript writes an executable shell script into kind ("actions" or
// "receivers") under name.
func (i *instance) writeScript(kind, name, body string) {
	i.t.Helper()
	if err := os.WriteFile(i.path(kind, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		i.t.Fatal(err)
	}
}

// setConfig replaces the first `key: ...` line of config.yml (and the
// "- item" lines of a list value) by `key: value`; value is YAML, so a list
// is written in flow style.
func (i *instance) setConfig(key, value string) {
	i.t.Helper()
	b, err := os.ReadFile(i.path("config.yml"))
	if err != nil {
		i.t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	found := false
	for n, l := range lines {
		trimmed := strings.TrimLeft(l, " ")
		if strings.HasPrefix(trimmed, key+":") {
			indent := l[:len(l)-len(trimmed)]
			lines[n] = indent + key + ": " + value
			found = true
			// A list value continues on the following "- " lines.
			for n+1 < len(lines) && strings.HasPrefix(strings.TrimLeft(lines[n+1], " "), "- ") {
				lines = append(lines[:n+1], lines[n+2:]...)
			}
			break
		}
	}
	if !found {
		i.t.Fatalf("config.yml has no key %q", key)
	}
	if err := os.WriteFile(i.path("config.yml"), []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		i.t.Fatal(err)
	}
}

// issue runs `token issue ... --print-raw-token --quiet` and returns the JWT.
func (i *instance) issue(args ...string) string {
	i.t.Helper()
	out := i.mustRun(append([]string{"token", "issue", "--print-raw-token", "--quiet"}, args...)...)
	tok := strings.TrimSpace(out)
	if strings.Count(tok, ".") != 2 || strings.ContainsAny(tok, " \n") {
		i.t.Fatalf("%s: token issue --print-raw-token --quiet printed %q, want one JWT", i.name, out)
	}
	return tok
}

// tokenID returns the jti of a raw token, via `token decode --json`.
func (i *instance) tokenID(raw string) string {
	i.t.Helper()
	var c struct {
		ID string `json:"jti"`
	}
	i.decodeJSON(i.mustRun("token", "decode", "--json", raw), &c)
	if c.ID == "" {
		i.t.Fatalf("token decode --json: no jti")
	}
	return c.ID
}

func (i *instance) decodeJSON(s string, v any) {
	i.t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		i.t.Fatalf("%s: output is not the expected JSON: %v\n%s", i.name, err, s)
	}
}

// proc is a coattail command running in the background, its output
// captured as it arrives.
type proc struct {
	cmd      *exec.Cmd
	out, err lockedBuffer
	done     chan struct{}
	code     int
}

// lockedBuffer is a bytes.Buffer the test reads while a process writes it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *lockedBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// spawn starts coattail with args in the background.
func (i *instance) spawn(args ...string) *proc {
	i.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	p := &proc{done: make(chan struct{})}
	p.cmd = exec.CommandContext(ctx, binPath, args...)
	p.cmd.Dir = i.dir
	p.cmd.Env = childEnv(i.t, i.env...)
	p.cmd.WaitDelay = 5 * time.Second
	p.cmd.Stdout = &p.out
	p.cmd.Stderr = &p.err
	if err := p.cmd.Start(); err != nil {
		cancel()
		i.t.Fatal(err)
	}
	go func() {
		defer cancel()
		err := p.cmd.Wait()
		p.code = 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			p.code = ee.ExitCode()
		} else if err != nil {
			p.code = -1
		}
		close(p.done)
	}()
	i.t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

func (p *proc) stdout() string { return p.out.String() }
func (p *proc) stderr() string { return p.err.String() }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits for the command to exit and returns its exit code.
func (p *proc) wait(t testing.TB) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(commandTimeout):
		t.Fatalf("coattail %v did not exit", p.cmd.Args)
		return -1
	}
}

// checkFor polls fn until it returns nil or timeout passes; then the test
// fails with fn's last error.
func checkFor(t testing.TB, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	interval := 20 * time.Millisecond
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", timeout, err)
		}
		time.Sleep(interval)
		if interval < 250*time.Millisecond {
			interval *= 2
		}
	}
}

// busyPort holds a loopback TCP port for the rest of the test.
func busyPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// The "locked" check catches a lock error however it is worded, but not
// net/http's readLoopPeekFailLocked, which an interrupted publish printed
// when its service was SIGKILLed before answering (TestCrashConsistency
// failed on it under load).
func TestShowsLocked(t *testing.T) {
	for s, want := range map[string]bool{
		"coattail: datastore locked":             true,
		"coattail: LOCKED: resource busy":        true,
		"pebble: lock held: database is locked.": true,
		"coattail: readLoopPeekFailLocked: read unix @->/tmp/x/pub/.8711304/s: read: connection reset by peer": false,
		"coattail: EOF": false,
	} {
		if got := showsLocked(s); got != want {
			t.Errorf("showsLocked(%q) = %v, want %v", s, got, want)
		}
	}
}
