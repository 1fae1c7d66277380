// Package runner owns the execution of actions and receivers: the
// executables in an instance's actions/ and receivers/ directories and the
// in-process Go handlers registered in their place.
//
// The contract with an executable is: JSON input on stdin, JSON output in
// UTF-8 on stdout (empty stdout means null), each stderr line is a log line,
// exit status 0 means success. The file is executed afresh on every run, so
// edits take effect on the next run. The runner enforces a timeout, an input
// size limit and an output size limit, and kills the whole process group
// when the program exits, times out or is cancelled, so that no child of a
// script outlives its run. A receiver's stdout past the output limit is
// dropped instead of failing the run (node does not use it). At most Config.MaxRunning
// executables run at once (a run beyond waits for a slot within its
// timeout), a program gets only stdin, stdout and stderr as descriptors,
// and at most MaxLogBytes of its stderr lines are passed on per run.
//
// A program is found by its name in the instance's actions/ or receivers/
// directory only: a name is a subject and never a path. A symlink there is
// followed, also to a file outside the instance; the directory is the
// owner's to populate.
//
// The runner knows nothing of libp2p, tokens or subscriptions: package node
// decides who may run what and passes the result on.
package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/coattail/coattail/node/internal/inflight"
	"github.com/coattail/coattail/node/internal/textx"
	"github.com/coattail/coattail/topics"
)

// Kind says whether a program is an action or a receiver.
type Kind string

const (
	// KindAction is a program in <instance>/actions that peers perform.
	KindAction Kind = "action"
	// KindReceiver is a program in <instance>/receivers that handles
	// messages delivered to a subscription.
	KindReceiver Kind = "receiver"
)

// Dir returns the name of the instance subdirectory holding programs of
// kind k ("actions" or "receivers").
func (k Kind) Dir() string { return string(k) + "s" }

func (k Kind) valid() bool { return k == KindAction || k == KindReceiver }

// Defaults applied by New to zero Config fields.
const (
	DefaultTimeout   = 30 * time.Second
	DefaultMaxInput  = 1 << 20
	DefaultMaxOutput = 1 << 20
	// DefaultMaxRunning bounds the executables (not in-process handlers)
	// running at once. It is well above what one peer can start
	// (limits.max_streams_per_peer) so that it only holds many peers, or a
	// burst of deliveries, to a number of processes the machine can take;
	// it is also high enough that receivers which cascade, each waiting on
	// a nested perform that needs a slot of its own, do not fill it.
	DefaultMaxRunning = 1024
	// MaxLogLine is the longest stderr line passed to Invocation.Log; longer
	// lines are cut and end with TruncatedMark.
	MaxLogLine = 16 << 10
	// MaxLogBytes bounds what one run of an executable passes to
	// Invocation.Log: its stderr lines, counting a newline for each. Past
	// it further lines are read and dropped (the program is not stopped)
	// and, when the program has finished, one last line says how many were
	// dropped. Without a bound, a program writing stderr in a loop filled
	// service.log, or a remote caller's stream, for its whole timeout.
	MaxLogBytes = 1 << 20
)

// TruncatedMark ends a log line that was cut at MaxLogLine bytes.
const TruncatedMark = " …[truncated]"

// Sentinel errors. Errors returned by Run carry a precise message naming
// the program and match one of these with errors.Is.
var (
	ErrNotFound       = errors.New("runner: not found")
	ErrTimeout        = errors.New("runner: timed out")
	ErrExit           = errors.New("runner: failed") // non-zero exit, or an in-process handler returned an error
	ErrBadOutput      = errors.New("runner: output is not valid JSON")
	ErrOutputTooLarge = errors.New("runner: output too large")
	ErrInputTooLarge  = errors.New("runner: input too large")
	ErrBadInput       = errors.New("runner: bad input") // input not JSON, or a bad Invocation field
	ErrNotExecutable  = errors.New("runner: not executable")
	ErrInvalidName    = errors.New("runner: invalid name") // also wraps the topics error explaining why
	ErrInvalidKind    = errors.New("runner: invalid kind")
	ErrExists         = errors.New("runner: already exists")
	ErrPanic          = errors.New("runner: handler panicked")
)

// Invocation is one request to run an action or receiver.
type Invocation struct {
	Kind  Kind
	Name  string
	Input json.RawMessage // must be valid JSON; empty means null
	// Caller is the peer id of whoever asked, or "local" (the default when
	// empty).
	Caller string
	// Env holds extra COATTAIL_* variables for the program, for example
	// COATTAIL_PUBLISHER, COATTAIL_SUBJECT, COATTAIL_SEQUENCE and
	// COATTAIL_SUBSCRIPTION for receivers and COATTAIL_HOP for cascades.
	// Keys must start with COATTAIL_ and must not replace a variable the
	// runner sets itself (see Run).
	Env map[string]string
	// Log, if not nil, is called once per stderr line, in order, from a
	// single goroutine at a time, and never after Run returns. It must not
	// block indefinitely: the program's stderr is not drained while it runs.
	Log func(line string)
}

// Handler is an in-process action or receiver. It receives the validated
// invocation (Log is never nil) and a context that ends at the run's
// timeout; the same output rules as for executables apply to its result.
type Handler func(ctx context.Context, inv Invocation) (json.RawMessage, error)

// Config configures a Runner.
type Config struct {
	Dir       string        // instance directory (made absolute by New)
	PeerID    string        // this instance's peer id (COATTAIL_PEER_ID)
	Socket    string        // control socket path (COATTAIL_SOCKET)
	Binary    string        // the coattail binary (COATTAIL_BIN); its directory is prepended to PATH
	Timeout   time.Duration // per run; default DefaultTimeout
	MaxInput  int           // bytes; default DefaultMaxInput
	MaxOutput int           // stdout bytes; default DefaultMaxOutput
	// MaxRunning is how many executables may run at once; default
	// DefaultMaxRunning. A run beyond it waits for a slot, within its
	// timeout: the wait counts toward Timeout.
	MaxRunning int
	Logger     *slog.Logger // default discards
	// RuntimeDir is where this instance's service registers
	// (COATTAIL_RUNTIME_DIR), so that the `coattail service` commands a
	// program runs (status, start --headless) use the same one as the
	// service running it; "" leaves the variable out.
	RuntimeDir string
}

// Runner runs actions and receivers. It is safe for concurrent use; runs do
// not serialise on each other, up to Config.MaxRunning executables at once.
type Runner struct {
	cfg     Config
	baseEnv []string      // filtered parent environment plus the per-instance variables
	outer   string        // run cookies this process inherited, as EnvCookie's prefix ("a:"), or ""
	reaper  *reaper       // kills what a run left outside its process group
	slots   chan struct{} // one element per running executable; capacity MaxRunning

	mu       sync.RWMutex
	handlers map[Kind]map[string]Handler

	// calls counts in-process handler calls still running, including
	// those whose Run returned already (deadline, cancellation): see
	// WaitHandlers.
	calls inflight.Tracker
}

// WaitHandlers waits, up to timeout, until no in-process handler call is
// running, and reports whether none is. Run returns at a run's deadline or
// cancellation even when its handler ignores its context; the handler goes
// on in the background, and whoever closes what handlers use (a node
// closing its datastore) waits for it here first.
func (r *Runner) WaitHandlers(timeout time.Duration) bool {
	return r.calls.Wait(timeout)
}

// New returns a Runner for the instance in cfg.Dir. Zero limits take their
// defaults. The parent environment is captured now, not per run.
//
// New also marks every open descriptor of this process above stderr
// close-on-exec, so that programs get stdin, stdout and stderr only. Go
// opens its own descriptors that way, but not those this process
// inherited (from a shell, a supervisor, the headless start's readiness
// pipe), which every action and receiver would otherwise inherit in turn.
func New(cfg Config) *Runner {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxInput <= 0 {
		cfg.MaxInput = DefaultMaxInput
	}
	if cfg.MaxOutput <= 0 {
		cfg.MaxOutput = DefaultMaxOutput
	}
	if cfg.MaxRunning <= 0 {
		cfg.MaxRunning = DefaultMaxRunning
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	// Absolute paths because programs run with the instance directory as
	// their working directory, where a relative path would mean something
	// else.
	if abs, err := filepath.Abs(cfg.Dir); err == nil {
		cfg.Dir = abs
	}
	if cfg.Binary != "" {
		if abs, err := filepath.Abs(cfg.Binary); err == nil {
			cfg.Binary = abs
		}
	}
	closeInheritedOnExec()
	parent := os.Environ()
	return &Runner{
		cfg:     cfg,
		baseEnv: baseEnv(cfg, parent),
		outer:   outerCookies(parent),
		reaper:  newReaper(cfg.Logger),
		slots:   make(chan struct{}, cfg.MaxRunning),
		handlers: map[Kind]map[string]Handler{
			KindAction:   {},
			KindReceiver: {},
		},
	}
}

// checkName validates kind and name. Besides the subject rules of package
// topics it refuses anything that could escape the program directory, so
// that a bug in topics can never turn a name into a path traversal.
func checkName(kind Kind, name string) error {
	if !kind.valid() {
		return fmt.Errorf("%w %q (want %q or %q)", ErrInvalidKind, kind, KindAction, KindReceiver)
	}
	if err := topics.ValidateSubject(name); err != nil {
		return &runError{msg: fmt.Sprintf("runner: invalid %s name: %v", kind, err), sentinel: ErrInvalidName, cause: err}
	}
	if strings.ContainsAny(name, `/\`+"\x00") || name == "." || name == ".." {
		return &runError{msg: fmt.Sprintf("runner: invalid %s name %q: must not contain path separators", kind, name), sentinel: ErrInvalidName}
	}
	return nil
}

// Register installs h as the in-process handler for kind/name. It takes
// precedence over an executable of the same name. Registering a name twice
// is refused; Unregister it first to replace it.
func (r *Runner) Register(kind Kind, name string, h Handler) error {
	if err := checkName(kind, name); err != nil {
		return err
	}
	if h == nil {
		return fmt.Errorf("%w: nil handler for %s %q", ErrBadInput, kind, name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.handlers[kind][name]; ok {
		return fmt.Errorf("%w: %s %q already has an in-process handler", ErrExists, kind, name)
	}
	r.handlers[kind][name] = h
	return nil
}

// Unregister removes the in-process handler for kind/name, if any. Runs
// already in progress finish with the old handler.
func (r *Runner) Unregister(kind Kind, name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if m, ok := r.handlers[kind]; ok {
		delete(m, name)
	}
}

func (r *Runner) handler(kind Kind, name string) Handler {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.handlers[kind][name]
}

// Path returns where the executable for kind/name lives (whether or not it
// exists).
func (r *Runner) Path(kind Kind, name string) string {
	return filepath.Join(r.cfg.Dir, kind.Dir(), name)
}

// Info describes one action or receiver.
type Info struct {
	Name string `json:"name"`
	Kind Kind   `json:"kind"`
	// Path is the executable's path; it is also set for an in-process
	// handler that shadows a file of the same name.
	Path       string `json:"path,omitempty"`
	InProcess  bool   `json:"in_process"`
	Executable bool   `json:"executable"` // whether Run can start it; always true for in-process handlers
}

// List returns the actions or receivers of this instance, in-process and on
// disk, sorted by name. A file that is not executable is listed with
// Executable false. Files whose names are not valid subjects (editor
// backups, "My Action.js", ...) and subdirectories are not listed; Invalid
// reports them. A missing directory is not an error.
func (r *Runner) List(kind Kind) ([]Info, error) {
	if !kind.valid() {
		return nil, fmt.Errorf("%w %q", ErrInvalidKind, kind)
	}
	byName := map[string]Info{}
	files, _, err := r.scan(kind)
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		byName[f.Name] = f
	}
	r.mu.RLock()
	for name := range r.handlers[kind] {
		info := byName[name]
		info.Name, info.Kind, info.InProcess, info.Executable = name, kind, true, true
		byName[name] = info
	}
	r.mu.RUnlock()

	out := make([]Info, 0, len(byName))
	for _, info := range byName {
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// InvalidFile is an entry of a program directory that List skips.
type InvalidFile struct {
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// Invalid returns, sorted by name, the entries of the actions or receivers
// directory that List skips and why, so that a user can be told why their
// file is not offered.
func (r *Runner) Invalid(kind Kind) ([]InvalidFile, error) {
	if !kind.valid() {
		return nil, fmt.Errorf("%w %q", ErrInvalidKind, kind)
	}
	_, bad, err := r.scan(kind)
	return bad, err
}

// scan reads the program directory of kind. Entries come back sorted
// because os.ReadDir sorts them.
func (r *Runner) scan(kind Kind) (good []Info, bad []InvalidFile, err error) {
	dir := filepath.Join(r.cfg.Dir, kind.Dir())
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("runner: listing %s: %w", dir, err)
	}
	for _, e := range entries {
		name := e.Name()
		if err := checkName(kind, name); err != nil {
			bad = append(bad, InvalidFile{Name: name, Reason: err.Error()})
			continue
		}
		path := filepath.Join(dir, name)
		// Stat, not the DirEntry, so that a symlink is judged by its target.
		st, err := os.Stat(path)
		if err != nil {
			bad = append(bad, InvalidFile{Name: name, Reason: err.Error()})
			continue
		}
		if st.IsDir() {
			bad = append(bad, InvalidFile{Name: name, Reason: "is a directory"})
			continue
		}
		good = append(good, Info{
			Name:       name,
			Kind:       kind,
			Path:       path,
			Executable: st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0,
		})
	}
	return good, bad, nil
}

// Exists reports whether kind/name has an in-process handler or a file
// that is not a directory. Such a program may still fail to run, for
// example when the file is not executable.
func (r *Runner) Exists(kind Kind, name string) bool {
	if checkName(kind, name) != nil {
		return false
	}
	if r.handler(kind, name) != nil {
		return true
	}
	st, err := os.Stat(r.Path(kind, name))
	return err == nil && !st.IsDir()
}

// Check reports why the kind/name program could not run now, as Run
// would (ErrNotFound, ErrNotExecutable, a bad name), or nil when it could:
// an in-process handler, or an executable file.
func (r *Runner) Check(kind Kind, name string) error {
	if err := checkName(kind, name); err != nil {
		return err
	}
	if r.handler(kind, name) != nil {
		return nil
	}
	_, err := r.locate(Invocation{Kind: kind, Name: name})
	return err
}

// reservedEnv are the variables the runner sets itself; Invocation.Env may
// not replace them, so that a program can trust what they say.
var reservedEnv = map[string]bool{
	"COATTAIL_INSTANCE": true,
	"COATTAIL_ACTION":   true,
	"COATTAIL_KIND":     true,
	"COATTAIL_CALLER":   true,
	"COATTAIL_PEER_ID":  true,
	"COATTAIL_SOCKET":   true,
	"COATTAIL_BIN":      true,
	EnvRuntimeDir:       true,
	EnvCookie:           true,
}

// Run runs the action or receiver inv.Kind/inv.Name with inv.Input and
// returns its output: valid JSON, "null" when the program wrote nothing.
// An in-process handler registered under the name is used in preference
// to the executable.
//
// An executable runs with the instance directory as working directory and
// an environment made of PATH, HOME, LANG, TZ, TMPDIR and USER from the
// parent (PATH led by the coattail binary's directory) plus
// COATTAIL_INSTANCE, COATTAIL_ACTION (the name, also for receivers),
// COATTAIL_KIND, COATTAIL_CALLER, COATTAIL_PEER_ID, COATTAIL_SOCKET,
// COATTAIL_BIN, COATTAIL_RUNTIME_DIR (when Config.RuntimeDir is set),
// COATTAIL_RUN_COOKIE (EnvCookie: a random cookie of this run) and inv.Env.
//
// Nothing an executable starts outlives its run: its process group is
// killed when the program exits, fails, times out, overflows its output
// or is stopped by ctx, and on Linux so is every process of this user
// that carries the run's cookie, also one that left the group (setsid,
// a daemon); see reaper.
//
// Errors name the program and match a sentinel of this package with
// errors.Is; a run stopped by ctx returns an error wrapping ctx's error.
func (r *Runner) Run(ctx context.Context, inv Invocation) (json.RawMessage, error) {
	if err := checkName(inv.Kind, inv.Name); err != nil {
		return nil, err
	}
	if inv.Caller == "" {
		inv.Caller = "local"
	}
	input, err := r.checkInput(inv)
	if err != nil {
		return nil, err
	}
	inv.Input = input

	if h := r.handler(inv.Kind, inv.Name); h != nil {
		return r.runHandler(ctx, h, inv)
	}
	return r.runExec(ctx, inv)
}

func (r *Runner) checkInput(inv Invocation) (json.RawMessage, error) {
	for k, v := range inv.Env {
		switch {
		case !strings.HasPrefix(k, "COATTAIL_") || strings.ContainsAny(k, "=\x00"):
			return nil, fmt.Errorf("%w: environment variable %q for %s %q: names must start with COATTAIL_ and contain no '=' or NUL", ErrBadInput, k, inv.Kind, inv.Name)
		case reservedEnv[k]:
			return nil, fmt.Errorf("%w: environment variable %s for %s %q is set by the runner and cannot be overridden", ErrBadInput, k, inv.Kind, inv.Name)
		case strings.ContainsRune(v, 0):
			return nil, fmt.Errorf("%w: environment variable %s for %s %q contains a NUL byte", ErrBadInput, k, inv.Kind, inv.Name)
		}
	}
	if len(inv.Input) > r.cfg.MaxInput {
		return nil, &runError{
			msg:      fmt.Sprintf("runner: input for %s %q is %d bytes, limit is %d", inv.Kind, inv.Name, len(inv.Input), r.cfg.MaxInput),
			sentinel: ErrInputTooLarge,
		}
	}
	if len(inv.Input) == 0 {
		return json.RawMessage("null"), nil
	}
	if err := checkJSON(inv.Input); err != nil {
		return nil, &runError{
			msg:      fmt.Sprintf("runner: input for %s %q is not valid JSON: %v", inv.Kind, inv.Name, err),
			sentinel: ErrBadInput,
			cause:    err,
		}
	}
	return inv.Input, nil
}

// checkJSON reports whether b is exactly one JSON value in UTF-8, with the
// decoder's explanation (json.Valid gives none). encoding/json accepts
// invalid UTF-8 inside strings; the node refuses such publications
// (jsonx.Valid), so the runner does too.
func checkJSON(b []byte) error {
	if !utf8.Valid(b) {
		i := 0
		for i < len(b) {
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				break
			}
			i += size
		}
		return fmt.Errorf("invalid UTF-8 at byte offset %d", i)
	}
	var v json.RawMessage
	return json.Unmarshal(b, &v)
}

// finishOutput applies the output rules shared by executables and
// handlers: size limit, empty means null, valid JSON.
func (r *Runner) finishOutput(inv Invocation, out []byte) (json.RawMessage, error) {
	if len(out) > r.cfg.MaxOutput {
		return nil, r.tooLarge(inv)
	}
	trimmed := strings.TrimSpace(string(out))
	if trimmed == "" {
		return json.RawMessage("null"), nil
	}
	if err := checkJSON([]byte(trimmed)); err != nil {
		return nil, &runError{
			msg:      fmt.Sprintf("runner: %s %q returned invalid JSON: %v (output starts %q)", inv.Kind, inv.Name, err, textx.Snippet(trimmed, 64)),
			sentinel: ErrBadOutput,
			cause:    err,
		}
	}
	return json.RawMessage(trimmed), nil
}

func (r *Runner) tooLarge(inv Invocation) error {
	return &runError{
		msg:      fmt.Sprintf("runner: %s %q output exceeds %d bytes", inv.Kind, inv.Name, r.cfg.MaxOutput),
		sentinel: ErrOutputTooLarge,
	}
}

func (r *Runner) timedOut(inv Invocation) error {
	return &runError{
		msg:      fmt.Sprintf("runner: %s %q timed out after %v", inv.Kind, inv.Name, r.cfg.Timeout),
		sentinel: ErrTimeout,
		cause:    context.DeadlineExceeded,
	}
}

func stopped(inv Invocation, err error) error {
	return fmt.Errorf("runner: %s %q stopped: %w", inv.Kind, inv.Name, err)
}

// errTimeoutCause marks the run's own deadline, to tell it apart from the
// caller's context ending.
var errTimeoutCause = errors.New("runner: run deadline")

// runHandler runs an in-process handler with the same limits as an
// executable. A handler that ignores its context cannot be stopped; Run
// still returns at the deadline and the handler's eventual result is
// dropped.
func (r *Runner) runHandler(ctx context.Context, h Handler, inv Invocation) (json.RawMessage, error) {
	runCtx, cancel := context.WithTimeoutCause(ctx, r.cfg.Timeout, errTimeoutCause)
	defer cancel()

	logs := newLogGate(inv.Log)
	defer logs.close()
	inv.Log = logs.log

	type result struct {
		out json.RawMessage
		err error
	}
	done := make(chan result, 1) // buffered: a late handler must not leak blocked
	r.calls.Begin()              // never shut
	go func() {
		defer r.calls.End()
		defer func() {
			if p := recover(); p != nil {
				r.cfg.Logger.Error("in-process handler panicked",
					"kind", inv.Kind, "name", inv.Name, "panic", p, "stack", string(debug.Stack()))
				done <- result{err: &runError{
					msg:      fmt.Sprintf("runner: %s %q panicked: %v", inv.Kind, inv.Name, p),
					sentinel: ErrPanic,
				}}
			}
		}()
		out, err := h(runCtx, inv)
		done <- result{out, err}
	}()

	select {
	case res := <-done:
		if res.err != nil {
			var re *runError
			if errors.As(res.err, &re) && re.sentinel == ErrPanic {
				return nil, res.err
			}
			return nil, &runError{
				msg:      fmt.Sprintf("runner: %s %q failed: %v", inv.Kind, inv.Name, res.err),
				sentinel: ErrExit,
				cause:    res.err,
			}
		}
		return r.finishOutput(inv, res.out)
	case <-runCtx.Done():
		if context.Cause(runCtx) == errTimeoutCause {
			return nil, r.timedOut(inv)
		}
		return nil, stopped(inv, ctx.Err())
	}
}

// logGate serialises calls to a Log callback, truncates long lines and
// drops calls made after the run returned, which an in-process handler
// that outlives its deadline could otherwise make.
type logGate struct {
	mu     sync.Mutex
	fn     func(string)
	closed bool
}

func newLogGate(fn func(string)) *logGate { return &logGate{fn: fn} }

func (g *logGate) log(line string) {
	if g.fn == nil {
		return
	}
	if len(line) > MaxLogLine {
		line = textx.Cut(line, MaxLogLine) + TruncatedMark
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closed {
		g.fn(line)
	}
}

func (g *logGate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// runError is an error with a precise message that matches a sentinel
// (and, if set, an underlying cause) with errors.Is.
type runError struct {
	msg      string
	sentinel error
	cause    error
}

func (e *runError) Error() string { return e.msg }

func (e *runError) Unwrap() []error {
	if e.cause == nil {
		return []error{e.sentinel}
	}
	return []error{e.sentinel, e.cause}
}
