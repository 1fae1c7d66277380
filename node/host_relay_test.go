package node_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/libp2p/go-libp2p/core/network"
)

// A node with static relays starts with its AutoRelay options (a peer
// source of its own, which libp2p refuses next to WithStaticRelays), and
// AutoRelay dials the relays at once; each is listed twice, at two
// addresses, and is one relay.
func TestStaticRelaysAreDialled(t *testing.T) {
	relay := newTestNode(t, withQuietLog(), func(o *node.Options) { o.Relay = true })
	var relays []string
	for _, a := range relay.Host().Addrs() {
		relays = append(relays, fmt.Sprintf("%s/p2p/%s", a, relay.ID()))
	}
	if len(relays) < 2 {
		t.Fatalf("relay listens on %v, want a TCP and a QUIC address", relay.Host().Addrs())
	}
	n := newTestNode(t, withQuietLog(), func(o *node.Options) { o.Config.Network.Relays = relays })
	checkFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if c := relay.Host().Network().Connectedness(n.ID()); c != network.Connected {
			return fmt.Errorf("relay's connectedness to the node: %v", c)
		}
		return nil
	})
}
