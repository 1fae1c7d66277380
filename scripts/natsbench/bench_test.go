package main

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

// TestShortRun measures every system with few messages, at 128 B and
// 64 KiB, and checks what the program reports: each system delivered
// exactly what was published, the rates are real and the ratios are
// Coattail's rate over each baseline's from the same run.
func TestShortRun(t *testing.T) {
	for _, c := range []struct {
		size, messages, sync int
	}{
		{128, 3000, 500},
		{64 << 10, 200, 50},
	} {
		o := options{Size: c.size, Messages: c.messages, SyncMessages: c.sync, Runs: 2, Timeout: 2 * time.Minute}
		r, err := run(t.Context(), o)
		if err != nil {
			t.Fatalf("size %d: %v", c.size, err)
		}
		if r.Size != c.size || r.Messages != c.messages || r.SyncMessages != c.sync || len(r.Runs) != 2 {
			t.Fatalf("size %d: result describes another run: %+v", c.size, r)
		}
		// JetStream may have as many publishes out as Coattail kept
		// (perf.Delivery says how many bytes: 16 MiB at 64 KiB, more
		// than its 8 MiB default window), at most 4096.
		if kept := r.Runs[0].CoattailDetail.Window; r.CoattailWindow != kept || r.JetStreamWindow != min(4096, kept/c.size) {
			t.Errorf("size %d: windows coattail %d, JetStream %d; Coattail kept %d bytes, so want %d and %d", c.size, r.CoattailWindow, r.JetStreamWindow, kept, kept, min(4096, kept/c.size))
		}
		for i, run := range r.Runs {
			want := map[string]int{sysCoattail: c.messages, sysCore: c.messages, sysJetStream: c.messages, sysJetStreamSync: c.sync}
			for _, m := range run.all() {
				n, ok := want[m.System]
				if !ok {
					t.Fatalf("size %d run %d: unexpected system %q", c.size, i, m.System)
				}
				delete(want, m.System)
				if m.Messages != n || m.Delivered != n {
					t.Errorf("size %d run %d: %s published %d and delivered %d, want %d", c.size, i, m.System, m.Messages, m.Delivered, n)
				}
				if m.MsgsPerSec <= 0 || m.MBPerSec <= 0 || m.Seconds <= 0 || m.Cores <= 0 {
					t.Errorf("size %d run %d: %s: rates %+v", c.size, i, m.System, m)
				}
				if got, want := m.MBPerSec, m.MsgsPerSec*float64(c.size)/1e6; !near(got, want) {
					t.Errorf("size %d run %d: %s: %v MB/s, want %v", c.size, i, m.System, got, want)
				}
				if m.System == sysCoattail {
					if m.XCoattail != 0 {
						t.Errorf("size %d run %d: coattail has a ratio against itself: %v", c.size, i, m.XCoattail)
					}
					continue
				}
				if got, want := m.XCoattail, run.Coattail.MsgsPerSec/m.MsgsPerSec; !near(got, want) || got <= 0 {
					t.Errorf("size %d run %d: %s ratio %v, want %v (coattail %v msgs/s over %v)",
						c.size, i, m.System, got, want, run.Coattail.MsgsPerSec, m.MsgsPerSec)
				}
			}
			if len(want) > 0 {
				t.Errorf("size %d run %d: missing %v", c.size, i, want)
			}
			if run.CoattailDetail.Mode != "paced" || run.CoattailDetail.Subscribers != 1 || run.CoattailDetail.Size != c.size {
				t.Errorf("size %d run %d: coattail ran another case: %+v", c.size, i, run.CoattailDetail)
			}
			if js := run.JetStream; js.Window != r.JetStreamWindow || js.PublishSeconds <= 0 || js.PublishSeconds > js.Seconds {
				t.Errorf("size %d run %d: JetStream window %d, published in %vs of %vs", c.size, i, js.Window, js.PublishSeconds, js.Seconds)
			}
		}

		var out bytes.Buffer
		printResult(&out, r)
		text := out.String()
		for _, want := range []string{"run 1 of 2", "run 2 of 2", "ranges over 2 runs", sysCore, sysJetStreamSync,
			"COATTAIL / BASELINE", ratio(r.Runs[1].JetStream), "JetStream PubAcks all in after"} {
			if !strings.Contains(text, want) {
				t.Errorf("size %d: output lacks %q:\n%s", c.size, want, text)
			}
		}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var back Result
		if err := json.Unmarshal(b, &back); err != nil || back.Runs[0].Core.XCoattail != r.Runs[0].Core.XCoattail {
			t.Errorf("size %d: JSON does not round-trip (%v): %s", c.size, err, b)
		}
	}
}

// near reports whether a and b agree to a relative 1e-9.
func near(a, b float64) bool {
	return math.Abs(a-b) <= 1e-9*math.Max(math.Abs(a), math.Abs(b))
}

func TestFlags(t *testing.T) {
	var stderr bytes.Buffer
	o, asJSON, err := parseFlags([]string{"--size", "64KiB", "--json"}, &stderr)
	if err != nil || !asJSON || o.Size != 64<<10 || o.Messages != 10_000 || o.SyncMessages != defaultSyncMessages || o.Runs != 1 {
		t.Errorf("--size 64KiB --json: %+v, %v, %v", o, asJSON, err)
	}
	if o, _, err := parseFlags([]string{"--size", "128B"}, &stderr); err != nil || o.Messages != 1_000_000 {
		t.Errorf("--size 128B: %+v, %v (want 1000000 messages)", o, err)
	}
	if o, _, err := parseFlags([]string{"--size", "1MiB"}, &stderr); err != nil || o.Messages != 10_000 {
		t.Errorf("--size 1MiB: %+v, %v (want 10000 messages)", o, err)
	}
	_, _, err = parseFlags([]string{"--size", "4B", "--messages", "-1", "--runs", "0", "--sync-messages", "0", "--timeout", "0s", "extra"}, &stderr)
	if err == nil {
		t.Fatal("bad flags accepted")
	}
	for _, want := range []string{"--size 4B", "--messages -1", "--runs 0", "--sync-messages 0", "--timeout 0s", "extra"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if code := mainErr([]string{"--size", "lots"}, &bytes.Buffer{}, &stderr); code != 2 {
		t.Errorf("exit status for a bad flag: %d, want 2", code)
	}
}
