package node_test

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
)

// A service with metrics.listen serves them at the URL its status gives,
// and its port is closed once the service has returned.
func TestServiceServesMetrics(t *testing.T) {
	cfg := node.LoopbackConfig(0)
	cfg.Metrics.Listen = "127.0.0.1:0"
	l, done, cancel := startService(t, cfg)
	c := localapi.Dial(l.Socket())
	defer c.Close()
	st, err := c.Status(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(st.Metrics, "http://127.0.0.1:") || !strings.HasSuffix(st.Metrics, "/metrics") {
		t.Fatalf("status metrics URL %q, want http://127.0.0.1:<port>/metrics", st.Metrics)
	}
	hc := http.Client{Timeout: testTimeout}
	resp, err := hc.Get(st.Metrics)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `coattail_info{peer_id="`+st.PeerID+`"`) {
		t.Fatalf("scrape: %s, %v; want 200 with coattail_info of %s:\n%.2000s", resp.Status, err, st.PeerID, b)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("RunService: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("the service did not stop")
	}
	addr := strings.TrimSuffix(strings.TrimPrefix(st.Metrics, "http://"), "/metrics")
	if conn, err := net.Dial("tcp", addr); err == nil {
		conn.Close()
		t.Fatalf("the metrics port %s still accepts connections after the service returned", addr)
	}
}

// On a loopback address the metrics answer only requests that name an IP
// address or localhost as their host: a web page in a browser on the
// machine could otherwise read them under a name of its own resolving to
// 127.0.0.1 (DNS rebinding).
func TestServiceMetricsRefuseOtherHostNames(t *testing.T) {
	cfg := node.LoopbackConfig(0)
	cfg.Metrics.Listen = "localhost:0"
	l, done, cancel := startService(t, cfg)
	defer func() {
		cancel()
		<-done
	}()
	c := localapi.Dial(l.Socket())
	defer c.Close()
	st, err := c.Status(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	_, port, err := net.SplitHostPort(strings.TrimSuffix(strings.TrimPrefix(st.Metrics, "http://"), "/metrics"))
	if err != nil {
		t.Fatalf("status metrics URL %q: %v", st.Metrics, err)
	}
	hc := http.Client{Timeout: testTimeout}
	for host, want := range map[string]int{
		"127.0.0.1:" + port:          http.StatusOK,
		"localhost:" + port:          http.StatusOK,
		"LocalHost.:" + port:         http.StatusOK,
		"metrics.localhost:" + port:  http.StatusOK,
		"127.0.0.1":                  http.StatusOK,
		"[::1]:" + port:              http.StatusOK,
		"attacker.example:" + port:   http.StatusForbidden,
		"attacker.example":           http.StatusForbidden,
		"localhost.attacker.example": http.StatusForbidden,
	} {
		req, err := http.NewRequest("GET", st.Metrics, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != want {
			t.Errorf("Host %q: %s, %v; want %d", host, resp.Status, err, want)
		}
		if want == http.StatusOK && !strings.Contains(string(b), "coattail_info{") {
			t.Errorf("Host %q: 200 without the metrics:\n%.300s", host, b)
		}
		if want == http.StatusForbidden && (strings.Contains(string(b), st.PeerID) || !strings.Contains(string(b), "scrape 127.0.0.1:<port>")) {
			t.Errorf("Host %q: refused with %.300q, want the explanation and no peer id", host, b)
		}
	}
}
