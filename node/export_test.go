package node

import (
	"context"
	"time"

	ma "github.com/multiformats/go-multiaddr"
)

// PreferTCPRanker exposes the dial ranker to the external tests.
var PreferTCPRanker = preferTCPRanker

// PeerRecordTokenID returns the id of the token the node presents to peer
// id, through the cache every remote call uses.
func (n *Node) PeerRecordTokenID(id string) string {
	r, err := n.peerRecord(context.Background(), id)
	if err != nil {
		return ""
	}
	return r.TokenID
}

// SetFreshSubscription sets how long a new subscription survives a nudge
// answer saying its subscriber does not hold it; the returned func
// restores it.
func SetFreshSubscription(d time.Duration) func() {
	prev := freshSubscription
	freshSubscription = d
	return func() { freshSubscription = prev }
}

// SetConnGrace sets the connection manager's grace period of the nodes
// created afterwards; the returned func restores it.
func SetConnGrace(d time.Duration) func() {
	prev := connGrace
	connGrace = d
	return func() { connGrace = prev }
}

// HasProgress reports whether the subscriber keeps a progress record
// (last processed sequence) for subscription id.
func (n *Node) HasProgress(id string) bool {
	ok, err := n.db.Batching().Has(context.Background(), seqKey(id))
	return err == nil && ok
}

// SetHandlersDrain sets how long Close waits for handlers and subscription
// loops; the returned func restores it.
func SetHandlersDrain(d time.Duration) func() {
	prev := handlersDrain
	handlersDrain = d
	return func() { handlersDrain = prev }
}

// SetRelayCheckAfter sets how soon, and how often, a node looks for
// static relays that give it no relay address; the returned func
// restores it.
func SetRelayCheckAfter(d time.Duration) func() {
	prev := relayCheckAfter
	relayCheckAfter = d
	return func() { relayCheckAfter = prev }
}

// SetFreeSpace replaces how n's disk-space guard learns the free space
// (limits.min_free_disk must be set and the datastore on disk) and makes
// it look again at once.
func SetFreeSpace(n *Node, free func() (uint64, error)) {
	n.space.mu.Lock()
	defer n.space.mu.Unlock()
	n.space.free, n.space.checked = free, time.Time{}
}

// TreatRelayAddrsAsPublic makes the static-relay check take every address
// (loopback too) for a public one, until the returned func is called.
func TreatRelayAddrsAsPublic() func() {
	prev := relayAddrPublic
	relayAddrPublic = func(ma.Multiaddr) bool { return true }
	return func() { relayAddrPublic = prev }
}
