package node

import (
	"testing"
	"time"

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
