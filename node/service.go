package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coattail/coattail/datastore"
	"github.com/coattail/coattail/node/internal/inflight"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/runner"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/sys/unix"
)

// Service errors.
var (
	ErrAlreadyRunning = errors.New("node: service already running")
	ErrNotRunning     = errors.New("node: service not running")
	ErrSocketPath     = errors.New("node: control socket path too long")
)

// EnvRuntimeDir overrides where running services register themselves
// (default: $XDG_RUNTIME_DIR/coattail, else <tmp>/coattail-<uid>).
const EnvRuntimeDir = runner.EnvRuntimeDir // "COATTAIL_RUNTIME_DIR"

// maxSocketPath is the longest unix socket path Linux accepts.
const maxSocketPath = 107

// RuntimeDir is the machine-wide directory where services register.
func RuntimeDir() string {
	if d := os.Getenv(EnvRuntimeDir); d != "" {
		return d
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "coattail")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("coattail-%d", os.Getuid()))
}

// registration is the file a running service leaves in RuntimeDir.
type registration struct {
	PID      int    `json:"pid"`
	Instance string `json:"instance"`
	Socket   string `json:"socket"`
	// Start is the process's start time (/proc/<pid>/stat, clock ticks
	// since boot): with it a registration left by a killed service is
	// told apart from an unrelated process that got the same pid.
	Start uint64 `json:"start,omitempty"`
	// PeerID is the service's peer id: a copy of its instance is refused
	// (claimIdentity) by the identity it runs with, even if the key file
	// has changed since.
	PeerID string `json:"peer_id,omitempty"`
}

// ServiceOptions configures RunService.
type ServiceOptions struct {
	Relay bool
	// Ready is called once the service accepts control requests.
	Ready func(pid int)
	// Binary is the coattail executable actions get as COATTAIL_BIN.
	Binary string
	// ReopenLog, when set, reopens the log file at its path on every value
	// received (SIGHUP, after an external logrotate moved it away).
	ReopenLog <-chan os.Signal
	// Notice, when set, is told what a starting service waits for, when
	// it waits long (another process holds the instance's data).
	Notice func(msg string)
}

// RunService runs an instance until ctx is done or a stop request
// arrives: it opens the datastore, starts the libp2p host, serves the
// control socket, and registers the service for `service status`.
func RunService(ctx context.Context, l Layout, o ServiceOptions) (err error) {
	if len(l.Socket()) > maxSocketPath {
		return fmt.Errorf("%w: %s is %d bytes, the limit is %d; move the instance to a shorter path", ErrSocketPath, l.Socket(), len(l.Socket()), maxSocketPath)
	}
	if st, err := probe(l); err == nil {
		return fmt.Errorf("%w: instance %s (pid %d)", ErrAlreadyRunning, l.Dir, st.PID)
	}
	if err := checkInstanceWritable(l); err != nil {
		return err
	}
	// The pid file is locked for as long as the service runs, from before
	// it opens anything: a second start, even one racing this one, is told
	// at once that the instance runs (or is starting), rather than waiting
	// for the datastore and failing on it; and `service stop` finds a
	// service that is still starting.
	pidFile, err := lockPIDFile(l)
	if err != nil {
		return err
	}
	defer func() {
		_ = os.Remove(l.PIDFile())
		pidFile.Close() // releases the lock, after the removal
	}()
	cfg, err := LoadConfig(l.Config())
	if err != nil {
		return err
	}
	key, err := LoadKey(l.IdentityKey())
	if err != nil {
		return err
	}
	logger, logFile, err := openLog(l, cfg)
	if err != nil {
		return err
	}
	defer logFile.Close()
	if ConfigSetsNothing(l.Config()) {
		// A truncated or emptied file (a --loopback instance's) would
		// otherwise make the instance reachable from other machines
		// without a word.
		msg := EmptyConfigWarning(l)
		logger.Warn(msg)
		if o.Notice != nil {
			o.Notice("warning: " + msg)
		}
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return fmt.Errorf("node: peer id: %w", err)
	}
	// Before anything is opened: a copy of a running instance must not
	// come up as a second peer with its identity.
	releaseID, err := claimIdentity(l, id, func(err error) {
		logger.Warn("cannot check that no other service runs with this peer id", "err", err)
	})
	if err != nil {
		logger.Error("start refused", "err", err)
		return err
	}
	defer releaseID()
	if o.ReopenLog != nil {
		done := make(chan struct{})
		defer close(done)
		go func() {
			for {
				select {
				case <-done:
					return
				case <-o.ReopenLog:
					if err := logFile.Reopen(); err != nil {
						logger.Error("reopening the log file", "err", err)
					} else {
						logger.Info("log file reopened")
					}
				}
			}
		}()
	}
	db, err := openDBRetry(ctx, l, func(msg string) {
		logger.Info(msg)
		if o.Notice != nil {
			o.Notice(msg)
		}
	})
	if err != nil {
		return err
	}
	n, err := New(Options{Dir: l.Dir, Config: cfg, Key: key, DB: db, Logger: logger, Relay: o.Relay, Binary: o.Binary})
	if err != nil {
		db.Close()
		return err
	}
	n.ownDB = true
	var requests controlInflight
	defer func() {
		// A control request that outlived shutdown (its handler ignored
		// its cancelled context) still uses the node: the last such
		// request to end closes it, rather than its datastore being
		// closed under it.
		if requests.WhenIdle(func() {
			if cerr := n.Close(); cerr != nil {
				logger.Error("closing the node after the last control request", "err", cerr)
			}
		}) {
			return
		}
		if cerr := n.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err := n.Start(ctx); err != nil {
		logger.Error("start failed", "err", err)
		return err
	}
	if addr := cfg.Metrics.Listen; addr != "" {
		ms, err := serveMetrics(addr, n, logger)
		if err != nil {
			logger.Error("start failed", "err", err)
			return err
		}
		defer ms.close() // before the node closes
		logger.Info("serving metrics", "url", n.metricsURL)
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	h := bodyDeadline(n.Handler(stop), controlReadTimeout)
	if controlHandlerHook != nil {
		h = controlHandlerHook(n, h)
	}
	srv := controlServer(ctx, requests.wrap(h, n.controlWriteTimeout()))
	sock, err := serveControl(l, srv)
	if err != nil {
		return err
	}
	defer sock.remove()
	// However RunService returns from here on, the server ends before
	// the node closes: requests in progress are cancelled (BaseContext)
	// and then waited for, so no handler outlives the node it serves.
	// Shutdown waits for connections (controlShutdownTimeout), Close cuts
	// those left, and their handlers get controlShutdownGrace more to
	// return; one that still runs (it ignores its context) is not waited
	// for, but the node stays open for it (see WhenIdle above).
	shutdown := sync.OnceFunc(func() {
		logger.Info("service stopping")
		stop()
		requests.Shut()
		shutdownControl(srv)
		if !requests.Wait(controlShutdownGrace) {
			logger.Error("control requests still run after the service stopped (their handlers ignore cancellation); the node and its datastore are closed when they end",
				"requests", requests.Count())
		}
	})
	defer shutdown()
	unregister, err := register(l, id)
	if err != nil {
		logger.Warn("cannot register in runtime dir", "err", err)
	}
	defer unregister()
	registered := err == nil
	regDone := make(chan struct{})
	go func() {
		defer close(regDone)
		keepRegistered(ctx, l, id, logger, registered)
	}()
	defer func() { stop(); <-regDone }() // before unregister
	// Watched from before the service is ready: a directory deleted at
	// any moment after that is noticed.
	deleted := make(chan struct{})
	watchDone := make(chan struct{})
	dirHandle, dirErr := os.Open(l.Dir)
	var dirInfo os.FileInfo
	if dirErr == nil {
		dirInfo, dirErr = dirHandle.Stat()
	}
	go func() {
		defer close(watchDone)
		if dirErr == nil {
			watchInstanceDir(ctx, dirHandle, deleted)
		}
	}()
	defer func() { stop(); <-watchDone }()
	// A control socket file removed while the service runs (by a /tmp
	// cleaner, say) is made again, so the CLI can reach the service.
	sockDone := make(chan struct{})
	go func() {
		defer close(sockDone)
		if dirErr == nil {
			sock.keep(ctx, dirInfo, logger)
		}
	}()
	defer func() { stop(); <-sockDone }()
	logger.Info("service ready", "pid", os.Getpid(), "peer_id", n.ID().String(), "socket", l.Socket())
	if o.Ready != nil {
		o.Ready(os.Getpid())
	}
	var serveErr error
	select {
	case <-ctx.Done():
	case <-deleted:
		// Its data, keys and programs are gone with it (the files it has
		// open live on, unreachable): nothing it does from here on would
		// last, and no CLI command can reach it. Stop, non-zero.
		logger.Error("the instance directory was deleted; stopping", "dir", l.Dir)
		serveErr = fmt.Errorf("node: the instance directory %s was deleted while its service ran", l.Dir)
	case err := <-sock.failed:
		if !errors.Is(err, http.ErrServerClosed) {
			// The service cannot be controlled any more: stop, and say
			// so with a non-zero exit rather than as a clean stop.
			logger.Error("control socket failed", "err", err)
			serveErr = fmt.Errorf("node: control socket %s failed: %w", l.Socket(), err)
		}
	}
	shutdown() // before the registration and the pid file go
	return serveErr
}

// Control socket limits. A request's header, and then its body, must each
// arrive within controlReadTimeout: the CLI writes a whole request at once,
// so only a stuck or hostile client is cut off. There is no overall write
// timeout, because perform streams its answer (NDJSON) for as long as the
// action runs; each write of an answer has its own deadline (the handler's
// limits.stream_timeout). The idle timeout is longer than the client's own (30s), so an idle
// keep-alive connection is always closed by the client and a new request
// never races the server's close.
//
// At most controlMaxConns connections are served at once (each holds a
// file descriptor, which the service shares with its libp2p host); a
// connection beyond them waits in the socket's backlog until one closes,
// as a burst of CLI commands expects, and is then served. Every held
// connection is bounded by the timeouts above or runs a request.
//
// Variables, not constants, only so that tests can shorten them.
var (
	controlReadTimeout = 10 * time.Second
	controlIdleTimeout = 2 * time.Minute
	controlMaxHeader   = 64 << 10
	controlMaxConns    = 128
	// controlShutdownTimeout bounds how long a stopping service waits for
	// its control connections to finish, and controlShutdownGrace how
	// long it then waits for handlers still running on cut connections.
	controlShutdownTimeout = 5 * time.Second
	controlShutdownGrace   = 5 * time.Second
)

// controlServer is the control API's HTTP server for handler h. Requests
// end with ctx (the service or the node): a perform in progress is
// stopped (its action killed), not left running without its timeout after
// the service is gone.
func controlServer(ctx context.Context, h http.Handler) *http.Server {
	return &http.Server{
		BaseContext:       func(net.Listener) context.Context { return ctx },
		Handler:           h,
		ReadHeaderTimeout: controlReadTimeout,
		IdleTimeout:       controlIdleTimeout,
		MaxHeaderBytes:    controlMaxHeader,
	}
}

// shutdownControl stops srv: it waits controlShutdownTimeout for its
// connections to end, then cuts those left.
func shutdownControl(srv *http.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), controlShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		_ = srv.Close()
	}
}

// controlHandlerHook, if set (by tests), wraps the control API handler of
// the services RunService starts.
var controlHandlerHook func(*Node, http.Handler) http.Handler

// controlInflight counts the control requests whose handlers run. Once
// the service stops, a new request is answered unavailable, and shutdown
// waits for the running ones before the node closes.
type controlInflight struct{ inflight.Tracker }

func (f *controlInflight) wrap(h http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !f.Begin() {
			writeError(w, &localapi.Error{Status: http.StatusServiceUnavailable, Code: localapi.CodeUnavailable,
				Message: "the service is stopping"}, d)
			return
		}
		defer f.End()
		h.ServeHTTP(w, r)
	})
}

// limitListener accepts at most cap(slots) connections open at once:
// Accept takes the next connection from the backlog only once one of them
// has closed.
type limitListener struct {
	net.Listener
	slots chan struct{}
	done  chan struct{}
	once  sync.Once
	// retired is set when a new socket replaced this one: its Serve's
	// end is not a failure of the control socket.
	retired atomic.Bool
}

// newLimitListener limits l to the free places in slots, which the
// listeners that replace one another on the control socket share.
func newLimitListener(l net.Listener, slots chan struct{}) *limitListener {
	return &limitListener{Listener: l, slots: slots, done: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.slots }}, nil
}

// Close closes the listener once; closing it again does nothing (a
// replaced listener is closed by controlSocket, and again by net/http).
func (l *limitListener) Close() error {
	err := net.ErrClosed
	l.once.Do(func() {
		close(l.done)
		err = l.Listener.Close()
	})
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// limitConn gives its slot back when it is closed (once, however often
// it is closed).
type limitConn struct {
	net.Conn
	release func()
	once    sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite keeps net/http's half-close before it closes a connection.
func (c *limitConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// bodyDeadline bounds how long a request body may take to arrive and lifts
// the bound once the body has been read, so a streamed answer can run on.
// http.Server.ReadTimeout cannot do this: it stays armed while the handler
// runs, and net/http's background read of the connection then cancels the
// request's context in the middle of a long perform.
func bodyDeadline(h http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody {
			h.ServeHTTP(w, r)
			return
		}
		rc := http.NewResponseController(w)
		_ = rc.SetReadDeadline(time.Now().Add(d))
		r.Body = &deadlineBody{ReadCloser: r.Body, lift: func() { _ = rc.SetReadDeadline(time.Time{}) }}
		h.ServeHTTP(w, r)
	})
}

// deadlineBody lifts the read deadline at the end of the body. On any other
// error the deadline stays, so net/http's discarding of an unread body
// after the handler cannot hang on a client that trickles it.
type deadlineBody struct {
	io.ReadCloser
	lift func()
	once sync.Once
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) {
		b.once.Do(b.lift)
	}
	return n, err
}

// listenPrivate listens on a unix socket at path that only this user can
// connect to from its creation: it is made in a new 0700 directory beside
// path, restricted to 0600 there, and then renamed into place. (A chmod
// after listening at path would leave a moment with the umask's
// permissions, and a client connected then stays connected; changing the
// umask would affect every goroutine and child process of the service.)
func listenPrivate(path string) (net.Listener, error) {
	// 0700. "." plus at most 10 digits and "/s" is never longer than
	// "coattail.sock", so the temporary path fits where path fits
	// (sun_path holds 107 bytes).
	dir, err := os.MkdirTemp(filepath.Dir(path), ".")
	if err != nil {
		return nil, err
	}
	defer os.Remove(dir)
	tmp := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false) // the caller removes path
	err = os.Chmod(tmp, 0o600)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		ln.Close()
		_ = os.Remove(tmp)
		return nil, err
	}
	return ln, nil
}

// Service log rotation. The service log is rotated by size, so that a
// service that runs for months cannot fill the disk: once service.log
// would grow past log.rotate_size it is renamed service.log.1
// (service.log.1 becomes .2, and so on), the oldest beyond log.rotate_keep
// is deleted, and a new service.log is started. The log therefore takes at
// most (rotate_keep+1) x rotate_size; rotate_size 0 turns rotation off.
// SIGHUP (see `coattail service start --help`) reopens the file, for an
// external logrotate that moves it away.

// rotatingLog is the service log file, rotated by size (see above).
// When the process's stdout and stderr are that file (a headless service:
// a panic lands there), they follow it to each new file.
type rotatingLog struct {
	mu      sync.Mutex
	path    string
	max     int64 // 0: never rotate
	keep    int
	f       *os.File
	size    int64
	stdio   bool // fds 1 and 2 are the log file
	failed  bool // the last rotation failed: do not retry on every write
	onError func(error)
}

func openRotatingLog(path string, max int64, keep int) (*rotatingLog, error) {
	// A log.file that is a symlink (service.log → /var/log/coattail/...)
	// is rotated where it points: renaming the link would leave the
	// target to grow under service.log.1 and a new plain file in its place.
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	r := &rotatingLog{path: path, max: max, keep: keep}
	if err := r.open(); err != nil {
		return nil, err
	}
	// Only a regular file is rotated: log.file may name a device or a
	// pipe (/dev/stderr for journald, /dev/null), which must never be
	// renamed.
	if fi, err := r.f.Stat(); err != nil || !fi.Mode().IsRegular() {
		r.max = 0
	}
	// A headless service's stdout and stderr were opened on this file by
	// its launcher; keep them on service.log once it is rotated.
	if fi, err := r.f.Stat(); err == nil {
		if ei, err := os.Stderr.Stat(); err == nil && os.SameFile(fi, ei) {
			r.stdio = true
		}
	}
	return r, nil
}

func (r *rotatingLog) open() error {
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	var size int64
	if fi, err := f.Stat(); err == nil {
		size = fi.Size()
	}
	r.f, r.size = f, size
	return nil
}

// Write appends p, first rotating the file if p would take it past max.
func (r *rotatingLog) Write(p []byte) (int, error) {
	r.mu.Lock()
	var rotErr error
	if r.max > 0 && r.size > 0 && r.size+int64(len(p)) > r.max && !r.failed {
		if rotErr = r.rotate(); rotErr != nil {
			// Keep logging to the file we have rather than lose lines;
			// rotation is tried again after the next reopen.
			r.failed = true
		}
	}
	n, err := 0, error(os.ErrClosed)
	if r.f != nil {
		n, err = r.f.Write(p)
		r.size += int64(n)
	}
	r.mu.Unlock()
	if rotErr != nil && r.onError != nil {
		r.onError(rotErr) // logs through Write: not under r.mu
	}
	return n, err
}

// rotate shifts path.(k) to path.(k+1), path to path.1, and opens a new path.
func (r *rotatingLog) rotate() error {
	if r.keep < 1 {
		if err := os.Remove(r.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("node: rotating %s: %w", r.path, err)
		}
	} else {
		_ = os.Remove(fmt.Sprintf("%s.%d", r.path, r.keep))
		for k := r.keep - 1; k >= 1; k-- {
			_ = os.Rename(fmt.Sprintf("%s.%d", r.path, k), fmt.Sprintf("%s.%d", r.path, k+1))
		}
		if err := os.Rename(r.path, r.path+".1"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("node: rotating %s: %w", r.path, err)
		}
	}
	return r.reopenLocked()
}

func (r *rotatingLog) reopenLocked() error {
	old := r.f
	if err := r.open(); err != nil {
		return fmt.Errorf("node: reopening %s: %w", r.path, err)
	}
	if r.stdio {
		_ = unix.Dup2(int(r.f.Fd()), 1)
		_ = unix.Dup2(int(r.f.Fd()), 2)
	}
	r.failed = false
	if old != nil {
		old.Close()
	}
	return nil
}

// Reopen opens the log file again at its path (after an external tool
// moved it away).
func (r *rotatingLog) Reopen() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reopenLocked()
}

func (r *rotatingLog) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return nil
	}
	err := r.f.Close()
	r.f = nil
	return err
}

func openLog(l Layout, cfg Config) (*slog.Logger, *rotatingLog, error) {
	f, err := openRotatingLog(l.LogFile(cfg), int64(cfg.Log.RotateSize), cfg.Log.RotateKeep)
	if err != nil {
		return nil, nil, fmt.Errorf("node: log file: %w", err)
	}
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.Log.Level))
	logger := slog.New(slog.NewJSONHandler(f, &slog.HandlerOptions{Level: lvl}))
	f.onError = func(err error) { logger.Error("log rotation failed", "err", err) }
	return logger, f, nil
}

// checkRuntimeDir makes sure dir is a directory of this user that nobody
// else can write (the /tmp fallback could have been created by another
// user first, to plant registrations or symlinks): a loose one of ours is
// tightened, anything else refused.
func checkRuntimeDir(dir string) error {
	fi, err := os.Stat(dir) // a symlink is judged by what it points to
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != os.Getuid() {
		return fmt.Errorf("node: runtime directory %s is not a directory of this user; set %s to one that is", dir, EnvRuntimeDir)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("node: runtime directory %s: %w", dir, err)
		}
	}
	return nil
}

// checkSharedRuntimeDir applies checkRuntimeDir to the fallback under the
// shared temporary directory, which another user could have created
// first. A directory the user chose (COATTAIL_RUNTIME_DIR) or the
// session's own (XDG_RUNTIME_DIR) is used as it is.
func checkSharedRuntimeDir(dir string) error {
	if os.Getenv(EnvRuntimeDir) != "" || os.Getenv("XDG_RUNTIME_DIR") != "" {
		return nil
	}
	return checkRuntimeDir(dir)
}

// registrationPath is where, in the runtime directory dir, the service
// of process pid registers.
func registrationPath(dir string, pid int) string {
	return filepath.Join(dir, strconv.Itoa(pid)+".json")
}

func register(l Layout, id peer.ID) (func(), error) {
	dir := RuntimeDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return func() {}, err
	}
	if err := checkSharedRuntimeDir(dir); err != nil {
		return func() {}, err
	}
	path := registrationPath(dir, os.Getpid())
	start, _ := datastore.ProcessStart(os.Getpid())
	b, _ := json.Marshal(registration{PID: os.Getpid(), Instance: l.Dir, Socket: l.Socket(), Start: start, PeerID: id.String()})
	// Written aside and renamed into place: rename replaces whatever is at
	// path (a symlink included) instead of writing through it.
	tmp, err := os.CreateTemp(dir, ".register-*")
	if err != nil {
		return func() {}, err
	}
	_, werr := tmp.Write(b)
	if err := errors.Join(werr, tmp.Close()); err != nil {
		_ = os.Remove(tmp.Name())
		return func() {}, err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		_ = os.Remove(tmp.Name())
		return func() {}, err
	}
	return func() { os.Remove(path) }, nil
}

// probe asks the instance's socket for its status.
func probe(l Layout) (localapi.Status, error) {
	c := localapi.Dial(l.Socket())
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return c.Status(ctx)
}

// Running reports the status of the instance's service, or ErrNotRunning.
// A stale pid file (its process is gone) is removed.
func Running(l Layout) (localapi.Status, error) {
	st, err := probe(l)
	if err == nil {
		return st, nil
	}
	if pid, ok := pidFromFile(l); ok && !alive(pid) && !pidFileLocked(l) {
		_ = os.Remove(l.PIDFile())
	}
	return localapi.Status{}, fmt.Errorf("%w in %s", ErrNotRunning, l.Dir)
}

// pidFromFile returns the pid in the instance's pid file, if it has one.
func pidFromFile(l Layout) (int, bool) {
	b, err := os.ReadFile(l.PIDFile())
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid, err == nil
}

func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	// A zombie has exited; it only waits for its parent (init, once the
	// headless launcher is gone) to reap it, which some container inits
	// never do promptly.
	if f := procStat(pid); len(f) > 0 && f[0] == "Z" {
		return false
	}
	return true
}

// procStat returns the fields of /proc/<pid>/stat from field 3 (the
// state) on, or nil if it cannot be read. The command name (field 2) may
// hold spaces and parentheses, so they start after its last ')'.
func procStat(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	s := string(b)
	k := strings.LastIndexByte(s, ')')
	if k < 0 {
		return nil
	}
	return strings.Fields(s[k+1:])
}

// registered reports whether r's process is still the service that wrote
// r: alive, and (when r records it) started when that service started.
func (r registration) registered() bool {
	if !alive(r.PID) {
		return false
	}
	if r.Start == 0 {
		return true // written by an older version, or /proc was unreadable
	}
	start, ok := datastore.ProcessStart(r.PID)
	return !ok || start == r.Start
}

// listProbeTimeout bounds ListServices' question to one service; one that
// does not answer in this long is listed as not answering.
const listProbeTimeout = 3 * time.Second

// listProbes is how many services ListServices asks at once, so that N
// stuck services cost about one listProbeTimeout rather than N of them.
const listProbes = 16

// ListServices returns the status of every service registered on this
// machine, removing registrations whose process is gone. It asks the
// services at once (at most listProbes at a time) and lists them sorted by
// instance.
func ListServices(ctx context.Context) ([]localapi.Status, error) {
	dir := RuntimeDir()
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return []localapi.Status{}, nil
	}
	if err != nil {
		return nil, err
	}
	if err := checkSharedRuntimeDir(dir); err != nil {
		return nil, err
	}
	type entry struct {
		path string
		reg  registration
		st   localapi.Status
		ok   bool // st is listed; false: a stale registration, removed
	}
	var regs []*entry
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		var r registration
		if json.Unmarshal(b, &r) != nil || !r.registered() {
			_ = os.Remove(path)
			continue
		}
		regs = append(regs, &entry{path: path, reg: r})
	}
	sem := make(chan struct{}, listProbes)
	var wg sync.WaitGroup
	for _, en := range regs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			en.st, en.ok = probeRegistered(ctx, en.path, en.reg)
		})
	}
	wg.Wait()
	out := []localapi.Status{}
	for _, en := range regs {
		if en.ok {
			out = append(out, en.st)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Instance < out[j].Instance })
	return out, nil
}

// probeRegistered asks the service of registration r (read from path) for
// its status. ok is false when the registration is stale: another service
// of the same instance now answers on the socket, and path is removed.
func probeRegistered(ctx context.Context, path string, r registration) (st localapi.Status, ok bool) {
	c := localapi.Dial(r.Socket)
	cctx, cancel := context.WithTimeout(ctx, listProbeTimeout)
	st, err := c.Status(cctx)
	cancel()
	c.Close()
	if err != nil {
		// Alive but not answering: still starting or stuck; show what
		// we know, with the documented shape (lists [], never null).
		st = unansweredStatus(r)
	}
	if st.PID != r.PID {
		// The socket now belongs to a newer service of the same
		// instance: this registration's process died without
		// unregistering (and its pid may since have been reused).
		_ = os.Remove(path)
		return localapi.Status{}, false
	}
	return st, true
}

// ErrInsecureInstance is returned when the instance directory, or its
// actions or receivers directory, can be written by every user.
var ErrInsecureInstance = errors.New("node: instance directory writable by others")

// checkInstanceWritable refuses an instance whose directory, actions/ or
// receivers/ any user can write to (as ssh refuses such a home): anyone
// could add an action that peers then run as this user, or put their own
// socket in place of the control socket and receive the CLI's requests,
// tokens included.
func checkInstanceWritable(l Layout) error {
	for _, d := range []string{l.Dir, l.Actions(), l.Receivers()} {
		fi, err := os.Stat(d)
		if err != nil {
			continue // a missing directory is reported where it is needed
		}
		if fi.Mode().Perm()&0o002 != 0 {
			return fmt.Errorf("%w: %s has mode %04o; anyone on this machine could put actions or a control socket there (run: chmod o-w %s)", ErrInsecureInstance, d, fi.Mode().Perm(), d)
		}
	}
	return nil
}

// stopStatusTimeout bounds StopService's first question to the service:
// one that does not answer in this long is reported, not waited for.
const stopStatusTimeout = 5 * time.Second

// StopService asks the service of l (or the process pid, if non-zero) to
// stop and waits until it has exited.
//
// Another command may stop the same service at the same time (two `service
// stop`, or a stop and a restart): a service found running that, asked
// here, refuses as stopping, closes the connection unanswered or no longer
// listens has been asked by the other, and is waited for as if this stop
// had asked it; its stop is this one's success.
func StopService(ctx context.Context, l Layout, pid int) (int, error) {
	return stopService(ctx, l, pid, true)
}

// stopService is StopService; again allows it to start over once, for a
// service that another command started after it looked.
func stopService(ctx context.Context, l Layout, pid int, again bool) (int, error) {
	sock := l.Socket()
	// seen is the service found running before it is asked: if it goes
	// away meanwhile, this stop waits until it is gone and succeeds.
	seen := pid
	if pid != 0 {
		regs, _ := ListServices(ctx)
		sock = ""
		for _, r := range regs {
			if r.PID == pid {
				sock = filepath.Join(r.Instance, "coattail.sock")
			}
		}
		if sock == "" {
			return 0, fmt.Errorf("%w: no coattail service with pid %d (see: coattail service status)", ErrNotRunning, pid)
		}
	} else {
		// A service still starting is stopped once it is ready, rather
		// than reported as not running and left to come up.
		seen = waitStarted(ctx, l)
	}
	c := localapi.Dial(sock)
	defer c.Close()
	sctx, cancel := context.WithTimeout(ctx, stopStatusTimeout)
	st, err := c.Status(sctx)
	cancel()
	if err != nil {
		listening := socketListening(sock)
		if pid != 0 && !listening {
			// Registered and alive, but its control socket is gone: its
			// instance directory was deleted or moved. The registration
			// (pid and start time) says the process is that service.
			if serviceReady(pid) {
				return terminate(ctx, pid)
			}
		}
		if pid == 0 && !listening {
			// The instance's pid file is held (a service of the
			// instance runs) by the process it names, which has been
			// ready (registered), yet nobody listens on its socket:
			// the socket file was removed. Stop it as `stop PID` does.
			if owner, ok := pidFromFile(l); ok && pidFileLocked(l) && alive(owner) {
				if serviceReady(owner) {
					return terminate(ctx, owner)
				}
				if seen > 0 && goingAway(err) {
					// The service found ready has closed its socket
					// and unregistered since: it is stopping.
					return waitGone(ctx, seen)
				}
				if again && owner != seen && ctx.Err() == nil {
					// Started after this stop looked (by another
					// command): stopped once it is ready, as a service
					// found starting is.
					return stopService(ctx, l, 0, false)
				}
				return owner, fmt.Errorf("node: the instance's service (pid %d) does not listen on its control socket %s (still starting, or the socket is gone and it has not registered); end it with: kill %d", owner, l.Socket(), owner)
			}
		}
		if seen > 0 && goingAway(err) {
			// Found running, and stopping (or gone) by the time it was
			// asked: another command stopped it.
			return waitGone(ctx, seen)
		}
		// Not answering is not the same as not running: a stopped
		// (SIGSTOP) or stuck service still holds the instance. But with
		// nobody listening on the socket, the pid file is stale and its
		// pid may belong to another process by now.
		owner := pid
		if owner == 0 {
			owner, _ = pidFromFile(l)
		}
		if owner > 0 && alive(owner) && listening {
			return owner, fmt.Errorf("node: service pid %d does not answer on its control socket (stopped or stuck?): %v; it is still running: resume it (kill -CONT %d) or end it (kill %d)", owner, err, owner, owner)
		}
		if _, rerr := Running(l); rerr != nil && pid == 0 {
			return 0, rerr
		}
		return 0, fmt.Errorf("%w: %v", ErrNotRunning, err)
	}
	if err := c.Stop(ctx); err != nil && (ctx.Err() != nil || !goingAway(err)) {
		return 0, err
	}
	// Stopping, whether this request or another command's asked it.
	return waitGone(ctx, st.PID)
}

// goingAway reports whether err, a control request's, says that the
// service is going away: it refused the request as stopping, closed the
// connection without answering, or nobody listens on its socket any more.
// A service that does not answer in time is not going away: it may be
// stuck.
func goingAway(err error) bool {
	var ae *localapi.Error
	return errors.Is(err, localapi.ErrConnClosed) || errors.Is(err, localapi.ErrNotRunning) ||
		errors.As(err, &ae) && ae.Code == localapi.CodeUnavailable
}

// waitGone waits until process pid, a service that is stopping, has
// exited, or until ctx ends.
func waitGone(ctx context.Context, pid int) (int, error) {
	for alive(pid) {
		select {
		case <-ctx.Done():
			return pid, fmt.Errorf("node: service pid %d did not stop: %w", pid, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return pid, nil
}

// socketListening reports whether a process listens on the unix socket at
// path: connecting is refused (ECONNREFUSED) or finds no file (ENOENT)
// only when none does. A stopped or stuck service still listens (the
// kernel queues the connection).
func socketListening(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return true
	}
	return !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOTDIR)
}

// registrationOf reads the runtime directory's registration of pid.
func registrationOf(pid int) (registration, bool) {
	b, err := os.ReadFile(registrationPath(RuntimeDir(), pid))
	if err != nil {
		return registration{}, false
	}
	var r registration
	if json.Unmarshal(b, &r) != nil || r.PID != pid {
		return registration{}, false
	}
	return r, true
}

// terminate stops a service that cannot be asked (its control socket is
// gone) with SIGTERM, which it handles as a stop request, and waits until
// it has exited.
func terminate(ctx context.Context, pid int) (int, error) {
	// ESRCH: it has exited since it was found (another command stopped
	// it).
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return 0, fmt.Errorf("node: stopping service pid %d: %w", pid, err)
	}
	return waitGone(ctx, pid)
}

// lockPIDFile takes the instance's pid file, locked (flock) and holding
// this process's pid, or reports ErrAlreadyRunning when another service
// of the instance holds it. The lock goes with the process, so a file left
// by a killed service is simply taken over.
func lockPIDFile(l Layout) (*os.File, error) {
	// Owner-only (lockExclusive): another user who can open the file could
	// hold a shared lock on it and keep the service from starting.
	f, held, err := lockExclusive(l.PIDFile())
	switch {
	case err != nil:
		return nil, fmt.Errorf("node: pid file: %w", err)
	case held:
		if st, perr := probe(l); perr == nil {
			return nil, fmt.Errorf("%w: instance %s (pid %d)", ErrAlreadyRunning, l.Dir, st.PID)
		}
		if pid, ok := pidFromFile(l); ok {
			if serviceReady(pid) {
				// Ready once, and not answering now.
				return nil, fmt.Errorf("%w: instance %s (pid %d): it %s", ErrAlreadyRunning, l.Dir, pid, unansweredService(l, pid))
			}
			return nil, fmt.Errorf("%w: instance %s (pid %d, starting)", ErrAlreadyRunning, l.Dir, pid)
		}
		return nil, fmt.Errorf("%w: instance %s (starting)", ErrAlreadyRunning, l.Dir)
	}
	if _, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("node: pid file: %w", err)
	}
	return f, nil
}

// pidFileLocked reports whether a service (running, or starting) holds
// the instance's pid file.
func pidFileLocked(l Layout) bool {
	f, err := os.Open(l.PIDFile())
	if err != nil {
		return false
	}
	defer f.Close()
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
	if err == nil {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	}
	return errors.Is(err, syscall.EWOULDBLOCK)
}

// waitStarted waits while a service of l is starting (it holds the pid
// file but does not listen on its socket yet, and has not registered), or
// until ctx ends. A service that registered has been ready: if it does not
// listen, its socket file is gone, and waiting would not help.
//
// It returns the pid of the instance's service once that is ready (it
// holds the pid file, and listens or has registered), and 0 when no
// service holds the pid file or ctx ended first.
func waitStarted(ctx context.Context, l Layout) int {
	for {
		// The pid first: a service that listens has held the pid file
		// since before, and holds it until after its socket is gone.
		pid, ok := pidFromFile(l)
		locked := pidFileLocked(l)
		if !ok || !locked || !alive(pid) {
			pid = 0
		}
		if socketListening(l.Socket()) || !locked {
			return pid
		}
		if pid > 0 && serviceReady(pid) {
			return pid
		}
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// unansweredStatus is what `service status` shows of a registered service
// that does not answer (stopped with SIGSTOP, or stuck): its pid and
// instance, its peer id (from its registration, else from the identity
// key) and its start time (from /proc), Online false, and empty lists.
func unansweredStatus(r registration) localapi.Status {
	st := localapi.Status{PID: r.PID, Instance: r.Instance, ListenAddrs: []string{}, Addrs: []string{}, PeerID: r.PeerID}
	if st.PeerID == "" { // registered by an older version
		if id, err := PeerIDOf(Layout{Dir: r.Instance}); err == nil {
			st.PeerID = id.String()
		}
	}
	if t, ok := procStartTime(r.PID); ok {
		st.StartedAt = t
		st.Uptime = localapi.Duration(time.Since(t))
	}
	return st
}

// procStartTime returns when process pid started: its start in clock
// ticks since boot (/proc/<pid>/stat) after the boot time (btime in
// /proc/stat). Linux reports ticks to user space as USER_HZ, 100 per
// second.
func procStartTime(pid int) (time.Time, bool) {
	ticks, ok := datastore.ProcessStart(pid)
	if !ok {
		return time.Time{}, false
	}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, found := strings.CutPrefix(line, "btime "); found {
			boot, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return time.Time{}, false
			}
			const userHZ = 100
			return time.Unix(boot, 0).Add(time.Duration(ticks) * time.Second / userHZ), true
		}
	}
	return time.Time{}, false
}

// registerInterval is how often a running service checks its
// registration. A variable only so that tests can shorten it.
var registerInterval = time.Minute

// keepRegistered puts the service's registration back when it is gone and
// keeps it fresh, until ctx ends. A service runs for months, and its
// registration does not always last that long: XDG_RUNTIME_DIR is removed
// when its user's last session ends (a service started over ssh outlives
// the login), and systemd-tmpfiles deletes files in /tmp that nobody has
// touched for 10 days. Without it, `service status` would not list the
// service and `service stop PID` would not find it.
func keepRegistered(ctx context.Context, l Layout, id peer.ID, logger *slog.Logger, registered bool) {
	path := registrationPath(RuntimeDir(), os.Getpid())
	t := time.NewTicker(registerInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fi, err := os.Stat(path)
		switch {
		case err == nil:
			if time.Since(fi.ModTime()) > time.Hour {
				now := time.Now()
				_ = os.Chtimes(path, now, now)
			}
			registered = true
			continue
		case !errors.Is(err, os.ErrNotExist):
			continue
		}
		if ctx.Err() != nil {
			return // stopping: the registration is being removed
		}
		// The deferred unregister of RunService removes the same path.
		if _, err := register(l, id); err != nil {
			if registered {
				logger.Warn("cannot register in runtime dir again", "err", err)
			}
			registered = false
			continue
		}
		if ctx.Err() != nil {
			_ = os.Remove(path)
			return
		}
		if !registered {
			logger.Info("registered in runtime dir again", "dir", RuntimeDir())
		} else {
			logger.Info("registration was removed; registered again", "dir", RuntimeDir())
		}
		registered = true
	}
}

// instanceCheckInterval is how often a running service checks that its
// instance directory still exists. A variable only so that tests can
// shorten it.
var instanceCheckInterval = 2 * time.Second

// watchInstanceDir closes deleted once the instance directory has been
// deleted (its link count, through a descriptor held open, is 0), and
// returns then or when ctx ends. A directory moved elsewhere is not
// deleted: its service runs on, reachable through the socket at the new
// path, and `service stop PID` stops it.
func watchInstanceDir(ctx context.Context, d *os.File, deleted chan<- struct{}) {
	defer d.Close()
	t := time.NewTicker(instanceCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var st syscall.Stat_t
		if err := syscall.Fstat(int(d.Fd()), &st); err == nil && st.Nlink == 0 {
			close(deleted)
			return
		}
	}
}
