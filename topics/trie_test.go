package topics

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

func sorted(vs []string) []string {
	out := slices.Clone(vs)
	slices.Sort(out)
	return out
}

func TestTrieInsertMatchRemove(t *testing.T) {
	tr := NewTrie[string]()
	ins := []struct{ pattern, v string }{
		{"orders.new", "exact"},
		{"orders.*", "star"},
		{"orders.>", "full"},
		{">", "all"},
		{"*.new", "any-new"},
		{"orders.*.eu", "eu"},
		{"users.created", "users"},
	}
	for _, in := range ins {
		if err := tr.Insert(in.pattern, in.v); err != nil {
			t.Fatalf("Insert(%q): %v", in.pattern, err)
		}
	}
	if got := tr.Count(); got != len(ins) {
		t.Fatalf("Count = %d, want %d", got, len(ins))
	}
	tests := []struct {
		subject string
		want    []string
	}{
		{"orders.new", []string{"all", "any-new", "exact", "full", "star"}},
		{"orders.old", []string{"all", "full", "star"}},
		{"orders.new.eu", []string{"all", "eu", "full"}},
		{"orders", []string{"all"}},
		{"users.created", []string{"all", "users"}},
		{"users.new", []string{"all", "any-new"}},
		{"orders.*", nil}, // not a literal subject
		{"orders..new", nil},
	}
	for _, tc := range tests {
		got := sorted(tr.Match(tc.subject))
		if !slices.Equal(got, tc.want) {
			t.Errorf("Match(%q) = %v, want %v", tc.subject, got, tc.want)
		}
		if has := tr.HasMatch(tc.subject); has != (len(tc.want) > 0) {
			t.Errorf("HasMatch(%q) = %v, want %v", tc.subject, has, len(tc.want) > 0)
		}
	}

	if !tr.Remove(">", "all") {
		t.Fatal("Remove(>, all) = false, want true")
	}
	if tr.Remove(">", "all") {
		t.Fatal("second Remove(>, all) = true, want false")
	}
	if tr.Remove("orders.*", "exact") {
		t.Fatal("Remove of a value under the wrong pattern succeeded")
	}
	if tr.Remove("nope.never", "exact") {
		t.Fatal("Remove of an unknown pattern succeeded")
	}
	if tr.Remove("bad..pattern", "exact") {
		t.Fatal("Remove of an invalid pattern succeeded")
	}
	if got, want := sorted(tr.Match("orders")), []string(nil); !slices.Equal(got, want) {
		t.Errorf("after removing '>', Match(orders) = %v, want %v", got, want)
	}
	if tr.HasMatch("orders") {
		t.Error("HasMatch(orders) = true after removing '>'")
	}
	if got := tr.Count(); got != len(ins)-1 {
		t.Errorf("Count = %d, want %d", got, len(ins)-1)
	}
}

func TestTrieInsertRejectsInvalidPattern(t *testing.T) {
	tr := NewTrie[int]()
	for _, p := range []string{"", "a..b", "a.>.b", "a b", "a.b*"} {
		if err := tr.Insert(p, 1); !errors.Is(err, ErrInvalidPattern) {
			t.Errorf("Insert(%q) = %v, want ErrInvalidPattern", p, err)
		}
	}
	if tr.Count() != 0 {
		t.Errorf("Count = %d after rejected inserts, want 0", tr.Count())
	}
}

func TestTrieDuplicates(t *testing.T) {
	tr := NewTrie[int]()
	// The same pair twice is stored once.
	for range 2 {
		if err := tr.Insert("a.b", 1); err != nil {
			t.Fatal(err)
		}
	}
	if tr.Count() != 1 {
		t.Fatalf("Count = %d after duplicate insert, want 1", tr.Count())
	}
	// The same value under several matching patterns is returned once by
	// Match, but once per pattern by MatchFunc.
	for _, p := range []string{"a.*", "a.>", ">", "*.b"} {
		if err := tr.Insert(p, 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := tr.Insert("a.*", 2); err != nil {
		t.Fatal(err)
	}
	if got := sortedInts(tr.Match("a.b")); !slices.Equal(got, []int{1, 2}) {
		t.Errorf("Match(a.b) = %v, want [1 2]", got)
	}
	calls := map[int]int{}
	tr.MatchFunc("a.b", func(v int) { calls[v]++ })
	if calls[1] != 5 || calls[2] != 1 {
		t.Errorf("MatchFunc calls = %v, want 1:5 2:1", calls)
	}
	if !tr.Remove("a.b", 1) {
		t.Fatal("Remove(a.b, 1) = false")
	}
	// Still matched through the wildcard patterns.
	if got := sortedInts(tr.Match("a.b")); !slices.Equal(got, []int{1, 2}) {
		t.Errorf("Match(a.b) after removing exact = %v, want [1 2]", got)
	}
}

func sortedInts(vs []int) []int {
	out := slices.Clone(vs)
	slices.Sort(out)
	return out
}

func TestTrieManyValuesAtOneNode(t *testing.T) {
	// Crosses idxThreshold in both directions to exercise the index map.
	tr := NewTrie[int]()
	const n = 100
	for i := range n {
		if err := tr.Insert("hot.subject", i); err != nil {
			t.Fatal(err)
		}
		if err := tr.Insert("hot.subject", i); err != nil {
			t.Fatal(err)
		}
	}
	if tr.Count() != n {
		t.Fatalf("Count = %d, want %d", tr.Count(), n)
	}
	for i := 0; i < n; i += 2 {
		if !tr.Remove("hot.subject", i) {
			t.Fatalf("Remove(%d) = false", i)
		}
	}
	got := sortedInts(tr.Match("hot.subject"))
	var want []int
	for i := 1; i < n; i += 2 {
		want = append(want, i)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Match = %v, want %v", got, want)
	}
	for i := 1; i < n; i += 2 {
		if !tr.Remove("hot.subject", i) {
			t.Fatalf("Remove(%d) = false", i)
		}
		if tr.Remove("hot.subject", i) {
			t.Fatalf("second Remove(%d) = true", i)
		}
	}
	if tr.Count() != 0 || tr.HasMatch("hot.subject") {
		t.Fatalf("trie not empty: count %d", tr.Count())
	}
}

func TestTriePrunesEmptyNodes(t *testing.T) {
	tr := NewTrie[int]()
	patterns := []string{"a.b.c", "a.*.c", "a.>", ">", "*", "x.y.z.w"}
	for _, p := range patterns {
		if err := tr.Insert(p, 7); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range patterns {
		if !tr.Remove(p, 7) {
			t.Fatalf("Remove(%q) = false", p)
		}
	}
	if !tr.root.empty() {
		t.Fatalf("root not pruned after removing everything: %+v", tr.root)
	}
}

func TestTrieMatchFuncDoesNotAllocate(t *testing.T) {
	tr := NewTrie[int]()
	for i, p := range []string{"a.b.c", "a.*.c", "a.>", ">", "*.b.*"} {
		if err := tr.Insert(p, i); err != nil {
			t.Fatal(err)
		}
	}
	sum := 0
	fn := func(v int) { sum += v }
	allocs := testing.AllocsPerRun(100, func() {
		tr.MatchFunc("a.b.c", fn)
		if !tr.HasMatch("a.b.c") {
			t.Fatal("want match")
		}
	})
	if allocs != 0 {
		t.Errorf("MatchFunc/HasMatch allocated %v times per run, want 0", allocs)
	}
	if sum == 0 {
		t.Error("MatchFunc never called fn")
	}
}

// randomSubject and randomPattern draw from a tiny alphabet so that random
// patterns and subjects collide often enough to exercise matching.
func randomSubject(r *rand.Rand) string {
	n := 1 + r.IntN(4)
	toks := make([]string, n)
	for i := range toks {
		toks[i] = string(rune('a' + r.IntN(3)))
	}
	return strings.Join(toks, ".")
}

func randomPattern(r *rand.Rand) string {
	n := 1 + r.IntN(4)
	toks := make([]string, n)
	for i := range toks {
		switch k := r.IntN(5); k {
		case 0:
			toks[i] = "*"
		default:
			toks[i] = string(rune('a' + r.IntN(3)))
		}
	}
	if r.IntN(4) == 0 {
		toks[n-1] = ">"
	}
	return strings.Join(toks, ".")
}

// TestTrieAgreesWithMatch is a property test: for random sets of patterns,
// Trie.Match returns exactly the values whose pattern satisfies Match, also
// after random removals.
func TestTrieAgreesWithMatch(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		tr := NewTrie[int]()
		patterns := map[int]string{}
		for v := range 1 + r.IntN(30) {
			p := randomPattern(r)
			patterns[v] = p
			if err := tr.Insert(p, v); err != nil {
				t.Fatalf("Insert(%q): %v", p, err)
			}
		}
		for v, p := range patterns {
			if r.IntN(3) == 0 {
				if !tr.Remove(p, v) {
					t.Fatalf("Remove(%q, %d) = false", p, v)
				}
				delete(patterns, v)
			}
		}
		if tr.Count() != len(patterns) {
			t.Fatalf("round %d: Count = %d, want %d", round, tr.Count(), len(patterns))
		}
		for range 50 {
			s := randomSubject(r)
			var want []int
			for v, p := range patterns {
				if Match(p, s) {
					want = append(want, v)
				}
			}
			slices.Sort(want)
			got := sortedInts(tr.Match(s))
			if !slices.Equal(got, want) {
				t.Fatalf("round %d: Match(%q) = %v, want %v (patterns %v)", round, s, got, want, patterns)
			}
			if tr.HasMatch(s) != (len(want) > 0) {
				t.Fatalf("round %d: HasMatch(%q) = %v, want %v", round, s, !(len(want) > 0), len(want) > 0)
			}
		}
	}
}

// TestCoversProperty checks Covers against Match: if outer covers inner, no
// subject matched by inner escapes outer; if it does not, a witness subject
// built from inner exists that outer rejects.
func TestCoversProperty(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 5000 {
		outer, inner := randomPattern(r), randomPattern(r)
		covers := Covers(outer, inner)
		if covers {
			for range 20 {
				s := randomSubject(r)
				if Match(inner, s) && !Match(outer, s) {
					t.Fatalf("Covers(%q, %q) but %q matches inner only", outer, inner, s)
				}
			}
			continue
		}
		if !hasWitness(outer, inner) {
			t.Fatalf("Covers(%q, %q) = false but no subject of inner escapes outer", outer, inner)
		}
	}
}

// hasWitness looks for a subject matched by inner and not by outer, replacing
// wildcards in inner by a token that outer cannot name literally, and '>' by
// one token or by more tokens than outer has.
func hasWitness(outer, inner string) bool {
	toks := strings.Split(inner, ".")
	base := make([]string, 0, len(toks))
	for _, tok := range toks {
		if tok == "*" {
			tok = "zz"
		}
		base = append(base, tok)
	}
	candidates := []string{}
	if toks[len(toks)-1] == ">" {
		prefix := base[:len(base)-1]
		one := append(slices.Clone(prefix), "zz")
		candidates = append(candidates, strings.Join(one, "."))
		long := slices.Clone(prefix)
		for range strings.Count(outer, ".") + 2 {
			long = append(long, "zz")
		}
		candidates = append(candidates, strings.Join(long, "."))
	} else {
		candidates = append(candidates, strings.Join(base, "."))
	}
	for _, s := range candidates {
		if Match(inner, s) && !Match(outer, s) {
			return true
		}
	}
	return false
}

func TestTrieConcurrent(t *testing.T) {
	tr := NewTrie[int]()
	var wg sync.WaitGroup
	const writers, perWriter = 4, 200
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				p := fmt.Sprintf("w%d.%d.>", w, i%10)
				v := w*perWriter + i
				if err := tr.Insert(p, v); err != nil {
					t.Error(err)
					return
				}
				if i%2 == 0 && !tr.Remove(p, v) {
					t.Errorf("Remove(%q, %d) = false", p, v)
					return
				}
			}
		}()
	}
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				s := fmt.Sprintf("w%d.%d.x", i%writers, i%10)
				_ = tr.Match(s)
				tr.MatchFunc(s, func(int) {})
				_ = tr.HasMatch(s)
				_ = tr.Count()
			}
		}()
	}
	wg.Wait()
	if got, want := tr.Count(), writers*perWriter/2; got != want {
		t.Fatalf("Count = %d, want %d", got, want)
	}
	for w := range writers {
		got := tr.Match(fmt.Sprintf("w%d.3.x", w))
		// values w*perWriter+i with i%10 == 3 and i odd survive
		want := 0
		for i := range perWriter {
			if i%10 == 3 && i%2 == 1 {
				want++
			}
		}
		if len(got) != want {
			t.Errorf("writer %d: %d matches, want %d", w, len(got), want)
		}
	}
}

func TestDedupeLarge(t *testing.T) {
	in := make([]int, 0, 100)
	for i := range 100 {
		in = append(in, i%37)
	}
	got := dedupe(in)
	if len(got) != 37 {
		t.Fatalf("dedupe kept %d values, want 37", len(got))
	}
	for i, v := range got {
		if v != i {
			t.Fatalf("dedupe did not keep first-occurrence order: %v", got)
		}
	}
}

// benchTrie builds a trie with n patterns shaped like real subscriptions:
// mostly literal, some with '*' or a trailing '>'.
func benchTrie(b *testing.B, n int) *Trie[int] {
	b.Helper()
	tr := NewTrie[int]()
	for i := range n {
		var p string
		switch i % 10 {
		case 0:
			p = fmt.Sprintf("svc%d.*.created", i%50)
		case 1:
			p = fmt.Sprintf("svc%d.orders.>", i%50)
		default:
			p = fmt.Sprintf("svc%d.orders.id%d", i%50, i)
		}
		if err := tr.Insert(p, i); err != nil {
			b.Fatal(err)
		}
	}
	return tr
}

func BenchmarkTrieMatch1k(b *testing.B) {
	tr := benchTrie(b, 1000)
	b.ReportAllocs()
	for b.Loop() {
		if len(tr.Match("svc7.orders.id107")) == 0 {
			b.Fatal("no match")
		}
	}
}

func BenchmarkTrieMatchFunc1k(b *testing.B) {
	tr := benchTrie(b, 1000)
	n := 0
	fn := func(int) { n++ }
	b.ReportAllocs()
	for b.Loop() {
		tr.MatchFunc("svc7.orders.id107", fn)
	}
	if n == 0 {
		b.Fatal("no match")
	}
}

// BenchmarkBruteForceMatch1k is the baseline: checking every pattern with
// Match, as a registry without a trie would.
func BenchmarkBruteForceMatch1k(b *testing.B) {
	var patterns []string
	for i := range 1000 {
		switch i % 10 {
		case 0:
			patterns = append(patterns, fmt.Sprintf("svc%d.*.created", i%50))
		case 1:
			patterns = append(patterns, fmt.Sprintf("svc%d.orders.>", i%50))
		default:
			patterns = append(patterns, fmt.Sprintf("svc%d.orders.id%d", i%50, i))
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		for _, p := range patterns {
			if Match(p, "svc7.orders.id107") {
				n++
			}
		}
		if n == 0 {
			b.Fatal("no match")
		}
	}
}

func BenchmarkTrieHasMatchParallel1k(b *testing.B) {
	tr := benchTrie(b, 1000)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !tr.HasMatch("svc7.orders.id107") {
				b.Error("no match")
				return
			}
		}
	})
}

// A node that held many values for one pattern gives its array back once
// most are removed.
func TestTrieNodeShrinks(t *testing.T) {
	tr := NewTrie[int]()
	for i := range 10_000 {
		if err := tr.Insert("orders.>", i); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i < 10_000; i++ {
		tr.Remove("orders.>", i)
	}
	n := tr.root.literal["orders"].next.fwc
	if len(n.vals) != 1 || cap(n.vals) > 64 {
		t.Fatalf("1 value left, in an array of capacity %d", cap(n.vals))
	}
	if got := tr.Match("orders.a"); len(got) != 1 || got[0] != 0 {
		t.Fatalf("Match after the removals = %v, want [0]", got)
	}
}

// The trie's memory follows what it holds, not its peak: a Go map never
// shrinks, so a level's literal map and a node's index map that once held
// many entries must be rebuilt when most are removed (subscriptions come
// and go, e.g. one per short-lived inbox).
func TestTrieMapsShrinkAfterChurn(t *testing.T) {
	const n = 50_000
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	for _, tc := range []struct {
		name    string
		pattern func(i int) string
		keep    int
	}{
		{"literal map", func(i int) string { return "inbox." + strconv.Itoa(i) }, 1},
		{"index map", func(int) string { return "orders.>" }, idxThreshold},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := heap()
			tr := NewTrie[int]()
			for i := range n {
				if err := tr.Insert(tc.pattern(i), i); err != nil {
					t.Fatal(err)
				}
			}
			peak := heap() - base
			for i := tc.keep; i < n; i++ {
				if !tr.Remove(tc.pattern(i), i) {
					t.Fatalf("Remove(%d) = false", i)
				}
			}
			left := int64(heap()) - int64(base)
			t.Logf("%d entries: %d KiB; %d left: %d KiB", n, peak>>10, tc.keep, left>>10)
			if left > 64<<10 {
				t.Errorf("%d patterns left hold %d KiB (the peak held %d KiB)", tc.keep, left>>10, peak>>10)
			}
			for i := range tc.keep {
				if got := tr.Match(strings.ReplaceAll(tc.pattern(i), ">", "x")); !slices.Contains(got, i) {
					t.Fatalf("Match after the removals = %v, want %d in it", got, i)
				}
			}
			runtime.KeepAlive(tr)
		})
	}
}
