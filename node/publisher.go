package node

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"time"

	"github.com/coattail/coattail/auth"
	"github.com/coattail/coattail/datastore"
	"github.com/coattail/coattail/node/internal/jsonx"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
	"github.com/coattail/coattail/topics"
	"github.com/google/uuid"
	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	"github.com/libp2p/go-libp2p/p2p/protocol/identify"
)

// Delivery tuning. The window bounds the deliveries a subscriber holds
// unacked (what a reconnect may resend); a frame carries up to
// deliverBatch messages or deliverBytes bytes. Bytes in flight are bounded
// by the stream's flow control, not by the window. A subscriber acks only
// once its progress is durable (an fsync), so the window must cover that
// round trip at full rate: 4096 stalled the pipe (+14 % at 128 B over TCP
// with 65536, same-run A/B with `coattail bench`).
const (
	deliverWindow = 65536
	deliverBatch  = 512
	deliverBytes  = 256 << 10
	// limitedDeliverWindow is the window over a limited relayed
	// connection (docs/NAT.md).
	limitedDeliverWindow = 8
)

// subscriberAddrTTL is how long a publisher keeps a subscriber's addresses
// in its peerstore after it was last seen (the peerstore is in memory;
// /subs/addrs keeps them across restarts, and each start and each nudge
// of a subscriber not connected restores them for this long again). No other address is given this TTL, which tells
// the addresses remembered from an earlier connection (restored at start)
// from those identify has just given: libp2p's own TTLs.
const subscriberAddrTTL = 7 * 24 * time.Hour

// identifyWait bounds how long a subscribe waits for identify to learn
// where a newly connected subscriber listens (rememberSubscriber).
const identifyWait = 5 * time.Second

// rememberSubscriber keeps where a subscriber listens, in the peerstore
// for longer than libp2p's default and in the datastore (/subs/addrs), so
// a restarted publisher can nudge it to reconnect (deliver protocol) even
// when the subscriber's address is in no token.
//
// What is remembered is where it listens now, as identify of c tells:
// addresses remembered from an earlier connection that identify no longer
// gives are forgotten (the subscriber moved). They were remembered again
// with every subscribe, and restored at every start, so a subscriber that
// moved while the publisher was stopped left its old addresses for good,
// up to libp2p's 64 per peer, and each nudge dialled them all.
func (nw *netsvc) rememberSubscriber(ctx context.Context, c network.Conn) {
	p := c.RemotePeer()
	ps := nw.host.Peerstore()
	// A subscriber that subscribes as soon as it has connected can do so
	// before identify has told this host where it listens.
	identified := false
	if ids, ok := nw.host.(interface{ IDService() identify.IDService }); ok {
		t := time.NewTimer(identifyWait)
		select {
		case <-ids.IDService().IdentifyWait(c):
			identified = !c.IsClosed()
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	nw.subAddrsMu.Lock()
	defer nw.subAddrsMu.Unlock()
	before := ps.Addrs(p)
	if identified {
		ps.UpdateAddrs(p, subscriberAddrTTL, 0)
	}
	addrs := ps.Addrs(p)
	if len(addrs) == 0 {
		// Identify gave none (or did not answer): those remembered stay.
		ps.AddAddrs(p, before, subscriberAddrTTL)
		return
	}
	ps.AddAddrs(p, addrs, subscriberAddrTTL)
	if err := nw.subAddrs.Put(ctx, p.String(), addrStrings(addrs)); err != nil {
		nw.n.log.Warn("cannot persist subscriber addresses", "subscriber", p.String(), "err", err)
	}
}

// recallSubscriber puts where subscriber pid listened when it last
// subscribed (/subs/addrs) back into the peerstore for subscriberAddrTTL,
// unless it is connected: a nudge dials them. While it was connected,
// identify gave those addresses libp2p's connected TTL, longer than ours,
// and at the disconnect libp2p cut that to 15 minutes, so a subscriber
// away for longer left nothing to dial, and one that cannot dial this
// host itself (behind it, a NAT without a relay) got nothing more until
// this publisher restarted.
func (nw *netsvc) recallSubscriber(ctx context.Context, pid peer.ID) {
	if nw.host.Network().Connectedness(pid) == network.Connected {
		return
	}
	nw.subAddrsMu.Lock()
	defer nw.subAddrsMu.Unlock()
	addrs, err := nw.subAddrs.Get(ctx, pid.String())
	if err != nil {
		return
	}
	nw.host.Peerstore().AddAddrs(pid, parseAddrs(addrs), subscriberAddrTTL)
}

// subscriberAddrSweep is how often a running publisher forgets the
// remembered addresses of peers that no longer hold a subscription here,
// as each start does (sweepSubscribers). A variable for tests.
var subscriberAddrSweep = time.Hour

// restoreSubscribers loads the persisted subscriber addresses into the
// peerstore at start, once those of former subscribers are deleted
// (sweepSubscribers).
func (nw *netsvc) restoreSubscribers(ctx context.Context) {
	for _, e := range nw.sweepSubscribers(ctx) {
		if pid, err := peer.Decode(e.ID); err == nil {
			nw.host.Peerstore().AddAddrs(pid, parseAddrs(e.Value), subscriberAddrTTL)
		}
	}
}

// sweepSubscribers deletes the remembered addresses of every peer that no
// longer holds a subscription here (it unsubscribed, was revoked or
// removed), from /subs/addrs and from the peerstore, and returns the
// entries of the others. Only a start did: a running publisher kept one
// entry for every peer that had subscribed since.
func (nw *netsvc) sweepSubscribers(ctx context.Context) []datastore.Entry[[]string] {
	// Held from the list of subscriptions to the deletions: a peer that
	// subscribes meanwhile is remembered (rememberSubscriber) after them.
	nw.subAddrsMu.Lock()
	defer nw.subAddrsMu.Unlock()
	entries, err := nw.subAddrs.Entries(ctx)
	if err != nil {
		nw.n.log.Warn("cannot load subscriber addresses", "err", err)
		return nil
	}
	holds := make(map[string]bool)
	for _, q := range nw.n.queues.Status() {
		holds[q.Subscriber] = true
	}
	kept := entries[:0]
	for _, e := range entries {
		pid, err := peer.Decode(e.ID)
		if err == nil && holds[pid.String()] {
			kept = append(kept, e)
			continue
		}
		if err := nw.subAddrs.Delete(ctx, e.ID); err != nil {
			nw.n.log.Warn("cannot delete the addresses of a former subscriber", "subscriber", e.ID, "err", err)
		}
		if pid != "" {
			nw.host.Peerstore().UpdateAddrs(pid, subscriberAddrTTL, 0)
		}
	}
	return kept
}

// sweepSubscribersEvery runs sweepSubscribers every d until ctx ends.
func (nw *netsvc) sweepSubscribersEvery(ctx context.Context, d time.Duration) {
	tick := time.NewTicker(d)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			nw.sweepSubscribers(ctx)
		}
	}
}

// ErrHopLimit stops endless cascades.
var ErrHopLimit = errors.New("node: cascade hop limit reached")

// attached tracks the live deliverer of each subscription so a
// reconnecting subscriber replaces a stale stream instead of racing it. It
// also keeps the connection manager from trimming the connection of each
// current deliverer (subscriptionTag): protected when attached, released
// when the attachment goes, never by a deliverer that was replaced.
type attached struct {
	cm   connmgr.ConnManager // nil in tests that need no protection
	mu   sync.Mutex
	subs map[string]*attachment
}

type attachment struct {
	cancel context.CancelFunc
	path   string  // how the stream reaches the subscriber (pathOf)
	peer   peer.ID // the subscriber
}

func newAttached(cm connmgr.ConnManager) *attached {
	return &attached{cm: cm, subs: map[string]*attachment{}}
}

func (a *attached) attach(id string, cancel context.CancelFunc, path string, p peer.ID) *attachment {
	at := &attachment{cancel: cancel, path: path, peer: p}
	a.mu.Lock()
	if old := a.subs[id]; old != nil {
		old.cancel()
		a.release(id, old)
	}
	a.subs[id] = at
	if a.cm != nil {
		a.cm.Protect(p, subscriptionTag(id))
	}
	a.mu.Unlock()
	return at
}

// release drops the protection at holds. Called with a.mu held.
func (a *attached) release(id string, at *attachment) {
	if a.cm != nil {
		a.cm.Unprotect(at.peer, subscriptionTag(id))
	}
}

// detach removes at if it is still the current deliverer of id.
func (a *attached) detach(id string, at *attachment) {
	a.mu.Lock()
	if a.subs[id] == at {
		delete(a.subs, id)
		a.release(id, at)
	}
	a.mu.Unlock()
}

func (a *attached) kick(id string) {
	a.mu.Lock()
	if at := a.subs[id]; at != nil {
		at.cancel()
		delete(a.subs, id)
		a.release(id, at)
	}
	a.mu.Unlock()
}

// path reports whether id has a live deliverer and how its stream reaches
// the subscriber: "direct" or "relayed" ("" when none).
func (a *attached) path(id string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if at := a.subs[id]; at != nil {
		return at.path
	}
	return ""
}

// publication is one message for the subscribers of Subject.
type publication struct {
	Subject string
	Data    json.RawMessage
	Hop     int
}

// publish queues publications for every matching subscription (only those
// of the subscriber peer ids in to, when to is not empty) and returns how
// many queue entries it wrote, once they are durable, and how many it
// pushed out of full queues (drop_oldest).
func (n *Node) publish(ctx context.Context, pubs []publication, to []string) (topics.Published, error) {
	if n.isClosed() {
		return topics.Published{}, ErrClosed
	}
	if err := checkPeerIDs(to); err != nil {
		return topics.Published{}, err
	}
	msgs := make([]topics.Message, 0, len(pubs))
	now := time.Now().UnixNano()
	for _, p := range pubs {
		if err := n.checkHop(p.Subject, p.Hop, "not published"); err != nil {
			return topics.Published{}, err
		}
		msgs = append(msgs, topics.Message{Subject: p.Subject, Data: p.Data, Hop: uint32(p.Hop), Time: now})
	}
	var filter func(topics.Subscription) bool
	if len(to) > 0 {
		only := make(map[string]bool, len(to))
		for _, t := range to {
			only[t] = true
		}
		filter = func(s topics.Subscription) bool { return only[s.Subscriber] }
	}
	res, err := n.queues.PublishOutcome(ctx, msgs, filter)
	if err != nil {
		// The caller is told; the operator should be too (a subscriber
		// down or too slow for this long, a disk filling). Sampled.
		why := ""
		switch {
		case errors.Is(err, topics.ErrQueueFull):
			why = "a subscription's queue is full"
		case errors.Is(err, topics.ErrNoSpace):
			why = "the disk is almost full"
		}
		if why != "" {
			if ok, extra := n.noisy.allow(); ok {
				n.log.Warn("publication refused: "+why, append([]any{"subject", msgs[0].Subject, "err", err}, extra...)...)
			}
		}
		return topics.Published{}, err
	}
	n.stats.published.Add(uint64(len(pubs)))
	return res, nil
}

// Publish publishes data to the subscribers of subject from this instance
// and returns the number of subscription queues that took it, once durable.
// Called with the context of an in-process receiver, the publication
// continues that receiver's cascade one hop further (limits.max_hops), as
// do PublishBatch, PublishRequest and Perform.
func (n *Node) Publish(ctx context.Context, subject string, data json.RawMessage) (int, error) {
	r, err := n.PublishRequest(ctx, localapi.PublishRequest{Action: subject, Data: data})
	return r.Published, err
}

// PublishBatch publishes many messages in one durable group commit; it is
// the fast path for a program that publishes at a high rate.
func (n *Node) PublishBatch(ctx context.Context, msgs []Message) (int, error) {
	pubs := make([]publication, 0, len(msgs))
	hop := cascadeHop(ctx, 0)
	for _, m := range msgs {
		if err := topics.ValidateSubject(m.Subject); err != nil {
			return 0, err
		}
		if len(m.Data) > int(n.cfg.Limits.MaxPayload) {
			return 0, fmt.Errorf("%w: data is %d bytes, over limits.max_payload %v", ErrBadRequest, len(m.Data), n.cfg.Limits.MaxPayload)
		}
		if !jsonx.Valid(m.Data) {
			return 0, fmt.Errorf("%w: data for %q is not valid JSON in UTF-8", ErrBadRequest, m.Subject)
		}
		pubs = append(pubs, publication{Subject: m.Subject, Data: m.Data, Hop: hop})
	}
	res, err := n.publish(ctx, pubs, nil)
	if len(pubs) > 0 {
		n.noteHopLimit(ctx, err, nil, "publish", pubs[0].Subject, hop)
	}
	return res.Queued, err
}

// Message is one publication for PublishBatch.
type Message struct {
	Subject string
	Data    json.RawMessage
}

// handleSubscribe serves /coattail/subscribe: it creates or resumes a
// subscription, then pushes its queue down the stream with an ack window
// until the stream or the subscription ends.
func (nw *netsvc) handleSubscribe(ctx context.Context, s *session) error {
	var req wire.SubscribeRequest
	if err := readRequest(s, &req); err != nil {
		return err
	}
	// 1.1.0 subscribers say how large a frame they read, and take a
	// publication too large for one without its data; 1.0.0 ones read
	// wire.DefaultMaxFrame (unless configured otherwise, which they cannot
	// tell) and get every publication whole.
	v11 := s.s.Protocol() == wire.ProtoSubscribe11
	if req.MaxFrame != 0 && !v11 {
		return wire.Errorf(wire.CodeBadRequest, "max_frame is a key of %s, not of %s", wire.ProtoSubscribe11, s.s.Protocol())
	}
	n := nw.n
	var sub topics.Subscription
	if req.SubscriptionID == "" {
		if err := topics.ValidatePattern(req.Pattern); err != nil {
			return err
		}
		if !s.grant.CanSubscribe(req.Pattern) {
			return wire.Errorf(wire.CodeForbidden, "token %s does not allow subscribing to %q", s.grant.TokenID, req.Pattern)
		}
		// The name is kept with the subscription, in memory and listed
		// (subscribers list, metrics): a subscriber sends its receiver's
		// name, a subject, never a frame's worth of anything.
		if err := topics.ValidateSubject(req.Receiver); err != nil {
			return fmt.Errorf("%w: receiver name: %w", ErrBadRequest, err)
		}
		sub = topics.Subscription{ID: uuid.NewString(), Subscriber: s.peer.String(), Pattern: req.Pattern,
			TokenID: s.grant.TokenID, Receiver: req.Receiver, CreatedAt: time.Now().UTC()}
		if err := nw.addSubscription(ctx, sub); err != nil {
			return err
		}
		if s.grant.Revoked() {
			// Revoked while the subscription was being added: the
			// revocation's clean-up may have run before it existed.
			_, _ = n.queues.RemoveSubscription(context.Background(), sub.ID)
			return wire.Errorf(wire.CodeUnauthorized, "token %s was revoked", s.grant.TokenID)
		}
		// A peer can create (and delete) subscriptions at its rate
		// limit: sampled, as the other lines a peer causes at will.
		if ok, extra := n.noisy.allow(); ok {
			n.log.Info("subscription created", append([]any{"subscription", sub.ID, "subscriber", sub.Subscriber, "pattern", sub.Pattern, "token_id", sub.TokenID}, extra...)...)
		}
	} else {
		var ok bool
		sub, ok = n.queues.Subscription(req.SubscriptionID)
		if !ok || sub.Subscriber != s.peer.String() {
			return wire.Errorf(wire.CodeNotFound, "subscription %s does not exist at %s (it was revoked or removed)", req.SubscriptionID, n.id)
		}
		if !s.grant.CanSubscribe(sub.Pattern) {
			_, _ = n.queues.RemoveSubscription(ctx, sub.ID)
			return wire.Errorf(wire.CodeForbidden, "token %s no longer allows subscribing to %q; subscription %s removed", s.grant.TokenID, sub.Pattern, sub.ID)
		}
		if sub.TokenID != s.grant.TokenID {
			// The subscriber rotated its token (peer add with a new one):
			// the subscription is the new token's from now on, so that
			// the old one's expiry or revocation no longer ends it.
			old := sub.TokenID
			rebound, err := n.queues.Rebind(ctx, sub.ID, s.grant.TokenID)
			if err != nil && rebound.ID == "" {
				return err
			}
			if err != nil {
				n.log.Warn("subscription rebound to a new token, perhaps not durably", "subscription", sub.ID, "err", err)
			}
			sub = rebound
			if s.grant.Revoked() {
				// Revoked while it was rebound: the revocation's clean-up
				// may have looked for the old token id.
				_, _ = n.queues.RemoveSubscription(context.Background(), sub.ID)
				return wire.Errorf(wire.CodeUnauthorized, "token %s was revoked", s.grant.TokenID)
			}
			n.log.Info("subscription now held with the subscriber's new token", "subscription", sub.ID, "subscriber", sub.Subscriber, "token_id", sub.TokenID, "was", old)
		}
	}
	next, err := n.queues.Resume(sub.ID, req.ResumeAfter)
	if err != nil {
		return err
	}
	window := deliverWindow
	if req.Window > 0 && req.Window < window {
		window = req.Window
	}
	if s.s.Conn().Stat().Limited {
		// A limited relay circuit is cut after a fixed number of bytes,
		// losing whatever was in flight: a large window would resend more
		// than a circuit carries, and the backlog would never drain.
		window = min(window, limitedDeliverWindow)
	}
	// Attached before the answer: once the subscriber has it, `subscribers
	// list` here shows the subscription connected (it showed it not
	// connected for a moment after the subscribe returned).
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	at := nw.attached.attach(sub.ID, cancel, pathOf(s.s.Conn()), s.peer)
	defer nw.attached.detach(sub.ID, at)
	// Remembered before the answer: once the subscriber has it, a
	// publisher that stops (a service stop right after the subscribe)
	// still finds the subscriber's addresses after its restart.
	nw.rememberSubscriber(ctx, s.s.Conn())
	if err := s.send(wire.TResult, wire.SubscribeResponse{SubscriptionID: sub.ID, NextSeq: next, Window: window}); err != nil {
		return err
	}
	_ = s.s.SetDeadline(time.Time{})
	if s.release != nil {
		s.release()
	}
	maxFrame := wire.DefaultMaxFrame
	if v11 && req.MaxFrame > 0 {
		maxFrame = req.MaxFrame
	}
	return nw.deliver(ctx, s, sub, next-1, window, maxFrame, v11)
}

// checkHop refuses a perform or publication of subject that a cascade
// brought past limits.max_hops (logged: a loop is being cut), saying what
// was not done, and a negative hop.
func (n *Node) checkHop(subject string, hop int, notDone string) error {
	if hop < 0 {
		return fmt.Errorf("%w: hop %d is negative", ErrBadRequest, hop)
	}
	if hop > n.cfg.Limits.MaxHops {
		err := fmt.Errorf("%w: %q arrived after %d hops (limits.max_hops %d); %s, to stop a cascade loop", ErrHopLimit, subject, hop, n.cfg.Limits.MaxHops, notDone)
		if ok, extra := n.noisy.allow(); ok {
			n.log.Error("cascade stopped", append([]any{"subject", subject, "hop", hop, "err", err}, extra...)...)
		}
		return err
	}
	return nil
}

// checkPeerIDs reports the first of ids (a --to list) that is not a peer
// id: a typo would otherwise publish to nobody without a word.
func checkPeerIDs(ids []string) error {
	for _, id := range ids {
		if _, err := peer.Decode(id); err != nil {
			return fmt.Errorf("%w: --to %q is not a peer id (see: coattail subscribers list)", ErrBadRequest, id)
		}
	}
	return nil
}

// addSubscription adds sub unless its subscriber already holds
// limits.max_subscriptions_per_peer subscriptions here.
func (nw *netsvc) addSubscription(ctx context.Context, sub topics.Subscription) error {
	nw.createMu.Lock()
	defer nw.createMu.Unlock()
	held := 0
	for _, q := range nw.n.queues.Status() {
		if q.Subscriber == sub.Subscriber {
			held++
		}
	}
	if held >= nw.n.cfg.Limits.MaxSubscriptionsPerPeer {
		return wire.Errorf(wire.CodeForbidden, "your peer already holds %d subscriptions here (limits.max_subscriptions_per_peer)", held)
	}
	return nw.n.queues.AddSubscription(ctx, sub)
}

// deliver pushes sub's queue down s: frames of up to deliverBatch
// messages that fit the subscriber's maxFrame, at most window unacked,
// acks read concurrently. It returns when the stream fails, the grant is
// revoked or expires, or a newer stream for the same subscription takes
// over (ctx, which the caller attached as sub's deliverer, ends).
func (nw *netsvc) deliver(ctx context.Context, s *session, sub topics.Subscription, sent uint64, window, maxFrame int, omit bool) error {
	n := nw.n
	// Replaced by a newer stream of the same subscription, kicked, or the
	// node closing: the stream ends at once, also while a write waits for
	// a subscriber that no longer reads it (up to stream_timeout).
	defer context.AfterFunc(ctx, func() { _ = s.s.Reset() })()
	timeout := n.cfg.Limits.StreamTimeout

	var mu sync.Mutex
	acked := sent
	// waitingSince is when the deliveries in flight last saw progress: the
	// first of them was sent with nothing in flight, or an ack moved
	// acked forward. The stream is cut stream_timeout after it. An ack
	// that acks nothing new, or new deliveries sent meanwhile, do not
	// postpone it: a peer repeating an old ack, or a publisher that keeps
	// publishing, would otherwise hold the stream and its window for ever.
	var waitingSince time.Time
	ackCh := make(chan struct{}, 1)
	ackErr := make(chan error, 1)
	go func() {
		for {
			t, payload, err := s.r.Next()
			if err != nil {
				ackErr <- err
				return
			}
			if t != wire.TAck {
				ackErr <- wire.Errorf(wire.CodeBadRequest, "expected an ack frame, got type %d", t)
				return
			}
			id, seq, err := wire.DecodeAck(payload)
			if err != nil {
				ackErr <- err
				return
			}
			mu.Lock()
			if id != sub.ID || seq > sent || seq < acked {
				mu.Unlock()
				ackErr <- wire.Errorf(wire.CodeBadRequest, "ack %d for %s is outside what was sent", seq, id)
				return
			}
			if seq == acked {
				// Nothing new (a repeated ack): nothing to release.
				mu.Unlock()
				continue
			}
			acked = seq
			waitingSince = time.Now()
			mu.Unlock()
			if err := n.queues.Ack(sub.ID, seq); err != nil {
				ackErr <- err
				return
			}
			select {
			case ackCh <- struct{}{}:
			default:
			}
		}
	}()

	// Expiry with the leeway Verify allows: a subscribe stream it accepted
	// just after exp must not lose its subscription at once.
	var expire <-chan time.Time
	if !s.grant.Expires.IsZero() {
		t := time.NewTimer(time.Until(s.grant.Expires.Add(auth.Leeway)))
		defer t.Stop()
		expire = t.C
	}
	// rebound is the end of a stream whose token expired or was revoked
	// after the subscription was rebound to another token (the
	// subscriber rotated and resumed on a newer stream): only this
	// stream ends, and the subscriber is not told the subscription is
	// gone. nil when the subscription is still this token's.
	rebound := func() error {
		if now, ok := n.queues.Subscription(sub.ID); ok && now.TokenID != s.grant.TokenID {
			return wire.Errorf(wire.CodeTimeout, "token %s of this stream ended; subscription %s is held with token %s now", s.grant.TokenID, sub.ID, now.TokenID)
		}
		return nil
	}
	ackTimer := time.NewTimer(timeout)
	defer ackTimer.Stop()
	var buf []byte
	deliveries := make([]wire.Delivery, 0, deliverBatch)
	// Read a frame's worth of subject and data bytes, leaving room for the
	// frame's own encoding (deliveryOverhead), so that a subscriber whose
	// max_payload is small gets frames it reads: it refuses a larger one,
	// and would then be sent the same frame again for ever.
	// Over a limited relay circuit, one delivery per frame: the relay cuts
	// the circuit after so many bytes, and a subscriber only processes
	// whole frames, so a frame of several deliveries larger than what a
	// circuit carries would be cut every time and sent again on the next,
	// for ever; one at a time, each that crosses is processed and saved.
	// A single publication larger than a circuit carries would be the
	// same: it goes without its data (a 1.1.0 subscriber parks it as a
	// dead letter), so that what is queued behind it moves on.
	perFrame := deliverBatch
	circuitLimit := 0
	if s.s.Conn().Stat().Limited {
		perFrame = 1
		if l := circuitFrameLimit(s.s.Conn()); omit && l > 0 && l < maxFrame {
			circuitLimit, maxFrame = l, l
		}
	}
	budget := max(1, min(deliverBytes, maxFrame-deliveryOverhead))
	for {
		if ctx.Err() != nil {
			// Replaced (above): stop now, not once the window is full or
			// the queue empty.
			return nil
		}
		mu.Lock()
		inflight := sent - acked
		since := waitingSince
		mu.Unlock()
		var items []topics.Item
		if inflight < uint64(window) {
			var err error
			items, err = n.queues.Read(sub.ID, sent, min(perFrame, window-int(inflight)), budget)
			if errors.Is(err, topics.ErrNoSubscription) {
				// Removed here (revoked, its token revoked,
				// unsubscribed) while it streamed: say so as a resume
				// would, rather than "topics: no such subscription".
				return wire.Errorf(wire.CodeNotFound, "subscription %s was revoked or removed at %s", sub.ID, n.id)
			}
			if err != nil {
				return err
			}
		}
		if len(items) > 0 {
			deliveries = deliveries[:0]
			for _, it := range items {
				deliveries = append(deliveries, wire.Delivery{SubscriptionID: sub.ID, Seq: it.Seq,
					Publication: wire.Publication{Subject: it.Message.Subject, Data: it.Message.Data, Hop: it.Message.Hop, Time: it.Message.Time}})
			}
			last := items[len(items)-1].Seq
			// Counted as sent before it is written: a fast subscriber's
			// ack may arrive before Flush returns.
			mu.Lock()
			if sent == acked {
				waitingSince = time.Now()
			}
			sent = last
			mu.Unlock()
			_ = s.s.SetWriteDeadline(time.Now().Add(timeout))
			s.wmu.Lock()
			var err error
			buf, err = writeDeliveries(s.w, buf, deliveries, maxFrame, omit, func(d *wire.Delivery) {
				// The subscriber's limit decides how often: sampled.
				if ok, extra := n.noisy.allow(); ok {
					if circuitLimit > 0 {
						n.log.Warn("publication larger than the relay circuit to the subscriber carries; sent without its data (the subscriber parks it as a dead letter)",
							append([]any{"subscription", sub.ID, "subscriber", sub.Subscriber, "seq", d.Seq, "subject", d.Subject,
								"bytes", len(d.Data), "circuit_max_frame", circuitLimit}, extra...)...)
						return
					}
					n.log.Warn("publication larger than the subscriber accepts; sent without its data (the subscriber parks it as a dead letter)",
						append([]any{"subscription", sub.ID, "subscriber", sub.Subscriber, "seq", d.Seq, "subject", d.Subject,
							"bytes", len(d.Data), "subscriber_max_frame", maxFrame}, extra...)...)
				}
			})
			if err == nil {
				err = s.w.Flush()
			}
			s.wmu.Unlock()
			if err != nil {
				return err
			}
			n.queues.MarkSent(sub.ID, last)
			continue
		}
		var wait <-chan struct{}
		if inflight < uint64(window) {
			w, err := n.queues.Wait(sub.ID)
			if err != nil {
				return err
			}
			wait = w
		}
		// Re-check after arming the wait: a publish may have landed between
		// Read and Wait.
		if wait != nil {
			if more, err := n.queues.Read(sub.ID, sent, 1, 1); err == nil && len(more) > 0 {
				continue
			}
		}
		var ackTimeout <-chan time.Time
		if inflight > 0 {
			ackTimer.Reset(time.Until(since.Add(timeout)))
			ackTimeout = ackTimer.C
		}
		select {
		case <-wait:
		case <-ackCh:
		case err := <-ackErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-ackTimeout:
			return wire.Errorf(wire.CodeTimeout, "no ack for %v", timeout)
		case <-s.grant.Done():
			if err := rebound(); err != nil {
				return err
			}
			return wire.Errorf(wire.CodeUnauthorized, "token %s was revoked", s.grant.TokenID)
		case <-expire:
			if err := rebound(); err != nil {
				return err
			}
			_, _ = n.queues.RemoveSubscription(context.Background(), sub.ID)
			n.log.Info("subscription removed: token expired", "subscription", sub.ID, "token_id", sub.TokenID)
			return wire.Errorf(wire.CodeUnauthorized, "token %s expired; subscription %s removed", s.grant.TokenID, sub.ID)
		case <-ctx.Done():
			_ = s.s.Reset()
			return nil
		}
	}
}

// circuitMargin is what a relay circuit is taken to carry towards the
// subscriber besides the delivery that has to cross it: the security
// handshake, protocol negotiation, identify, pings, the subscribe answer
// and framing. A fresh circuit (the subscriber opens one after each cut)
// carries a few KiB of these: a 56 KiB publication crossed a fresh 64 KiB
// circuit on loopback; twice that leaves room for hosts with many
// addresses.
const circuitMargin = 16 << 10

// circuitFrameLimit is the largest delivery frame that crosses c, a
// limited relay circuit, on a fresh circuit: the relay's data limit (it
// cuts the circuit after so many bytes each way) less circuitMargin, or
// half the limit when that is smaller. 0: c has no data limit.
func circuitFrameLimit(c network.Conn) int {
	data, _ := c.Stat().Extra[client.StatLimitData].(uint64)
	if data == 0 {
		return 0
	}
	return int(min(data-min(circuitMargin, data/2), math.MaxInt32))
}

// deliveryOverhead bounds what a TDeliver frame holds beyond its items'
// subjects and data: the type byte, mode, count and subscription id, and
// per item its sequence delta, hop, time and the two lengths.
const deliveryOverhead = 1 + 1 + binary.MaxVarintLen64 + topics.MaxSubscriptionIDLen + binary.MaxVarintLen64 +
	deliverBatch*(4*binary.MaxVarintLen64+binary.MaxVarintLen32)

// writeDeliveries writes ds as TDeliver frames, one unless a frame would
// be larger than maxFrame, in which case ds is split in halves. With omit
// (a 1.1.0 subscriber), a delivery too large for a frame of its own goes
// without its data (wire.Delivery.Omitted): the subscriber cannot read
// it, and sent whole it would be refused, and sent again, for ever,
// holding back everything queued after it; omitted reports those.
// Without, it goes whole. buf is scratch space, returned for reuse.
func writeDeliveries(w *wire.Writer, buf []byte, ds []wire.Delivery, maxFrame int, omit bool, omitted func(*wire.Delivery)) ([]byte, error) {
	buf = wire.AppendDeliveries(buf[:0], ds)
	if 1+len(buf) <= maxFrame || len(ds) == 1 && !omit {
		return buf, w.Frame(wire.TDeliver, buf)
	}
	if len(ds) == 1 {
		d := ds[0]
		d.Omitted, d.Data = uint64(len(d.Data)), nil
		omitted(&ds[0])
		buf = wire.AppendDeliveries(buf[:0], []wire.Delivery{d})
		return buf, w.Frame(wire.TDeliver, buf)
	}
	h := len(ds) / 2
	buf, err := writeDeliveries(w, buf, ds[:h], maxFrame, omit, omitted)
	if err != nil {
		return buf, err
	}
	return writeDeliveries(w, buf, ds[h:], maxFrame, omit, omitted)
}

// handleUnsubscribe serves /coattail/unsubscribe.
func (nw *netsvc) handleUnsubscribe(ctx context.Context, s *session) error {
	var req wire.UnsubscribeRequest
	if err := readRequest(s, &req); err != nil {
		return err
	}
	found, err := nw.dropSubscriptionOf(ctx, s.peer, req.SubscriptionID, "subscription removed by its subscriber")
	if err != nil {
		return err
	}
	if !found {
		return wire.Errorf(wire.CodeNotFound, "subscription %s does not exist", req.SubscriptionID)
	}
	return s.send(wire.TResult, wire.OK{})
}

// dropSubscriptionOf removes subscription id if it belongs to subscriber,
// ends its delivery stream and logs why; the subscriber needs no notice
// (it asked, or no longer holds the subscription). It reports whether
// there was such a subscription.
func (nw *netsvc) dropSubscriptionOf(ctx context.Context, subscriber peer.ID, id, why string) (bool, error) {
	sub, ok := nw.n.queues.Subscription(id)
	if !ok || sub.Subscriber != subscriber.String() {
		return false, nil
	}
	if _, err := nw.n.queues.RemoveSubscription(ctx, sub.ID); err != nil {
		return true, err
	}
	nw.attached.kick(sub.ID)
	// Sampled: the subscriber decides how often (see handleSubscribe).
	if ok, extra := nw.n.noisy.allow(); ok {
		nw.n.log.Info(why, append([]any{"subscription", sub.ID, "subscriber", sub.Subscriber}, extra...)...)
	}
	return true, nil
}

// Subscribers lists the subscriptions other peers hold here.
func (n *Node) Subscribers() []localapi.Subscriber { return n.subscribers(n.queueSnapshot()) }

// subscribers is Subscribers over st, a queueSnapshot.
func (n *Node) subscribers(st []topics.QueueStatus) []localapi.Subscriber {
	out := make([]localapi.Subscriber, 0, len(st))
	for _, q := range st {
		v := localapi.Subscriber{ID: q.ID, Subscriber: q.Subscriber, Pattern: q.Pattern, TokenID: q.TokenID,
			Receiver: q.Receiver, CreatedAt: q.CreatedAt, NextSeq: q.NextSeq, Acked: q.Acked, Depth: q.Depth,
			Delivered: q.Delivered, Redelivered: q.Redelivered, Dropped: q.Dropped, Corrupt: q.Corrupt}
		if !q.LastDelivered.IsZero() {
			t := q.LastDelivered
			v.LastDelivered = &t
		}
		if n.net != nil {
			v.Path = n.net.attached.path(q.ID)
			v.Connected = v.Path != ""
		}
		out = append(out, v)
	}
	return out
}

// RevokeSubscriber removes a subscription held here and tells its
// subscriber.
func (n *Node) RevokeSubscriber(ctx context.Context, id string) error {
	sub, err := n.queues.RemoveSubscription(ctx, id)
	if err != nil {
		return err
	}
	n.log.Info("subscription revoked", "subscription", id, "subscriber", sub.Subscriber)
	n.afterRemoval(ctx, []topics.Subscription{sub}, "revoked by the publisher")
	return nil
}

// afterRemoval closes the streams of removed subscriptions and tells their
// subscribers, in the background.
func (n *Node) afterRemoval(ctx context.Context, subs []topics.Subscription, reason string) {
	if n.net == nil {
		return
	}
	for _, sub := range subs {
		n.net.attached.kick(sub.ID)
		go n.net.notifyRevoked(sub, reason)
	}
}

// notifyRevoked opens /coattail/revoke to the subscriber. The subscriber
// authenticates it by the publisher's peer id (the secure channel), so no
// token is needed.
func (nw *netsvc) notifyRevoked(sub topics.Subscription, reason string) {
	pid, err := peer.Decode(sub.Subscriber)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	st, err := nw.host.NewStream(network.WithAllowLimitedConn(ctx, "coattail-revoke"), pid, wire.ProtoRevoke)
	if err != nil {
		nw.n.log.Info("could not tell subscriber about revocation", "subscription", sub.ID, "subscriber", sub.Subscriber, "err", err)
		return
	}
	defer st.Close()
	_ = st.SetDeadline(time.Now().Add(10 * time.Second))
	w := wire.NewWriter(st)
	if err := w.JSON(wire.TRequest, wire.RevokeNotice{SubscriptionID: sub.ID, Reason: reason}); err == nil {
		_ = w.Flush()
	}
	_ = st.CloseWrite()
	r := wire.NewReader(st, 64<<10)
	_, _, _ = r.Next()
}

// onTokenRevoked removes every subscription made with a revoked token.
func (n *Node) onTokenRevoked(tokenID string) {
	ctx := context.Background()
	subs, err := n.queues.RemoveWhere(ctx, func(s topics.Subscription) bool { return s.TokenID == tokenID })
	if err != nil {
		n.log.Error("removing subscriptions of revoked token", "token_id", tokenID, "err", err)
		return
	}
	if len(subs) > 0 {
		n.log.Info("subscriptions removed with their token", "token_id", tokenID, "count", len(subs))
	}
	n.afterRemoval(ctx, subs, "token revoked")
}
