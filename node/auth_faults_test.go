package node_test

// Capability checks under races and hostile input (found by review).

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coattail/coattail/auth"
	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// publishOn sends one publish batch on an authenticated publish stream and
// returns the node's answer (result or error).
func publishOn(t *testing.T, w *wire.Writer, r *wire.Reader, subject string) (wire.PublishResult, *wire.Error) {
	t.Helper()
	buf := wire.AppendPublishBatch(nil, []wire.Publication{{Subject: subject, Data: []byte(`1`), Time: time.Now().UnixNano()}})
	if err := w.Frame(wire.TPublish, buf); err != nil {
		return wire.PublishResult{}, &wire.Error{Code: "stream-ended", Message: err.Error()}
	}
	if err := w.Flush(); err != nil {
		return wire.PublishResult{}, &wire.Error{Code: "stream-ended", Message: err.Error()}
	}
	typ, payload, err := r.Next()
	if err != nil {
		return wire.PublishResult{}, &wire.Error{Code: "stream-ended", Message: err.Error()}
	}
	if typ == wire.TError {
		var e wire.Error
		_ = wire.DecodeJSON(payload, &e)
		return wire.PublishResult{}, &e
	}
	var res wire.PublishResult
	if err := wire.DecodeJSON(payload, &res); err != nil {
		t.Fatal(err)
	}
	return res, nil
}

func openAuthed(t *testing.T, s network.Stream, token string) (*wire.Writer, *wire.Reader, *wire.Error) {
	t.Helper()
	w := wire.NewWriter(s)
	r := wire.NewReader(s, 1<<20)
	if err := w.JSON(wire.THello, wire.Hello{Token: token, Version: wire.Version}); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	typ, payload, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	if typ != wire.TOK {
		var e wire.Error
		_ = wire.DecodeJSON(payload, &e)
		return nil, nil, &e
	}
	return w, r, nil
}

// An expired token stops authorising publications on a stream opened
// before it expired, as on a new one (SECURITY.md: exp "bounds the damage
// of a leaked token"; open streams that relied on it are closed).
func TestPublishStreamEndsWhenTokenExpires(t *testing.T) {
	a := newTestNode(t)
	thief := newStockHost(t, a)
	tok := issue(t, a, localapi.IssueRequest{Publish: []string{"orders.created"}, Subscribe: []string{},
		Bearers: []string{"vt://" + thief.ID().String()}, ExpiresIn: localapi.Duration(time.Second)})
	issued := time.Now() // its exp, in whole seconds, is at most 1s later
	ctx := testCtx(t)

	s, err := thief.NewStream(ctx, a.ID(), protocol.ID(wire.ProtoPublish))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Reset()
	w, r, we := openAuthed(t, s, tok.Token)
	if we != nil {
		t.Fatalf("hello refused: %v", we)
	}
	if _, we := publishOn(t, w, r, "orders.created"); we != nil {
		t.Fatalf("publish before expiry: %v", we)
	}
	// Past exp + 5 s leeway, and the second after it at which the node
	// ends the streams the token authorised.
	time.Sleep(time.Until(issued.Add(time.Second + auth.Leeway + time.Second)))

	// A new stream with the token is refused...
	s2, err := thief.NewStream(ctx, a.ID(), protocol.ID(wire.ProtoPublish))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Reset()
	if _, _, we := openAuthed(t, s2, tok.Token); we == nil {
		t.Fatal("new stream with an expired token was accepted")
	} else {
		t.Logf("new stream refused as expected: %s %s", we.Code, we.Message)
	}
	// ...and so is the old stream, once the node's timer has ended it (at
	// once, unless the machine is busy).
	checkFor(t, testTimeout, 20*time.Millisecond, func() error {
		if res, we := publishOn(t, w, r, "orders.created"); we == nil {
			return fmt.Errorf("publication accepted on a stream authorised by an expired token, %v after it was issued: %+v", time.Since(issued).Round(time.Millisecond), res)
		}
		return nil
	})
}

// A subscription created on a stream whose token is revoked concurrently
// does not survive the revocation (revoking a token removes every
// subscription made with it), whichever runs first.
func TestSubscriptionCreatedDuringRevocationIsRemoved(t *testing.T) {
	a := newTestNode(t, withQuietLog())
	h := newStockHost(t, a)
	ctx := testCtx(t)
	const workers, perWorker = 8, 40
	var mu sync.Mutex
	revoked := map[string]bool{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				tok, err := a.IssueToken(ctx, localapi.IssueRequest{Subscribe: []string{"orders.>"},
					Bearers: []string{"vt://" + h.ID().String()}})
				if err != nil {
					t.Error(err)
					return
				}
				s, err := h.NewStream(ctx, a.ID(), protocol.ID(wire.ProtoSubscribe))
				if err != nil {
					t.Error(err)
					return
				}
				wr := wire.NewWriter(s)
				_ = wr.JSON(wire.THello, wire.Hello{Token: tok.Token, Version: wire.Version})
				_ = wr.JSON(wire.TRequest, wire.SubscribeRequest{Pattern: "orders.>", Receiver: "r"})
				_ = wr.Flush()
				done := make(chan struct{})
				go func() { // read until the stream ends
					defer close(done)
					r := wire.NewReader(s, 1<<20)
					for {
						if _, _, err := r.Next(); err != nil {
							return
						}
					}
				}()
				time.Sleep(time.Duration((w*perWorker+i)%7) * 300 * time.Microsecond)
				if err := a.RevokeToken(ctx, tok.ID); err != nil {
					t.Error(err)
				}
				mu.Lock()
				revoked[tok.ID] = true
				mu.Unlock()
				<-done
				_ = s.Reset()
			}
		}()
	}
	wg.Wait()
	// A stream the revocation reset can end before its handler has added
	// (and then removed) the subscription: wait for the handlers, not for
	// a fixed 500ms that a busy machine can overrun.
	checkFor(t, testTimeout, 20*time.Millisecond, func() error {
		var orphans []string
		for _, sub := range a.Subscribers() {
			if revoked[sub.TokenID] {
				orphans = append(orphans, sub.ID+" (token "+sub.TokenID+")")
			}
		}
		if len(orphans) > 0 {
			return fmt.Errorf("%d subscriptions survive the revocation of the token they were made with: %v", len(orphans), orphans)
		}
		return nil
	})
}

type sizeWriter struct {
	mu  sync.Mutex
	max int
}

func (w *sizeWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.max = max(w.max, len(p))
	w.mu.Unlock()
	return len(p), nil
}

// An unauthenticated peer does not control how much of its hello is
// echoed into the node's log and the error frame (SECURITY.md:
// attacker-controlled fields are quoted only when short).
func TestHelloErrorsQuoteLittleOfTheInput(t *testing.T) {
	sw := &sizeWriter{}
	a := newTestNode(t, func(o *node.Options) { o.Logger = slog.New(slog.NewTextHandler(sw, nil)) })
	h := newStockHost(t, a)
	ctx := testCtx(t)
	for name, payload := range map[string]string{
		"version":       `{"token":"x","version":"` + strings.Repeat("A", 900<<10) + `"}`,
		"unknown field": `{"token":"x","version":"1.0.0","` + strings.Repeat("B", 900<<10) + `":1}`,
	} {
		s, err := h.NewStream(ctx, a.ID(), protocol.ID(wire.ProtoList))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = s.Write(wire.AppendFrame(nil, wire.THello, []byte(payload)))
		r := wire.NewReader(s, 4<<20)
		_, p, _ := r.Next()
		if len(p) > 1<<10 {
			t.Errorf("%s: the error frame sent back is %d bytes", name, len(p))
		}
		_ = s.Reset()
	}
	time.Sleep(200 * time.Millisecond)
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if sw.max > 4<<10 {
		t.Fatalf("an unauthenticated hello produced a %d-byte log line", sw.max)
	}
}

// Rotation (SECURITY.md): peer add --token <new>, then revoke the old one.
// Remote calls running while AddPeer replaces the record must not put the
// old record back into the peer cache: the node would keep presenting the
// old token until it restarts.
func TestPeerAddRotationWithConcurrentCalls(t *testing.T) {
	a := newTestNode(t, withQuietLog())
	b := newTestNode(t, withQuietLog())
	pid, _ := connectPeers(t, a, b, localapi.IssueRequest{Perform: []string{">"}})
	for i := range 80 {
		tok := issue(t, a, localapi.IssueRequest{Perform: []string{">"}})
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
						b.PeerRecordTokenID(pid)
						// Still racing AddPeer, without starving it (and
						// the hosts) of a CPU under GOMAXPROCS=1.
						runtime.Gosched()
					}
				}
			}()
		}
		// A deadline per AddPeer: one for all 80 round trips made the
		// test's speed an assertion.
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		_, err := b.AddPeer(ctx, tok.Token)
		cancel()
		if err != nil {
			t.Fatalf("iteration %d: %v", i, err)
		}
		close(stop)
		wg.Wait()
		if got := b.PeerRecordTokenID(pid); got != tok.ID {
			t.Fatalf("iteration %d: after AddPeer with token %s the node still uses token %s", i, tok.ID, got)
		}
	}
}

// A token pasted with surrounding white space (a terminal's newline, a
// file's last line) is added as the token itself, and works.
func TestPeerAddTrimsToken(t *testing.T) {
	a, b := newTestNode(t), newTestNode(t)
	tok := issue(t, a, localapi.IssueRequest{Perform: []string{"x"}})
	p, err := b.AddPeer(testCtx(t), " "+tok.Token+"\r\n")
	if err != nil {
		t.Fatalf("AddPeer with a trailing newline: %v", err)
	}
	if p.ID != a.ID().String() || p.TokenID != tok.ID {
		t.Fatalf("AddPeer = %+v, want peer %s with token %s", p, a.ID(), tok.ID)
	}
	if _, err := b.ListActions(testCtx(t), false, p.ID); err != nil {
		t.Fatalf("a remote call with the trimmed token: %v", err)
	}
}
