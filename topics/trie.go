package topics

import (
	"slices"
	"strings"
	"sync"
)

// Trie maps subject patterns to values and finds every value whose pattern
// matches a subject. It is modelled on nats-server's server/gsl: one level per
// token, with the wildcards "*" and ">" kept outside the literal map so a
// lookup touches at most three branches per token.
//
// A (pattern, value) pair is stored at most once: inserting it again is a
// no-op and a single Remove deletes it. The same value may be stored under
// several patterns.
//
// Trie is safe for concurrent use. Lookups share a read lock, so publications
// do not serialise on each other; only Insert and Remove take the write lock.
type Trie[T comparable] struct {
	mu    sync.RWMutex
	root  level[T]
	count int
}

type level[T comparable] struct {
	literal map[string]*trieNode[T] // allocated on first literal insert
	peak    int                     // most entries literal held since it was built
	pwc     *trieNode[T]            // "*"
	fwc     *trieNode[T]            // ">"
}

// minMapShrink is the size below which a map of the trie is not rebuilt
// smaller. A Go map keeps the memory of its peak size; a map that once
// held many more entries than it does now is copied into a new one.
const minMapShrink = 64

// shrunk reports whether a map that held peak entries and holds n now
// should be rebuilt.
func shrunk(n, peak int) bool {
	return peak > minMapShrink && n < peak/4
}

type trieNode[T comparable] struct {
	next level[T]
	// vals is iterated on every match, so it is a slice; idx makes Insert
	// and Remove O(1) once a node holds many values. idx is nil while vals is
	// short, where a linear scan is cheaper than a map.
	vals []T
	idx  map[T]int
}

// idxThreshold is the number of values at a node above which an index map is
// kept.
const idxThreshold = 8

// NewTrie returns an empty trie.
func NewTrie[T comparable]() *Trie[T] {
	return &Trie[T]{}
}

func (l *level[T]) empty() bool {
	return len(l.literal) == 0 && l.pwc == nil && l.fwc == nil
}

func (n *trieNode[T]) empty() bool {
	return len(n.vals) == 0 && n.next.empty()
}

func (n *trieNode[T]) find(v T) int {
	if n.idx != nil {
		if i, ok := n.idx[v]; ok {
			return i
		}
		return -1
	}
	for i, x := range n.vals {
		if x == v {
			return i
		}
	}
	return -1
}

func (n *trieNode[T]) add(v T) bool {
	if n.find(v) >= 0 {
		return false
	}
	n.vals = append(n.vals, v)
	switch {
	case n.idx != nil:
		n.idx[v] = len(n.vals) - 1
	case len(n.vals) > idxThreshold:
		n.idx = make(map[T]int, len(n.vals))
		for i, x := range n.vals {
			n.idx[x] = i
		}
	}
	return true
}

func (n *trieNode[T]) remove(v T) bool {
	i := n.find(v)
	if i < 0 {
		return false
	}
	last := len(n.vals) - 1
	if i != last {
		n.vals[i] = n.vals[last]
		if n.idx != nil {
			n.idx[n.vals[i]] = i
		}
	}
	var zero T
	n.vals[last] = zero // drop the reference for the garbage collector
	n.vals = n.vals[:last]
	if n.idx != nil {
		delete(n.idx, v)
		if len(n.vals) <= idxThreshold/2 {
			n.idx = nil
		}
	}
	if c := cap(n.vals); c > 64 && len(n.vals) < c/4 {
		n.vals = slices.Clip(slices.Clone(n.vals)) // let a peak's array go
		if n.idx != nil {
			// The index held at least as many entries as the array.
			n.idx = make(map[T]int, len(n.vals))
			for i, x := range n.vals {
				n.idx[x] = i
			}
		}
	}
	if len(n.vals) == 0 {
		n.vals = nil
	}
	return true
}

// Insert stores v under pattern. It returns an error wrapping
// ErrInvalidPattern if pattern is not a valid pattern.
func (t *Trie[T]) Insert(pattern string, v T) error {
	if err := ValidatePattern(pattern); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	l := &t.root
	var n *trieNode[T]
	for rest, more := pattern, true; more; {
		var tok string
		tok, rest, more = nextToken(rest)
		switch tok {
		case SingleWildcard:
			if l.pwc == nil {
				l.pwc = &trieNode[T]{}
			}
			n = l.pwc
		case FullWildcard:
			if l.fwc == nil {
				l.fwc = &trieNode[T]{}
			}
			n = l.fwc
		default:
			if l.literal == nil {
				l.literal = make(map[string]*trieNode[T])
			}
			n = l.literal[tok]
			if n == nil {
				n = &trieNode[T]{}
				// Clone so that the map key does not pin the caller's
				// possibly much larger string.
				l.literal[strings.Clone(tok)] = n
				l.peak = max(l.peak, len(l.literal))
			}
		}
		l = &n.next
	}
	if n.add(v) {
		t.count++
	}
	return nil
}

// Remove deletes v stored under pattern and reports whether it was present.
// Nodes left empty are pruned so that churn in subscriptions does not grow
// the trie.
func (t *Trie[T]) Remove(pattern string, v T) bool {
	if !validPattern(pattern) {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()

	// Remember the path so empty nodes can be pruned bottom-up.
	type step struct {
		l   *level[T]
		tok string
	}
	var path [MaxTokens]step
	depth := 0
	l := &t.root
	var n *trieNode[T]
	for rest, more := pattern, true; more; {
		var tok string
		tok, rest, more = nextToken(rest)
		switch tok {
		case SingleWildcard:
			n = l.pwc
		case FullWildcard:
			n = l.fwc
		default:
			n = l.literal[tok]
		}
		if n == nil {
			return false
		}
		path[depth] = step{l: l, tok: tok}
		depth++
		l = &n.next
	}
	if !n.remove(v) {
		return false
	}
	t.count--
	for i := depth - 1; i >= 0; i-- {
		s := path[i]
		var child *trieNode[T]
		switch s.tok {
		case SingleWildcard:
			child = s.l.pwc
		case FullWildcard:
			child = s.l.fwc
		default:
			child = s.l.literal[s.tok]
		}
		if !child.empty() {
			break
		}
		switch s.tok {
		case SingleWildcard:
			s.l.pwc = nil
		case FullWildcard:
			s.l.fwc = nil
		default:
			delete(s.l.literal, s.tok)
			switch {
			case len(s.l.literal) == 0:
				s.l.literal, s.l.peak = nil, 0
			case shrunk(len(s.l.literal), s.l.peak):
				// Copied entry by entry: maps.Clone keeps the capacity.
				m := make(map[string]*trieNode[T], len(s.l.literal))
				for k, v := range s.l.literal {
					m[k] = v
				}
				s.l.literal, s.l.peak = m, len(m)
			}
		}
	}
	return true
}

// Count returns the number of stored (pattern, value) pairs.
func (t *Trie[T]) Count() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.count
}

// Match returns every value whose pattern matches subject, each value once
// even if it is stored under several matching patterns. It returns nil if
// nothing matches or subject is not a valid literal subject, so that it
// agrees with the package-level Match.
func (t *Trie[T]) Match(subject string) []T {
	if !validSubject(subject) {
		return nil
	}
	var out []T
	t.mu.RLock()
	collect(&t.root, subject, &out)
	t.mu.RUnlock()
	return dedupe(out)
}

// MatchFunc calls fn for every value whose pattern matches subject, without
// allocating. A value stored under several patterns that all match subject is
// passed to fn once per such pattern; callers that need each value once use
// Match. fn runs while the trie's read lock is held, so it must not call
// Insert or Remove on the same trie (that would deadlock) and should be quick.
func (t *Trie[T]) MatchFunc(subject string, fn func(T)) {
	if !validSubject(subject) {
		return
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	visit(&t.root, subject, fn)
}

// HasMatch reports whether any pattern in the trie matches subject. It stops
// at the first match, so it is the cheapest way to ask "is anyone
// interested?" or "is this permitted?".
func (t *Trie[T]) HasMatch(subject string) bool {
	if !validSubject(subject) {
		return false
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	return hasMatch(&t.root, subject)
}

// visit walks l for the (non-empty) remaining subject rest. Each trie node
// is reached at most once per subject because a node stands for one exact
// token sequence.
func visit[T comparable](l *level[T], rest string, fn func(T)) {
	tok, tail, more := nextToken(rest)
	if n := l.fwc; n != nil {
		for _, v := range n.vals {
			fn(v)
		}
	}
	if n := l.pwc; n != nil {
		visitNode(n, tail, more, fn)
	}
	if n := l.literal[tok]; n != nil {
		visitNode(n, tail, more, fn)
	}
}

func visitNode[T comparable](n *trieNode[T], tail string, more bool, fn func(T)) {
	if !more {
		for _, v := range n.vals {
			fn(v)
		}
		return
	}
	if !n.next.empty() {
		visit(&n.next, tail, fn)
	}
}

// collect is visit specialised to appending, so Match needs no closure.
func collect[T comparable](l *level[T], rest string, out *[]T) {
	tok, tail, more := nextToken(rest)
	if n := l.fwc; n != nil {
		*out = append(*out, n.vals...)
	}
	if n := l.pwc; n != nil {
		collectNode(n, tail, more, out)
	}
	if n := l.literal[tok]; n != nil {
		collectNode(n, tail, more, out)
	}
}

func collectNode[T comparable](n *trieNode[T], tail string, more bool, out *[]T) {
	if !more {
		*out = append(*out, n.vals...)
		return
	}
	if !n.next.empty() {
		collect(&n.next, tail, out)
	}
}

func hasMatch[T comparable](l *level[T], rest string) bool {
	tok, tail, more := nextToken(rest)
	if n := l.fwc; n != nil && len(n.vals) > 0 {
		return true
	}
	if n := l.pwc; n != nil && hasMatchNode(n, tail, more) {
		return true
	}
	if n := l.literal[tok]; n != nil && hasMatchNode(n, tail, more) {
		return true
	}
	return false
}

func hasMatchNode[T comparable](n *trieNode[T], tail string, more bool) bool {
	if !more {
		return len(n.vals) > 0
	}
	return !n.next.empty() && hasMatch(&n.next, tail)
}

// dedupeLinearMax is the result size up to which duplicates are removed by a
// quadratic scan; typical fan-out is small and a map would cost more.
const dedupeLinearMax = 16

// dedupe removes repeated values in place, keeping first occurrences in
// order.
func dedupe[T comparable](vs []T) []T {
	if len(vs) < 2 {
		return vs
	}
	out := vs[:0]
	if len(vs) <= dedupeLinearMax {
	outer:
		for _, v := range vs {
			for _, w := range out {
				if v == w {
					continue outer
				}
			}
			out = append(out, v)
		}
	} else {
		seen := make(map[T]struct{}, len(vs))
		for _, v := range vs {
			if _, ok := seen[v]; ok {
				continue
			}
			seen[v] = struct{}{}
			out = append(out, v)
		}
	}
	var zero T
	for i := len(out); i < len(vs); i++ {
		vs[i] = zero
	}
	return out[:len(out):len(out)]
}
