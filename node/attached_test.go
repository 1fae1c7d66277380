package node

import (
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
)

// A subscription's connection stays protected from the connection
// manager while it has a deliverer: a replaced deliverer ending does not
// release the protection its replacement holds; the last one, or a kick,
// does.
func TestAttachedProtection(t *testing.T) {
	cm, err := connmgr.NewConnManager(1, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer cm.Close()
	a := newAttached(cm)
	p := peer.ID("subscriber")
	tag := subscriptionTag("s")
	cancelled := 0
	cancel := func() { cancelled++ }
	first := a.attach("s", cancel, "direct", p)
	second := a.attach("s", cancel, "direct", p) // the subscriber resumed
	if cancelled != 1 {
		t.Fatalf("the replaced deliverer was cancelled %d times, want once", cancelled)
	}
	a.detach("s", first) // the replaced one ends after its replacement began
	if !cm.IsProtected(p, tag) {
		t.Fatal("the replaced deliverer's end released its replacement's protection")
	}
	a.detach("s", second)
	if cm.IsProtected(p, tag) {
		t.Fatal("still protected with no deliverer")
	}
	a.attach("s", cancel, "direct", p)
	a.kick("s")
	if cm.IsProtected(p, tag) {
		t.Fatal("still protected after the subscription was kicked")
	}
}
