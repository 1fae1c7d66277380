package perf

import (
	"context"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// envServe makes the test binary a subscriber process (see TestMain);
// envDieAfter makes that process exit (status 7) that long after its
// receiver got the first publication: during the run, however long the
// set-up took on a loaded machine.
const (
	envServe    = "COATTAIL_PERF_TEST_SUBSCRIBER"
	envDieAfter = "COATTAIL_PERF_TEST_DIE_AFTER"
)

func TestMain(m *testing.M) {
	if os.Getenv(envServe) == "1" {
		if d, err := time.ParseDuration(os.Getenv(envDieAfter)); err == nil {
			testHookFirstReceived = func() {
				time.AfterFunc(d, func() {
					os.Stderr.WriteString("dying as asked\n")
					os.Exit(7)
				})
			}
		}
		if err := ServeSubscriber(context.Background(), os.Stdin, os.Stdout); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// spawnSelf runs subscriber processes as this test binary.
func spawnSelf(ctx context.Context) *exec.Cmd {
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), envServe+"=1")
	return cmd
}

// Subscribers in processes of their own: every publication reaches every
// process's receiver exactly once (the run checks the counts), and each
// process exits cleanly, by itself, when Delivery is done with it.
func TestDeliveryRunProcesses(t *testing.T) {
	for _, paced := range []bool{true, false} {
		var started []*exec.Cmd
		killed := 0
		spawn := func(ctx context.Context) *exec.Cmd {
			cmd := spawnSelf(ctx)
			cmd.Cancel = func() error { killed++; return cmd.Process.Kill() }
			started = append(started, cmd)
			return cmd
		}
		r, err := Delivery(t.Context(), DeliveryOptions{Size: 300, Subscribers: 2, Messages: 4000, Paced: paced,
			Window: 64 << 10, Dir: t.TempDir(), Spawn: spawn})
		if err != nil {
			t.Fatal(err)
		}
		if !r.Processes || r.Subscribers != 2 || r.Messages != 4000 || r.MsgsPerSec <= 0 || r.RawMsgsPerSec <= 0 || r.Cores <= 0 {
			t.Fatalf("result: %+v", r)
		}
		// The publisher's own CPU is part of the whole, and its ratio to
		// the raw sender's is what the fields say.
		if r.PublisherCores <= 0 || r.PublisherCores > r.Cores || r.PublisherCPUPerMsg <= 0 || r.RawSenderCPUPerMsg <= 0 ||
			math.Abs(r.XRawCPU-r.RawSenderCPUPerMsg/r.PublisherCPUPerMsg) > 1e-9 {
			t.Fatalf("publisher CPU: %+v", r)
		}
		if len(started) != 2 {
			t.Fatalf("%d subscriber processes started, want 2", len(started))
		}
		for _, c := range started {
			if c.ProcessState == nil || c.ProcessState.ExitCode() != 0 {
				t.Fatalf("subscriber process %d did not exit cleanly: %v", c.Process.Pid, c.ProcessState)
			}
		}
		if killed > 0 {
			t.Fatalf("%d subscriber processes had to be killed", killed)
		}
	}
}

// A subscriber process that fails fails the run with a clear error,
// promptly.
func TestDeliveryProcessFails(t *testing.T) {
	sh := func(script string) func(context.Context) *exec.Cmd {
		return func(ctx context.Context) *exec.Cmd { return exec.CommandContext(ctx, "sh", "-c", script) }
	}
	for _, tc := range []struct {
		name      string
		spawn     func(context.Context) *exec.Cmd
		blockSub0 bool // a file where subscriber 0's instance directory goes
		want      []string
	}{
		{"exits at once", sh("echo broken >&2; exit 3"), false, []string{"subscriber 0", "exit status 3", "broken"}},
		{"answers garbage", sh("read x; echo not-json"), false, []string{"subscriber 0", "invalid character"}},
		{"cannot create its instance", spawnSelf, true, []string{"subscriber 0", "exit status 1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.blockSub0 {
				if err := os.WriteFile(filepath.Join(dir, "subscriber-0"), []byte("x"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			_, err := Delivery(t.Context(), DeliveryOptions{Size: 100, Subscribers: 1, Messages: 10, Dir: dir, Spawn: tc.spawn})
			if err == nil {
				t.Fatal("Delivery succeeded")
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

// A subscriber process that exits during the run ends it at once, saying
// so (it used to wait for the run's timeout). It exits at its first
// publication: after the raw baseline, with the durable run under way
// (timed from the process's start, the exit fell into the set-up on a
// loaded machine, which says so differently).
func TestDeliveryProcessDiesMidRun(t *testing.T) {
	spawn := func(ctx context.Context) *exec.Cmd {
		cmd := spawnSelf(ctx)
		cmd.Env = append(cmd.Env, envDieAfter+"=0s")
		return cmd
	}
	start := time.Now()
	_, err := Delivery(t.Context(), DeliveryOptions{Size: 128, Subscribers: 1, Messages: 1_000_000, Paced: true,
		Dir: t.TempDir(), Spawn: spawn, Timeout: 2 * time.Minute})
	if err == nil {
		t.Fatal("Delivery succeeded")
	}
	for _, want := range []string{"exited during the run", "exit status 7", "dying as asked"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if d := time.Since(start); d > time.Minute {
		t.Fatalf("Delivery took %v to notice: %v", d, err)
	}
}

// The run fails when a receiver ran a publication more or fewer times than
// once.
func TestCheckExactlyOnce(t *testing.T) {
	c := &cluster{counts: []*counter{{}, {}}}
	c.counts[0].n.Store(10)
	c.counts[1].n.Store(11)
	err := c.checkExactlyOnce(10)
	if err == nil || !strings.Contains(err.Error(), "subscriber 1 processed 11 publications, want 10") {
		t.Fatalf("checkExactlyOnce = %v", err)
	}
	c.counts[1].n.Store(10)
	if err := c.checkExactlyOnce(10); err != nil {
		t.Fatal(err)
	}
}
