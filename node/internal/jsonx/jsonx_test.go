package jsonx

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// reference is encoding/json's verdict plus UTF-8.
func reference(b []byte) bool { return json.Valid(b) && utf8.Valid(b) }

var cases = []string{`{"a":"\xff"}`, "{\"a\":\"\xc3\"}", "\"\xed\xa0\x80\"", `{}`, `[1,2]`, `"a\u00e9"`, "\"\xff\"", `1e5`, `-0.1`, `tru`, `{"a":1,}`, `"\ud800"`, " null ", `[`, "\"a\x01\"", ``, ` `, `{"a":[{"b":null}]}`, `01`, `1.`, `"\q"`}

// Nesting: encoding/json refuses more than 10 000 levels; so must Valid
// (brackets inside strings do not count).
func deepCases() []string {
	n := MaxDepth
	str := `"` + strings.Repeat("[", n+5) + `"`
	return []string{
		strings.Repeat("[", n) + strings.Repeat("]", n),
		strings.Repeat("[", n+1) + strings.Repeat("]", n+1),
		strings.Repeat(`{"a":`, n) + "1" + strings.Repeat("}", n),
		strings.Repeat(`{"a":`, n+1) + "1" + strings.Repeat("}", n+1),
		strings.Repeat("[", n-1) + str + strings.Repeat("]", n-1),
		strings.Repeat("[", n-1) + `""[[["` + strings.Repeat("]", n-1),
		"[" + strings.Repeat("[],", 3*n) + "[]]",
	}
}

func TestValidAgreesWithEncodingJSON(t *testing.T) {
	for _, c := range append(cases, deepCases()...) {
		if got, want := Valid([]byte(c)), reference([]byte(c)); got != want {
			t.Errorf("Valid(%q) = %v, encoding/json and utf8 say %v", c, got, want)
		}
	}
}

func FuzzValid(f *testing.F) {
	for _, c := range cases {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := Valid(b), reference(b); got != want {
			t.Fatalf("Valid(%q) = %v, encoding/json and utf8 say %v", b, got, want)
		}
	})
}

func BenchmarkValid(b *testing.B) {
	big := []byte(`{"blob":"` + strings.Repeat("abcdefgh", 8190) + `"}`)
	b.Run("jsonx", func(b *testing.B) {
		b.SetBytes(int64(len(big)))
		for i := 0; i < b.N; i++ {
			Valid(big)
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.SetBytes(int64(len(big)))
		for i := 0; i < b.N; i++ {
			json.Valid(big)
		}
	})
}
