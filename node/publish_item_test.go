package node_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
)

// A publish batch a peer refuses for one of its publications (over the
// peer's max_payload) says which, as a local one does: the control API's
// error names the item and how many before it the peer stored, so that a
// client (publish --stdin --peer) can publish the rest of those before it.
// The peer's refusal named a publication of a frame the caller never saw,
// and the API error had no item. A peer of publish 1.3.0 says which in the
// error's item; an older one is understood as far as the frames allow (a
// publication over the peer's max_payload goes alone in its frame).
func TestRemotePublishRefusalNamesItem(t *testing.T) {
	a := newTestNode(t, withQuietLog(), withLimits(func(l *node.LimitsConfig) { l.MaxPayload = 1024 }))
	prSubscriber(t, a, "x.>")
	old := newTestNode(t, withQuietLog(), withLimits(func(l *node.LimitsConfig) { l.MaxPayload = 1024 }))
	old.Host().RemoveStreamHandler(wire.ProtoPublish13)
	prSubscriber(t, old, "x.>")
	b := newTestNode(t, withQuietLog())
	h := b.Handler(nil)
	pids := map[*node.Node]string{}
	for _, peer := range []*node.Node{a, old} {
		pids[peer], _ = connectPeers(t, peer, b, localapi.IssueRequest{Publish: []string{"x.>"}})
	}
	// Over max_payload, and over the peer's frame limit too (refused from
	// the frame's header, the publication unread).
	for round, big := range [][]byte{jsonString(2000), jsonString(100 << 10)} {
		for _, peer := range []*node.Node{a, old} {
			pid := pids[peer]
			body, err := json.Marshal(localapi.PublishRequest{Peer: pid, Action: "x.a", Batch: []json.RawMessage{
				json.RawMessage(`1`), json.RawMessage(`2`), big, json.RawMessage(`4`),
			}})
			if err != nil {
				t.Fatal(err)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "http://coattail/v1/actions/publish", strings.NewReader(string(body))))
			var e localapi.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
				t.Fatalf("answer %d %q: %v", rec.Code, rec.Body.Bytes(), err)
			}
			// 1 and 2 went in the frame before big's, and were stored.
			if rec.Code != http.StatusBadGateway || e.Item != 3 || e.Done != 2 ||
				!strings.Contains(e.Message, "(item 3)") || !strings.Contains(e.Message, "limits.max_payload") ||
				strings.Contains(e.Message, "of the batch") {
				t.Errorf("publish --peer of 1, 2, %d bytes, 4 to a peer with max_payload 1KiB: %d %+v; want item 3, done 2", len(big), rec.Code, e)
			}
			if d := prDepth(t, peer); d != uint64(2*(round+1)) {
				t.Errorf("the peer queued %d, want the 2 before the publication refused, each time", d)
			}
		}
	}
}

// On publish 1.3.0 an acceptor refusing a batch for one of its publications
// says which in the error's item (from 1); on the older versions it must
// not send the key, which their publishers' strict decoding refuses.
func TestPublishRefusalItemOn13Only(t *testing.T) {
	a := newTestNode(t, withQuietLog(), withLimits(func(l *node.LimitsConfig) { l.MaxPayload = 1024 }))
	prSubscriber(t, a, "x.>")
	h := newStockHost(t, a)
	tok := issue(t, a, localapi.IssueRequest{Publish: []string{"x.>"}, Bearers: []string{"vt://" + h.ID().String()}})
	refusal := func(proto string, datas ...[]byte) []byte {
		t.Helper()
		s := rawStream(t, h, a, proto)
		rvWrite(t, s, jsonFrame(t, wire.THello, wire.Hello{Token: tok.Token, Version: wire.VersionOf(proto)}))
		r := wire.NewReader(s, 0)
		rvExpect(t, r, wire.TOK, nil)
		rvWrite(t, s, rvBatch("x.a", datas...))
		typ, payload, err := r.Next()
		if err != nil || typ != wire.TError {
			t.Fatalf("%s: frame %v, %v; want an error", proto, typ, err)
		}
		return payload
	}
	for _, c := range []struct {
		datas [][]byte
		code  wire.Code
		item  int
	}{
		{[][]byte{[]byte(`1`), jsonString(2000), []byte(`3`)}, wire.CodeTooLarge, 2},
		{[][]byte{[]byte(`1`), []byte(`2`), []byte(`{nope`)}, wire.CodeBadRequest, 3},
	} {
		var e wire.Error
		if err := wire.DecodeJSON(refusal(wire.ProtoPublish13, c.datas...), &e); err != nil || e.Code != c.code || e.Item != c.item ||
			strings.Contains(e.Message, "of the batch") {
			t.Errorf("publish 1.3.0: %+v, %v; want %s, item %d", e, err, c.code, c.item)
		}
		// As a publisher of these versions decodes it, strictly.
		type oldError struct {
			Code         wire.Code `json:"code"`
			Message      string    `json:"message"`
			RetryAfterMs int64     `json:"retry_after_ms,omitempty"`
		}
		for _, proto := range []string{wire.ProtoPublish12, wire.ProtoPublish11, wire.ProtoPublish} {
			var o oldError
			if err := wire.DecodeJSON(refusal(proto, c.datas...), &o); err != nil || o.Code != c.code {
				t.Errorf("%s: %+v, %v; want %s without item", proto, o, err, c.code)
			}
		}
	}
	if d := prDepth(t, a); d != 0 {
		t.Errorf("queued %d, want none", d)
	}
}
