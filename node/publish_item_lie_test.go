package node_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
	"github.com/libp2p/go-libp2p/core/network"
)

// A peer of publish 1.3.0 that names an item in a refusal that is not
// about one publication (forbidden, unavailable: a lying or buggy peer)
// is not taken at its word: the error is not an item refusal (whose
// message leaves out how many the peer stored, and which the CLI would
// report as that line refused, or, for a forbidden, as the whole batch
// refused with the lines the peer stored counted as not published, so
// that publishing again from there published them twice). It says how
// many the peer stored, as any refusal mid-batch does.
func TestRemotePublishItemOnlyForItemRefusals(t *testing.T) {
	for _, code := range []wire.Code{wire.CodeForbidden, wire.CodeUnavailable, wire.CodeNotFound} {
		t.Run(string(code), func(t *testing.T) {
			a := newTestNode(t, withQuietLog())
			b := newTestNode(t, withQuietLog())
			pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Publish: []string{"x.>"}})
			ok := jsonFrame(t, wire.TOK, wire.OK{MaxFrame: 64<<10 + 40}) // one publication a frame
			stored := jsonFrame(t, wire.TResult, wire.PublishResult{Accepted: 1, LastSeq: 1, Published: 1})
			refused := jsonFrame(t, wire.TError, wire.Error{Code: code, Message: "no", Item: 1})
			a.Host().SetStreamHandler(wire.ProtoPublish13, func(s network.Stream) {
				defer s.Close()
				r := wire.NewReader(s, 0)
				var h wire.Hello
				if err := r.Expect(wire.THello, &h); err != nil {
					_ = s.Reset()
					return
				}
				_, _ = s.Write(ok)
				if _, _, err := r.Next(); err != nil {
					return
				}
				_, _ = s.Write(stored)
				if _, _, err := r.Next(); err != nil {
					return
				}
				_, _ = s.Write(refused)
			})
			body, err := json.Marshal(localapi.PublishRequest{Peer: pid, Action: "x.a", Batch: []json.RawMessage{
				json.RawMessage(`1`), json.RawMessage(`2`), json.RawMessage(`3`),
			}})
			if err != nil {
				t.Fatal(err)
			}
			rec := httptest.NewRecorder()
			b.Handler(nil).ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "http://coattail/v1/actions/publish", strings.NewReader(string(body))))
			var e localapi.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
				t.Fatalf("answer %d %q: %v", rec.Code, rec.Body.Bytes(), err)
			}
			if e.Item != 0 || e.Done != 0 || !strings.Contains(e.Message, "stored 1 of 3 publications") {
				t.Errorf("publish --peer of 3 to a peer that stored 1 then refused %s naming item 1: %d %+v; want no item, the message saying it stored 1 of 3", code, rec.Code, e)
			}
		})
	}
}
