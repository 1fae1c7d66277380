package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"
)

// eventLine is how `service logs` prints one log event.
var eventLine = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO |WARN |ERROR) \S`)

// `service logs` prints the last lines of the service log as events (or
// as stored with --json), filters by level, and with -f follows the log
// across rotations without losing or repeating a line.
func TestServiceLogs(t *testing.T) {
	a := newInstance(t, "logs")
	a.setConfig("rotate_size", "2KiB")
	a.mustFail([]string{"service", "logs"}, "no service log at")
	a.start()

	out := a.mustRun("service", "logs", "-n", "2")
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], " service ready ") {
		t.Fatalf("service logs -n 2:\n%s\nwant 2 lines, the last 'service ready'", out)
	}
	for _, l := range lines {
		if !eventLine.MatchString(l) {
			t.Fatalf("service logs: line %q is not 'time LEVEL message fields'", l)
		}
	}
	for _, l := range strings.Split(strings.TrimRight(a.mustRun("service", "logs", "-n", "0", "--json"), "\n"), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(l), &ev); err != nil || ev["msg"] == nil {
			t.Fatalf("service logs --json: line %q is not a JSON event (%v)", l, err)
		}
	}
	// A failing action logs a warning; --level warn shows it and no INFO.
	a.writeScript("actions", "fails", "#!/bin/sh\nexit 3\n")
	a.run("action", "perform", "--action", "fails")
	warn := a.mustRun("service", "logs", "-n", "0", "--level", "warn")
	if !strings.Contains(warn, "WARN  action failed") || strings.Contains(warn, "INFO ") {
		t.Fatalf("service logs --level warn:\n%s\nwant the failed action and no INFO line", warn)
	}
	a.mustFail([]string{"service", "logs", "--level", "loud"}, "--level")
	a.mustFail([]string{"service", "logs", "-n", "-1"}, "--lines")

	// Follow: each token issued logs a line with its id; the next is
	// issued only once the follower printed it, so the 2 KiB rotations
	// (one every few lines) each happen while it is caught up.
	f := a.spawn("service", "logs", "-f", "-n", "1")
	var ids []string
	for k := 0; k < 30; k++ {
		id := a.tokenID(a.issue())
		ids = append(ids, id)
		checkFor(t, 20*time.Second, func() error {
			if !strings.Contains(f.stdout(), id) {
				return fmt.Errorf("the follower has not printed token %d (%s) yet", k, id)
			}
			return nil
		})
	}
	if _, err := os.Stat(a.path("service.log.2")); err != nil {
		t.Fatalf("the log did not rotate twice while followed: %v", err)
	}
	got := f.stdout()
	for _, id := range ids {
		if n := strings.Count(got, "token_id="+id); n != 1 {
			t.Fatalf("the follower printed token %s's line %d times, want once:\n%s", id, n, got)
		}
	}
	if f.exited() {
		t.Fatalf("service logs -f exited: %s", f.stderr())
	}
}

// noControl fails unless out is valid UTF-8 without control characters
// other than newlines: what `service logs` prints cannot drive a
// terminal.
func noControl(t *testing.T, what, out string) {
	t.Helper()
	excerpt := func(i int) string { return out[max(0, i-80):min(len(out), i+80)] }
	for i, r := range out {
		if r == utf8.RuneError && !strings.HasPrefix(out[i:], "\ufffd") {
			t.Fatalf("%s: output is not valid UTF-8 at byte %d: %q", what, i, excerpt(i))
		}
		if r != '\n' && unicode.IsControl(r) {
			t.Fatalf("%s: output has control character %q at byte %d: %q", what, r, i, excerpt(i))
		}
	}
}

// A receiver's stderr lines are logged by the service, and a receiver may
// echo what a remote publisher sent: `service logs` prints them with their
// control characters escaped (\x1b), as the CLI does any text from
// elsewhere, so a line cannot retitle the terminal, write the clipboard
// (OSC 52) or move the cursor; --json keeps each line valid JSON but with
// C1 controls (which slog writes raw) escaped.
func TestServiceLogsEscapesControlCharacters(t *testing.T) {
	pub, sub := newInstance(t, "lesc-pub"), newInstance(t, "lesc-sub")
	sub.writeScript("receivers", "echo", `read -r data
printf 'title\033]0;pwned\007x\n' >&2
printf 'csi\302\23331mred\n' >&2
echo "$data" >>got.log
`)
	pub.start()
	sub.start()
	sub.addPeer(pub, "--subscribable", "esc.>")
	sub.subscribe(pub, "esc.>", "echo")
	pub.mustPublishRange("esc.x", 1, 1)
	sub.waitLines("got.log", 1, deliveryTimeout)

	out := sub.mustRun("service", "logs", "-n", "0")
	noControl(t, "service logs", out)
	for _, want := range []string{`line="title\x1b]0;pwned\ax"`, `line="csi\u009b31mred"`} {
		if !strings.Contains(out, want) {
			t.Errorf("service logs lacks %q:\n%.3000s", want, out)
		}
	}
	js := sub.mustRun("service", "logs", "-n", "0", "--json")
	noControl(t, "service logs --json", js)
	for _, l := range strings.Split(strings.TrimRight(js, "\n"), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("service logs --json: %q is not JSON: %v", l, err)
		}
		if s, _ := ev["line"].(string); strings.HasPrefix(s, "csi") && s != "csi\u009b31mred" {
			t.Fatalf("service logs --json: the receiver's line is %q, want it as logged", s)
		}
	}
}

// What is not a log event (a crashing process's output, binary garbage, a
// line of megabytes without a newline) is printed escaped, and a line
// longer than 1 MiB is cut, saying how much was left out, rather than
// read whole into memory.
func TestServiceLogsGarbage(t *testing.T) {
	a := newInstance(t, "lgarb")
	huge := strings.Repeat("A", 3<<20)
	content := "\x1b]0;pwned\x07panic: boom\n" + "\xff\xfe\x00\x01\x9b\n" + huge
	if err := os.WriteFile(a.path("service.log"), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	out := a.mustRun("service", "logs", "-n", "0")
	noControl(t, "service logs", out)
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 3 || lines[0] != `\x1b]0;pwned\x07panic: boom` || lines[1] != "\ufffd\\x00\\x01\ufffd" {
		t.Fatalf("service logs printed %d lines, want 3, the first two escaped: %.200q", len(lines), lines)
	}
	if want := fmt.Sprintf("%s … [line cut: %d more bytes]", huge[:1<<20], len(huge)-1<<20); lines[2] != want {
		t.Fatalf("service logs: the 3 MiB line printed as %d bytes ending %q, want 1 MiB and %q", len(lines[2]), lines[2][max(0, len(lines[2])-60):], want[1<<20:])
	}
	if out := a.mustRun("service", "logs", "-n", "1"); !strings.HasSuffix(out, " … [line cut: 2097152 more bytes]\n") {
		t.Fatalf("service logs -n 1: %d bytes, want the cut last line", len(out))
	}
}

// `service logs -f` whose file is replaced by a FIFO or a directory stops,
// non-zero, saying so: opening a FIFO waited for a writer for ever, deaf
// to Ctrl-C, and a directory failed with a bare read error.
func TestServiceLogsFollowReplacedByNonRegular(t *testing.T) {
	a := newInstance(t, "lfifo")
	ev := `{"time":"2026-11-27T22:00:00Z","level":"INFO","msg":"first"}` + "\n"
	for _, replace := range []func(string) error{
		func(p string) error { return syscall.Mkfifo(p, 0o600) },
		func(p string) error { return os.Mkdir(p, 0o700) },
	} {
		if err := os.RemoveAll(a.path("service.log")); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(a.path("service.log"), []byte(ev), 0o600); err != nil {
			t.Fatal(err)
		}
		f := a.spawn("service", "logs", "-f")
		checkFor(t, 20*time.Second, func() error {
			if !strings.Contains(f.stdout(), " first") {
				return fmt.Errorf("the follower has not printed the first line yet: %q", f.stdout())
			}
			return nil
		})
		if err := os.Remove(a.path("service.log")); err != nil {
			t.Fatal(err)
		}
		if err := replace(a.path("service.log")); err != nil {
			t.Fatal(err)
		}
		checkFor(t, 20*time.Second, func() error {
			if !f.exited() {
				return fmt.Errorf("service logs -f still runs after its file was replaced by a FIFO or directory; stderr %q", f.stderr())
			}
			return nil
		})
		if code := f.wait(t); code == 0 || !strings.Contains(f.stderr(), "service.log is not a regular file") {
			t.Fatalf("service logs -f: exit %d, stderr %q; want non-zero, saying the file is not a regular file", code, f.stderr())
		}
	}
	if err := os.Remove(a.path("service.log")); err != nil {
		t.Fatal(err)
	}
}

// Ctrl-C stops `service logs` printing a long log at the next line, as it
// stops -f: it went on to the end, however long the log (log.rotate_size
// 0 never rotates it). Its output is a pipe read only up to the first
// line when the interrupt comes; once the signal is taken (or the command
// has stopped), the pipe is drained: what follows is what the pipe held,
// not the rest of the log.
func TestServiceLogsInterrupted(t *testing.T) {
	a := newInstance(t, "lint")
	const lines = 200000
	var b strings.Builder
	for k := range lines {
		fmt.Fprintf(&b, `{"time":"2026-11-27T22:00:00Z","level":"INFO","msg":"line","k":%d}`+"\n", k)
	}
	if err := os.WriteFile(a.path("service.log"), []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	cmd := exec.Command(binPath, "service", "logs", "-n", "0")
	cmd.Dir, cmd.Env, cmd.Stdout = a.dir, childEnv(t), pw
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	var waitErr error
	done := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	// Read the first line: it prints, and then blocks once the pipe is
	// full (unless the interrupt stops it first).
	r := bufio.NewReader(pr)
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	// The signal is taken once it is no longer pending for the process.
	checkFor(t, 20*time.Second, func() error {
		select {
		case <-done:
			return nil // it stopped before its output filled the pipe
		default:
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
		if err != nil {
			return err
		}
		for _, l := range strings.Split(string(st), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && (k == "SigPnd" || k == "ShdPnd") {
				if m, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64); err != nil || m&(1<<(int(syscall.SIGINT)-1)) != 0 {
					return fmt.Errorf("SIGINT still pending (%s)", l)
				}
			}
		}
		return nil
	})
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	<-done
	if waitErr != nil {
		t.Fatalf("service logs interrupted: %v, stderr %q; want exit 0", waitErr, stderr.String())
	}
	if n := strings.Count(string(rest), "\n"); n > lines/4 {
		t.Fatalf("service logs printed %d of %d lines after Ctrl-C, want it to stop at once", n, lines)
	}
}

// -n counts the lines --level leaves in: `-n 2 --level warn` printed the
// warnings among the last two lines of the log (none, when INFO lines
// followed them), not the last two warnings. Blank lines do not count, a
// line cut at 1 MiB counts as text, and a line at the log's very start
// is found.
func TestServiceLogsLinesCountAfterLevel(t *testing.T) {
	a := newInstance(t, "llevel")
	ev := func(level, msg string) string {
		return fmt.Sprintf(`{"time":"2026-11-27T22:00:00Z","level":%q,"msg":%q}`+"\n", level, msg)
	}
	var b strings.Builder
	b.WriteString(ev("ERROR", "first"))
	for k := range 3000 { // more than one 64 KiB read backwards
		b.WriteString(ev("INFO", fmt.Sprintf("busy %d", k)))
		if k == 1000 {
			b.WriteString(ev("WARN", "second"))
		}
		if k == 2000 {
			b.WriteString(ev("ERROR", "third"))
			b.WriteString("\n\n")
		}
	}
	b.WriteString(ev("DEBUG", "last"))
	if err := os.WriteFile(a.path("service.log"), []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	msgs := func(out string) []string {
		var m []string
		for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
			f := strings.Fields(l)
			if len(f) < 3 {
				t.Fatalf("service logs printed %q, want time, level and message", l)
			}
			m = append(m, f[1]+" "+strings.Join(f[2:], " "))
		}
		return m
	}
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"-n", "2", "--level", "warn"}, []string{"WARN second", "ERROR third"}},
		{[]string{"-n", "1", "--level", "error"}, []string{"ERROR third"}},
		{[]string{"-n", "5", "--level", "error"}, []string{"ERROR first", "ERROR third"}},
		{[]string{"-n", "0", "--level", "warn"}, []string{"ERROR first", "WARN second", "ERROR third"}},
		{[]string{"-n", "2"}, []string{"INFO busy 2999", "DEBUG last"}},
		{[]string{"-n", "2", "--level", "info"}, []string{"INFO busy 2998", "INFO busy 2999"}},
	} {
		got := msgs(a.mustRun(append([]string{"service", "logs"}, c.args...)...))
		if !slices.Equal(got, c.want) {
			t.Errorf("service logs %v printed %q, want %q", c.args, got, c.want)
		}
	}
	// The blank lines after "third" are not lines of the last three.
	if got, want := msgs(a.mustRun("service", "logs", "-n", "3", "--level", "info")), []string{"INFO busy 2997", "INFO busy 2998", "INFO busy 2999"}; !slices.Equal(got, want) {
		t.Errorf("service logs -n 3 --level info printed %q, want %q", got, want)
	}
	// A line past 1 MiB is printed cut, as text, whatever the level, and
	// counts as one of the lines.
	huge := `{"time":"2026-11-27T22:00:00Z","level":"DEBUG","msg":"` + strings.Repeat("x", 2<<20) + "\"}\n"
	if err := os.WriteFile(a.path("service.log"), []byte(ev("ERROR", "before")+huge+ev("INFO", "after")), 0o600); err != nil {
		t.Fatal(err)
	}
	out := a.mustRun("service", "logs", "-n", "2", "--level", "error")
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "ERROR before") || !strings.HasSuffix(lines[1], fmt.Sprintf("[line cut: %d more bytes]", len(huge)-1-1<<20)) {
		t.Fatalf("service logs -n 2 --level error printed %d lines (%.80q … %.80q), want the ERROR line and the cut one", len(lines), lines[0], lines[len(lines)-1])
	}
}
