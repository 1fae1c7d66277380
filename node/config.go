package node

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"net"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/xhit/go-str2duration/v2"
	"gopkg.in/yaml.v3"
)

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("node: config")

// DefaultPort is the TCP and UDP (QUIC) port a new instance listens on.
const DefaultPort = 5210

// ByteSize is a size in bytes that YAML may spell as an integer or as
// "64KiB", "1MiB", "1MB".
type ByteSize int64

// maxByteSize is the largest size a config value may have.
const maxByteSize = 1 << 40

// UnmarshalYAML accepts integers and humanized sizes up to maxByteSize.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: expected a size such as 1048576 or \"1MiB\"", n.Line)
	}
	v, err := parseByteSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*b = v
	return nil
}

// parseByteSize parses a size as config.yml spells it; its errors name
// neither key nor line (checkScalars adds both).
func parseByteSize(s string) (ByteSize, error) {
	v, err := humanize.ParseBytes(s)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q (use bytes or a unit: 64KiB, 1MiB)", s)
	}
	if v > maxByteSize {
		return 0, fmt.Errorf("size %q is larger than the largest size allowed, 1TiB", s)
	}
	// humanize truncates a fraction of a byte: "0.5" was 0, which for
	// relay_limit_data means no limit at all.
	if !wholeBytes(s) {
		return 0, fmt.Errorf("size %q is not a whole number of bytes", s)
	}
	return ByteSize(v), nil
}

// wholeBytes reports whether the size s (which humanize.ParseBytes
// accepted) is a whole number of bytes: "1.5KiB" is, "1.5" is not.
func wholeBytes(s string) bool {
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' && r != ',' })
	if i < 0 {
		i = len(s)
	}
	num, ok := new(big.Rat).SetString(strings.ReplaceAll(s[:i], ",", ""))
	if !ok {
		return false
	}
	unit, err := humanize.ParseBytes("1" + s[i:])
	if err != nil {
		return false
	}
	return num.Mul(num, new(big.Rat).SetUint64(unit)).IsInt()
}

// MarshalYAML writes the size as String does, so it reads back exactly.
func (b ByteSize) MarshalYAML() (any, error) { return b.String(), nil }

// String formats the size in the largest IEC unit that divides it exactly
// ("64KiB", "1MiB"), else in bytes. It never rounds: a rendered config.yml
// must parse back to the same limits (humanize.IBytes would turn 1000000
// into "977 KiB", which reads back as 1000448).
func (b ByteSize) String() string {
	v := uint64(b)
	for _, u := range []struct {
		size uint64
		name string
	}{{1 << 40, "TiB"}, {1 << 30, "GiB"}, {1 << 20, "MiB"}, {1 << 10, "KiB"}} {
		if v >= u.size && v%u.size == 0 {
			return strconv.FormatUint(v/u.size, 10) + u.name
		}
	}
	return strconv.FormatUint(v, 10)
}

// Queue-full policies.
const (
	QueueFullReject     = "reject"
	QueueFullDropOldest = "drop_oldest"
)

// Config is an instance's config.yml. Every field has a default (see
// DefaultConfig) and is documented in the file `coattail new` writes.
type Config struct {
	Network NetworkConfig `yaml:"network"`
	Limits  LimitsConfig  `yaml:"limits"`
	Log     LogConfig     `yaml:"log"`
	Metrics MetricsConfig `yaml:"metrics"`
}

// NetworkConfig configures the libp2p host.
type NetworkConfig struct {
	Listen      []string `yaml:"listen"`
	Announce    []string `yaml:"announce"`
	Relays      []string `yaml:"relays"`
	PortMapping bool     `yaml:"port_mapping"`
	HolePunch   bool     `yaml:"hole_punching"`
	// PreferTransport is PreferTCP or PreferQUIC: which transport a dial
	// tries first when a peer has both (see preferTCPRanker).
	PreferTransport string `yaml:"prefer_transport"`
	AutoNAT         bool   `yaml:"autonat"`
	RelayServer     bool   `yaml:"relay_service"`
	// RelayLimitDuration and RelayLimitData bound each circuit this
	// instance relays (zero: no bound in that dimension); the relay resets
	// a circuit that reaches either. See docs/NAT.md for why the defaults
	// are far above libp2p's 2 minutes and 128 KiB.
	RelayLimitDuration   time.Duration `yaml:"relay_limit_duration"`
	RelayLimitData       ByteSize      `yaml:"relay_limit_data"`
	RelayMaxReservations int           `yaml:"relay_max_reservations"`
	RelayMaxCircuits     int           `yaml:"relay_max_circuits"`
	// RelayMaxReservationsPerIP caps the reservations from one IP address
	// (libp2p's cap, 8 by default; its cap per ASN follows, at least 32).
	RelayMaxReservationsPerIP int `yaml:"relay_max_reservations_per_ip"`
	// MaxConnsPerIP bounds the connections one IP address may hold with
	// this instance at once (libp2p's per-address cap, 8 by default), and
	// scales how fast it may open new ones (libp2p: 16 at once, then one
	// every 5 s, per 8). The static relays' addresses are exempt: every
	// connection through a relay has its address.
	MaxConnsPerIP int `yaml:"max_conns_per_ip"`
	// ConnLow/ConnHigh are the connection manager's water marks.
	ConnLow  int `yaml:"conn_low"`
	ConnHigh int `yaml:"conn_high"`
}

// LimitsConfig bounds what one peer or one action may cost.
type LimitsConfig struct {
	ActionTimeout    time.Duration `yaml:"action_timeout"`
	MaxPayload       ByteSize      `yaml:"max_payload"`
	MaxOutput        ByteSize      `yaml:"max_output"`
	QueueBound       int           `yaml:"queue_bound"`
	QueueFull        string        `yaml:"queue_full"`
	QueueMemory      ByteSize      `yaml:"queue_memory"`
	QueueMemoryTotal ByteSize      `yaml:"queue_memory_total"`
	// MinFreeDisk is the room publications must leave on the disk that
	// holds data/: below it they are refused (0: never).
	MinFreeDisk             ByteSize      `yaml:"min_free_disk"`
	RateLimit               float64       `yaml:"rate_limit"`
	RateBurst               int           `yaml:"rate_burst"`
	MaxStreamsPerPeer       int           `yaml:"max_streams_per_peer"`
	MaxSubscriptionsPerPeer int           `yaml:"max_subscriptions_per_peer"`
	StreamTimeout           time.Duration `yaml:"stream_timeout"`
	MaxHops                 int           `yaml:"max_hops"`
	ReceiverRetries         int           `yaml:"receiver_retries"`
	ReceiverBackoff         time.Duration `yaml:"receiver_backoff"`
	// MaxRunning bounds the executable actions and receivers running at
	// once (in-process handlers are not counted).
	MaxRunning int `yaml:"max_running"`
}

// LogConfig configures the service log.
type LogConfig struct {
	File  string `yaml:"file"`
	Level string `yaml:"level"`
	// RotateSize is the size past which the log file is rotated (0:
	// never); RotateKeep how many rotated files are kept.
	RotateSize ByteSize `yaml:"rotate_size"`
	RotateKeep int      `yaml:"rotate_keep"`
}

// MetricsConfig configures the Prometheus endpoint.
type MetricsConfig struct {
	// Listen is the host:port the service serves /metrics on (port 0
	// picks a free one; service status shows it); "" is off.
	Listen string `yaml:"listen"`
}

// DefaultConfig returns the configuration of a new instance listening on port.
func DefaultConfig(port int) Config {
	return Config{
		Network: NetworkConfig{
			Listen: []string{
				fmt.Sprintf("/ip4/0.0.0.0/tcp/%d", port),
				fmt.Sprintf("/ip4/0.0.0.0/udp/%d/quic-v1", port),
				fmt.Sprintf("/ip6/::/tcp/%d", port),
				fmt.Sprintf("/ip6/::/udp/%d/quic-v1", port),
			},
			Announce:    []string{},
			Relays:      []string{},
			PortMapping: true,
			HolePunch:   true,
			AutoNAT:     true,

			PreferTransport: PreferTCP,
			ConnLow:         64,
			ConnHigh:        256,

			RelayLimitDuration:        time.Hour,
			RelayLimitData:            64 << 20,
			RelayMaxReservations:      128,
			RelayMaxCircuits:          16,
			RelayMaxReservationsPerIP: 8,
			MaxConnsPerIP:             8,
		},
		Limits: LimitsConfig{
			ActionTimeout:           30 * time.Second,
			MaxPayload:              1 << 20,
			MaxOutput:               1 << 20,
			QueueBound:              1_000_000,
			QueueFull:               QueueFullReject,
			QueueMemory:             16 << 20,
			QueueMemoryTotal:        256 << 20,
			MinFreeDisk:             256 << 20,
			RateLimit:               2000,
			RateBurst:               4000,
			MaxStreamsPerPeer:       128,
			MaxSubscriptionsPerPeer: 1024,
			StreamTimeout:           time.Minute,
			MaxHops:                 16,
			ReceiverRetries:         3,
			ReceiverBackoff:         500 * time.Millisecond,
			MaxRunning:              1024,
		},
		Log: LogConfig{File: "service.log", Level: "info", RotateSize: 10 << 20, RotateKeep: 3},
	}
}

// LoopbackConfig is DefaultConfig for lab, demo and test instances: it
// listens on 127.0.0.1 only and never asks a router for a port mapping.
func LoopbackConfig(port int) Config {
	c := DefaultConfig(port)
	c.Network.Listen = []string{
		fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port),
		fmt.Sprintf("/ip4/127.0.0.1/udp/%d/quic-v1", port),
	}
	c.Network.PortMapping = false
	c.Network.AutoNAT = false
	c.Network.HolePunch = false
	return c
}

// LoadConfig reads and validates a config file. Unknown keys are errors
// that name the key and its line.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	return ParseConfig(path, b)
}

// ConfigSetsNothing reports whether the config file at path sets no key
// at all (empty, or comments only): every setting then takes its default,
// which listens on every interface and asks the router for a port mapping.
// An unreadable or invalid file is not "nothing" (LoadConfig says why).
func ConfigSetsNothing(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return false
	}
	if doc.Kind == 0 || emptyDocument(&doc) {
		return true // no document at all: an empty or comment-only file
	}
	return len(doc.Content) == 1 && doc.Content[0].Kind == yaml.MappingNode && len(doc.Content[0].Content) == 0
}

// EmptyConfigWarning says what a config file that sets nothing means.
func EmptyConfigWarning(l Layout) string {
	return fmt.Sprintf("%s sets nothing, so every setting takes its default: listening on every interface (port %d, TCP and QUIC) and asking the router for a port mapping, so other machines can reach this instance; "+
		"if that is not meant, write the settings (coattail new --loopback writes a config for this machine only)", l.Config(), DefaultPort)
}

// emptyDocument reports whether n is a YAML document with no content, or
// only a null.
func emptyDocument(n *yaml.Node) bool {
	if n.Kind != yaml.DocumentNode {
		return false
	}
	for _, c := range n.Content {
		if c.Kind != yaml.ScalarNode || c.Tag != "!!null" {
			return false
		}
	}
	return true
}

// ParseConfig parses config YAML; name is used in error messages. Missing
// keys keep their defaults; unknown keys, keys without a value and a
// fraction for a whole number are errors.
func ParseConfig(name string, b []byte) (Config, error) {
	c := DefaultConfig(DefaultPort)
	// The first document as written, checked first: unknown and repeated
	// keys, and values of the wrong kind, are named in the config's terms
	// (yaml.v3 says "field x not found in type node.Config" and "cannot
	// unmarshal !!str `5x` into time.Duration").
	var doc yaml.Node
	var lines map[string]int
	if err := yaml.Unmarshal(b, &doc); err == nil {
		lines = keyLines(&doc)
		var rewrote bool
		err := errors.Join(checkScalars(&doc, reflect.TypeFor[Config](), "", &rewrote), checkDuplicates(&doc))
		if err != nil {
			return Config{}, fmt.Errorf("%w: %s: %w", ErrConfig, name, err)
		}
		if rewrote {
			// Durations in days or weeks (as --expires-in takes them),
			// rewritten in Go's units, which yaml.v3 decodes.
			if b, err = yaml.Marshal(&doc); err != nil {
				return Config{}, fmt.Errorf("%w: %s: %w", ErrConfig, name, err)
			}
		}
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) { // empty file: all defaults
		return Config{}, fmt.Errorf("%w: %s: %s", ErrConfig, name, yamlError(b, err))
	}
	// A second document (after ---) would otherwise be ignored unchecked.
	// Empty ones (a trailing ---, as some generators write) are fine.
	for {
		var more yaml.Node
		err := dec.Decode(&more)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil || !emptyDocument(&more) {
			return Config{}, fmt.Errorf("%w: %s: more than one YAML document (line %d): a config is one document", ErrConfig, name, more.Line)
		}
	}
	if err := c.validate(lines); err != nil {
		return Config{}, fmt.Errorf("%w: %s: %w", ErrConfig, name, err)
	}
	return c, nil
}

// keyLines maps each key of a config document, dotted as errors name it
// ("limits.max_hops"), to the line it is on, and each item of a list to
// its own ("network.listen[0]"), so that Validate's errors can say where.
func keyLines(doc *yaml.Node) map[string]int {
	lines := map[string]int{}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				key := n.Content[i]
				if key.ShortTag() == "!!merge" {
					continue
				}
				name := key.Value
				if path != "" {
					name = path + "." + key.Value
				}
				if _, ok := lines[name]; !ok {
					lines[name] = key.Line
				}
				walk(n.Content[i+1], name)
			}
		case yaml.SequenceNode:
			for i, item := range n.Content {
				lines[fmt.Sprintf("%s[%d]", path, i)] = item.Line
			}
		}
	}
	walk(doc, "")
	return lines
}

// checkScalars refuses what yaml.v3 would otherwise accept silently: a key
// with an empty value (yaml.v3 leaves the field at its default, so
// "max_payload:" looked like it set something and did not), and a
// fraction where a whole number is expected (yaml.v3 truncates
// "max_hops: 1.9" to 1). A section left empty ("limits:" with every line
// under it deleted) keeps its defaults, and an empty list is an empty
// list. t is the Go type n decodes into; path names it in errors.
//
// A duration may also be given in days and weeks ("7d", "1w2d"), as the
// CLI's durations: it is rewritten in place in Go's units (*rewrote set).
func checkScalars(n *yaml.Node, t reflect.Type, path string, rewrote *bool) error {
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return nil
		}
		return checkScalars(n.Content[0], t, path, rewrote)
	}
	if n.Kind != yaml.MappingNode || t.Kind() != reflect.Struct {
		return nil // yaml.v3 reports the type mismatch with its line
	}
	var errs []error
	seen := make(map[string]int, len(n.Content)/2) // key -> line
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		if key.ShortTag() == "!!merge" {
			continue // "<<: *alias": the decoder checks what it merges in
		}
		if val.Kind == yaml.AliasNode && val.Alias != nil {
			val = val.Alias
		}
		name := key.Value
		if path != "" {
			name = path + "." + key.Value
		}
		if first, ok := seen[key.Value]; ok {
			errs = append(errs, fmt.Errorf("%s (line %d): set twice (also line %d); delete one", name, key.Line, first))
			continue
		}
		seen[key.Value] = key.Line
		f, ok := fieldByTag(t, key.Value)
		if !ok {
			where := "at the top level"
			if path != "" {
				where = "in " + path
			}
			hint := ""
			if h, ok := originalConfigKeys[key.Value]; ok && path == "" {
				hint = " (" + h + ")"
			}
			errs = append(errs, fmt.Errorf("%s (line %d): unknown key %s; the keys there are %s%s", name, key.Line, where, strings.Join(yamlKeys(t), ", "), hint))
			continue
		}
		ft := f.Type
		isScalar := val.Kind == yaml.ScalarNode
		switch {
		case isScalar && val.ShortTag() == "!!null":
			if ft.Kind() == reflect.Struct || ft.Kind() == reflect.Slice {
				continue // an empty section keeps its defaults; an empty list is empty
			}
			errs = append(errs, fmt.Errorf("%s (line %d): no value; write one, or delete the line to keep the default", name, key.Line))
		case ft.Kind() == reflect.Struct && val.Kind != yaml.MappingNode:
			errs = append(errs, fmt.Errorf("%s (line %d): is a section: its keys go on the lines below it, indented", name, val.Line))
		case ft.Kind() == reflect.Struct:
			if err := checkScalars(val, ft, name, rewrote); err != nil {
				errs = append(errs, err)
			}
		case ft.Kind() == reflect.Slice && val.Kind != yaml.SequenceNode:
			errs = append(errs, fmt.Errorf("%s (line %d): is a list: write [a, b] or one \"- item\" per line below it", name, val.Line))
		case ft.Kind() != reflect.Slice && !isScalar:
			errs = append(errs, fmt.Errorf("%s (line %d): is one value, not a list or a section", name, val.Line))
		case ft == reflect.TypeFor[time.Duration]():
			_, err := time.ParseDuration(val.Value)
			if err != nil && val.ShortTag() == "!!str" {
				if d, derr := str2duration.ParseDuration(val.Value); derr == nil {
					val.Value, err, *rewrote = d.String(), nil, true
				}
			}
			if err != nil || val.ShortTag() != "!!str" {
				errs = append(errs, fmt.Errorf("%s (line %d): %q is not a duration; write one such as 30s, 5m, 1h30m or 7d", name, val.Line, val.Value))
			}
		case ft == reflect.TypeFor[ByteSize]():
			if _, err := parseByteSize(val.Value); err != nil {
				errs = append(errs, fmt.Errorf("%s (line %d): %w", name, val.Line, err))
			}
		case ft.Kind() == reflect.Int && val.ShortTag() == "!!str":
			if _, err := strconv.Atoi(val.Value); err == nil {
				errs = append(errs, fmt.Errorf("%s (line %d): %q is in quotes, so it is text; write the number without quotes", name, val.Line, val.Value))
				break
			}
			errs = append(errs, fmt.Errorf("%s (line %d): %q is not a whole number", name, val.Line, val.Value))
		case ft.Kind() == reflect.Bool && val.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) == 0 && val.ShortTag() != "!!bool" && !yaml11Bool(val.Value):
			errs = append(errs, fmt.Errorf("%s (line %d): %q is not a boolean; write true or false", name, val.Line, val.Value))
		case ft.Kind() == reflect.Int && val.Kind == yaml.ScalarNode && val.ShortTag() == "!!float":
			errs = append(errs, fmt.Errorf("%s (line %d): %s is not a whole number", name, val.Line, val.Value))
		case ft.Kind() == reflect.Bool && val.Kind == yaml.ScalarNode && val.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0:
			// yaml.v3 refuses "true" in quotes but takes "yes", "on"
			// and "y" in quotes as true: one rule for all of them.
			errs = append(errs, fmt.Errorf("%s (line %d): %q is in quotes, so it is text, not a boolean; write true or false without quotes", name, val.Line, val.Value))
		}
	}
	return errors.Join(errs...)
}

// yaml11Bool reports whether yaml.v3 takes s, unquoted, for a boolean
// field (YAML 1.1's spellings: yes, no, on, off, y, n and their cases).
func yaml11Bool(s string) bool {
	switch s {
	case "y", "Y", "yes", "Yes", "YES", "on", "On", "ON",
		"n", "N", "no", "No", "NO", "off", "Off", "OFF":
		return true
	}
	return false
}

// originalConfigKeys says, for each top-level section of the original
// Coattail's config.yml, what takes its place here, so that a config
// brought over from it is refused with directions.
var originalConfigKeys = map[string]string{
	"service":        "a section of the original Coattail: its network.address.bind and port are network.listen here, its network.address.connection network.announce, its log log.file; tls has no setting, as connections are always encrypted (Noise or TLS, with keys/identity.key); move those and delete the section",
	"authentication": "a section of the original Coattail: here keys/identity.key signs the tokens this instance issues (docs/SECURITY.md); delete the section",
	"validation":     "a section of the original Coattail: here keys/identity.key proves this instance to its peers (docs/SECURITY.md); delete the section",
	"paths":          "a section of the original Coattail: here actions/ and receivers/ are always in the instance directory; delete the section",
	"data":           "a section of the original Coattail: here the datastore is always data/ in the instance directory; delete the section",
}

// yamlKeys lists the config keys of struct type t, in order.
func yamlKeys(t reflect.Type) []string {
	var keys []string
	for i := range t.NumField() {
		if tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); tag != "" && tag != "-" {
			keys = append(keys, tag)
		}
	}
	return keys
}

// addrLists are the network keys that hold lists of multiaddrs.
var addrLists = []string{"listen", "announce", "relays"}

// checkDuplicates refuses an address listed twice in network.listen,
// announce or relays, naming both lines: a copied line is a mistake, and
// a relay listed twice was counted as two relays (AutoRelay then waited
// for a second reservation that could never come). Two lines with one
// relay's peer id and different addresses are fine: they are one relay
// reachable at both (see NetworkConfig.StaticRelays). Validate refuses
// the same for configs built in code, without line numbers.
func checkDuplicates(doc *yaml.Node) error {
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil
	}
	var errs []error
	root := doc.Content[0]
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value != "network" || root.Content[i+1].Kind != yaml.MappingNode {
			continue
		}
		nw := root.Content[i+1]
		for j := 0; j+1 < len(nw.Content); j += 2 {
			key, list := nw.Content[j].Value, nw.Content[j+1]
			if !slices.Contains(addrLists, key) || list.Kind != yaml.SequenceNode {
				continue
			}
			var items []*yaml.Node
			var addrs []string
			for _, item := range list.Content {
				if item.Kind != yaml.ScalarNode {
					continue // the decoder reports it
				}
				items = append(items, item)
				addrs = append(addrs, item.Value)
			}
			eachDuplicate(addrs, func(i, first int) {
				errs = append(errs, fmt.Errorf("network.%s (line %d): %s is listed twice (also line %d); delete one", key, items[i].Line, items[i].Value, items[first].Line))
			})
		}
	}
	return errors.Join(errs...)
}

// normalAddr is s in a multiaddr's canonical spelling, so that two
// spellings of one address compare equal; s itself when it is not a
// multiaddr (Validate reports that).
func normalAddr(s string) string {
	if m, err := ma.NewMultiaddr(s); err == nil {
		return m.String()
	}
	return s
}

// eachDuplicate calls dup(i, first) for each address addrs[i] that an
// earlier entry, addrs[first], already names (compared by normalAddr), in
// order. checkDuplicates (YAML, naming lines) and Validate (configs built
// in code, naming entry numbers) both find duplicates with it.
func eachDuplicate(addrs []string, dup func(i, first int)) {
	seen := make(map[string]int, len(addrs)) // normalized address -> first index
	for i, s := range addrs {
		k := normalAddr(s)
		if first, ok := seen[k]; ok {
			dup(i, first)
			continue
		}
		seen[k] = i
	}
}

// addrList is the list of network named key, one of addrLists.
func (n *NetworkConfig) addrList(key string) []string {
	switch key {
	case "listen":
		return n.Listen
	case "announce":
		return n.Announce
	case "relays":
		return n.Relays
	}
	panic("node: no network address list " + key)
}

// StaticRelays is network.relays as AutoRelay takes it: one entry per
// relay peer id, with every address listed for it (in the order written,
// each once). Two lines naming one peer id at different addresses are one
// relay reachable at both, not two relays.
func (nc NetworkConfig) StaticRelays() ([]peer.AddrInfo, error) {
	var out []peer.AddrInfo
	at := map[peer.ID]int{}
	for _, s := range nc.Relays {
		ai, err := peer.AddrInfoFromString(s)
		if err != nil {
			return nil, fmt.Errorf("%w: network.relays: %q: %v", ErrConfig, s, err)
		}
		i, ok := at[ai.ID]
		if !ok {
			at[ai.ID] = len(out)
			out = append(out, peer.AddrInfo{ID: ai.ID})
			i = len(out) - 1
		}
		for _, a := range ai.Addrs {
			if !slices.ContainsFunc(out[i].Addrs, a.Equal) {
				out[i].Addrs = append(out[i].Addrs, a)
			}
		}
	}
	return out, nil
}

// fieldByTag finds the field of struct type t whose yaml tag is name.
func fieldByTag(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); tag == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// The longest limits.action_timeout and limits.stream_timeout.
const (
	maxActionTimeout = 7 * 24 * time.Hour
	maxStreamTimeout = 24 * time.Hour
)

// hostTransport reports whether m is an address on a transport this
// host's libp2p speaks: an IP address (or with dns a DNS name), then
// tcp/<port> or udp/<port>/quic-v1, and nothing after it.
func hostTransport(m ma.Multiaddr, dns bool) bool {
	if len(m) < 2 {
		return false
	}
	switch m[0].Code() {
	case ma.P_IP4, ma.P_IP6:
	case ma.P_DNS, ma.P_DNS4, ma.P_DNS6:
		if !dns {
			return false
		}
	default:
		return false
	}
	switch rest := m[1:]; {
	case len(rest) == 1 && rest[0].Code() == ma.P_TCP:
		return true
	case len(rest) == 2 && rest[0].Code() == ma.P_UDP && rest[1].Code() == ma.P_QUIC_V1:
		return true
	}
	return false
}

// Validate reports every problem at once.
func (c *Config) Validate() error { return c.validate(nil) }

// validate is Validate, naming with each key the line it is on in
// lines (see keyLines; nil for a config built in code).
func (c *Config) validate(lines map[string]int) error {
	var errs []error
	// at says on which lines of the file the keys are set ("network.a/b"
	// is network.a and network.b), if they are.
	at := func(keys ...string) string {
		var ls []string
		for _, k := range keys {
			if l, ok := lines[k]; ok && !slices.Contains(ls, strconv.Itoa(l)) {
				ls = append(ls, strconv.Itoa(l))
			}
		}
		switch len(ls) {
		case 0:
			return ""
		case 1:
			return " (line " + ls[0] + ")"
		}
		return " (lines " + strings.Join(ls, ", ") + ")"
	}
	// bad reports a problem with key, itemBad one with item i of the list key.
	bad := func(key, f string, a ...any) {
		keys := []string{key}
		if first, rest, ok := strings.Cut(key, "/"); ok {
			section, _, _ := strings.Cut(first, ".")
			keys = []string{first, section + "." + rest}
		}
		errs = append(errs, fmt.Errorf("%s%s: %s", key, at(keys...), fmt.Sprintf(f, a...)))
	}
	itemBad := func(key string, i int, f string, a ...any) {
		errs = append(errs, fmt.Errorf("%s%s: %s", key, at(fmt.Sprintf("%s[%d]", key, i)), fmt.Sprintf(f, a...)))
	}
	if len(c.Network.Listen) == 0 {
		bad("network.listen", "at least one address is required")
	}
	for i, s := range c.Network.Listen {
		m, err := ma.NewMultiaddr(s)
		if err != nil {
			itemBad("network.listen", i, "%q is not a multiaddr: %v", s, err)
			continue
		}
		// libp2p skips, with a line in its own log only, an address no
		// transport can listen on when another address works.
		if !hostTransport(m, false) {
			itemBad("network.listen", i, "%q is not an address this instance can listen on: write /ip4/<ip>/tcp/<port> or /ip4/<ip>/udp/<port>/quic-v1 (or /ip6/...)", s)
		}
	}
	for i, s := range c.Network.Announce {
		m, err := ma.NewMultiaddr(s)
		if err != nil {
			itemBad("network.announce", i, "%q is not a multiaddr: %v", s, err)
			continue
		}
		// What peers and token bearers dial: a concrete address of
		// this instance, without its peer id (added when needed).
		switch _, p2pErr := m.ValueForProtocol(ma.P_P2P); {
		case isUnspecified(m):
			itemBad("network.announce", i, "%q is an unspecified address (0.0.0.0 or ::); announce the address others reach you at", s)
		case zeroPort(m):
			itemBad("network.announce", i, "%q has port 0; announce the port others reach you at", s)
		case p2pErr == nil:
			itemBad("network.announce", i, "%q names a peer id; leave /p2p/... out", s)
		case !hostTransport(m, true):
			itemBad("network.announce", i, "%q is not an address this instance can be dialled at: write /ip4/<ip>/tcp/<port> or .../udp/<port>/quic-v1 (or /ip6/, /dns/, /dns4/, /dns6/<name>/...)", s)
		}
	}
	for i, s := range c.Network.Relays {
		m, err := ma.NewMultiaddr(s)
		if err != nil {
			itemBad("network.relays", i, "%q is not a multiaddr: %v", s, err)
			continue
		}
		if _, err := m.ValueForProtocol(ma.P_P2P); err != nil {
			itemBad("network.relays", i, "%q must end in /p2p/<peer-id>", s)
			continue
		}
		// What the host will do with it (StaticRelays), checked now
		// rather than when the service starts.
		ai, err := peer.AddrInfoFromP2pAddr(m)
		switch {
		case err != nil:
			itemBad("network.relays", i, "%q must end in /p2p/<peer-id>: %v", s, err)
		case isRelayAddr(m):
			itemBad("network.relays", i, "%q goes through another relay (/p2p-circuit); a relay must be reachable directly", s)
		case len(ai.Addrs) == 0:
			itemBad("network.relays", i, "%q has no address before /p2p/<peer-id>; write the relay's address, e.g. /ip4/<ip>/tcp/<port>/p2p/<peer-id>", s)
		case !hostTransport(ai.Addrs[0], true):
			itemBad("network.relays", i, "%q is not an address this instance can dial: write /ip4/<ip>/tcp/<port>/p2p/<peer-id> or .../udp/<port>/quic-v1/p2p/<peer-id> (or /ip6/, /dns/, /dns4/, /dns6/<name>/...)", s)
		}
	}
	for _, key := range addrLists {
		list := c.Network.addrList(key)
		eachDuplicate(list, func(i, first int) {
			bad("network."+key, "%s is listed twice (entries %d and %d); delete one", list[i], first+1, i+1)
		})
	}
	if p := c.Network.PreferTransport; p != PreferTCP && p != PreferQUIC {
		bad("network.prefer_transport", "%q is not %q or %q", p, PreferTCP, PreferQUIC)
	}
	if c.Network.ConnLow < 1 || c.Network.ConnHigh < c.Network.ConnLow {
		bad("network.conn_low/conn_high", "need 1 <= conn_low <= conn_high (got %d, %d)", c.Network.ConnLow, c.Network.ConnHigh)
	}
	// The relay states the duration in whole seconds, as a uint32.
	if d := c.Network.RelayLimitDuration; d != 0 && (d < time.Second || d > math.MaxUint32*time.Second) {
		bad("network.relay_limit_duration", "%v is out of range (0 for none, or 1s..%v)", d, math.MaxUint32*time.Second)
	} else if d%time.Second != 0 {
		bad("network.relay_limit_duration", "%v is not a whole number of seconds (the relay states its limit in seconds)", d)
	}
	// Below 64KiB a circuit could not carry one handshake plus a
	// publication of the smallest max_payload.
	if d := c.Network.RelayLimitData; d != 0 && d < 64<<10 {
		bad("network.relay_limit_data", "%v is too small (0 for none, or at least 64KiB)", d)
	}
	if c.Network.RelayMaxReservations < 1 {
		bad("network.relay_max_reservations", "must be at least 1 (got %d)", c.Network.RelayMaxReservations)
	}
	if c.Network.RelayMaxCircuits < 1 {
		bad("network.relay_max_circuits", "must be at least 1 (got %d)", c.Network.RelayMaxCircuits)
	}
	if c.Network.MaxConnsPerIP < 1 || c.Network.MaxConnsPerIP > 1<<20 {
		bad("network.max_conns_per_ip", "%d is out of range (1..1048576)", c.Network.MaxConnsPerIP)
	}
	if c.Network.RelayMaxReservationsPerIP < 1 || c.Network.RelayMaxReservationsPerIP > 1<<20 {
		bad("network.relay_max_reservations_per_ip", "%d is out of range (1..1048576)", c.Network.RelayMaxReservationsPerIP)
	}
	l := c.Limits
	// Upper bounds: a perform's deadline is action_timeout +
	// stream_timeout, which overflowed into the past (every perform timed
	// out at once) for values near the largest duration.
	if l.ActionTimeout < 10*time.Millisecond || l.ActionTimeout > maxActionTimeout {
		bad("limits.action_timeout", "%v is out of range (10ms..%v)", l.ActionTimeout, maxActionTimeout)
	}
	if l.MaxPayload < 1024 || l.MaxPayload > 64<<20 {
		bad("limits.max_payload", "%v is out of range (1KiB..64MiB)", l.MaxPayload)
	}
	if l.MaxOutput < 1024 || l.MaxOutput > 64<<20 {
		bad("limits.max_output", "%v is out of range (1KiB..64MiB)", l.MaxOutput)
	}
	if l.QueueBound < 1 {
		bad("limits.queue_bound", "must be at least 1 (got %d)", l.QueueBound)
	}
	if l.QueueMemory < 64<<10 || l.QueueMemory > 4<<30 {
		bad("limits.queue_memory", "%v is out of range (64KiB..4GiB)", l.QueueMemory)
	}
	if l.QueueMemoryTotal < 1<<20 || l.QueueMemoryTotal > 64<<30 {
		bad("limits.queue_memory_total", "%v is out of range (1MiB..64GiB)", l.QueueMemoryTotal)
	}
	if l.QueueFull != QueueFullReject && l.QueueFull != QueueFullDropOldest {
		bad("limits.queue_full", "%q is not one of %q, %q", l.QueueFull, QueueFullReject, QueueFullDropOldest)
	}
	if !(l.RateLimit > 0) || math.IsInf(l.RateLimit, 0) || l.RateBurst < 1 { // !(>0) also refuses NaN
		bad("limits.rate_limit/rate_burst", "must be positive (got %v, %d)", l.RateLimit, l.RateBurst)
	}
	if l.MaxSubscriptionsPerPeer < 1 {
		bad("limits.max_subscriptions_per_peer", "must be at least 1 (got %d)", l.MaxSubscriptionsPerPeer)
	}
	if l.MaxStreamsPerPeer < 1 {
		bad("limits.max_streams_per_peer", "must be at least 1 (got %d)", l.MaxStreamsPerPeer)
	}
	if l.StreamTimeout < time.Second || l.StreamTimeout > maxStreamTimeout {
		bad("limits.stream_timeout", "%v is out of range (1s..%v)", l.StreamTimeout, maxStreamTimeout)
	}
	if l.MaxHops < 1 || l.MaxHops > 1000 {
		bad("limits.max_hops", "%d is out of range (1..1000)", l.MaxHops)
	}
	if l.ReceiverRetries < 0 || l.ReceiverRetries > 100 {
		bad("limits.receiver_retries", "%d is out of range (0..100)", l.ReceiverRetries)
	}
	if l.ReceiverBackoff < time.Millisecond || l.ReceiverBackoff > time.Hour {
		bad("limits.receiver_backoff", "%v is out of range (1ms..1h)", l.ReceiverBackoff)
	}
	if l.MaxRunning < 1 || l.MaxRunning > 65536 {
		bad("limits.max_running", "%d is out of range (1..65536)", l.MaxRunning)
	}
	if c.Log.File == "" {
		bad("log.file", "must not be empty")
	}
	if c.Log.RotateSize < 0 {
		bad("log.rotate_size", "must not be negative (0: never rotate; got %v)", c.Log.RotateSize)
	}
	if c.Log.RotateKeep < 0 || c.Log.RotateKeep > 1000 {
		bad("log.rotate_keep", "%d is out of range (0..1000)", c.Log.RotateKeep)
	}
	switch strings.ToLower(c.Log.Level) {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	if c.Metrics.Listen != "" {
		if _, err := metricsHost(c.Metrics.Listen); err != nil {
			bad("metrics.listen", "%v", err)
		}
	}
	return errors.Join(errs...)
}

// Warnings lists what a valid config allows but a user should know at
// start: settings that work, yet not everywhere they might expect.
func (c *Config) Warnings() []string {
	var w []string
	// A local perform may return more than a peer may send, so this is
	// allowed; but such an output cannot be published (publishing refuses
	// data over max_payload) nor read by a remote caller (which reads
	// frames up to its own max_payload + 64KiB).
	if l := c.Limits; l.MaxOutput > l.MaxPayload {
		w = append(w, fmt.Sprintf("max_output %v exceeds max_payload %v: outputs above %v cannot be published with --notify or returned to remote callers", l.MaxOutput, l.MaxPayload, l.MaxPayload))
	}
	if host, err := metricsHost(c.Metrics.Listen); err == nil && c.Metrics.Listen != "" && !loopbackHost(host) {
		w = append(w, fmt.Sprintf("metrics.listen %s is reachable from other machines and has no authentication: anyone who reaches it sees this instance's peer id, its subscribers' peer ids and subscription patterns (use 127.0.0.1, or a firewall)", c.Metrics.Listen))
	}
	return w
}

// metricsHost checks a metrics.listen address (host:port, the host an IP
// address, "localhost" or empty for every interface) and returns its host.
func metricsHost(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("%q is not host:port (for example 127.0.0.1:9464)", addr)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || (p == 0 && port != "0") {
		return "", fmt.Errorf("%q: port %q is not a number from 0 to 65535", addr, port)
	}
	if host != "" && host != "localhost" && net.ParseIP(host) == nil {
		return "", fmt.Errorf("%q: host %q is not an IP address or localhost (a name could resolve to an address other machines reach)", addr, host)
	}
	return host, nil
}

// loopbackHost reports whether a metrics.listen host is loopback only.
func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

var configTemplate = template.Must(template.New("config").Funcs(template.FuncMap{
	"list": func(xs []string) string {
		if len(xs) == 0 {
			return " []"
		}
		var b strings.Builder
		for _, x := range xs {
			fmt.Fprintf(&b, "\n    - %s", x)
		}
		return b.String()
	},
}).Parse(`# Coattail instance configuration.
# Every setting is listed, with its default in its comment: deleting a line
# gives that default (a value 'coattail new' chose, such as its --port or
# --loopback, is not one).
# Unknown or repeated keys, keys without a value and an address listed twice are
# errors. Sizes take units (64KiB, 1MiB; at most 1TiB); durations take 500ms, 30s, 2m, 1h, 7d;
# booleans are true or false, without quotes.

network:
  # Multiaddrs the libp2p host listens on: /ip4/<ip>/tcp/<port> or
  # /ip4/<ip>/udp/<port>/quic-v1 (or /ip6/...). TCP and QUIC share one port
  # ('coattail new --port' chooses it). Default: every interface
  # (/ip4/0.0.0.0 and /ip6/::), TCP and QUIC, port {{.DefaultPort}}.
  listen:{{list .C.Network.Listen}}
  # Extra addresses to put in tokens and tell connected peers (for example
  # a public DNS name or a forwarded port; TCP or QUIC, as in listen, or
  # /dns/<name>/...). Observed and relay addresses are added automatically.
  # Default: none.
  announce:{{list .C.Network.Announce}}
  # Static circuit-relay v2 relays (full multiaddrs ending in /p2p/<peer-id>;
  # one relay at several addresses takes one line per address).
  # When this instance is behind NAT it reserves a slot on them, and its
  # tokens carry the resulting /p2p-circuit addresses. Default: none.
  relays:{{list .C.Network.Relays}}
  # Ask the router for a port mapping (UPnP / NAT-PMP). Default: true.
  port_mapping: {{.C.Network.PortMapping}}
  # Direct connection upgrade through relay (hole punching). Default: true.
  hole_punching: {{.C.Network.HolePunch}}
  # Which transport to dial first when a peer listens on both: tcp or
  # quic. TCP moves about twice the bytes per CPU second between two hosts
  # (docs/PERFORMANCE.md); libp2p's own default is quic. Hole punching
  # tries both at once either way. Default: tcp.
  prefer_transport: {{.C.Network.PreferTransport}}
  # AutoNAT reachability detection. Default: true.
  autonat: {{.C.Network.AutoNAT}}
  # Serve as a circuit-relay v2 relay for others (same as
  # 'service start --relay'). Default: false.
  relay_service: {{.C.Network.RelayServer}}
  # When relaying: the most time and bytes (each way) one relayed
  # connection may use before the relay resets it; 0 means no limit (both
  # 0: unlimited circuits). A reset subscription reconnects and resumes from
  # its last ack, over a direct connection if hole punching made one.
  # relay_limit_data must exceed the largest publication that crosses the
  # relay by 16KiB (a larger one arrives as a dead letter without its
  # data). libp2p's own defaults (2m, 128KiB) are meant for public relays
  # that only bootstrap hole punching. The duration is in whole seconds.
  # Defaults: 1h0m0s and 64MiB.
  relay_limit_duration: {{.C.Network.RelayLimitDuration}}
  relay_limit_data: {{.C.Network.RelayLimitData}}
  # When relaying: how many peers may hold a reservation, how many
  # relayed connections each peer may have open, and how many peers from
  # one IP address may hold a reservation (instances behind one NAT share
  # its address). Defaults: 128, 16 and 8.
  relay_max_reservations: {{.C.Network.RelayMaxReservations}}
  relay_max_circuits: {{.C.Network.RelayMaxCircuits}}
  relay_max_reservations_per_ip: {{.C.Network.RelayMaxReservationsPerIP}}
  # Connections one IP address may hold with this instance at once, and
  # (scaled with it) how fast it may open new ones: libp2p's guard against
  # one host flooding. Instances behind one NAT share an address: raise it
  # for a site with more than this many. Connections through the static
  # relays (network.relays), which all carry a relay's address, are exempt.
  # Default: 8.
  max_conns_per_ip: {{.C.Network.MaxConnsPerIP}}
  # Connection manager water marks: above conn_high, idle connections are
  # trimmed down to conn_low. Defaults: 64 and 256.
  conn_low: {{.C.Network.ConnLow}}
  conn_high: {{.C.Network.ConnHigh}}

limits:
  # How long an action or receiver may run before it is killed (10ms to
  # 168h). Default: 30s.
  action_timeout: {{.C.Limits.ActionTimeout}}
  # Largest input or publication accepted. Default: 1MiB.
  max_payload: {{.C.Limits.MaxPayload}}
  # Largest stdout an action may produce (a receiver's is not used: past
  # it, the rest is dropped). Default: 1MiB. Above max_payload
  # (allowed: a local perform may return more than a peer may send), an
  # output over max_payload cannot be published with --notify or returned
  # to a remote caller; the service logs a warning at start.
  max_output: {{.C.Limits.MaxOutput}}
  # Most publications queued for one subscription. Default: 1000000.
  queue_bound: {{.C.Limits.QueueBound}}
  # What a full queue does with a new publication: reject (the publisher
  # gets an error) or drop_oldest. Default: reject.
  queue_full: {{.C.Limits.QueueFull}}
  # Recent publications kept in memory per subscription, so delivery does
  # not read them back from disk; a backlog beyond it is read from the
  # datastore. Raise it for large payloads. Default: 16MiB.
  queue_memory: {{.C.Limits.QueueMemory}}
  # All subscriptions together keep at most this much in memory: each gets
  # min(queue_memory, queue_memory_total / subscriptions). Default: 256MiB.
  queue_memory_total: {{.C.Limits.QueueMemoryTotal}}
  # Publications are refused (the publisher is told why) while the disk
  # holding data/ has less than this free: a full disk would stop the
  # service, and deliveries, acks and the rest still need a little room.
  # 0 disables the check. Default: 256MiB.
  min_free_disk: {{.C.Limits.MinFreeDisk}}
  # Requests per second one peer may make (token bucket) and its burst.
  # Defaults: 2000 and 4000.
  rate_limit: {{.C.Limits.RateLimit}}
  rate_burst: {{.C.Limits.RateBurst}}
  # Concurrent protocol streams one peer may hold open. Default: 128.
  max_streams_per_peer: {{.C.Limits.MaxStreamsPerPeer}}
  # Subscriptions one peer may hold at this instance (each has a queue and,
  # while connected, a long-lived stream that does not count against
  # max_streams_per_peer). Default: 1024.
  max_subscriptions_per_peer: {{.C.Limits.MaxSubscriptionsPerPeer}}
  # Longest wait for one frame on a request stream (1s to 24h).
  # Default: 1m0s.
  stream_timeout: {{.C.Limits.StreamTimeout}}
  # Most hops a cascade may take (each perform or publish by a receiver
  # adds one); a perform or publication beyond it is refused and logged.
  # Default: 16.
  max_hops: {{.C.Limits.MaxHops}}
  # How often a failing receiver is retried before its publication is
  # parked in the dead-letter list, and the first back-off (doubling).
  # Defaults: 3 and 500ms.
  receiver_retries: {{.C.Limits.ReceiverRetries}}
  receiver_backoff: {{.C.Limits.ReceiverBackoff}}
  # Programs (executable actions and receivers) running at once; one
  # more waits for a slot within its action_timeout. In-process handlers
  # are not counted. Default: 1024.
  max_running: {{.C.Limits.MaxRunning}}

log:
  # Service log (JSON lines), relative to the instance directory.
  # Default: service.log.
  file: {{.C.Log.File}}
  # debug, info, warn or error. Default: info.
  level: {{.C.Log.Level}}
  # Past this size the file, if a regular file (not /dev/stderr), is renamed
  # service.log.1 (older ones shift to .2, .3, ...) and a new one started;
  # 0: never rotate. SIGHUP reopens it (for an external logrotate).
  # Default: 10MiB.
  rotate_size: {{.C.Log.RotateSize}}
  # Rotated files kept (the oldest beyond is deleted). Default: 3.
  rotate_keep: {{.C.Log.RotateKeep}}

metrics:
  # Serve Prometheus metrics at http://<listen>/metrics: this instance's
  # counters and queues (coattail_*), libp2p's (libp2p_*) and Go's. host:port,
  # the host an IP address or localhost; port 0 picks a free port (service
  # status --json shows the URL). The endpoint has no authentication: keep
  # it on 127.0.0.1 or behind a firewall. "" turns it off. Default: "".
  listen: {{printf "%q" .C.Metrics.Listen}}
`))

// RenderConfig writes c as a commented config.yml.
func RenderConfig(c Config, port int) ([]byte, error) {
	var b bytes.Buffer
	if err := configTemplate.Execute(&b, struct {
		C           Config
		Port        int
		DefaultPort int
	}{c, port, DefaultPort}); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
