package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/coattail/coattail/node/localapi"
)

// The actions listing reads its query parameters strictly: receivers=0 or
// false lists actions (it listed receivers: any non-empty value counted as
// true), a value that is not a boolean and an empty peer are refused.
func TestControlActionsQuery(t *testing.T) {
	n := newTestNode(t)
	echo := func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) { return in, nil }
	if err := n.RegisterAction("act", echo); err != nil {
		t.Fatal(err)
	}
	if err := n.RegisterReceiver("recv", echo); err != nil {
		t.Fatal(err)
	}
	h := n.Handler(nil)
	get := func(query string) (int, []localapi.ActionInfo, localapi.Error) {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "http://coattail/v1/actions?"+query, nil))
		var infos []localapi.ActionInfo
		var e localapi.Error
		if rec.Code == http.StatusOK {
			if err := json.Unmarshal(rec.Body.Bytes(), &infos); err != nil {
				t.Fatalf("?%s: %v: %s", query, err, rec.Body.Bytes())
			}
		} else if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
			t.Fatalf("?%s: %v: %s", query, err, rec.Body.Bytes())
		}
		return rec.Code, infos, e
	}
	for q, want := range map[string]string{"": "act", "receivers=0": "act", "receivers=false": "act", "receivers=1": "recv", "receivers=true": "recv"} {
		code, infos, e := get(q)
		if code != http.StatusOK || len(infos) != 1 || infos[0].Name != want {
			t.Errorf("?%s: %d %+v %v; want only %s", q, code, infos, e, want)
		}
	}
	for _, q := range []string{"receivers=maybe", "receivers=", "peer=", "receivers=1&peer="} {
		if code, infos, e := get(q); code != http.StatusBadRequest || e.Code != localapi.CodeBadRequest {
			t.Errorf("?%s: %d %+v %+v; want a bad request", q, code, infos, e)
		}
	}
}

// A path with "." or ".." segments or "//" (an id of "..", sent unescaped
// by a script) is refused with a JSON error: ServeMux answered it with an
// HTML redirect to another route (DELETE /v1/tokens/.. to /v1). An id of
// ".." sent escaped reaches its route and is refused there.
func TestControlUncleanPaths(t *testing.T) {
	n := newTestNode(t)
	h := n.Handler(nil)
	for _, c := range []struct{ method, path string }{
		{http.MethodGet, "/v1/tokens/.."},
		{http.MethodDelete, "/v1/tokens/.."},
		{http.MethodDelete, "/v1/peers/."},
		{http.MethodPost, "/v1/deadletters/../replay"},
		{http.MethodGet, "//v1/status"},
		{http.MethodGet, "/v1/./status"},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(c.method, "http://coattail"+c.path, nil))
		var e localapi.Error
		if rec.Code != http.StatusBadRequest || rec.Header().Get("Content-Type") != "application/json" ||
			json.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Code != localapi.CodeBadRequest {
			t.Errorf("%s %s: %d %s %q; want a JSON bad request", c.method, c.path, rec.Code, rec.Header().Get("Content-Type"), rec.Body.Bytes())
		}
	}
	c := localapi.InProcess(h)
	defer c.Close()
	for _, id := range []string{".", ".."} {
		err := c.RevokeToken(testCtx(t), id)
		var le *localapi.Error
		if !errors.As(err, &le) || le.Status/100 != 4 || !strings.Contains(le.Message, `"`+id+`"`) {
			t.Errorf("revoke %q: %v; want a refusal naming the id", id, err)
		}
	}
	if _, err := c.Status(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

// A request body is one JSON value and nothing else: trailing data is
// refused whatever it starts with (a '}' or ']' after the value was
// accepted), white space after it is fine.
func TestControlBodyTrailingData(t *testing.T) {
	n := newTestNode(t)
	h := n.Handler(nil)
	post := func(body string) (int, localapi.Error) {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "http://coattail/v1/tokens", strings.NewReader(body)))
		var e localapi.Error
		if rec.Code != http.StatusOK {
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
				t.Fatalf("%q: %d %q", body, rec.Code, rec.Body.Bytes())
			}
		}
		return rec.Code, e
	}
	for _, body := range []string{`{}`, "{} \n\t ", `{"perform":["a"]}` + "\n"} {
		if code, e := post(body); code != http.StatusOK {
			t.Errorf("%q: %d %+v; want 200", body, code, e)
		}
	}
	for _, body := range []string{`{}}`, `{}]`, `{} {}`, `{} x`, `{}"`, `{},`} {
		if code, e := post(body); code != http.StatusBadRequest || e.Code != localapi.CodeBadRequest {
			t.Errorf("%q: %d %+v; want a bad request", body, code, e)
		}
	}
	if code, e := post(`{"perform":["a"],"nope":1}`); code != http.StatusBadRequest || !strings.Contains(e.Message, "nope") {
		t.Errorf("unknown field: %d %+v; want a bad request naming it", code, e)
	}
}
