package node_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
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
