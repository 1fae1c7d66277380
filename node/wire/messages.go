package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
	"unicode/utf8"
)

// JSON control messages. Keys are lower_snake_case; docs/PROTOCOL.md gives
// the frame type each travels in and the stream sequence it belongs to.

// Hello is the first frame (THello) the opener sends on every stream except
// deliver and revoke. It is answered by TOK with OK, or by TError.
type Hello struct {
	Token   string `json:"token"`   // capability token (JWT) issued by the receiving instance
	Version string `json:"version"` // must equal the version the stream's protocol ID ends in (VersionOf)
}

// OK is the payload of a TOK frame (and of some TResults): a JSON object,
// so that fields can be added without changing the frame type.
type OK struct {
	// MaxFrame, in answer to a Hello, is the largest frame the acceptor
	// reads (type byte and payload): an opener keeps the frames it sends
	// on the stream within it. 0 (absent) means DefaultMaxFrame.
	MaxFrame int `json:"max_frame,omitempty"`
}

// ListRequest asks for the actions of the remote instance that the
// caller's token lets it use. Receivers asks for its receivers instead,
// which a Coattail node refuses (forbidden): they are private.
type ListRequest struct {
	Receivers bool `json:"receivers,omitempty"`
}

// ListResponse answers ListRequest.
type ListResponse struct {
	Actions []ActionInfo `json:"actions"`
}

// ActionInfo describes one action or receiver and what the caller's token
// allows on it.
type ActionInfo struct {
	Name         string `json:"name"`
	Performable  bool   `json:"performable,omitempty"`
	Publishable  bool   `json:"publishable,omitempty"`
	Subscribable bool   `json:"subscribable,omitempty"`
}

// PerformRequest asks the remote to run an action.
type PerformRequest struct {
	Action string          `json:"action"`
	Input  json.RawMessage `json:"input,omitempty"`
	// Notify publishes the output to the action's subscribers.
	Notify bool `json:"notify,omitempty"`
	// Hop counts how many cascades led to this request, so a loop of
	// receivers that perform each other can be cut off.
	Hop int `json:"hop,omitempty"`
	// To, when not empty, restricts notification to subscribers with these
	// peer ids.
	To []string `json:"to,omitempty"`
}

// Log is one stderr line of a running action (TLog).
type Log struct {
	Line string `json:"line"`
}

// PerformResult ends a successful perform stream (TResult).
type PerformResult struct {
	Output    json.RawMessage `json:"output,omitempty"`
	Published int             `json:"published"` // subscriptions notified
	// Dropped (perform 1.1.0 only) counts the undelivered queue entries
	// the notification pushed out of full queues (limits.queue_full:
	// drop_oldest); omitted when 0.
	Dropped uint64 `json:"dropped,omitempty"`
}

// PublishResult answers one TPublish batch, in order (TResult).
type PublishResult struct {
	// Accepted is the number of publications of this batch stored.
	Accepted int `json:"accepted"`
	// LastSeq counts every publication stored on this stream so far: it is
	// a cumulative ack, so a pipelining publisher knows that its first
	// LastSeq publications are durable without matching answers to batches.
	LastSeq uint64 `json:"last_seq"`
	// Published is the number of subscription queue entries written.
	Published int `json:"published"`
	// Dropped (publish 1.2.0 only) is the number of undelivered queue
	// entries this batch pushed out of full queues (limits.queue_full:
	// drop_oldest), its own first publications included when it carried
	// more than a queue's bound; omitted when 0.
	Dropped uint64 `json:"dropped,omitempty"`
}

// SubscribeRequest creates or resumes a subscription.
type SubscribeRequest struct {
	// SubscriptionID is empty to create a subscription and set to resume one.
	SubscriptionID string `json:"subscription_id,omitempty"`
	Pattern        string `json:"pattern"`  // subject pattern, * and > wildcards
	Receiver       string `json:"receiver"` // subscriber-side receiver name
	// ResumeAfter is the last sequence the subscriber processed; delivery
	// resumes with the next one.
	ResumeAfter uint64 `json:"resume_after,omitempty"`
	// Window is the most deliveries the subscriber accepts unacknowledged;
	// 0 lets the publisher choose.
	Window int `json:"window,omitempty"`
	// MaxFrame is the largest frame the subscriber reads (type byte and
	// payload: its max_payload + 64 KiB on a Coattail node); the publisher
	// keeps every TDeliver frame within it. 0 means DefaultMaxFrame.
	MaxFrame int `json:"max_frame,omitempty"`
}

// SubscribeResponse answers SubscribeRequest (TResult).
type SubscribeResponse struct {
	SubscriptionID string `json:"subscription_id"`
	NextSeq        uint64 `json:"next_seq"` // sequence of the next delivery
	Window         int    `json:"window"`   // the window the publisher will honour
}

// UnsubscribeRequest ends a subscription.
type UnsubscribeRequest struct {
	SubscriptionID string `json:"subscription_id"`
}

// RevokeNotice tells a subscriber that the publisher dropped its
// subscription, for example because the token behind it was revoked, and,
// on revoke 1.1.0, tells the holder of a token that its issuer revoked it.
// A notice names a subscription, a token, or both; in 1.0.0 always a
// subscription, and TokenID and RevokedAt are refused there (bad_request).
type RevokeNotice struct {
	SubscriptionID string `json:"subscription_id,omitempty"`
	Reason         string `json:"reason,omitempty"`
	// TokenID (1.1.0) is the id of a token the sender issued to the
	// receiver and has revoked. The receiver acts on it only if the token
	// it holds for the sender has that id and was issued by the sender.
	TokenID string `json:"token_id,omitempty"`
	// RevokedAt (1.1.0, with TokenID) is when the issuer revoked it.
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}

// DeliverHello opens a deliver stream. The publisher opens that stream
// toward the subscriber, which authenticates it by the peer id of the secure
// channel, so no token is sent.
type DeliverHello struct {
	Version         string   `json:"version"` // must equal Version (CheckVersion): deliver has only 1.0.0
	SubscriptionIDs []string `json:"subscription_ids"`
}

// DeliverAnswer answers a DeliverHello. Unknown lists the ids the
// subscriber does not hold with that publisher (it forgot them: peer
// removed while the publisher could not be told, a failed subscribe): the
// publisher removes those subscriptions instead of queueing for nobody.
type DeliverAnswer struct {
	Unknown []string `json:"unknown,omitempty"`
}

// DecodeJSON decodes a JSON payload strictly: unknown fields, an empty
// payload, anything but an object (null included: it would decode as a
// zero message), bytes that are not UTF-8 and anything after the value are
// ErrMalformed. Strictness makes a peer that speaks another message layout
// fail loudly instead of having its fields silently dropped.
func DecodeJSON(payload []byte, v any) error {
	trimmed := bytes.TrimLeft(payload, " \t\r\n")
	if len(trimmed) == 0 {
		return fmt.Errorf("%w: empty JSON payload", ErrMalformed)
	}
	if trimmed[0] != '{' {
		return fmt.Errorf("%w: a message is a JSON object", ErrMalformed)
	}
	if !utf8.Valid(payload) {
		return fmt.Errorf("%w: JSON payload is not UTF-8", ErrMalformed)
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		// %v: the decoder's own error (an io.ErrUnexpectedEOF for a cut
		// JSON value) must not look like a stream that ended mid-frame.
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: trailing data after JSON value", ErrMalformed)
	}
	return nil
}
