package main

// End-to-end tests of the coattail binary: the acceptance criteria of the
// foundation (instances, service, local actions), token and peering issues,
// each driven through the CLI as a user would.

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coattail/coattail/auth"
	"gopkg.in/yaml.v3"
)

// statusEntry is the part of `service status --json` the tests check.
type statusEntry struct {
	PID         int      `json:"pid"`
	Instance    string   `json:"instance"`
	PeerID      string   `json:"peer_id"`
	ListenAddrs []string `json:"listen_addrs"`
	Online      bool     `json:"online"`
}

func (i *instance) status() []statusEntry {
	i.t.Helper()
	var st []statusEntry
	i.decodeJSON(i.mustRun("service", "status", "--json"), &st)
	return st
}

// assertServing checks that the service with pid still answers and still
// runs actions.
func (i *instance) assertServing(pid int) {
	i.t.Helper()
	st := i.status()
	if len(st) != 1 || st[0].PID != pid || !st[0].Online {
		i.t.Fatalf("service status = %+v, want pid %d online", st, pid)
	}
	if out := i.mustRun("action", "perform", "--action", "echo", "--data", `"still here"`); strings.TrimSpace(out) != `"still here"` {
		i.t.Fatalf("echo after a failure printed %q", out)
	}
}

func TestFoundation(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")

	// Layout of a new instance.
	for _, d := range []string{"actions", "receivers", "data", "keys"} {
		if st, err := os.Stat(a.path(d)); err != nil || !st.IsDir() {
			t.Fatalf("new instance lacks directory %s: %v", d, err)
		}
	}
	st, err := os.Stat(a.path("keys", "identity.key"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("keys/identity.key mode = %04o, want 0600", st.Mode().Perm())
	}
	raw, err := os.ReadFile(a.path("config.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Network struct {
			Listen []string `yaml:"listen"`
		} `yaml:"network"`
		Limits struct {
			ActionTimeout string `yaml:"action_timeout"`
		} `yaml:"limits"`
	}
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatalf("config.yml does not parse: %v", err)
	}
	if !slices.Contains(cfg.Network.Listen, "/ip4/127.0.0.1/tcp/0") || cfg.Limits.ActionTimeout == "" {
		t.Errorf("config.yml of a --loopback --port 0 instance: listen %v, action_timeout %q", cfg.Network.Listen, cfg.Limits.ActionTimeout)
	}
	if out := a.mustRun("version"); !strings.HasPrefix(out, "coattail ") {
		t.Errorf("version printed %q", out)
	}

	// `new` refuses to overwrite an instance.
	keyBefore, _ := os.ReadFile(a.path("keys", "identity.key"))
	_, stderr, code := a.runIn(filepath.Dir(a.dir), "new", "a", "--loopback", "--port", "0")
	if code == 0 || !strings.Contains(stderr, "already exists") {
		t.Fatalf("second new: exit %d, stderr %q; want a failure saying the instance already exists", code, stderr)
	}
	if keyAfter, _ := os.ReadFile(a.path("keys", "identity.key")); string(keyAfter) != string(keyBefore) {
		t.Fatal("second new changed the identity key")
	}

	// limits.action_timeout stays at its generous default here: the test
	// shows the timeout itself (1s) on a service of its own below, so that
	// no other action races it on a busy machine.
	pid := a.start()
	if !processAlive(pid) {
		t.Fatalf("service pid %d is not running", pid)
	}
	peerID := a.peerID()

	// Status, text and JSON.
	text := a.mustRun("service", "status")
	for _, want := range []string{strconv.Itoa(pid), a.dir, peerID, "/ip4/127.0.0.1/tcp/"} {
		if !strings.Contains(text, want) {
			t.Errorf("service status lacks %q:\n%s", want, text)
		}
	}
	sts := a.status()
	if len(sts) != 1 {
		t.Fatalf("service status --json lists %d services, want 1: %+v", len(sts), sts)
	}
	if s := sts[0]; s.PID != pid || s.Instance != a.dir || s.PeerID != peerID || !hasPrefix(s.ListenAddrs, "/ip4/127.0.0.1/tcp/") {
		t.Errorf("service status --json = %+v, want pid %d, instance %s, peer %s, a loopback tcp address", s, pid, a.dir, peerID)
	}
	for _, addr := range sts[0].ListenAddrs {
		if strings.HasSuffix(addr, "/tcp/0") {
			t.Errorf("listen address %s still has port 0", addr)
		}
	}

	// Starting twice.
	a.mustFail([]string{"service", "start", "--headless"}, "already running", strconv.Itoa(pid))

	// Action create and local perform.
	out := a.mustRun("action", "create", "--name", "echo")
	if !strings.Contains(out, a.path("actions", "echo")) {
		t.Errorf("action create printed %q, want the file's path", out)
	}
	st, err = os.Stat(a.path("actions", "echo"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm()&0o111 == 0 {
		t.Errorf("created action mode %04o is not executable", st.Mode().Perm())
	}
	if out := a.mustRun("action", "perform", "--action", "echo", "--data", `{"a":1}`); out != "{\"a\":1}\n" {
		t.Fatalf("perform echo printed %q, want {\"a\":1}", out)
	}
	a.mustFail([]string{"action", "create", "--name", "echo"}, "echo", "already exists")

	// Edits take effect on the next run, without a restart.
	a.writeScript("actions", "echo", "cat >/dev/null\necho '{\"edited\":true}'\n")
	if out := a.mustRun("action", "perform", "--action", "echo", "--data", `{"a":1}`); strings.TrimSpace(out) != `{"edited":true}` {
		t.Fatalf("perform after edit printed %q, want the new behaviour", out)
	}
	a.writeScript("actions", "echo", "exec cat\n")

	// Failing actions: a clear error naming the action, a non-zero exit,
	// and the service keeps serving.
	a.writeScript("actions", "fail", "echo 'boom: disk on fire' >&2\nexit 1\n")
	a.writeScript("actions", "badjson", "echo 'this is not json'\n")
	a.writeScript("actions", "slow", "sleep 30\n")
	a.writeScript("actions", "big", "head -c 2000000 /dev/zero | tr '\\000' 1\n")
	for _, tc := range []struct {
		action string
		want   []string
	}{
		{"fail", []string{`"fail"`, "status 1", "boom: disk on fire"}},
		{"badjson", []string{`"badjson"`, "invalid JSON", "this is not json"}},
		{"big", []string{`"big"`, "output exceeds"}},
		{"missing", []string{`"missing"`, "no action"}},
	} {
		a.mustFail([]string{"action", "perform", "--action", tc.action, "--data", "{}"}, tc.want...)
		a.assertServing(pid)
	}

	// Names that are not subjects.
	for _, name := range []string{"My Action", "a..b", "a/b"} {
		stderr := a.mustFail([]string{"action", "create", "--name", name}, "allowed: ASCII letters, digits")
		if !strings.Contains(stderr, name) {
			t.Errorf("refusal of %q does not name it: %s", name, stderr)
		}
	}
	if _, err := os.Stat(a.path("actions", "My Action")); err == nil {
		t.Error("an invalid action name was written anyway")
	}

	// Listings.
	a.mustRun("action", "create", "--name", "orders.created", "--receiver")
	list := a.mustRun("action", "list")
	for _, name := range []string{"echo", "fail", "badjson", "slow", "big"} {
		if !strings.Contains(list, name) {
			t.Errorf("action list lacks %s:\n%s", name, list)
		}
	}
	if strings.Contains(list, "orders.created") {
		t.Errorf("action list shows a receiver:\n%s", list)
	}
	if recv := a.mustRun("action", "list", "--receivers"); !strings.Contains(recv, "orders.created") || strings.Contains(recv, "echo") {
		t.Errorf("action list --receivers:\n%s", recv)
	}
	var infos []struct {
		Name       string `json:"name"`
		Kind       string `json:"kind"`
		Executable bool   `json:"executable"`
		Path       string `json:"path"`
	}
	a.decodeJSON(a.mustRun("action", "list", "--json"), &infos)
	if len(infos) != 5 {
		t.Errorf("action list --json has %d entries, want 5: %+v", len(infos), infos)
	}
	for _, x := range infos {
		if x.Kind != "action" || !x.Executable || x.Path != a.path("actions", x.Name) {
			t.Errorf("action list --json entry %+v", x)
		}
	}
	a.decodeJSON(a.mustRun("action", "list", "--receivers", "--json"), &infos)
	if len(infos) != 1 || infos[0].Name != "orders.created" || infos[0].Kind != "receiver" {
		t.Errorf("action list --receivers --json = %+v", infos)
	}
	// A file whose name is no subject (the original Coattail's "My
	// Action.js") is listed as skipped, saying why, not left out silently.
	if err := os.WriteFile(a.path("actions", "My Action.js"), []byte("#!/bin/sh\ncat\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if list := a.mustRun("action", "list"); !strings.Contains(list, "My Action.js (skipped: ") {
		t.Errorf("action list does not say why My Action.js is skipped:\n%s", list)
	}
	var skipped []struct {
		Name    string `json:"name"`
		Skipped string `json:"skipped"`
	}
	a.decodeJSON(a.mustRun("action", "list", "--json"), &skipped)
	if n := len(skipped); n != 6 || skipped[5].Name != "My Action.js" || skipped[5].Skipped == "" || skipped[0].Skipped != "" {
		t.Errorf("action list --json = %+v, want the five actions, then My Action.js with why it is skipped", skipped)
	}
	if err := os.Remove(a.path("actions", "My Action.js")); err != nil {
		t.Fatal(err)
	}

	// Stop waits until the process has exited.
	if out := a.mustRun("service", "stop"); !strings.Contains(out, strconv.Itoa(pid)) {
		t.Errorf("service stop printed %q, want the pid", out)
	}
	if processAlive(pid) {
		t.Fatalf("service stop returned while pid %d still runs", pid)
	}
	if _, err := os.Stat(a.path("coattail.sock")); err == nil {
		t.Error("a cleanly stopped service left its socket behind")
	}
	a.mustFail([]string{"service", "stop"}, "not running")
	if out := a.mustRun("service", "status"); !strings.Contains(out, "No Coattail service is running") {
		t.Errorf("status after stop: %q", out)
	}

	// Offline commands work with the service stopped.
	offTok := a.issue("--performable", "echo")
	if out := a.mustRun("action", "perform", "--action", "echo", "--data", "[1,2]"); strings.TrimSpace(out) != "[1,2]" {
		t.Errorf("offline perform printed %q", out)
	}
	// Start right after an offline command, and while one still holds the
	// datastore: the service waits for it instead of failing.
	a.writeScript("actions", "nap", "sleep 0.5\nexec cat\n")
	nap := a.spawn("action", "perform", "--action", "nap", "--data", `"napped"`)
	pid = a.start()
	if code := nap.wait(t); code != 0 || strings.TrimSpace(nap.stdout()) != `"napped"` {
		t.Errorf("offline perform racing a start: exit %d, stdout %q, stderr %q", code, nap.stdout(), nap.stderr())
	}
	// Offline-capable commands now go through the running service, and see
	// what was stored offline.
	var toks []struct {
		ID string `json:"id"`
	}
	a.decodeJSON(a.mustRun("token", "list", "--json"), &toks)
	if len(toks) != 1 || toks[0].ID != a.tokenID(offTok) {
		t.Errorf("token list while running = %+v, want the token issued offline", toks)
	}
	a.issue()
	if out := a.mustRun("token", "list"); strings.Count(out, "\n") != 3 {
		t.Errorf("token list want header + 2 tokens:\n%s", out)
	}

	// A stale pid file and socket (the service was killed) do not prevent
	// a restart.
	killAndWait(t, pid)
	for _, f := range []string{"coattail.sock", "service.pid"} {
		if _, err := os.Stat(a.path(f)); err != nil {
			t.Fatalf("after kill -9, %s is gone (%v): the stale-file case is not exercised", f, err)
		}
	}
	a.mustFail([]string{"service", "stop"}, "not running")
	newPID := a.start()
	if newPID == pid {
		t.Fatalf("restart reported the killed pid %d", pid)
	}
	sts = a.status()
	if len(sts) != 1 || sts[0].PID != newPID {
		t.Fatalf("status after restart = %+v, want only pid %d", sts, newPID)
	}
	a.assertServing(newPID)

	// Stop by pid, from anywhere.
	_, stderr, code = a.runIn(t.TempDir(), "service", "stop", strconv.Itoa(newPID))
	if code != 0 || processAlive(newPID) {
		t.Fatalf("service stop %d: exit %d, alive %v, stderr %s", newPID, code, processAlive(newPID), stderr)
	}
	a.mustFail([]string{"service", "stop", strconv.Itoa(newPID)}, "not running")

	// An action that outlives limits.action_timeout fails as a timeout,
	// naming it, and the service keeps serving. With max_running 1, a
	// timed-out action that kept its slot would make every later perform
	// wait for it; echo runs under the same 1s limit, so one that merely
	// ran late on a busy machine is tried again.
	a.setConfig("action_timeout", "1s")
	a.setConfig("max_running", "1")
	pid = a.start()
	a.mustFail([]string{"action", "perform", "--action", "slow", "--data", "{}"}, `"slow"`, "timed out after 1s")
	sts = a.status()
	if len(sts) != 1 || sts[0].PID != pid || !sts[0].Online {
		t.Fatalf("service status after an action timed out = %+v, want pid %d online", sts, pid)
	}
	checkFor(t, 60*time.Second, func() error {
		stdout, stderr, code := a.run("action", "perform", "--action", "echo", "--data", `"still here"`)
		if code == 0 && strings.TrimSpace(stdout) == `"still here"` {
			return nil
		}
		err := fmt.Errorf("echo after a timeout: exit %d, stdout %q, stderr %q", code, stdout, stderr)
		if code == 0 || !strings.Contains(stderr, "timed out after 1s") {
			t.Fatal(err)
		}
		return err
	})
}

func hasPrefix(xs []string, prefix string) bool {
	return slices.ContainsFunc(xs, func(x string) bool { return strings.HasPrefix(x, prefix) })
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	t.Run("unknown key", func(t *testing.T) {
		t.Parallel()
		a := newInstance(t, "a")
		b, err := os.ReadFile(a.path("config.yml"))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(b), "\n")
		at := slices.Index(lines, "limits:") + 1
		if at == 0 {
			t.Fatal("config.yml has no limits: section")
		}
		lines = slices.Insert(lines, at, "  max_widgets: 3")
		if err := os.WriteFile(a.path("config.yml"), []byte(strings.Join(lines, "\n")), 0o644); err != nil {
			t.Fatal(err)
		}
		a.mustFail([]string{"service", "start", "--headless"}, "max_widgets", fmt.Sprintf("line %d", at+1))
		if sts := a.status(); len(sts) != 0 {
			t.Errorf("a service runs after a config error: %+v", sts)
		}
	})
	t.Run("busy port", func(t *testing.T) {
		t.Parallel()
		a := newInstance(t, "a")
		port := busyPort(t)
		a.setConfig("listen", fmt.Sprintf(`["/ip4/127.0.0.1/tcp/%d"]`, port))
		a.mustFail([]string{"service", "start", "--headless"}, strconv.Itoa(port), "address already in use")
		if sts := a.status(); len(sts) != 0 {
			t.Errorf("a service runs after a busy-port error: %+v", sts)
		}
	})
	t.Run("port of another instance", func(t *testing.T) {
		// libp2p listens with SO_REUSEPORT: without a check, a second
		// instance would start on the same port and share its connections.
		t.Parallel()
		a, b := newInstance(t, "a"), newInstance(t, "b")
		port := freePort(t)
		for _, i := range []*instance{a, b} {
			i.setConfig("listen", fmt.Sprintf(`["/ip4/127.0.0.1/tcp/%d", "/ip4/127.0.0.1/udp/%d/quic-v1"]`, port, port))
		}
		bpid := b.start()
		a.mustFail([]string{"service", "start", "--headless"}, strconv.Itoa(port), "already in use")
		for _, st := range a.status() {
			if st.PID != bpid {
				t.Errorf("a second service runs on the port of another: %+v", st)
			}
		}
	})
	t.Run("key permissions", func(t *testing.T) {
		t.Parallel()
		a := newInstance(t, "a")
		if err := os.Chmod(a.path("keys", "identity.key"), 0o644); err != nil {
			t.Fatal(err)
		}
		a.mustFail([]string{"service", "start", "--headless"}, "identity.key", "0644", "chmod 600")
		if sts := a.status(); len(sts) != 0 {
			t.Errorf("a service runs with a readable key: %+v", sts)
		}
	})
}

// claimsJSON is `token decode --json`.
type claimsJSON struct {
	Type      string   `json:"typ"`
	ID        string   `json:"jti"`
	Issuer    string   `json:"iss"`
	IssuedAt  int64    `json:"iat"`
	NotBefore int64    `json:"nbf"`
	ExpiresAt int64    `json:"exp"`
	Perform   []string `json:"perform"`
	Publish   []string `json:"publish"`
	Subscribe []string `json:"subscribe"`
	Bearers   []string `json:"bearers"`
	Addrs     []string `json:"addrs"`
}

func (i *instance) decodeClaims(raw string) claimsJSON {
	i.t.Helper()
	var c claimsJSON
	i.decodeJSON(i.mustRun("token", "decode", "--json", raw), &c)
	return c
}

var jwtLine = regexp.MustCompile(`^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\n$`)

func TestTokensCLI(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	b := newInstance(t, "b")
	a.start()
	aID, bID := a.peerID(), b.peerID()

	// Flags, JSON-array and comma-list forms, exactly one JWT line.
	before := time.Now().Unix()
	out := a.mustRun("token", "issue", "--performable", `["orders.new","orders.*"]`, "--publishable", "x,y.>",
		"--subscribable", "reports.*", "--bearers", "vt://"+bID+",ipv4://127.0.0.0/8",
		"--expires-in", "2w", "--not-before", "1w", "--print-raw-token", "--quiet")
	if !jwtLine.MatchString(out) {
		t.Fatalf("--print-raw-token --quiet printed %q, want exactly one JWT line", out)
	}
	tok := strings.TrimSpace(out)
	c := a.decodeClaims(tok)
	if c.Issuer != aID {
		t.Errorf("iss = %s, want the issuer's peer id %s", c.Issuer, aID)
	}
	if !slices.Equal(c.Perform, []string{"orders.new", "orders.*"}) || !slices.Equal(c.Publish, []string{"x", "y.>"}) ||
		!slices.Equal(c.Subscribe, []string{"reports.*"}) {
		t.Errorf("permissions: perform %v publish %v subscribe %v", c.Perform, c.Publish, c.Subscribe)
	}
	if !slices.Equal(c.Bearers, []string{"vt://" + bID, "ipv4://127.0.0.0/8"}) {
		t.Errorf("bearers = %v", c.Bearers)
	}
	// An empty --subscribable (an empty shell variable) means none, not the
	// default of everything.
	for _, empty := range []string{"", "[]"} {
		out := b.mustRun("token", "issue", "--subscribable", empty, "--print-raw-token", "--quiet")
		if c := b.decodeClaims(strings.TrimSpace(out)); len(c.Subscribe) != 0 {
			t.Errorf("--subscribable %q gave subscribe %v, want none", empty, c.Subscribe)
		}
	}
	// Checked against the clock with an hour's slack: these are values,
	// not timings.
	const day, week, slack = 86400, 7 * 86400, 3600
	if d := c.ExpiresAt - before; d < 2*week-slack || d > 2*week+slack {
		t.Errorf("--expires-in 2w gave exp %d, %ds from now", c.ExpiresAt, d)
	}
	if d := c.NotBefore - before; d < week-slack || d > week+slack {
		t.Errorf("--not-before 1w gave nbf %d, %ds from now", c.NotBefore, d)
	}
	if d := a.decodeClaims(a.issue("--expires-in", "1d")).ExpiresAt - before; d < day-slack || d > day+slack {
		t.Errorf("--expires-in 1d gave exp %ds from now", d)
	}
	if !hasPrefix(c.Addrs, "/ip4/127.0.0.1/tcp/") {
		t.Errorf("a token issued while the service runs carries addrs %v, want its loopback address", c.Addrs)
	}
	text := a.mustRun("token", "decode", tok)
	for _, want := range []string{c.ID, aID, "orders.new, orders.*", "ipv4://127.0.0.0/8"} {
		if !strings.Contains(text, want) {
			t.Errorf("token decode lacks %q:\n%s", want, text)
		}
	}

	// Defaults: perform/publish nothing, subscribe everything, no expiry.
	def := a.decodeClaims(a.issue())
	if len(def.Perform) != 0 || len(def.Publish) != 0 || !slices.Equal(def.Subscribe, []string{">"}) || def.ExpiresAt != 0 {
		t.Errorf("default token claims %+v", def)
	}

	// Listing and showing never echo the raw token, and use stable keys.
	var list []map[string]any
	a.decodeJSON(a.mustRun("token", "list", "--json"), &list)
	if len(list) != 3 {
		t.Fatalf("token list --json has %d entries, want 3", len(list))
	}
	for _, e := range list {
		for _, k := range []string{"id", "issuer", "issued_at", "perform", "publish", "subscribe", "bearers", "addrs", "reusable"} {
			if _, ok := e[k]; !ok {
				t.Errorf("token list --json entry lacks key %q: %v", k, e)
			}
		}
		if _, ok := e["token"]; ok {
			t.Errorf("token list --json echoes the raw token")
		}
	}
	var shown map[string]any
	a.decodeJSON(a.mustRun("token", "show", c.ID, "--json"), &shown)
	if shown["id"] != c.ID || shown["issuer"] != aID || shown["expires_at"] == nil || shown["not_before"] == nil {
		t.Errorf("token show --json = %v", shown)
	}
	if _, ok := shown["token"]; ok {
		t.Errorf("token show --json echoes the raw token")
	}
	if text := a.mustRun("token", "show", c.ID); !strings.Contains(text, c.ID) || !strings.Contains(text, "vt://"+bID) {
		t.Errorf("token show:\n%s", text)
	}
	if out := a.mustRun("token", "issuer"); strings.TrimSpace(out) != aID {
		t.Errorf("token issuer = %q, want %s", out, aID)
	}

	// Bad input.
	a.mustFail([]string{"token", "decode", "not.a.jwt"})
	a.mustFail([]string{"token", "decode", "garbage"})
	forged := tok[:len(tok)-4] + "AAAA"
	if forged == tok {
		forged = tok[:len(tok)-4] + "BBBB"
	}
	a.mustFail([]string{"token", "decode", forged})
	a.mustFail([]string{"token", "issue", "--expires-in", "someday"}, "--expires-in")
	a.mustFail([]string{"token", "issue", "--performable", `["bad subject"]`})
	a.mustFail([]string{"token", "issue", "--bearers", "http://example.com"})
	a.mustFail([]string{"token", "show", "no-such-token"})

	// Revocation. Without --force and with stdin not a terminal (here
	// /dev/null, as under cron or ssh -n) it does not ask.
	if out := a.mustRun("token", "revoke", c.ID); !strings.Contains(out, c.ID) {
		t.Errorf("token revoke printed %q", out)
	}
	a.mustFail([]string{"token", "show", c.ID})
	a.decodeJSON(a.mustRun("token", "list", "--json"), &list)
	if len(list) != 2 || slices.ContainsFunc(list, func(e map[string]any) bool { return e["id"] == c.ID }) {
		t.Errorf("token list after revoke: %v", list)
	}
	a.mustFail([]string{"token", "revoke", "--force", c.ID})

	// Validation tokens: b proves its peer id to a; a binds a token to it.
	vout := b.mustRun("validation", "issue", "--print-raw-token", "--quiet")
	if !jwtLine.MatchString(vout) {
		t.Fatalf("validation issue --print-raw-token --quiet printed %q", vout)
	}
	vt := strings.TrimSpace(vout)
	vid := strings.TrimSpace(a.mustRun("validation", "add", vt))
	if vid == "" || strings.Contains(vid, "\n") {
		t.Fatalf("validation add printed %q, want one id", vid)
	}
	var vs []map[string]any
	a.decodeJSON(a.mustRun("validation", "list", "--json"), &vs)
	if len(vs) != 1 || vs[0]["id"] != vid || vs[0]["peer_id"] != bID || vs[0]["added_at"] == nil {
		t.Errorf("validation list --json = %v, want id %s for peer %s", vs, vid, bID)
	}
	var v map[string]any
	a.decodeJSON(a.mustRun("validation", "show", vid, "--json"), &v)
	if v["id"] != vid || v["peer_id"] != bID {
		t.Errorf("validation show --json = %v", v)
	}
	bound := a.decodeClaims(a.issue("--bearers", "vt://"+vid))
	if !slices.Equal(bound.Bearers, []string{"vt://" + bID}) {
		t.Errorf("--bearers vt://<validation id> gave bearers %v, want vt://%s", bound.Bearers, bID)
	}
	// A validation token is self-signed: tampering is detected.
	a.mustFail([]string{"validation", "add", vt[:len(vt)-6] + "AAAAAA"})
	a.mustFail([]string{"validation", "add", "garbage"})
	a.mustRun("validation", "remove", vid)
	a.mustFail([]string{"validation", "show", vid})
	a.decodeJSON(a.mustRun("validation", "list", "--json"), &vs)
	if len(vs) != 0 {
		t.Errorf("validation list after remove = %v", vs)
	}
	a.mustFail([]string{"token", "issue", "--bearers", "vt://" + vid}, vid)
}

// peerJSON is `peer list/show --json`.
type peerJSON struct {
	ID         string   `json:"id"`
	TokenID    string   `json:"token_id"`
	Perform    []string `json:"perform"`
	Publish    []string `json:"publish"`
	Connected  bool     `json:"connected"`
	Connection string   `json:"connection"`
}

type remoteAction struct {
	Name         string `json:"name"`
	Performable  *bool  `json:"performable"`
	Publishable  *bool  `json:"publishable"`
	Subscribable *bool  `json:"subscribable"`
}

func TestPeeringAndRemoteExecution(t *testing.T) {
	t.Parallel()
	a, b, c := newInstance(t, "a"), newInstance(t, "b"), newInstance(t, "c")
	a.writeScript("actions", "echo", "echo 'hello from echo' >&2\nexec cat\n")
	a.writeScript("actions", "secret", "echo '\"secret\"'\n")
	// slow outlives the wait for its log line and the revocation below
	// however busy the machine: only the revocation can end it early.
	a.writeScript("actions", "slow", "echo started >&2\nsleep 600\n")
	a.setConfig("action_timeout", "15m")
	a.start()
	b.start()
	c.start()
	aID, cID := a.peerID(), c.peerID()

	tok := a.issue("--performable", "echo,slow", "--publishable", "echo")
	if out := b.mustRun("peer", "add", "--token", tok); strings.TrimSpace(out) != aID {
		t.Fatalf("peer add printed %q, want the issuer's peer id %s", out, aID)
	}
	// A short-lived token for c, added at once so that it expires later.
	// On a busy machine the add can come after it expired (2s, plus the
	// verifier's leeway); then a new one is tried. A refusal while the
	// token was surely still valid (its exp, whole seconds, is at least
	// 1s after issue) fails the test.
	checkFor(t, 2*time.Minute, func() error {
		issued := time.Now()
		short := a.issue("--performable", "echo", "--expires-in", "2s")
		_, stderr, code := c.run("peer", "add", "--token", short)
		switch {
		case code == 0:
			return nil
		case strings.Contains(stderr, "expired") && time.Since(issued) >= time.Second+auth.Leeway:
			return fmt.Errorf("the short-lived token expired before c added it: %s", stderr)
		}
		t.Fatalf("c: peer add of a fresh short-lived token: exit %d: %s", code, stderr)
		return nil
	})

	// Remote list shows what the token allows.
	var acts []remoteAction
	b.decodeJSON(b.mustRun("action", "list", "--peer", aID, "--json"), &acts)
	perms := map[string][3]bool{}
	for _, x := range acts {
		if x.Performable == nil || x.Publishable == nil || x.Subscribable == nil {
			t.Fatalf("remote list entry without permissions: %+v", x)
		}
		perms[x.Name] = [3]bool{*x.Performable, *x.Publishable, *x.Subscribable}
	}
	want := map[string][3]bool{"echo": {true, true, true}, "slow": {true, false, true}, "secret": {false, false, true}}
	if fmt.Sprint(perms) != fmt.Sprint(want) {
		t.Errorf("remote action list permissions = %v, want %v", perms, want)
	}
	if text := b.mustRun("action", "list", "--peer", aID); !strings.Contains(text, "PERFORM") || !strings.Contains(text, "secret") {
		t.Errorf("remote action list:\n%s", text)
	}

	// Remote perform: output on stdout, the action's stderr streamed back.
	stdout, stderr, code := b.run("action", "perform", "--peer", aID, "--action", "echo", "--data", `{"x":1}`)
	if code != 0 || strings.TrimSpace(stdout) != `{"x":1}` || !strings.Contains(stderr, "[echo] hello from echo") {
		t.Fatalf("remote perform: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	b.mustFail([]string{"action", "perform", "--peer", aID, "--action", "secret"}, "forbidden", `"secret"`)
	b.mustFail([]string{"action", "perform", "--peer", aID, "--action", "slow", "--notify"}, "forbidden", "publishing")
	if out := b.mustRun("action", "publish", "--peer", aID, "--action", "echo", "--data", `{"y":2}`); !strings.Contains(out, "published to 0 subscription(s)") {
		t.Errorf("remote publish printed %q", out)
	}
	b.mustFail([]string{"action", "publish", "--peer", aID, "--action", "secret", "--data", "1"}, "forbidden", `"secret"`)
	b.mustFail([]string{"action", "perform", "--peer", aID, "--action", "nope.nothing"}, "nope.nothing")

	// Peer listings.
	var peers []peerJSON
	b.decodeJSON(b.mustRun("peer", "list", "--json"), &peers)
	if len(peers) != 1 || peers[0].ID != aID || !peers[0].Connected || peers[0].Connection != "direct" ||
		!slices.Equal(peers[0].Perform, []string{"echo", "slow"}) {
		t.Errorf("peer list --json = %+v", peers)
	}
	var shown peerJSON
	b.decodeJSON(b.mustRun("peer", "show", "--id", aID, "--json"), &shown)
	if shown.ID != aID || !shown.Connected || shown.Connection != "direct" || shown.TokenID != a.tokenID(tok) {
		t.Errorf("peer show --json = %+v", shown)
	}
	if text := b.mustRun("peer", "show", "--id", aID); !strings.Contains(text, "direct") {
		t.Errorf("peer show:\n%s", text)
	}

	// The token was claimed by b: c cannot use it with its own key.
	c.mustFail([]string{"peer", "add", "--token", tok}, "claimed")
	var claimed map[string]any
	a.decodeJSON(a.mustRun("token", "show", a.tokenID(tok), "--json"), &claimed)
	if claimed["claimed_by"] != b.peerID() {
		t.Errorf("token show claimed_by = %v, want b", claimed["claimed_by"])
	}

	// Unknown peer.
	b.mustFail([]string{"action", "perform", "--peer", cID, "--action", "echo"}, "unknown peer", cID)
	b.mustFail([]string{"action", "list", "--peer", "not-a-peer-id"}, "unknown peer")

	// Revoked mid-session: the open stream of a running action is closed,
	// and the next request is refused.
	slow := b.spawn("action", "perform", "--peer", aID, "--action", "slow")
	checkFor(t, 30*time.Second, func() error {
		if slow.exited() {
			return fmt.Errorf("slow perform exited early: %s", slow.stderr())
		}
		if !strings.Contains(slow.stderr(), "[slow] started") {
			return fmt.Errorf("the action's log line has not streamed back yet (stderr %q)", slow.stderr())
		}
		return nil
	})
	a.mustRun("token", "revoke", "--force", a.tokenID(tok))
	if code := slow.wait(t); code == 0 || !strings.Contains(slow.stderr(), "revoked") {
		t.Errorf("a perform whose token was revoked mid-run: exit %d, stdout %q, stderr %q; want a failure saying it was revoked", code, slow.stdout(), slow.stderr())
	}
	if slow.stdout() != "" {
		t.Errorf("revoked perform printed output %q", slow.stdout())
	}
	b.mustFail([]string{"action", "perform", "--peer", aID, "--action", "echo", "--data", "1"}, "revoked")
	b.mustFail([]string{"action", "list", "--peer", aID}, "revoked")

	// Expired: c's token lives 2s (plus the verifier's leeway).
	checkFor(t, 30*time.Second, func() error {
		_, stderr, code := c.run("action", "perform", "--peer", aID, "--action", "echo", "--data", "1")
		if code == 0 {
			return fmt.Errorf("the short-lived token still works")
		}
		if !strings.Contains(stderr, "expired") {
			return fmt.Errorf("perform with an expired token: %s", stderr)
		}
		return nil
	})

	// Peer remove.
	b.mustRun("peer", "remove", "--id", aID)
	if out := b.mustRun("peer", "list"); !strings.Contains(out, "No peers") {
		t.Errorf("peer list after remove:\n%s", out)
	}
	b.mustFail([]string{"action", "perform", "--peer", aID, "--action", "echo"}, "unknown peer")
	b.mustFail([]string{"peer", "remove", "--id", aID}, "unknown peer")

	// Unreachable: c still has a as a peer (with a fresh token); stop a.
	fresh := a.issue("--performable", "echo")
	c.mustRun("peer", "remove", "--id", aID)
	c.mustRun("peer", "add", "--token", fresh)
	if out := c.mustRun("action", "perform", "--peer", aID, "--action", "echo", "--data", `"ok"`); strings.TrimSpace(out) != `"ok"` {
		t.Fatalf("perform with a fresh token printed %q", out)
	}
	a.mustRun("service", "stop")
	c.mustFail([]string{"action", "perform", "--peer", aID, "--action", "echo", "--data", "1"}, "unreachable", aID)
}

// TestOfflineNetworkCommands checks that commands needing the network say
// so clearly when the service is stopped.
func TestOfflineNetworkCommands(t *testing.T) {
	t.Parallel()
	a, b := newInstance(t, "a"), newInstance(t, "b")
	a.start()
	tok := a.issue("--performable", "echo")
	b.mustFail([]string{"peer", "add", "--token", tok}, "service is not running")
	if out := b.mustRun("peer", "list"); !strings.Contains(out, "No peers") {
		t.Errorf("offline peer list: %q", out)
	}
	// A token a issues to itself is refused by its own peer add.
	a.mustFail([]string{"peer", "add", "--token", tok}, "issued by this instance")
	// Garbage is refused before any dial.
	b.mustFail([]string{"peer", "add", "--token", "garbage"})
}

// TestInstanceDiscovery checks --instance, COATTAIL_INSTANCE and the
// parent-directory search.
func TestInstanceDiscovery(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	id := a.peerID()
	nested := a.path("actions", "deeper")
	if err := os.MkdirAll(nested, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, _, code := a.runIn(nested, "token", "issuer"); code != 0 || strings.TrimSpace(out) != id {
		t.Errorf("from a subdirectory: exit %d, %q", code, out)
	}
	elsewhere := t.TempDir()
	if out, _, code := a.runIn(elsewhere, "--instance", a.dir, "token", "issuer"); code != 0 || strings.TrimSpace(out) != id {
		t.Errorf("--instance: exit %d, %q", code, out)
	}
	a.env = []string{"COATTAIL_INSTANCE=" + a.dir}
	if out, _, code := a.runIn(elsewhere, "token", "issuer"); code != 0 || strings.TrimSpace(out) != id {
		t.Errorf("COATTAIL_INSTANCE: exit %d, %q", code, out)
	}
	a.env = nil
	_, stderr, code := a.runIn(elsewhere, "token", "issuer")
	if code == 0 || !strings.Contains(stderr, "no coattail instance") {
		t.Errorf("outside any instance: exit %d, stderr %q", code, stderr)
	}
}

// Stopping the service while a local perform runs stops the action too
// (its process group is killed) instead of leaving it running, orphaned
// and without its timeout, after the service is gone; the CLI fails.
func TestServiceStopEndsRunningPerform(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	pidFile := a.path("action.pid")
	a.writeScript("actions", "slow", "echo $$ > "+pidFile+"\nsleep 30\necho '{}'\n")
	a.start()
	done := make(chan int, 1)
	go func() {
		_, _, code := a.run("action", "perform", "--action", "slow")
		done <- code
	}()
	var pid int
	checkFor(t, 20*time.Second, func() error {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return err
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err
	})
	a.stopUnderPerform(done, pid, "action")
}

// A service that is stopped (SIGSTOP) or stuck still holds its instance:
// `service stop` says so within a few seconds, exits non-zero and names
// the pid, instead of waiting half a minute and calling it "not running".
func TestServiceStopOfStoppedService(t *testing.T) {
	t.Parallel()
	a := newInstance(t, "a")
	pid := a.start()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	// A stop signal takes effect when the process next enters the
	// kernel: wait until it has.
	checkFor(t, 10*time.Second, func() error {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return err
		}
		s := string(b)
		if k := strings.LastIndexByte(s, ')'); k < 0 || k+2 >= len(s) || s[k+2] != 'T' {
			return fmt.Errorf("pid %d is not stopped yet: %s", pid, s)
		}
		return nil
	})
	began := time.Now()
	out := a.mustFail([]string{"service", "stop"}, "does not answer", strconv.Itoa(pid), "still running")
	if strings.Contains(out, "not running") {
		t.Errorf("service stop of a stopped service said %q", out)
	}
	if took := time.Since(began); took > 25*time.Second {
		t.Errorf("service stop took %v to give up on a stopped service", took)
	}
	if !processAlive(pid) {
		t.Fatal("the stopped service is gone")
	}
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	a.mustRun("service", "stop")
	if processAlive(pid) {
		t.Fatalf("pid %d still runs after service stop", pid)
	}
}
