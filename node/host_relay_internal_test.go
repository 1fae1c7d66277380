package node

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	ma "github.com/multiformats/go-multiaddr"
)

func randomPeer(t *testing.T) peer.ID {
	t.Helper()
	_, pub, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// The static relays' peer source clears the swarm's dial back-off of a
// relay the host is not connected to, so AutoRelay's next try really
// dials it. Without that, the back-off after failed dials (5s + tries² s,
// up to 5 minutes) kept a relay that had come back unused for minutes.
func TestStaticRelaySourceClearsDialBackoff(t *testing.T) {
	h, err := libp2p.New(libp2p.NoListenAddrs) // no mDNS, port mapping or DHT by default
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	sw, ok := h.Network().(*swarm.Swarm)
	if !ok {
		t.Fatalf("host network is %T, not a swarm", h.Network())
	}
	down, other := randomPeer(t), randomPeer(t)
	addr := ma.StringCast("/ip4/127.0.0.1/tcp/9")
	static := []peer.AddrInfo{{ID: down, Addrs: []ma.Multiaddr{addr}}, {ID: other, Addrs: []ma.Multiaddr{addr}}}
	for range 20 { // as many failed dials as a relay down for several minutes gets
		sw.Backoff().AddBackoff(down, addr)
	}
	if !sw.Backoff().Backoff(down, addr) {
		t.Fatal("the swarm holds no back-off for the relay")
	}

	var ref atomic.Pointer[swarm.Swarm]
	ref.Store(sw)
	var got []peer.AddrInfo
	for ai := range staticRelaySource(static, &ref)(context.Background(), 1) {
		got = append(got, ai)
	}
	if len(got) != 1 || got[0].ID != down {
		t.Fatalf("asked for 1 candidate, got %v", got)
	}
	if sw.Backoff().Backoff(down, addr) {
		t.Error("the relay is still in dial back-off after the peer source offered it: AutoRelay's dial would not be tried")
	}

	// Before libp2p.New has returned there is no swarm yet: the source
	// offers every relay all the same.
	got = nil
	for ai := range staticRelaySource(static, new(atomic.Pointer[swarm.Swarm]))(context.Background(), 5) {
		got = append(got, ai)
	}
	if len(got) != 2 {
		t.Errorf("asked for 5 candidates of 2 relays, got %v", got)
	}
}
