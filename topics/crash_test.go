package topics

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/coattail/coattail/datastore"
)

// crashEnv names the datastore directory of TestQueueCrashHelperProcess.
const crashEnv = "COATTAIL_TOPICS_CRASH_DIR"

// crashMsg is the data of one message of the crash test: which Publish
// call (batch) it belongs to, its index in it, the batch size, and padding
// derived from them, so a torn or mixed-up value is detected.
type crashMsg struct {
	Batch string `json:"b"`
	Index int    `json:"i"`
	Size  int    `json:"n"`
	Pad   string `json:"p"`
}

func crashPad(batch string, i int) string {
	return strings.Repeat(batch+"-"+strconv.Itoa(i)+";", 40)
}

// TestQueueCrashHelperProcess is not a test by itself: started by
// TestQueueSurvivesKillMidGroupCommit, it publishes batches from several
// goroutines, so that group commits are always in progress, and prints
// "ack <batch>" once each Publish has returned, until it is killed.
func TestQueueCrashHelperProcess(t *testing.T) {
	dir := os.Getenv(crashEnv)
	if dir == "" {
		t.Skip("helper process for TestQueueSurvivesKillMidGroupCommit")
	}
	fail := func(err error) {
		os.Stdout.WriteString("error: " + err.Error() + "\n")
		os.Exit(2)
	}
	db, err := datastore.Open(dir)
	if err != nil {
		fail(err)
	}
	ctx := context.Background()
	qs, err := OpenQueues(ctx, db.Batching(), QueueOptions{})
	if err != nil {
		fail(err)
	}
	if _, ok := qs.Subscription("crash"); !ok {
		if err := qs.AddSubscription(ctx, Subscription{ID: "crash", Subscriber: "p", Pattern: "crash.>", TokenID: "t", Receiver: "r"}); err != nil {
			fail(err)
		}
	}
	round := os.Getenv(crashEnv + "_ROUND")
	var mu sync.Mutex // one ack line at a time
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; ; k++ {
				batch := fmt.Sprintf("r%s.w%d.%d", round, w, k)
				size := 1 + (k*7+w)%9
				msgs := make([]Message, size)
				for i := range msgs {
					b, _ := json.Marshal(crashMsg{Batch: batch, Index: i, Size: size, Pad: crashPad(batch, i)})
					msgs[i] = Message{Subject: "crash.m", Data: b, Time: int64(k)}
				}
				if _, err := qs.Publish(ctx, msgs, nil); err != nil {
					fail(err)
				}
				mu.Lock()
				os.Stdout.WriteString("ack " + batch + "\n")
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// TestQueueSurvivesKillMidGroupCommit SIGKILLs a process that is
// publishing from several goroutines (so a group commit is in flight at
// almost any moment), reopens the datastore and checks that every
// acknowledged publication is there, every Publish call is all or nothing,
// every stored message is intact, and sequences are contiguous and never
// reused — over several rounds on the same datastore.
func TestQueueSurvivesKillMidGroupCommit(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills child processes")
	}
	dir := t.TempDir()
	acked := map[string]bool{}
	rng := rand.New(rand.NewPCG(uint64(os.Getpid()), 7))
	const rounds = 5
	var lastSeq uint64
	for round := range rounds {
		cmd := exec.Command(os.Args[0], "-test.run=^TestQueueCrashHelperProcess$")
		cmd.Env = append(os.Environ(), crashEnv+"="+dir, crashEnv+"_ROUND="+strconv.Itoa(round))
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill after a random number of acknowledged batches: the other
		// writers are mid-Publish at that moment.
		want := 20 + rng.IntN(200)
		sc := bufio.NewScanner(stdout)
		got := 0
		for got < want && sc.Scan() {
			line := sc.Text()
			batch, ok := strings.CutPrefix(line, "ack ")
			if !ok {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				t.Fatalf("round %d: helper said %q", round, line)
			}
			acked[batch] = true
			got++
		}
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		// Acks printed before the kill landed still count.
		for sc.Scan() {
			if batch, ok := strings.CutPrefix(sc.Text(), "ack "); ok {
				acked[batch] = true
			}
		}
		_ = cmd.Wait()
		if got < want {
			t.Fatalf("round %d: helper stopped after %d acks", round, got)
		}
		lastSeq = checkCrashQueue(t, dir, acked, lastSeq)
	}
	t.Logf("%d acknowledged batches over %d kills; last sequence %d", len(acked), rounds, lastSeq)
}

// checkCrashQueue reopens the queue in dir and checks it against acked;
// it returns the last sequence, which must not be below prevLast.
func checkCrashQueue(t *testing.T, dir string, acked map[string]bool, prevLast uint64) uint64 {
	t.Helper()
	db, err := datastore.Open(dir)
	if err != nil {
		t.Fatalf("reopen after kill: %v", err)
	}
	defer db.Close()
	qs, err := OpenQueues(context.Background(), db.Batching(), QueueOptions{})
	if err != nil {
		t.Fatalf("OpenQueues after kill: %v", err)
	}
	defer qs.Close()
	seen := map[string][]bool{} // batch -> which indexes are stored
	var last uint64
	for {
		items, err := qs.Read("crash", last, 4096, 0)
		if err != nil {
			t.Fatalf("Read after kill: %v", err)
		}
		if len(items) == 0 {
			break
		}
		for _, it := range items {
			if it.Seq != last+1 {
				t.Fatalf("sequence gap or reorder: %d after %d", it.Seq, last)
			}
			last = it.Seq
			var m crashMsg
			if err := json.Unmarshal(it.Message.Data, &m); err != nil || it.Message.Subject != "crash.m" ||
				m.Pad != crashPad(m.Batch, m.Index) || m.Index >= m.Size {
				t.Fatalf("seq %d is damaged: subject %q, data %.80q (%v)", it.Seq, it.Message.Subject, it.Message.Data, err)
			}
			s := seen[m.Batch]
			if s == nil {
				s = make([]bool, m.Size)
				seen[m.Batch] = s
			}
			if len(s) != m.Size || s[m.Index] {
				t.Fatalf("seq %d: message %d of batch %s stored twice or with another size", it.Seq, m.Index, m.Batch)
			}
			s[m.Index] = true
		}
	}
	if last < prevLast {
		t.Fatalf("the queue shrank from %d to %d messages", prevLast, last)
	}
	for batch, s := range seen {
		for i, ok := range s {
			if !ok {
				t.Fatalf("batch %s is half-written: message %d of %d missing", batch, i, len(s))
			}
		}
	}
	for batch := range acked {
		if seen[batch] == nil {
			t.Fatalf("acknowledged batch %s is missing after the kill", batch)
		}
	}
	st := status(t, qs, "crash")
	if st.NextSeq != last+1 {
		t.Fatalf("next sequence %d after reopening, but the last stored message is %d", st.NextSeq, last)
	}
	return last
}
