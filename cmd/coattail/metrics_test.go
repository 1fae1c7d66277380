package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// enableMetrics sets metrics.listen in the instance's config.yml.
func (i *instance) enableMetrics(addr string) {
	i.t.Helper()
	b, err := os.ReadFile(i.path("config.yml"))
	if err != nil {
		i.t.Fatal(err)
	}
	const off = `  listen: ""`
	if strings.Count(string(b), off) != 1 {
		i.t.Fatalf("config.yml has no single %q line for metrics", off)
	}
	b = []byte(strings.Replace(string(b), off, fmt.Sprintf("  listen: %q", addr), 1))
	if err := os.WriteFile(i.path("config.yml"), b, 0o644); err != nil {
		i.t.Fatal(err)
	}
}

// metricsURL is the metrics URL `service status --json` reports for the
// instance.
func (i *instance) metricsURL() string {
	i.t.Helper()
	var list []struct {
		Instance string `json:"instance"`
		Metrics  string `json:"metrics"`
	}
	i.decodeJSON(i.mustRun("service", "status", "--json"), &list)
	for _, s := range list {
		if s.Instance == i.dir {
			if s.Metrics == "" {
				i.t.Fatalf("%s: service status reports no metrics URL", i.name)
			}
			return s.Metrics
		}
	}
	i.t.Fatalf("%s: not in service status", i.name)
	return ""
}

// scrape fetches and parses the instance's metrics.
func (i *instance) scrape(url string) map[string]*dto.MetricFamily {
	i.t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		i.t.Fatalf("%s: scrape: %v", i.name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		i.t.Fatalf("%s: scrape: %s: %s", i.name, resp.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		i.t.Fatalf("%s: scrape: the answer is not Prometheus text: %v", i.name, err)
	}
	return fams
}

// metricValue is the value of the series of name whose labels include
// every label=value pair given; ok is false when there is none.
func metricValue(fams map[string]*dto.MetricFamily, name string, labels ...string) (v float64, ok bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k := 0; k+1 < len(labels); k += 2 {
			if have[labels[k]] != labels[k+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// The Prometheus endpoint (metrics.listen) of two services, a publisher
// and its subscriber: the counters and per-subscription series follow
// what happens (a backlog while the subscriber is down, then its drain),
// and libp2p's and Go's own metrics are served beside them.
func TestMetricsEndpoint(t *testing.T) {
	pub, sub := newInstance(t, "mpub"), newInstance(t, "msub")
	pub.fixPort()
	pub.enableMetrics("127.0.0.1:0")
	sub.enableMetrics("127.0.0.1:0")
	sub.recordingReceiver("rec", "got.log")
	pub.start()
	sub.start()
	sub.addPeer(pub, "--subscribable", "m.>")
	id := sub.subscribe(pub, "m.>", "rec")

	sub.mustRun("service", "stop")
	pub.mustPublishRange("m.a", 1, 5)
	pubURL := pub.metricsURL()
	if !strings.HasPrefix(pubURL, "http://127.0.0.1:") || !strings.HasSuffix(pubURL, "/metrics") {
		t.Fatalf("metrics URL %q, want http://127.0.0.1:<port>/metrics", pubURL)
	}
	m := pub.scrape(pubURL)
	want := func(m map[string]*dto.MetricFamily, who, name string, v float64, labels ...string) {
		t.Helper()
		got, ok := metricValue(m, name, labels...)
		if !ok {
			t.Fatalf("%s: no series %s%v", who, name, labels)
		}
		if got != v {
			t.Fatalf("%s: %s%v = %v, want %v", who, name, labels, got, v)
		}
	}
	want(m, "publisher", "coattail_info", 1, "peer_id", pub.peerID())
	want(m, "publisher", "coattail_published_total", 5)
	want(m, "publisher", "coattail_queue_depth", 5, "subscription", id, "subscriber", sub.peerID(), "pattern", "m.>")
	want(m, "publisher", "coattail_queue_connected", 0, "subscription", id)
	want(m, "publisher", "coattail_queue_delivered_total", 0, "subscription", id)
	want(m, "publisher", "coattail_metrics_errors", 0)
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "coattail_disk_free_bytes"} {
		if m[name] == nil {
			t.Errorf("publisher: no %s in the metrics", name)
		}
	}
	libp2p := false
	for name := range m {
		libp2p = libp2p || strings.HasPrefix(name, "libp2p_")
	}
	if !libp2p {
		t.Error("publisher: no libp2p_* metrics")
	}

	sub.start()
	sub.waitLines("got.log", 5, 30*time.Second)
	pub.waitDrained(id, 5, 30*time.Second)
	m = pub.scrape(pubURL)
	want(m, "publisher", "coattail_queue_depth", 0, "subscription", id)
	want(m, "publisher", "coattail_queue_delivered_total", 5, "subscription", id)
	want(m, "publisher", "coattail_queue_connected", 1, "subscription", id)
	if v, ok := metricValue(m, "coattail_queue_last_delivered_time_seconds", "subscription", id); !ok || v < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Fatalf("publisher: coattail_queue_last_delivered_time_seconds = %v (present %v), want about now", v, ok)
	}
	sm := sub.scrape(sub.metricsURL())
	want(sm, "subscriber", "coattail_received_total", 5)
	want(sm, "subscriber", "coattail_subscription_last_seq", 5, "subscription", id, "publisher", pub.peerID(), "pattern", "m.>", "receiver", "rec")
	want(sm, "subscriber", "coattail_subscription_connected", 1, "subscription", id)

	// Only GET /metrics (and an index) are served.
	resp, err := http.Post(pubURL, "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST /metrics: %s, want 405", resp.Status)
	}
}

// A metrics port already in use stops the service from starting, naming
// the setting; a malformed address is a config error `config check`
// names; an address other machines reach is allowed with a warning.
func TestMetricsListenRefused(t *testing.T) {
	a := newInstance(t, "mbad")
	a.enableMetrics(fmt.Sprintf("127.0.0.1:%d", busyPort(t)))
	a.mustFail([]string{"service", "start", "--headless"}, "metrics.listen", "address already in use")

	b := newInstance(t, "mbad2")
	b.enableMetrics("metrics.example:80")
	b.mustFail([]string{"config", "check"}, "metrics.listen", "not an IP address")
	b.mustFail([]string{"service", "start", "--headless"}, "metrics.listen")

	c := newInstance(t, "mwarn")
	c.enableMetrics("0.0.0.0:0")
	_, stderr, code := c.run("config", "check")
	if code != 0 || !strings.Contains(stderr, "warning: metrics.listen 0.0.0.0:0 is reachable from other machines") {
		t.Fatalf("config check of metrics.listen 0.0.0.0:0: exit %d, stderr %q; want 0 and a warning", code, stderr)
	}
}
