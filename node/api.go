package node

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coattail/coattail/auth"
	"github.com/coattail/coattail/datastore"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/runner"
	"github.com/coattail/coattail/node/wire"
	"github.com/coattail/coattail/topics"
	"github.com/libp2p/go-libp2p/core/peer"
)

// maxControlBody bounds a control API request body.
const maxControlBody = 70 << 20

// Handler returns the control API. stop, if non-nil, is called by
// POST /v1/stop.
func (n *Node) Handler(stop func()) http.Handler {
	mux := http.NewServeMux()
	p := localapi.Prefix
	wd := n.controlWriteTimeout()
	route := func(pattern string, h func(w http.ResponseWriter, r *http.Request) (any, error)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			// A streamed answer leaves its last write deadline armed (it
			// bounds the final flush net/http does after the handler);
			// a later request on the same connection starts without it.
			_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
			r.Body = http.MaxBytesReader(w, r.Body, maxControlBody)
			v, err := h(w, r)
			if err != nil {
				e := requestError(r, err)
				writeJSON(w, e.Status, e, wd)
				return
			}
			if v == streamed {
				return
			}
			writeJSON(w, http.StatusOK, v, wd)
		})
	}
	route("GET "+p+"/status", func(w http.ResponseWriter, r *http.Request) (any, error) { return n.Status(), nil })
	route("POST "+p+"/stop", func(w http.ResponseWriter, r *http.Request) (any, error) {
		if stop == nil {
			return nil, &localapi.Error{Status: http.StatusConflict, Code: localapi.CodeConflict, Message: "no service is running"}
		}
		go stop()
		return struct{}{}, nil
	})
	route("GET "+p+"/actions", func(w http.ResponseWriter, r *http.Request) (any, error) {
		q := r.URL.Query()
		receivers := false
		if q.Has("receivers") {
			b, err := strconv.ParseBool(q.Get("receivers"))
			if err != nil {
				return nil, badRequest("query parameter receivers=%q is not a boolean (1, true, 0 or false)", q.Get("receivers"))
			}
			receivers = b
		}
		// An empty peer is a script's unset variable, not "here".
		if q.Has("peer") && q.Get("peer") == "" {
			return nil, badRequest("query parameter peer is empty; leave it out to list this instance's actions")
		}
		return n.ListActions(r.Context(), receivers, canonicalPeer(q.Get("peer")))
	})
	route("POST "+p+"/actions/perform", func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req localapi.PerformRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		req.Peer = canonicalPeer(req.Peer)
		return streamed, n.streamPerform(w, r, req)
	})
	route("POST "+p+"/actions/publish", func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req localapi.PublishRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		req.Peer = canonicalPeer(req.Peer)
		return n.PublishRequest(r.Context(), req)
	})
	route("POST "+p+"/tokens", func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req localapi.IssueRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		return n.IssueToken(r.Context(), req)
	})
	route("GET "+p+"/tokens", func(w http.ResponseWriter, r *http.Request) (any, error) {
		recs, err := n.auth.Tokens(r.Context())
		if err != nil {
			return nil, err
		}
		out := make([]localapi.Token, 0, len(recs))
		for _, rec := range recs {
			t := tokenView(rec)
			t.Token = "" // listings never echo the secret
			out = append(out, t)
		}
		return out, nil
	})
	route("GET "+p+"/tokens/{id}", func(w http.ResponseWriter, r *http.Request) (any, error) {
		rec, err := n.auth.Token(r.Context(), r.PathValue("id"))
		if err != nil {
			return nil, err
		}
		t := tokenView(rec)
		t.Token = ""
		return t, nil
	})
	route("POST "+p+"/tokens/prune", func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req localapi.PruneTokensRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		return n.PruneTokens(r.Context(), req)
	})
	route("DELETE "+p+"/tokens/{id}", func(w http.ResponseWriter, r *http.Request) (any, error) {
		return n.RevokeTokenResult(r.Context(), r.PathValue("id"))
	})
	route("POST "+p+"/validations/issue", func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req localapi.ValidationIssueRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		tok, err := n.auth.IssueValidation(auth.IssueOptions{NotBefore: time.Duration(req.NotBefore), ExpiresIn: time.Duration(req.ExpiresIn)})
		if err != nil {
			return nil, err
		}
		return localapi.ValidationIssueResult{Token: tok, PeerID: n.id.String()}, nil
	})
	route("POST "+p+"/validations", func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req localapi.AddTokenRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		v, err := n.auth.AddValidation(r.Context(), req.Token)
		if err != nil {
			return nil, err
		}
		return validationView(v), nil
	})
	route("GET "+p+"/validations", func(w http.ResponseWriter, r *http.Request) (any, error) {
		vs, err := n.auth.Validations(r.Context())
		if err != nil {
			return nil, err
		}
		out := make([]localapi.Validation, 0, len(vs))
		for _, v := range vs {
			out = append(out, validationView(v))
		}
		return out, nil
	})
	route("GET "+p+"/validations/{id}", func(w http.ResponseWriter, r *http.Request) (any, error) {
		v, err := n.auth.Validation(r.Context(), r.PathValue("id"))
		if err != nil {
			return nil, err
		}
		return validationView(v), nil
	})
	route("DELETE "+p+"/validations/{id}", func(w http.ResponseWriter, r *http.Request) (any, error) {
		return struct{}{}, n.auth.RemoveValidation(r.Context(), r.PathValue("id"))
	})
	route("POST "+p+"/peers", func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req localapi.AddPeerRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		return n.AddPeerRequest(r.Context(), req)
	})
	route("GET "+p+"/peers", func(w http.ResponseWriter, r *http.Request) (any, error) {
		return n.ListPeers(r.Context())
	})
	route("GET "+p+"/peers/{id}", func(w http.ResponseWriter, r *http.Request) (any, error) {
		return n.ShowPeer(r.Context(), canonicalPeer(r.PathValue("id")))
	})
	route("DELETE "+p+"/peers/{id}", func(w http.ResponseWriter, r *http.Request) (any, error) {
		return n.RemovePeerResult(r.Context(), canonicalPeer(r.PathValue("id")))
	})
	route("POST "+p+"/subscriptions", func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req localapi.SubscribeRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		req.Peer = canonicalPeer(req.Peer)
		return n.Subscribe(r.Context(), req)
	})
	route("POST "+p+"/subscriptions/remove", func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req localapi.SubscribeRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		req.Peer = canonicalPeer(req.Peer)
		// Without these the answer was "no subscription to \"\" at ".
		if req.Peer == "" {
			return nil, badRequest("unsubscribe needs the peer whose subscription to end (see: coattail subscriptions list)")
		}
		if err := topics.ValidatePattern(req.Pattern); err != nil {
			return nil, err
		}
		return n.UnsubscribeResult(r.Context(), req)
	})
	route("GET "+p+"/subscriptions", func(w http.ResponseWriter, r *http.Request) (any, error) {
		return n.Subscriptions(r.Context())
	})
	route("GET "+p+"/subscribers", func(w http.ResponseWriter, r *http.Request) (any, error) {
		return n.Subscribers(), nil
	})
	route("DELETE "+p+"/subscribers/{id}", func(w http.ResponseWriter, r *http.Request) (any, error) {
		return struct{}{}, n.RevokeSubscriber(r.Context(), r.PathValue("id"))
	})
	route("GET "+p+"/deadletters", func(w http.ResponseWriter, r *http.Request) (any, error) {
		q := r.URL.Query()
		var dq localapi.DeadLetterQuery
		if q.Has("limit") {
			l, err := strconv.Atoi(q.Get("limit"))
			if err != nil || l < 1 || l > localapi.MaxDeadLetterPage {
				return nil, badRequest("query parameter limit=%q is not a number from 1 to %d", q.Get("limit"), localapi.MaxDeadLetterPage)
			}
			dq.Limit = l
		}
		// An empty after is a script's unset variable: it would list the
		// first page again, for ever.
		if q.Has("after") && q.Get("after") == "" {
			return nil, badRequest("query parameter after is empty; leave it out to list from the first dead letter")
		}
		dq.After = q.Get("after")
		if q.Has("data") {
			b, err := strconv.ParseBool(q.Get("data"))
			if err != nil {
				return nil, badRequest("query parameter data=%q is not a boolean (1, true, 0 or false)", q.Get("data"))
			}
			dq.Data = b
		}
		return n.DeadLetters(r.Context(), dq)
	})
	route("POST "+p+"/deadletters/{id}/replay", func(w http.ResponseWriter, r *http.Request) (any, error) {
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		out := newNDJSON(w, wd, cancel)
		err := n.ReplayDeadLetter(ctx, r.PathValue("id"), func(l string) { out.line(localapi.StreamLine{Log: &l}) })
		if err != nil {
			out.line(localapi.StreamLine{Error: requestError(r, err)})
		} else {
			out.line(localapi.StreamLine{Result: json.RawMessage("{}")})
		}
		return streamed, nil
	})
	route("DELETE "+p+"/deadletters/{id}", func(w http.ResponseWriter, r *http.Request) (any, error) {
		return struct{}{}, n.DropDeadLetter(r.Context(), r.PathValue("id"))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &localapi.Error{Status: http.StatusNotFound, Code: localapi.CodeNotFound,
			Message: fmt.Sprintf("control API: no route %s %s (this service speaks %s)", r.Method, r.URL.Path, localapi.Prefix)}, wd)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// ServeMux answers a path with "." or ".." segments (an id of
		// "..") or "//" with an HTML redirect to its cleaned form, another
		// route: DELETE /v1/tokens/.. went on to DELETE /v1. The API has
		// no such paths; they are refused as they are.
		if p := r.URL.EscapedPath(); p != cleanPath(p) {
			writeError(w, badRequest("control API: path %q has '.', '..' or empty segments (escape an id of '.' or '..' as %%2E)", r.URL.Path), wd)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// cleanPath is the form ServeMux redirects a path to: rooted, without
// "." and ".." segments or repeated slashes, keeping a trailing slash.
func cleanPath(p string) string {
	if p == "" || p[0] != '/' {
		p = "/" + p
	}
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c
}

// streamed marks a handler that wrote its own answer.
var streamed = &struct{ streamed bool }{}

// canonicalPeer spells a peer id the way peers are stored and compared
// (base58), so that a CIDv1 spelling finds the same peer, as --to already
// did. What is not a peer id is left as it is, for the error that names it.
func canonicalPeer(id string) string {
	if id == "" {
		return id
	}
	p, err := peer.Decode(id)
	if err != nil {
		return id
	}
	return p.String()
}

// decodeBody decodes the request body, one JSON object and nothing after
// it but white space, into v. Every request body is an object: an empty
// body, or null (which decoded as an empty request: POST /v1/tokens with
// null issued a token with the default permissions), is refused.
func decodeBody(r *http.Request, v any) error {
	br := bufio.NewReader(r.Body)
	err := firstByte(br, '{')
	if err != nil {
		return bodyError(err)
	}
	dec := json.NewDecoder(br)
	dec.DisallowUnknownFields()
	err = dec.Decode(v)
	if err == nil {
		// Read on to the end of the body (dec.More stops at a '}' or
		// ']' and accepted `{...}]`), which also tells net/http that
		// the request is complete.
		_, err = dec.Token()
		var se *json.SyntaxError
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case err == nil, errors.As(err, &se):
			return badRequest("invalid request body: trailing data after the JSON value")
		}
	}
	return bodyError(err)
}

// firstByte's errors: an empty body, one that is not a JSON object.
var (
	errEmptyBody = errors.New("empty")
	errNotObject = errors.New("not a JSON object")
)

// firstByte skips white space and checks that the next byte is want,
// leaving it unread.
func firstByte(br *bufio.Reader, want byte) error {
	for {
		b, err := br.ReadByte()
		if errors.Is(err, io.EOF) {
			return errEmptyBody
		}
		if err != nil {
			return err
		}
		switch b {
		case ' ', '\t', '\r', '\n':
			continue
		case want:
			return br.UnreadByte()
		}
		return errNotObject
	}
}

func bodyError(err error) error {
	if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
		return &localapi.Error{Status: http.StatusRequestEntityTooLarge, Code: localapi.CodeBadRequest,
			Message: fmt.Sprintf("request body over the limit of %d bytes", mbe.Limit)}
	}
	switch {
	case errors.Is(err, errEmptyBody):
		return badRequest("invalid request body: it is empty; send a JSON object")
	case errors.Is(err, errNotObject):
		return badRequest("invalid request body: not a JSON object (it must start with '{')")
	}
	return badRequest("invalid request body: %v", err)
}

func badRequest(f string, a ...any) *localapi.Error {
	return &localapi.Error{Status: http.StatusBadRequest, Code: localapi.CodeBadRequest, Message: fmt.Sprintf(f, a...)}
}

// controlWriteTimeout bounds each write of a control API answer: a client
// that stops reading is cut off after it, like a peer on a stream
// (limits.stream_timeout), instead of holding its handler (and, for a
// streamed perform, its action) for ever.
func (n *Node) controlWriteTimeout() time.Duration {
	if d := n.cfg.Limits.StreamTimeout; d > 0 {
		return d
	}
	return time.Minute
}

// writeJSON writes an answer; d bounds the write (and the final flush
// net/http does after the handler).
func writeJSON(w http.ResponseWriter, status int, v any, d time.Duration) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(d))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error, d time.Duration) {
	e := toAPIError(err)
	writeJSON(w, e.Status, e, d)
}

// requestError is toAPIError for the error of a request r. A request
// cancelled while it ran was cut by the service stopping (a client that
// left reads no answer): it is answered unavailable, saying so.
func requestError(r *http.Request, err error) *localapi.Error {
	e := toAPIError(err)
	if r.Context().Err() != nil && errors.Is(err, context.Canceled) {
		c := *e
		c.Message = "the service stopped before the request completed, so it may or may not have taken effect: " + c.Message
		c.Interrupted = true
		return &c
	}
	return e
}

// toAPIError maps package errors to HTTP statuses and stable codes. The
// message is the error's own text: packages never put secrets in errors.
func toAPIError(err error) *localapi.Error {
	var le *localapi.Error
	if errors.As(err, &le) {
		if le.Status == 0 {
			le.Status = http.StatusInternalServerError
		}
		return le
	}
	e := &localapi.Error{Status: http.StatusInternalServerError, Code: localapi.CodeInternal, Message: err.Error()}
	var ie itemError
	if errors.As(err, &ie) {
		e.Item, e.Done = ie.item, ie.done
	}
	var we *wire.Error
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &we):
		e.Status, e.Code = http.StatusBadGateway, localapi.CodeFailed
		switch we.Code {
		case wire.CodeForbidden, wire.CodeUnauthorized:
			e.Status, e.Code = http.StatusForbidden, localapi.CodeForbidden
		case wire.CodeNotFound:
			e.Status, e.Code = http.StatusNotFound, localapi.CodeNotFound
		}
	case errors.Is(err, ErrPeerTokenRevoked):
		e.Status, e.Code = http.StatusForbidden, localapi.CodeForbidden
	case errors.As(err, &mbe):
		e.Status, e.Code = http.StatusRequestEntityTooLarge, localapi.CodeBadRequest
	case errors.Is(err, datastore.ErrInvalidID):
		e.Status, e.Code = http.StatusBadRequest, localapi.CodeBadRequest
	case errors.Is(err, auth.ErrNotFound), errors.Is(err, runner.ErrNotFound), errors.Is(err, datastore.ErrNotFound), errors.Is(err, ErrUnknownPeer),
		errors.Is(err, topics.ErrNoSubscription):
		e.Status, e.Code = http.StatusNotFound, localapi.CodeNotFound
	case errors.Is(err, topics.ErrQueueFull), errors.Is(err, topics.ErrNoSpace):
		e.Status, e.Code = http.StatusInsufficientStorage, localapi.CodeFailed
	case errors.Is(err, topics.ErrStorageDamaged), errors.Is(err, topics.ErrStorageFailed):
		e.Status, e.Code = http.StatusServiceUnavailable, localapi.CodeUnavailable
	case errors.Is(err, ErrOffline):
		e.Status, e.Code = http.StatusServiceUnavailable, localapi.CodeUnavailable
	case errors.Is(err, topics.ErrInvalidSubject), errors.Is(err, topics.ErrInvalidPattern),
		errors.Is(err, runner.ErrBadInput), errors.Is(err, runner.ErrInputTooLarge), errors.Is(err, auth.ErrInvalid),
		errors.Is(err, auth.ErrOptions), errors.Is(err, auth.ErrTokenType),
		errors.Is(err, ErrBadRequest), errors.Is(err, ErrHopLimit):
		e.Status, e.Code = http.StatusBadRequest, localapi.CodeBadRequest
	case errors.Is(err, runner.ErrExit), errors.Is(err, runner.ErrTimeout), errors.Is(err, runner.ErrBadOutput),
		errors.Is(err, runner.ErrOutputTooLarge), errors.Is(err, runner.ErrNotExecutable), errors.Is(err, ErrPeer):
		e.Status, e.Code = http.StatusUnprocessableEntity, localapi.CodeFailed
	case errors.Is(err, context.Canceled):
		e.Status, e.Code = http.StatusServiceUnavailable, localapi.CodeUnavailable
	case errors.Is(err, context.DeadlineExceeded):
		e.Status, e.Code = http.StatusGatewayTimeout, localapi.CodeFailed
	case isAuthError(err):
		e.Status, e.Code = http.StatusForbidden, localapi.CodeForbidden
	}
	return e
}

func isAuthError(err error) bool {
	for _, s := range []error{auth.ErrExpired, auth.ErrNotYetValid, auth.ErrRevoked, auth.ErrWrongIssuer,
		auth.ErrBearer, auth.ErrClaimed, auth.ErrTooLarge, auth.ErrAlgorithm, auth.ErrSignature} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// ErrBadRequest marks invalid caller input.
var ErrBadRequest = errors.New("node: bad request")

// ndjson writes newline-delimited StreamLines, flushing each. Each line
// must be written within d: when a write fails (the client left, or
// stopped reading for d), cancel stops the work that produces the lines
// and later lines are dropped.
type ndjson struct {
	mu     sync.Mutex
	w      http.ResponseWriter
	rc     *http.ResponseController
	d      time.Duration
	cancel func()
	failed bool
}

func newNDJSON(w http.ResponseWriter, d time.Duration, cancel func()) *ndjson {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	return &ndjson{w: w, rc: http.NewResponseController(w), d: d, cancel: cancel}
}

func (s *ndjson) line(l localapi.StreamLine) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed {
		return
	}
	b, _ := json.Marshal(l)
	b = append(b, '\n')
	_ = s.rc.SetWriteDeadline(time.Now().Add(s.d))
	_, err := s.w.Write(b)
	if err == nil {
		err = s.rc.Flush()
	}
	if err != nil {
		s.failed = true
		s.cancel()
	}
}

func (n *Node) streamPerform(w http.ResponseWriter, r *http.Request, req localapi.PerformRequest) error {
	if err := topics.ValidateSubject(req.Action); err != nil {
		return err
	}
	if len(req.Input) == 0 {
		req.Input = json.RawMessage("null")
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	out := newNDJSON(w, n.controlWriteTimeout(), cancel)
	onLog := func(l string) { out.line(localapi.StreamLine{Log: &l}) }
	res, err := n.Perform(ctx, req, onLog)
	if err != nil {
		out.line(localapi.StreamLine{Error: requestError(r, err)})
		return nil
	}
	b, _ := json.Marshal(res)
	out.line(localapi.StreamLine{Result: b})
	return nil
}

// Status reports the instance's state.
func (n *Node) Status() localapi.Status { return n.status(n.queueSnapshot()) }

// testHookQueueSnapshot, when set (by tests), is called by every
// queueSnapshot with its node.
var testHookQueueSnapshot atomic.Pointer[func(*Node)]

// queueSnapshot is the state of every queue that Status and Subscribers
// report (topics.Queues.Status: each queue copied under its lock, then all
// sorted).
func (n *Node) queueSnapshot() []topics.QueueStatus {
	if f := testHookQueueSnapshot.Load(); f != nil {
		(*f)(n)
	}
	return n.queues.Status()
}

// status is Status over st, a queueSnapshot: a metrics scrape reports
// its per-subscription series from the same one.
func (n *Node) status(st []topics.QueueStatus) localapi.Status {
	s := localapi.Status{
		PID:       os.Getpid(),
		Instance:  n.layout.Dir,
		PeerID:    n.id.String(),
		Version:   Version,
		Online:    n.host != nil,
		StartedAt: n.started,
		Metrics:   n.metricsURL,
		Relay:     n.opts.Relay,
		Uptime:    localapi.Duration(time.Since(n.started).Round(time.Millisecond)),
		Counters: localapi.Counters{
			Performed:   n.stats.performed.Load(),
			Published:   n.stats.published.Load(),
			Received:    n.stats.received.Load(),
			Duplicates:  n.stats.duplicates.Load(),
			DeadLetters: n.stats.deadLetters.Load(),

			StorageCorruption: n.db.CorruptionEvents(),
		},
	}
	// Since start, as the other counters are: the queues' own counters,
	// persisted across restarts, are in subscribers list.
	tot := n.queues.Totals()
	s.Counters.Delivered, s.Counters.Redelivered, s.Counters.Dropped, s.Counters.Corrupt = tot.Delivered, tot.Redelivered, tot.Dropped, tot.Corrupt
	for _, q := range st {
		s.Queues = append(s.Queues, localapi.QueueStatus{SubscriptionID: q.ID, Depth: q.Depth, Delivered: q.Delivered})
	}
	if err := n.queues.Failure(); err != nil {
		s.StorageError = err.Error()
	}
	if n.net != nil {
		n.net.fillStatus(&s)
	}
	if n.db.Dir() != "" {
		if free, err := n.db.FreeSpace(); err == nil {
			s.DiskFree = free
			s.DiskLow = n.space != nil && n.space.low(free)
		}
	}
	return s
}

// Perform runs an action locally or on a peer; with Notify the output is
// published to the action's subscribers.
func (n *Node) Perform(ctx context.Context, req localapi.PerformRequest, onLog func(string)) (localapi.PerformResult, error) {
	if n.isClosed() {
		return localapi.PerformResult{}, ErrClosed
	}
	if len(req.To) > 0 && !req.Notify {
		return localapi.PerformResult{}, fmt.Errorf("%w: --to chooses whom --notify publishes to; it needs --notify", ErrBadRequest)
	}
	if err := checkPeerIDs(req.To); err != nil {
		return localapi.PerformResult{}, err
	}
	// A cascade past the limit stops before its action runs, not only
	// before it publishes: an action need not notify to have effects.
	req.Hop = cascadeHop(ctx, req.Hop)
	if err := n.checkHop(req.Action, req.Hop, "not run"); err != nil {
		n.noteHopLimit(ctx, err, req.Run, "perform", req.Action, req.Hop)
		return localapi.PerformResult{}, err
	}
	if req.Peer != "" {
		res, err := n.remotePerform(ctx, req, onLog)
		err = remoteHopLimit(err)
		n.noteHopLimit(ctx, err, req.Run, "perform", req.Action, req.Hop)
		return res, err
	}
	caller := req.Caller
	if caller == "" {
		caller = "local"
	}
	out, err := n.runner.Run(ctx, runner.Invocation{Kind: runner.KindAction, Name: req.Action, Input: req.Input, Caller: caller, Log: onLog})
	if err != nil {
		// A peer can make its performs fail at will and as often as its
		// rate limit allows: its failures are sampled, as its refused
		// streams are.
		if caller == "local" {
			n.log.Warn("action failed", "action", req.Action, "caller", caller, "err", err)
		} else if ok, extra := n.noisy.allow(); ok {
			n.log.Warn("action failed", append([]any{"action", req.Action, "caller", caller, "err", err}, extra...)...)
		}
		return localapi.PerformResult{}, err
	}
	n.stats.performed.Add(1)
	res := localapi.PerformResult{Output: out}
	if req.Notify {
		pr, err := n.PublishRequest(ctx, localapi.PublishRequest{Action: req.Action, Data: out, To: req.To, Hop: req.Hop})
		if err != nil {
			return res, &notPublishedError{action: req.Action, err: err}
		}
		res.Published, res.Dropped = pr.Published, pr.Dropped
	}
	return res, nil
}

// ListActions lists local actions (or receivers), or a peer's actions.
func (n *Node) ListActions(ctx context.Context, receivers bool, peerID string) ([]localapi.ActionInfo, error) {
	if peerID != "" {
		if receivers {
			return nil, badRequest("a peer's receivers are private: --receivers cannot be combined with --peer")
		}
		return n.remoteList(ctx, peerID)
	}
	kind := runner.KindAction
	if receivers {
		kind = runner.KindReceiver
	}
	infos, err := n.runner.List(kind)
	if err != nil {
		return nil, err
	}
	out := make([]localapi.ActionInfo, 0, len(infos))
	for _, i := range infos {
		out = append(out, localapi.ActionInfo{Name: i.Name, Kind: string(i.Kind), InProcess: i.InProcess, Executable: i.Executable, Path: i.Path})
	}
	// Files that are skipped (a name that is no subject, a directory) are
	// listed with why, after the others: a user who dropped "My Action.js"
	// into actions/ was otherwise told nothing.
	bad, err := n.runner.Invalid(kind)
	if err != nil {
		return nil, err
	}
	for _, b := range bad {
		out = append(out, localapi.ActionInfo{Name: b.Name, Kind: string(kind), Path: n.runner.Path(kind, b.Name), Skipped: b.Reason})
	}
	return out, nil
}

// notPublishedError is a perform --notify whose action ran but whose output
// was not published: performing it again would run it again, which a
// remote caller must be told (not only why the publication was refused).
type notPublishedError struct {
	action string
	err    error
}

func (e *notPublishedError) Error() string {
	return fmt.Sprintf("node: action %q ran but publishing its output failed: %v", e.action, e.err)
}

func (e *notPublishedError) Unwrap() error { return e.err }
