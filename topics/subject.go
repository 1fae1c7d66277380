package topics

import (
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Limits on subjects and patterns. They keep action file names portable and
// bound the work done per publication and per wire frame.
const (
	// MaxSubjectLen is the maximum length of a subject or pattern in bytes.
	MaxSubjectLen = 256
	// MaxTokens is the maximum number of dot-separated tokens.
	MaxTokens = 32
)

// Wildcard tokens in patterns.
const (
	// SingleWildcard matches exactly one token.
	SingleWildcard = "*"
	// FullWildcard, as the last token of a pattern, matches one or more tokens.
	FullWildcard = ">"
)

var (
	// ErrInvalidSubject is wrapped by every error that rejects a literal subject.
	ErrInvalidSubject = errors.New("topics: invalid subject")
	// ErrInvalidPattern is wrapped by every error that rejects a subject pattern.
	ErrInvalidPattern = errors.New("topics: invalid pattern")
)

const (
	subjectHint = `(allowed: ASCII letters, digits, '_' and '-', tokens separated by '.', e.g. "orders.created")`
	patternHint = `(allowed: ASCII letters, digits, '_' and '-', tokens separated by '.', '*' for exactly one token, '>' as the last token for one or more tokens, e.g. "orders.*" or "orders.>")`
)

// problemKind names what is wrong with a subject or pattern. Validation
// reports a problem value instead of an error so that the hot-path checks
// (Match, Trie.Match) never allocate; the error text is built only when an
// exported Validate function needs it.
type problemKind uint8

const (
	probNone problemKind = iota
	probEmpty
	probTooLong
	probTooManyTokens
	probEmptyToken
	probBadChar
	probWildcardInSubject
	probMixedWildcard
	probFullWildcardNotLast
)

type problem struct {
	kind  problemKind
	start int // byte offset of the offending token
	end   int // end of the offending token (exclusive)
	pos   int // byte offset of the offending character, for probBadChar
}

// isTokenByte reports whether c may appear in a literal token.
func isTokenByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// check validates s as a literal subject (pattern == false) or a pattern. It
// never allocates.
func check(s string, pattern bool) problem {
	if len(s) == 0 {
		return problem{kind: probEmpty}
	}
	if len(s) > MaxSubjectLen {
		return problem{kind: probTooLong}
	}
	tokens := 0
	start := 0
	for start <= len(s) {
		end := start
		for end < len(s) && s[end] != '.' {
			end++
		}
		tokens++
		if tokens > MaxTokens {
			return problem{kind: probTooManyTokens}
		}
		if p := checkToken(s, start, end, pattern); p.kind != probNone {
			return p
		}
		start = end + 1
	}
	return problem{}
}

func checkToken(s string, start, end int, pattern bool) problem {
	if start == end {
		return problem{kind: probEmptyToken, start: start, end: end}
	}
	tok := s[start:end]
	if tok == SingleWildcard || tok == FullWildcard {
		if !pattern {
			return problem{kind: probWildcardInSubject, start: start, end: end}
		}
		if tok == FullWildcard && end != len(s) {
			return problem{kind: probFullWildcardNotLast, start: start, end: end}
		}
		return problem{}
	}
	for i := start; i < end; i++ {
		c := s[i]
		if isTokenByte(c) {
			continue
		}
		if c == '*' || c == '>' {
			if pattern {
				return problem{kind: probMixedWildcard, start: start, end: end, pos: i}
			}
			return problem{kind: probWildcardInSubject, start: start, end: end, pos: i}
		}
		return problem{kind: probBadChar, start: start, end: end, pos: i}
	}
	return problem{}
}

// displayLimit bounds how much of a rejected input is echoed in an error, so
// that a hostile multi-kilobyte name cannot bloat logs and replies.
const displayLimit = 80

func quoteShort(s string) string {
	if len(s) <= displayLimit {
		return strconv.Quote(s)
	}
	cut := displayLimit
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "..."
}

// describeChar renders the offending character at s[pos] for an error
// message, including invalid UTF-8 bytes.
func describeChar(s string, pos int) string {
	r, size := utf8.DecodeRuneInString(s[pos:])
	if r == utf8.RuneError && size <= 1 {
		return fmt.Sprintf("byte 0x%02x", s[pos])
	}
	return strconv.QuoteRune(r)
}

func (p problem) err(sentinel error, s string, pattern bool) error {
	hint := subjectHint
	if pattern {
		hint = patternHint
	}
	var detail string
	switch p.kind {
	case probEmpty:
		detail = "empty"
	case probTooLong:
		detail = fmt.Sprintf("%d bytes long (maximum %d)", len(s), MaxSubjectLen)
	case probTooManyTokens:
		detail = fmt.Sprintf("more than %d tokens", MaxTokens)
	case probEmptyToken:
		switch {
		case p.start == 0:
			detail = "starts with '.'"
		case p.start == len(s):
			detail = "ends with '.'"
		default:
			detail = "contains an empty token ('..')"
		}
	case probBadChar:
		detail = fmt.Sprintf("token %s contains %s", quoteShort(s[p.start:p.end]), describeChar(s, p.pos))
	case probWildcardInSubject:
		detail = fmt.Sprintf("token %s contains a wildcard; a subject must be literal ('*' and '>' are only allowed in patterns)", quoteShort(s[p.start:p.end]))
		return fmt.Errorf("%w %s: %s", sentinel, quoteShort(s), detail)
	case probMixedWildcard:
		detail = fmt.Sprintf("token %s mixes %s with other characters ('*' and '>' must be whole tokens)", quoteShort(s[p.start:p.end]), describeChar(s, p.pos))
	case probFullWildcardNotLast:
		detail = "'>' is only allowed as the last token"
	default:
		detail = "unknown problem"
	}
	return fmt.Errorf("%w %s: %s %s", sentinel, quoteShort(s), detail, hint)
}

// ValidateSubject reports whether s is a literal subject. The error wraps
// ErrInvalidSubject and says what is wrong and what is allowed, because it is
// shown to users who typed an action name.
func ValidateSubject(s string) error {
	if p := check(s, false); p.kind != probNone {
		return p.err(ErrInvalidSubject, s, false)
	}
	return nil
}

// ValidatePattern reports whether p is a subject pattern: a literal subject
// in which any token may be exactly "*" and the last token may be exactly
// ">". The error wraps ErrInvalidPattern.
func ValidatePattern(p string) error {
	if pr := check(p, true); pr.kind != probNone {
		return pr.err(ErrInvalidPattern, p, true)
	}
	return nil
}

// IsLiteral reports whether p is a valid subject without wildcards.
func IsLiteral(p string) bool {
	return check(p, false).kind == probNone
}

func validSubject(s string) bool { return check(s, false).kind == probNone }
func validPattern(p string) bool { return check(p, true).kind == probNone }

// nextToken splits s at the first '.', returning the token, the remainder
// and whether there was a remainder. Slicing instead of strings.Split keeps
// matching allocation-free.
func nextToken(s string) (tok, rest string, more bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == '.' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// Match reports whether the literal subject matches pattern with NATS
// semantics: "*" matches exactly one token and a final ">" matches one or
// more tokens. It is false if either argument is invalid.
func Match(pattern, subject string) bool {
	if !validPattern(pattern) || !validSubject(subject) {
		return false
	}
	p, s := pattern, subject
	for {
		pt, prest, pmore := nextToken(p)
		st, srest, smore := nextToken(s)
		switch pt {
		case FullWildcard:
			// Validation guarantees '>' is last, and s has at least one token
			// left here, which is exactly what '>' needs.
			return true
		case SingleWildcard:
		default:
			if pt != st {
				return false
			}
		}
		if pmore != smore {
			return false
		}
		if !pmore {
			return true
		}
		p, s = prest, srest
	}
}

// Covers reports whether every subject matched by pattern inner is also
// matched by pattern outer. Permission checks use it to decide whether a
// requested subscription pattern stays within a granted one: "orders.>"
// covers "orders.*.eu", but "orders.*" does not cover "orders.>". It is
// false if either pattern is invalid.
func Covers(outer, inner string) bool {
	if !validPattern(outer) || !validPattern(inner) {
		return false
	}
	o, in := outer, inner
	for {
		ot, orest, omore := nextToken(o)
		it, irest, imore := nextToken(in)
		switch ot {
		case FullWildcard:
			// inner has at least one token left (possibly '>' itself), and
			// '>' in outer absorbs any non-empty remainder.
			return true
		case SingleWildcard:
			if it == FullWildcard {
				// inner's '>' may match several tokens; '*' matches only one.
				return false
			}
		default:
			if it != ot {
				return false
			}
		}
		if omore != imore {
			return false
		}
		if !omore {
			return true
		}
		o, in = orest, irest
	}
}
