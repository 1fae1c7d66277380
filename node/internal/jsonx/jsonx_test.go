package jsonx

import (
	"encoding/json"
	"strings"
	"testing"
)

var cases = []string{`{}`, `[1,2]`, `"a\u00e9"`, "\"\xff\"", `1e5`, `-0.1`, `tru`, `{"a":1,}`, `"\ud800"`, " null ", `[`, "\"a\x01\"", ``, ` `, `{"a":[{"b":null}]}`, `01`, `1.`, `"\q"`}

func TestValidAgreesWithEncodingJSON(t *testing.T) {
	for _, c := range cases {
		if got, want := Valid([]byte(c)), json.Valid([]byte(c)); got != want {
			t.Errorf("Valid(%q) = %v, encoding/json says %v", c, got, want)
		}
	}
}

func FuzzValid(f *testing.F) {
	for _, c := range cases {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := Valid(b), json.Valid(b); got != want {
			t.Fatalf("Valid(%q) = %v, encoding/json says %v", b, got, want)
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
