package node

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/coattail/coattail/datastore"
	"github.com/coattail/coattail/node/internal/inflight"
	"github.com/coattail/coattail/node/internal/jsonx"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/runner"
	"github.com/coattail/coattail/node/wire"
	"github.com/coattail/coattail/topics"
	ds "github.com/ipfs/go-datastore"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	"golang.org/x/sync/singleflight"
)

// outSub is a subscription this instance holds at a publisher, stored
// under /subs/out/<id>. Its progress (last processed sequence) lives
// apart, under /subs/seq/<id>, because it changes with every frame.
type outSub struct {
	ID        string    `json:"id"`
	Publisher string    `json:"publisher"`
	Pattern   string    `json:"pattern"`
	Receiver  string    `json:"receiver"`
	CreatedAt time.Time `json:"created_at"`
}

// deadLetter is a publication whose receiver kept failing, stored under
// /deadletters/<subscription>.<seq>. deadLetterSummary is its fields but
// the publication's.
type deadLetter struct {
	ID           string          `json:"id"`
	Subscription string          `json:"subscription"`
	Publisher    string          `json:"publisher"`
	Receiver     string          `json:"receiver"`
	Subject      string          `json:"subject"`
	Seq          uint64          `json:"seq"`
	Hop          uint32          `json:"hop"`
	Data         json.RawMessage `json:"data"`
	// Raw holds a publication that is not JSON (a faulty or hostile
	// publisher sent it): Data cannot, as JSON cannot encode it. Data is
	// null then.
	Raw []byte `json:"raw,omitempty"`
	// TooLarge is the size of a publication that never arrived: larger
	// than this instance's frames, the publisher sent it without its data
	// (Data is null). It cannot be replayed.
	TooLarge uint64    `json:"too_large,omitempty"`
	Error    string    `json:"error"`
	Attempts int       `json:"attempts"`
	FailedAt time.Time `json:"failed_at"`
}

// subscriberSide runs the subscriptions this instance holds: one loop per
// subscription keeps a stream to the publisher open, runs the receiver for
// each new publication in order, persists progress and acks.
type subscriberSide struct {
	n    *Node
	subs *datastore.Store[outSub]
	dead *datastore.Store[deadLetter]

	// subscribing makes Subscribe idempotent: concurrent requests for the
	// same publisher, pattern and receiver share one subscription.
	subscribing singleflight.Group
	// replaying holds the ids of dead letters being replayed or dropped
	// (claimDead, releaseDead): a second replay of one would run its
	// receiver twice, and a drop during a replay would be undone by it.
	replaying sync.Map
	// adding serialises the check that a new subscription's id is not held
	// already with the write of its record.
	adding sync.Mutex

	mu    sync.Mutex
	loops map[string]*subLoop
	// rotations counts, per publisher, the replacements of the token
	// presented to it (rotated). A loop notes the count before it opens
	// a stream and records the stream only if it is unchanged: the
	// stream may otherwise carry the old token. Under mu.
	rotations    map[string]uint64
	loopsRunning inflight.Tracker
	// ended remembers, for a while, the subscriptions a publisher ended
	// (by its answer on the stream): its revoke notice, which says why,
	// usually arrives just after. Under mu; bounded by endedKeep.
	ended map[string]endedSub
	ctx   context.Context
	stop  context.CancelFunc
}

type subLoop struct {
	publisher string
	cancel    context.CancelFunc
	wake      chan struct{}
	// stream is the subscription's current stream (nil while down), set
	// at streamSince.
	stream      network.Stream
	streamSince time.Time
	// ran is the highest sequence whose publication was processed by this
	// loop, durable or not (the loop's goroutine only): a stream after one
	// whose progress could not be saved must not run those again.
	ran uint64
	// moving is set when stream was reset to move the subscription to a
	// direct connection: the loop reconnects at once. moved is set while
	// that reconnection is made, so that a new stream libp2p still put on
	// the relay is not moved again in a loop (the next direct connection
	// event will).
	moving, moved bool
	// rotating is set when stream was reset because the publisher's
	// token was replaced (peer add): the loop resumes at once, with the
	// new token.
	rotating bool
}

func newSubscriberSide(n *Node) *subscriberSide {
	ctx, cancel := context.WithCancel(context.Background())
	return &subscriberSide{n: n, subs: datastore.NewStore[outSub](n.db.Batching(), "/subs/out"),
		dead: datastore.NewStore[deadLetter](n.db.Batching(), "/deadletters"), loops: map[string]*subLoop{}, rotations: map[string]uint64{}, ctx: ctx, stop: cancel}
}

func seqKey(id string) ds.Key { return ds.RawKey("/subs/seq/" + id) }

func (ss *subscriberSide) lastSeq(ctx context.Context, id string) (uint64, error) {
	b, err := ss.n.db.Batching().Get(ctx, seqKey(id))
	if errors.Is(err, ds.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if len(b) != 8 {
		return 0, fmt.Errorf("%w: progress record of subscription %s", datastore.ErrCorrupt, id)
	}
	return binary.BigEndian.Uint64(b), nil
}

// testHookResumed, when set (by tests), is called by a subscription loop
// once it has resumed its stream, before it records it as its stream.
var testHookResumed atomic.Pointer[func()]

// saveSeqFault, when set (by tests), fails saveSeq with its error. Set
// while subscriptions run, so atomic.
var saveSeqFault atomic.Pointer[func(id string) error]

// saveSeq durably records that everything up to seq was processed.
func (ss *subscriberSide) saveSeq(ctx context.Context, id string, seq uint64) error {
	if f := saveSeqFault.Load(); f != nil {
		if err := (*f)(id); err != nil {
			return err
		}
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], seq)
	if err := ss.n.db.Batching().Put(ctx, seqKey(id), b[:]); err != nil {
		return err
	}
	return ss.n.db.Sync(ctx, seqKey(id))
}

// startAll starts a loop for every stored subscription.
func (ss *subscriberSide) startAll() error {
	subs, err := ss.subs.List(ss.ctx)
	if err != nil {
		return err
	}
	for _, s := range subs {
		ss.start(s, nil, 0)
	}
	return nil
}

// start runs a loop for sub; initial, if not nil, is the stream that made
// the subscription, opened when the publisher's rotation count was gen.
func (ss *subscriberSide) start(sub outSub, initial *session, gen uint64) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.loops[sub.ID] != nil || ss.ctx.Err() != nil {
		if initial != nil {
			_ = initial.s.Reset()
		}
		return
	}
	ctx, cancel := context.WithCancel(ss.ctx)
	l := &subLoop{publisher: sub.Publisher, cancel: cancel, wake: make(chan struct{}, 1)}
	ss.loops[sub.ID] = l
	ss.loopsRunning.Begin() // never shut: ss.ctx refuses new loops
	go func() {
		defer ss.loopsRunning.End()
		ss.run(ctx, sub, l, initial, gen)
		ss.mu.Lock()
		if ss.loops[sub.ID] == l {
			delete(ss.loops, sub.ID)
		}
		ss.mu.Unlock()
		ss.dropOrphanProgress(sub.ID)
	}()
}

// close ends every subscription loop and waits for them, up to
// handlersDrain: a loop inside an in-process receiver that ignores its
// cancelled context cannot be ended, and must not hold the node's Close
// (a service stop) for ever.
func (ss *subscriberSide) close() error {
	ss.stop()
	if !ss.loopsRunning.Wait(handlersDrain) {
		ss.n.log.Error("a subscription's receiver ignores its cancelled context; closing without it", "waited", handlersDrain)
	}
	return nil
}

// dropOrphanProgress deletes the progress record of a subscription that
// was forgotten, once its loop has ended. forget does not wait for the loop
// (it may be the loop that calls it), so a receiver that finished after
// the cancellation can have its progress written after forget deleted it.
// Every write of the loop precedes this check, and forget deletes the
// subscription before its progress, so one of the two deletes comes last.
func (ss *subscriberSide) dropOrphanProgress(id string) {
	ctx := context.Background()
	if _, err := ss.subs.Get(ctx, id); !errors.Is(err, datastore.ErrNotFound) {
		return // still held (the node is closing), or unknown: keep it
	}
	_ = ss.n.db.Batching().Delete(ctx, seqKey(id))
}

// stopLoop ends a subscription's loop.
func (ss *subscriberSide) stopLoop(id string) {
	ss.mu.Lock()
	l := ss.loops[id]
	delete(ss.loops, id)
	ss.mu.Unlock()
	if l != nil {
		l.cancel()
	}
}

// running reports whether subscription id has a loop, for publisher.
func (ss *subscriberSide) running(id, publisher string) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	l := ss.loops[id]
	return l != nil && l.publisher == publisher
}

// staleAfter is how long a subscription's stream must have been up before
// a nudge from its publisher over another connection is taken to mean the
// stream is dead (see wake). Between the subscribe answer, which sets the
// stream here, and the publisher attaching its deliverer there are a few
// milliseconds; a nudge sent in that gap must not cut a fresh stream.
const staleAfter = 5 * time.Second

// wake makes the loops of the given subscriptions at publisher, if they
// wait to reconnect, try now. A nudge means the publisher holds
// publications for these subscriptions and no stream to deliver them on:
// a loop that still has a stream, over another connection than the one
// the nudge came on, and for longer than staleAfter, has a dead stream
// whose connection libp2p has not noticed yet (a network that dropped
// the connection without a reset, a publisher host that restarted
// elsewhere): it is reset, and its connection closed, so that the loop
// reconnects now instead of after the connection's keep-alive gives up
// (30–60 s). via is the
// nudge's connection (nil: none known; only waiting loops are woken).
func (ss *subscriberSide) wake(publisher string, ids []string, via network.Conn) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for _, id := range ids {
		l := ss.loops[id]
		if l == nil || l.publisher != publisher {
			continue
		}
		select {
		case l.wake <- struct{}{}:
		default:
		}
		if st := l.stream; st != nil && via != nil && st.Conn() != via && time.Since(l.streamSince) > staleAfter {
			l.stream = nil
			// The connection goes too: the publisher would have nudged
			// over it if it still had it. Left open, it would carry the
			// loop's next subscribe (libp2p picks the connection with the
			// most streams, and streams opened on a dead one hang there),
			// which would hang until its keep-alive gives up.
			go func() {
				_ = st.Reset()
				_ = st.Conn().Close()
			}()
		}
	}
}

// permanent reports whether a publisher's answer means the subscription is
// gone for good (revoked, removed, or the token no longer valid, also when
// the publisher told us before that it revoked it).
func permanent(err error) bool {
	if errors.Is(err, ErrPeerTokenRevoked) {
		return true
	}
	var we *wire.Error
	if errors.As(err, &we) {
		switch we.Code {
		case wire.CodeNotFound, wire.CodeForbidden, wire.CodeUnauthorized:
			return true
		}
	}
	return errors.Is(err, ErrUnknownPeer)
}

func (ss *subscriberSide) run(ctx context.Context, sub outSub, l *subLoop, s *session, gen uint64) {
	log := ss.n.log.With("subscription", sub.ID, "publisher", sub.Publisher)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		var err error
		if s == nil {
			gen = ss.rotation(sub.Publisher)
			s, err = ss.resume(ctx, sub)
			if f := testHookResumed.Load(); f != nil && err == nil {
				(*f)()
			}
		}
		if err == nil && !ss.setStream(l, s.s, gen) {
			// The token was replaced while the stream was opened, so
			// rotated did not reset it: it may carry the old one, and
			// the publisher would hold the subscription with that token
			// until the stream ended (its revocation or expiry removed
			// it).
			_ = s.s.Reset()
			s = nil
			log.Info("subscription resuming with the publisher's new token")
			continue
		}
		if err == nil {
			pub := s.s.Conn().RemotePeer()
			ss.n.host.ConnManager().Protect(pub, subscriptionTag(sub.ID))
			var progressed bool
			progressed, err = ss.consume(ctx, sub, l, s)
			ss.n.host.ConnManager().Unprotect(pub, subscriptionTag(sub.ID))
			ss.setStream(l, nil, 0)
			_ = s.s.Reset()
			s = nil
			if progressed {
				backoff = 100 * time.Millisecond
			}
		}
		if ctx.Err() != nil {
			return
		}
		if permanent(err) {
			log.Warn("subscription ended by the publisher", "err", err)
			ss.noteEnded(sub)
			ss.forget(context.Background(), sub.ID)
			return
		}
		if ss.takeRotating(l) {
			log.Info("subscription resuming with the publisher's new token")
			continue
		}
		if ss.takeMoving(l) {
			log.Info("subscription moving to a direct connection")
			continue
		}
		log.Debug("subscription stream down; retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-l.wake:
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

// setStream records the subscription's current stream (nil: down). A
// stream opened over a relay while a direct connection to the publisher
// exists (the hole punch finished while it was being opened) is moved at
// once, as upgraded would have done. A stream opened when the publisher's
// rotation count was gen is refused (false) if the token was replaced
// since.
func (ss *subscriberSide) setStream(l *subLoop, st network.Stream, gen uint64) bool {
	ss.mu.Lock()
	if st != nil && ss.rotations[l.publisher] != gen {
		ss.mu.Unlock()
		return false
	}
	l.stream = st
	l.streamSince = time.Now()
	retry := !l.moved
	l.moved = false
	ss.mu.Unlock()
	if st != nil && retry && isRelayed(st.Conn()) {
		if pub := st.Conn().RemotePeer(); !allRelayed(ss.n.host.Network().ConnsToPeer(pub)) {
			ss.upgraded(pub.String())
		}
	}
	return true
}

// upgraded is called when a direct connection to publisher is established:
// every subscription at publisher whose stream goes through a relay is
// moved to it. The relayed stream is reset (what it had in flight is
// resent on the new stream and dropped here as duplicates), and the loop
// reconnects at once; libp2p opens the new stream on the direct
// connection, which it prefers. Relays limit circuits in time and bytes
// and the publisher keeps its window small over them, so staying would
// be slow and cut off sooner or later.
func (ss *subscriberSide) upgraded(publisher string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for _, l := range ss.loops {
		if l.publisher != publisher {
			continue
		}
		if l.stream == nil {
			// Reconnecting, perhaps for a move whose direct connection
			// closed before the new stream opened (libp2p then opens it
			// on the relay). This connection is new: setStream must
			// check the next stream again rather than trust the move.
			l.moved = false
			continue
		}
		if l.moving || !isRelayed(l.stream.Conn()) {
			continue
		}
		l.moving = true
		go l.stream.Reset()
	}
}

// rotated is called when publisher's token was replaced (peer add): each
// subscription at publisher with a stream open resumes on a new one,
// presenting the new token, so that the publisher holds the subscription
// with it from then on. Until then the stream was authorized by the old
// token, and at that token's expiry (or revocation) the publisher removed
// the subscription, with what was queued for it, although the subscriber
// held a valid replacement. What was in flight is resent and dropped here
// as duplicates.
func (ss *subscriberSide) rotated(publisher string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	// A loop opening a stream now may have read the old token: it opens
	// another (setStream).
	ss.rotations[publisher]++
	for _, l := range ss.loops {
		if l.publisher != publisher || l.stream == nil || l.rotating {
			continue // a loop reconnecting presents the new token anyway
		}
		l.rotating = true
		go l.stream.Reset()
	}
}

// rotation returns publisher's rotation count (see rotations).
func (ss *subscriberSide) rotation(publisher string) uint64 {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.rotations[publisher]
}

// takeRotating reports, and clears, whether the loop's stream was reset to
// resume with a new token.
func (ss *subscriberSide) takeRotating(l *subLoop) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	r := l.rotating
	l.rotating = false
	return r
}

// takeMoving reports, and clears, whether the loop's stream was reset to
// move it to a direct connection.
func (ss *subscriberSide) takeMoving(l *subLoop) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	m := l.moving
	l.moving = false
	l.moved = m
	return m
}

// resume reopens the subscription's stream where this side left off.
func (ss *subscriberSide) resume(ctx context.Context, sub outSub) (*session, error) {
	last, err := ss.lastSeq(ctx, sub.ID)
	if err != nil {
		return nil, err
	}
	// Our own back-off paces reconnects; libp2p's per-peer dial back-off
	// would add up to minutes on top after a publisher restart.
	if pid, err := peer.Decode(sub.Publisher); err == nil {
		if sw, ok := ss.n.host.Network().(*swarm.Swarm); ok {
			sw.Backoff().Clear(pid)
		}
	}
	s, err := ss.n.open(ctx, sub.Publisher, wire.ProtoSubscribe,
		wire.SubscribeRequest{SubscriptionID: sub.ID, Pattern: sub.Pattern, Receiver: sub.Receiver, ResumeAfter: last, MaxFrame: ss.n.maxFrame()})
	if err != nil {
		return nil, err
	}
	// A publisher that accepts the stream but never answers must not hold
	// up a closing node for the stream timeout.
	stop := context.AfterFunc(ctx, func() { _ = s.s.Reset() })
	var resp wire.SubscribeResponse
	err = s.result(&resp, nil)
	if !stop() || err != nil {
		_ = s.s.Reset()
		return nil, errors.Join(err, ctx.Err())
	}
	_ = s.s.SetDeadline(time.Time{})
	return s, nil
}

// consume processes deliveries until the stream ends. Each receiver runs
// once per sequence: duplicates (seq <= last processed) are dropped, and
// progress is persisted before it is acked.
//
// Progress is what makes "exactly once" hold, so it is recorded for every
// publication whose receiver finished, whatever else fails: a frame that
// turns out bad halfway, an ack that cannot be written, a stream that is
// reset. A publication whose receiver did not finish (the node is closing)
// is not recorded, and runs again after the restart.
func (ss *subscriberSide) consume(ctx context.Context, sub outSub, l *subLoop, s *session) (progressed bool, err error) {
	saved, err := ss.lastSeq(ctx, sub.ID) // progress known durable
	if err != nil {
		return false, err
	}
	// Processed but not saved (saving failed): the publisher resends them
	// from the saved progress on; they are duplicates here, acked once
	// saving works again.
	last := max(saved, l.ran)
	defer func() { l.ran = max(l.ran, last) }()
	// Closing the node or forgetting the subscription ends the stream.
	defer context.AfterFunc(ctx, func() { _ = s.s.Reset() })()
	_, inProc := ss.n.inProcessReceiver(sub.Receiver)
	var calls *callWatchdog
	if inProc {
		calls = newCallWatchdog(ctx, ss.n.cfg.Limits.ActionTimeout)
		defer calls.stop()
	}
	timeout := ss.n.cfg.Limits.StreamTimeout
	var ackBuf []byte
	var ackDead bool   // an ack write failed: the stream is gone
	var ackHigh uint64 // highest ack written: acks never go back
	// persistAck makes progress up to seq durable, then acks it. It fails
	// only when progress cannot be saved; a failed ack write resets the
	// stream (which ends the reader) but later progress is still saved.
	// The progress is saved even while the node closes: its receivers ran.
	persistAck := func(seq uint64) error {
		if seq > saved {
			if err := ss.saveSeq(context.WithoutCancel(ctx), sub.ID, seq); err != nil {
				_ = s.s.Reset()
				return err
			}
			saved = seq
		}
		if ackDead {
			return nil
		}
		seq = max(seq, ackHigh)
		ackHigh = seq
		ackBuf = wire.AppendAck(ackBuf[:0], sub.ID, seq)
		s.wmu.Lock()
		defer s.wmu.Unlock()
		// A publisher that stops reading acks holds this side for at most
		// the stream timeout.
		_ = s.s.SetWriteDeadline(time.Now().Add(timeout))
		err := s.w.Frame(wire.TAck, ackBuf)
		if err == nil {
			err = s.w.Flush()
		}
		if err != nil {
			ackDead = true
			_ = s.s.Reset()
		}
		return nil
	}
	// In-process receivers: progress is persisted (with its fsync) and
	// acked by a goroutine, so the fsync of one frame's progress overlaps
	// the receivers of the next frames, and one fsync covers every frame
	// processed while the previous one ran. A seq is still acked only once
	// it is durable here. Executable receivers persist synchronously, one
	// publication at a time (below), and never use it.
	var ackc chan uint64
	var saveFailed atomic.Bool
	ackErr := make(chan error, 1)
	if inProc {
		ackc = make(chan uint64, 1)
		go func() {
			var err error
			for seq := range ackc {
				if err == nil {
					if err = persistAck(seq); err != nil {
						saveFailed.Store(true)
					}
				}
			}
			ackErr <- err
		}()
		defer func() {
			// The stream is finished; reset it so that an ack write still
			// in progress returns at once. The last progress is durable
			// before consume returns, so a resume reads it.
			_ = s.s.Reset()
			close(ackc)
			if aerr := <-ackErr; aerr != nil {
				err = errors.Join(err, aerr)
			}
		}()
	}
	ackAsync := func(seq uint64) {
		for {
			select {
			case ackc <- seq:
				return
			default:
			}
			// A pending seq is superseded by this one, or by itself if
			// it is higher (a frame of duplicates acks less than the
			// frame processed before it).
			select {
			case p := <-ackc:
				seq = max(seq, p)
			default:
			}
		}
	}
	var matched string // the last subject seen to match sub.Pattern
	for {
		t, payload, err := s.r.Next()
		if err != nil {
			return progressed, err
		}
		switch t {
		case wire.TError:
			return progressed, s.remoteError(payload)
		case wire.TDeliver:
		default:
			return progressed, fmt.Errorf("%w %s: unexpected frame type %d on a subscription", ErrPeer, sub.Publisher, t)
		}
		dirty, fresh := false, false
		var dupHigh uint64                           // highest duplicate in the frame
		h, _ := ss.n.inProcessReceiver(sub.Receiver) // once per frame, not per publication
		err = wire.DecodeDeliveries(payload, func(d *wire.Delivery) error {
			if d.SubscriptionID != sub.ID {
				return fmt.Errorf("%w %s sent a delivery for another subscription", ErrPeer, sub.Publisher)
			}
			if d.Seq <= last {
				ss.n.stats.duplicates.Add(1)
				dupHigh = max(dupHigh, d.Seq)
				return nil
			}
			fresh = true
			if saveFailed.Load() {
				return errProgressNotSaved // running more would run them again later
			}
			// A publisher sends a subscription only subjects its pattern
			// matches; a receiver is not run for any other (a faulty or
			// lying publisher): the publication is parked. Checked once
			// per new subject, not per publication.
			if d.Subject != matched && topics.Match(sub.Pattern, d.Subject) {
				matched = strings.Clone(d.Subject)
			}
			if d.Subject != matched {
				err := fmt.Errorf("%w %s sent subject %q, which the subscription's pattern %q does not match; the receiver was not run",
					ErrPeer, sub.Publisher, clip(d.Subject), sub.Pattern)
				if err := ss.n.park(ctx, sub, d, err, 0); err != nil {
					return err
				}
			} else if err := ss.n.handlePublication(ctx, sub, d, h, calls); err != nil {
				return err // not finished: not recorded, runs again later
			}
			last = d.Seq
			progressed, dirty = true, true
			ss.n.stats.received.Add(1)
			if !inProc {
				// A process per publication: persist each, so a crash
				// re-runs at most the one in flight.
				dirty = false
				return persistAck(last)
			}
			return nil
		})
		if dirty {
			// Also when the frame failed halfway: what ran is recorded.
			ackAsync(last)
		}
		if err != nil {
			return progressed, err
		}
		if !fresh && dupHigh > 0 {
			// Nothing but duplicates: ack them all the same (an ack says
			// "processed or recognised as a duplicate"), or the publisher
			// waits for it until its stream timeout and resends them.
			// dupHigh <= last was processed; it is acked once durable.
			if inProc {
				ackAsync(dupHigh)
			} else if err := persistAck(dupHigh); err != nil {
				return progressed, err
			}
		}
	}
}

// errReceiverMissing ends a subscription's stream whose receiver does not
// exist; the stream resumes, with back-off, until it does.
var errReceiverMissing = errors.New("node: the subscription's receiver does not exist")

// errProgressNotSaved stops a subscription's receivers when its progress
// could not be saved.
var errProgressNotSaved = errors.New("progress of the subscription could not be saved")

// handlePublication runs the receiver, retrying with back-off, and parks
// the publication in the dead-letter list when it keeps failing: a failing
// receiver must not block what follows for longer than its retries. It
// returns nil once the publication is finished (run, or parked), and an
// error when it is not: ctx ended first (the receiver was stopped, not
// failed) or it could not be parked. An unfinished publication must not
// be recorded as processed.
//
// h is the in-process receiver (nil: run the executable). calls bounds
// in-process receivers to limits.action_timeout: their context is
// cancelled when a call takes longer (see callWatchdog).
func (n *Node) handlePublication(ctx context.Context, sub outSub, d *wire.Delivery, h Handler, calls *callWatchdog) error {
	if d.Omitted > 0 || len(d.Data) > int(n.cfg.Limits.MaxPayload) {
		// Too large for this instance: the publisher left the data out
		// (too large for a frame), or it fit the frame's headroom but not
		// max_payload, which no receiver here is given.
		how := "it arrived"
		tl := *d
		if tl.Omitted == 0 {
			tl.Omitted = uint64(len(d.Data))
		} else {
			how = "the publisher sent it without its data"
		}
		tl.Data = nil
		if tl.Omitted <= uint64(n.cfg.Limits.MaxPayload) {
			// Not too large for this instance: for the relay circuit it
			// had to cross (the publisher's only reason to leave it out).
			return n.park(ctx, sub, &tl, fmt.Errorf("publication of %d bytes is larger than the relay circuit between the publisher and this instance carries (the relay's data limit); the publisher sent it without its data, so the receiver was not run and it is not kept (a direct connection, or a relay with a larger relay_limit_data, carries it)",
				tl.Omitted), 0)
		}
		return n.park(ctx, sub, &tl, fmt.Errorf("publication of %d bytes is larger than this instance accepts (limits.max_payload %v); %s, but the receiver was not run and it is not kept",
			tl.Omitted, n.cfg.Limits.MaxPayload, how), 0)
	}
	// The runner checks that the input is JSON (it comes from another
	// peer), so it is not validated here too: that would be a second pass
	// over every payload. Empty data is not JSON, though the runner would
	// take it for null.
	data := json.RawMessage(d.Data)
	if len(data) == 0 {
		data = nil
	}
	var run func() error
	// fresh gives an in-process receiver a new copy of the input before a
	// retry: the failed call may have written over its own (nil for an
	// executable, whose input is written to its stdin each time).
	var fresh func()
	if h != nil {
		// In-process receivers are the embedding program's own code: they
		// run inline on the subscription's goroutine (no process, no extra
		// goroutine or timer per publication) and must honour ctx.
		if data != nil && !jsonx.Valid(data) {
			data = nil
		}
		// The subject and data alias the stream's read buffer, which the
		// next frame overwrites; a receiver may keep them (as a NATS
		// message's), so it gets its own copy.
		subject, in := cloneDelivery(d.Subject, data)
		fresh = func() { _, in = cloneDelivery("", data) }
		inv := Invocation{Kind: string(runner.KindReceiver), Name: sub.Receiver, Caller: sub.Publisher,
			Publisher: sub.Publisher, Subject: subject, Sequence: d.Seq, Subscription: sub.ID, Hop: d.Hop, receiverLog: n}
		run = func() error {
			if calls == nil {
				return callInline(&receiverCtx{Context: ctx, inv: inv}, h, sub.Receiver, in)
			}
			cctx := calls.begin()
			err := callInline(&receiverCtx{Context: cctx, inv: inv}, h, sub.Receiver, in)
			calls.end()
			if err != nil && errors.Is(context.Cause(cctx), errCallTimeout) {
				return fmt.Errorf("%w: receiver %q ran longer than limits.action_timeout (%v): %w", runner.ErrTimeout, sub.Receiver, calls.timeout, err)
			}
			return err
		}
	} else {
		inv := runner.Invocation{Kind: runner.KindReceiver, Name: sub.Receiver, Input: data, Caller: sub.Publisher,
			Env: map[string]string{
				"COATTAIL_PUBLISHER":    sub.Publisher,
				"COATTAIL_SUBJECT":      d.Subject,
				"COATTAIL_SEQUENCE":     strconv.FormatUint(d.Seq, 10),
				"COATTAIL_SUBSCRIPTION": sub.ID,
				"COATTAIL_HOP":          strconv.FormatUint(uint64(d.Hop), 10),
				"COATTAIL_RUN":          n.hops.key,
			},
			Log: func(line string) { n.logReceiverLine(sub.Receiver, sub.ID, d.Seq, line) },
		}
		run = func() error {
			_, err := n.runner.Run(ctx, inv)
			if receiverOutputIgnored(err, false) {
				// It exited 0: handled. Running it again would repeat
				// what it did.
				n.log.Warn("receiver succeeded but printed output that is not JSON; output ignored", "receiver", sub.Receiver, "subscription", sub.ID, "seq", d.Seq, "err", err)
				return nil
			}
			return err
		}
	}
	var err error
	attempts := 0
	backoff := n.cfg.Limits.ReceiverBackoff
	for attempts = 1; ; attempts++ {
		if data == nil {
			err = fmt.Errorf("%w: publication %d of %s is not JSON", runner.ErrBadInput, d.Seq, d.Subject)
			break
		}
		err = run()
		if h == nil && errors.Is(err, runner.ErrNotFound) {
			// No such receiver, now: an executable deleted or renamed,
			// or an in-process one registered only after Start. Nothing
			// is run or parked: the publication stays queued at the
			// publisher, and the subscription tries again (with back-off)
			// until the receiver exists, so none of its publications is
			// parked for want of it.
			if ok, extra := n.noisy.allow(); ok {
				n.log.Warn("receiver does not exist: the subscription's publications wait at the publisher until it does (create it, or register an in-process receiver before Start)",
					append([]any{"receiver", sub.Receiver, "subscription", sub.ID, "seq", d.Seq, "err", err}, extra...)...)
			}
			return fmt.Errorf("%w: %w", errReceiverMissing, err)
		}
		if err != nil && ctx.Err() == nil {
			// Its cascade refused for the hop limit, it failed: so would
			// every retry, at the publication's hop.
			if f, ok := n.hops.take(sub.ID, d.Seq, d.Hop); ok {
				err = &hopLimitError{f: f, maxHops: n.cfg.Limits.MaxHops, err: err}
				break
			}
		}
		// Input that is not JSON fails the same way every time.
		if err == nil || ctx.Err() != nil || attempts > n.cfg.Limits.ReceiverRetries || errors.Is(err, runner.ErrBadInput) {
			break
		}
		n.log.Warn("receiver failed; will retry", "receiver", sub.Receiver, "subscription", sub.ID, "seq", d.Seq, "attempt", attempts, "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("receiver %q for publication %d not finished: %w", sub.Receiver, d.Seq, ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Hour)
		if fresh != nil {
			fresh()
		}
	}
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		// Stopped (the node is closing, or the subscription is going),
		// not failed: the publication runs again after a restart.
		return fmt.Errorf("receiver %q for publication %d not finished: %w", sub.Receiver, d.Seq, ctx.Err())
	}
	return n.park(ctx, sub, d, err, attempts)
}

// maxSubscriptionIDLen bounds the subscription ids a subscriber takes
// from a publisher: a dead letter's id is the subscription's, a dot and
// the sequence in 20 digits, and must be a valid datastore id.
const maxSubscriptionIDLen = datastore.MaxIDLen - 21

// park records publication d of sub in the dead-letter list with the
// error that stopped it, and returns nil once it is stored (made durable
// by the progress sync that follows), or why it is not.
func (n *Node) park(ctx context.Context, sub outSub, d *wire.Delivery, err error, attempts int) error {
	dl := deadLetter{ID: localapi.DeadLetterID(sub.ID, d.Seq), Subscription: sub.ID, Publisher: sub.Publisher, Receiver: sub.Receiver,
		Subject: d.Subject, Seq: d.Seq, Hop: d.Hop, TooLarge: d.Omitted, Error: err.Error(), Attempts: attempts, FailedAt: time.Now().UTC()}
	if len(d.Data) > 0 && (!jsonx.Valid(d.Data) || !json.Valid(d.Data)) {
		// Stored as JSON it could not be written at all: the publication
		// would come back after every reconnect and block the ones behind
		// it for good. (encoding/json, which stores it, has the last word:
		// it is the one that must take it. Parking is rare; two checks
		// cost nothing here.)
		dl.Raw = append([]byte(nil), d.Data...)
	} else {
		dl.Data = append(json.RawMessage(nil), d.Data...)
	}
	// A dead letter keeps the publication: with the disk nearly full the
	// subscription waits until there is room (pebble ends the process
	// when a write finds the disk full). Not parked and delivered again
	// instead, its failing receiver would run again, retries and all, on
	// every redelivery.
	if n.space != nil {
		if serr := n.space.wait(ctx, len(d.Data), func(why error) {
			n.log.Error("cannot park failed publication until the disk has room; its subscription waits", "subscription", sub.ID, "seq", d.Seq, "err", why)
		}); serr != nil {
			return fmt.Errorf("park publication %d in the dead letters: %w", d.Seq, serr)
		}
	}
	// Made durable by the progress sync that follows it.
	if perr := n.subscriber.dead.Put(context.Background(), dl.ID, dl); perr != nil {
		n.log.Error("cannot park failed publication; it will be delivered again", "subscription", sub.ID, "seq", d.Seq, "err", perr)
		return fmt.Errorf("park publication %d in the dead letters: %w", d.Seq, perr)
	}
	n.stats.deadLetters.Add(1)
	msg := "receiver failed; publication parked in dead letters"
	var hl *hopLimitError
	switch {
	case d.Omitted > 0:
		msg = "publication too large for this instance; parked in dead letters without its data"
	case errors.As(err, &hl):
		msg = "receiver failed after the hop limit refused its cascade; publication parked in dead letters without retries"
	}
	n.log.Error(msg, "receiver", sub.Receiver, "subscription", sub.ID, "seq", d.Seq, "attempts", attempts, "err", err)
	return nil
}

// receiverOutputIgnored reports whether err from the runner only says what
// a receiver that finished successfully printed: a receiver's output is
// not used (an in-process receiver's is not even looked at), so output
// that is not JSON, or from an in-process handler too large, does not make
// the publication fail and run again. An executable receiver's output
// past the limit never comes here: the runner drops it, without an error.
func receiverOutputIgnored(err error, inProc bool) bool {
	return errors.Is(err, runner.ErrBadOutput) || inProc && errors.Is(err, runner.ErrOutputTooLarge)
}

// forget deletes a subscription record and its progress here.
func (ss *subscriberSide) forget(ctx context.Context, id string) {
	ss.stopLoop(id)
	_ = ss.subs.Delete(ctx, id)
	_ = ss.n.db.Batching().Delete(ctx, seqKey(id))
	_ = ss.n.db.Sync(ctx, ds.RawKey("/subs"))
}

// Subscribe subscribes the local receiver to pattern at a peer. If that
// receiver is subscribed to that pattern at that peer already, it returns
// the existing subscription with Existing set (concurrent calls share one).
func (n *Node) Subscribe(ctx context.Context, req localapi.SubscribeRequest) (localapi.Subscription, error) {
	if err := topics.ValidatePattern(req.Pattern); err != nil {
		return localapi.Subscription{}, err
	}
	if err := topics.ValidateSubject(req.Receiver); err != nil {
		return localapi.Subscription{}, fmt.Errorf("receiver name: %w", err)
	}
	if err := n.runner.Check(runner.KindReceiver, req.Receiver); errors.Is(err, runner.ErrNotFound) {
		return localapi.Subscription{}, fmt.Errorf("%w: no receiver %q here (create it with: coattail action create --receiver --name %s)", ErrBadRequest, req.Receiver, req.Receiver)
	} else if err != nil {
		// Every publication would fail and be parked as a dead letter.
		return localapi.Subscription{}, fmt.Errorf("%w: receiver %q cannot run, so every publication would be parked as a dead letter: %w", ErrBadRequest, req.Receiver, err)
	}
	if _, err := n.peerRecord(ctx, req.Peer); err != nil {
		return localapi.Subscription{}, err
	}
	if n.net == nil {
		return localapi.Subscription{}, ErrOffline
	}
	// The same receiver subscribed twice to the same pattern at the same
	// peer would run twice per publication: a repeated subscribe (a
	// retried script, a second click) returns the subscription there is.
	key := req.Peer + "\x00" + req.Pattern + "\x00" + req.Receiver
	v, err, _ := n.subscriber.subscribing.Do(key, func() (any, error) {
		subs, err := n.subscriber.subs.List(ctx)
		if err != nil {
			return nil, err
		}
		for _, sub := range subs {
			if sub.Publisher == req.Peer && sub.Pattern == req.Pattern && sub.Receiver == req.Receiver {
				view := n.subscriptionView(ctx, sub)
				view.Existing = true
				return view, nil
			}
		}
		return n.subscribe(ctx, req)
	})
	if err != nil {
		return localapi.Subscription{}, err
	}
	return v.(localapi.Subscription), nil
}

// subscribe makes a new subscription at the publisher and starts its loop.
func (n *Node) subscribe(ctx context.Context, req localapi.SubscribeRequest) (localapi.Subscription, error) {
	gen := n.subscriber.rotation(req.Peer)
	s, err := n.open(ctx, req.Peer, wire.ProtoSubscribe, wire.SubscribeRequest{Pattern: req.Pattern, Receiver: req.Receiver, MaxFrame: n.maxFrame()})
	if err != nil {
		return localapi.Subscription{}, err
	}
	var resp wire.SubscribeResponse
	if err := s.result(&resp, nil); err != nil {
		_ = s.s.Reset()
		return localapi.Subscription{}, err
	}
	_ = s.s.SetDeadline(time.Time{})
	sub := outSub{ID: resp.SubscriptionID, Publisher: req.Peer, Pattern: req.Pattern, Receiver: req.Receiver, CreatedAt: time.Now().UTC()}
	err = datastore.ValidateID(sub.ID)
	if err == nil && len(sub.ID) > maxSubscriptionIDLen {
		// Its dead letters' ids could not be stored, and a publication
		// that failed could then be neither parked nor passed.
		err = fmt.Errorf("%d bytes long (at most %d)", len(sub.ID), maxSubscriptionIDLen)
	}
	if err != nil {
		_ = s.s.Reset()
		return localapi.Subscription{}, fmt.Errorf("%w %s: bad subscription id: %v", ErrPeer, req.Peer, err)
	}
	if err := n.subscriber.add(ctx, sub); err != nil {
		_ = s.s.Reset()
		return localapi.Subscription{}, err
	}
	n.log.Info("subscribed", "subscription", sub.ID, "publisher", sub.Publisher, "pattern", sub.Pattern, "receiver", sub.Receiver)
	n.subscriber.start(sub, s, gen)
	return n.subscriptionView(ctx, sub), nil
}

// add stores a new subscription durably, unless its id is one this
// instance holds already (at any publisher): the id is the publisher's
// answer, and a publisher that names a subscription held elsewhere would
// otherwise take over its record, which says who may revoke or nudge it
// and where it resumes, and its progress record.
func (ss *subscriberSide) add(ctx context.Context, sub outSub) error {
	ss.adding.Lock()
	defer ss.adding.Unlock()
	_, err := ss.subs.Get(ctx, sub.ID)
	if err == nil {
		return fmt.Errorf("%w %s answered with the id of a subscription held here already (%s)", ErrPeer, sub.Publisher, sub.ID)
	}
	if !errors.Is(err, datastore.ErrNotFound) {
		return err
	}
	ss.mu.Lock()
	running := ss.loops[sub.ID] != nil
	ss.mu.Unlock()
	if running {
		// Forgotten a moment ago; its loop has not ended yet.
		return fmt.Errorf("%w %s answered with the id of a subscription held here until now (%s)", ErrPeer, sub.Publisher, sub.ID)
	}
	// A new subscription has processed nothing: progress left by a
	// forgotten one of that id must not make it drop publications.
	if err := ss.n.db.Batching().Delete(ctx, seqKey(sub.ID)); err != nil {
		return err
	}
	if err := ss.subs.Put(ctx, sub.ID, sub); err != nil {
		return err
	}
	return ss.n.db.Sync(ctx, ds.RawKey("/subs"))
}

// Unsubscribe ends this instance's subscriptions to pattern at a peer
// with that receiver (any receiver when req.Receiver is empty), on both
// sides. With force, a publisher that cannot be reached is forgotten
// locally anyway.
func (n *Node) Unsubscribe(ctx context.Context, req localapi.SubscribeRequest) (int, error) {
	res, err := n.UnsubscribeResult(ctx, req)
	return res.Removed, err
}

// UnsubscribeResult is Unsubscribe, also saying which subscriptions ended
// here (force) without their publisher being told.
func (n *Node) UnsubscribeResult(ctx context.Context, req localapi.SubscribeRequest) (localapi.UnsubscribeResult, error) {
	var res localapi.UnsubscribeResult
	subs, err := n.subscriber.subs.List(ctx)
	if err != nil {
		return res, err
	}
	for _, sub := range subs {
		if sub.Publisher != req.Peer || sub.Pattern != req.Pattern || (req.Receiver != "" && sub.Receiver != req.Receiver) {
			continue
		}
		if err := n.remoteUnsubscribe(ctx, sub); err != nil {
			if !req.Force {
				return res, fmt.Errorf("%w (use --force to forget the subscription here anyway)", err)
			}
			res.Untold = append(res.Untold, sub.ID)
		}
		n.subscriber.forget(ctx, sub.ID)
		n.log.Info("unsubscribed", "subscription", sub.ID, "publisher", sub.Publisher)
		res.Removed++
	}
	if res.Removed == 0 {
		with := ""
		if req.Receiver != "" {
			with = fmt.Sprintf(" with receiver %q", req.Receiver)
		}
		return res, fmt.Errorf("%w: no subscription to %q at %s%s (see: coattail subscriptions list)", datastore.ErrNotFound, req.Pattern, req.Peer, with)
	}
	return res, nil
}

func (n *Node) remoteUnsubscribe(ctx context.Context, sub outSub) error {
	if n.net == nil {
		return ErrOffline
	}
	s, err := n.open(ctx, sub.Publisher, wire.ProtoUnsubscribe, wire.UnsubscribeRequest{SubscriptionID: sub.ID})
	if err != nil {
		if permanent(err) {
			return nil
		}
		return err
	}
	defer s.s.Close()
	var ok wire.OK
	if err := s.result(&ok, nil); err != nil && !permanent(err) {
		return err
	}
	return nil
}

// Subscriptions lists the subscriptions this instance holds.
func (n *Node) Subscriptions(ctx context.Context) ([]localapi.Subscription, error) {
	subs, err := n.subscriber.subs.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]localapi.Subscription, 0, len(subs))
	for _, s := range subs {
		out = append(out, n.subscriptionView(ctx, s))
	}
	return out, nil
}

func (n *Node) subscriptionView(ctx context.Context, s outSub) localapi.Subscription {
	v := localapi.Subscription{ID: s.ID, Publisher: s.Publisher, Pattern: s.Pattern, Receiver: s.Receiver, CreatedAt: s.CreatedAt}
	v.LastSeq, _ = n.subscriber.lastSeq(ctx, s.ID)
	n.subscriber.mu.Lock()
	if l := n.subscriber.loops[s.ID]; l != nil {
		if l.stream != nil {
			v.Connected = true
			v.Path = pathOf(l.stream.Conn())
		}
	}
	n.subscriber.mu.Unlock()
	return v
}

// endedSub is a subscription its publisher ended, remembered for
// endedKeep (noteEnded, endedBy).
type endedSub struct {
	publisher string
	at        time.Time
}

// endedKeep is how long, and endedMax for how many subscriptions at most,
// a subscription its publisher ended is remembered to take its revoke
// notice.
const (
	endedKeep = time.Minute
	endedMax  = 1024
)

// noteEnded remembers that sub's publisher ended it.
func (ss *subscriberSide) noteEnded(sub outSub) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	now := time.Now()
	if ss.ended == nil {
		ss.ended = make(map[string]endedSub)
	}
	for id, e := range ss.ended {
		if now.Sub(e.at) > endedKeep || len(ss.ended) >= endedMax {
			delete(ss.ended, id)
		}
	}
	ss.ended[sub.ID] = endedSub{publisher: sub.Publisher, at: now}
}

// endedBy reports, once, whether publisher p ended subscription id within
// endedKeep.
func (ss *subscriberSide) endedBy(id string, p peer.ID) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	e, ok := ss.ended[id]
	if !ok || e.publisher != p.String() || time.Since(e.at) > endedKeep {
		return false
	}
	delete(ss.ended, id)
	return true
}

// handleRevokeNotice serves /coattail/revoke: a publisher telling us it
// dropped one of our subscriptions, or (1.1.0) the issuer of the token we
// hold for it telling us it revoked that token. It is authenticated by the
// remote's peer id from the secure channel: only the publisher of a
// subscription can end it, and only the issuer of a token can mark it
// revoked here.
func (nw *netsvc) handleRevokeNotice(st network.Stream, p peer.ID) {
	s := &session{s: st, r: wire.NewReaderSize(st, 64<<10, requestBuffer), w: wire.NewWriterSize(st, requestBuffer), peer: p}
	var notice wire.RevokeNotice
	if err := readRequest(s, &notice); err != nil {
		_ = s.send(wire.TError, toWireError(err))
		return
	}
	v11 := st.Protocol() == wire.ProtoRevoke11
	switch {
	case !v11 && (notice.TokenID != "" || notice.RevokedAt != nil):
		_ = s.send(wire.TError, wire.Errorf(wire.CodeBadRequest, "token_id and revoked_at are revoke %s keys; this stream speaks %s", wire.Version11, wire.Version))
		return
	case notice.TokenID == "" && notice.SubscriptionID == "" && v11:
		_ = s.send(wire.TError, wire.Errorf(wire.CodeBadRequest, "a revoke notice names a subscription or a token"))
		return
	case notice.TokenID == "" && notice.RevokedAt != nil:
		_ = s.send(wire.TError, wire.Errorf(wire.CodeBadRequest, "revoked_at without token_id"))
		return
	}
	if notice.TokenID != "" {
		at := time.Now().UTC()
		if notice.RevokedAt != nil && !notice.RevokedAt.IsZero() && notice.RevokedAt.Before(at) {
			at = notice.RevokedAt.UTC()
		}
		if err := nw.n.markTokenRevoked(context.Background(), p, notice.TokenID, at); err != nil {
			_ = s.send(wire.TError, toWireError(err))
			return
		}
		if notice.SubscriptionID == "" {
			_ = s.send(wire.TOK, wire.OK{})
			return
		}
	}
	ss := nw.n.subscriber
	sub, err := ss.subs.Get(context.Background(), notice.SubscriptionID)
	if err != nil || sub.Publisher != p.String() {
		if ss.endedBy(notice.SubscriptionID, p) {
			// Ended already on the publisher's answer on the stream;
			// this is why.
			nw.n.log.Warn("subscription revoked by the publisher", "subscription", notice.SubscriptionID, "publisher", p.String(), "reason", notice.Reason)
			_ = s.send(wire.TOK, wire.OK{})
			return
		}
		_ = s.send(wire.TError, wire.Errorf(wire.CodeNotFound, "no subscription %s of yours here", notice.SubscriptionID))
		return
	}
	ss.forget(context.Background(), sub.ID)
	nw.n.log.Warn("subscription revoked by the publisher", "subscription", sub.ID, "publisher", sub.Publisher, "reason", notice.Reason)
	_ = s.send(wire.TOK, wire.OK{})
}

// removePeerSubscriptions forgets (and, best effort, ends at the publisher)
// every subscription held at a removed peer. Once the peer could not be
// told about one, the others are only forgotten here: a peer that cannot
// be reached would otherwise cost a dial timeout per subscription (its
// leftovers go when it next nudges: we answer that we hold none).
func (n *Node) removePeerSubscriptions(ctx context.Context, id string) (untold []string) {
	subs, err := n.subscriber.subs.List(ctx)
	if err != nil {
		return nil
	}
	reachable := true
	for _, sub := range subs {
		if sub.Publisher == id {
			if reachable && n.remoteUnsubscribe(ctx, sub) != nil {
				reachable = false
			}
			if !reachable {
				untold = append(untold, sub.ID)
			}
			n.subscriber.forget(ctx, sub.ID)
		}
	}
	return untold
}

// deadLetterDataBudget is how many bytes of publications' data, as the
// control API encodes them, one dead-letter list carries: half of the
// control client's answer limit (localapi.MaxAnswer), the rest being left
// for the other fields. Publications may be up to 64 MiB each
// (limits.max_payload); a list that carried them all would not be shown at
// all, and the ids needed to replay or drop them would not be seen.
const deadLetterDataBudget = localapi.MaxAnswer / 2

// DeadLetters lists one page of the parked publications, in id order (by
// subscription, then sequence), which is the datastore's key order: a
// page is read from q.After on, whatever the number of dead letters.
//
// Their data only with q.Data, until deadLetterDataBudget is spent: the
// page then ends before the entry that would pass it, More set, so that
// the next page carries it. An entry whose data alone passes the budget
// is listed without it (DataOmitted), so that the list can always be
// shown.
func (n *Node) DeadLetters(ctx context.Context, q localapi.DeadLetterQuery) (localapi.DeadLetterList, error) {
	limit := q.Limit
	switch {
	case limit == 0:
		limit = localapi.DefaultDeadLetterPage
	case limit < 0 || limit > localapi.MaxDeadLetterPage:
		return localapi.DeadLetterList{}, badRequest("dead-letter list limit %d is not from 1 to %d", limit, localapi.MaxDeadLetterPage)
	}
	if q.After != "" && !isDeadLetterID(q.After) {
		return localapi.DeadLetterList{}, badRequest("%q is not a dead letter id: they are <subscription>.<sequence of 20 digits> (see: coattail deadletters list)", q.After)
	}
	out := localapi.DeadLetterList{DeadLetters: []localapi.DeadLetter{}}
	// full ends the page at limit entries: with one more after them,
	// there are more.
	full := func() bool {
		out.More = len(out.DeadLetters) == limit
		return out.More
	}
	budget, omitted := deadLetterDataBudget, 0
	var err error
	if q.Data {
		err = n.subscriber.dead.Scan(ctx, q.After, func(_ string, get func() (deadLetter, error)) (bool, error) {
			if full() {
				return false, nil
			}
			d, err := get()
			if err != nil {
				return false, err
			}
			v := deadLetterView(d)
			switch size := encodedJSONSize(v.Data); {
			case size > deadLetterDataBudget:
				v.Data, v.DataOmitted = nil, true
				omitted++
			case size > budget:
				out.More = true // the next page carries it
				return false, nil
			default:
				budget -= size
			}
			out.DeadLetters = append(out.DeadLetters, v)
			return true, nil
		})
	} else {
		// Decoded without the publications: they are skipped, not copied.
		summaries := datastore.NewStore[deadLetterSummary](n.db.Batching(), n.subscriber.dead.Namespace().String())
		err = summaries.Scan(ctx, q.After, func(_ string, get func() (deadLetterSummary, error)) (bool, error) {
			if full() {
				return false, nil
			}
			d, err := get()
			if err != nil {
				return false, err
			}
			out.DeadLetters = append(out.DeadLetters, localapi.DeadLetter{ID: d.ID, Subscription: d.Subscription, Publisher: d.Publisher,
				Receiver: d.Receiver, Subject: d.Subject, Seq: d.Seq, Hop: d.Hop, NotJSON: bool(d.Raw), TooLarge: d.TooLarge, Error: d.Error, Attempts: d.Attempts, FailedAt: d.FailedAt})
			return true, nil
		})
	}
	if err != nil {
		return localapi.DeadLetterList{}, err
	}
	if out.More {
		out.Next = out.DeadLetters[len(out.DeadLetters)-1].ID
	}
	if omitted > 0 {
		n.log.Warn("dead-letter list: data left out of entries larger than the control API's answer carries",
			"entries", len(out.DeadLetters), "without_data", omitted, "limit_bytes", deadLetterDataBudget)
	}
	return out, nil
}

// deadLetterSummary is a deadLetter without its publication, which
// decoding skips: a list without data does not copy publications of up
// to limits.max_payload each.
type deadLetterSummary struct {
	ID           string    `json:"id"`
	Subscription string    `json:"subscription"`
	Publisher    string    `json:"publisher"`
	Receiver     string    `json:"receiver"`
	Subject      string    `json:"subject"`
	Seq          uint64    `json:"seq"`
	Hop          uint32    `json:"hop"`
	Raw          present   `json:"raw"`
	TooLarge     uint64    `json:"too_large"`
	Error        string    `json:"error"`
	Attempts     int       `json:"attempts"`
	FailedAt     time.Time `json:"failed_at"`
}

// present records whether a JSON value is there (not null), not the value.
type present bool

func (p *present) UnmarshalJSON(b []byte) error {
	*p = string(b) != "null"
	return nil
}

// isDeadLetterID reports whether id has the form of the ids park gives
// dead letters (localapi.DeadLetterID).
func isDeadLetterID(id string) bool {
	_, _, ok := localapi.ParseDeadLetterID(id)
	return ok && datastore.ValidateID(id) == nil
}

// encodedJSONSize is the size of raw JSON once encoding/json wrote it
// with HTML escaping (as the control API does): <, > and & become \u003c
// and so on, U+2028 and U+2029 \u2028 and \u2029.
func encodedJSONSize(b json.RawMessage) int {
	return len(b) + 5*(bytes.Count(b, []byte("<"))+bytes.Count(b, []byte(">"))+bytes.Count(b, []byte("&"))) +
		3*(bytes.Count(b, []byte("\u2028"))+bytes.Count(b, []byte("\u2029")))
}

func deadLetterView(d deadLetter) localapi.DeadLetter {
	if d.Raw != nil || d.TooLarge > 0 {
		d.Data = nil // stored as null: there is no JSON publication to show
	}
	return localapi.DeadLetter{ID: d.ID, Subscription: d.Subscription, Publisher: d.Publisher, Receiver: d.Receiver, Subject: d.Subject,
		Seq: d.Seq, Hop: d.Hop, Data: d.Data, NotJSON: d.Raw != nil, TooLarge: d.TooLarge, Error: d.Error, Attempts: d.Attempts, FailedAt: d.FailedAt}
}

// ReplayDeadLetter runs the receiver again for a parked publication and
// removes it from the list when the receiver succeeds. When it fails
// again, the entry records the new error, one more attempt and the time.
// A replay of an entry that is being replayed already is refused
// (CodeConflict).
func (n *Node) ReplayDeadLetter(ctx context.Context, id string, onLog func(string)) error {
	if !n.subscriber.claimDead(id) {
		return errDeadBusy(id)
	}
	defer n.subscriber.releaseDead(id)
	d, err := n.subscriber.dead.Get(ctx, id)
	if err != nil {
		return deadNotFound(id, err)
	}
	if d.TooLarge > 0 {
		// Its data is not here: left out by the publisher, or (when it
		// fit a frame) dropped on arrival. Either way it was not kept.
		why := "was larger than this instance accepts, so its data was not kept; drop it (deadletters drop %[1]s), and raise limits.max_payload to receive such publications"
		if d.TooLarge <= uint64(n.cfg.Limits.MaxPayload) {
			why = "was not kept (it was larger than the relay circuit from its publisher carries, or than this instance accepted then); drop it (deadletters drop %[1]s)"
		}
		return &localapi.Error{Status: http.StatusConflict, Code: localapi.CodeConflict,
			Message: fmt.Sprintf("dead letter %[1]s cannot be replayed: the publication (%[2]d bytes) "+why, id, d.TooLarge)}
	}
	input := d.Data
	if d.Raw != nil {
		input = d.Raw // not JSON: the runner says so, and the entry records it
	}
	_, inProc := n.inProcessReceiver(d.Receiver)
	_, err = n.runner.Run(ctx, runner.Invocation{Kind: runner.KindReceiver, Name: d.Receiver, Input: input, Caller: d.Publisher, Log: onLog,
		Env: map[string]string{
			"COATTAIL_PUBLISHER": d.Publisher, "COATTAIL_SUBJECT": d.Subject, "COATTAIL_SEQUENCE": strconv.FormatUint(d.Seq, 10),
			"COATTAIL_SUBSCRIPTION": d.Subscription, "COATTAIL_HOP": strconv.FormatUint(uint64(d.Hop), 10), "COATTAIL_REPLAY": "1",
			"COATTAIL_RUN": n.hops.key,
		}})
	if receiverOutputIgnored(err, inProc) {
		n.log.Warn("replayed receiver succeeded but printed output that is not JSON; output ignored", "id", id, "err", err)
		err = nil
	}
	if err != nil {
		var hl *hopLimitError
		if ctx.Err() == nil {
			if f, ok := n.hops.take(d.Subscription, d.Seq, d.Hop); ok {
				hl = &hopLimitError{f: f, maxHops: n.cfg.Limits.MaxHops, err: err}
				err = hl
			}
			// It failed again: the list shows this failure, not the first.
			d.Error, d.Attempts, d.FailedAt = err.Error(), d.Attempts+1, time.Now().UTC()
			// Synced like every other change of the dead letters.
			wctx := context.WithoutCancel(ctx)
			perr := n.subscriber.dead.Put(wctx, id, d)
			if perr == nil {
				perr = n.db.Sync(wctx, ds.RawKey("/deadletters"))
			}
			if perr != nil {
				n.log.Warn("cannot record a failed replay", "id", id, "err", perr)
			}
		}
		if hl != nil {
			// Replayed at its publication's hop, its cascade is refused
			// as it was: say so, and what would change it.
			return &localapi.Error{Status: http.StatusUnprocessableEntity, Code: localapi.CodeFailed,
				Message: fmt.Sprintf("dead letter %[1]s failed again on the cascade hop limit: the receiver's %[2]s of %[3]q at hop %[4]d was refused (limits.max_hops %[5]d), as it is on every replay (a replay runs at the publication's hop, %[6]d); raise limits.max_hops and restart the service to let the cascade go further, or drop it (deadletters drop %[1]s). The receiver then failed: %[7]v",
					id, hl.f.op, hl.f.subject, hl.f.hop, hl.maxHops, d.Hop, hl.err)}
		}
		return err
	}
	n.log.Info("dead letter replayed", "id", id)
	d.ID = id
	return n.subscriber.deleteDead(ctx, &d)
}

// deleteDead deletes dead letter d durably: a replayed one that came back
// after a power loss would run its receiver again.
func (ss *subscriberSide) deleteDead(ctx context.Context, d *deadLetter) error {
	if err := ss.dead.Delete(ctx, d.ID); err != nil {
		return err
	}
	ss.n.stats.deadBytes.Add(uint64(len(d.Data) + len(d.Raw) + len(d.Error)))
	return ss.n.db.Sync(ctx, ds.RawKey("/deadletters"))
}

// claimDead marks dead letter id as being replayed or dropped, reporting
// false when it is already: a drop during a replay would otherwise be
// undone by the replay recording its failure, or be followed by the
// receiver running after all.
func (ss *subscriberSide) claimDead(id string) bool {
	_, busy := ss.replaying.LoadOrStore(id, struct{}{})
	return !busy
}

// releaseDead ends a claimDead claim.
func (ss *subscriberSide) releaseDead(id string) { ss.replaying.Delete(id) }

func errDeadBusy(id string) error {
	return &localapi.Error{Status: http.StatusConflict, Code: localapi.CodeConflict, Message: "dead letter " + id + " is being replayed or dropped already"}
}

// DropDeadLetter deletes a parked publication. A dead letter being
// replayed is not dropped (CodeConflict): the replay decides.
func (n *Node) DropDeadLetter(ctx context.Context, id string) error {
	if !n.subscriber.claimDead(id) {
		return errDeadBusy(id)
	}
	defer n.subscriber.releaseDead(id)
	d, err := n.subscriber.dead.Get(ctx, id)
	if err != nil {
		return deadNotFound(id, err)
	}
	d.ID = id
	if err := n.subscriber.deleteDead(ctx, &d); err != nil {
		return err
	}
	// As a replay is: deleting a publication for good leaves a trace.
	n.log.Info("dead letter dropped", "id", id, "subscription", d.Subscription, "publisher", d.Publisher, "subject", d.Subject, "seq", d.Seq)
	return nil
}

// deadNotFound says that there is no dead letter id, in the user's terms
// (the datastore names its key); other errors pass unchanged.
func deadNotFound(id string, err error) error {
	if errors.Is(err, datastore.ErrNotFound) {
		return &localapi.Error{Status: http.StatusNotFound, Code: localapi.CodeNotFound,
			Message: fmt.Sprintf("no dead letter %q (see: coattail deadletters list)", id)}
	}
	return err
}

// handleDeliverNudge serves /coattail/deliver: a publisher that holds
// queued publications for us and sees no stream asks us to reconnect now
// instead of at the end of our back-off. Subscriptions are always pulled
// over the stream the subscriber opens (it works behind NAT), so the nudge
// carries no data and needs no token: only ids of our subscriptions at
// that very publisher are acted on.
func (nw *netsvc) handleDeliverNudge(st network.Stream, p peer.ID) {
	r := wire.NewReaderSize(st, 256<<10, requestBuffer)
	t, payload, err := r.Next()
	if err != nil || t != wire.THello {
		_ = st.Reset()
		return
	}
	var h wire.DeliverHello
	if wire.DecodeJSON(payload, &h) != nil || len(h.SubscriptionIDs) > maxNudgeIDs {
		_ = st.Reset()
		return
	}
	w := wire.NewWriterSize(st, requestBuffer)
	// The hello names the version of the stream's protocol ID, as a
	// Hello does (PROTOCOL.md, "Versioning"): another one is answered
	// version, and nothing is woken. It was not looked at.
	if err := wire.CheckVersion(wire.ProtoDeliver, h.Version); err != nil {
		if w.JSON(wire.TError, wire.ToError(err)) == nil {
			_ = w.Flush()
		}
		return
	}
	nw.n.subscriber.wake(p.String(), h.SubscriptionIDs, st.Conn())
	var ans wire.DeliverAnswer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, id := range h.SubscriptionIDs {
		if nw.n.subscriber.running(id, p.String()) {
			continue // held, and at p: no datastore read
		}
		sub, err := nw.n.subscriber.subs.Get(ctx, id)
		if errors.Is(err, datastore.ErrNotFound) || err == nil && sub.Publisher != p.String() {
			ans.Unknown = append(ans.Unknown, id)
		}
	}
	if w.JSON(wire.TOK, ans) == nil {
		_ = w.Flush()
	}
}

// nudger periodically asks subscribers that have queued publications but
// no open stream to reconnect, backing off per subscriber.
func (nw *netsvc) nudger(ctx context.Context) {
	var plan nudgePlan
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		due := plan.due(time.Now(), nw.n.queues.Status(), func(id string) bool { return nw.attached.path(id) != "" })
		for sub, ids := range due {
			if !nw.handlers.Begin() {
				return
			}
			go func() {
				defer nw.handlers.End()
				nw.nudge(ctx, sub, ids)
			}()
		}
	}
}

// nudgePlan is the nudger's back-off: each subscriber is nudged at most
// once a second, backing off to once a minute while it has subscriptions
// waiting; a subscriber with none waiting starts again at once a second.
type nudgePlan struct {
	next  map[string]time.Time
	delay map[string]time.Duration
}

// due returns, per subscriber to nudge at now, the subscriptions with
// queued publications and no stream (attached reports a stream).
func (p *nudgePlan) due(now time.Time, queues []topics.QueueStatus, attached func(id string) bool) map[string][]string {
	if p.next == nil {
		p.next, p.delay = map[string]time.Time{}, map[string]time.Duration{}
	}
	want := map[string][]string{}
	for _, q := range queues {
		if q.Depth == 0 || attached(q.ID) {
			continue
		}
		want[q.Subscriber] = append(want[q.Subscriber], q.ID)
	}
	// Only a subscriber with nothing waiting any more starts afresh: one
	// of its subscriptions that is connected, or empty, says nothing
	// about the others.
	for sub := range p.delay {
		if want[sub] == nil {
			delete(p.delay, sub)
			delete(p.next, sub)
		}
	}
	for sub := range want {
		if now.Before(p.next[sub]) {
			delete(want, sub)
			continue
		}
		d := min(max(p.delay[sub]*2, time.Second), time.Minute)
		p.delay[sub], p.next[sub] = d, now.Add(d)
	}
	return want
}

// freshSubscription is how long after its creation a subscription is kept
// even if its subscriber says it does not hold it (it may not have stored
// it yet). A variable for tests.
var freshSubscription = time.Minute

// maxNudgeIDs is how many subscriptions one nudge may name.
const maxNudgeIDs = 4096

// nudge asks subscriber to reconnect the subscriptions ids, in nudges of
// at most maxNudgeIDs (a subscriber may hold more at one publisher:
// limits.max_subscriptions_per_peer has no such bound).
func (nw *netsvc) nudge(ctx context.Context, subscriber string, ids []string) {
	pid, err := peer.Decode(subscriber)
	if err != nil {
		return
	}
	for len(ids) > 0 && ctx.Err() == nil {
		n := min(len(ids), maxNudgeIDs)
		nw.nudgeSome(ctx, pid, ids[:n])
		ids = ids[n:]
	}
}

func (nw *netsvc) nudgeSome(ctx context.Context, pid peer.ID, ids []string) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	nw.recallSubscriber(ctx, pid)
	st, err := nw.host.NewStream(network.WithAllowLimitedConn(ctx, "coattail-nudge"), pid, wire.ProtoDeliver)
	if err != nil {
		return
	}
	defer st.Close()
	_ = st.SetDeadline(time.Now().Add(10 * time.Second))
	w := wire.NewWriter(st)
	if w.JSON(wire.THello, wire.DeliverHello{Version: wire.Version, SubscriptionIDs: ids}) != nil || w.Flush() != nil {
		return
	}
	_ = st.CloseWrite()
	t, payload, err := wire.NewReader(st, 1<<20).Next()
	var ans wire.DeliverAnswer
	if err != nil || t != wire.TOK || wire.DecodeJSON(payload, &ans) != nil {
		return
	}
	// The subscriber no longer holds these: nobody will resume them. Only
	// that subscriber's own subscriptions can go (it is the authenticated
	// peer of this stream), and only ids this nudge named.
	asked := make(map[string]bool, len(ids))
	for _, id := range ids {
		asked[id] = true
	}
	for _, id := range ans.Unknown {
		// A subscription just made may not be stored at its subscriber yet.
		if sub, ok := nw.n.queues.Subscription(id); !asked[id] || !ok || time.Since(sub.CreatedAt) < freshSubscription {
			continue
		}
		_, _ = nw.dropSubscriptionOf(context.Background(), pid, id, "subscription removed: its subscriber no longer holds it")
	}
}

// receiverCtx is the context of one in-process receiver call, carrying its
// Invocation: one allocation per call instead of an Invocation and a
// context.WithValue node. Everything else is the embedded context's.
type receiverCtx struct {
	context.Context
	inv Invocation
}

// Value serves InvocationFrom; other keys go to the embedded context.
func (c *receiverCtx) Value(key any) any {
	if _, ok := key.(invocationKey); ok {
		return &c.inv
	}
	return c.Context.Value(key)
}

// cloneDelivery copies a delivery's subject and data into one new buffer
// (one allocation): the strings and slices a receiver gets stay valid
// after it returns. nil data stays nil.
func cloneDelivery(subject string, data json.RawMessage) (string, json.RawMessage) {
	buf := make([]byte, 0, len(subject)+len(data))
	buf = append(buf, subject...)
	buf = append(buf, data...)
	var s string
	if len(subject) > 0 {
		s = unsafe.String(&buf[0], len(subject)) // buf is never written again
	}
	if data == nil {
		return s, nil
	}
	return s, json.RawMessage(buf[len(subject):len(buf):len(buf)])
}

// callInline runs an in-process receiver on the calling goroutine, turning
// a panic into an error so one bad publication cannot take the service
// down.
// errCallTimeout is the cause with which a callWatchdog cancels a call.
var errCallTimeout = errors.New("node: in-process receiver call timed out")

// callWatchdog bounds the in-process receiver calls of one subscription
// stream to a timeout without a timer or clock read per call (a
// subscription runs up to a million calls a second): a goroutine ticks
// four times per timeout, begin records the tick a call starts in and hands
// out the current call context, and a call still running five ticks later
// (more than the timeout) has that context cancelled. The next begin after
// a cancellation makes a fresh context. A receiver that honours its
// context then fails with runner.ErrTimeout and goes through the retries
// to the dead letters; Go cannot stop one that ignores it. (A call that
// begins just as the one before it is cancelled for running too long may
// share its cancellation; it then fails and is retried like any failure.)
type callWatchdog struct {
	timeout time.Duration
	parent  context.Context
	tick    atomic.Int64 // incremented by watch every timeout/4
	started atomic.Int64 // tick+1 at which the call in progress began; 0 between calls
	cur     atomic.Pointer[callCtx]
	done    chan struct{}
}

type callCtx struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
}

func newCallWatchdog(parent context.Context, timeout time.Duration) *callWatchdog {
	w := &callWatchdog{timeout: timeout, parent: parent, done: make(chan struct{})}
	w.cur.Store(w.newCtx())
	go w.watch()
	return w
}

func (w *callWatchdog) newCtx() *callCtx {
	ctx, cancel := context.WithCancelCause(w.parent)
	return &callCtx{ctx: ctx, cancel: cancel}
}

func (w *callWatchdog) watch() {
	t := time.NewTicker(max(w.timeout/4, 2*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-w.done:
			return
		case <-w.parent.Done():
			return
		case <-t.C:
			now := w.tick.Add(1)
			if s := w.started.Load(); s != 0 && now-(s-1) >= 5 {
				w.cur.Load().cancel(errCallTimeout)
			}
		}
	}
}

// begin starts a call and returns its context.
func (w *callWatchdog) begin() context.Context {
	c := w.cur.Load()
	if c.ctx.Err() != nil && w.parent.Err() == nil {
		c = w.newCtx()
		w.cur.Store(c)
	}
	w.started.Store(w.tick.Load() + 1)
	return c.ctx
}

// end ends the call begun last.
func (w *callWatchdog) end() { w.started.Store(0) }

func (w *callWatchdog) stop() {
	close(w.done)
	w.cur.Load().cancel(context.Canceled)
}

func callInline(ctx context.Context, h Handler, name string, data json.RawMessage) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: receiver %q panicked: %v", runner.ErrPanic, name, p)
		}
	}()
	_, err = h(ctx, data)
	if err != nil {
		return fmt.Errorf("%w: receiver %q failed: %w", runner.ErrExit, name, err)
	}
	return nil
}
