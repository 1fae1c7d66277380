package runner

import (
	"bytes"
	"strings"
	"testing"
)

func TestEnvironCookies(t *testing.T) {
	c := newCookie()
	other := newCookie()
	for _, tc := range []struct {
		env  string
		want bool
	}{
		{EnvCookie + "=" + c, true},
		{"A=1\x00" + EnvCookie + "=" + c + "\x00B=2", true},
		{"A=1\x00" + EnvCookie + "=" + other + ":" + c, true},
		{EnvCookie + "=" + c + ":" + other + "\x00", true},
		{EnvCookie + "=" + other, false},
		{"X" + EnvCookie + "=" + c, false},
		{"COATTAIL_X=" + EnvCookie + "=" + c, false},
		{"A=1\x00COATTAIL_X=" + c, false},
		{EnvCookie + "=" + c + "0", false},
		{EnvCookie + "=0" + c, false},
		{EnvCookie + "=" + c[:cookieLen-1], false},
		{"", false},
		{EnvCookie + "=", false},
	} {
		if got := environHas([]byte(tc.env), c); got != tc.want {
			t.Errorf("environHas(%q) = %v, want %v", tc.env, got, tc.want)
		}
	}
}

func TestOuterCookies(t *testing.T) {
	a, b := newCookie(), newCookie()
	many := make([]string, maxOuterCookies+3)
	for i := range many {
		many[i] = newCookie()
	}
	for _, tc := range []struct {
		env  []string
		want string
	}{
		{nil, ""},
		{[]string{"PATH=/bin"}, ""},
		{[]string{EnvCookie + "=" + a}, a + ":"},
		{[]string{EnvCookie + "=" + a + ":" + b}, a + ":" + b + ":"},
		{[]string{EnvCookie + "=" + a + ":"}, ""},
		{[]string{EnvCookie + "=" + a + ":nothex"}, ""},
		{[]string{EnvCookie + "=" + strings.ToUpper(a)}, ""},
		{[]string{EnvCookie + "=" + strings.Join(many, ":")}, strings.Join(many[3:], ":") + ":"},
	} {
		if got := outerCookies(tc.env); got != tc.want {
			t.Errorf("outerCookies(%q) = %q, want %q", tc.env, got, tc.want)
		}
	}
}

// environCookies agrees with the plain reading of an environ: entries
// split at NUL, the EnvCookie one's value split at ':'.
func FuzzEnvironCookies(f *testing.F) {
	c := newCookie()
	f.Add([]byte(EnvCookie + "=" + c))
	f.Add([]byte("A=1\x00" + EnvCookie + "=x:" + c + "\x00B=" + EnvCookie + "=" + c))
	f.Add([]byte(EnvCookie + "=" + EnvCookie + "=" + c))
	f.Fuzz(func(t *testing.T, env []byte) {
		want := false
		for _, kv := range bytes.Split(env, []byte{0}) {
			if v, ok := bytes.CutPrefix(kv, []byte(EnvCookie+"=")); ok {
				for _, e := range strings.Split(string(v), ":") {
					want = want || e == c
				}
			}
		}
		if got := environHas(env, c); got != want {
			t.Errorf("environHas(%q) = %v, want %v", env, got, want)
		}
	})
}
