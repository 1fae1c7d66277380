package main

// Helpers for the end-to-end tests of subscriptions and durable
// publication (e2e_subs_test.go): wiring a subscriber to a publisher,
// reading the JSON listings, publishing from stdin, and waiting on the
// files receivers write.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// subscriptionJSON is `subscriptions list --json`.
type subscriptionJSON struct {
	ID        string `json:"id"`
	Publisher string `json:"publisher"`
	Pattern   string `json:"pattern"`
	Receiver  string `json:"receiver"`
	LastSeq   uint64 `json:"last_seq"`
	Connected bool   `json:"connected"`
}

// subscriberJSON is `subscribers list --json`.
type subscriberJSON struct {
	ID         string `json:"id"`
	Subscriber string `json:"subscriber"`
	Pattern    string `json:"pattern"`
	TokenID    string `json:"token_id"`
	Connected  bool   `json:"connected"`
	NextSeq    uint64 `json:"next_seq"`
	Acked      uint64 `json:"acked"`
	Depth      uint64 `json:"queue_depth"`
	Delivered  uint64 `json:"delivered"`
	Dropped    uint64 `json:"dropped"`
	Corrupt    uint64 `json:"corrupt"`
}

// deadLetterJSON is an entry of `deadletters list --json`.
type deadLetterJSON struct {
	ID       string `json:"id"`
	Receiver string `json:"receiver"`
	Subject  string `json:"subject"`
	Seq      uint64 `json:"seq"`
	Data     any    `json:"data"`
	Omitted  bool   `json:"data_omitted"`
	Error    string `json:"error"`
	Attempts int    `json:"attempts"`
}

// countersJSON is the counters object of `service status --json`.
type countersJSON struct {
	Published   uint64 `json:"published"`
	Delivered   uint64 `json:"delivered"`
	Redelivered uint64 `json:"redelivered"`
	Dropped     uint64 `json:"dropped"`
	Received    uint64 `json:"received"`
	Duplicates  uint64 `json:"duplicates"`
	DeadLetters uint64 `json:"dead_letters"`
}

func (i *instance) subscriptions() []subscriptionJSON {
	i.t.Helper()
	var v []subscriptionJSON
	i.decodeJSON(i.mustRun("subscriptions", "list", "--json"), &v)
	return v
}

func (i *instance) subscribers() []subscriberJSON {
	i.t.Helper()
	var v []subscriberJSON
	i.decodeJSON(i.mustRun("subscribers", "list", "--json"), &v)
	return v
}

// deadLetterListJSON is `deadletters list --json`: one page.
type deadLetterListJSON struct {
	DeadLetters []deadLetterJSON `json:"dead_letters"`
	More        bool             `json:"more"`
	Next        string           `json:"next"`
}

// deadLetters returns every dead letter, with its data.
func (i *instance) deadLetters() []deadLetterJSON {
	i.t.Helper()
	var v deadLetterListJSON
	i.decodeJSON(i.mustRun("deadletters", "list", "--json", "--data", "--limit", "0"), &v)
	if v.DeadLetters == nil || v.More {
		i.t.Fatalf("%s: deadletters list --json --limit 0: dead_letters %v, more %v; want them all", i.name, v.DeadLetters, v.More)
	}
	return v.DeadLetters
}

// waitDeadLetters waits (deliveryTimeout) until this instance holds n
// dead letters, and returns them.
func (i *instance) waitDeadLetters(n int) []deadLetterJSON {
	i.t.Helper()
	var got []deadLetterJSON
	checkFor(i.t, deliveryTimeout, func() error {
		if got = i.deadLetters(); len(got) != n {
			return fmt.Errorf("%d dead letters, want %d", len(got), n)
		}
		return nil
	})
	return got
}

// counters returns this instance's counters. `service status --json` lists
// every service of the test's runtime dir, so the entry is picked by
// instance directory.
func (i *instance) counters() countersJSON {
	i.t.Helper()
	var sts []struct {
		Instance string       `json:"instance"`
		Counters countersJSON `json:"counters"`
	}
	i.decodeJSON(i.mustRun("service", "status", "--json"), &sts)
	for _, s := range sts {
		if s.Instance == i.dir {
			return s.Counters
		}
	}
	i.t.Fatalf("%s: service status --json has no entry for %s", i.name, i.dir)
	return countersJSON{}
}

// subscriberFor returns pub's record of the subscription id, if it has one.
func (i *instance) subscriberFor(id string) (subscriberJSON, bool) {
	i.t.Helper()
	for _, s := range i.subscribers() {
		if s.ID == id {
			return s, true
		}
	}
	return subscriberJSON{}, false
}

// waitDrained checks that pub queued exactly queued publications for the
// subscription id (sequences 1..queued: nothing more, nothing less) and
// waits until the subscriber acked them all. A subscriber acks an
// executable receiver's publication only after the receiver ran and its
// progress was saved, so once this returns every receiver run for the
// subscription is over and nothing more will arrive.
func (pub *instance) waitDrained(id string, queued uint64, timeout time.Duration) {
	pub.t.Helper()
	checkFor(pub.t, timeout, func() error {
		s, ok := pub.subscriberFor(id)
		switch {
		case !ok:
			return fmt.Errorf("%s does not list subscription %s", pub.name, id)
		case s.NextSeq != queued+1:
			// Every publication is in before this is called: a wrong
			// count is final, not a wait.
			pub.t.Fatalf("%s queued %d publication(s) for subscription %s (%s), want exactly %d", pub.name, s.NextSeq-1, id, s.Pattern, queued)
		case s.Acked != queued || s.Depth != 0:
			return fmt.Errorf("%s: subscription %s (%s) acked %d of %d, queue_depth %d", pub.name, id, s.Pattern, s.Acked, queued, s.Depth)
		}
		return nil
	})
}

// fixPort makes the instance listen on one fixed loopback TCP port, so that
// its peers find it again after a restart (port 0 would pick a new one, and
// the address in the subscriber's token would go stale).
func (i *instance) fixPort() {
	i.t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		i.t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		i.t.Fatal(err)
	}
	i.setConfig("listen", fmt.Sprintf(`["/ip4/127.0.0.1/tcp/%d"]`, port))
}

// addPeer has sub add pub as a peer with a token pub issues with
// tokenArgs; it returns the raw token.
func (sub *instance) addPeer(pub *instance, tokenArgs ...string) string {
	sub.t.Helper()
	tok := pub.issue(tokenArgs...)
	sub.mustRun("peer", "add", "--token", tok)
	return tok
}

// subscribe subscribes sub's receiver to pattern at pub and returns the
// subscription id.
func (sub *instance) subscribe(pub *instance, pattern, receiver string) string {
	sub.t.Helper()
	out := sub.mustRun("action", "subscribe", "--peer", pub.peerID(), "--action", pattern, "--receiver", receiver)
	id := strings.TrimSpace(out)
	if id == "" || strings.ContainsAny(id, " \n") {
		sub.t.Fatalf("%s: action subscribe printed %q, want one subscription id", sub.name, out)
	}
	return id
}

// publishStdin runs `action publish --action subject --stdin` (plus extra
// flags) with one JSON value per line on stdin and returns the exit code
// and stderr.
func (i *instance) publishStdin(subject string, lines []string, extra ...string) (code int, stderr string) {
	i.t.Helper()
	args := append([]string{"action", "publish", "--action", subject, "--stdin"}, extra...)
	_, stderr, code = i.runStdin(strings.Join(lines, "\n")+"\n", args...)
	return code, stderr
}

// mustPublishRange publishes the integers from..to (inclusive) as JSON
// numbers, one publication each, through --stdin.
func (i *instance) mustPublishRange(subject string, from, to int) {
	i.t.Helper()
	lines := make([]string, 0, to-from+1)
	for k := from; k <= to; k++ {
		lines = append(lines, strconv.Itoa(k))
	}
	if code, stderr := i.publishStdin(subject, lines); code != 0 {
		i.t.Fatalf("%s: publish %d..%d to %s: exit %d: %s", i.name, from, to, subject, code, stderr)
	}
}

// recordingReceiver writes a receiver that appends one line per run to
// file (relative to the instance directory):
// "<subject> <sequence> <hop> <data>".
func (i *instance) recordingReceiver(name, file string) {
	i.t.Helper()
	i.writeScript("receivers", name, `read -r data
echo "$COATTAIL_SUBJECT $COATTAIL_SEQUENCE $COATTAIL_HOP $data" >>`+file+"\n")
}

// readLines returns the lines of an instance file; a missing file has none.
func (i *instance) readLines(file string) []string {
	i.t.Helper()
	b, err := os.ReadFile(i.path(file))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		i.t.Fatal(err)
	}
	s := strings.TrimSuffix(string(b), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// waitLines waits until an instance file has at least n lines and returns
// them.
func (i *instance) waitLines(file string, n int, timeout time.Duration) []string {
	i.t.Helper()
	var lines []string
	checkFor(i.t, timeout, func() error {
		lines = i.readLines(file)
		if len(lines) < n {
			return fmt.Errorf("%s: %s has %d line(s), want %d (last: %q)", i.name, file, len(lines), n, last(lines))
		}
		return nil
	})
	return lines
}

// waitLastLine waits until the last line of an instance file has suffix and
// returns all its lines; receivers process in order, so a sentinel
// publication seen last means everything before it was processed.
func (i *instance) waitLastLine(file, suffix string, timeout time.Duration) []string {
	i.t.Helper()
	var lines []string
	checkFor(i.t, timeout, func() error {
		lines = i.readLines(file)
		if !strings.HasSuffix(last(lines), suffix) {
			return fmt.Errorf("%s: last line of %s is %q, want one ending in %q", i.name, file, last(lines), suffix)
		}
		return nil
	})
	return lines
}

func last(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	return lines[len(lines)-1]
}

// logContains reports whether the instance's service.log holds every want
// string on one line.
func (i *instance) logContains(want ...string) bool {
	i.t.Helper()
	b, err := os.ReadFile(i.path("service.log"))
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		ok := true
		for _, w := range want {
			if !strings.Contains(l, w) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// seqs returns the second field (the sequence) of recordingReceiver lines,
// failing the test on a malformed line.
func seqs(t *testing.T, lines []string) []uint64 {
	t.Helper()
	out := make([]uint64, 0, len(lines))
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) < 2 {
			t.Fatalf("malformed receiver line %q", l)
		}
		n, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			t.Fatalf("receiver line %q: %v", l, err)
		}
		out = append(out, n)
	}
	return out
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// refusingPair starts a publisher a and a subscriber b whose receiver
// "refuses" fails every publication at once (no retries), subscribed to
// pattern at a: each publication becomes one of b's dead letters. Settings
// (key, value pairs) are applied to both before they start.
func refusingPair(t *testing.T, pattern string, settings ...string) (a, b *instance) {
	t.Helper()
	a, b = newInstance(t, "a"), newInstance(t, "b")
	for k := 0; k+1 < len(settings); k += 2 {
		a.setConfig(settings[k], settings[k+1])
		b.setConfig(settings[k], settings[k+1])
	}
	b.setConfig("receiver_retries", "0")
	b.setConfig("receiver_backoff", "1ms")
	b.writeScript("receivers", "refuses", "cat >/dev/null\necho refused >&2\nexit 1\n")
	a.start()
	b.start()
	b.addPeer(a)
	b.subscribe(a, pattern, "refuses")
	return a, b
}
