package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coattail/coattail/auth"
	"github.com/coattail/coattail/node/internal/jsonx"
	"github.com/coattail/coattail/node/internal/textx"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/runner"
	"github.com/coattail/coattail/node/wire"
	"github.com/coattail/coattail/topics"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	manet "github.com/multiformats/go-multiaddr/net"
)

// isSubscribe reports whether proto is a version of subscribe.
func isSubscribe(proto protocol.ID) bool {
	return proto == wire.ProtoSubscribe || proto == wire.ProtoSubscribe11
}

func isPublish(proto protocol.ID) bool {
	return proto == wire.ProtoPublish || proto == wire.ProtoPublish11 || proto == wire.ProtoPublish12 || proto == wire.ProtoPublish13
}

// frameOverhead is the room a frame needs beyond its payload.
const frameOverhead = 64 << 10

func (n *Node) maxFrame() int { return int(n.cfg.Limits.MaxPayload) + frameOverhead }

// Stream buffer sizes: request streams carry a few small frames; a
// subscribe stream carries batches of deliveries.
const (
	requestBuffer  = 4 << 10
	deliveryBuffer = 64 << 10
)

func newSession(st network.Stream, maxFrame int, p peer.ID, proto protocol.ID) *session {
	bs := requestBuffer
	if isSubscribe(proto) {
		bs = deliveryBuffer
	}
	return &session{s: st, r: wire.NewReaderSize(st, maxFrame, bs), w: wire.NewWriterSize(st, bs), peer: p}
}

// session is one authorized protocol stream.
type session struct {
	s     network.Stream
	r     *wire.Reader
	w     *wire.Writer
	grant *auth.Grant // server side only
	peer  peer.ID
	// peerMaxFrame is the largest frame the acceptor reads, from its
	// answer to the hello (opener side; 0: it did not say).
	peerMaxFrame int
	// release frees the stream's slot in the per-peer stream limit (server
	// side); a subscription stream frees it once it turns into a long-lived
	// delivery stream, bounded by limits.max_subscriptions_per_peer instead.
	release func()
	// manyResults: a TResult does not end the stream (publish answers
	// each batch); otherwise the first TResult, like any TError, is the
	// stream's last answer.
	manyResults bool
	// final: the stream's last answer went out (server side).
	final atomic.Bool
	wmu   sync.Mutex
}

// answered frees the stream's slot as its last answer goes out: the peer
// may open its next stream the moment it reads it, and with the slot held
// until the handler had returned, a peer making one request at a time was
// refused rate_limited when its next stream came first.
func (s *session) answered(t wire.Type) {
	if t == wire.TError || t == wire.TResult && !s.manyResults {
		s.final.Store(true)
		if s.release != nil {
			s.release()
		}
	}
}

// send writes and flushes one JSON frame; safe for concurrent use.
func (s *session) send(t wire.Type, v any) error {
	s.answered(t)
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := s.w.JSON(t, v); err != nil {
		return err
	}
	return s.w.Flush()
}

// sendWithin is send with a write deadline of d from now.
func (s *session) sendWithin(d time.Duration, t wire.Type, v any) error {
	s.answered(t)
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_ = s.s.SetWriteDeadline(time.Now().Add(d))
	if err := s.w.JSON(t, v); err != nil {
		return err
	}
	return s.w.Flush()
}

func (nw *netsvc) register() {
	nw.host.SetStreamHandler(wire.ProtoList, nw.serve(nw.handleList))
	nw.host.SetStreamHandler(wire.ProtoPerform, nw.serve(nw.handlePerform))
	nw.host.SetStreamHandler(wire.ProtoPerform11, nw.serve(nw.handlePerform))
	nw.host.SetStreamHandler(wire.ProtoPublish, nw.serve(nw.handlePublish))
	nw.host.SetStreamHandler(wire.ProtoPublish11, nw.serve(nw.handlePublish))
	nw.host.SetStreamHandler(wire.ProtoPublish12, nw.serve(nw.handlePublish))
	nw.host.SetStreamHandler(wire.ProtoPublish13, nw.serve(nw.handlePublish))
	nw.host.SetStreamHandler(wire.ProtoSubscribe, nw.serve(nw.handleSubscribe))
	nw.host.SetStreamHandler(wire.ProtoSubscribe11, nw.serve(nw.handleSubscribe))
	nw.host.SetStreamHandler(wire.ProtoUnsubscribe, nw.serve(nw.handleUnsubscribe))
	nw.host.SetStreamHandler(wire.ProtoRevoke, nw.servePeer(nw.handleRevokeNotice))
	nw.host.SetStreamHandler(wire.ProtoRevoke11, nw.servePeer(nw.handleRevokeNotice))
	nw.host.SetStreamHandler(wire.ProtoDeliver, nw.servePeer(nw.handleDeliverNudge))
	// A direct connection to a publisher (a hole punch that succeeded, or
	// a dial that did) takes over subscriptions streamed through a relay.
	nw.host.Network().Notify(&network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
		if !isRelayed(c) {
			nw.n.subscriber.upgraded(c.RemotePeer().String())
		}
	}})
}

func remoteOf(c network.Conn) auth.Remote {
	r := auth.Remote{Peer: c.RemotePeer(), Relayed: isRelayed(c)}
	if ip, err := manet.ToIP(c.RemoteMultiaddr()); err == nil {
		if a, ok := netip.AddrFromSlice(ip); ok {
			r.IP = a.Unmap()
		}
	}
	return r
}

// serve wraps a protocol handler with the checks every stream gets: the
// per-peer limits, deadlines, and session authentication (Hello with a
// token, verified before anything else happens).
func (nw *netsvc) serve(fn func(ctx context.Context, s *session) error) network.StreamHandler {
	return func(st network.Stream) {
		if !nw.handlers.Begin() {
			_ = st.Reset() // closing
			return
		}
		defer nw.handlers.End()
		p := st.Conn().RemotePeer()
		log := nw.n.log.With("peer", p.String(), "protocol", string(st.Protocol()))
		s := newSession(st, nw.n.maxFrame(), p, st.Protocol())
		if v := nw.limits.acquire(p); !v.ok() {
			e := wire.Errorf(wire.CodeRateLimited, "too many concurrent streams from your peer (limit %d)", nw.limits.maxStreams)
			if v.retryAfter > 0 {
				e = wire.Errorf(wire.CodeRateLimited, "request rate over the limit of %v/s", nw.limits.rate)
				e.RetryAfterMs = v.retryAfter.Milliseconds() + 1
			}
			log.Debug("stream refused by limits", "err", e.Message)
			_ = st.SetDeadline(time.Now().Add(time.Second))
			_ = s.send(wire.TError, e)
			_ = st.Close()
			return
		}
		s.release = sync.OnceFunc(func() { nw.limits.release(p) })
		s.manyResults = isPublish(st.Protocol())
		defer s.release()
		_ = st.SetDeadline(time.Now().Add(nw.n.cfg.Limits.StreamTimeout))
		g, err := nw.authenticate(s)
		if err != nil {
			if ok, extra := nw.n.noisy.allow(); ok {
				log.Info("stream refused", append([]any{"err", err}, extra...)...)
			}
			if re, ok := revokedRefusal(err); ok {
				// Its holder learns which token, and records it, first.
				nw.tellRefused(p, re)
			}
			we := toWireError(err)
			_ = s.send(wire.TError, we)
			if isSubscribe(st.Protocol()) && (we.Code == wire.CodeUnauthorized || we.Code == wire.CodeForbidden) {
				nw.dropRefusedSubscription(s, p)
			}
			_ = st.Close()
			return
		}
		s.grant = g
		// A perform stream is not reset on revocation: its handler's
		// context ends (below) and its waits are cut short, and the
		// caller is told that the token was revoked. It used to see only
		// "reset the stream before answering".
		perform := st.Protocol() == wire.ProtoPerform || st.Protocol() == wire.ProtoPerform11
		var end func()
		if perform {
			end = func() {
				now := time.Now()
				_ = st.SetReadDeadline(now)
				_ = st.SetWriteDeadline(now.Add(time.Second))
				// An action that ignores its context (an in-process
				// handler) must not hold the caller: it is cut off as
				// before, only later.
				time.AfterFunc(5*time.Second, func() {
					if !s.final.Load() {
						_ = st.Reset()
					}
				})
			}
		}
		nw.sess.add(g.TokenID, st, end)
		defer nw.sess.remove(g.TokenID, st)
		if g.Revoked() { // revoked between Verify and add: OnRevoke missed this stream
			_ = st.Reset()
			return
		}
		ctx, cancel := context.WithCancel(nw.handlers.ctx)
		defer cancel()
		// Revocation resets the stream, but a handler that no longer reads
		// it (perform, once the request is in) would not notice: cancel its
		// context too, so an action running for a revoked token stops.
		go func() {
			select {
			case <-g.Done():
				cancel()
			case <-ctx.Done():
			}
		}()
		// The token is verified once, here; a stream must not outlive it
		// (a publish stream would otherwise keep working on an expired
		// token). Expiry ends the stream as revocation does.
		if !g.Expires.IsZero() {
			// A second after the expiry Verify allows: a protocol that
			// handles expiry itself (the deliver loop removes the
			// subscription and tells the subscriber why) goes first.
			t := time.AfterFunc(time.Until(g.Expires.Add(auth.Leeway+time.Second)), func() {
				cancel()
				_ = st.Reset()
			})
			defer t.Stop()
		}
		err = fn(ctx, s)
		if g.Revoked() {
			if perform {
				nw.tellRevoked(s, g.TokenID)
				return
			}
			// Revocation already reset the stream; there is nobody to tell.
			_ = st.Reset()
			return
		}
		if err != nil {
			if !errors.Is(err, network.ErrReset) && !errors.Is(err, io.EOF) {
				if ok, extra := nw.n.noisy.allow(); ok {
					log.Info("request failed", append([]any{"token_id", g.TokenID, "err", err}, extra...)...)
				}
			}
			_ = s.send(wire.TError, toWireError(err))
		}
		_ = st.Close()
	}
}

// tellRevoked ends a perform stream whose token was revoked while it ran:
// unless its answer already went out, the caller is told (unauthorized)
// that the token was revoked and the action stopped. A stream that cannot
// take the error within a second is reset.
func (nw *netsvc) tellRevoked(s *session, tokenID string) {
	if !s.final.Load() {
		_ = s.s.SetWriteDeadline(time.Now().Add(time.Second))
		e := wire.Errorf(wire.CodeUnauthorized, "%v: token %s was revoked while the request ran; the action was stopped", auth.ErrRevoked, tokenID)
		if err := s.send(wire.TError, e); err != nil {
			_ = s.s.Reset()
			return
		}
	}
	_ = s.s.Close()
}

// dropRefusedSubscription removes the subscription that a subscribe
// stream refused for its token tried to resume (the request follows the
// hello on the stream). The subscriber takes that refusal as final and
// forgets the subscription, so a queue kept here would only fill up: for
// example when the refused token is not the one the subscription was made
// with (the subscriber replaced its token, then that one was revoked or
// expired while it was away). Only the connection's own peer's
// subscription can go.
func (nw *netsvc) dropRefusedSubscription(s *session, p peer.ID) {
	_ = s.s.SetReadDeadline(time.Now().Add(2 * time.Second))
	var req wire.SubscribeRequest
	if readRequest(s, &req) != nil || req.SubscriptionID == "" {
		return
	}
	if _, err := nw.dropSubscriptionOf(context.Background(), p, req.SubscriptionID, "subscription removed: its subscriber's token was refused"); err != nil {
		nw.n.log.Warn("cannot remove a subscription whose subscriber's token was refused", "subscription", req.SubscriptionID, "err", err)
	}
}

// servePeer wraps the handlers of the two streams a publisher opens toward
// a subscriber (revoke, deliver): they carry no token, the remote is
// authenticated by the peer id of the secure channel, and they are short.
func (nw *netsvc) servePeer(fn func(st network.Stream, p peer.ID)) network.StreamHandler {
	return func(st network.Stream) {
		if !nw.handlers.Begin() {
			_ = st.Reset() // closing
			return
		}
		defer nw.handlers.End()
		p := st.Conn().RemotePeer()
		if v := nw.limits.acquire(p); !v.ok() {
			_ = st.Reset()
			return
		}
		defer nw.limits.release(p)
		_ = st.SetDeadline(time.Now().Add(10 * time.Second))
		defer st.Close()
		fn(st, p)
	}
}

func (nw *netsvc) authenticate(s *session) (*auth.Grant, error) {
	t, payload, err := s.r.Next()
	if err != nil {
		return nil, fmt.Errorf("%w: reading hello: %w", ErrBadRequest, err)
	}
	if t != wire.THello {
		return nil, wire.Errorf(wire.CodeUnauthorized, "the first frame must be a hello carrying a token (got frame type %d)", t)
	}
	var h wire.Hello
	if err := wire.DecodeJSON(payload, &h); err != nil {
		return nil, fmt.Errorf("%w: hello: %s", ErrBadRequest, clip(err.Error()))
	}
	// The hello names the version of the protocol ID the stream was
	// opened with.
	version := wire.VersionOf(string(s.s.Protocol()))
	if h.Version != version {
		if h.Version == "" {
			return nil, wire.Errorf(wire.CodeVersion, "the hello names no protocol version; this stream speaks %s", version)
		}
		return nil, wire.Errorf(wire.CodeVersion, "remote speaks coattail protocol %q, this stream speaks %s", clip(h.Version), version)
	}
	g, err := nw.n.auth.Verify(context.Background(), h.Token, remoteOf(s.s.Conn()))
	if err != nil {
		return nil, err
	}
	ok := wire.OK{}
	if p := s.s.Protocol(); p == wire.ProtoSubscribe11 || isPublish(p) && p != wire.ProtoPublish {
		ok.MaxFrame = nw.n.maxFrame()
	}
	if err := s.send(wire.TOK, ok); err != nil {
		return nil, err
	}
	return g, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// toWireError turns any error into the typed error sent to the remote.
func toWireError(err error) *wire.Error {
	var we *wire.Error
	if errors.As(err, &we) {
		return we
	}
	// The action ran: the refusal's "retry later" would run it again.
	var np *notPublishedError
	if errors.As(err, &np) {
		w := *toWireError(np.err)
		w.Message = fmt.Sprintf("action %q ran on the remote instance but its output was not published (performing it again runs it again): %s",
			np.action, strings.TrimSuffix(w.Message, "; nothing of this batch was queued, retry later"))
		return &w
	}
	code := wire.CodeInternal
	switch {
	case isAuthError(err), errors.Is(err, auth.ErrInvalid), errors.Is(err, auth.ErrTokenType):
		code = wire.CodeUnauthorized
	case errors.Is(err, ErrHopLimit):
		code = wire.CodeHopLimit
	// Its message carries the datastore's own error, with local paths.
	case errors.Is(err, topics.ErrStorageFailed):
		return &wire.Error{Code: wire.CodeUnavailable, Message: "the remote instance's queue storage failed; its owner must restart it"}
	case errors.Is(err, topics.ErrStorageDamaged):
		return &wire.Error{Code: wire.CodeUnavailable, Message: "the remote instance's datastore is damaged; its owner must restart it (or restore its data from a backup)"}
	// It names the full subscription, its pattern and its subscriber:
	// other peers' business (and an id to aim at). The owner's log and
	// API have the details.
	case errors.Is(err, topics.ErrQueueFull):
		return &wire.Error{Code: wire.CodeUnavailable, Message: "a subscriber's queue at the remote instance is full (queue_full: reject); nothing of this batch was queued, retry later"}
	// Its message names a local path.
	case errors.Is(err, topics.ErrNoSpace):
		return &wire.Error{Code: wire.CodeUnavailable, Message: "the remote instance's disk is almost full (limits.min_free_disk); nothing of this batch was queued, retry later"}
	case errors.Is(err, topics.ErrClosed):
		code = wire.CodeUnavailable
	case errors.Is(err, topics.ErrNoSubscription):
		code = wire.CodeNotFound
	// Their messages name local paths: say what is wrong without them.
	case errors.Is(err, runner.ErrNotExecutable):
		return &wire.Error{Code: wire.CodeActionFailed, Message: "the program of this action is not executable on the remote instance (its owner must chmod +x it)"}
	case errors.Is(err, runner.ErrNotFound):
		return &wire.Error{Code: wire.CodeNotFound, Message: "no such action on the remote instance"}
	case errors.Is(err, auth.ErrNotFound):
		code = wire.CodeNotFound
	// Before bad_request: an oversized frame is also reported as a bad
	// request by readRequest and authenticate, but too_large says why.
	// An action's output over limits.max_output is too_large as well
	// (PROTOCOL.md), not a failure of the action.
	case errors.Is(err, runner.ErrInputTooLarge), errors.Is(err, wire.ErrFrameTooLarge), errors.Is(err, runner.ErrOutputTooLarge):
		code = wire.CodeTooLarge
	case errors.Is(err, ErrBadRequest), errors.Is(err, topics.ErrInvalidSubject), errors.Is(err, topics.ErrInvalidPattern),
		errors.Is(err, runner.ErrBadInput):
		code = wire.CodeBadRequest
	case errors.Is(err, runner.ErrTimeout):
		code = wire.CodeTimeout
	case errors.Is(err, runner.ErrExit), errors.Is(err, runner.ErrBadOutput), errors.Is(err, runner.ErrNotExecutable):
		code = wire.CodeActionFailed
	}
	if code == wire.CodeInternal {
		// Internal details (paths, storage errors) stay in this side's log.
		return &wire.Error{Code: code, Message: "internal error; the remote instance logged the details"}
	}
	return &wire.Error{Code: code, Message: err.Error()}
}

// readRequest reads the single request frame of a request/response stream.
func readRequest(s *session, v any) error {
	t, payload, err := s.r.Next()
	if err != nil {
		return fmt.Errorf("%w: reading request: %w", ErrBadRequest, err)
	}
	if t != wire.TRequest {
		return wire.Errorf(wire.CodeBadRequest, "expected a request frame, got type %d", t)
	}
	if err := wire.DecodeJSON(payload, v); err != nil {
		return fmt.Errorf("%w: %s", ErrBadRequest, clip(err.Error()))
	}
	return nil
}

// maxEcho bounds what of a remote's input goes into an error message (the
// log line and the error frame sent back): decoding errors quote it.
const maxEcho = 160

// clip shortens s to at most maxEcho bytes (and "…").
func clip(s string) string { return textx.Snippet(s, maxEcho) }

func (nw *netsvc) handleList(ctx context.Context, s *session) error {
	var req wire.ListRequest
	if err := readRequest(s, &req); err != nil {
		return err
	}
	if req.Receivers {
		return wire.Errorf(wire.CodeForbidden, "receivers are private to their instance")
	}
	infos, err := nw.n.runner.List(runner.KindAction)
	if err != nil {
		return err
	}
	resp := wire.ListResponse{Actions: []wire.ActionInfo{}}
	for _, i := range infos {
		a := wire.ActionInfo{Name: i.Name, Performable: s.grant.CanPerform(i.Name), Publishable: s.grant.CanPublish(i.Name), Subscribable: s.grant.CanSubscribe(i.Name)}
		if a.Performable || a.Publishable || a.Subscribable {
			resp.Actions = append(resp.Actions, a)
		}
	}
	return s.send(wire.TResult, resp)
}

func (nw *netsvc) handlePerform(ctx context.Context, s *session) error {
	var req wire.PerformRequest
	if err := readRequest(s, &req); err != nil {
		if errors.Is(err, wire.ErrFrameTooLarge) {
			msg := err.Error()
			if i := strings.Index(msg, "wire: "); i >= 0 {
				msg = msg[i:]
			}
			return wire.Errorf(wire.CodeTooLarge, "the perform request is over this instance's limits.max_payload (%v, and 64 KiB for the rest of the request): %s", nw.n.cfg.Limits.MaxPayload, msg)
		}
		return err
	}
	if err := topics.ValidateSubject(req.Action); err != nil {
		return err
	}
	if !s.grant.CanPerform(req.Action) {
		return wire.Errorf(wire.CodeForbidden, "token %s does not allow performing %q", s.grant.TokenID, req.Action)
	}
	if !nw.n.runner.Exists(runner.KindAction, req.Action) {
		return wire.Errorf(wire.CodeNotFound, "no action %q at %s", req.Action, nw.n.id)
	}
	if req.Notify && !s.grant.CanPublish(req.Action) {
		return wire.Errorf(wire.CodeForbidden, "token %s allows performing %q but not publishing it (needed for --notify)", s.grant.TokenID, req.Action)
	}
	// The action runs under the stream's lifetime: a caller that goes away
	// cancels it.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var stoppedBy atomic.Pointer[wire.Error] // why the caller's side stopped the action, if it can still be told
	go func() {
		// The caller sends nothing more: any end of its side (EOF, reset)
		// before the result means it went away, and anything else breaks
		// the protocol. A caller that only closed its write half, or sent
		// more, still reads: it is told why its action stopped (it was
		// told "internal error").
		t, _, err := s.r.Next()
		switch {
		case err == nil:
			stoppedBy.Store(wire.Errorf(wire.CodeBadRequest, "unexpected frame type %d after the perform request; the action was stopped", t))
		case errors.Is(err, io.EOF):
			stoppedBy.Store(wire.Errorf(wire.CodeBadRequest, "the caller closed its side of the stream before the result; the action was stopped (keep it open until the answer)"))
		case errors.Is(err, os.ErrDeadlineExceeded) || isTimeout(err):
			stoppedBy.Store(wire.Errorf(wire.CodeTimeout, "the perform ran past its deadline (limits.action_timeout + stream_timeout); the action was stopped"))
		case !errors.Is(err, network.ErrReset):
			stoppedBy.Store(wire.Errorf(wire.CodeBadRequest, "malformed frame after the perform request; the action was stopped"))
		}
		cancel()
	}()
	st := nw.n.cfg.Limits.StreamTimeout
	_ = s.s.SetDeadline(time.Now().Add(nw.n.cfg.Limits.ActionTimeout + st))
	// Every flush has its own deadline (PROTOCOL.md): a caller that stops
	// taking its log lines is cut off once a write has blocked for
	// stream_timeout, and its action stops. Without it the action stalled
	// on its full stderr pipe, and the stream held its slot, until the
	// perform's overall deadline (action_timeout later).
	onLog := func(line string) {
		if ctx.Err() != nil {
			return
		}
		if err := s.sendWithin(st, wire.TLog, wire.Log{Line: wireLogLine(line)}); err != nil {
			cancel()
			_ = s.s.Reset()
		}
	}
	res, err := nw.n.Perform(ctx, localapi.PerformRequest{
		Action: req.Action, Input: req.Input, Notify: req.Notify, To: req.To, Hop: req.Hop, Caller: s.peer.String(),
	}, onLog)
	// The answer, or the error frame serve sends, has its own deadline too
	// (the last log line's may have passed while the action ran on).
	_ = s.s.SetWriteDeadline(time.Now().Add(st))
	if err != nil {
		if we := stoppedBy.Load(); we != nil && ctx.Err() != nil {
			return we
		}
		return err
	}
	ans := wire.PerformResult{Output: res.Output, Published: res.Published}
	if s.s.Protocol() == wire.ProtoPerform11 {
		ans.Dropped = res.Dropped // an older caller refuses the key
	}
	return s.send(wire.TResult, ans)
}

// maxWireLogLine bounds a log line as JSON-encoded in a TLog frame. Any
// peer reads frames of max_payload (at least 1 KiB) + 64 KiB, but a line of
// runner.MaxLogLine bytes can take six times that once JSON escapes its
// control characters and invalid UTF-8 (\u0001, \ufffd), and a caller
// refuses the whole perform over one oversized frame.
const maxWireLogLine = 32 << 10

// wireLogLine returns line cut (ending in runner.TruncatedMark) where its
// JSON encoding would pass maxWireLogLine. The encoder turns each byte of
// invalid UTF-8 into \ufffd.
func wireLogLine(line string) string {
	size := 0
	for i, r := range line {
		switch {
		case r == '"' || r == '\\' || r == '\n' || r == '\r' || r == '\t':
			size += 2
		case r < 0x20 || r == '\u2028' || r == '\u2029':
			size += 6
		case r == utf8.RuneError:
			if _, n := utf8.DecodeRuneInString(line[i:]); n == 1 {
				size += 6
			} else {
				size += n
			}
		default:
			size += utf8.RuneLen(r)
		}
		if size > maxWireLogLine-len(runner.TruncatedMark) {
			return line[:i] + runner.TruncatedMark
		}
	}
	return line
}

// handlePublish takes batches of publications from a remote publisher and
// answers each batch once it is durably queued.
func (nw *netsvc) handlePublish(ctx context.Context, s *session) error {
	var stored uint64
	// A frame may be 64 KiB over max_payload, a publication may not: it
	// is bounded as a local one is (PublishRequest).
	maxData := int(nw.n.cfg.Limits.MaxPayload)
	// Every answer has its own write deadline, the error frame serve sends
	// when this returns one too: the stream's first deadline, set when it
	// opened, would cut off the answers of a stream that lives longer.
	st := nw.n.cfg.Limits.StreamTimeout
	defer func() { _ = s.s.SetWriteDeadline(time.Now().Add(st)) }()
	// A batch refused for one of its publications says which: on 1.3.0 in
	// the error's item (the publisher maps it back to what it was asked to
	// publish), before that only in the message (an older publisher's
	// strict decoding refuses the key).
	refuseItem := func(code wire.Code, item int, subject, why string) error {
		if s.s.Protocol() == wire.ProtoPublish13 {
			e := wire.Errorf(code, "a publication to %q %s", subject, why)
			e.Item = item
			return e
		}
		return wire.Errorf(code, "publication %d of the batch (%q) %s", item, subject, why)
	}
	for {
		_ = s.s.SetReadDeadline(time.Now().Add(st))
		t, payload, err := s.r.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return publishReadError(err)
		}
		if t != wire.TPublish {
			return wire.Errorf(wire.CodeBadRequest, "expected a publish frame, got type %d", t)
		}
		if d := nw.limits.allow(s.peer); d > 0 {
			e := wire.Errorf(wire.CodeRateLimited, "publish rate over the limit of %v batches/s", nw.limits.rate)
			e.RetryAfterMs = d.Milliseconds() + 1
			return e
		}
		// The decoded subjects and data alias the reader's buffer, which
		// the next frame reuses: data only needs to live until publish
		// returns (the queues copy what they keep), but the queues keep
		// the subject string, so each distinct one is cloned (batches
		// mostly repeat one subject).
		var pubs []publication
		var rawSubj, subj string
		err = wire.DecodePublishBatch(payload, func(p *wire.Publication) error {
			// A frame of a MiB of tiny publications would otherwise cost
			// tens of MiB of bookkeeping.
			if len(pubs) >= wire.MaxPublishBatch {
				return wire.Errorf(wire.CodeTooLarge, "a publish batch carries at most %d publications", wire.MaxPublishBatch)
			}
			if p.Subject != rawSubj || subj == "" {
				if err := topics.ValidateSubject(p.Subject); err != nil {
					return err
				}
				if !s.grant.CanPublish(p.Subject) {
					return wire.Errorf(wire.CodeForbidden, "token %s does not allow publishing %q", s.grant.TokenID, p.Subject)
				}
				rawSubj, subj = p.Subject, strings.Clone(p.Subject)
			}
			if len(p.Data) > maxData {
				return refuseItem(wire.CodeTooLarge, len(pubs)+1, subj, fmt.Sprintf("is %d bytes, over limits.max_payload (%d bytes)", len(p.Data), maxData))
			}
			// Checked here, at the source: a publication that is not JSON
			// would otherwise reach every subscriber's dead letters.
			if !jsonx.Valid(p.Data) {
				return refuseItem(wire.CodeBadRequest, len(pubs)+1, subj, "is not valid JSON in UTF-8")
			}
			pubs = append(pubs, publication{Subject: subj, Data: json.RawMessage(p.Data), Hop: int(p.Hop)})
			return nil
		})
		if errors.Is(err, wire.ErrMalformed) {
			// A broken batch is the publisher's fault, not this instance's.
			return fmt.Errorf("%w: %w", ErrBadRequest, err)
		}
		if err != nil {
			return err
		}
		res, err := nw.n.publish(ctx, pubs, nil)
		if err != nil {
			return err
		}
		stored += uint64(len(pubs))
		ans := wire.PublishResult{Accepted: len(pubs), LastSeq: stored, Published: res.Queued}
		if p := s.s.Protocol(); p == wire.ProtoPublish12 || p == wire.ProtoPublish13 {
			ans.Dropped = res.Dropped // an older publisher refuses the key
		}
		if err := s.sendWithin(st, wire.TResult, ans); err != nil {
			return err
		}
	}
}

// publishReadError is what a publish stream answers when reading its next
// frame failed: a frame that breaks the framing (empty, of an unknown
// type, cut short, a length over 64 bits) is the publisher's bad request,
// too_large when it is over the limit, and a publisher that stayed silent
// past stream_timeout mid-batch is told so. Unwrapped, these errors were
// answered internal, as if this instance were broken.
func publishReadError(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) || isTimeout(err) {
		return wire.Errorf(wire.CodeTimeout, "no publish frame within limits.stream_timeout")
	}
	if errors.Is(err, wire.ErrFrameTooLarge) {
		return wire.Errorf(wire.CodeTooLarge, "a publish frame over this instance's limit (limits.max_payload + 64 KiB); send smaller batches: %v", err)
	}
	return fmt.Errorf("%w: reading a publish frame: %w", ErrBadRequest, err)
}
