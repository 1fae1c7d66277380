package main

import (
	"bytes"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// `action publish --stdin` whose service is stopped part-way says which
// lines were published and that the batch in flight may or may not have
// been: the service may have queued it before it noticed the stop. It said
// "the batch of stdin lines … was refused" (the service's answer to a
// request its stop cut), and an operator re-sending from there published
// those lines twice. The report is checked against what was queued.
func TestPublishStdinCutByServiceStop(t *testing.T) {
	pub, sub := newInstance(t, "pub"), newInstance(t, "sub")
	pub.fixPort()
	pub.start()
	sub.start()
	sub.recordingReceiver("bb.log", "bb.txt")
	sub.addPeer(pub, "--subscribable", "bb.>")
	id := sub.subscribe(pub, "bb.>", "bb.log")
	sub.mustRun("service", "stop") // publications wait in the queue

	var input bytes.Buffer
	for n := 1; n <= 400000; n++ {
		fmt.Fprintf(&input, "%d\n", n)
	}
	report := regexp.MustCompile(`(\d+) line\(s\) before stdin line \d+ were published; (?:the batch of stdin lines \d+-\d+ \((\d+) line\(s\)\) got no answer|the service stopped while it published the batch of stdin lines \d+-\d+ \((\d+) line\(s\)\)), so it may or may not have been published`)
	for attempt := 1; ; attempt++ {
		before := uint64(0)
		if s, ok := pub.subscriberFor(id); ok {
			before = s.NextSeq - 1
		}
		cmd := exec.Command(binPath, "action", "publish", "--action", "bb.x", "--stdin")
		cmd.Dir, cmd.Env, cmd.Stdin = pub.dir, childEnv(t, pub.env...), bytes.NewReader(input.Bytes())
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Stop the service once the first batches are queued.
		checkFor(t, 30*time.Second, func() error {
			if s, ok := pub.subscriberFor(id); !ok || s.NextSeq-1 < before+4096 {
				return fmt.Errorf("the first batch is not queued yet")
			}
			return nil
		})
		pub.mustRun("service", "stop")
		err := cmd.Wait()
		if err == nil {
			if attempt == 3 {
				t.Fatalf("the publish finished before the service stopped, %d times", attempt)
			}
			pub.start()
			continue
		}
		msg := stderr.String()
		t.Logf("attempt %d: %s", attempt, strings.TrimSpace(msg))
		if strings.Contains(msg, "was refused") {
			t.Fatalf("a batch cut by the service stopping was reported refused:\n%s", msg)
		}
		m := report.FindStringSubmatch(msg)
		if m == nil {
			t.Fatalf("publish cut by the service stopping: %v, stderr:\n%s", err, msg)
		}
		published, _ := strconv.ParseUint(m[1], 10, 64)
		batch, _ := strconv.ParseUint(m[2]+m[3], 10, 64)
		pub.start()
		s, ok := pub.subscriberFor(id)
		if !ok {
			t.Fatal("the subscription is gone")
		}
		if queued := s.NextSeq - 1 - before; queued != published && queued != published+batch {
			t.Errorf("the publish reported %d published and a batch of %d unknown, but %d were queued", published, batch, queued)
		}
		return
	}
}
