package node_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/coattail/coattail/datastore"
	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
)

// apiRoutes are the control API's routes, with {id} where a path value goes.
var apiRoutes = []struct{ method, path string }{
	{http.MethodGet, "/status"},
	{http.MethodPost, "/stop"},
	{http.MethodGet, "/actions"},
	{http.MethodPost, "/actions/perform"},
	{http.MethodPost, "/actions/publish"},
	{http.MethodPost, "/tokens"},
	{http.MethodGet, "/tokens"},
	{http.MethodGet, "/tokens/{id}"},
	{http.MethodDelete, "/tokens/{id}"},
	{http.MethodPost, "/validations/issue"},
	{http.MethodPost, "/validations"},
	{http.MethodGet, "/validations"},
	{http.MethodGet, "/validations/{id}"},
	{http.MethodDelete, "/validations/{id}"},
	{http.MethodPost, "/peers"},
	{http.MethodGet, "/peers"},
	{http.MethodGet, "/peers/{id}"},
	{http.MethodDelete, "/peers/{id}"},
	{http.MethodPost, "/subscriptions"},
	{http.MethodPost, "/subscriptions/remove"},
	{http.MethodGet, "/subscriptions"},
	{http.MethodGet, "/subscribers"},
	{http.MethodDelete, "/subscribers/{id}"},
	{http.MethodGet, "/deadletters"},
	{http.MethodPost, "/deadletters/{id}/replay"},
	{http.MethodDelete, "/deadletters/{id}"},
	{http.MethodPatch, "/status"},
	{http.MethodGet, "/no/such/route"},
}

// fuzzNode is an offline node (no network, in-memory datastore) with an
// in-process action and receiver, shared by every input of one fuzzing
// process: building a node per input would dominate the run.
func fuzzNode(f *testing.F) *node.Node {
	f.Helper()
	l, err := node.CreateInstance(filepath.Join(f.TempDir(), "inst"), node.CreateOptions{Port: 0, Loopback: true})
	if err != nil {
		f.Fatal(err)
	}
	db := datastore.NewMemory()
	n, err := node.New(node.Options{Dir: l.Dir, Config: node.LoopbackConfig(0), DB: db, Offline: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = n.Close(); _ = db.Close() })
	if err := n.Start(context.Background()); err != nil {
		f.Fatal(err)
	}
	echo := func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) { return in, nil }
	if err := n.RegisterAction("echo", echo); err != nil {
		f.Fatal(err)
	}
	if err := n.RegisterReceiver("recv", echo); err != nil {
		f.Fatal(err)
	}
	return n
}

// FuzzControlAPI sends arbitrary requests to the control API handler. The
// socket is owner-only, but the API still parses JSON bodies, path values
// and queries from programs (receivers, scripts) that may pass through
// whatever they were given. It checks that no request panics or gets an
// internal error for bad input, that every answer is well-formed JSON
// (an error has a code and a message; a stream is JSON lines), and that a
// raw token never appears in any answer but the one that issued it.
func FuzzControlAPI(f *testing.F) {
	n := fuzzNode(f)
	h := n.Handler(func() {})
	var mu sync.Mutex
	var issued []string // raw tokens handed out so far

	f.Add(uint8(0), "", "", []byte(nil))
	f.Add(uint8(3), "", "", []byte(`{"action":"echo","input":{"a":[1,2,3]}}`))
	f.Add(uint8(3), "", "", []byte(`{"action":"echo","input":1,"notify":true,"to":["x"],"hop":3}`))
	f.Add(uint8(4), "", "", []byte(`{"action":"orders.created","data":{"id":1}}`))
	f.Add(uint8(5), "", "", []byte(`{"perform":["a.*"],"publish":[">"],"subscribe":[],"bearers":["ipv4://10.0.0.0/8"],"expires_in":"1h"}`))
	f.Add(uint8(5), "", "", []byte(`{"perform":["a b"],"bearers":["vt://nobody"]}`))
	// Regression: invalid issue options (auth.ErrOptions) were answered as
	// an internal error (500) instead of a bad request.
	f.Add(uint8(5), "", "", []byte(`{"BeArers":[""]}`))
	f.Add(uint8(7), "3f0c1d9e-0000-4000-8000-000000000000", "", []byte(nil))
	f.Add(uint8(8), "../../etc/passwd", "", []byte(nil))
	f.Add(uint8(9), "", "", []byte(`{"not_before":"1s","expires_in":"2h"}`))
	f.Add(uint8(10), "", "", []byte(`{"token":"eyJhbGciOiJFZERTQSJ9.e30.AAAA"}`))
	f.Add(uint8(14), "", "", []byte(`{"token":"a.b.c"}`))
	f.Add(uint8(18), "", "", []byte(`{"peer":"12D3KooWxyz","pattern":"orders.>","receiver":"recv"}`))
	f.Add(uint8(19), "", "", []byte(`{"peer":"x","pattern":"a","force":true}`))
	f.Add(uint8(2), "", "receivers=1&peer=", []byte(nil))
	f.Add(uint8(2), "", "peer=%zz", []byte(nil))
	f.Add(uint8(24), "sub.00000000000000000001", "", []byte(nil))
	f.Add(uint8(3), "", "", []byte(`{"action":"echo"} {"action":"echo"}`))
	f.Add(uint8(5), "", "", []byte(`{"perform":[`+strings.Repeat(`"a",`, 200)+`"a"]}`))
	f.Fuzz(func(t *testing.T, sel uint8, id, query string, body []byte) {
		rt := apiRoutes[int(sel)%len(apiRoutes)]
		path := localapi.Prefix + strings.ReplaceAll(rt.path, "{id}", id)
		if query != "" {
			path += "?" + query
		}
		var rd io.Reader // a nil body stays a nil interface
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := http.NewRequest(rt.method, "http://coattail"+path, rd)
		if err != nil {
			return // not a request a client can send
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		res := rec.Result()
		out := rec.Body.Bytes()

		if res.StatusCode == http.StatusInternalServerError {
			t.Fatalf("%s %s %q: internal error for caller input: %s", rt.method, path, body, out)
		}
		if res.StatusCode >= 300 && res.StatusCode < 400 {
			return // ServeMux redirects unclean paths ("/a/../b") to their clean form
		}
		switch ct := res.Header.Get("Content-Type"); ct {
		case "application/json":
			if !json.Valid(out) {
				t.Fatalf("%s %s: answer is not JSON: %q", rt.method, path, out)
			}
			if res.StatusCode >= 400 {
				var e localapi.Error
				if err := json.Unmarshal(out, &e); err != nil || e.Code == "" || e.Message == "" {
					t.Fatalf("%s %s: error answer without code or message: %s", rt.method, path, out)
				}
			}
		case "application/x-ndjson":
			sc := bufio.NewScanner(bytes.NewReader(out))
			sc.Buffer(nil, 4<<20)
			last := localapi.StreamLine{}
			for sc.Scan() {
				if err := json.Unmarshal(sc.Bytes(), &last); err != nil {
					t.Fatalf("%s %s: stream line %q: %v", rt.method, path, sc.Bytes(), err)
				}
			}
			if last.Result == nil && last.Error == nil {
				t.Fatalf("%s %s: stream did not end with a result or an error: %q", rt.method, path, out)
			}
		default:
			t.Fatalf("%s %s: answer of type %q: %q", rt.method, path, ct, out)
		}

		// Secrets: only the issuing answers carry a raw token.
		mu.Lock()
		defer mu.Unlock()
		issuing := rt.method == http.MethodPost && (rt.path == "/tokens" || rt.path == "/validations/issue")
		if !issuing {
			for _, tok := range issued {
				if bytes.Contains(out, []byte(tok)) {
					t.Fatalf("%s %s echoed a raw token: %s", rt.method, path, out)
				}
			}
		} else if res.StatusCode == http.StatusOK && len(issued) < 64 {
			var tok struct {
				Token string `json:"token"`
			}
			if json.Unmarshal(out, &tok) == nil && tok.Token != "" {
				issued = append(issued, tok.Token)
			}
		}
	})
}
