package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coattail/coattail/datastore"
	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
)

// parkOne subscribes sub to pattern at pub with receiver, publishes data
// on subject, and waits until that publication is sub's one dead letter
// (the receiver must keep failing).
func parkOne(t *testing.T, pub, sub *node.Node, pattern, receiver, subject, data string) localapi.DeadLetter {
	t.Helper()
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{pattern}})
	ctx := testCtx(t)
	if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: pattern, Receiver: receiver}); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(ctx, subject, json.RawMessage(data)); err != nil {
		t.Fatal(err)
	}
	var dl []localapi.DeadLetter
	checkFor(t, testTimeout, 20*time.Millisecond, func() error {
		var err error
		if dl, err = allDeadLetters(ctx, sub); err != nil || len(dl) != 1 {
			return fmt.Errorf("dead letters %+v, %v", dl, err)
		}
		return nil
	})
	return dl[0]
}

// allDeadLetters lists every dead letter of n with its data, page by page.
func allDeadLetters(ctx context.Context, n *node.Node) ([]localapi.DeadLetter, error) {
	out := []localapi.DeadLetter{}
	q := localapi.DeadLetterQuery{Limit: localapi.MaxDeadLetterPage, Data: true}
	for {
		page, err := n.DeadLetters(ctx, q)
		if err != nil {
			return nil, err
		}
		out = append(out, page.DeadLetters...)
		if !page.More {
			return out, nil
		}
		q.After = page.Next
	}
}

// parkDeadLetters has sub park count publications of a publisher that a
// receiver always refuses; it returns sub's dead letters.
func parkDeadLetters(t *testing.T, count int) (*node.Node, []localapi.DeadLetter) {
	t.Helper()
	pub, sub, _ := refusingSubscription(t, withQuietLog())
	ctx := testCtx(t)
	for i := range count {
		if _, err := pub.Publish(ctx, "dl.x", json.RawMessage(fmt.Sprintf(`{"n":%d}`, i+1))); err != nil {
			t.Fatal(err)
		}
	}
	var dls []localapi.DeadLetter
	checkFor(t, testTimeout, 20*time.Millisecond, func() error {
		var err error
		if dls, err = allDeadLetters(ctx, sub); err != nil || len(dls) != count {
			return fmt.Errorf("%d dead letters (%v), want %d", len(dls), err, count)
		}
		return nil
	})
	return sub, dls
}

// refusingSubscription returns a publisher and a subscriber (made with
// subOpts too) subscribed to dl.> with a receiver that refuses every
// publication at once (no retries): each becomes a dead letter. runs
// counts the receiver's runs.
func refusingSubscription(t *testing.T, subOpts ...nodeOption) (pub, sub *node.Node, runs *atomic.Int64) {
	t.Helper()
	pub = newTestNode(t, withQuietLog())
	sub = newTestNode(t, append([]nodeOption{withLimits(func(l *node.LimitsConfig) {
		l.ReceiverRetries = 0
		l.ReceiverBackoff = time.Millisecond
	})}, subOpts...)...)
	runs = new(atomic.Int64)
	if err := sub.RegisterReceiver("refuses", func(context.Context, json.RawMessage) (json.RawMessage, error) {
		runs.Add(1)
		return nil, errors.New("refused")
	}); err != nil {
		t.Fatal(err)
	}
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"dl.>"}})
	if _, err := sub.Subscribe(testCtx(t), localapi.SubscribeRequest{Peer: pid, Pattern: "dl.>", Receiver: "refuses"}); err != nil {
		t.Fatal(err)
	}
	return pub, sub, runs
}

// 250 dead letters listed 100 at a time, each page after the last one's
// next, come once each and in order (one subscription: by sequence), the
// last page saying there are no more. Data comes only when asked for.
func TestDeadLettersPaged(t *testing.T) {
	sub, all := parkDeadLetters(t, 250)
	ctx := testCtx(t)
	for i, d := range all {
		if d.Seq != uint64(i+1) || string(d.Data) != fmt.Sprintf(`{"n":%d}`, i+1) {
			t.Fatalf("dead letter %d: seq %d data %s, want seq %d and its data", i, d.Seq, d.Data, i+1)
		}
	}
	var got []localapi.DeadLetter
	q := localapi.DeadLetterQuery{}
	for _, want := range []int{100, 100, 50} {
		page, err := sub.DeadLetters(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.DeadLetters) != want || page.More != (want == 100) {
			t.Fatalf("page after %q: %d entries, more %v; want %d", q.After, len(page.DeadLetters), page.More, want)
		}
		last := page.DeadLetters[len(page.DeadLetters)-1].ID
		if page.More && page.Next != last || !page.More && page.Next != "" {
			t.Fatalf("page next %q, last entry %s, more %v", page.Next, last, page.More)
		}
		for _, d := range page.DeadLetters {
			if d.Data != nil {
				t.Fatalf("dead letter %s has data %s in a list without data", d.ID, d.Data)
			}
		}
		got = append(got, page.DeadLetters...)
		q.After = page.Next
	}
	for i, d := range got {
		if d.ID != all[i].ID || d.Seq != all[i].Seq || d.Error != all[i].Error || d.Receiver != "refuses" {
			t.Fatalf("paged entry %d = %+v, want %+v without data", i, d, all[i])
		}
	}
	// After an entry that is gone: from the one after it.
	if err := sub.DropDeadLetter(ctx, all[99].ID); err != nil {
		t.Fatal(err)
	}
	page, err := sub.DeadLetters(ctx, localapi.DeadLetterQuery{After: all[99].ID, Limit: 1, Data: true})
	if err != nil || len(page.DeadLetters) != 1 || page.DeadLetters[0].ID != all[100].ID || string(page.DeadLetters[0].Data) != `{"n":101}` || !page.More {
		t.Fatalf("after a dropped entry: %+v, %v; want %s with its data, and more", page, err, all[100].ID)
	}
	for _, q := range []localapi.DeadLetterQuery{{Limit: -1}, {Limit: localapi.MaxDeadLetterPage + 1}, {After: "x"}, {After: "a/b.00000000000000000001"}, {After: ".00000000000000000001"}} {
		var le *localapi.Error
		if _, err := sub.DeadLetters(ctx, q); !errors.As(err, &le) || le.Code != localapi.CodeBadRequest {
			t.Errorf("DeadLetters(%+v) = %v, want a bad request", q, err)
		}
	}
}

// The control API reads limit, after and data strictly.
func TestControlDeadLettersQuery(t *testing.T) {
	sub, all := parkDeadLetters(t, 3)
	h := sub.Handler(nil)
	get := func(query string) (int, []byte) {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "http://coattail/v1/deadletters?"+query, nil))
		return rec.Code, rec.Body.Bytes()
	}
	code, body := get("limit=2&data=1")
	var page localapi.DeadLetterList
	if err := json.Unmarshal(body, &page); code != http.StatusOK || err != nil || len(page.DeadLetters) != 2 || !page.More || page.Next != all[1].ID || page.DeadLetters[0].Data == nil {
		t.Fatalf("?limit=2&data=1: %d %s", code, body)
	}
	code, body = get("after=" + page.Next)
	page = localapi.DeadLetterList{}
	if err := json.Unmarshal(body, &page); code != http.StatusOK || err != nil || len(page.DeadLetters) != 1 || page.More || page.DeadLetters[0].ID != all[2].ID {
		t.Fatalf("?after=%s: %d %s", all[1].ID, code, body)
	}
	for _, q := range []string{"limit=abc", "limit=0", "limit=-5", "limit=1001", "limit=", "limit=1e3", "after=", "after=garbage", "after=..", "data=maybe"} {
		code, body := get(q)
		var e localapi.Error
		if err := json.Unmarshal(body, &e); code != http.StatusBadRequest || err != nil || e.Code != localapi.CodeBadRequest {
			t.Errorf("?%s: %d %s; want a bad request", q, code, body)
		}
	}
}

// With its disk below limits.min_free_disk a subscriber does not park a
// publication its receiver refused (a dead letter keeps the data; pebble
// ends the process when a write finds the disk full): the subscription
// waits, says so, and parks it once there is room again, without running
// the receiver again meanwhile.
func TestParkWaitsForDiskSpace(t *testing.T) {
	var logs syncBuffer
	pub, sub, runs := refusingSubscription(t, withLimits(func(l *node.LimitsConfig) { l.MinFreeDisk = 1 << 30 }), func(o *node.Options) {
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		db, err := datastore.Open(t.TempDir()) // on disk: the in-memory store has no disk to check
		if err != nil {
			t.Fatal(err)
		}
		o.DB = db
	})
	var free atomic.Uint64 // bytes
	node.SetFreeSpace(sub, func() (uint64, error) { return free.Load(), nil })
	ctx := testCtx(t)
	if _, err := pub.Publish(ctx, "dl.x", json.RawMessage(`{"n":1}`)); err != nil {
		t.Fatal(err)
	}
	checkFor(t, testTimeout, 20*time.Millisecond, func() error {
		if !strings.Contains(logs.String(), "cannot park failed publication until the disk has room") || !strings.Contains(logs.String(), "limits.min_free_disk") {
			return errors.New("the subscriber did not say it could not park")
		}
		return nil
	})
	if dls, err := allDeadLetters(ctx, sub); err != nil || len(dls) != 0 {
		t.Fatalf("dead letters %v (%v) with the disk full, want none", dls, err)
	}
	time.Sleep(3 * time.Second) // it keeps waiting, without running the receiver again
	free.Store(1 << 40)
	checkFor(t, testTimeout, 20*time.Millisecond, func() error {
		dls, err := allDeadLetters(ctx, sub)
		if err != nil || len(dls) != 1 || dls[0].Seq != 1 {
			return fmt.Errorf("dead letters %+v (%v), want publication 1", dls, err)
		}
		return nil
	})
	// The subscription waited: its receiver ran once, not again on
	// redeliveries while the disk was full.
	if n := runs.Load(); n != 1 {
		t.Errorf("receiver ran %d times, want 1", n)
	}
}
