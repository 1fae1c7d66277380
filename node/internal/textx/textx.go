// Package textx cuts text for messages and logs without splitting a UTF-8
// sequence: the runner's log lines and error snippets, and the node's
// quotes of what a remote sent.
package textx

import "unicode/utf8"

// Cut returns at most n bytes of s, cut on a rune boundary. It steps back
// over at most utf8.UTFMax-1 continuation bytes (what one rune has), so
// text that is not UTF-8 is cut near n instead of losing everything.
func Cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for i := 0; i < utf8.UTFMax-1 && n > 0 && s[n]&0xC0 == 0x80; i++ {
		n--
	}
	return s[:n]
}

// Snippet is Cut followed by "…" when s was cut.
func Snippet(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return Cut(s, n) + "…"
}
