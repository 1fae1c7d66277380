package perf

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

func TestDeliveryRun(t *testing.T) {
	r, err := Delivery(t.Context(), DeliveryOptions{Size: 200, Subscribers: 2, Messages: 3000, Paced: true, Window: 64 << 10, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if r.Messages != 3000 || r.Subscribers != 2 || r.Mode != "paced" || r.Window != DefaultPublishers*MaxBatch*200 || r.Batch != MaxBatch || r.Publishers != DefaultPublishers {
		t.Fatalf("result describes another run: %+v", r)
	}
	if r.MsgsPerSec <= 0 || r.RawMsgsPerSec <= 0 || r.DiskMBPerSec <= 0 || r.XRaw <= 0 || r.XDisk <= 0 || r.StoreMBPerSec <= 0 || r.XStore <= 0 || r.StoreXRaw <= 0 {
		t.Fatalf("rates: %+v", r)
	}
	if r.Processes || r.PublisherCores != 0 || r.XRawCPU != 0 {
		t.Fatalf("an in-process run reports a publisher process apart: %+v", r)
	}
}

func TestDeliveryOptions(t *testing.T) {
	_, err := Delivery(t.Context(), DeliveryOptions{Size: 4, Subscribers: 65, Messages: 0, Window: 2, Publishers: -1, Transport: "x", Receiver: "y"})
	if !errors.Is(err, ErrOptions) {
		t.Fatalf("Delivery with bad options = %v, want ErrOptions", err)
	}
	for _, want := range []string{"size 4", "subscribers 65", "messages 0", "window 2", "publishers -1", `transport "x"`, `receiver "y"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if got := BatchFor(64 << 10); got != 16 {
		t.Errorf("BatchFor(64 KiB) = %d, want 16 (1 MiB per batch)", got)
	}
	if got := BatchFor(1 << 20); got != 1 {
		t.Errorf("BatchFor(1 MiB) = %d, want 1", got)
	}
}

// The baselines that run after the durable one stop when the run is
// cancelled (Ctrl-C), however many messages are left, and leave nothing
// behind.
func TestBaselinesStopWhenCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	dir := t.TempDir()
	data := make([]byte, 128)
	if _, err := storeRate(ctx, dir, 1<<30, data, 1<<16); !errors.Is(err, context.Canceled) {
		t.Fatalf("store baseline with a cancelled context: %v, want context.Canceled", err)
	}
	if _, err := diskRate(ctx, dir, 1<<30, data, 16); !errors.Is(err, context.Canceled) {
		t.Fatalf("disk baseline with a cancelled context: %v, want context.Canceled", err)
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
		t.Fatalf("the baselines left %d entries in their directory (%v)", len(entries), err)
	}

	// The raw stream, cancelled while it sends.
	o := DeliveryOptions{Transport: "tcp"}
	from, err := startNode(t.Context(), filepath.Join(dir, "from"), o)
	if err != nil {
		t.Fatal(err)
	}
	defer from.Close()
	to, err := startNode(t.Context(), filepath.Join(dir, "to"), o)
	if err != nil {
		t.Fatal(err)
	}
	defer to.Close()
	serveRaw(to, 1<<30, len(data))
	if err := from.Host().Connect(t.Context(), peer.AddrInfo{ID: to.Host().ID(), Addrs: to.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithCancel(t.Context())
	sending := func() bool {
		for _, c := range from.Host().Network().ConnsToPeer(to.Host().ID()) {
			for _, s := range c.GetStreams() {
				if s.Protocol() == rawProto {
					return true
				}
			}
		}
		return false
	}
	go func() {
		// Cancel once the raw stream is open and carrying messages.
		for ctx.Err() == nil && !sending() {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(100 * time.Millisecond)
		cancel()
	}()
	if _, err := rawStreamRate(ctx, from, []peer.ID{to.Host().ID()}, 1<<30, data); !errors.Is(err, context.Canceled) {
		t.Fatalf("raw stream cancelled while sending: %v, want context.Canceled", err)
	}
}
