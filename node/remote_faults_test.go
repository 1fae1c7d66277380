package node_test

// Remote perform and publish against hostile or careless callers (found by
// review).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/auth"
	"github.com/coattail/coattail/datastore"
	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
	"github.com/coattail/coattail/topics"
	ds "github.com/ipfs/go-datastore"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// rvExpect reads one frame of type want (failing on anything else).
func rvExpect(t *testing.T, r *wire.Reader, want wire.Type, v any) {
	t.Helper()
	typ, payload, err := r.Next()
	if err != nil {
		t.Fatalf("reading %s: %v", want, err)
	}
	if typ != want {
		t.Fatalf("got %s (%s), want %s", typ, payload, want)
	}
	if v != nil {
		if err := wire.DecodeJSON(payload, v); err != nil {
			t.Fatal(err)
		}
	}
}

// rvExpectCode reads the stream's last frame, an error with the given code.
func rvExpectCode(t *testing.T, r *wire.Reader, code wire.Code) {
	t.Helper()
	if e := readErrorFrame(t, r); e.Code != code {
		t.Fatalf("got error %s (%s), want %s", e.Code, e.Message, code)
	}
}

// rvPublishStream opens a publish stream to a from a plain libp2p host
// holding a publish token for ">", past its hello.
func rvPublishStream(t *testing.T, a *node.Node) (network.Stream, *wire.Reader) {
	t.Helper()
	h := newStockHost(t, a)
	tok := issue(t, a, localapi.IssueRequest{Publish: []string{">"}, Bearers: []string{"vt://" + h.ID().String()}})
	p := rawStream(t, h, a, wire.ProtoPublish)
	pr := wire.NewReader(p, 0)
	rvWrite(t, p, jsonFrame(t, wire.THello, wire.Hello{Token: tok.Token, Version: wire.Version}))
	rvExpect(t, pr, wire.TOK, nil)
	return p, pr
}

func rvWrite(t *testing.T, s network.Stream, frames ...[]byte) {
	t.Helper()
	for _, f := range frames {
		if _, err := s.Write(f); err != nil {
			t.Fatal(err)
		}
	}
}

// rvBatch is a TPublish frame of one publication to subject per data.
func rvBatch(subject string, datas ...[]byte) []byte {
	ps := make([]wire.Publication, len(datas))
	for i, d := range datas {
		ps[i] = wire.Publication{Subject: subject, Data: d, Time: 1}
	}
	return wire.AppendFrame(nil, wire.TPublish, wire.AppendPublishBatch(nil, ps))
}

// A publication received on /coattail/publish keeps its subject: the next
// frame read on the same stream (here one refused as forbidden, laid out
// alike) reuses the reader's buffer and must not rewrite the subject of the
// message queued from the first.
func TestRemotePublicationKeepsItsSubject(t *testing.T) {
	a := newTestNode(t)
	h := newStockHost(t, a)
	tok := issue(t, a, localapi.IssueRequest{Publish: []string{"orders.>"}, Subscribe: []string{"orders.>"}, Bearers: []string{"vt://" + h.ID().String()}})
	hello := jsonFrame(t, wire.THello, wire.Hello{Token: tok.Token, Version: wire.Version})

	// Create a subscription, then drop its stream so the queue just fills.
	s := rawStream(t, h, a, wire.ProtoSubscribe)
	rvWrite(t, s, hello, jsonFrame(t, wire.TRequest, wire.SubscribeRequest{Pattern: "orders.>", Receiver: "r"}))
	r := wire.NewReader(s, 0)
	rvExpect(t, r, wire.TOK, nil)
	var sr wire.SubscribeResponse
	rvExpect(t, r, wire.TResult, &sr)
	_ = s.Reset()

	p := rawStream(t, h, a, wire.ProtoPublish)
	pr := wire.NewReader(p, 0)
	rvWrite(t, p, hello)
	rvExpect(t, pr, wire.TOK, nil)
	rvWrite(t, p, rvBatch("orders.aaaa", []byte("1")))
	var res wire.PublishResult
	rvExpect(t, pr, wire.TResult, &res)
	if res.Published != 1 {
		t.Fatalf("published %d, want 1", res.Published)
	}
	// Same size and layout, subject not allowed: refused, but read into
	// the same buffer.
	rvWrite(t, p, rvBatch("secret.zzzz", []byte("2")))
	if typ, _, _ := pr.Next(); typ != wire.TError {
		t.Fatalf("forbidden batch answered %s", typ)
	}

	// Resume: the publisher sends seq 1 from its memory.
	s2 := rawStream(t, h, a, wire.ProtoSubscribe)
	rvWrite(t, s2, hello, jsonFrame(t, wire.TRequest, wire.SubscribeRequest{SubscriptionID: sr.SubscriptionID}))
	r2 := wire.NewReader(s2, 0)
	rvExpect(t, r2, wire.TOK, nil)
	rvExpect(t, r2, wire.TResult, nil)
	_ = s2.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, payload, err := r2.Next()
	if err != nil || typ != wire.TDeliver {
		t.Fatalf("got %s, %v; want a delivery", typ, err)
	}
	var subjects []string
	if err := wire.DecodeDeliveries(payload, func(d *wire.Delivery) error {
		subjects = append(subjects, strings.Clone(d.Subject))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(subjects) != 1 || subjects[0] != "orders.aaaa" {
		t.Fatalf("delivered subjects %q, want [orders.aaaa]", subjects)
	}
}

// A perform whose hop is past limits.max_hops is refused before its action
// runs (PROTOCOL.md: it cuts receiver loops): by the caller's node, and by
// the remote one, with bad_request, when a peer sends it anyway.
func TestRemotePerformPastMaxHopsDoesNotRun(t *testing.T) {
	a, b := newTestNode(t), newTestNode(t)
	var echo counter
	register(t, a, "echo", echo.handler)
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})
	_, err := b.Perform(testCtx(t), localapi.PerformRequest{Peer: pid, Action: "echo", Input: json.RawMessage(`1`), Hop: 1000}, nil)
	if !errors.Is(err, node.ErrHopLimit) {
		t.Errorf("perform at hop 1000 = %v, want ErrHopLimit", err)
	}
	h := newStockHost(t, a)
	tok := issue(t, a, localapi.IssueRequest{Perform: []string{">"}, Bearers: []string{"vt://" + h.ID().String()}})
	s := rawStream(t, h, a, wire.ProtoPerform)
	rvWrite(t, s, jsonFrame(t, wire.THello, wire.Hello{Token: tok.Token, Version: wire.Version}),
		jsonFrame(t, wire.TRequest, wire.PerformRequest{Action: "echo", Input: json.RawMessage(`1`), Hop: 1000}))
	r := wire.NewReader(s, 0)
	rvExpect(t, r, wire.TOK, nil)
	rvExpectCode(t, r, wire.CodeHopLimit) // the hop limit
	if echo.count() != 0 {
		t.Errorf("action ran %d times at hop 1000 (max_hops 16)", echo.count())
	}
}

// A remote publish past the peer's max_hops is refused with hop_limit,
// which the caller takes as ErrHopLimit too.
func TestRemotePublishHopLimitCode(t *testing.T) {
	// The publishing instance's own limit is checked first (16 here); a
	// hop within it but past the peer's limit (4) is the peer's refusal.
	a, c := newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.MaxHops = 4 })), newTestNode(t)
	pid, _ := connectPeers(t, a, c, localapi.IssueRequest{Publish: []string{">"}})
	_, err := c.PublishRequest(testCtx(t), localapi.PublishRequest{Peer: pid, Action: "x.y", Data: json.RawMessage(`1`), Hop: 10})
	wantWireCode(t, err, wire.CodeHopLimit)
	if !errors.Is(err, node.ErrHopLimit) {
		t.Fatalf("the peer's hop-limit refusal: %v, want ErrHopLimit", err)
	}
	if _, err := c.PublishRequest(testCtx(t), localapi.PublishRequest{Peer: pid, Action: "x.y", Data: json.RawMessage(`1`), Hop: 17}); !errors.Is(err, node.ErrHopLimit) {
		t.Fatalf("publish past this instance's max_hops: %v, want ErrHopLimit", err)
	}
}

// A full queue under the reject policy answers unavailable (PROTOCOL.md),
// and the publishing instance logs it (only the caller was told).
func TestRemotePublishQueueFullCode(t *testing.T) {
	var logs syncBuffer
	a := newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.QueueBound = 1 }), func(o *node.Options) { o.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	c := newTestNode(t)
	h := holdSubscription(t, a, "q.>")
	pid, _ := connectPeers(t, a, c, localapi.IssueRequest{Publish: []string{">"}})
	_, err := c.PublishRequest(testCtx(t), localapi.PublishRequest{Peer: pid, Action: "q.a", Batch: []json.RawMessage{json.RawMessage(`1`), json.RawMessage(`2`)}})
	wantWireCode(t, err, wire.CodeUnavailable)
	// Which subscription is full, its pattern and its subscriber are the
	// publishing instance's business, not the remote publisher's.
	subs := a.Subscribers()
	if len(subs) != 1 {
		t.Fatalf("subscribers %+v", subs)
	}
	for _, secret := range []string{subs[0].ID, "q.>", h.ID().String()} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("the remote publisher was told %q: %v", secret, err)
		}
	}
	if !strings.Contains(logs.String(), "publication refused: a subscription's queue is full") {
		t.Errorf("the refusal is not in the publishing instance's log:\n%s", logs.String())
	}
}

// An action file without the execute bit: the remote caller's error does
// not carry the instance's paths.
func TestRemoteErrorsNameNoLocalPath(t *testing.T) {
	a, b := newTestNode(t), newTestNode(t)
	if err := os.WriteFile(filepath.Join(a.Dir(), "actions", "noexec"), []byte("#!/bin/sh\necho 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})
	_, err := perform(testCtx(t), b, pid, "noexec", `1`)
	if err == nil {
		t.Fatal("no error")
	}
	if strings.Contains(err.Error(), a.Dir()) {
		t.Fatalf("remote error reveals the instance path: %v", err)
	}
}

// A remote publish of more tiny publications than one frame may carry is
// split into frames the peer accepts, and all of them are queued.
func TestRemotePublishSplitsLargeBatches(t *testing.T) {
	a, b := newTestNode(t), newTestNode(t)
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Publish: []string{">"}, Subscribe: []string{">"}})
	rec := newTestNode(t)
	var got counter
	if err := rec.RegisterReceiver("rec", got.handler); err != nil {
		t.Fatal(err)
	}
	rpid, _ := connectPeers(t, a, rec, localapi.IssueRequest{Subscribe: []string{"many.>"}})
	ctx := testCtx(t)
	if _, err := rec.Subscribe(ctx, localapi.SubscribeRequest{Peer: rpid, Pattern: "many.>", Receiver: "rec"}); err != nil {
		t.Fatal(err)
	}
	n := wire.MaxPublishBatch + 5000
	batch := make([]json.RawMessage, n)
	for i := range batch {
		batch[i] = json.RawMessage(`1`)
	}
	res, err := b.PublishRequest(ctx, localapi.PublishRequest{Peer: pid, Action: "many.x", Batch: batch})
	if err != nil || res.Published != n {
		t.Fatalf("remote publish of %d = %+v, %v; want all queued", n, res, err)
	}
	checkFor(t, testTimeout, 20*time.Millisecond, func() error {
		if c := got.count(); c != int64(n) {
			return fmt.Errorf("receiver ran %d times, want %d", c, n)
		}
		return nil
	})
}

// A remote publication that is not JSON is refused at the publisher with
// bad_request (it would otherwise reach every subscriber's dead letters),
// and nothing of its batch is queued.
func TestRemotePublishRefusesNonJSON(t *testing.T) {
	a := newTestNode(t)
	p, pr := rvPublishStream(t, a)
	rvWrite(t, p, wire.AppendFrame(nil, wire.TPublish, wire.AppendPublishBatch(nil, []wire.Publication{
		{Subject: "x.a", Data: []byte(`1`), Time: 1}, {Subject: "x.a", Data: []byte(`not json`), Time: 1}})))
	rvExpectCode(t, pr, wire.CodeBadRequest)
}

// JSON whose strings are not UTF-8 is refused too, remotely and locally:
// encoding/json accepts it, and a receiver's decoder would turn the bad
// bytes into U+FFFD, so two distinct publications could arrive as one.
//
// So is JSON nested deeper than encoding/json takes (10 000 levels): it
// passed the hot path's validator, and no subscriber could park it.
func TestPublishRefusesNonUTF8JSON(t *testing.T) {
	a := newTestNode(t)
	for _, bad := range [][]byte{[]byte("{\"id\":\"\xff\"}"), []byte(strings.Repeat("[", 10001) + strings.Repeat("]", 10001))} {
		if _, err := a.Publish(testCtx(t), "x.a", bad); err == nil || !strings.Contains(err.Error(), "not valid JSON in UTF-8") {
			t.Fatalf("local publish of %d bytes of bad JSON: %v, want refused as not valid JSON in UTF-8", len(bad), err)
		}
		p, pr := rvPublishStream(t, a)
		rvWrite(t, p, wire.AppendFrame(nil, wire.TPublish, wire.AppendPublishBatch(nil, []wire.Publication{{Subject: "x.a", Data: bad, Time: 1}})))
		rvExpectCode(t, pr, wire.CodeBadRequest)
	}
}

// A validation token presented in a hello is refused as unauthorized, like
// any token that does not grant the stream (it was answered 'internal').
func TestHelloWithValidationTokenIsUnauthorized(t *testing.T) {
	a := newTestNode(t)
	h := newStockHost(t, a)
	vt, err := a.Authority().IssueValidation(auth.IssueOptions{ExpiresIn: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	p := rawStream(t, h, a, wire.ProtoPerform)
	pr := wire.NewReader(p, 0)
	rvWrite(t, p, jsonFrame(t, wire.THello, wire.Hello{Token: vt, Version: wire.Version}))
	rvExpectCode(t, pr, wire.CodeUnauthorized)
}

// A publisher whose disk is below limits.min_free_disk refuses
// publications, locally and from peers: a peer is told unavailable
// without the instance's paths, the publishing instance logs it.
func TestRemotePublishNoSpaceCode(t *testing.T) {
	var logs syncBuffer
	a := newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.MinFreeDisk = 1 << 60 }), func(o *node.Options) {
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		db, err := datastore.Open(t.TempDir()) // on disk: the in-memory store has no disk to check
		if err != nil {
			t.Fatal(err)
		}
		o.DB = db
	})
	c := newTestNode(t)
	holdSubscription(t, a, "q.>")
	if _, err := a.Publish(testCtx(t), "q.a", json.RawMessage(`1`)); !errors.Is(err, topics.ErrNoSpace) || !strings.Contains(err.Error(), "limits.min_free_disk") {
		t.Fatalf("local publish: %v, want ErrNoSpace naming limits.min_free_disk", err)
	}
	pid, _ := connectPeers(t, a, c, localapi.IssueRequest{Publish: []string{">"}})
	_, err := c.PublishRequest(testCtx(t), localapi.PublishRequest{Peer: pid, Action: "q.a", Data: json.RawMessage(`2`)})
	wantWireCode(t, err, wire.CodeUnavailable)
	if !strings.Contains(err.Error(), "disk is almost full") || strings.Contains(err.Error(), a.Dir()) {
		t.Errorf("remote publish: %v, want the disk named without its path", err)
	}
	if !strings.Contains(logs.String(), "publication refused: the disk is almost full") {
		t.Errorf("the refusal is not in the publishing instance's log:\n%s", logs.String())
	}
	if st := a.Subscribers(); len(st) != 1 || st[0].Depth != 0 {
		t.Errorf("subscribers %+v, want one with nothing queued", st)
	}
	if st := a.Status(); !st.DiskLow || st.DiskFree == 0 {
		t.Errorf("status disk_free %d, disk_low %v; want the free space and low", st.DiskFree, st.DiskLow)
	}
	if st := c.Status(); st.DiskLow {
		t.Errorf("status of an in-memory instance: disk_low")
	}
}

// A remote perform --notify whose output the peer could not publish for
// want of room says that the action ran (performing it again runs it
// again), not only the publication's "nothing of this batch was queued,
// retry later".
func TestRemotePerformNotifyNoSpaceSaysItRan(t *testing.T) {
	a := newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.MinFreeDisk = 1 << 60 }), func(o *node.Options) {
		db, err := datastore.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		o.DB = db
	})
	c := newTestNode(t)
	var echo counter
	register(t, a, "q.echo", echo.handler)
	holdSubscription(t, a, "q.>")
	pid, _ := connectPeers(t, a, c, localapi.IssueRequest{Perform: []string{">"}, Publish: []string{">"}})
	_, err := c.Perform(testCtx(t), localapi.PerformRequest{Peer: pid, Action: "q.echo", Input: json.RawMessage(`1`), Notify: true}, nil)
	wantWireCode(t, err, wire.CodeUnavailable)
	if echo.count() != 1 {
		t.Fatalf("the action ran %d times, want 1", echo.count())
	}
	for _, want := range []string{"ran", "not published", "runs it again", "disk is almost full"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("remote perform --notify: %v; want %q in it", err, want)
		}
	}
	if strings.Contains(err.Error(), "retry later") || strings.Contains(err.Error(), a.Dir()) {
		t.Errorf("remote perform --notify: %v; want neither retry later nor the peer's path", err)
	}
}

// holdSubscription has a plain libp2p host subscribe to pattern at a and
// go away (no deliveries are taken): publications matching pattern queue
// for it. It returns the host.
func holdSubscription(t *testing.T, a *node.Node, pattern string) host.Host {
	t.Helper()
	h := newStockHost(t, a)
	tok := issue(t, a, localapi.IssueRequest{Subscribe: []string{">"}, Bearers: []string{"vt://" + h.ID().String()}})
	s := rawStream(t, h, a, wire.ProtoSubscribe)
	rvWrite(t, s, jsonFrame(t, wire.THello, wire.Hello{Token: tok.Token, Version: wire.Version}), jsonFrame(t, wire.TRequest, wire.SubscribeRequest{Pattern: pattern, Receiver: "r"}))
	r := wire.NewReader(s, 0)
	rvExpect(t, r, wire.TOK, nil)
	rvExpect(t, r, wire.TResult, nil)
	_ = s.Reset()
	return h
}

// A publisher whose datastore goes bad while it runs, where the damage
// cannot be cut out (not the queues' keys), refuses publications at once,
// locally and from peers, saying why (a peer without the instance's
// paths), and service status and the metrics show it. They were accepted
// until every write stalled (a compaction failing on the damage for
// ever), and then timed out.
func TestStorageDamagedWhileRunningRefused(t *testing.T) {
	dir := t.TempDir()
	db, err := datastore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	a := newTestNode(t, func(o *node.Options) { o.DB = db })
	c := newTestNode(t)
	holdSubscription(t, a, "q.>")
	ctx := testCtx(t)
	big := func(i int) []byte { return []byte(fmt.Sprintf("v%d-%s", i, strings.Repeat(fmt.Sprint(i), 8<<10))) }
	put := func(k string, v []byte) {
		t.Helper()
		if err := db.Batching().Put(ctx, ds.NewKey(k), v); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 5; i++ {
		put(fmt.Sprintf("/zz/%d", i), big(i))
	}
	// In one table, which no compaction rewrites meanwhile; then damaged,
	// and a table over it that a compaction merges with it.
	if err := db.Reclaim(ctx, true); err != nil {
		t.Fatal(err)
	}
	ssts, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
	flipped := false
	for _, f := range ssts {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if i := bytes.Index(b, big(3)[:64]); i >= 0 {
			b[i+32] ^= 0xff
			if err := os.WriteFile(f, b, 0o600); err != nil {
				t.Fatal(err)
			}
			flipped = true
		}
	}
	if !flipped {
		t.Fatal("value not found in the tables")
	}
	put("/zz/0", []byte("x"))
	if err := db.Reclaim(ctx, false); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = db.Reclaim(cctx, true) }() // fails on the block, retried until cancelled
	deadline := time.Now().Add(10 * time.Second)
	for a.Status().StorageError == "" {
		if time.Now().After(deadline) {
			t.Fatal("status shows no storage error")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if st := a.Status(); !strings.Contains(st.StorageError, "damaged") || !strings.Contains(st.StorageError, "restart") {
		t.Errorf("status storage_error %q, want the damage and what to do", st.StorageError)
	}
	if _, err := a.Publish(ctx, "q.a", json.RawMessage(`1`)); !errors.Is(err, topics.ErrStorageDamaged) {
		t.Fatalf("local publish: %v, want ErrStorageDamaged", err)
	}
	pid, _ := connectPeers(t, a, c, localapi.IssueRequest{Publish: []string{">"}})
	_, err = c.PublishRequest(ctx, localapi.PublishRequest{Peer: pid, Action: "q.a", Data: json.RawMessage(`2`)})
	wantWireCode(t, err, wire.CodeUnavailable)
	if !strings.Contains(err.Error(), "datastore is damaged") || strings.Contains(err.Error(), dir) {
		t.Errorf("remote publish: %v, want the damage named without the instance's paths", err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(a.MetricsCollector())
	if err := testutil.GatherAndCompare(reg, strings.NewReader("# HELP coattail_storage_failed 1 while the instance refuses every publication until it restarts (its datastore is damaged where the damage could not be cut out while it runs, or a write to it failed; service status says which), else 0.\n# TYPE coattail_storage_failed gauge\ncoattail_storage_failed 1\n"), "coattail_storage_failed"); err != nil {
		t.Error(err)
	}
}
