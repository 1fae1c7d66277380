package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// controlSocket serves the control API on the instance's socket file, and
// on a new socket file when that one is removed while the service runs
// (keep).
type controlSocket struct {
	l     Layout
	srv   *http.Server
	slots chan struct{} // controlMaxConns, shared by the listeners
	// failed receives the error that ended the serving of the current
	// socket (http.ErrServerClosed once the server shuts down).
	failed chan error

	mu   sync.Mutex
	cur  *limitListener
	file os.FileInfo // the socket file cur listens on
}

// serveControl listens on l's control socket and serves srv on it.
func serveControl(l Layout, srv *http.Server) (*controlSocket, error) {
	// A socket file left by a crashed service is stale: probe said nobody
	// answers on it.
	_ = os.Remove(l.Socket())
	ln, err := listenPrivate(l.Socket())
	if err != nil {
		return nil, fmt.Errorf("node: control socket: %w", err)
	}
	c := &controlSocket{l: l, srv: srv, slots: make(chan struct{}, controlMaxConns), failed: make(chan error, 1)}
	c.serve(ln)
	return c, nil
}

// serve serves the control API on ln, the listener of the socket file now
// at l.Socket(), in place of the listener before it (closed: nobody can
// connect to a socket whose file is gone; its connections run on).
func (c *controlSocket) serve(ln net.Listener) {
	lln := newLimitListener(ln, c.slots)
	fi, _ := os.Lstat(c.l.Socket())
	c.mu.Lock()
	old := c.cur
	c.cur, c.file = lln, fi
	c.mu.Unlock()
	go func() {
		err := c.srv.Serve(lln)
		if lln.retired.Load() {
			return
		}
		select {
		case c.failed <- err:
		default:
		}
	}()
	if old != nil {
		old.retired.Store(true)
		_ = old.Close()
	}
}

// remove removes the socket file, if it is still the service's: after the
// instance directory was moved, another instance may live at its old path.
func (c *controlSocket) remove() {
	c.mu.Lock()
	mine := c.file
	c.mu.Unlock()
	if fi, err := os.Lstat(c.l.Socket()); err == nil && (mine == nil || os.SameFile(fi, mine)) {
		_ = os.Remove(c.l.Socket())
	}
}

// keep listens on a new socket file, every instanceCheckInterval, when
// the control socket's file has been removed (by a cleaner of /tmp, say),
// until ctx ends. Without it no CLI command could reach the service:
// `service stop` could only signal it, and `service start` would find it
// running. Only a missing file is replaced, and only while l.Dir is still
// the directory dir the service started in: a directory moved away keeps
// its socket, and whatever is now at the old path (another instance,
// perhaps) is not touched; nor is a file someone put in the socket's place.
func (c *controlSocket) keep(ctx context.Context, dir os.FileInfo, logger *slog.Logger) {
	t := time.NewTicker(instanceCheckInterval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := os.Lstat(c.l.Socket()); !errors.Is(err, os.ErrNotExist) {
			continue
		}
		if fi, err := os.Stat(c.l.Dir); err != nil || !os.SameFile(fi, dir) {
			continue
		}
		ln, err := listenPrivate(c.l.Socket())
		if err != nil {
			if !failing {
				logger.Error("the control socket was removed, and a new one cannot be made; stop the service with: kill "+fmt.Sprint(os.Getpid()),
					"socket", c.l.Socket(), "err", err)
			}
			failing = true
			continue
		}
		if ctx.Err() != nil {
			_ = ln.Close() // stopping: the deferred remove takes the file
			return
		}
		failing = false
		c.serve(ln)
		logger.Warn("the control socket was removed; listening on a new one", "socket", c.l.Socket())
	}
}
