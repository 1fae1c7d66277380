package node_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/coattail/coattail/node"
)

// A config file that sets nothing (empty, comments, an empty mapping) is
// told apart from one that sets anything, even a default value again.
func TestConfigSetsNothing(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		text string
		want bool
	}{
		{"", true},
		{"\n\n", true},
		{"# all defaults\n# network:\n#   listen: []\n", true},
		{"{}\n", true},
		{"~\n", true},
		{"network:\n  port_mapping: true\n", false},
		{"log:\n  level: info\n", false},
		{"network: [\n", false}, // invalid: LoadConfig says why
	} {
		path := filepath.Join(dir, "config.yml")
		if err := os.WriteFile(path, []byte(c.text), 0o600); err != nil {
			t.Fatal(err)
		}
		if got := node.ConfigSetsNothing(path); got != c.want {
			t.Errorf("ConfigSetsNothing(%q) = %v, want %v", c.text, got, c.want)
		}
	}
	if node.ConfigSetsNothing(filepath.Join(dir, "missing.yml")) {
		t.Error("a missing file sets nothing?")
	}
}
