package node_test

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
)

func TestDefaultConfigsValidate(t *testing.T) {
	for name, c := range map[string]node.Config{
		"default":       node.DefaultConfig(node.DefaultPort),
		"default-port0": node.DefaultConfig(0),
		"loopback":      node.LoopbackConfig(0),
	} {
		if err := c.Validate(); err != nil {
			t.Errorf("%s: Validate: %v", name, err)
		}
	}
}

func TestLoopbackConfigListensOnLoopbackOnly(t *testing.T) {
	c := node.LoopbackConfig(4242)
	if len(c.Network.Listen) == 0 {
		t.Fatal("no listen addresses")
	}
	for _, a := range c.Network.Listen {
		if !strings.HasPrefix(a, "/ip4/127.0.0.1/") || !strings.Contains(a, "/4242") {
			t.Errorf("listen address %q is not on 127.0.0.1 port 4242", a)
		}
	}
	if c.Network.PortMapping || c.Network.AutoNAT || c.Network.HolePunch {
		t.Errorf("loopback config asks the router for help: %+v", c.Network)
	}
}

func TestParseConfigEmptyIsDefaults(t *testing.T) {
	want := node.DefaultConfig(node.DefaultPort)
	for name, in := range map[string]string{
		"empty":         "",
		"comments only": "# nothing here\n\n# at all\n",
	} {
		got, err := node.ParseConfig("config.yml", []byte(in))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: got %+v, want defaults %+v", name, got, want)
		}
	}
}

func TestParseConfigPartialKeepsDefaults(t *testing.T) {
	got, err := node.ParseConfig("config.yml", []byte("limits:\n  rate_burst: 7\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := node.DefaultConfig(node.DefaultPort)
	want.Limits.RateBurst = 7
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestParseConfigUnknownKeyNamesKeyAndLine(t *testing.T) {
	in := "network:\n  conn_low: 8\nlimits:\n  rate_limt: 5\n"
	_, err := node.ParseConfig("my.yml", []byte(in))
	if !errors.Is(err, node.ErrConfig) {
		t.Fatalf("got %v, want ErrConfig", err)
	}
	errorsContain(t, err, "rate_limt", "line 4", "my.yml")

	_, err = node.ParseConfig("my.yml", []byte("netwrok:\n  listen: []\n"))
	errorsContain(t, err, "netwrok", "line 1")
}

func TestParseConfigSizesAndDurations(t *testing.T) {
	cases := []struct {
		in      string
		payload node.ByteSize
	}{
		{"64KiB", 64 << 10},
		{"\"64KiB\"", 64 << 10},
		{"1048576", 1 << 20},
		{"1MiB", 1 << 20},
		{"2MB", 2_000_000},
	}
	for _, c := range cases {
		in := "limits:\n  max_payload: " + c.in + "\n  action_timeout: 1s\n  stream_timeout: 2m\n"
		got, err := node.ParseConfig("config.yml", []byte(in))
		if err != nil {
			t.Errorf("max_payload %s: %v", c.in, err)
			continue
		}
		if got.Limits.MaxPayload != c.payload {
			t.Errorf("max_payload %s = %d, want %d", c.in, got.Limits.MaxPayload, c.payload)
		}
		if got.Limits.ActionTimeout != time.Second || got.Limits.StreamTimeout != 2*time.Minute {
			t.Errorf("durations = %v, %v; want 1s, 2m", got.Limits.ActionTimeout, got.Limits.StreamTimeout)
		}
	}
}

// A size over the largest allowed (1TiB) says so: it was called an
// "invalid size" with a hint to use a unit, which it had.
func TestParseConfigSizeOverMax(t *testing.T) {
	got, err := node.ParseConfig("config.yml", []byte("limits:\n  min_free_disk: 1TiB\n"))
	if err != nil || got.Limits.MinFreeDisk != 1<<40 {
		t.Fatalf("min_free_disk 1TiB: %v, %v", got.Limits.MinFreeDisk, err)
	}
	_, err = node.ParseConfig("config.yml", []byte("limits:\n  min_free_disk: 2000GiB\n"))
	errorsContain(t, err, "line 2", `"2000GiB"`, "larger than the largest size allowed, 1TiB")
	if err != nil && strings.Contains(err.Error(), "use bytes or a unit") {
		t.Errorf("min_free_disk 2000GiB: %v, which is not about its unit", err)
	}
}

// Durations take days and weeks as the CLI's do (--expires-in 7d): they
// were refused in the config ("not a duration") while the CLI took them.
// Every other key keeps its value and its error line.
func TestParseConfigDurationsInDaysAndWeeks(t *testing.T) {
	in := "# a comment\nnetwork:\n  relay_limit_duration: 1w1d\nlimits:\n  stream_timeout: \"1d\"\n  receiver_backoff: 1h\n  max_payload: 64KiB\n"
	got, err := node.ParseConfig("config.yml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if got.Network.RelayLimitDuration != 8*24*time.Hour || got.Limits.StreamTimeout != 24*time.Hour ||
		got.Limits.ReceiverBackoff != time.Hour || got.Limits.MaxPayload != 64<<10 {
		t.Errorf("parsed %v, %v, %v, %v", got.Network.RelayLimitDuration, got.Limits.StreamTimeout, got.Limits.ReceiverBackoff, got.Limits.MaxPayload)
	}
	// Out of range in days is said in hours, as the limit is.
	if _, err := node.ParseConfig("config.yml", []byte("limits:\n  stream_timeout: 2d\n")); err == nil || !strings.Contains(err.Error(), "48h0m0s is out of range") {
		t.Errorf("stream_timeout 2d: %v", err)
	}
	_, err = node.ParseConfig("config.yml", []byte("limits:\n  stream_timeout: 1d\n  action_timeout: soon\n"))
	if err == nil || !strings.Contains(err.Error(), "action_timeout (line 3)") || !strings.Contains(err.Error(), "7d") {
		t.Errorf("a bad duration beside a day one: %v", err)
	}
}

func TestParseConfigRefusesBadValues(t *testing.T) {
	cases := map[string]struct{ in, mention string }{
		"size word":         {"limits:\n  max_payload: lots\n", "lots"},
		"size list":         {"limits:\n  max_payload: [1, 2]\n", "line 2"},
		"size too small":    {"limits:\n  max_payload: 10\n", "limits.max_payload"},
		"size huge":         {"limits:\n  max_output: 2TiB\n", "2TiB"},
		"duration word":     {"limits:\n  action_timeout: soon\n", "soon"},
		"duration short":    {"limits:\n  stream_timeout: 10ms\n", "limits.stream_timeout"},
		"queue policy":      {"limits:\n  queue_full: maybe\n", "limits.queue_full"},
		"negative rate":     {"limits:\n  rate_limit: -1\n", "limits.rate_limit"},
		"zero streams":      {"limits:\n  max_streams_per_peer: 0\n", "limits.max_streams_per_peer"},
		"zero conns per ip": {"network:\n  max_conns_per_ip: 0\n", "network.max_conns_per_ip"},
		"zero running":      {"limits:\n  max_running: 0\n", "limits.max_running"},
		"huge running":      {"limits:\n  max_running: 100000\n", "limits.max_running"},
		"negative rotate":   {"log:\n  rotate_keep: -1\n", "log.rotate_keep"},
		"tiny total":        {"limits:\n  queue_memory_total: 64KiB\n", "limits.queue_memory_total"},
		"transport":         {"network:\n  prefer_transport: udp\n", "network.prefer_transport"},
		"listen garbage":    {"network:\n  listen: [not-an-addr]\n", "not-an-addr"},
		"listen empty":      {"network:\n  listen: []\n", "network.listen"},
		"relay without id":  {"network:\n  relays: [/ip4/1.2.3.4/tcp/1]\n", "/p2p/<peer-id>"},
		"announce any":      {"network:\n  announce: [/ip4/0.0.0.0/tcp/5210]\n", "unspecified address"},
		"announce port 0":   {"network:\n  announce: [/ip4/203.0.113.7/tcp/0]\n", "port 0"},
		"announce peer id":  {"network:\n  announce: [/ip4/203.0.113.7/tcp/5210/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA]\n", "leave /p2p/... out"},
		"water marks":       {"network:\n  conn_low: 10\n  conn_high: 5\n", "conn_high"},
		"log level":         {"log:\n  level: chatty\n", "log.level"},
		"metrics no port":   {"metrics:\n  listen: 127.0.0.1\n", "metrics.listen (line 2): \"127.0.0.1\" is not host:port"},
		"metrics big port":  {"metrics:\n  listen: 127.0.0.1:70000\n", "metrics.listen"},
		"metrics name":      {"metrics:\n  listen: metrics.example.org:9464\n", "not an IP address or localhost"},
		"not a mapping":     {"- just\n- a list\n", "line 1"},
		"wrong type":        {"network:\n  port_mapping: sometimes\n", "network.port_mapping (line 2): \"sometimes\" is not a boolean"},
		// yaml.v3 takes these silently: an empty value keeps the
		// default, a fraction is truncated into an int.
		"empty size":       {"limits:\n  max_payload:\n", "limits.max_payload (line 2): no value"},
		"empty duration":   {"limits:\n  action_timeout: ~\n", "limits.action_timeout (line 2): no value"},
		"empty bool":       {"network:\n  port_mapping: null\n", "network.port_mapping"},
		"empty string":     {"log:\n  level:\n", "log.level"},
		"fraction int":     {"limits:\n  max_hops: 1.9\n", "limits.max_hops (line 2): 1.9 is not a whole number"},
		"fraction retries": {"limits:\n  receiver_retries: 2.0\n", "limits.receiver_retries"},
		"relay fraction s": {"network:\n  relay_limit_duration: 1500ms\n", "not a whole number of seconds"},
		// Taken silently before: a fraction of a byte was truncated
		// (0.5 is 0: no relay data limit at all), ...
		"fraction byte":       {"network:\n  relay_limit_data: 0.5\n", "network.relay_limit_data (line 2): size \"0.5\" is not a whole number of bytes"},
		"fraction bytes":      {"limits:\n  max_payload: 1048576.7\n", "not a whole number of bytes"},
		"fraction bytes text": {"limits:\n  max_payload: \"1048576.7\"\n", "not a whole number of bytes"},
		// ... a timeout so long that action_timeout + stream_timeout
		// overflowed into the past, ...
		"action timeout huge": {"limits:\n  action_timeout: 9223372036854775807ns\n", "limits.action_timeout"},
		"stream timeout huge": {"limits:\n  stream_timeout: 1000000h\n", "limits.stream_timeout"},
		// ... "yes" in quotes as true (while "true" in quotes was refused), ...
		"quoted yes":  {"network:\n  port_mapping: \"yes\"\n", "network.port_mapping (line 2): \"yes\" is in quotes"},
		"quoted off":  {"network:\n  autonat: 'off'\n", "network.autonat (line 2)"},
		"quoted true": {"network:\n  hole_punching: \"true\"\n", "line 2"},
		// ... listen addresses libp2p skips with a line in its own log, ...
		"listen no transport": {"network:\n  listen: [/ip4/127.0.0.1/tcp/5210, /ip4/127.0.0.1]\n", "\"/ip4/127.0.0.1\" is not an address this instance can listen on"},
		"listen old quic":     {"network:\n  listen: [/ip4/127.0.0.1/udp/5210/quic]\n", "can listen on"},
		"listen dns":          {"network:\n  listen: [/dns4/localhost/tcp/5210]\n", "can listen on"},
		"listen websocket":    {"network:\n  listen: [/ip4/127.0.0.1/tcp/5210/ws]\n", "can listen on"},
		// ... announced addresses no peer could dial, ...
		"announce no port": {"network:\n  announce: [/ip4/203.0.113.7]\n", "can be dialled at"},
		"announce udp":     {"network:\n  announce: [/ip4/203.0.113.7/udp/5210]\n", "can be dialled at"},
		// ... and relays AutoRelay could not use, or that failed only
		// when the service started.
		"relay no address": {"network:\n  relays: [/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN]\n", "has no address before /p2p/<peer-id>"},
		"relay circuit":    {"network:\n  relays: [/ip4/192.0.2.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA]\n", "goes through another relay"},
		"relay id inside":  {"network:\n  relays: [/ip4/192.0.2.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit]\n", "must end in /p2p/<peer-id>"},
		"relay udp only":   {"network:\n  relays: [/ip4/192.0.2.1/udp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN]\n", "can dial"},
		// yaml.v3 refuses these itself, in its own terms ("field levle
		// not found in type node.LogConfig", "cannot unmarshal !!str `5x`
		// into time.Duration"): named in the config's terms instead.
		"duplicate key":      {"limits:\n  max_hops: 3\n  max_hops: 4\n", "limits.max_hops (line 3): set twice (also line 2); delete one"},
		"duplicate section":  {"log:\n  level: info\nlog:\n  file: x.log\n", "log (line 3): set twice (also line 1)"},
		"unknown nested key": {"log:\n  levle: debug\n", "log.levle (line 2): unknown key in log; the keys there are file, level, "},
		"unknown top key":    {"bogus_key: 1\n", "bogus_key (line 1): unknown key at the top level; the keys there are network, limits, log"},
		// The original Coattail's sections say what replaces them.
		"original service":        {"service:\n  tls:\n    use_tls: false\n  network:\n    port: 49365\n", "service (line 1): unknown key at the top level; the keys there are network, limits, log, metrics (a section of the original Coattail: its network.address.bind and port are network.listen here"},
		"original authentication": {"authentication:\n  private_key:\n    type: file\n", "authentication (line 1): unknown key at the top level; the keys there are network, limits, log, metrics (a section of the original Coattail: here keys/identity.key signs the tokens"},
		"original validation":     {"validation:\n  public_key:\n    type: file\n", "here keys/identity.key proves this instance"},
		"original paths":          {"paths:\n  root: /x\n", "here actions/ and receivers/ are always in the instance directory"},
		"original data":           {"data:\n  client: sqlite3\n", "here the datastore is always data/"},
		"quoted int":              {"limits:\n  max_hops: \"16\"\n", "limits.max_hops (line 2): \"16\" is in quotes"},
		"text int":                {"limits:\n  max_hops: many\n", "limits.max_hops (line 2): \"many\" is not a whole number"},
		"bare int duration":       {"limits:\n  action_timeout: 30\n", "limits.action_timeout (line 2): \"30\" is not a duration; write one such as 30s"},
		"bad duration":            {"limits:\n  action_timeout: 5x\n", "limits.action_timeout (line 2): \"5x\" is not a duration"},
		"section as value":        {"limits: 5\n", "limits (line 1): is a section"},
		"value as list":           {"limits:\n  max_hops: [1]\n", "limits.max_hops (line 2): is one value"},
		"list as value":           {"network:\n  listen: /ip4/127.0.0.1/tcp/1\n", "network.listen (line 2): is a list"},
		"unknown key in merge":    {"limits: &x\n  max_hops: 3\nnetwork:\n  <<: *x\n", "max_hops"},
	}
	for name, c := range cases {
		_, err := node.ParseConfig("config.yml", []byte(c.in))
		if !errors.Is(err, node.ErrConfig) {
			t.Errorf("%s: got %v, want ErrConfig", name, err)
			continue
		}
		if !strings.Contains(err.Error(), c.mention) {
			t.Errorf("%s: error %q does not mention %q", name, err, c.mention)
		}
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	c := node.DefaultConfig(node.DefaultPort)
	c.Network.Listen = []string{"garbage"}
	c.Limits.ActionTimeout = time.Millisecond
	c.Limits.QueueFull = "sometimes"
	c.Limits.MaxStreamsPerPeer = 0
	c.Log.File = ""
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate accepted a broken config")
	}
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("Validate returned %T, want errors joined with errors.Join", err)
	}
	if got := len(joined.Unwrap()); got != 5 {
		t.Errorf("Validate reported %d problems, want 5: %v", got, err)
	}
	errorsContain(t, err, "network.listen", "limits.action_timeout", "limits.queue_full", "limits.max_streams_per_peer", "log.file")
}

func TestRenderConfigRoundTrips(t *testing.T) {
	odd := node.LoopbackConfig(7000)
	odd.Network.Announce = []string{"/dns4/example.org/tcp/7000"}
	odd.Network.Relays = []string{"/ip4/192.0.2.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"}
	odd.Network.RelayServer = true
	odd.Limits.MaxPayload = 1_000_000 // not a whole number of KiB or MiB
	odd.Limits.MaxOutput = 3 << 20
	odd.Limits.ActionTimeout = 1500 * time.Millisecond
	odd.Limits.RateLimit = 12.5
	odd.Limits.QueueFull = node.QueueFullDropOldest
	odd.Log.Level = "debug"
	odd.Metrics.Listen = "[::1]:9464"
	for name, c := range map[string]node.Config{
		"default":  node.DefaultConfig(node.DefaultPort),
		"loopback": node.LoopbackConfig(0),
		"edited":   odd,
	} {
		b, err := node.RenderConfig(c, 7000)
		if err != nil {
			t.Fatalf("%s: RenderConfig: %v", name, err)
		}
		got, err := node.ParseConfig("rendered.yml", b)
		if err != nil {
			t.Fatalf("%s: rendered config does not parse: %v\n%s", name, err, b)
		}
		if !reflect.DeepEqual(got, c) {
			t.Errorf("%s: round trip changed the config\n got %+v\nwant %+v\n%s", name, got, c, b)
		}
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yml")
	if _, err := node.LoadConfig(path); !errors.Is(err, node.ErrConfig) {
		t.Errorf("missing file: got %v, want ErrConfig", err)
	}
	if err := os.WriteFile(path, []byte("log:\n  level: warn\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := node.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Log.Level != "warn" {
		t.Errorf("log.level = %q, want warn", c.Log.Level)
	}
}

// A rate that is not a finite positive number is refused: NaN passed a
// "<= 0" check and turned rate limiting off; +Inf rendered as a value the
// parser refuses.
func TestParseConfigRateMustBeFinite(t *testing.T) {
	for _, v := range []string{".nan", ".inf", "-.inf", "0"} {
		if _, err := node.ParseConfig("c.yml", []byte("limits:\n  rate_limit: "+v+"\n")); err == nil {
			t.Errorf("rate_limit: %s accepted", v)
		}
	}
}

// A second YAML document is refused, not ignored unchecked; an empty one
// (a trailing ---) is fine.
func TestParseConfigOneDocument(t *testing.T) {
	_, err := node.ParseConfig("c.yml", []byte("log:\n  level: info\n---\nbogus: 1\n"))
	if err == nil || !strings.Contains(err.Error(), "more than one YAML document") {
		t.Fatalf("a second document: %v", err)
	}
	if _, err := node.ParseConfig("c.yml", []byte("log:\n  level: debug\n---\n---\nlog:\n  level: nonsense\n")); err == nil {
		t.Error("a third document behind an empty second one was ignored")
	}
	for _, tail := range []string{"---\n", "---\n# end\n", "...\n"} {
		if _, err := node.ParseConfig("c.yml", []byte("limits:\n  rate_limit: 10\n"+tail)); err != nil {
			t.Errorf("a config ending in %q: %v", tail, err)
		}
	}
}

// What the stricter checks must keep accepting: sizes with a fraction of
// a unit that make whole bytes, YAML 1.1 booleans without quotes (yaml.v3
// reads them as written), DNS relays and announce addresses, QUIC
// relays, IPv6 listen addresses, and the longest timeouts.
func TestParseConfigAcceptsReasonableValues(t *testing.T) {
	const id = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
	in := "network:\n" +
		"  listen: [/ip6/::1/tcp/5210, /ip6/::1/udp/5210/quic-v1]\n" +
		"  announce: [/dns/example.org/tcp/5210, /dns6/example.org/udp/5210/quic-v1]\n" +
		"  relays: [/dns4/relay.example.org/tcp/4001/p2p/" + id + ", /ip4/192.0.2.1/udp/4001/quic-v1/p2p/" + id + "]\n" +
		"  port_mapping: no\n  hole_punching: on\n  autonat: off\n" +
		"  relay_limit_data: 1.5MiB\n" +
		"limits:\n  max_payload: 0.5MiB\n  action_timeout: 168h\n  stream_timeout: 24h\n"
	got, err := node.ParseConfig("config.yml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	nc, l := got.Network, got.Limits
	if nc.PortMapping || !nc.HolePunch || nc.AutoNAT || nc.RelayLimitData != 3<<19 || l.MaxPayload != 1<<19 ||
		l.ActionTimeout != 168*time.Hour || l.StreamTimeout != 24*time.Hour || len(nc.Relays) != 2 {
		t.Errorf("parsed %+v", got)
	}
}

// An empty section keeps its defaults, an empty list is empty, a float is
// fine where a float is expected, and whole seconds are fine (the values
// yaml.v3 would take silently are refused: TestParseConfigRefusesBadValues).
func TestParseConfigEmptySectionsAndLists(t *testing.T) {
	got, err := node.ParseConfig("config.yml", []byte("network:\n  announce:\n  relay_limit_duration: 90s\nlimits:\n  rate_limit: 2.5\nlog:\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := node.DefaultConfig(node.DefaultPort)
	if len(got.Network.Announce) != 0 || got.Network.RelayLimitDuration != 90*time.Second || got.Limits.RateLimit != 2.5 || got.Log != want.Log {
		t.Errorf("parsed %+v", got)
	}
}

// One relay listed twice is refused, naming both lines; one relay's peer
// id at two addresses is one relay reachable at both. Before, each line
// was a relay of its own to AutoRelay, which then strove for a second
// reservation that the one relay could never give.
func TestParseConfigDuplicateRelays(t *testing.T) {
	const id = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
	const other = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
	refused := map[string]struct{ in, mention string }{
		"same line twice": {"network:\n  relays:\n    - /ip4/192.0.2.1/tcp/4001/p2p/" + id + "\n    - /ip4/192.0.2.1/tcp/4001/p2p/" + id + "\n",
			"network.relays (line 4): /ip4/192.0.2.1/tcp/4001/p2p/" + id + " is listed twice (also line 3)"},
		"two spellings": {"network:\n  relays:\n    - /ip4/192.0.2.1/tcp/4001/p2p/" + id + "\n    - /ip4/192.0.2.1/tcp/04001/p2p/" + id + "\n",
			"(line 4)"},
		"listen twice":   {"network:\n  listen: [/ip4/127.0.0.1/tcp/5210, /ip4/127.0.0.1/tcp/5210]\n", "network.listen (line 2)"},
		"announce twice": {"network:\n  announce: [/dns4/example.org/tcp/1, /dns4/example.org/tcp/1]\n", "network.announce (line 2)"},
	}
	for name, c := range refused {
		_, err := node.ParseConfig("config.yml", []byte(c.in))
		if !errors.Is(err, node.ErrConfig) || !strings.Contains(err.Error(), c.mention) {
			t.Errorf("%s: got %v, want ErrConfig mentioning %q", name, err, c.mention)
		}
	}

	// Built in code, without lines: Validate refuses it too.
	c := node.DefaultConfig(node.DefaultPort)
	c.Network.Relays = []string{"/ip4/192.0.2.1/tcp/4001/p2p/" + id, "/ip4/192.0.2.1/tcp/4001/p2p/" + id}
	errorsContain(t, c.Validate(), "network.relays", "listed twice", "entries 1 and 2")

	in := "network:\n  relays:\n" +
		"    - /ip4/192.0.2.1/tcp/4001/p2p/" + id + "\n" +
		"    - /ip4/192.0.2.9/tcp/4001/p2p/" + other + "\n" +
		"    - /ip4/192.0.2.1/udp/4001/quic-v1/p2p/" + id + "\n"
	got, err := node.ParseConfig("config.yml", []byte(in))
	if err != nil {
		t.Fatalf("one relay at two addresses: %v", err)
	}
	relays, err := got.Network.StaticRelays()
	if err != nil {
		t.Fatal(err)
	}
	if len(relays) != 2 {
		t.Fatalf("StaticRelays = %v, want 2 relays", relays)
	}
	if relays[0].ID.String() != id || len(relays[0].Addrs) != 2 ||
		relays[0].Addrs[0].String() != "/ip4/192.0.2.1/tcp/4001" || relays[0].Addrs[1].String() != "/ip4/192.0.2.1/udp/4001/quic-v1" {
		t.Errorf("first relay = %v, want %s at its TCP and QUIC addresses", relays[0], id)
	}
	if relays[1].ID.String() != other || len(relays[1].Addrs) != 1 {
		t.Errorf("second relay = %v, want %s at one address", relays[1], other)
	}
}

// max_output above max_payload is allowed (a local perform may return
// more than a peer may send), and the service says at start, once, what
// it costs.
func TestMaxOutputAboveMaxPayloadWarnsAtStart(t *testing.T) {
	const want = "max_output 2MiB exceeds max_payload 1MiB: outputs above 1MiB cannot be published with --notify or returned to remote callers"
	got, err := node.ParseConfig("config.yml", []byte("limits:\n  max_payload: 1MiB\n  max_output: 2MiB\n"))
	if err != nil {
		t.Fatalf("max_output above max_payload refused: %v", err)
	}
	if w := got.Warnings(); len(w) != 1 || w[0] != want {
		t.Errorf("Warnings() = %q, want [%q]", w, want)
	}
	def := node.DefaultConfig(node.DefaultPort)
	if w := def.Warnings(); len(w) != 0 {
		t.Errorf("the default config warns: %q", w)
	}

	for _, c := range []struct {
		name   string
		output node.ByteSize
		warns  int
	}{{"above", 2 << 20, 1}, {"equal", 1 << 20, 0}} {
		var logs syncBuffer
		newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.MaxPayload, l.MaxOutput = 1<<20, c.output }),
			func(o *node.Options) { o.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
		if n := strings.Count(logs.String(), "level=WARN msg=\"config: max_output"); n != c.warns {
			t.Errorf("%s: %d max_output warnings at start, want %d; log:\n%s", c.name, n, c.warns, logs.String())
		}
		if c.warns > 0 && !strings.Contains(logs.String(), want) {
			t.Errorf("%s: the warning does not say %q; log:\n%s", c.name, want, logs.String())
		}
	}
}

// A YAML error on the first line names it: yaml.v3 leaves the line out
// there ("found character that cannot start any token" for a tab), while
// it gives it for the same error further down.
func TestParseConfigFirstLineErrorHasLine(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"\tlimits:\n  max_payload: 1MiB\n", "config.yml: line 1: found character that cannot start any token (a tab: YAML indents with spaces only)"},
		{"\t", "config.yml: line 1: found character that cannot start any token (a tab"},
		{"limits:\n\tmax_payload: 1MiB\n", "config.yml: line 2: found character that cannot start any token"},
		{"limits: [\n", "config.yml: line 1: did not find expected node content"},
	} {
		_, err := node.ParseConfig("config.yml", []byte(tc.in))
		if !errors.Is(err, node.ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseConfig(%q) = %v, want %q", tc.in, err, tc.want)
		}
	}
}

// metrics.listen on loopback is quiet; on an address other machines reach
// it is valid but warned about (the endpoint has no authentication).
func TestMetricsListenWarning(t *testing.T) {
	for addr, warn := range map[string]bool{
		"": false, "127.0.0.1:9464": false, "localhost:0": false, "[::1]:9464": false,
		"0.0.0.0:9464": true, ":9464": true, "192.0.2.7:9464": true,
	} {
		c, err := node.ParseConfig("config.yml", []byte(fmt.Sprintf("metrics:\n  listen: %q\n", addr)))
		if err != nil {
			t.Fatalf("metrics.listen %q: %v", addr, err)
		}
		got := strings.Contains(strings.Join(c.Warnings(), "\n"), "metrics.listen")
		if got != warn {
			t.Errorf("metrics.listen %q: warned %v, want %v (%q)", addr, got, warn, c.Warnings())
		}
	}
}
