package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coattail/coattail/node/internal/textx"
)

// waitDelay bounds how long Run waits for stdout/stderr to close after the
// program exited or was killed. Without it a grandchild that escaped the
// process group (setsid) or was left running in the background while
// holding our pipes would block Run forever.
const waitDelay = time.Second

// startRetries bounds retries of ETXTBSY at start: a file just written by
// this or another process (an editor, a test, `action create`) can be
// briefly open for writing in a concurrently forked child; see
// golang.org/issue/22315.
const startRetries = 5

// pipePrefill is the most input written into a pipe before the program
// starts: one page, the least capacity Linux gives a pipe (PIPE_BUF).
const pipePrefill = 4096

// keptEnv are the parent variables a program sees. Everything else is
// dropped so that secrets in the service's environment do not leak into
// programs that peers can trigger.
var keptEnv = []string{"PATH", "HOME", "LANG", "TZ", "TMPDIR", "USER"}

const defaultPath = "/usr/local/bin:/usr/bin:/bin"

// EnvRuntimeDir names the variable that tells a program where services
// register (Config.RuntimeDir); node.EnvRuntimeDir is the same name.
const EnvRuntimeDir = "COATTAIL_RUNTIME_DIR"

func baseEnv(cfg Config, parent []string) []string {
	vals := map[string]string{}
	for _, kv := range parent {
		k, v, ok := strings.Cut(kv, "=")
		if ok {
			vals[k] = v
		}
	}
	var env []string
	for _, k := range keptEnv {
		v, ok := vals[k]
		if k == "PATH" {
			if !ok || v == "" {
				v = defaultPath
			}
			if cfg.Binary != "" {
				// Scripts call `coattail ...`: make it the binary that runs
				// this service, not whatever else is on PATH.
				v = filepath.Dir(cfg.Binary) + string(os.PathListSeparator) + v
			}
			ok = true
		}
		if ok {
			env = append(env, k+"="+v)
		}
	}
	env = append(env,
		"COATTAIL_INSTANCE="+cfg.Dir,
		"COATTAIL_PEER_ID="+cfg.PeerID,
		"COATTAIL_SOCKET="+cfg.Socket,
		"COATTAIL_BIN="+cfg.Binary,
	)
	if cfg.RuntimeDir != "" {
		env = append(env, EnvRuntimeDir+"="+cfg.RuntimeDir)
	}
	return env
}

func (r *Runner) env(inv Invocation, cookie string) []string {
	env := make([]string, 0, len(r.baseEnv)+4+len(inv.Env))
	env = append(env, r.baseEnv...)
	env = append(env,
		"COATTAIL_ACTION="+inv.Name,
		"COATTAIL_KIND="+string(inv.Kind),
		"COATTAIL_CALLER="+inv.Caller,
		EnvCookie+"="+r.outer+cookie,
	)
	for k, v := range inv.Env {
		env = append(env, k+"="+v)
	}
	return env
}

// locate finds the executable for inv, or says precisely why it cannot run.
//
// A symlink in the program directory is followed wherever it points, also
// outside the instance: the directory is the owner's (an instance whose
// actions/ or receivers/ every user may write to is refused), and a link
// is how an owner installs a program kept elsewhere. The name is checked,
// the target is not; its execute bit decides, as for a plain file.
func (r *Runner) locate(inv Invocation) (string, error) {
	path := r.Path(inv.Kind, inv.Name)
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if target, lerr := os.Readlink(path); lerr == nil {
			return "", &runError{
				msg:      fmt.Sprintf("runner: %s %q is a symlink (%s) to %s, which does not exist", inv.Kind, inv.Name, path, target),
				sentinel: ErrNotFound,
			}
		}
		return "", &runError{
			msg:      fmt.Sprintf("runner: no %s %q (looked in %s)", inv.Kind, inv.Name, filepath.Dir(path)),
			sentinel: ErrNotFound,
		}
	case err != nil:
		return "", fmt.Errorf("runner: %s %q: %w", inv.Kind, inv.Name, err)
	case st.IsDir():
		return "", &runError{
			msg:      fmt.Sprintf("runner: %s %q is a directory (%s), not an executable", inv.Kind, inv.Name, path),
			sentinel: ErrNotExecutable,
		}
	case st.Mode().Perm()&0o111 == 0:
		return "", &runError{
			msg:      fmt.Sprintf("runner: %s %q is not executable (%s; run chmod +x on it)", inv.Kind, inv.Name, path),
			sentinel: ErrNotExecutable,
		}
	}
	return path, nil
}

// runExec runs the executable for inv in its own process group.
func (r *Runner) runExec(ctx context.Context, inv Invocation) (json.RawMessage, error) {
	path, err := r.locate(inv)
	if err != nil {
		return nil, err
	}

	runCtx, cancelCause := context.WithCancelCause(ctx)
	defer cancelCause(nil)
	runCtx, cancel := context.WithTimeoutCause(runCtx, r.cfg.Timeout, errTimeoutCause)
	defer cancel()

	if err := r.acquire(runCtx, ctx, inv); err != nil {
		return nil, err
	}
	defer r.release()

	stdout := &cappedBuffer{max: r.cfg.MaxOutput, onOverflow: func() { cancelCause(errOverflow) }}
	if inv.Kind == KindReceiver {
		// Nobody uses a receiver's output: a receiver that prints a lot
		// (a tool's report) has handled its publication all the same, so
		// what is over the limit is dropped instead of failing the run.
		stdout.onOverflow = nil
	}
	stderr := newLineWriter(inv.Log)

	stdin, closeStdin := stdinFor(inv.Input)
	defer closeStdin()

	// The run's cookie marks every process it starts, also those that
	// leave its process group; only this process knows it (inv.Env cannot
	// set EnvCookie).
	cookie := newCookie()
	escaped := 0   // processes outside the group killed with the run
	swept := false // Cancel swept for them already
	mark := r.reaper.mark()
	var cmd *exec.Cmd
	for attempt := 0; ; attempt++ {
		cmd = exec.CommandContext(runCtx, path)
		cmd.Dir = r.cfg.Dir
		cmd.Env = r.env(inv, cookie)
		cmd.Stdin = stdin
		cmd.Stdout = stdout
		cmd.Stderr = stderr
		// Own process group, so that a timeout kills the script's children
		// too and not only the shell.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		c := cmd
		cmd.Cancel = func() error {
			err := killGroup(c)
			// At once, not after Wait: one that holds our pipes would
			// keep Wait waiting for waitDelay. Wait returns after Cancel.
			escaped += r.reaper.killAll(cookie, c.Process.Pid)
			swept = true
			return err
		}
		cmd.WaitDelay = waitDelay

		err = cmd.Start()
		if err == nil {
			break
		}
		if errors.Is(err, syscall.ETXTBSY) && attempt < startRetries && runCtx.Err() == nil {
			time.Sleep(time.Duration(attempt+1) * 5 * time.Millisecond)
			continue
		}
		return nil, r.startError(inv, path, err)
	}

	waitErr := cmd.Wait()
	stderr.flush()
	// Whatever the program left running in its group (children that kept
	// our pipes open, outlived a failed or stopped program, or were left in
	// the background by one that succeeded) goes with it: nothing a run
	// starts outlives it, or its action_timeout. So does what left the
	// group (setsid, a daemon) and still carries the run's cookie: swept
	// for in full where the run was killed (by Cancel, which sweeps until
	// a sweep finds nothing) or something kept its output open after it
	// exited, checked cheaply otherwise (see reapExited).
	_ = killGroup(cmd)
	switch {
	case swept:
	case runCtx.Err() != nil || errors.Is(waitErr, exec.ErrWaitDelay):
		escaped += r.reaper.killAll(cookie, cmd.Process.Pid)
	default:
		escaped += r.reaper.reapExited(cookie, mark, cmd.Process.Pid)
	}
	if escaped > 0 {
		r.cfg.Logger.Warn("killed processes the program left running outside its process group (setsid, a daemon)",
			"kind", inv.Kind, "name", inv.Name, "processes", escaped)
	}
	// exitedOK: the program itself exited 0 and only its children held
	// the pipes; the deadline may have passed while Wait waited for them,
	// but the program's own result stands.
	exitedOK := errors.Is(waitErr, exec.ErrWaitDelay) && cmd.ProcessState != nil && cmd.ProcessState.Success()

	// Stdout past the limit fails the run however the program ended: a
	// child that overflowed it after the program exited 0 would otherwise
	// pass as exitedOK, and the truncated output as the result.
	if stdout.overflowed && stdout.onOverflow != nil {
		return nil, r.tooLarge(inv)
	}

	// A nil waitErr is a complete success even if the context ended just
	// after; otherwise why the context ended explains the failure better
	// than the kill it caused.
	if waitErr != nil && !exitedOK {
		switch cause := context.Cause(runCtx); {
		case cause == errOverflow:
			return nil, r.tooLarge(inv)
		case cause == errTimeoutCause:
			return nil, r.timedOut(inv)
		case ctx.Err() != nil:
			return nil, stopped(inv, ctx.Err())
		}
	}

	var exitErr *exec.ExitError
	switch {
	case errors.As(waitErr, &exitErr):
		return nil, exitError(inv, exitErr, stderr.last)
	case errors.Is(waitErr, exec.ErrWaitDelay):
		// The program succeeded but something it started kept stdout or
		// stderr open. Whatever the program wrote has been read; the
		// stragglers, which lost their pipes anyway, were killed above.
		r.cfg.Logger.Warn("program exited but its children kept its output open; killed them",
			"kind", inv.Kind, "name", inv.Name)
	case waitErr != nil:
		return nil, fmt.Errorf("runner: %s %q: %w", inv.Kind, inv.Name, waitErr)
	}
	if stdout.overflowed {
		r.cfg.Logger.Warn("receiver output over max_output dropped (a receiver's output is not used)",
			"name", inv.Name, "max_output", r.cfg.MaxOutput)
		return nil, nil
	}
	return r.finishOutput(inv, stdout.buf.Bytes())
}

// acquire takes one of the MaxRunning slots for an executable, waiting for
// one within the run's own deadline (runCtx), so that a queued run never
// lasts longer than action_timeout in all.
func (r *Runner) acquire(runCtx, ctx context.Context, inv Invocation) error {
	select {
	case r.slots <- struct{}{}:
		return nil
	default:
	}
	select {
	case r.slots <- struct{}{}:
		return nil
	case <-runCtx.Done():
		if context.Cause(runCtx) == errTimeoutCause {
			return &runError{
				msg:      fmt.Sprintf("runner: %s %q timed out after %v waiting to start (%d programs already running)", inv.Kind, inv.Name, r.cfg.Timeout, cap(r.slots)),
				sentinel: ErrTimeout,
				cause:    context.DeadlineExceeded,
			}
		}
		return fmt.Errorf("runner: %s %q stopped while waiting to start (%d programs already running): %w", inv.Kind, inv.Name, cap(r.slots), ctx.Err())
	}
}

func (r *Runner) release() { <-r.slots }

// closeInheritedOnExec sets close-on-exec on every descriptor above 2 that
// this process has open. Setting it on one that Go opened, or on one
// closed and reused meanwhile, changes nothing: Go sets it on all of its
// own.
func closeInheritedOnExec() {
	for _, dir := range []string{"/proc/self/fd", "/dev/fd"} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
				syscall.CloseOnExec(fd)
			}
		}
		return
	}
}

// stdinFor returns what the program reads as its standard input: all of
// input, written before the program starts (a pre-filled pipe when input
// fits in a pipe's guaranteed capacity, else an unlinked temporary file),
// rather than a pipe this process feeds while the program runs. The
// program runs in its own process group and outlives a service killed with
// SIGKILL; fed as it runs, it would then read a truncated (often empty)
// input and, as a receiver, take it for the real publication, which the
// re-run after restart would not correct because idempotent receivers skip
// a sequence they already saw. If neither can be made, it falls back to
// the fed pipe.
func stdinFor(input []byte) (io.Reader, func()) {
	if len(input) <= pipePrefill {
		if r, w, err := os.Pipe(); err == nil {
			// The deadline only guards against a platform whose pipes hold
			// less than pipePrefill: nothing reads until the program runs.
			_ = w.SetWriteDeadline(time.Now().Add(time.Second))
			_, werr := w.Write(input)
			if cerr := w.Close(); werr == nil && cerr == nil {
				return r, func() { _ = r.Close() }
			}
			_ = r.Close()
		}
	}
	f, err := os.CreateTemp("", "coattail-input-")
	if err != nil {
		return bytes.NewReader(input), func() {}
	}
	_ = os.Remove(f.Name())
	if _, err := f.Write(input); err == nil {
		if _, err = f.Seek(0, io.SeekStart); err == nil {
			return f, func() { _ = f.Close() }
		}
	}
	_ = f.Close()
	return bytes.NewReader(input), func() {}
}

func (r *Runner) startError(inv Invocation, path string, err error) error {
	// The file exists and has an execute bit (locate checked), so these mean
	// a missing or wrong interpreter or no permission to execute.
	if errors.Is(err, syscall.ENOEXEC) || errors.Is(err, syscall.EACCES) || errors.Is(err, fs.ErrNotExist) {
		return &runError{
			msg:      fmt.Sprintf("runner: %s %q could not start (%s; check its #! line and permissions): %v", inv.Kind, inv.Name, path, err),
			sentinel: ErrNotExecutable,
			cause:    err,
		}
	}
	return fmt.Errorf("runner: %s %q could not start: %w", inv.Kind, inv.Name, err)
}

func exitError(inv Invocation, ee *exec.ExitError, lastLine string) error {
	var what string
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		what = fmt.Sprintf("was killed by signal %v", ws.Signal())
	} else {
		what = fmt.Sprintf("exited with status %d", ee.ExitCode())
	}
	msg := fmt.Sprintf("runner: %s %q %s", inv.Kind, inv.Name, what)
	if lastLine != "" {
		msg += ": " + textx.Snippet(lastLine, 512)
	}
	return &runError{msg: msg, sentinel: ErrExit, cause: ee}
}

// killGroup kills the process group led by cmd's process. The process is
// its own group leader (Setpgid), so its pid is the group id.
func killGroup(cmd *exec.Cmd) error {
	if cmd.Process == nil {
		return nil
	}
	err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return nil // already gone
	}
	return err
}

var errOverflow = errors.New("runner: output limit reached")

// cappedBuffer collects stdout up to max bytes. Past that it refuses the
// write, which makes os/exec close the pipe, and calls onOverflow to kill
// the program: reading on would only buffer what will be thrown away.
// Only os/exec's copying goroutine writes, and the buffer is read after
// Wait, so it needs no lock.
type cappedBuffer struct {
	buf        bytes.Buffer
	max        int
	onOverflow func()
	overflowed bool
}

// Write keeps at most max bytes. Past them it calls onOverflow and fails
// or, with no onOverflow, drops the rest and goes on reading.
func (b *cappedBuffer) Write(p []byte) (int, error) {
	if b.overflowed || b.buf.Len()+len(p) > b.max {
		b.overflowed = true
		if b.onOverflow == nil {
			return len(p), nil
		}
		b.onOverflow()
		return 0, errOverflow
	}
	return b.buf.Write(p)
}

// lineWriter splits stderr into lines and passes each to log, holding at
// most MaxLogLine bytes of a line: the rest of an overlong line is dropped
// and the line ends with TruncatedMark. It passes on at most MaxLogBytes
// in all and counts the lines it drops after that. It remembers the last
// non-empty line for error messages, dropped or not.
type lineWriter struct {
	log       func(string)
	cur       []byte
	truncated bool
	last      string
	logged    int // bytes passed to log, a newline counted for each line
	dropped   int // lines not passed to log because logged reached MaxLogBytes
}

func newLineWriter(log func(string)) *lineWriter { return &lineWriter{log: log} }

func (w *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		if room := MaxLogLine - len(w.cur); len(chunk) > room {
			w.cur = append(w.cur, chunk[:room]...)
			w.truncated = true
		} else {
			w.cur = append(w.cur, chunk...)
		}
		if i < 0 {
			break
		}
		w.emit()
		p = p[i+1:]
	}
	return n, nil
}

func (w *lineWriter) emit() {
	line := strings.TrimSuffix(string(w.cur), "\r")
	if w.truncated {
		line = textx.Cut(line, MaxLogLine) + TruncatedMark
	}
	w.cur, w.truncated = w.cur[:0], false
	if strings.TrimSpace(line) != "" {
		w.last = line
	}
	if w.log == nil {
		return
	}
	if w.dropped > 0 || w.logged+len(line)+1 > MaxLogBytes {
		w.dropped++
		return
	}
	w.logged += len(line) + 1
	w.log(line)
}

// flush emits a final line that had no newline, then says how many lines
// were dropped, if any. Call it only after Wait.
func (w *lineWriter) flush() {
	if len(w.cur) > 0 || w.truncated {
		w.emit()
	}
	if w.dropped > 0 && w.log != nil {
		w.log(fmt.Sprintf("…[%d more stderr lines dropped: a run logs at most %d bytes]", w.dropped, MaxLogBytes))
	}
}
