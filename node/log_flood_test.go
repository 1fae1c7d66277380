package node_test

import (
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/wire"
)

// A peer can make an instance refuse streams at its rate limit (2000/s by
// default). Each refusal was logged, so a flood filled the log (rotating
// everything else away within seconds); now such lines are sampled (20/s,
// bursts of 100) and the next line written says how many were left out.
func TestRefusedStreamFloodIsSampledInLog(t *testing.T) {
	var logs syncBuffer
	a := newTestNode(t, func(o *node.Options) { o.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	h := newStockHost(t, a)
	const streams = 400
	refuse := func() {
		s := rawStream(t, h, a, wire.ProtoList)
		rvWrite(t, s, wire.AppendFrame(nil, wire.THello, []byte(`{"token":"not a token","version":1}`)))
		_, _ = io.Copy(io.Discard, s) // the refusal, then the end of the stream: logged by then
		_ = s.Close()
	}
	start := time.Now()
	for range streams {
		refuse()
	}
	elapsed := time.Since(start)
	refused := strings.Count(logs.String(), `msg="stream refused"`)
	// The limiter's own bound over the time the flood took.
	if bound := 100 + int(20*elapsed.Seconds()) + 1; refused == 0 || refused > bound {
		t.Fatalf("%d of %d refused streams logged in %v, want 1..%d", refused, streams, elapsed, bound)
	}
	// Once the rate allows a line again (one per 50 ms), it counts the
	// refusals left out.
	time.Sleep(100 * time.Millisecond)
	refuse()
	if refused < streams && !strings.Contains(logs.String(), "suppressed_since_last=") {
		t.Fatalf("%d of %d refusals logged, and no line says how many were left out", refused, streams)
	}
}
