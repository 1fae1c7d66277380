package localapi

import (
	"math"
	"sort"
	"testing"
)

func TestDeadLetterIDRoundTrip(t *testing.T) {
	for _, c := range []struct {
		sub string
		seq uint64
	}{{"s1", 1}, {"a.b", 42}, {"x", math.MaxUint64}} {
		id := DeadLetterID(c.sub, c.seq)
		sub, seq, ok := ParseDeadLetterID(id)
		if !ok || sub != c.sub || seq != c.seq {
			t.Errorf("ParseDeadLetterID(%q) = %q, %d, %v; want %q, %d, true", id, sub, seq, ok, c.sub, c.seq)
		}
	}
	for _, id := range []string{"", "s1", "s1.1", ".00000000000000000001", "s1.0000000000000000000x",
		"s1.000000000000000000001", "s1.99999999999999999999"} {
		if sub, seq, ok := ParseDeadLetterID(id); ok {
			t.Errorf("ParseDeadLetterID(%q) = %q, %d, true; want not ok", id, sub, seq)
		}
	}
}

// The CLI lists a subscription's dead letters from DeadLetterID(sub, 0)
// and a single one from the id of the sequence before it: both rely on
// ids sorting by subscription, then by sequence.
func TestDeadLetterIDsSortBySequence(t *testing.T) {
	ids := []string{DeadLetterID("s", 10), DeadLetterID("s", 9), DeadLetterID("s", 0), DeadLetterID("s", 100), DeadLetterID("s", math.MaxUint64)}
	sort.Strings(ids)
	want := []uint64{0, 9, 10, 100, math.MaxUint64}
	for i, id := range ids {
		if _, seq, _ := ParseDeadLetterID(id); seq != want[i] {
			t.Fatalf("sorted ids = %q", ids)
		}
	}
}
