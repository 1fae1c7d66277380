package main

import (
	"fmt"
	"strings"
	"testing"
)

// A dead-letter list (a page, with --data) is one answer of the control
// API, which the CLI reads up to 64 MiB. Publications may be up to 64 MiB each
// (limits.max_payload), and their JSON grows when it is encoded (an HTML
// character such as < becomes \u003c), so a few parked ones (two here) made
// `deadletters list` fail ("answer too large"), with or without --json,
// and the ids needed to replay or drop them could not be seen. The list
// now leaves out the data of a publication larger than its budget (and
// ends a page before data that would pass it): it is always shown.
func TestDeadLettersListOfLargePublications(t *testing.T) {
	t.Parallel()
	a, b := refusingPair(t, "big", "max_payload", "40MiB")

	big := `"` + strings.Repeat("a", 34<<20) + `"` // two are over 64 MiB
	for _, d := range []string{`"small"`, big, big} {
		if code, stderr := a.publishStdin("big", []string{d}); code != 0 {
			t.Fatalf("publish: exit %d: %s", code, stderr)
		}
	}
	var dls []deadLetterJSON
	checkFor(t, deliveryTimeout, func() error {
		out, stderr, code := b.run("deadletters", "list", "--json", "--data")
		if code != 0 {
			return fmt.Errorf("deadletters list --json --data: exit %d: %s", code, stderr)
		}
		var list deadLetterListJSON
		b.decodeJSON(out, &list)
		dls = list.DeadLetters
		if len(dls) != 3 || list.More {
			return fmt.Errorf("%d dead letters, want 3", len(dls))
		}
		return nil
	})
	if dls[0].Seq != 1 || dls[0].Data != "small" || dls[0].Omitted {
		t.Errorf("first dead letter = %+v, want seq 1 with its data \"small\"", dls[0])
	}
	if omitted := !dls[1].Omitted || dls[1].Data != nil || dls[2].Omitted != (dls[2].Data == nil); omitted {
		t.Errorf("dead letters 2 and 3: %v/%v and %v/%v; want the second without its data and data_omitted, the third either with its data or marked", dls[1].Omitted, dls[1].Data != nil, dls[2].Omitted, dls[2].Data != nil)
	}
	out := b.mustRun("deadletters", "list")
	for _, d := range dls {
		if !strings.Contains(out, d.ID) {
			t.Errorf("deadletters list does not show %s:\n%s", d.ID, out)
		}
		if !strings.Contains(d.Error, "refused") {
			t.Errorf("dead letter %s error %q, want the receiver's", d.ID, d.Error)
		}
	}
	// What the list shows can be acted on.
	b.mustRun("deadletters", "drop", dls[2].ID)
	if n := len(b.deadLetters()); n != 2 {
		t.Fatalf("%d dead letters after a drop, want 2", n)
	}
}
