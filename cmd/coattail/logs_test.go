package main

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// eventLine is how `service logs` prints one log event.
var eventLine = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO |WARN |ERROR) \S`)

// `service logs` prints the last lines of the service log as events (or
// as stored with --json), filters by level, and with -f follows the log
// across rotations without losing or repeating a line.
func TestServiceLogs(t *testing.T) {
	a := newInstance(t, "logs")
	a.setConfig("rotate_size", "2KiB")
	a.mustFail([]string{"service", "logs"}, "no service log at")
	a.start()

	out := a.mustRun("service", "logs", "-n", "2")
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], " service ready ") {
		t.Fatalf("service logs -n 2:\n%s\nwant 2 lines, the last 'service ready'", out)
	}
	for _, l := range lines {
		if !eventLine.MatchString(l) {
			t.Fatalf("service logs: line %q is not 'time LEVEL message fields'", l)
		}
	}
	for _, l := range strings.Split(strings.TrimRight(a.mustRun("service", "logs", "-n", "0", "--json"), "\n"), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(l), &ev); err != nil || ev["msg"] == nil {
			t.Fatalf("service logs --json: line %q is not a JSON event (%v)", l, err)
		}
	}
	// A failing action logs a warning; --level warn shows it and no INFO.
	a.writeScript("actions", "fails", "#!/bin/sh\nexit 3\n")
	a.run("action", "perform", "--action", "fails")
	warn := a.mustRun("service", "logs", "-n", "0", "--level", "warn")
	if !strings.Contains(warn, "WARN  action failed") || strings.Contains(warn, "INFO ") {
		t.Fatalf("service logs --level warn:\n%s\nwant the failed action and no INFO line", warn)
	}
	a.mustFail([]string{"service", "logs", "--level", "loud"}, "--level")
	a.mustFail([]string{"service", "logs", "-n", "-1"}, "--lines")

	// Follow: each token issued logs a line with its id; the next is
	// issued only once the follower printed it, so the 2 KiB rotations
	// (one every few lines) each happen while it is caught up.
	f := a.spawn("service", "logs", "-f", "-n", "1")
	var ids []string
	for k := 0; k < 30; k++ {
		id := a.tokenID(a.issue())
		ids = append(ids, id)
		checkFor(t, 20*time.Second, func() error {
			if !strings.Contains(f.stdout(), id) {
				return fmt.Errorf("the follower has not printed token %d (%s) yet", k, id)
			}
			return nil
		})
	}
	if _, err := os.Stat(a.path("service.log.2")); err != nil {
		t.Fatalf("the log did not rotate twice while followed: %v", err)
	}
	got := f.stdout()
	for _, id := range ids {
		if n := strings.Count(got, "token_id="+id); n != 1 {
			t.Fatalf("the follower printed token %s's line %d times, want once:\n%s", id, n, got)
		}
	}
	if f.exited() {
		t.Fatalf("service logs -f exited: %s", f.stderr())
	}
}
