package main

import (
	"fmt"
	"strings"
	"testing"
)

// 250 parked publications listed 100 at a time, each page after the
// previous one's "next", come once each and in order, the last page
// saying there are no more; the table ends with the command for the next
// page on stderr. Garbage --limit and --after are refused.
func TestDeadLettersListPaged(t *testing.T) {
	t.Parallel()
	a, b := refusingPair(t, "jobs")
	a.mustPublishRange("jobs", 1, 250)
	checkFor(t, deliveryTimeout, func() error {
		if n := len(b.deadLetters()); n != 250 {
			return fmt.Errorf("%d dead letters, want 250", n)
		}
		return nil
	})

	var got []deadLetterJSON
	after := ""
	for _, want := range []int{100, 100, 50} {
		args := []string{"deadletters", "list", "--json", "--limit", "100"}
		if after != "" {
			args = append(args, "--after", after)
		}
		var page deadLetterListJSON
		b.decodeJSON(b.mustRun(args...), &page)
		if len(page.DeadLetters) != want || page.More != (want == 100) {
			t.Fatalf("page after %q: %d entries, more %v; want %d", after, len(page.DeadLetters), page.More, want)
		}
		if last := page.DeadLetters[want-1].ID; page.More && page.Next != last || !page.More && page.Next != "" {
			t.Fatalf("page after %q: next %q, last %s", after, page.Next, last)
		}
		got = append(got, page.DeadLetters...)
		after = page.Next
	}
	for i, d := range got {
		if d.Seq != uint64(i+1) || d.Data != nil || !strings.Contains(d.Error, "refused") {
			t.Fatalf("entry %d of the pages: %+v; want seq %d, without data (no --data)", i, d, i+1)
		}
	}

	out, stderr, code := b.run("deadletters", "list")
	if code != 0 || strings.Count(out, "\n") != 101 || !strings.Contains(out, got[99].ID) || strings.Contains(out, got[100].ID) {
		t.Fatalf("deadletters list: exit %d, want a header and the first 100:\n%s", code, out)
	}
	if !strings.Contains(stderr, "deadletters list --after "+got[99].ID) {
		t.Errorf("deadletters list: stderr %q lacks the command for the next page", stderr)
	}
	out, stderr, _ = b.run("deadletters", "list", "--after", got[249].ID)
	if !strings.Contains(out, "No dead letters after") || stderr != "" {
		t.Errorf("deadletters list after the last: %q, stderr %q", out, stderr)
	}
	var all deadLetterListJSON
	b.decodeJSON(b.mustRun("deadletters", "list", "--json", "--limit", "0", "--after", got[9].ID), &all)
	if len(all.DeadLetters) != 240 || all.More || all.DeadLetters[0].ID != got[10].ID {
		t.Errorf("--limit 0 after the 10th: %d entries, more %v; want the 240 others", len(all.DeadLetters), all.More)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--limit", "abc"}, "invalid argument"},
		{[]string{"--limit", "-1"}, "--limit -1"},
		{[]string{"--after", ""}, "--after needs"},
		{[]string{"--after", "garbage"}, "not a dead letter id"},
		{[]string{"--after", "a/b.00000000000000000001"}, "not a dead letter id"},
		{[]string{"--data"}, "--data goes with --json"},
	} {
		b.mustFail(append([]string{"deadletters", "list"}, c.args...), c.want)
	}
}
