package topics

import (
	"errors"
	"strings"
	"testing"
)

// FuzzSubject feeds arbitrary strings to the validators, the matchers and
// the trie. The input is split at the first NUL into a pattern and a
// subject so the fuzzer explores both sides of Match at once.
func FuzzSubject(f *testing.F) {
	for _, seed := range []string{
		"orders.created",
		"orders.*\x00orders.new",
		"orders.>\x00orders.new.eu",
		">\x00a",
		"*.created\x00users.created",
		"a..b\x00a.b",
		"My Action",
		"a.>.b\x00a.x.b",
		"a*\x00a*",
		strings.Repeat("a.", 40),
		"caf\u00e9.\xff",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		pattern, subject, _ := strings.Cut(in, "\x00")

		serr := ValidateSubject(pattern)
		perr := ValidatePattern(pattern)
		if serr != nil && !errors.Is(serr, ErrInvalidSubject) {
			t.Fatalf("ValidateSubject(%q) error %v does not wrap ErrInvalidSubject", pattern, serr)
		}
		if perr != nil && !errors.Is(perr, ErrInvalidPattern) {
			t.Fatalf("ValidatePattern(%q) error %v does not wrap ErrInvalidPattern", pattern, perr)
		}
		// Every literal subject is also a pattern.
		if serr == nil && perr != nil {
			t.Fatalf("%q is a valid subject but not a valid pattern: %v", pattern, perr)
		}
		if (serr == nil) != IsLiteral(pattern) {
			t.Fatalf("IsLiteral(%q) disagrees with ValidateSubject (%v)", pattern, serr)
		}
		if serr == nil {
			if !Match(pattern, pattern) {
				t.Fatalf("literal %q does not match itself", pattern)
			}
			if !Covers(pattern, pattern) {
				t.Fatalf("literal %q does not cover itself", pattern)
			}
		}
		if perr == nil {
			if !Covers(pattern, pattern) {
				t.Fatalf("pattern %q does not cover itself", pattern)
			}
			if !Covers(">", pattern) {
				t.Fatalf("'>' does not cover %q", pattern)
			}
		}

		want := Match(pattern, subject)
		if want && (perr != nil || ValidateSubject(subject) != nil) {
			t.Fatalf("Match(%q, %q) = true for invalid input", pattern, subject)
		}
		if want && !Match(">", subject) {
			t.Fatalf("'>' does not match %q", subject)
		}
		tr := NewTrie[int]()
		if err := tr.Insert(pattern, 1); (err == nil) != (perr == nil) {
			t.Fatalf("Trie.Insert(%q) = %v, ValidatePattern = %v", pattern, err, perr)
		}
		got := tr.Match(subject)
		if want != (len(got) == 1) || len(got) > 1 {
			t.Fatalf("Trie.Match(%q) with pattern %q = %v, Match = %v", subject, pattern, got, want)
		}
		if tr.HasMatch(subject) != want {
			t.Fatalf("Trie.HasMatch(%q) with pattern %q disagrees with Match = %v", subject, pattern, want)
		}
		if tr.Remove(pattern, 1) != (perr == nil) {
			t.Fatalf("Trie.Remove(%q) result inconsistent with validity", pattern)
		}
		if tr.Count() != 0 {
			t.Fatalf("Trie.Count = %d after removing the only pattern", tr.Count())
		}
	})
}
