package localapi_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coattail/coattail/node/localapi"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// recorder is a control API stand-in that records the requests it gets.
type recorder struct {
	mu   sync.Mutex
	reqs []string
}

func (rc *recorder) add(r *http.Request) {
	rc.mu.Lock()
	rc.reqs = append(rc.reqs, r.Method+" "+r.URL.EscapedPath())
	rc.mu.Unlock()
}

func (rc *recorder) got() []string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]string(nil), rc.reqs...)
}

// The client never follows a redirect: a DELETE answered 307 went on to
// DELETE the redirect's target, a POST answered 301 became a GET of it.
func TestClientDoesNotFollowRedirects(t *testing.T) {
	var rec recorder
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		rec.add(r)
		switch r.URL.Path {
		case "/v1/tokens/x":
			http.Redirect(w, r, "/v1/stop", http.StatusTemporaryRedirect)
		case "/v1/subscriptions":
			http.Redirect(w, r, "/v1/status", http.StatusMovedPermanently)
		default:
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte("{}"))
		}
	})
	c := localapi.InProcess(mux)
	defer c.Close()
	err := c.RevokeToken(testCtx(t), "x")
	var le *localapi.Error
	if !errors.As(err, &le) || le.Status != http.StatusTemporaryRedirect || le.Code != localapi.CodeInternal {
		t.Errorf("revoke answered with a redirect: %v (%+v); want an error with status 307", err, le)
	}
	_, err = c.Subscribe(testCtx(t), localapi.SubscribeRequest{Peer: "p", Pattern: "a", Receiver: "r"})
	if !errors.As(err, &le) || le.Status != http.StatusMovedPermanently {
		t.Errorf("subscribe answered with a redirect: %v (%+v); want an error with status 301", err, le)
	}
	want := []string{"DELETE /v1/tokens/x", "POST /v1/subscriptions"}
	if got := rec.got(); len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("requests %q; want only %q", got, want)
	}
}

// An id of "." or ".." reaches the service as that id, not as a path that
// cleans to another route.
func TestClientEscapesDotIDs(t *testing.T) {
	var rec recorder
	var mu sync.Mutex
	var ids []string
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/{kind}/{id}", func(w http.ResponseWriter, r *http.Request) {
		rec.add(r)
		mu.Lock()
		ids = append(ids, r.PathValue("id"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("{}"))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		rec.add(r)
		http.Error(w, `{"code":"not_found","message":"no route"}`, http.StatusNotFound)
	})
	c := localapi.InProcess(mux)
	defer c.Close()
	for _, id := range []string{".", "..", "a/b", "x y"} {
		if err := c.RevokeToken(testCtx(t), id); err != nil {
			t.Errorf("revoke %q: %v (requests so far %q)", id, err, rec.got())
		}
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{".", "..", "a/b", "x y"}
	if len(ids) != len(want) {
		t.Fatalf("ids %q; want %q", ids, want)
	}
	for i := range want {
		if ids[i] != want[i] {
			t.Errorf("id %q reached the service as %q", want[i], ids[i])
		}
	}
}

// An error answer always comes back as an *Error with a code and a
// message, whatever the service sent: JSON without a code, a stream error
// line without one, or not JSON at all.
func TestClientErrorAlwaysHasCode(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"message":"busy"}`))
	})
	mux.HandleFunc("GET /v1/tokens", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
		_, _ = w.Write([]byte(`<html>bad gateway</html>`))
	})
	mux.HandleFunc("POST /v1/actions/perform", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		_, _ = w.Write([]byte("{\"log\":\"a\"}\n{\"error\":{}}\n"))
	})
	c := localapi.InProcess(mux)
	defer c.Close()
	check := func(what string, err error, status int) {
		t.Helper()
		var le *localapi.Error
		if !errors.As(err, &le) || le.Code == "" || le.Message == "" || le.Status != status {
			t.Errorf("%s: %v (%+v); want an *Error with status %d, a code and a message", what, err, le, status)
		}
	}
	_, err := c.Status(testCtx(t))
	check("JSON error without a code", err, http.StatusServiceUnavailable)
	_, err = c.Tokens(testCtx(t))
	check("HTML error", err, http.StatusBadGateway)
	_, err = c.Perform(testCtx(t), localapi.PerformRequest{Action: "a"}, nil)
	check("empty stream error", err, 0)
}

// The offline CLI serves its one request in process and closes the node
// right after the client. A request the caller gave up on (Ctrl-C) may
// still be in its handler: Close returned at once, and the handler went on
// to use a closed datastore. Close now waits for running handlers.
func TestInProcessCloseWaitsForHandlers(t *testing.T) {
	started := make(chan struct{})
	var finished sync.WaitGroup
	finished.Add(1)
	done := false
	c := localapi.InProcess(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer finished.Done()
		close(started)
		<-r.Context().Done()               // the caller gave up
		time.Sleep(200 * time.Millisecond) // a handler finishing its work
		done = true
	}))
	ctx, cancel := context.WithCancel(testCtx(t))
	errc := make(chan error, 1)
	go func() { errc <- c.Do(ctx, http.MethodGet, "/v1/slow", nil, nil) }()
	<-started
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("a cancelled request succeeded")
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !done {
		t.Fatal("Close returned while a handler was still running")
	}
	finished.Wait()
}

// A service that goes away after a request was sent (it closes or resets
// the connection without an answer) is reported as such, not in
// net/http's words, which name its internals ("readLoopPeekFailLocked:
// read unix @->/tmp/...: connection reset by peer").
func TestClientServiceGoneBeforeAnswering(t *testing.T) {
	for _, reset := range []bool{false, true} {
		sock := filepath.Join(t.TempDir(), "s")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				if !reset {
					_, _ = c.Read(make([]byte, 4096)) // the request
				} else {
					// Closed with the request unread: the client's read
					// is reset.
					time.Sleep(50 * time.Millisecond)
				}
				_ = c.Close()
			}
		}()
		err = localapi.Dial(sock).Do(testCtx(t), http.MethodPost, "/actions/publish", localapi.PublishRequest{Action: "a"}, nil)
		ln.Close()
		if err == nil || !strings.Contains(err.Error(), "the service closed the connection before answering") || strings.Contains(err.Error(), "readLoop") || strings.Contains(err.Error(), sock) {
			t.Errorf("reset %v: %v, want the service named as gone, without net/http's internals or the socket path", reset, err)
		}
	}
}

// A socket nobody listens on is a service not running, not one that
// closed the connection: StopService and the CLI tell the two apart.
func TestClientNoServiceIsNotRunning(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // the socket file stays, nobody listens: connection refused
	for _, sock := range []string{filepath.Join(dir, "missing"), stale} {
		err := localapi.Dial(sock).Do(testCtx(t), http.MethodGet, "/status", nil, nil)
		if !errors.Is(err, localapi.ErrNotRunning) || errors.Is(err, localapi.ErrConnClosed) {
			t.Errorf("%s: %v, want ErrNotRunning and not ErrConnClosed", filepath.Base(sock), err)
		}
	}
}
