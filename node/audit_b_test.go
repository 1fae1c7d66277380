package node_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/runner"
)

// Every mistake in config.yml is named with its key and its line (CLI.md,
// config check): a value out of range or not allowed named its key
// only, and a size that does not parse its line only.
func TestConfigErrorsNameKeyAndLine(t *testing.T) {
	t.Parallel()
	cases := map[string]struct{ in, want string }{
		"range":           {"limits:\n  max_hops: 0\n", "limits.max_hops (line 2): 0 is out of range"},
		"duration range":  {"# comment\nlimits:\n  action_timeout: 1ms\n", "limits.action_timeout (line 3): 1ms is out of range"},
		"size range":      {"limits:\n  queue_bound: 5\n  max_payload: 10\n", "limits.max_payload (line 3): 10 is out of range"},
		"size word":       {"log:\n  rotate_size: lots\n", `log.rotate_size (line 2): invalid size "lots"`},
		"size huge":       {"limits:\n  max_output: 2TiB\n", `limits.max_output (line 2): size "2TiB" is larger`},
		"choice":          {"log:\n  level: chatty\n", `log.level (line 2): "chatty" is not one of`},
		"empty text":      {"log:\n  file: \"\"\n", "log.file (line 2): must not be empty"},
		"pair":            {"network:\n  conn_low: 10\n  conn_high: 5\n", "network.conn_low/conn_high (lines 2, 3): need"},
		"pair, one set":   {"limits:\n  rate_burst: 0\n", "limits.rate_limit/rate_burst (line 2): must be positive"},
		"list item":       {"network:\n  listen:\n    - /ip4/127.0.0.1/tcp/1\n    - /ip4/127.0.0.1/tcp/1/ws\n", `network.listen (line 4): "/ip4/127.0.0.1/tcp/1/ws" is not an address`},
		"flow list item":  {"network:\n  relays: [/ip4/1.2.3.4/tcp/1]\n", "network.relays (line 2): \"/ip4/1.2.3.4/tcp/1\" must end in /p2p/<peer-id>"},
		"empty list":      {"network:\n  listen: []\n", "network.listen (line 2): at least one address is required"},
		"metrics address": {"metrics:\n  listen: 127.0.0.1:70000\n", "metrics.listen (line 2): "},
	}
	for name, c := range cases {
		_, err := node.ParseConfig("config.yml", []byte(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v; want it to say %q", name, err, c.want)
		}
	}
	// A config built in code has no lines: its errors name the key alone.
	c := node.DefaultConfig(node.DefaultPort)
	c.Limits.MaxHops = 0
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "limits.max_hops: 0 is out of range") {
		t.Errorf("Validate of max_hops 0: %v", err)
	}
}

// config.yml as `coattail new --loopback --port N` writes it names the
// default of every setting in the comment above it, as its header says
// ("deleting a line gives that default"): the listen comment called the
// chosen port the default, where deleting the list listens on every
// interface at 5210, and announce named none.
func TestNewConfigCommentsNameDefaults(t *testing.T) {
	t.Parallel()
	b, err := node.RenderConfig(node.LoopbackConfig(25299), 25299)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	if strings.Contains(text, "default 25299") {
		t.Errorf("config.yml calls the port chosen with --port the default:\n%s", text)
	}
	// What deleting network.listen gives, as the comment must say it.
	def := node.DefaultConfig(node.DefaultPort).Network.Listen
	if !strings.Contains(def[0], "/ip4/0.0.0.0/") || !strings.Contains(text, "(/ip4/0.0.0.0 and /ip6/::), TCP and QUIC, port 5210") {
		t.Errorf("the listen comment does not name the default %v:\n%s", def, text)
	}
	// Every key has a "Default" in the comment block above it (a block
	// may name the defaults of the keys right after it).
	var comment []string
	afterKey := false
	for n, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trimmed, "#"):
			if afterKey {
				comment, afterKey = nil, false
			}
			comment = append(comment, trimmed)
		case strings.HasPrefix(line, "  ") && strings.Contains(trimmed, ":") && !strings.HasPrefix(trimmed, "- "):
			if !strings.Contains(strings.Join(comment, " "), "Default") {
				t.Errorf("line %d, %q: its comment names no default: %q", n+1, trimmed, comment)
			}
			afterKey = true
		case trimmed == "":
			comment, afterKey = nil, false
		}
	}
}

// The contract in the receiver `action create --receiver` writes says what
// the service does: a receiver's stdout is not used whatever it prints
// (it said "ignored unless you print JSON"), and a message it was
// handling when the service stopped is handed to it again (it said once).
func TestReceiverTemplateContract(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "receivers"), 0o755); err != nil {
		t.Fatal(err)
	}
	path, err := runner.Create(dir, runner.KindReceiver, "orders.log")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	if strings.Contains(text, "unless you print JSON") || !strings.Contains(text, "stdout  not used, whatever it prints") {
		t.Errorf("the template does not say a receiver's stdout is not used:\n%s", text)
	}
	if !strings.Contains(text, "handed to\n# it again after the restart") || !strings.Contains(text, "last COATTAIL_SEQUENCE") {
		t.Errorf("the template does not say a message can be handed to the receiver again:\n%s", text)
	}
}
