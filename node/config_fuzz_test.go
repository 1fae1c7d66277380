package node_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/coattail/coattail/node"
	"gopkg.in/yaml.v3"
)

// FuzzParseConfig feeds arbitrary bytes to the config.yml parser, which
// reads a file any local user or tool may have edited. It checks that
// parsing never panics, that every refusal wraps ErrConfig, and that a
// config that parses is valid and survives a marshal/parse round trip
// unchanged (so nothing a user wrote is silently reinterpreted).
func FuzzParseConfig(f *testing.F) {
	// Every key, without the comments of the rendered file: a small seed
	// keeps each mutation cheap to run and to minimize.
	def := node.DefaultConfig(node.DefaultPort)
	every, err := yaml.Marshal(&def)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(every)
	f.Add([]byte(""))
	f.Add([]byte("limits:\n  max_payload: 64KiB\n  action_timeout: 500ms\n"))
	f.Add([]byte("limits:\n  max_payload: [1, 2]\n"))
	f.Add([]byte("limits:\n  max_payload: 99999999999999999999\n"))
	f.Add([]byte("network:\n  listen: [\"/ip4/1.2.3.4/tcp/1\"]\n  relays: [\"/ip4/1.2.3.4/tcp/1\"]\n"))
	f.Add([]byte("log: {level: DEBUG, file: x}\nunknown: 1\n"))
	f.Add([]byte("&a [*a, *a, *a]"))
	f.Add([]byte("limits: !!binary AAAA\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := node.ParseConfig("fuzz.yml", data)
		if err != nil {
			if !errors.Is(err, node.ErrConfig) {
				t.Fatalf("error does not wrap ErrConfig: %v", err)
			}
			if !strings.Contains(err.Error(), "fuzz.yml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("ParseConfig accepted a config that does not validate: %v", err)
		}
		out, err := yaml.Marshal(&c)
		if err != nil {
			t.Fatalf("accepted config does not marshal: %v", err)
		}
		again, err := node.ParseConfig("again.yml", out)
		if err != nil {
			t.Fatalf("marshalled config %q does not parse back: %v", out, err)
		}
		if !reflect.DeepEqual(normalize(c), normalize(again)) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v", c, again)
		}
	})
}

// normalize maps nil and empty lists to one value: YAML spells both "[]".
func normalize(c node.Config) node.Config {
	for _, l := range []*[]string{&c.Network.Listen, &c.Network.Announce, &c.Network.Relays} {
		if len(*l) == 0 {
			*l = nil
		}
	}
	return c
}
