// Package textx cuts text for messages and logs without splitting a UTF-8
// sequence: the runner's log lines and error snippets, and the node's
// quotes of what a remote sent.
package textx

// Cut returns at most n bytes of s, cut on a rune boundary.
func Cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && n < len(s) && s[n]&0xC0 == 0x80 {
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
