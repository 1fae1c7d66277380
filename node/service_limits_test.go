package node_test

import (
	"bytes"
	"crypto/rand"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
)

// The resource manager runs with libp2p's default limits (SECURITY.md),
// including those of libp2p's own services: one peer may hold at most 2
// inbound ping streams at once (as it may hold only a few identify,
// AutoNAT or hole-punch streams), however many it opens.
func TestLibp2pServiceLimitsPerPeer(t *testing.T) {
	n := newTestNode(t, withQuietLog())
	ctx := testCtx(t)
	// A peer without limits of its own (libp2p's defaults would stop it at
	// 3 outbound ping streams).
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(rcmgr.InfiniteLimits))
	if err != nil {
		t.Fatal(err)
	}
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.ResourceManager(rm))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	if err := h.Connect(ctx, peer.AddrInfo{ID: n.ID(), Addrs: n.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	var open []network.Stream
	t.Cleanup(func() {
		for _, s := range open {
			_ = s.Reset()
		}
	})
	const tries = 8
	for range tries {
		s, err := h.NewStream(ctx, n.ID(), ping.ID)
		if err != nil {
			continue
		}
		_ = s.SetDeadline(time.Now().Add(testTimeout))
		// One ping: the node echoes 32 bytes on a stream it accepted, and
		// resets one over the limit.
		buf := make([]byte, 32)
		_, _ = rand.Read(buf)
		got := make([]byte, 32)
		if _, err := s.Write(buf); err == nil {
			if _, err = io.ReadFull(s, got); err == nil && bytes.Equal(got, buf) {
				open = append(open, s) // kept open: it holds its slot
				continue
			}
		}
		_ = s.Reset()
	}
	if len(open) == 0 {
		t.Fatal("no ping stream was accepted at all")
	}
	if len(open) > 2 {
		t.Fatalf("one peer holds %d concurrent ping streams of %d opened; libp2p's service limits allow 2", len(open), tries)
	}
}
