package perf

import (
	"errors"
	"strings"
	"testing"
)

func TestDeliveryRun(t *testing.T) {
	r, err := Delivery(t.Context(), DeliveryOptions{Size: 200, Subscribers: 2, Messages: 3000, Paced: true, Window: 64 << 10, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if r.Messages != 3000 || r.Subscribers != 2 || r.Mode != "paced" || r.Window != DefaultPublishers*MaxBatch*200 || r.Batch != MaxBatch || r.Publishers != DefaultPublishers {
		t.Fatalf("result describes another run: %+v", r)
	}
	if r.MsgsPerSec <= 0 || r.RawMsgsPerSec <= 0 || r.DiskMBPerSec <= 0 || r.XRaw <= 0 || r.XDisk <= 0 {
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
