package node

import (
	"context"
	"sync/atomic"
	"time"
)

// SetSaveSeqFault makes every save of a subscription's progress fail with
// the error fail returns (nil: saved); the returned func restores normal
// saving.
func SetSaveSeqFault(fail func(id string) error) func() {
	var on atomic.Bool
	on.Store(true)
	f := func(id string) error {
		if !on.Load() {
			return nil
		}
		return fail(id)
	}
	saveSeqFault.Store(&f)
	return func() { on.Store(false) }
}

// Nudge runs one nudge of the publisher's nudger: it asks subscriber to
// reconnect the subscriptions ids.
func (n *Node) Nudge(ctx context.Context, subscriber string, ids []string) {
	n.net.nudge(ctx, subscriber, ids)
}

// SetResumedHook makes every subscription loop call f once its stream to
// the publisher is resumed, before the loop records it as its stream; the
// returned func removes it.
func SetResumedHook(f func()) func() {
	testHookResumed.Store(&f)
	return func() { testHookResumed.Store(nil) }
}

// CountQueueSnapshots counts the snapshots of n's queues that Status,
// Subscribers and the metrics take from now on (topics.Queues.Status);
// the returned func stops counting.
func CountQueueSnapshots(n *Node) (count func() int64, stop func()) {
	var c atomic.Int64
	f := func(m *Node) {
		if m == n {
			c.Add(1)
		}
	}
	testHookQueueSnapshot.Store(&f)
	return c.Load, func() { testHookQueueSnapshot.Store(nil) }
}

// SetSubscriberAddrSweep sets how often the nodes started afterwards
// forget the remembered addresses of former subscribers; the returned func
// restores it.
func SetSubscriberAddrSweep(d time.Duration) func() {
	prev := subscriberAddrSweep
	subscriberAddrSweep = d
	return func() { subscriberAddrSweep = prev }
}

// RememberedSubscriberAddrs returns where n's /subs/addrs says the peer
// id listened when it last subscribed (nil if nowhere).
func (n *Node) RememberedSubscriberAddrs(id string) []string {
	addrs, _ := n.net.subAddrs.Get(context.Background(), id)
	return addrs
}

// RemembersSubscriber reports whether n keeps, in /subs/addrs, where the
// peer id listened when it subscribed.
func (n *Node) RemembersSubscriber(id string) bool {
	ok, err := n.net.subAddrs.Has(context.Background(), id)
	return err == nil && ok
}
