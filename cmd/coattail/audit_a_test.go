package main

// Found by checking the "Tokens" and "Peers and subscriptions" sections of
// docs/CLI.md against the binary: each test pins one place where they
// disagreed.

import (
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

// `peer remove --id` given the CIDv1 spelling says which peer it removed
// in base58, as docs/CLI.md says all output spells a peer id. It echoed
// --id as given ("Removed peer bafz...").
func TestPeerRemoveSaysBase58ID(t *testing.T) {
	t.Parallel()
	a, b := newInstance(t, "a"), newInstance(t, "b")
	a.start()
	b.start()
	b.addPeer(a)
	pid, err := peer.Decode(a.peerID())
	if err != nil {
		t.Fatal(err)
	}
	cid := peer.ToCid(pid).String()
	if out := b.mustRun("peer", "remove", "--id", cid); out != "Removed peer "+a.peerID()+"\n" {
		t.Errorf("peer remove --id %s printed %q, want %q", cid, out, "Removed peer "+a.peerID()+"\n")
	}
}
