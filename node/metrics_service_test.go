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
