package node_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
	"github.com/google/uuid"
	"github.com/libp2p/go-libp2p/core/network"
)

// Faults on the delivery path, seen from the subscriber: a scripted
// publisher (a real node whose subscribe handler the test replaces) sends
// exactly the frames a test needs, bad ones included. Each test holds the
// subscriber to "each receiver runs exactly once per publication".

// fakeSub is one subscribe stream accepted by a scripted publisher.
type fakeSub struct {
	req wire.SubscribeRequest
	s   network.Stream
	r   *wire.Reader
}

// scriptedPublisher replaces pub's subscribe handlers (every version)
// with one that hands every accepted stream (hello and request read) to
// the test.
func scriptedPublisher(t *testing.T, pub *node.Node) <-chan fakeSub {
	ch := make(chan fakeSub, 16)
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	handler := func(s network.Stream) {
		r := wire.NewReader(s, 0)
		var h wire.Hello
		if err := r.Expect(wire.THello, &h); err != nil {
			_ = s.Reset()
			return
		}
		var req wire.SubscribeRequest
		if err := r.Expect(wire.TRequest, &req); err != nil {
			_ = s.Reset()
			return
		}
		ch <- fakeSub{req: req, s: s, r: r}
		<-done
	}
	pub.Host().SetStreamHandler(wire.ProtoSubscribe, handler)
	pub.Host().SetStreamHandler(wire.ProtoSubscribe11, handler)
	return ch
}

// scriptedSubscribe subscribes sub's receiver "rec" to "f.>" at pub, whose
// subscribe streams the test answers (scriptedPublisher): the first stream
// is accepted as subscription id, extra written after the answer. It
// returns that first stream and the streams that follow.
func scriptedSubscribe(t *testing.T, pub, sub *node.Node, id string, extra ...[]byte) (fakeSub, <-chan fakeSub) {
	t.Helper()
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"f.>"}})
	conns := scriptedPublisher(t, pub)
	errc := make(chan error, 1)
	go func() {
		_, err := sub.Subscribe(testCtx(t), localapi.SubscribeRequest{Peer: pid, Pattern: "f.>", Receiver: "rec"})
		errc <- err
	}()
	c1 := nextSub(t, conns)
	c1.accept(t, id, extra...)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return c1, conns
}

func (f fakeSub) accept(t *testing.T, id string, extra ...[]byte) {
	t.Helper()
	b := jsonFrame(t, wire.TOK, wire.OK{})
	b = append(b, jsonFrame(t, wire.TResult, wire.SubscribeResponse{SubscriptionID: id, NextSeq: f.req.ResumeAfter + 1, Window: 64})...)
	for _, e := range extra {
		b = append(b, e...)
	}
	if _, err := f.s.Write(b); err != nil {
		t.Fatal(err)
	}
}

func deliverFrame(ds ...wire.Delivery) []byte {
	return wire.AppendFrame(nil, wire.TDeliver, wire.AppendDeliveries(nil, ds))
}

func dlv(id string, seq uint64) wire.Delivery {
	return wire.Delivery{SubscriptionID: id, Seq: seq, Publication: wire.Publication{Subject: "f.a", Data: []byte(strconv.FormatUint(seq, 10)), Time: 1}}
}

func nextSub(t *testing.T, ch <-chan fakeSub) fakeSub {
	t.Helper()
	select {
	case f := <-ch:
		return f
	case <-time.After(testTimeout):
		t.Fatal("subscriber did not (re)connect")
	}
	panic("unreachable")
}

// waitAck reads f's frames until the subscriber acks seq (or a later
// one): acks follow the receiver's run and its durable progress, so every
// delivery up to seq has been handled.
func (f fakeSub) waitAck(t *testing.T, seq uint64) {
	t.Helper()
	_ = f.s.SetReadDeadline(time.Now().Add(testTimeout))
	for {
		typ, payload, err := f.r.Next()
		if err != nil {
			t.Fatalf("waiting for the ack of seq %d: %v", seq, err)
		}
		if typ != wire.TAck {
			continue
		}
		_, got, err := wire.DecodeAck(payload)
		if err != nil {
			t.Fatal(err)
		}
		if got >= seq {
			return
		}
	}
}

type seqCounter struct {
	mu    sync.Mutex
	calls map[uint64]int
}

func (c *seqCounter) add(seq uint64) {
	c.mu.Lock()
	c.calls[seq]++
	c.mu.Unlock()
}
func (c *seqCounter) get(seq uint64) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[seq]
}

// A frame that turns out bad halfway (its second delivery names another
// subscription) ends the stream, but the delivery before it ran, so its
// progress is recorded: the next stream resumes after it and the receiver
// does not run it again.
func TestDeliveryBadFrameHalfwayKeepsProgress(t *testing.T) {
	pub, sub := newTestNode(t, withQuietLog()), newTestNode(t, withQuietLog())
	cnt := &seqCounter{calls: map[uint64]int{}}
	if err := sub.RegisterReceiver("rec", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		cnt.add(node.InvocationFrom(ctx).Sequence)
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	id := uuid.NewString()
	_, conns := scriptedSubscribe(t, pub, sub, id, deliverFrame(dlv(id, 1), dlv("other", 2)))
	c2 := nextSub(t, conns)
	t.Logf("second stream resumes after %d; receiver ran seq 1 %d time(s)", c2.req.ResumeAfter, cnt.get(1))
	c2.accept(t, id, deliverFrame(dlv(id, c2.req.ResumeAfter+1)))
	c2.waitAck(t, c2.req.ResumeAfter+1)
	if n := cnt.get(1); n != 1 {
		t.Fatalf("receiver ran seq 1 %d times, want exactly once", n)
	}
}

// An ack that cannot be written (the stream was reset: the publisher's ack
// timeout, a newer stream, the relay->direct move) does not stop progress
// being saved for the frames already buffered and processed after it, so
// none of them runs again on the next stream.
func TestDeliveryAckFailureKeepsProgress(t *testing.T) {
	pub, sub := newTestNode(t, withQuietLog()), newTestNode(t, withQuietLog())
	cnt := &seqCounter{calls: map[uint64]int{}}
	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	if err := sub.RegisterReceiver("rec", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		seq := node.InvocationFrom(ctx).Sequence
		cnt.add(seq)
		if seq == 1 {
			once.Do(func() { close(started) })
			<-release
		} else {
			time.Sleep(50 * time.Millisecond) // let the ack goroutine fail on seq 1 first
		}
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	id := uuid.NewString()
	// Two frames in one write: both land in the subscriber's read buffer.
	c1, conns := scriptedSubscribe(t, pub, sub, id, append(deliverFrame(dlv(id, 1)), deliverFrame(dlv(id, 2))...))
	<-started
	_ = c1.s.Reset() // e.g. the publisher's ack timeout, or a newer stream taking over
	time.Sleep(200 * time.Millisecond)
	close(release)
	c2 := nextSub(t, conns)
	t.Logf("second stream resumes after %d; seq 2 ran %d time(s) already", c2.req.ResumeAfter, cnt.get(2))
	// A correct publisher resends from resume_after+1.
	var ds []wire.Delivery
	for s := c2.req.ResumeAfter + 1; s <= 2; s++ {
		ds = append(ds, dlv(id, s))
	}
	if len(ds) > 0 {
		c2.accept(t, id, deliverFrame(ds...))
		// Acked: seq 2 has run, and cannot run again on this stream.
		c2.waitAck(t, 2)
	} else {
		c2.accept(t, id)
	}
	if n := cnt.get(2); n != 1 {
		t.Fatalf("receiver ran seq 2 %d times, want exactly once (resume_after was %d)", n, c2.req.ResumeAfter)
	}
}

// Closing the subscriber while an in-process receiver runs stops it (its
// ctx ends) without recording it or the rest of its frame as processed:
// after a restart each publication runs to completion exactly once.
func TestDeliveryCloseDoesNotRecordUnfinished(t *testing.T) {
	ctx := testCtx(t)
	pub := newTestNode(t, withQuietLog())
	_, open := reopenable(t)
	cnt := &seqCounter{calls: map[uint64]int{}}
	done := &seqCounter{calls: map[uint64]int{}}
	started := make(chan struct{})
	var once sync.Once
	register := func(n *node.Node) {
		if err := n.RegisterReceiver("rec", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
			seq := node.InvocationFrom(ctx).Sequence
			cnt.add(seq)
			if seq == 1 {
				once.Do(func() { close(started) })
			}
			select { // some work that honours ctx
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(300 * time.Millisecond):
			}
			done.add(seq)
			return nil, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	sub := open(false, register)
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"f.>"}})
	if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "f.>", Receiver: "rec"}); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.PublishBatch(ctx, []node.Message{{Subject: "f.a", Data: json.RawMessage(`1`)}, {Subject: "f.a", Data: json.RawMessage(`2`)}, {Subject: "f.a", Data: json.RawMessage(`3`)}}); err != nil {
		t.Fatal(err)
	}
	<-started
	if err := sub.Close(); err != nil { // graceful stop, mid-receiver
		t.Fatal(err)
	}
	sub = open(false, register)
	t.Cleanup(func() { _ = sub.Close() })
	checkFor(t, testTimeout, 20*time.Millisecond, func() error {
		subs, err := sub.Subscriptions(ctx)
		if err != nil || len(subs) != 1 {
			return fmt.Errorf("subscriptions %v, %v", subs, err)
		}
		for seq := uint64(1); seq <= 3; seq++ {
			if done.get(seq) == 0 {
				return fmt.Errorf("seq %d: receiver never completed (calls %d); last_seq is %d", seq, cnt.get(seq), subs[0].LastSeq)
			}
		}
		return nil
	})
	for seq := uint64(1); seq <= 3; seq++ {
		if n := done.get(seq); n != 1 {
			t.Errorf("seq %d completed %d times, want once", seq, n)
		}
	}
}

// A publisher that stops reading acks fills the subscriber's send window:
// when its stream then ends (an error frame), the subscriber must not wait
// for its blocked ack write, but reconnect.
func TestDeliveryPublisherNotReadingAcks(t *testing.T) {
	pub, sub := newTestNode(t, withQuietLog()), newTestNode(t, withQuietLog())
	if err := sub.RegisterReceiver("rec", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		for t0 := time.Now(); time.Since(t0) < 100*time.Microsecond; { // one ack per frame
		}
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	id := uuid.NewString()
	c1, conns := scriptedSubscribe(t, pub, sub, id)
	t0 := time.Now()
	t.Logf("accepted")
	// Many one-delivery frames, never reading the acks they cause.
	var b []byte
	for seq := uint64(1); seq <= 30000; seq++ {
		b = append(b, deliverFrame(dlv(id, seq))...)
		if len(b) > 64<<10 {
			if _, err := c1.s.Write(b); err != nil {
				t.Fatal(err)
			}
			b = b[:0]
		}
	}
	b = append(b, jsonFrame(t, wire.TError, wire.Error{Code: wire.CodeUnavailable, Message: "bye"})...)
	if _, err := c1.s.Write(b); err != nil {
		t.Fatal(err)
	}
	_ = c1.s.CloseWrite()
	t.Logf("all frames written after %v", time.Since(t0))
	select {
	case c2 := <-conns:
		t.Logf("reconnected after %v, resume_after %d", time.Since(t0), c2.req.ResumeAfter)
	case <-time.After(testTimeout):
		var buf bytes.Buffer
		_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
		for _, g := range strings.Split(buf.String(), "\n\n") {
			if strings.Contains(g, "subscriberSide") {
				t.Log(g)
			}
		}
		t.Fatalf("subscription did not reconnect within %v after the publisher's error frame (back-off is 100 ms)", testTimeout)
	}
}

// A publisher that accepts a resumed subscribe stream but never answers
// must not hold the subscriber's Close for limits.stream_timeout.
func TestDeliveryCloseDuringSilentResume(t *testing.T) {
	pub := newTestNode(t, withQuietLog())
	// A stream_timeout far beyond testTimeout: a Close that waited for it
	// is told apart from a slow one without timing how long Close takes.
	sub := newTestNode(t, withQuietLog(), withLimits(func(l *node.LimitsConfig) { l.StreamTimeout = 10 * time.Minute }))
	if err := sub.RegisterReceiver("rec", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	id := uuid.NewString()
	c1, conns := scriptedSubscribe(t, pub, sub, id)
	_ = c1.s.Reset()
	_ = nextSub(t, conns) // resumed stream: never answered
	closed := make(chan struct{})
	go func() {
		_ = sub.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(testTimeout):
		t.Fatalf("Close still waits after %v (stream_timeout 10m) for a resumed stream the publisher never answers", testTimeout)
	}
}

// The same with an executable receiver: the close kills its process, and
// the publication is not recorded as processed, so it runs again (to
// completion) after the restart.
func TestDeliveryCloseDoesNotRecordKilledExecutable(t *testing.T) {
	ctx := testCtx(t)
	pub := newTestNode(t, withQuietLog())
	l, open := reopenable(t)
	marks := t.TempDir()
	script := "#!/bin/sh\ntouch " + marks + "/started.$COATTAIL_SEQUENCE\nsleep 3\ntouch " + marks + "/done.$COATTAIL_SEQUENCE\n"
	if err := os.WriteFile(l.Dir+"/receivers/rec", []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	sub := open(false, nil)
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"f.>"}})
	if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "f.>", Receiver: "rec"}); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(ctx, "f.a", json.RawMessage(`1`)); err != nil {
		t.Fatal(err)
	}
	checkFor(t, testTimeout, 10*time.Millisecond, func() error {
		_, err := os.Stat(marks + "/started.1")
		return err
	})
	_ = sub.Close()
	sub = open(false, nil)
	t.Cleanup(func() { _ = sub.Close() })
	// Killed by the close, it runs again (to completion) after the restart.
	checkFor(t, testTimeout, 20*time.Millisecond, func() error {
		_, err := os.Stat(marks + "/done.1")
		return err
	})
}
