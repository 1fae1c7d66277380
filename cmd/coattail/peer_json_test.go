package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// peer show and peer list say a peer's connection is unknown while the
// service is not running (only it knows); with --json they said
// "connected": false, as if the peer were known to be unreachable. They
// say null now, and true or false only when the service answers.
func TestPeerJSONConnectedUnknownOffline(t *testing.T) {
	t.Parallel()
	a, b := newInstance(t, "a"), newInstance(t, "b")
	a.start()
	b.start()
	b.addPeer(a, "--performable", "x.y")
	id := a.peerID()
	connected := func() (shown, listed json.RawMessage) {
		t.Helper()
		var s map[string]json.RawMessage
		b.decodeJSON(b.mustRun("peer", "show", "--id", id, "--json"), &s)
		var l []map[string]json.RawMessage
		b.decodeJSON(b.mustRun("peer", "list", "--json"), &l)
		if len(l) != 1 {
			t.Fatalf("peer list --json: %d peers, want 1", len(l))
		}
		return s["connected"], l[0]["connected"]
	}
	row := func() string {
		t.Helper()
		for _, line := range strings.Split(b.mustRun("peer", "list"), "\n") {
			if strings.HasPrefix(line, id) {
				return line
			}
		}
		t.Fatalf("peer list has no row for %s", id)
		return ""
	}

	// The service knows: true or false.
	if r := row(); strings.Contains(r, "unknown") {
		t.Errorf("peer list with the service running: %q, want the connection known", r)
	}
	if shown, listed := connected(); (string(shown) != "false" && string(shown) != "true") || (string(listed) != "false" && string(listed) != "true") {
		t.Errorf("with the service running: peer show --json connected %s, peer list --json %s; want true or false", shown, listed)
	}

	b.mustRun("service", "stop")
	// No service: unknown, in the text and in JSON.
	if text := b.mustRun("peer", "show", "--id", id); !strings.Contains(text, "unknown (service not running)") {
		t.Errorf("peer show without a service:\n%s\nwant the connection unknown", text)
	}
	if r := row(); !strings.Contains(r, " unknown ") {
		t.Errorf("peer list without a service: %q, want the connection unknown", r)
	}
	if shown, listed := connected(); string(shown) != "null" || string(listed) != "null" {
		t.Errorf("without a service: peer show --json connected %s, peer list --json %s; want null (unknown)", shown, listed)
	}
}
