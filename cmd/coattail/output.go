package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"
)

// printJSON writes v as indented JSON. Subjects and patterns are written
// as they are ("orders.>"), not escaped for HTML ("orders.\u003e").
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		cells := make([]string, len(r))
		for i, c := range r {
			cells[i] = oneLine(c)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// kv prints aligned "key: value" lines.
func kv(w io.Writer, pairs ...string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	for i := 0; i+1 < len(pairs); i += 2 {
		fmt.Fprintf(tw, "%s:\t%s\n", pairs[i], oneLine(pairs[i+1]))
	}
	return tw.Flush()
}

func list(xs []string) string {
	if len(xs) == 0 {
		return "-"
	}
	return strings.Join(xs, ", ")
}

func when(t *time.Time, none string) string {
	if t == nil || t.IsZero() {
		return none
	}
	return t.Local().Format(time.RFC3339)
}

// expires is an EXPIRES column or field: "never", the time, or the time
// marked expired once it has passed (a peer's token that expired still
// lists what it allowed, and every call with it fails).
func expires(t *time.Time) string {
	s := when(t, "never")
	if t != nil && !t.IsZero() && time.Now().After(*t) {
		s += " (expired)"
	}
	return s
}

// peerExpires is a peer's EXPIRES column or field: expires, marked
// revoked once the peer told us that it revoked the token we hold for it
// (it still lists what the token allowed, and every call with it fails).
func peerExpires(expiresAt, revokedAt *time.Time) string {
	s := expires(expiresAt)
	if revokedAt != nil {
		s += " (revoked)"
	}
	return s
}

// streamPath is the CONNECTED column of a subscription's stream: "no",
// or how it reaches the other side ("direct" or "relayed").
func streamPath(connected bool, path string) string {
	if !connected {
		return "no"
	}
	return path
}

// humanError is the text shown for an error. Its message may quote a peer
// or an action's stderr, so it is made safe for a terminal.
func humanError(err error) string { return safeText(err.Error()) }

// safeText makes text that comes from elsewhere (a peer's error message, an
// action's or receiver's stderr line, a decoded token's claims) safe to
// print on a terminal: control characters other than newline and tab are
// shown escaped (\x1b), so that they cannot clear the screen, retitle the
// window or write the clipboard (OSC 52); invalid UTF-8 is replaced.
func safeText(s string) string {
	if utf8.ValidString(s) && strings.IndexFunc(s, unsafeRune) < 0 {
		return s
	}
	var b strings.Builder
	for _, r := range strings.ToValidUTF8(s, "\uFFFD") {
		switch {
		case !unsafeRune(r):
			b.WriteRune(r)
		case r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			fmt.Fprintf(&b, `\u%04x`, r)
		}
	}
	return b.String()
}

func unsafeRune(r rune) bool { return r != '\n' && r != '\t' && unicode.IsControl(r) }

// oneLine is safeText for a table cell or a "key: value" line: newlines
// and tabs become spaces, so a value cannot start a row or a column.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' {
			return ' '
		}
		return r
	}, safeText(s))
}
