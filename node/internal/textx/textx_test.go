package textx

import (
	"testing"
	"unicode/utf8"
)

func TestCutAndSnippet(t *testing.T) {
	for _, tc := range []struct {
		s       string
		n       int
		cut     string
		snippet string
	}{
		{"short", 10, "short", "short"},
		{"abcdef", 3, "abc", "abc…"},
		{"aé", 2, "a", "a…"}, // é is 2 bytes: not split
		{"ééé", 0, "", "…"},
		{"\U0001F600x", 3, "", "…"}, // a 4-byte rune is not split
		// Not UTF-8 (continuation bytes only): cut near n, not emptied.
		{"\x80\x80\x80\x80\x80\x80\x80\x80", 6, "\x80\x80\x80", "\x80\x80\x80…"},
	} {
		if got := Cut(tc.s, tc.n); got != tc.cut || (utf8.ValidString(tc.s) && !utf8.ValidString(got)) {
			t.Errorf("Cut(%q, %d) = %q, want %q", tc.s, tc.n, got, tc.cut)
		}
		if got := Snippet(tc.s, tc.n); got != tc.snippet {
			t.Errorf("Snippet(%q, %d) = %q, want %q", tc.s, tc.n, got, tc.snippet)
		}
	}
}
