package localapi_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/node/localapi"
)

// serveUnix serves h on a unix socket in a temporary directory, as a
// service (or whatever else listens there) would, and returns its path.
func serveUnix(t *testing.T, h http.Handler) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln) //nolint:errcheck // returns when closed
	t.Cleanup(func() { _ = srv.Close() })
	return path
}

// padding writes n bytes of 'a'.
func padding(w io.Writer, n int) {
	chunk := bytes.Repeat([]byte("a"), 1<<20)
	for n > 0 {
		k := min(n, len(chunk))
		if _, err := w.Write(chunk[:k]); err != nil {
			return
		}
		n -= k
	}
}

// A server that answers more than MaxAnswer bytes (a broken service, or
// another program on the socket) gets a clear error, not a client that
// reads and allocates for as long as the answer goes on; an answer of
// exactly the limit is read.
func TestControlClientAnswerLimit(t *testing.T) {
	// A JSON string of n bytes in all: `["` + padding + `"]`.
	list := func(n int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `["`)
			padding(w, n-4)
			_, _ = io.WriteString(w, `"]`)
		}
	}
	mux := http.NewServeMux()
	mux.Handle("GET /v1/peers", list(localapi.MaxAnswer))
	mux.Handle("GET /v1/subscriptions", list(localapi.MaxAnswer+1))
	mux.HandleFunc("DELETE /v1/tokens/{id}", func(w http.ResponseWriter, r *http.Request) {
		padding(w, localapi.MaxAnswer+1)
	})
	mux.HandleFunc("POST /v1/actions/perform", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"log":"`)
		padding(w, localapi.MaxStreamLine)
		_, _ = io.WriteString(w, "\"}\n")
	})
	c := localapi.Dial(serveUnix(t, mux))
	defer c.Close()
	// Each call moves and decodes 64 MiB or more: under the race detector,
	// on a loaded 2-core machine, that took more than testCtx's 30 s.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	// Peers decodes the string into []Peer and fails on the type, after
	// reading the whole answer: the limit itself is allowed.
	if _, err := c.Peers(ctx); err == nil || errors.Is(err, localapi.ErrAnswerTooLarge) {
		t.Errorf("answer of exactly MaxAnswer bytes: %v; want a decoding error, not the size limit", err)
	}
	if _, err := c.Subscriptions(ctx); !errors.Is(err, localapi.ErrAnswerTooLarge) || !strings.Contains(err.Error(), "/v1/subscriptions") {
		t.Errorf("answer over MaxAnswer bytes: %v; want ErrAnswerTooLarge naming the route", err)
	}
	if err := c.RevokeToken(ctx, "x"); !errors.Is(err, localapi.ErrAnswerTooLarge) {
		t.Errorf("discarded answer over MaxAnswer bytes: %v; want ErrAnswerTooLarge", err)
	}
	if _, err := c.Perform(ctx, localapi.PerformRequest{Action: "a"}, nil); !errors.Is(err, localapi.ErrAnswerTooLarge) {
		t.Errorf("stream line over MaxStreamLine bytes: %v; want ErrAnswerTooLarge", err)
	}
}
