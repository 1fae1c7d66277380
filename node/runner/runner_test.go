package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coattail/coattail/topics"
)

// newTestRunner returns a runner over a fresh instance directory.
func newTestRunner(t testing.TB, mod func(*Config)) (*Runner, string) {
	t.Helper()
	dir := t.TempDir()
	cfg := Config{
		Dir:    dir,
		PeerID: "12D3KooWTestPeer",
		Socket: filepath.Join(dir, "coattail.sock"),
		Binary: "/opt/coattail/bin/coattail",
	}
	if mod != nil {
		mod(&cfg)
	}
	return New(cfg), dir
}

// writeProgram writes an executable script for kind/name into dir.
func writeProgram(t testing.TB, dir string, kind Kind, name, body string) string {
	t.Helper()
	return writeFile(t, dir, kind, name, "#!/bin/sh\n"+body+"\n", 0o755)
}

func writeFile(t testing.TB, dir string, kind Kind, name, content string, mode os.FileMode) string {
	t.Helper()
	pdir := filepath.Join(dir, kind.Dir())
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(pdir, name)
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // defeat the umask
		t.Fatal(err)
	}
	return path
}

func action(name, input string) Invocation {
	return Invocation{Kind: KindAction, Name: name, Input: json.RawMessage(input)}
}

// checkFor polls cond until it holds or the generous deadline passes; it
// waits for an outcome, it does not measure speed.
func checkFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// procStat returns the fields of /proc/<pid>/stat from the state (field
// 3) on: state, ppid, ...; ok is false when it cannot be read (pid is gone).
func procStat(pid int) (fields []string, ok bool) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, false
	}
	// Format: pid (comm) state ...; comm may contain spaces.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, true
	}
	return strings.Fields(s[i+1:]), true
}

// processGone reports whether pid no longer runs. A killed orphan may stay
// a zombie until some ancestor reaps it, which counts as gone.
func processGone(pid int) bool {
	f, ok := procStat(pid)
	return !ok || len(f) > 0 && (f[0] == "Z" || f[0] == "X")
}

// checkGone waits, up to 10 s, for pid to be gone: the runner killed it
// before Run returned, and a killed process takes a moment to die.
func checkGone(t *testing.T, what string, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !processGone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("%s (pid %d) still runs 10s after Run returned", what, pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// killPIDFile kills the process whose pid path holds, if any: a cleanup
// for processes a failing test may leave behind.
func killPIDFile(path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	var pid int
	checkFor(t, "pid file "+path, func() bool {
		b, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	return pid
}

func TestRunEchoAction(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	writeProgram(t, dir, KindAction, "orders.created", "exec cat")

	for _, in := range []string{`{"id":42,"items":["a","b"]}`, `"text"`, `[1,2,3]`, `null`} {
		out, err := r.Run(context.Background(), action("orders.created", in))
		if err != nil {
			t.Fatalf("Run(%s): %v", in, err)
		}
		if string(out) != in {
			t.Errorf("Run(%s) = %s, want the input back", in, out)
		}
	}
}

func TestRunEnvironment(t *testing.T) {
	t.Setenv("COATTAIL_TEST_SECRET", "leaked")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "leaked")
	t.Setenv("LANG", "C.UTF-8")
	r, dir := newTestRunner(t, nil)
	// Print every variable as a JSON object of strings; the values used
	// here contain no characters that need escaping.
	writeProgram(t, dir, KindReceiver, "orders.shipped", `
printf '{'
env | sort | while IFS='=' read -r k v; do printf '"%s":"%s",' "$k" "$v"; done
printf '"PWD_NOW":"%s"}' "$(pwd -P)"`)

	out, err := r.Run(context.Background(), Invocation{
		Kind:   KindReceiver,
		Name:   "orders.shipped",
		Input:  json.RawMessage(`{}`),
		Caller: "12D3KooWCaller",
		Env: map[string]string{
			"COATTAIL_PUBLISHER": "12D3KooWPub",
			"COATTAIL_SUBJECT":   "orders.shipped",
			"COATTAIL_SEQUENCE":  "7",
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	var env map[string]string
	if err := json.Unmarshal(out, &env); err != nil {
		t.Fatalf("output %s: %v", out, err)
	}
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"COATTAIL_INSTANCE":  dir,
		"COATTAIL_ACTION":    "orders.shipped",
		"COATTAIL_KIND":      "receiver",
		"COATTAIL_CALLER":    "12D3KooWCaller",
		"COATTAIL_PEER_ID":   "12D3KooWTestPeer",
		"COATTAIL_SOCKET":    filepath.Join(dir, "coattail.sock"),
		"COATTAIL_BIN":       "/opt/coattail/bin/coattail",
		"COATTAIL_PUBLISHER": "12D3KooWPub",
		"COATTAIL_SUBJECT":   "orders.shipped",
		"COATTAIL_SEQUENCE":  "7",
		"LANG":               "C.UTF-8",
		"PWD_NOW":            realDir,
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s = %q, want %q", k, env[k], v)
		}
	}
	if id := env[EnvCookie]; !isCookie(id) {
		t.Errorf("%s = %q, want a cookie of %d hex digits", EnvCookie, id, cookieLen)
	}
	if !strings.HasPrefix(env["PATH"], "/opt/coattail/bin:") {
		t.Errorf("PATH = %q, want the binary's directory first", env["PATH"])
	}
	for _, k := range []string{"COATTAIL_TEST_SECRET", "AWS_SECRET_ACCESS_KEY"} {
		if _, ok := env[k]; ok {
			t.Errorf("parent variable %s leaked into the program", k)
		}
	}
}

func TestRunCallerDefaultsToLocal(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	writeProgram(t, dir, KindAction, "who", `printf '"%s"' "$COATTAIL_CALLER"`)
	out, err := r.Run(context.Background(), action("who", `{}`))
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `"local"` {
		t.Errorf("caller = %s, want \"local\"", out)
	}
}

func TestRunRejectsBadEnv(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	writeProgram(t, dir, KindAction, "a", "exec cat")
	for _, env := range []map[string]string{
		{"PATH": "/evil"},
		{"LD_PRELOAD": "/evil.so"},
		{"COATTAIL_CALLER": "someone-else"},
		{"COATTAIL_INSTANCE": "/elsewhere"},
		{EnvCookie: "0123456789abcdef0123456789abcdef"}, // another run's cookie
		{"COATTAIL_X=Y": "z"},
		{"COATTAIL_X": "nul\x00byte"},
	} {
		inv := action("a", `{}`)
		inv.Env = env
		if _, err := r.Run(context.Background(), inv); !errors.Is(err, ErrBadInput) {
			t.Errorf("env %q: err = %v, want ErrBadInput", env, err)
		}
	}
}

func TestRunStreamsStderrLinesInOrder(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	writeProgram(t, dir, KindAction, "chatty", `
i=1
while [ $i -le 200 ]; do echo "line $i" >&2; i=$((i+1)); done
printf 'crlf\r\n' >&2
printf 'no newline at end' >&2
echo '{"done":true}'`)

	var lines []string
	inv := action("chatty", `{}`)
	inv.Log = func(l string) { lines = append(lines, l) }
	out, err := r.Run(context.Background(), inv)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `{"done":true}` {
		t.Errorf("output = %s", out)
	}
	if len(lines) != 202 {
		t.Fatalf("got %d log lines, want 202: %q", len(lines), lines)
	}
	for i := 0; i < 200; i++ {
		if want := fmt.Sprintf("line %d", i+1); lines[i] != want {
			t.Fatalf("line %d = %q, want %q", i, lines[i], want)
		}
	}
	if lines[200] != "crlf" || lines[201] != "no newline at end" {
		t.Errorf("last lines = %q", lines[200:])
	}
}

func TestRunTruncatesLongLogLines(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	// A 1 MiB line without a newline, then a normal line.
	writeProgram(t, dir, KindAction, "long", `head -c 1048576 /dev/zero | tr '\0' 'x' >&2; echo >&2; echo after >&2`)
	var lines []string
	inv := action("long", `{}`)
	inv.Log = func(l string) { lines = append(lines, l) }
	if _, err := r.Run(context.Background(), inv); err != nil {
		t.Fatal(err)
	}
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2", len(lines))
	}
	if want := strings.Repeat("x", MaxLogLine) + TruncatedMark; lines[0] != want {
		t.Errorf("long line has %d bytes, want %d bytes ending in the mark", len(lines[0]), len(want))
	}
	if lines[1] != "after" {
		t.Errorf("line after the long one = %q", lines[1])
	}
}

func TestLineWriterSplitsAcrossWrites(t *testing.T) {
	t.Parallel()
	var got []string
	w := newLineWriter(func(l string) { got = append(got, l) })
	for _, chunk := range []string{"he", "llo\nwor", "ld\n\nx", strings.Repeat("y", MaxLogLine), "z\n"} {
		if _, err := w.Write([]byte(chunk)); err != nil {
			t.Fatal(err)
		}
		if cap(w.cur) > 2*MaxLogLine {
			t.Fatalf("line buffer grew to %d bytes", cap(w.cur))
		}
	}
	w.flush()
	want := []string{"hello", "world", "", "x" + strings.Repeat("y", MaxLogLine-1) + TruncatedMark}
	if len(got) != len(want) {
		t.Fatalf("got %d lines %q, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d = %.40q, want %.40q", i, got[i], want[i])
		}
	}
	if w.last != want[3] {
		t.Errorf("last non-empty line = %.40q", w.last)
	}
}

func TestRunNonZeroExit(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	writeProgram(t, dir, KindAction, "orders.created", `echo "starting" >&2; echo "stock is empty" >&2; echo '{}'; exit 3`)
	_, err := r.Run(context.Background(), action("orders.created", `{}`))
	if !errors.Is(err, ErrExit) {
		t.Fatalf("err = %v, want ErrExit", err)
	}
	if want := `runner: action "orders.created" exited with status 3: stock is empty`; err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
}

func TestRunKilledBySignal(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	writeProgram(t, dir, KindAction, "suicide", `kill -9 $$`)
	_, err := r.Run(context.Background(), action("suicide", `{}`))
	if !errors.Is(err, ErrExit) || !strings.Contains(err.Error(), "killed by signal") {
		t.Fatalf("err = %v, want ErrExit naming the signal", err)
	}
}

func TestRunInvalidJSONOutput(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	for name, body := range map[string]string{
		"text":  `echo hello`,
		"two":   `echo '{}{}'`,
		"trunc": `printf '{"a":'`,
		"utf8":  `printf '{"a":"\377"}'`, // encoding/json alone accepts it
	} {
		writeProgram(t, dir, KindAction, name, body)
		_, err := r.Run(context.Background(), action(name, `{}`))
		if !errors.Is(err, ErrBadOutput) {
			t.Errorf("%s: err = %v, want ErrBadOutput", name, err)
			continue
		}
		if want := fmt.Sprintf("runner: action %q returned invalid JSON", name); !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%s: err = %q, want prefix %q", name, err, want)
		}
	}
}

func TestRunEmptyOutputIsNull(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	writeProgram(t, dir, KindAction, "silent", `cat >/dev/null`)
	writeProgram(t, dir, KindAction, "blank", `printf '  \n\n'`)
	for _, name := range []string{"silent", "blank"} {
		out, err := r.Run(context.Background(), action(name, `{"x":1}`))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if string(out) != "null" {
			t.Errorf("%s: output = %q, want null", name, out)
		}
	}
}

func TestRunEmptyInputIsNull(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	writeProgram(t, dir, KindAction, "echo", "exec cat")
	out, err := r.Run(context.Background(), Invocation{Kind: KindAction, Name: "echo"})
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "null" {
		t.Errorf("output = %q, want null", out)
	}
}

func TestRunTimeoutKillsProcessGroup(t *testing.T) {
	t.Parallel()
	// The timeout leaves a busy machine ample time to start the shell and
	// have it write the child's pid, which this test then checks is gone.
	r, dir := newTestRunner(t, func(c *Config) { c.Timeout = 3 * time.Second })
	pidFile := filepath.Join(dir, "child.pid")
	// The child sleep holds stdout open too, so Run would hang on it if it
	// survived the timeout.
	writeProgram(t, dir, KindAction, "slow", `sleep 1000 & echo $! > child.pid; wait`)

	_, err := r.Run(context.Background(), action("slow", `{}`))
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want it to wrap context.DeadlineExceeded", err)
	}
	if want := `runner: action "slow" timed out after 3s`; err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
	pid := readPID(t, pidFile)
	checkFor(t, "child sleep to die", func() bool { return processGone(pid) })
}

func TestRunContextCancelKillsProcessGroup(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	pidFile := filepath.Join(dir, "child.pid")
	writeProgram(t, dir, KindAction, "slow", `sleep 1000 & echo $! > child.pid; wait`)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := r.Run(ctx, action("slow", `{}`))
		done <- err
	}()
	pid := readPID(t, pidFile) // the program is running
	cancel()
	err := <-done
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want context.Canceled and not ErrTimeout", err)
	}
	if !strings.Contains(err.Error(), `action "slow"`) {
		t.Errorf("err = %q does not name the action", err)
	}
	checkFor(t, "child sleep to die", func() bool { return processGone(pid) })
}

// A grandchild that left the process group (setsid) and keeps stdout
// open neither hangs Run nor outlives it: the program's result stands,
// and the grandchild, out of the group's reach, is found by the run's
// cookie and killed (on Linux; it used to run on for ever).
func TestRunDoesNotHangOnEscapedGrandchild(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	pidFile := filepath.Join(dir, "escaped.pid")
	// The grandchild leaves the process group (setsid) but keeps stdout.
	writeProgram(t, dir, KindAction, "escape", `setsid sh -c 'echo $$ > escaped.pid; exec sleep 1000' &
while [ ! -s escaped.pid ]; do sleep 0.01; done
echo '{"ok":true}'`)
	t.Cleanup(func() { killPIDFile(pidFile) })
	out, err := r.Run(context.Background(), action("escape", `{}`))
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `{"ok":true}` {
		t.Errorf("output = %s", out)
	}
	if runtime.GOOS != "linux" {
		return // only the group is killed (reap_other.go)
	}
	pid := readPID(t, pidFile)
	checkGone(t, "the escaped grandchild", pid)
}

func TestRunOutputTooLarge(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, func(c *Config) { c.MaxOutput = 1024 })
	// Endless output: Run must stop reading and kill it.
	writeProgram(t, dir, KindAction, "flood", `exec yes '"xxxxxxxxxxxxxxxx"'`)
	_, err := r.Run(context.Background(), action("flood", `{}`))
	if !errors.Is(err, ErrOutputTooLarge) {
		t.Fatalf("err = %v, want ErrOutputTooLarge", err)
	}
	if want := `runner: action "flood" output exceeds 1024 bytes`; err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}

	// Exactly at the limit is fine.
	writeProgram(t, dir, KindAction, "full", `printf '"%s"' "$(head -c 1022 /dev/zero | tr '\0' 'a')"`)
	out, err := r.Run(context.Background(), action("full", `{}`))
	if err != nil {
		t.Fatalf("output of exactly MaxOutput bytes: %v", err)
	}
	if len(out) != 1024 {
		t.Errorf("output has %d bytes, want 1024", len(out))
	}
}

func TestRunRejectsBadInputWithoutRunning(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, func(c *Config) { c.MaxInput = 64 })
	marker := filepath.Join(dir, "ran")
	writeProgram(t, dir, KindAction, "a", `touch ran; cat`)

	big := `"` + strings.Repeat("a", 100) + `"`
	_, err := r.Run(context.Background(), action("a", big))
	if !errors.Is(err, ErrInputTooLarge) {
		t.Errorf("oversized input: err = %v, want ErrInputTooLarge", err)
	}
	for _, in := range []string{`{`, `not json`, `{} {}`, "\xff"} {
		_, err := r.Run(context.Background(), action("a", in))
		if !errors.Is(err, ErrBadInput) {
			t.Errorf("input %q: err = %v, want ErrBadInput", in, err)
		}
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the program ran although its input was refused")
	}
}

func TestRunNotFound(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	_, err := r.Run(context.Background(), action("missing.action", `{}`))
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	if want := fmt.Sprintf(`runner: no action "missing.action" (looked in %s)`, filepath.Join(dir, "actions")); err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
	if r.Exists(KindAction, "missing.action") {
		t.Error("Exists reports a missing action")
	}
}

func TestRunNotExecutable(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	writeFile(t, dir, KindAction, "plain", "#!/bin/sh\ncat\n", 0o644)
	writeFile(t, dir, KindAction, "badshebang", "#!/nonexistent/interpreter\n", 0o755)
	if err := os.MkdirAll(filepath.Join(dir, "actions", "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"plain", "badshebang", "adir"} {
		_, err := r.Run(context.Background(), action(name, `{}`))
		if !errors.Is(err, ErrNotExecutable) {
			t.Errorf("%s: err = %v, want ErrNotExecutable", name, err)
		} else if !strings.Contains(err.Error(), fmt.Sprintf("%q", name)) {
			t.Errorf("%s: err = %q does not name the action", name, err)
		}
	}
	if !r.Exists(KindAction, "plain") {
		t.Error("Exists(plain) = false for an existing non-executable file")
	}
	if r.Exists(KindAction, "adir") {
		t.Error("Exists(adir) = true for a directory")
	}
}

func TestRunPicksUpEdits(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	for i := 1; i <= 3; i++ {
		writeProgram(t, dir, KindAction, "version", fmt.Sprintf("echo %d", i))
		out, err := r.Run(context.Background(), action("version", `{}`))
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != strconv.Itoa(i) {
			t.Fatalf("after edit %d: output = %s", i, out)
		}
	}
}

var invalidNames = []string{"", "My Action", "../etc/passwd", "a/b", "a..b", ".hidden", "orders.*", "orders.>", "trailing."}

func TestInvalidNamesRefused(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	h := func(context.Context, Invocation) (json.RawMessage, error) { return nil, nil }
	for _, name := range invalidNames {
		for what, err := range map[string]error{
			"Register": r.Register(KindAction, name, h),
			"Create":   func() error { _, err := Create(dir, KindAction, name); return err }(),
			"Run":      func() error { _, err := r.Run(context.Background(), action(name, `{}`)); return err }(),
		} {
			if !errors.Is(err, ErrInvalidName) || !errors.Is(err, topics.ErrInvalidSubject) {
				t.Errorf("%s(%q): err = %v, want ErrInvalidName wrapping topics.ErrInvalidSubject", what, name, err)
			}
		}
		if r.Exists(KindAction, name) {
			t.Errorf("Exists(%q) = true", name)
		}
	}
	if err := r.Register("script", "ok.name", h); !errors.Is(err, ErrInvalidKind) {
		t.Errorf("Register with bad kind: err = %v, want ErrInvalidKind", err)
	}
	if _, err := Create(dir, "script", "ok.name"); !errors.Is(err, ErrInvalidKind) {
		t.Errorf("Create with bad kind: err = %v, want ErrInvalidKind", err)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "actions"))
	if len(entries) != 0 {
		t.Errorf("refused names left files behind: %v", entries)
	}
}

func TestInProcessHandlerTakesPrecedence(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	writeProgram(t, dir, KindAction, "which", `echo '"file"'`)

	var seen Invocation
	err := r.Register(KindAction, "which", func(_ context.Context, inv Invocation) (json.RawMessage, error) {
		seen = inv
		inv.Log("from go")
		return json.RawMessage(`"go"`), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var logged []string
	inv := Invocation{Kind: KindAction, Name: "which", Log: func(l string) { logged = append(logged, l) }}
	out, err := r.Run(context.Background(), inv)
	if err != nil || string(out) != `"go"` {
		t.Fatalf("with handler: %s, %v; want \"go\"", out, err)
	}
	if seen.Caller != "local" || string(seen.Input) != "null" {
		t.Errorf("handler saw caller %q input %q, want local and null", seen.Caller, seen.Input)
	}
	if len(logged) != 1 || logged[0] != "from go" {
		t.Errorf("handler log lines = %q", logged)
	}
	if err := r.Register(KindAction, "which", func(context.Context, Invocation) (json.RawMessage, error) { return nil, nil }); !errors.Is(err, ErrExists) {
		t.Errorf("second Register: err = %v, want ErrExists", err)
	}

	r.Unregister(KindAction, "which")
	out, err = r.Run(context.Background(), action("which", `{}`))
	if err != nil || string(out) != `"file"` {
		t.Fatalf("after Unregister: %s, %v; want \"file\"", out, err)
	}
}

func TestInProcessHandlerFailures(t *testing.T) {
	t.Parallel()
	r, _ := newTestRunner(t, func(c *Config) { c.MaxOutput = 16 })
	boom := errors.New("database unavailable")
	handlers := map[string]Handler{
		"panics":  func(context.Context, Invocation) (json.RawMessage, error) { panic("nil map write") },
		"fails":   func(context.Context, Invocation) (json.RawMessage, error) { return nil, boom },
		"garbage": func(context.Context, Invocation) (json.RawMessage, error) { return json.RawMessage(`{oops`), nil },
		"huge": func(context.Context, Invocation) (json.RawMessage, error) {
			return json.RawMessage(`"` + strings.Repeat("a", 64) + `"`), nil
		},
		"empty": func(context.Context, Invocation) (json.RawMessage, error) { return nil, nil },
	}
	for name, h := range handlers {
		if err := r.Register(KindReceiver, name, h); err != nil {
			t.Fatal(err)
		}
	}
	run := func(name string) (json.RawMessage, error) {
		return r.Run(context.Background(), Invocation{Kind: KindReceiver, Name: name, Input: json.RawMessage(`{}`)})
	}
	if _, err := run("panics"); !errors.Is(err, ErrPanic) || !strings.Contains(err.Error(), "nil map write") {
		t.Errorf("panics: err = %v, want ErrPanic with the panic value", err)
	}
	if _, err := run("fails"); !errors.Is(err, ErrExit) || !errors.Is(err, boom) {
		t.Errorf("fails: err = %v, want ErrExit wrapping the handler error", err)
	}
	if _, err := run("garbage"); !errors.Is(err, ErrBadOutput) {
		t.Errorf("garbage: err = %v, want ErrBadOutput", err)
	}
	if _, err := run("huge"); !errors.Is(err, ErrOutputTooLarge) {
		t.Errorf("huge: err = %v, want ErrOutputTooLarge", err)
	}
	if out, err := run("empty"); err != nil || string(out) != "null" {
		t.Errorf("empty: %s, %v; want null", out, err)
	}
}

func TestInProcessHandlerTimeout(t *testing.T) {
	t.Parallel()
	r, _ := newTestRunner(t, func(c *Config) { c.Timeout = 50 * time.Millisecond })
	release := make(chan struct{})
	finished := make(chan struct{})
	var mu sync.Mutex
	var logged []string
	// This handler ignores its context: Run must still return, and the
	// handler's later log lines must be dropped.
	err := r.Register(KindAction, "stuck", func(_ context.Context, inv Invocation) (json.RawMessage, error) {
		defer close(finished)
		<-release
		inv.Log("too late")
		return json.RawMessage(`1`), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Run(context.Background(), Invocation{Kind: KindAction, Name: "stuck", Log: func(l string) {
		mu.Lock()
		logged = append(logged, l)
		mu.Unlock()
	}})
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	close(release)
	<-finished
	mu.Lock()
	defer mu.Unlock()
	if len(logged) != 0 {
		t.Errorf("log lines after Run returned were delivered: %q", logged)
	}
}

func TestConcurrentRuns(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	writeProgram(t, dir, KindAction, "echo", `echo "got input" >&2; exec cat`)
	if err := r.Register(KindAction, "go.echo", func(_ context.Context, inv Invocation) (json.RawMessage, error) {
		inv.Log("got input")
		return inv.Input, nil
	}); err != nil {
		t.Fatal(err)
	}

	const workers, perWorker = 16, 8
	var wg sync.WaitGroup
	errs := make(chan error, workers*perWorker)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWorker; i++ {
				name := "echo"
				if i%2 == 1 {
					name = "go.echo"
				}
				in := fmt.Sprintf(`{"worker":%d,"i":%d}`, w, i)
				lines := 0
				inv := action(name, in)
				inv.Log = func(string) { lines++ }
				out, err := r.Run(context.Background(), inv)
				switch {
				case err != nil:
					errs <- fmt.Errorf("%s %s: %w", name, in, err)
				case string(out) != in:
					errs <- fmt.Errorf("%s %s: got %s", name, in, out)
				case lines != 1:
					errs <- fmt.Errorf("%s %s: %d log lines, want 1", name, in, lines)
				}
			}
		}()
	}
	// Register and list while runs are in flight.
	for i := 0; i < 20; i++ {
		name := fmt.Sprintf("tmp.h%d", i)
		if err := r.Register(KindAction, name, func(context.Context, Invocation) (json.RawMessage, error) { return nil, nil }); err != nil {
			t.Error(err)
		}
		if _, err := r.List(KindAction); err != nil {
			t.Error(err)
		}
		r.Unregister(KindAction, name)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestList(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	if got, err := r.List(KindAction); err != nil || len(got) != 0 {
		t.Fatalf("List on an instance without actions/ = %v, %v; want empty, nil", got, err)
	}
	writeProgram(t, dir, KindAction, "orders.created", "cat")
	writeFile(t, dir, KindAction, "orders.draft", "cat", 0o644)
	writeProgram(t, dir, KindAction, "shadowed", "cat")
	writeProgram(t, dir, KindAction, "My Action.js", "cat")
	writeProgram(t, dir, KindAction, ".orders.created.swp", "")
	writeProgram(t, dir, KindReceiver, "audit", "cat")
	if err := os.Mkdir(filepath.Join(dir, "actions", "lib"), 0o755); err != nil {
		t.Fatal(err)
	}
	h := func(context.Context, Invocation) (json.RawMessage, error) { return nil, nil }
	for _, name := range []string{"shadowed", "a.go.handler"} {
		if err := r.Register(KindAction, name, h); err != nil {
			t.Fatal(err)
		}
	}

	got, err := r.List(KindAction)
	if err != nil {
		t.Fatal(err)
	}
	actions := filepath.Join(dir, "actions")
	want := []Info{
		{Name: "a.go.handler", Kind: KindAction, InProcess: true, Executable: true},
		{Name: "orders.created", Kind: KindAction, Path: filepath.Join(actions, "orders.created"), Executable: true},
		{Name: "orders.draft", Kind: KindAction, Path: filepath.Join(actions, "orders.draft"), Executable: false},
		{Name: "shadowed", Kind: KindAction, Path: filepath.Join(actions, "shadowed"), InProcess: true, Executable: true},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("List(action) =\n%v\nwant\n%v", got, want)
	}

	bad, err := r.Invalid(KindAction)
	if err != nil {
		t.Fatal(err)
	}
	var badNames []string
	for _, b := range bad {
		if b.Reason == "" {
			t.Errorf("no reason given for %q", b.Name)
		}
		badNames = append(badNames, b.Name)
	}
	if want := []string{".orders.created.swp", "My Action.js", "lib"}; fmt.Sprint(badNames) != fmt.Sprint(want) {
		t.Errorf("Invalid(action) = %q, want %q", badNames, want)
	}

	recv, err := r.List(KindReceiver)
	if err != nil || len(recv) != 1 || recv[0].Name != "audit" || recv[0].Kind != KindReceiver {
		t.Errorf("List(receiver) = %v, %v", recv, err)
	}
	if _, err := r.List("bogus"); !errors.Is(err, ErrInvalidKind) {
		t.Errorf("List(bogus): err = %v, want ErrInvalidKind", err)
	}
}

func TestRunProgramIgnoringLargeInput(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	// The input is larger than a pipe buffer and never read: writing it
	// must not block the run or fail it.
	writeProgram(t, dir, KindAction, "deaf", `echo 1`)
	in := `"` + strings.Repeat("a", 512<<10) + `"`
	out, err := r.Run(context.Background(), action("deaf", in))
	if err != nil || string(out) != "1" {
		t.Fatalf("Run = %s, %v; want 1, nil", out, err)
	}
}

// A program that fails while a child it started holds its stdout takes
// the child with it.
func TestFailedProgramTakesItsChildren(t *testing.T) {
	r, dir := newTestRunner(t, nil)
	pidf := filepath.Join(dir, "child.pid")
	writeProgram(t, dir, KindAction, "bg", `sleep 60 & echo $! > `+pidf+`; exit 3`)
	_, err := r.Run(context.Background(), action("bg", ""))
	if !errors.Is(err, ErrExit) {
		t.Fatalf("Run = %v, want the exit status", err)
	}
	pid := readPID(t, pidf)
	checkFor(t, fmt.Sprintf("child %d of a failed program to end", pid), func() bool { return processGone(pid) })
}

// A program that exits 0 shortly before its deadline, while a child holds
// its stdout, succeeded: the deadline passing while Wait waits for the
// pipes does not make it a timeout.
func TestSuccessNearDeadlineWithStraggler(t *testing.T) {
	// The program exits after its `sleep 1` (never before 1s) and Wait then
	// waits up to waitDelay (1s) for the straggler's pipe: a deadline
	// at 1.9s falls in that wait whenever the program exits between 0.9s
	// and 1.9s, so a busy machine may start it 0.9s late (at 1.5s, 0.5s
	// late made it a timeout).
	r, dir := newTestRunner(t, func(c *Config) { c.Timeout = 1900 * time.Millisecond })
	pidf := filepath.Join(dir, "child.pid")
	writeProgram(t, dir, KindAction, "ok", `sleep 60 & echo $! > `+pidf+`; sleep 1; echo '{"ok":true}'; exit 0`)
	out, err := r.Run(context.Background(), action("ok", ""))
	if err != nil || string(out) != `{"ok":true}` {
		t.Fatalf("Run = %s, %v; want the program's output", out, err)
	}
	pid := readPID(t, pidf)
	checkFor(t, fmt.Sprintf("straggler %d to end", pid), func() bool { return processGone(pid) })
}
