package main

import (
	"fmt"
	"strings"
	"testing"
)

// A peer reached over QUIC that is SIGKILLed and restarted on the same
// port answers the first packet on the old connection with a stateless
// reset (its new process derives the reset key from the same identity).
// A remote call that went out on that stale connection failed ("received
// a stateless reset") although both services were up; the peer never saw
// the request, so it is now sent once more on a new connection.
func TestRemoteCallAfterPeerRestartOverQUIC(t *testing.T) {
	t.Parallel()
	pub, caller := newInstance(t, "pub"), newInstance(t, "caller")
	for _, i := range []*instance{pub, caller} {
		i.setConfig("listen", fmt.Sprintf(`["/ip4/127.0.0.1/udp/%d/quic-v1"]`, freePort(t)))
	}
	pubPID := pub.start()
	caller.start()
	tok := pub.issue("--publishable", "orders.>")
	caller.mustRun("peer", "add", "--token", tok)
	// A connection exists, idle.
	caller.mustRun("action", "publish", "--peer", pub.peerID(), "--action", "orders.new", "--data", "1")
	for round := range 3 {
		killAndWait(t, pubPID)
		pubPID = pub.start()
		_, stderr, code := caller.run("action", "publish", "--peer", pub.peerID(), "--action", "orders.new", "--data", "2")
		if code != 0 {
			t.Fatalf("round %d: publish to a restarted peer: exit %d: %s", round, code, strings.TrimSpace(stderr))
		}
	}
}
