package main

import (
	"slices"
	"strings"
	"testing"
)

// deadletters replay --all replays every parked publication (of one
// subscription with --subscription) in id order and stops at the first
// that fails again, leaving it and those after it parked; drop --all
// deletes them all. Before, an operator who had fixed a receiver looped
// over the ids one by one.
func TestDeadLettersReplayAndDropAll(t *testing.T) {
	t.Parallel()
	a, b := refusingPair(t, "jobs")
	jobs := b.subscriptions()[0].ID
	b.subscribe(a, "more", "refuses")
	a.mustPublishRange("jobs", 1, 5)
	a.mustPublishRange("more", 1, 3)
	all := b.waitDeadLetters(8)

	// The receiver, fixed except for the third job.
	b.writeScript("receivers", "refuses", `read -r d
if [ "$COATTAIL_SUBJECT" = jobs ] && [ "$d" = 3 ]; then echo still broken >&2; exit 1; fi
echo "$COATTAIL_SUBJECT $d" >>ok.txt
`)
	out, stderr, code := b.run("deadletters", "replay", "--all", "--subscription", jobs)
	if code == 0 || !strings.Contains(stderr, "replayed 2 dead letter(s)") || !strings.Contains(stderr, "failed again") || !strings.Contains(stderr, "[refuses] still broken") {
		t.Fatalf("replay --all of the jobs: exit %d, stderr %q; want a failure after 2", code, stderr)
	}
	if strings.Count(out, "Replayed ") != 2 {
		t.Errorf("replay --all of the jobs printed %q, want the 2 replayed", out)
	}
	if left := b.waitDeadLetters(6); !slices.ContainsFunc(left, func(d deadLetterJSON) bool { return d.Subject == "jobs" && d.Seq == 3 }) {
		t.Fatalf("after the failed replay: %+v, want job 3 still parked", left)
	}

	b.writeScript("receivers", "refuses", "read -r d\necho \"$COATTAIL_SUBJECT $d\" >>ok.txt\n")
	out = b.mustRun("deadletters", "replay", "--all")
	if !strings.HasSuffix(out, "Replayed 6 dead letter(s)\n") {
		t.Errorf("replay --all printed %q", out)
	}
	b.waitDeadLetters(0)
	// In id order: by subscription, then sequence.
	rest := []string{"jobs 3", "jobs 4", "jobs 5", "more 1", "more 2", "more 3"}
	if more := b.subscriptions(); len(more) == 2 && more[0].ID != jobs && more[0].ID < jobs || len(more) == 2 && more[1].ID != jobs && more[1].ID < jobs {
		rest = append(rest[3:], rest[:3]...)
	}
	if got, want := b.readLines("ok.txt"), append([]string{"jobs 1", "jobs 2"}, rest...); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("the receiver ran for %q, want %q (%d dead letters)", got, want, len(all))
	}

	b.writeScript("receivers", "refuses", "cat >/dev/null\nexit 1\n")
	a.mustPublishRange("more", 4, 5)
	b.waitDeadLetters(2)
	if out := b.mustRun("deadletters", "drop", "--all"); out != "Dropped 2 dead letter(s)\n" {
		t.Errorf("drop --all printed %q", out)
	}
	b.waitDeadLetters(0)

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"replay", "--all", all[0].ID}, "not both"},
		{[]string{"replay", "--subscription", jobs}, "--subscription goes with --all"},
		{[]string{"replay", "--all", "--subscription", ""}, "needs a subscription id"},
		{[]string{"drop"}, "accepts 1 arg"},
	} {
		b.mustFail(append([]string{"deadletters"}, c.args...), c.want)
	}
}
