package node

import "testing"

// The "moved" mark keeps a subscription whose move to a direct connection
// still landed on the relay from being moved again in a loop; but a direct
// connection that appears while the move reconnects is a new chance, so it
// clears the mark and setStream checks the next stream again. Loops of
// other publishers are left alone.
func TestDirectConnectionDuringMoveRechecks(t *testing.T) {
	ss := &subscriberSide{loops: map[string]*subLoop{}}
	moving := &subLoop{publisher: "p"}
	other := &subLoop{publisher: "q"}
	ss.loops["a"], ss.loops["b"] = moving, other
	moving.moving = true
	if !ss.takeMoving(moving) || !moving.moved {
		t.Fatal("takeMoving did not mark the reconnection as a move")
	}
	other.moved = true
	ss.upgraded("p") // a direct connection to p appears while "a" reconnects
	if moving.moved {
		t.Error("a direct connection that appeared during the move left the next stream unchecked")
	}
	if !other.moved {
		t.Error("a direct connection to p changed a subscription at q")
	}
}
