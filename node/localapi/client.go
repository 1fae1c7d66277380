package localapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"syscall"
	"time"
)

// ErrNotRunning is returned when no service answers on the socket.
var ErrNotRunning = errors.New("localapi: service not running")

// ErrAnswerTooLarge is returned for an answer over MaxAnswer bytes, or a
// line of a streamed answer over MaxStreamLine bytes.
var ErrAnswerTooLarge = errors.New("localapi: answer too large")

// Answer size limits of the client. The service's largest answers are
// listings (64 MiB holds some 200,000 subscriptions) and a perform's
// result line (its output is at most limits.max_output, itself at most
// 64 MiB, and JSON escaping can grow it); whatever answers on the socket,
// a broken service or another program, cannot make the client read more.
const (
	MaxAnswer     = 64 << 20  // a whole answer that is not streamed
	MaxStreamLine = 128 << 20 // one line of a streamed answer
)

// Client talks to one instance's control API.
type Client struct {
	hc    *http.Client
	close func() error
}

// Dial returns a client for the service listening on the unix socket at
// path. It does not connect until the first call.
func Dial(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "unix", path)
			if err != nil {
				return nil, fmt.Errorf("%w: %v", ErrNotRunning, err)
			}
			return c, nil
		},
		MaxIdleConns:    4,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{hc: &http.Client{Transport: tr, CheckRedirect: noRedirects}, close: func() error { tr.CloseIdleConnections(); return nil }}
}

// noRedirects makes a redirect an answer like any other (an error, as it is
// not 2xx): the control API never redirects, and following one would send
// the request, or a GET made of it, to a route the caller did not name.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// InProcess returns a client that serves requests with h in this process,
// over an in-memory connection, so the exact same HTTP path is exercised as
// over the socket. Close stops the in-memory server, waiting (up to
// inProcessDrain) for handlers still running: a request the caller gave up
// on (Ctrl-C) may still be in its handler, and the caller closes the node
// and its datastore right after Close.
func InProcess(h http.Handler) *Client {
	l := newPipeListener()
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l) //nolint:errcheck // returns when the listener closes
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return l.dial(ctx) }}
	return &Client{hc: &http.Client{Transport: tr, CheckRedirect: noRedirects}, close: func() error {
		tr.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), inProcessDrain)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			return errors.Join(err, srv.Close())
		}
		return nil
	}}
}

// inProcessDrain bounds how long closing an in-process client waits for
// running handlers (their requests were cancelled; they end soon).
const inProcessDrain = 10 * time.Second

// Close releases the client's connections.
func (c *Client) Close() error { return c.close() }

// Do sends a JSON request and decodes a JSON answer into out (if non-nil).
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body := &capReader{r: resp.Body, left: MaxAnswer}
	if out == nil {
		if _, err := io.Copy(io.Discard, body); errors.Is(err, ErrAnswerTooLarge) {
			return tooLarge(method, path, MaxAnswer)
		}
		return nil
	}
	if err := json.NewDecoder(body).Decode(out); err != nil {
		if errors.Is(err, ErrAnswerTooLarge) {
			return tooLarge(method, path, MaxAnswer)
		}
		return fmt.Errorf("localapi: decode answer to %s %s: %w", method, path, err)
	}
	return nil
}

func tooLarge(method, path string, limit int) error {
	return fmt.Errorf("%w: the answer to %s %s%s is over the limit of %d MiB (is the socket a coattail service of this version?)",
		ErrAnswerTooLarge, method, Prefix, path, limit>>20)
}

// capReader reads at most left bytes of r; reading more is an error,
// ErrAnswerTooLarge, not the end of the answer.
type capReader struct {
	r    io.Reader
	left int64
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		// One byte more tells an answer of exactly the limit from a
		// longer one.
		var b [1]byte
		n, err := c.r.Read(b[:])
		if n > 0 {
			return 0, ErrAnswerTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}

func (c *Client) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://coattail"+Prefix+path, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		var oe *net.OpError
		if ctx.Err() == nil && !errors.Is(err, ErrNotRunning) && !(errors.As(err, &oe) && oe.Op == "dial") {
			// Sent, or being sent, and no answer: the service went away.
			// net/http's own words for it name its internals
			// ("readLoopPeekFailLocked: read unix @->/tmp/...").
			return nil, &closedError{err: err}
		}
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		e := &Error{Status: resp.StatusCode}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, e) != nil || e.Message == "" {
			e.Code, e.Message = CodeInternal, fmt.Sprintf("control API: %s %s: HTTP %d", method, path, resp.StatusCode)
		}
		if e.Code == "" {
			e.Code = CodeInternal // every Error has a code callers can switch on
		}
		return nil, e
	}
	return resp, nil
}

// Stream sends a request whose answer is newline-delimited StreamLines:
// onLog gets each log line as it arrives; the final result is decoded into
// out.
func (c *Client) Stream(ctx context.Context, method, path string, in, out any, onLog func(string)) error {
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), MaxStreamLine)
	for sc.Scan() {
		var l StreamLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return fmt.Errorf("localapi: bad stream line: %w", err)
		}
		switch {
		case l.Error != nil:
			if l.Error.Code == "" {
				l.Error.Code = CodeInternal
			}
			if l.Error.Message == "" {
				l.Error.Message = fmt.Sprintf("control API: %s %s: failed without a message", method, path)
			}
			return l.Error
		case l.Log != nil:
			if onLog != nil {
				onLog(*l.Log)
			}
		case l.Result != nil:
			if out == nil {
				return nil
			}
			return json.Unmarshal(l.Result, out)
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return tooLarge(method, path, MaxStreamLine)
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return &closedError{err: err}
		}
		return fmt.Errorf("localapi: stream: %w", err)
	}
	return errors.New("localapi: stream ended without a result (was the service stopped?)")
}

// ErrConnClosed matches (errors.Is) the error of a request the service
// closed the connection of before answering it.
var ErrConnClosed = errors.New("localapi: the service closed the connection")

// closedError is a request the service closed the connection of before
// answering it (it stopped, or crashed): whether it did what was asked
// cannot be known from here.
type closedError struct{ err error }

func (e *closedError) Is(target error) bool { return target == ErrConnClosed }

func (e *closedError) Error() string {
	why := "the connection was closed"
	if errors.Is(e.err, syscall.ECONNRESET) {
		why = "the connection was reset"
	} else if !errors.Is(e.err, io.EOF) && !errors.Is(e.err, io.ErrUnexpectedEOF) {
		why = e.err.Error()
	}
	return "localapi: the service closed the connection before answering (was it stopped, or did it crash? see its log): " + why
}

func (e *closedError) Unwrap() error { return e.err }

// pipeListener is a net.Listener whose connections are in-memory pipes.
type pipeListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) dial(ctx context.Context) (net.Conn, error) {
	a, b := net.Pipe()
	select {
	case l.ch <- a:
		return b, nil
	case <-l.done:
		return nil, ErrNotRunning
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "in-process" }
