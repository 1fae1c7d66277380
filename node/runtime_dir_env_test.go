package node_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
)

// A relative COATTAIL_RUNTIME_DIR names a directory from the service's
// working directory, where it registers; programs run in the instance
// directory, so they are told it absolute: as given, a program's
// `coattail service status` (or service start --headless) looked in
// another directory, where the service it ran under was not.
func TestProgramRuntimeDirIsAbsolute(t *testing.T) {
	t.Setenv(node.EnvRuntimeDir, "rt-relative")
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	n := newTestNode(t, withQuietLog())
	writeAction(t, n, "rtdir", "#!/bin/sh\nprintf '{\"dir\":\"%s\"}' \"$COATTAIL_RUNTIME_DIR\"\n")
	res, err := n.Perform(testCtx(t), localapi.PerformRequest{Action: "rtdir"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out struct{ Dir string }
	if err := json.Unmarshal(res.Output, &out); err != nil {
		t.Fatalf("output %q: %v", res.Output, err)
	}
	if want := filepath.Join(wd, "rt-relative"); out.Dir != want {
		t.Errorf("COATTAIL_RUNTIME_DIR=rt-relative: a program got %q, want %q (the directory the service registers in)", out.Dir, want)
	}
}
