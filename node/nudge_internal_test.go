package node

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/coattail/coattail/topics"
)

// A subscriber whose subscription waits is nudged with a back-off (once a
// second, doubling up to once a minute: PROTOCOL.md), also when another of
// its subscriptions is connected or has nothing queued. That other
// subscription reset the back-off on every tick, so such a subscriber was
// nudged every second for as long as it stayed away.
func TestNudgeBackOffIgnoresOtherSubscriptions(t *testing.T) {
	for _, order := range []string{"healthy first", "waiting first"} {
		t.Run(order, func(t *testing.T) {
			waiting := topics.QueueStatus{Subscription: topics.Subscription{ID: "w", Subscriber: "S"}, Depth: 5}
			connected := topics.QueueStatus{Subscription: topics.Subscription{ID: "c", Subscriber: "S"}, Depth: 5}
			empty := topics.QueueStatus{Subscription: topics.Subscription{ID: "e", Subscriber: "S"}}
			qs := []topics.QueueStatus{connected, empty, waiting}
			if order == "waiting first" {
				qs = []topics.QueueStatus{waiting, connected, empty}
			}
			attached := func(id string) bool { return id == "c" }
			var p nudgePlan
			t0 := time.Now()
			var at []int
			for s := 0; s <= 40; s++ {
				due := p.due(t0.Add(time.Duration(s)*time.Second), qs, attached)
				if ids := due["S"]; ids != nil {
					if len(ids) != 1 || ids[0] != "w" {
						t.Fatalf("nudge names %v, want only the waiting subscription", ids)
					}
					at = append(at, s)
				}
			}
			want := []int{0, 1, 3, 7, 15, 31}
			if len(at) != len(want) {
				t.Fatalf("nudged at seconds %v, want %v", at, want)
			}
			for i := range want {
				if at[i] != want[i] {
					t.Fatalf("nudged at seconds %v, want %v", at, want)
				}
			}
			// Once nothing waits, the next wait starts at once a second.
			p.due(t0.Add(41*time.Second), []topics.QueueStatus{connected}, attached)
			if due := p.due(t0.Add(42*time.Second), qs, attached); due["S"] == nil {
				t.Fatal("a subscriber waiting again after catching up was not nudged at once")
			}
			if len(p.delay) != 1 || len(p.next) != 1 {
				t.Fatalf("back-off state for %d/%d subscribers, want 1", len(p.delay), len(p.next))
			}
		})
	}
}

// fakeConn and fakeStream stand in for a libp2p connection and stream in
// tests of bookkeeping that only compares and resets them.
type fakeConn struct {
	network.Conn
	closed atomic.Bool
}

func (c *fakeConn) Close() error {
	c.closed.Store(true)
	return nil
}

type fakeStream struct {
	network.Stream
	conn  network.Conn
	reset chan struct{}
}

func (s *fakeStream) Conn() network.Conn { return s.conn }
func (s *fakeStream) Reset() error {
	close(s.reset)
	return nil
}

// A nudge means the publisher has publications for the subscription and no
// stream to send them on. A subscriber whose stream is dead without libp2p
// knowing it yet (the network dropped the connection silently) only woke
// loops waiting to retry, so its subscription stayed stuck on the dead
// stream until the keep-alive gave up. Now a stream that has been up for
// longer than staleAfter, on another connection than the nudge's, is reset
// and the loop woken; a fresh stream, or one on the nudge's own connection,
// is left alone. The stale stream's connection is closed too: left open,
// it carried the loop's next subscribe (libp2p prefers the connection with
// more streams), which hung on it until its keep-alive gave up (the NAT
// lab: a router that forgot its mappings left the relay's half of a
// circuit alive for 30 s and more).
func TestNudgeResetsStaleStream(t *testing.T) {
	old, nudgeConn := &fakeConn{}, &fakeConn{}
	cases := []struct {
		name      string
		conn      network.Conn
		age       time.Duration
		publisher string
		via       network.Conn
		wantReset bool
	}{
		{"stale stream on another connection", old, 2 * staleAfter, "P", nudgeConn, true},
		{"fresh stream", old, 0, "P", nudgeConn, false},
		{"stream on the nudge's connection", nudgeConn, 2 * staleAfter, "P", nudgeConn, false},
		{"nudge from another publisher", old, 2 * staleAfter, "Q", nudgeConn, false},
		{"no connection known", old, 2 * staleAfter, "P", nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.conn.(*fakeConn).closed.Store(false)
			st := &fakeStream{conn: c.conn, reset: make(chan struct{})}
			l := &subLoop{publisher: "P", wake: make(chan struct{}, 1), stream: st, streamSince: time.Now().Add(-c.age)}
			ss := &subscriberSide{loops: map[string]*subLoop{"s1": l}}
			ss.wake(c.publisher, []string{"s1", "unknown"}, c.via)
			select {
			case <-st.reset:
				if !c.wantReset {
					t.Fatal("the stream was reset")
				}
			case <-time.After(200 * time.Millisecond):
				if c.wantReset {
					t.Fatal("the stale stream was not reset")
				}
			}
			woken := len(l.wake) == 1
			if woken != (c.publisher == "P") {
				t.Fatalf("loop woken: %v, want %v", woken, c.publisher == "P")
			}
			ss.mu.Lock()
			cleared := l.stream == nil
			ss.mu.Unlock()
			if cleared != c.wantReset {
				t.Fatalf("stream cleared: %v, want %v", cleared, c.wantReset)
			}
			// The stale stream's connection is closed too: the loop's
			// next subscribe would otherwise be opened on it and hang.
			if c.wantReset {
				deadline := time.Now().Add(time.Second)
				for !c.conn.(*fakeConn).closed.Load() {
					if time.Now().After(deadline) {
						t.Fatal("the stale stream's connection was not closed")
					}
					time.Sleep(5 * time.Millisecond)
				}
			} else if c.conn.(*fakeConn).closed.Load() {
				t.Fatal("a connection was closed")
			}
		})
	}
}
