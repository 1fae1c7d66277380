package node_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
)

// rawRequest sends method path with body (none if empty) on a new raw
// connection to the control socket and returns the answer's status and
// error body.
func rawRequest(t *testing.T, l node.Layout, method, path, body string) (int, localapi.Error) {
	t.Helper()
	nc, err := net.Dial("unix", l.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(testTimeout))
	req := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", method, path, len(body), body)
	if _, err := io.WriteString(nc, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		t.Fatalf("%s %s %q: %v", method, path, body, err)
	}
	defer resp.Body.Close()
	var e localapi.Error
	if resp.StatusCode != http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
			t.Fatalf("%s %s %q: HTTP %d without a JSON error: %v", method, path, body, resp.StatusCode, err)
		}
	}
	return resp.StatusCode, e
}

// A request body that is empty or not a JSON object is refused with a
// bad request that says so: null decoded as an empty request (POST
// /v1/tokens with null issued a token with the default permissions) and an
// empty body was refused with "EOF".
func TestControlBodyNotObject(t *testing.T) {
	l := runService(t, node.LoopbackConfig(0))
	for _, c := range []struct{ path, body, want string }{
		{"/v1/tokens", "null", "not a JSON object"},
		{"/v1/tokens", " \n null", "not a JSON object"},
		{"/v1/tokens", `"x"`, "not a JSON object"},
		{"/v1/subscriptions", "null", "not a JSON object"},
		{"/v1/actions/perform", "", "empty"},
		{"/v1/tokens", "  ", "empty"},
	} {
		code, e := rawRequest(t, l, http.MethodPost, c.path, c.body)
		if code != http.StatusBadRequest || e.Code != localapi.CodeBadRequest || !strings.Contains(e.Message, c.want) {
			t.Errorf("POST %s %q: HTTP %d %+v; want a bad request saying %q", c.path, c.body, code, e, c.want)
		}
	}
	c := localapi.Dial(l.Socket())
	defer c.Close()
	toks, err := c.Tokens(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(toks) != 0 {
		t.Errorf("%d tokens issued by refused requests", len(toks))
	}
	// A well-formed request still passes, white space before it included.
	if code, e := rawRequest(t, l, http.MethodPost, "/v1/tokens", " \n{\"subscribe\":[\"a\"]}\n"); code != http.StatusOK {
		t.Errorf("issue with a JSON object: HTTP %d %+v", code, e)
	}
}

// A duration too large for a Duration is refused as out of range: it
// wrapped, and expires_in 1e300 was refused as negative (or, for another
// value, could come out as an unrelated positive duration).
func TestControlDurationOutOfRange(t *testing.T) {
	l := runService(t, node.LoopbackConfig(0))
	for _, body := range []string{`{"expires_in":1e300}`, `{"not_before":1e11}`, `{"expires_in":-1e300}`} {
		code, e := rawRequest(t, l, http.MethodPost, "/v1/tokens", body)
		if code != http.StatusBadRequest || e.Code != localapi.CodeBadRequest || !strings.Contains(e.Message, "out of range") {
			t.Errorf("POST /v1/tokens %s: HTTP %d %+v; want a bad request saying out of range", body, code, e)
		}
	}
	// A duration in range is taken as before.
	if code, e := rawRequest(t, l, http.MethodPost, "/v1/tokens", `{"expires_in":3600}`); code != http.StatusOK {
		t.Errorf("issue expiring in an hour: HTTP %d %+v", code, e)
	}
}

// An unsubscribe without a peer or with a pattern that is not one is a bad
// request that says what is wrong; it was answered not found, "no
// subscription to "" at ".
func TestControlUnsubscribeInput(t *testing.T) {
	l := runService(t, node.LoopbackConfig(0))
	for _, body := range []string{`{}`, `{"pattern":"a"}`, `{"peer":"p"}`, `{"peer":"p","pattern":"a b"}`} {
		code, e := rawRequest(t, l, http.MethodPost, "/v1/subscriptions/remove", body)
		if code != http.StatusBadRequest || e.Code != localapi.CodeBadRequest {
			t.Errorf("unsubscribe %s: HTTP %d %+v; want a bad request", body, code, e)
		}
	}
	// A well-formed one that matches nothing is still not found.
	if code, e := rawRequest(t, l, http.MethodPost, "/v1/subscriptions/remove", `{"peer":"p","pattern":"a.>"}`); code != http.StatusNotFound || e.Code != localapi.CodeNotFound {
		t.Errorf("unsubscribe matching nothing: HTTP %d %+v; want not found", code, e)
	}
}
