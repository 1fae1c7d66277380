package topics

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateSubject(t *testing.T) {
	long := strings.Repeat("a", MaxSubjectLen+1)
	tooMany := strings.Repeat("a.", MaxTokens) + "a"
	tests := []struct {
		in   string
		want string // "" means valid; otherwise a fragment of the error
	}{
		{"orders", ""},
		{"orders.created", ""},
		{"Orders_2.created-eu.X", ""},
		{strings.Repeat("a", MaxSubjectLen), ""},
		{strings.Repeat("a.", MaxTokens-1) + "a", ""},
		{"My Action", `topics: invalid subject "My Action": token "My Action" contains ' ' (allowed: ASCII letters, digits, '_' and '-', tokens separated by '.', e.g. "orders.created")`},
		{"", `invalid subject "": empty`},
		{".orders", `starts with '.'`},
		{"orders.", `ends with '.'`},
		{"orders..created", `contains an empty token ('..')`},
		{".", `starts with '.'`},
		{"a/b", `token "a/b" contains '/'`},
		{`a\b`, `token "a\\b" contains '\\'`},
		{"a.b\tc", `token "b\tc" contains '\t'`},
		{"caf\u00e9", `token "café" contains 'é'`},
		{"a\xffb", `contains byte 0xff`},
		{"a\x00", `contains '\x00'`},
		{"orders.*", `token "*" contains a wildcard; a subject must be literal`},
		{">", `token ">" contains a wildcard`},
		{"a*b", `token "a*b" contains a wildcard`},
		{long, `bytes long (maximum 256)`},
		{tooMany, `more than 32 tokens`},
	}
	for _, tc := range tests {
		err := ValidateSubject(tc.in)
		if tc.want == "" {
			if err != nil {
				t.Errorf("ValidateSubject(%q) = %v, want nil", tc.in, err)
			}
			if !IsLiteral(tc.in) {
				t.Errorf("IsLiteral(%q) = false, want true", tc.in)
			}
			continue
		}
		if err == nil {
			t.Errorf("ValidateSubject(%q) = nil, want error containing %q", tc.in, tc.want)
			continue
		}
		if !errors.Is(err, ErrInvalidSubject) {
			t.Errorf("ValidateSubject(%q) error %v does not wrap ErrInvalidSubject", tc.in, err)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ValidateSubject(%q) = %q, want it to contain %q", tc.in, err, tc.want)
		}
		if IsLiteral(tc.in) {
			t.Errorf("IsLiteral(%q) = true, want false", tc.in)
		}
	}
}

func TestValidatePattern(t *testing.T) {
	tests := []struct {
		in   string
		want string
	}{
		{"orders", ""},
		{"orders.*", ""},
		{"*", ""},
		{">", ""},
		{"*.created", ""},
		{"orders.*.>", ""},
		{"*.*.*", ""},
		{"orders.>.eu", `'>' is only allowed as the last token`},
		{">.a", `'>' is only allowed as the last token`},
		{"orders.a*", `token "a*" mixes '*' with other characters ('*' and '>' must be whole tokens)`},
		{"orders.>>", `token ">>" mixes '>'`},
		{"**", `mixes '*'`},
		{"orders..*", `contains an empty token ('..')`},
		{"orders.*.", `ends with '.'`},
		{"my orders.>", `token "my orders" contains ' '`},
		{"", `invalid pattern "": empty`},
	}
	for _, tc := range tests {
		err := ValidatePattern(tc.in)
		if tc.want == "" {
			if err != nil {
				t.Errorf("ValidatePattern(%q) = %v, want nil", tc.in, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("ValidatePattern(%q) = nil, want error containing %q", tc.in, tc.want)
			continue
		}
		if !errors.Is(err, ErrInvalidPattern) || errors.Is(err, ErrInvalidSubject) {
			t.Errorf("ValidatePattern(%q) error %v should wrap ErrInvalidPattern only", tc.in, err)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ValidatePattern(%q) = %q, want it to contain %q", tc.in, err, tc.want)
		}
		if !strings.Contains(err.Error(), "'>' as the last token") {
			t.Errorf("ValidatePattern(%q) = %q, want the allowed-syntax hint", tc.in, err)
		}
	}
}

func TestIsLiteral(t *testing.T) {
	for p, want := range map[string]bool{
		"a.b":   true,
		"a.*":   false,
		"a.>":   false,
		"a..b":  false,
		"a b":   false,
		"a-b_c": true,
	} {
		if got := IsLiteral(p); got != want {
			t.Errorf("IsLiteral(%q) = %v, want %v", p, got, want)
		}
	}
}

func TestErrorTruncatesHugeInput(t *testing.T) {
	huge := strings.Repeat("x", 10_000)
	err := ValidateSubject(huge)
	if err == nil {
		t.Fatal("want error")
	}
	if len(err.Error()) > 500 {
		t.Errorf("error message is %d bytes; a huge input must not be echoed in full", len(err.Error()))
	}
}

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern, subject string
		want             bool
	}{
		{"orders.*", "orders.new", true},
		{"orders.*", "orders.new.eu", false},
		{"orders.*", "orders", false},
		{"orders.>", "orders.new", true},
		{"orders.>", "orders.new.eu", true},
		{"orders.>", "orders", false},
		{">", "orders", true},
		{">", "orders.new.eu", true},
		{"*", "orders", true},
		{"*", "orders.new", false},
		{"*.created", "orders.created", true},
		{"*.created", "users.created", true},
		{"*.created", "orders.deleted", false},
		{"*.created", "created", false},
		{"*.*.eu", "orders.new.eu", true},
		{"orders.*.>", "orders.new", false},
		{"orders.*.>", "orders.new.eu", true},
		{"orders.new", "orders.new", true},
		{"orders.new", "orders.New", false},
		{"orders.new", "orders.newer", false},
		{"orders.ne", "orders.new", false},
		{"orders", "orders.new", false},
		// invalid inputs never match
		{"orders.*", "orders.*", false},
		{"orders..new", "orders..new", false},
		{"orders.>.x", "orders.a.x", false},
		{"orders.new", "orders new", false},
		{"", "", false},
	}
	for _, tc := range tests {
		if got := Match(tc.pattern, tc.subject); got != tc.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tc.pattern, tc.subject, got, tc.want)
		}
	}
}

func TestCovers(t *testing.T) {
	tests := []struct {
		outer, inner string
		want         bool
	}{
		{">", ">", true},
		{">", "a", true},
		{">", "a.*.>", true},
		{"orders.>", "orders.*", true},
		{"orders.>", "orders.*.eu", true},
		{"orders.>", "orders.>", true},
		{"orders.>", "orders", false},
		{"orders.>", ">", false},
		{"orders.*", "orders.new", true},
		{"orders.*", "orders.*", true},
		{"orders.*", "orders.>", false},
		{"orders.*", "orders.new.eu", false},
		{"orders.new", "orders.*", false},
		{"orders.new", "orders.new", true},
		{"*.created", "orders.created", true},
		{"*.created", "*.deleted", false},
		{"*.*", "*.created", true},
		{"*.created", "*.*", false},
		{"a.*.>", "a.>", false},
		{"a.*.>", "a.b.>", true},
		{"a.>", "a.*.>", true},
		{"*", ">", false},
		{"orders.*", "orders..x", false},
		{"orders..x", "orders.x", false},
	}
	for _, tc := range tests {
		if got := Covers(tc.outer, tc.inner); got != tc.want {
			t.Errorf("Covers(%q, %q) = %v, want %v", tc.outer, tc.inner, got, tc.want)
		}
	}
}

func TestMatchDoesNotAllocate(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() {
		if !Match("orders.*.>", "orders.new.eu.x") {
			t.Fatal("want match")
		}
		if Match("orders.*", "orders b") {
			t.Fatal("want no match")
		}
		if !Covers("orders.>", "orders.*.eu") {
			t.Fatal("want cover")
		}
	})
	if allocs != 0 {
		t.Errorf("Match/Covers allocated %v times per run, want 0", allocs)
	}
}
