package runner

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"strings"
)

// EnvCookie names the variable that marks every process of a run: the
// runner gives each run a random cookie in it, and every descendant
// inherits it (a program's environment passes to what it starts), also one
// that left the run's process group (setsid, a double-forking daemon,
// nohup setsid). On Linux the runner finds those by the cookie in
// /proc/<pid>/environ and kills them with the run (see reaper), as
// Jenkins' ProcessTreeKiller does with its build cookie.
//
// The value is the run's cookie, led by the cookies of the runs this
// runner's own process belongs to, separated by ':' ("outer:inner"): a
// `coattail action perform` run by an action with no service running runs
// the nested action itself, and killing the outer run must reach the
// nested action's processes too, in their own process group.
//
// It is not COATTAIL_RUN, a receiver's run key that cascades pass on.
const EnvCookie = "COATTAIL_RUN_COOKIE"

// cookieLen is the length of one cookie: 128 random bits in hex.
const cookieLen = 32

// maxOuterCookies bounds how many inherited cookies a run's value carries;
// past it the outermost are dropped.
const maxOuterCookies = 15

// newCookie returns a fresh random cookie. Runs cannot guess one another's
// (the same user could read one in /proc; that user can kill the processes
// anyway).
func newCookie() string {
	var b [cookieLen / 2]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics rather than return an error)
	return hex.EncodeToString(b[:])
}

// isCookie reports whether s is one cookie as newCookie makes them.
func isCookie(s string) bool {
	if len(s) != cookieLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// outerCookies returns the cookies this process inherited in its own
// EnvCookie (it runs inside a run), as the prefix of its runs' values
// ("a:b:"), or "" when it has none. A malformed value is ignored rather
// than passed on.
func outerCookies(parent []string) string {
	var v string
	found := false
	for _, kv := range parent {
		if val, ok := strings.CutPrefix(kv, EnvCookie+"="); ok {
			v, found = val, true
		}
	}
	if !found || v == "" {
		return ""
	}
	ids := strings.Split(v, ":")
	for _, id := range ids {
		if !isCookie(id) {
			return ""
		}
	}
	if len(ids) > maxOuterCookies {
		ids = ids[len(ids)-maxOuterCookies:]
	}
	return strings.Join(ids, ":") + ":"
}

var cookieKey = []byte(EnvCookie + "=")

// environCookies calls match with each cookie in env, a
// /proc/<pid>/environ (NUL-separated KEY=VALUE entries), that stands in an
// exact EnvCookie entry (its value, or an element of it), until match
// returns true; it reports whether one did. A cookie elsewhere (in another
// variable's value, as part of a longer element) is not one.
func environCookies(env []byte, match func(cookie []byte) bool) bool {
	for len(env) > 0 {
		i := bytes.Index(env, cookieKey)
		if i < 0 {
			return false
		}
		if i > 0 && env[i-1] != 0 {
			// Inside another entry: skip past this occurrence.
			env = env[i+len(cookieKey):]
			continue
		}
		val := env[i+len(cookieKey):]
		end := bytes.IndexByte(val, 0)
		if end < 0 {
			end = len(val)
		}
		rest := val[end:]
		val = val[:end]
		for len(val) > 0 {
			elem := val
			if j := bytes.IndexByte(val, ':'); j >= 0 {
				elem, val = val[:j], val[j+1:]
			} else {
				val = nil
			}
			if len(elem) == cookieLen && match(elem) {
				return true
			}
		}
		env = rest
	}
	return false
}

// environHas reports whether env carries cookie (see environCookies).
func environHas(env []byte, cookie string) bool {
	return environCookies(env, func(c []byte) bool { return string(c) == cookie })
}

// WithoutCookie returns env without EnvCookie. `coattail service start
// --headless` starts its service with it: a service started in the
// background from a run is not part of that run, and its programs are not
// either.
func WithoutCookie(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !strings.HasPrefix(kv, EnvCookie+"=") {
			out = append(out, kv)
		}
	}
	return out
}
