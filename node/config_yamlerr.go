package node

import (
	"bytes"
	"strings"

	"gopkg.in/yaml.v3"
)

// yamlError is a yaml.v3 parse error of config b as ParseConfig reports it
// (without the "yaml: " prefix), with the line when yaml.v3 left it out:
// it does for an error on the first line ("found character that cannot
// start any token" for a tab there). Such an error is on line 1 when the
// first line alone gives it too. A tab on the line named gets a hint.
func yamlError(b []byte, err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if strings.HasPrefix(msg, "line ") || strings.Contains(msg, "\n") {
		return msg // has its line, or is a list of type errors with theirs
	}
	first, _, _ := bytes.Cut(b, []byte("\n"))
	var n yaml.Node
	if ferr := yaml.Unmarshal(first, &n); ferr == nil || strings.TrimPrefix(ferr.Error(), "yaml: ") != msg {
		return msg
	}
	msg = "line 1: " + msg
	if bytes.Contains(first, []byte("\t")) {
		msg += " (a tab: YAML indents with spaces only)"
	}
	return msg
}
