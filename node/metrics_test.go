package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// An embedding program registers Node.MetricsCollector with its own
// registry: a pedantic registry accepts it (every series matches what it
// describes), and after a parked publication and a delivered one the
// series say so at both ends.
func TestMetricsCollectorEmbedded(t *testing.T) {
	pub, sub, runs := refusingSubscription(t)
	if err := sub.RegisterReceiver("ok", func(context.Context, json.RawMessage) (json.RawMessage, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	pid := pub.ID().String()
	s, err := sub.Subscribe(testCtx(t), localapi.SubscribeRequest{Peer: pid, Pattern: "dl.ok", Receiver: "ok"})
	if err != nil {
		t.Fatal(err)
	}
	regs := map[string]*prometheus.Registry{}
	for name, n := range map[string]*node.Node{"pub": pub, "sub": sub} {
		regs[name] = prometheus.NewPedanticRegistry()
		if err := regs[name].Register(n.MetricsCollector()); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if _, err := pub.Publish(testCtx(t), "dl.x", json.RawMessage(`1`)); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(testCtx(t), "dl.ok", json.RawMessage(`2`)); err != nil {
		t.Fatal(err)
	}
	// dl.x reaches the refusing receiver (dl.>); dl.ok both receivers.
	checkFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if c := sub.Status().Counters; c.DeadLetters != 2 || c.Received != 3 {
			return fmt.Errorf("dead letters %d, received %d; want 2 and 3", c.DeadLetters, c.Received)
		}
		for _, q := range pub.Subscribers() {
			if q.Depth != 0 || q.Acked != q.NextSeq-1 {
				return fmt.Errorf("subscription %s: depth %d, acked %d of %d", q.ID, q.Depth, q.Acked, q.NextSeq-1)
			}
		}
		return nil
	})
	if runs.Load() != 2 {
		t.Fatalf("refusing receiver ran %d times, want 2", runs.Load())
	}
	check := func(name, text string, metrics ...string) {
		t.Helper()
		if err := testutil.GatherAndCompare(regs[name], strings.NewReader(text), metrics...); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	check("pub", `
# HELP coattail_published_total Publications accepted here since the node started (one per publication, whatever its fan-out).
# TYPE coattail_published_total counter
coattail_published_total 2
`, "coattail_published_total")
	check("sub", `
# HELP coattail_dead_letters_total Publications parked as dead letters since the node started.
# TYPE coattail_dead_letters_total counter
coattail_dead_letters_total 2
`, "coattail_dead_letters_total")
	n, err := testutil.GatherAndCount(regs["pub"], "coattail_queue_delivered_total", "coattail_queue_depth")
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 { // two subscriptions, two series each
		t.Fatalf("publisher: %d queue series, want 4", n)
	}
	// The dl.ok subscription processed its one publication (sequence 1).
	fams, err := regs["sub"].Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range fams {
		if f.GetName() != "coattail_subscription_last_seq" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "subscription" && l.GetValue() == s.ID {
					found = true
					if m.GetGauge().GetValue() != 1 {
						t.Fatalf("subscriber: last_seq of %s = %v, want 1", s.ID, m.GetGauge().GetValue())
					}
				}
			}
		}
	}
	if !found {
		t.Fatalf("subscriber: no coattail_subscription_last_seq for %s", s.ID)
	}
}

// A scrape reads the queues once: the node's counters and every
// subscription's series come from one snapshot. It read them twice (the
// status, then the subscribers list), each a copy and sort of every
// queue, and the first was thrown away.
func TestMetricsScrapeReadsQueuesOnce(t *testing.T) {
	pub, sub := newTestNode(t, withQuietLog()), newTestNode(t, withQuietLog())
	if err := sub.RegisterReceiver("rec", func(context.Context, json.RawMessage) (json.RawMessage, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"m.>"}})
	for _, p := range []string{"m.a", "m.b"} {
		if _, err := sub.Subscribe(testCtx(t), localapi.SubscribeRequest{Peer: pid, Pattern: p, Receiver: "rec"}); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(pub.MetricsCollector()); err != nil {
		t.Fatal(err)
	}
	count, stop := node.CountQueueSnapshots(pub)
	defer stop()
	for scrape := 1; scrape <= 3; scrape++ {
		n, err := testutil.GatherAndCount(reg, "coattail_queue_depth")
		if err != nil {
			t.Fatal(err)
		}
		if n != 2 {
			t.Fatalf("scrape %d: %d coattail_queue_depth series, want 2", scrape, n)
		}
		if got := count(); got != int64(scrape) {
			t.Fatalf("after %d scrape(s) the queues were read %d times, want once per scrape", scrape, got)
		}
	}
}
