package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// The original Coattail's README says its --not-before and --expires-in
// take vercel/ms durations: "2 days", "1 week", "1y", any case. They mean
// the same here, beside this CLI's own 1w2d.
func TestParseDurationFlagOriginalForms(t *testing.T) {
	day := 24 * time.Hour
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"2 days", 2 * day},
		{"1 day", day},
		{"1 week", 7 * day},
		{"2weeks", 14 * day},
		{"1y", 36525 * day / 100},
		{"2 years", 2 * 36525 * day / 100},
		{"1 yr", 36525 * day / 100},
		{"2W", 14 * day},
		{"1D", day},
		{"1.5 hrs", 90 * time.Minute},
		{"10 Minutes", 10 * time.Minute},
		{"5 mins", 5 * time.Minute},
		{"30 secs", 30 * time.Second},
		{"1 second", time.Second},
		{"250 msecs", 250 * time.Millisecond},
		{"250 milliseconds", 250 * time.Millisecond},
		{".5h", 30 * time.Minute},
		{"292y", 292 * (36525 * day / 100)},
		// This CLI's own forms are unchanged.
		{"1w2d", 9 * day},
		{"1h30m", 90 * time.Minute},
		{"0", 0},
	} {
		got, err := parseDurationFlag("expires-in", tc.in)
		if err != nil || got != tc.want {
			t.Errorf("parseDurationFlag(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"100", `--expires-in "100" needs a unit, such as 100s, 100m, 100h or 100d (the original Coattail read a bare number as milliseconds)`},
		{"293y", `--expires-in "293y" is too long: at most 15250w1d23h47m16s`},
		{"3 fortnights", `--expires-in "3 fortnights": use a duration such as`},
		{"-1 day", `--expires-in "-1 day": use a duration such as`},
		{"1 week 2 days", `use a duration such as`},
		{"days", `use a duration such as`},
	} {
		_, err := parseDurationFlag("expires-in", tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseDurationFlag(%q): error %v, want one containing %q", tc.in, err, tc.want)
		}
	}
}

// token issue and validation issue take the original's durations end to
// end: the signed token's exp - iat is the duration asked for.
func TestTokenIssueOriginalDurations(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	lifetime := func(raw string) (nbf, exp int64) {
		t.Helper()
		var c struct{ Iat, Nbf, Exp int64 }
		if err := json.Unmarshal([]byte(a.mustRun("token", "decode", "--json", raw)), &c); err != nil {
			t.Fatal(err)
		}
		return c.Nbf - c.Iat, c.Exp - c.Iat
	}
	if nbf, exp := lifetime(a.issue("--not-before", "1 week", "--expires-in", "2 weeks")); nbf != 7*86400 || exp != 14*86400 {
		t.Errorf(`token issue --not-before "1 week" --expires-in "2 weeks": nbf-iat %d, exp-iat %d; want %d, %d`, nbf, exp, 7*86400, 14*86400)
	}
	raw := strings.TrimSpace(a.mustRun("validation", "issue", "--expires-in", "1y", "--print-raw-token", "--quiet"))
	if _, exp := lifetime(raw); exp != 31557600 {
		t.Errorf("validation issue --expires-in 1y: exp-iat %d, want 31557600 (365.25 days)", exp)
	}
	a.mustFail([]string{"token", "issue", "--expires-in", "100"}, `--expires-in "100" needs a unit`)
}

// A number of the original's form too large for a float (hundreds of
// digits) is too long, as any other duration over the limit: it was
// refused with strconv's "value out of range", echoing the number twice.
func TestParseDurationFlagHugeNumber(t *testing.T) {
	for _, in := range []string{strings.Repeat("9", 400) + " ms", strings.Repeat("9", 400) + " years"} {
		d, err := parseDurationFlag("expires-in", in)
		if err == nil || !strings.Contains(err.Error(), "is too long") || strings.Contains(err.Error(), "out of range") {
			t.Errorf("parseDurationFlag(%.12q…) = %v, %v; want it refused as too long", in, d, err)
		}
	}
}
