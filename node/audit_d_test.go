package node_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/perf"
	"github.com/coattail/coattail/node/wire"
	"github.com/libp2p/go-libp2p/core/host"
)

// A DeliverHello must name the version of the deliver protocol ID, as a
// Hello must (PROTOCOL.md, "Versioning"): another version is answered
// TError with code version, and a hello naming 1.0.0 is still answered
// with a DeliverAnswer. The version was not looked at: any was accepted.
func TestDeliverHelloVersionChecked(t *testing.T) {
	t.Parallel()
	sub := newTestNode(t, withQuietLog())
	h := newStockHost(t, sub)
	nudge := func(version string) (wire.Type, []byte) {
		t.Helper()
		st, err := h.NewStream(testCtx(t), sub.ID(), wire.ProtoDeliver)
		if err != nil {
			t.Fatalf("opening a deliver stream: %v", err)
		}
		defer st.Close()
		w := wire.NewWriter(st)
		if err := w.JSON(wire.THello, wire.DeliverHello{Version: version, SubscriptionIDs: []string{"3f0c0000-0000-0000-0000-000000000000"}}); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		_ = st.CloseWrite()
		typ, payload, err := wire.NewReader(st, 0).Next()
		if err != nil {
			t.Fatalf("reading the answer to a deliver hello of version %q: %v", version, err)
		}
		return typ, payload
	}
	for _, v := range []string{"9.9.9", wire.Version11, ""} {
		typ, payload := nudge(v)
		if typ != wire.TError {
			t.Errorf("deliver hello of version %q answered with a %s frame, want an error with code version", v, typ)
			continue
		}
		var e wire.Error
		if err := wire.DecodeJSON(payload, &e); err != nil {
			t.Fatal(err)
		}
		if e.Code != wire.CodeVersion || !errors.Is(&e, wire.ErrVersion) {
			t.Errorf("deliver hello of version %q: %v, want code version", v, &e)
		}
	}
	typ, payload := nudge(wire.Version)
	var ans wire.DeliverAnswer
	if typ != wire.TOK || wire.DecodeJSON(payload, &ans) != nil || len(ans.Unknown) != 1 {
		t.Errorf("deliver hello of version %s: %s frame %s, want an OK naming the unknown subscription", wire.Version, typ, payload)
	}
}

// A paced bench says the window it kept (CLI.md, Bench: "paced keeps at
// most --window bytes outstanding"): every publishing goroutine may have a
// batch out, so at 64 KiB (16 per batch, 16 goroutines) that is 16 MiB,
// more than the default 8 MiB window. The result said 8 MiB.
func TestBenchReportsWindowKept(t *testing.T) {
	t.Parallel()
	const size = 64 << 10
	r, err := perf.Delivery(testCtx(t), perf.DeliveryOptions{Size: size, Subscribers: 1, Messages: 300, Paced: true, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if want := perf.DefaultPublishers * perf.BatchFor(size) * size; r.Window != want {
		t.Errorf("paced run at %d bytes reports a window of %d bytes; its %d publishers keep up to %d out", size, r.Window, perf.DefaultPublishers, want)
	}
	r, err = perf.Delivery(testCtx(t), perf.DeliveryOptions{Size: 128, Subscribers: 1, Messages: 300, Paced: true, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if r.Window != perf.DefaultWindow {
		t.Errorf("paced run at 128 bytes reports a window of %d bytes, want the default %d", r.Window, perf.DefaultWindow)
	}
}

// What PROTOCOL.md says list and unsubscribe answer: a list request for
// receivers is refused forbidden (receivers are private to their
// instance), and another peer's subscription is not_found to unsubscribe,
// as a missing one is. It said receivers were listed (with three false
// booleans) and that unsubscribe answers forbidden, which it never does.
func TestProtocolDocListAndUnsubscribeAnswers(t *testing.T) {
	t.Parallel()
	a := newTestNode(t, withQuietLog())
	h, other := newStockHost(t, a), newStockHost(t, a)
	hello := func(h host.Host) []byte {
		tok := issue(t, a, localapi.IssueRequest{Perform: []string{">"}, Subscribe: []string{">"}, Bearers: []string{"vt://" + h.ID().String()}})
		return jsonFrame(t, wire.THello, wire.Hello{Token: tok.Token, Version: wire.Version})
	}

	s := rawStream(t, h, a, wire.ProtoList)
	rvWrite(t, s, hello(h), jsonFrame(t, wire.TRequest, wire.ListRequest{Receivers: true}))
	r := wire.NewReader(s, 0)
	rvExpect(t, r, wire.TOK, nil)
	rvExpectCode(t, r, wire.CodeForbidden)

	s = rawStream(t, other, a, wire.ProtoSubscribe)
	rvWrite(t, s, hello(other), jsonFrame(t, wire.TRequest, wire.SubscribeRequest{Pattern: "orders.>", Receiver: "r"}))
	r = wire.NewReader(s, 0)
	rvExpect(t, r, wire.TOK, nil)
	var sr wire.SubscribeResponse
	rvExpect(t, r, wire.TResult, &sr)
	for _, id := range []string{sr.SubscriptionID, "3f0c0000-0000-0000-0000-000000000000"} {
		u := rawStream(t, h, a, wire.ProtoUnsubscribe)
		rvWrite(t, u, hello(h), jsonFrame(t, wire.TRequest, wire.UnsubscribeRequest{SubscriptionID: id}))
		ur := wire.NewReader(u, 0)
		rvExpect(t, ur, wire.TOK, nil)
		rvExpectCode(t, ur, wire.CodeNotFound)
	}
	if subs := a.Subscribers(); len(subs) != 1 || subs[0].ID != sr.SubscriptionID {
		t.Errorf("after another peer's unsubscribe, subscriptions here: %+v; want %s", subs, sr.SubscriptionID)
	}

	doc, err := os.ReadFile(filepath.Join("..", "docs", "PROTOCOL.md"))
	if err != nil {
		t.Fatal(err)
	}
	list := docSection(t, string(doc), "### ListRequest", "### PerformRequest")
	if !strings.Contains(list, "refuses it with\n`forbidden`") || strings.Contains(list, "For receivers all three are false") {
		t.Errorf("PROTOCOL.md's ListRequest does not say that a request for receivers is refused forbidden:\n%s", list)
	}
	unsub := docSection(t, string(doc), "### UnsubscribeRequest", "### RevokeNotice")
	if strings.Contains(unsub, "`forbidden`") || !strings.Contains(unsub, "another peer's is `not_found`") {
		t.Errorf("PROTOCOL.md's UnsubscribeRequest does not give the answers unsubscribe sends:\n%s", unsub)
	}
}

// docSection returns the text of doc from the line starting with from to
// the next line starting with to.
func docSection(t *testing.T, doc, from, to string) string {
	t.Helper()
	i := strings.Index(doc, "\n"+from)
	if i < 0 {
		t.Fatalf("no %q in the document", from)
	}
	rest := doc[i+1:]
	if j := strings.Index(rest, "\n"+to); j >= 0 {
		return rest[:j]
	}
	return rest
}
