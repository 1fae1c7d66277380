// Package localapi owns the local control API of a Coattail instance: the
// request and response types shared by the service (package node) and its
// clients, and the small Go client the CLI uses. The API is HTTP/JSON under
// the versioned prefix /v1, served on a unix socket in the instance directory
// (owner-only), or in-process when no service is running. A request body is
// one JSON object. Streaming answers are newline-delimited JSON; the
// client reads at most MaxAnswer of an answer and MaxStreamLine of a
// streamed line (ErrAnswerTooLarge).
package localapi

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Prefix is the versioned route prefix of every endpoint.
const Prefix = "/v1"

// Error is the JSON body of every non-2xx answer and the error type the
// client returns for them.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
	// Interrupted is set when the service stopped while the request ran:
	// what it had done by then (a publication queued, an action run) is
	// unknown, as if no answer had come.
	Interrupted bool `json:"interrupted,omitempty"`
	// Item is set when one item of a batch request made it fail: its
	// place in the batch, from 1. Nothing of the batch was done but its
	// first Done items.
	Item int `json:"item,omitempty"`
	// Done, with Item, is how many items of the batch, the first ones,
	// were done before it failed: a publish batch sent on to a peer
	// (publish --peer) that the peer stored in part, in the frames before
	// the one it refused. Nothing after them was done.
	Done int `json:"done,omitempty"`
}

func (e *Error) Error() string { return e.Message }

// Error codes.
const (
	CodeBadRequest  = "bad_request"
	CodeNotFound    = "not_found"
	CodeConflict    = "conflict"
	CodeForbidden   = "forbidden"
	CodeUnavailable = "unavailable" // needs the running service / the network
	CodeFailed      = "failed"      // an action or remote operation failed
	CodeInternal    = "internal"
)

// RevokedToken is the answer to a token revocation.
type RevokedToken struct {
	// ID is the revoked token's id in canonical form (a lower-case uuid
	// with hyphens), whichever spelling the revocation named it in.
	ID string `json:"id"`
}

// RemovedPeer is the answer to a peer removal.
type RemovedPeer struct {
	// ID is the removed peer's id, in base58 whichever spelling the
	// removal named it in.
	ID string `json:"id"`
	// Untold are the ids of the subscriptions this instance held at the
	// peer that the peer could not be told had ended (it was unreachable,
	// or the service is stopped): they are ended here, and the peer
	// removes them when it next reaches this instance and learns they
	// are gone. Left out when none.
	Untold []string `json:"untold,omitempty"`
}

// Status describes a running (or offline) instance.
type Status struct {
	PID         int           `json:"pid"`
	Instance    string        `json:"instance"`
	PeerID      string        `json:"peer_id"`
	Version     string        `json:"version"`
	Online      bool          `json:"online"`
	ListenAddrs []string      `json:"listen_addrs"`
	Addrs       []string      `json:"addrs"`
	StartedAt   time.Time     `json:"started_at"`
	Uptime      Duration      `json:"uptime"`
	Reachable   string        `json:"reachability,omitempty"`
	Relays      []string      `json:"relay_reservations,omitempty"`
	Peers       int           `json:"connected_peers"`
	Counters    Counters      `json:"counters"`
	Queues      []QueueStatus `json:"queues,omitempty"`
	// DiskFree is what the disk holding data/ has free, in bytes (0 when
	// unknown), and DiskLow whether that is below limits.min_free_disk:
	// publications are refused meanwhile.
	DiskFree uint64 `json:"disk_free,omitempty"`
	DiskLow  bool   `json:"disk_low,omitempty"`
	// StorageError says why the instance refuses every publication until
	// it restarts (omitted while it accepts them): its datastore is
	// damaged where the damage could not be cut out while it runs, or a
	// write to it failed.
	StorageError string `json:"storage_error,omitempty"`
	// Metrics is the URL of the service's Prometheus endpoint
	// (metrics.listen), when it serves one.
	Metrics string `json:"metrics,omitempty"`
	// Relay is whether the service was started with --relay (a relay
	// for peers behind NAT whatever config.yml says): `service restart`
	// starts it so again.
	Relay bool `json:"relay,omitempty"`
}

// Counters are service-wide totals since start: every one starts from 0
// when the service starts. Delivered, Redelivered and Dropped also count
// subscriptions removed since; the per-subscription counters (QueueStatus,
// Subscriber) are totals since the subscription was created, persisted.
type Counters struct {
	Performed   uint64 `json:"performed"`
	Published   uint64 `json:"published"`
	Delivered   uint64 `json:"delivered"`
	Redelivered uint64 `json:"redelivered"`
	Dropped     uint64 `json:"dropped"`
	// Corrupt counts queued publications lost because their stored log
	// entry was damaged (see Subscriber.Corrupt).
	Corrupt     uint64 `json:"corrupt"`
	Received    uint64 `json:"received"`
	Duplicates  uint64 `json:"duplicates"`
	DeadLetters uint64 `json:"dead_letters"`
	// StorageCorruption counts the times the datastore met damaged data
	// on disk (a read or a background compaction failing a checksum).
	StorageCorruption uint64 `json:"storage_corruption"`
}

// QueueStatus is one subscription queue at a publisher. Delivered is the
// total since the subscription was created, kept across restarts.
type QueueStatus struct {
	SubscriptionID string `json:"subscription_id"`
	Depth          uint64 `json:"depth"`
	Delivered      uint64 `json:"delivered"`
}

// Duration marshals as seconds (float) and prints as a Go duration.
type Duration time.Duration

// MarshalJSON writes seconds.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).Seconds())
}

// UnmarshalJSON reads seconds. A number of seconds that a Duration cannot
// hold (beyond about 292 years either way) is refused: converted, it
// wrapped to an unrelated value (1e300 came out negative).
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s float64
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	ns := s * float64(time.Second)
	if !(ns > math.MinInt64 && ns < math.MaxInt64) {
		return fmt.Errorf("duration of %g seconds is out of range (at most about 292 years)", s)
	}
	*d = Duration(ns)
	return nil
}

// ActionInfo is one entry of an action or receiver listing.
type ActionInfo struct {
	Name         string `json:"name"`
	Kind         string `json:"kind"`
	InProcess    bool   `json:"in_process"`
	Executable   bool   `json:"executable"`
	Path         string `json:"path,omitempty"`
	Performable  *bool  `json:"performable,omitempty"`
	Publishable  *bool  `json:"publishable,omitempty"`
	Subscribable *bool  `json:"subscribable,omitempty"`
	// Skipped says why a file in the instance's actions/ or receivers/
	// is not offered (its name is not a valid subject, it is a
	// directory, ...); such an entry cannot be performed or subscribed.
	// Local lists only.
	Skipped string `json:"skipped,omitempty"`
}

// PerformRequest runs an action locally or, with Peer, on a peer.
type PerformRequest struct {
	Action string          `json:"action"`
	Input  json.RawMessage `json:"input"`
	Notify bool            `json:"notify"`
	Peer   string          `json:"peer,omitempty"`
	To     []string        `json:"to,omitempty"`
	Hop    int             `json:"hop,omitempty"`
	Caller string          `json:"caller,omitempty"`
	// Run, from a receiver's cascade, names the receiver run it is made
	// from (see ReceiverRun).
	Run *ReceiverRun `json:"run,omitempty"`
}

// ReceiverRun names the run of an executable receiver a perform or
// publish comes from: the CLI fills it from the receiver's COATTAIL_RUN,
// COATTAIL_SUBSCRIPTION and COATTAIL_SEQUENCE. When the cascade is refused
// for limits.max_hops, the service then knows that the run's failure is
// the hop limit's and parks its publication at once instead of retrying
// it (every run would be refused the same). Key is the COATTAIL_RUN the
// service gave its receivers; a request whose Key is not it names no run.
type ReceiverRun struct {
	Key          string `json:"key"`
	Subscription string `json:"subscription"`
	Sequence     uint64 `json:"sequence"`
}

// PerformResult is the outcome of a perform.
type PerformResult struct {
	Output    json.RawMessage `json:"output"`
	Published int             `json:"published"`
	// Dropped: see PublishResult.
	Dropped uint64 `json:"dropped,omitempty"`
}

// PublishRequest publishes data to an action's subscribers without running it.
type PublishRequest struct {
	Action string          `json:"action"`
	Data   json.RawMessage `json:"data,omitempty"` // omitempty: nil must not arrive as null beside a Batch
	Peer   string          `json:"peer,omitempty"`
	To     []string        `json:"to,omitempty"`
	Hop    int             `json:"hop,omitempty"`
	Run    *ReceiverRun    `json:"run,omitempty"` // as PerformRequest.Run
	// Batch publishes many messages (each a JSON value) in one call and
	// one durable commit; Data must then be empty.
	Batch []json.RawMessage `json:"batch,omitempty"`
}

// PublishResult says how many subscription queues took the publication.
type PublishResult struct {
	// Published is the number of subscription queue entries written.
	Published int `json:"published"`
	// Dropped is the number of undelivered queue entries the publication
	// pushed out of full queues (limits.queue_full: drop_oldest): older
	// publications, and its own first ones when a batch carried more than
	// a queue's bound (they are among Published). Left out when 0; a peer
	// (Peer) before this field was added does not report it.
	Dropped uint64 `json:"dropped,omitempty"`
}

// StreamLine is one line of a streamed answer: a log line, the final
// result, or an error.
type StreamLine struct {
	Log    *string         `json:"log,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

// IssueRequest issues a capability token.
type IssueRequest struct {
	Perform   []string `json:"perform"`
	Publish   []string `json:"publish"`
	Subscribe []string `json:"subscribe"`
	Bearers   []string `json:"bearers"`
	NotBefore Duration `json:"not_before"`
	ExpiresIn Duration `json:"expires_in"`
	Reusable  bool     `json:"reusable"`
}

// Token is an issued token as stored by its issuer.
type Token struct {
	ID        string     `json:"id"`
	Token     string     `json:"token,omitempty"`
	Issuer    string     `json:"issuer"`
	IssuedAt  time.Time  `json:"issued_at"`
	NotBefore *time.Time `json:"not_before,omitempty"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	Perform   []string   `json:"perform"`
	Publish   []string   `json:"publish"`
	Subscribe []string   `json:"subscribe"`
	Bearers   []string   `json:"bearers"`
	Addrs     []string   `json:"addrs"`
	Reusable  bool       `json:"reusable"`
	ClaimedBy string     `json:"claimed_by,omitempty"`
}

// PruneTokensRequest asks to delete the records of tokens that expired
// more than ExpiredFor ago; DryRun only lists them.
type PruneTokensRequest struct {
	ExpiredFor Duration `json:"expired_for"`
	DryRun     bool     `json:"dry_run"`
}

// PruneTokensResult lists the pruned tokens (without the raw token), or
// with DryRun those that would be.
type PruneTokensResult struct {
	Pruned []Token `json:"pruned"`
	DryRun bool    `json:"dry_run,omitempty"`
}

// ValidationIssueRequest issues a validation token.
type ValidationIssueRequest struct {
	NotBefore Duration `json:"not_before"`
	ExpiresIn Duration `json:"expires_in"`
}

// ValidationIssueResult carries a new validation token.
type ValidationIssueResult struct {
	Token  string `json:"token"`
	PeerID string `json:"peer_id"`
}

// Validation is an imported validation token.
type Validation struct {
	ID        string     `json:"id"`
	PeerID    string     `json:"peer_id"`
	AddedAt   time.Time  `json:"added_at"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

// AddTokenRequest carries a raw JWT (peer add, validation add).
type AddTokenRequest struct {
	Token string `json:"token"`
}

// AddPeerRequest adds the issuer of Token as a peer, or replaces the token
// held for it. A replacement that does not allow a subscription this
// instance holds at the peer is refused unless Force, which ends those
// subscriptions (at both ends) first.
type AddPeerRequest struct {
	Token string `json:"token"`
	Force bool   `json:"force,omitempty"`
}

// Peer is a peer this instance added with a token it was issued.
type Peer struct {
	ID        string     `json:"id"`
	TokenID   string     `json:"token_id"`
	AddedAt   time.Time  `json:"added_at"`
	Addrs     []string   `json:"addrs"`
	Perform   []string   `json:"perform"`
	Publish   []string   `json:"publish"`
	Subscribe []string   `json:"subscribe"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// RevokedAt is set once the peer told us that it revoked the token we
	// hold for it (when it did): every call to the peer fails here until
	// a new token of it is added.
	RevokedAt   *time.Time `json:"revoked_at,omitempty"`
	Connected   bool       `json:"connected"`
	Connection  string     `json:"connection,omitempty"` // direct, relayed or empty
	RemoteAddrs []string   `json:"remote_addrs,omitempty"`
	RTT         Duration   `json:"rtt,omitempty"`
}

// SubscribeRequest subscribes (or unsubscribes) a local receiver to a
// pattern at a peer.
type SubscribeRequest struct {
	Peer     string `json:"peer"`
	Pattern  string `json:"pattern"`
	Receiver string `json:"receiver"`
	Force    bool   `json:"force,omitempty"`
}

// Subscription is a subscription this instance holds at a publisher.
type Subscription struct {
	ID        string    `json:"id"`
	Publisher string    `json:"publisher"`
	Pattern   string    `json:"pattern"`
	Receiver  string    `json:"receiver"`
	CreatedAt time.Time `json:"created_at"`
	LastSeq   uint64    `json:"last_seq"`
	Connected bool      `json:"connected"`
	// Path is how the subscription's stream reaches the publisher while
	// connected: "direct", or "relayed" through a circuit relay.
	Path string `json:"path,omitempty"`
	// Existing is set in the answer to a subscribe that found the same
	// receiver already subscribed to the same pattern at the peer.
	Existing bool `json:"existing,omitempty"`
}

// Subscriber is a subscription another peer holds at this instance.
type Subscriber struct {
	ID         string    `json:"id"`
	Subscriber string    `json:"subscriber"`
	Pattern    string    `json:"pattern"`
	TokenID    string    `json:"token_id"`
	Receiver   string    `json:"receiver"`
	CreatedAt  time.Time `json:"created_at"`
	Connected  bool      `json:"connected"`
	// Path is how the delivery stream reaches the subscriber while
	// connected: "direct", or "relayed" through a circuit relay.
	Path        string `json:"path,omitempty"`
	NextSeq     uint64 `json:"next_seq"`
	Acked       uint64 `json:"acked"`
	Depth       uint64 `json:"queue_depth"`
	Delivered   uint64 `json:"delivered"`
	Redelivered uint64 `json:"redelivered"`
	Dropped     uint64 `json:"dropped"`
	// Corrupt counts the publications queued for the subscription that
	// were lost because their stored entry was damaged: skipped, never
	// delivered (the service logs each as an error).
	Corrupt       uint64     `json:"corrupt"`
	LastDelivered *time.Time `json:"last_delivered,omitempty"`
}

// UnsubscribeResult says how many subscriptions ended.
type UnsubscribeResult struct {
	Removed int `json:"removed"`
	// Untold are the ids of the subscriptions ended here (force) although
	// their publisher could not be told: it keeps them until it next
	// tries to deliver to this instance and finds them gone.
	Untold []string `json:"untold,omitempty"`
}

// DeadLetterQuery asks for one page of the dead letters (see
// DeadLetterList). In the control API it is the query parameters limit,
// after and data of GET /deadletters.
type DeadLetterQuery struct {
	// Limit is how many entries at most (1 to MaxDeadLetterPage; 0 means
	// DefaultDeadLetterPage).
	Limit int
	// After lists the entries after this id (in id order); it need not be
	// a dead letter that still exists. "" starts at the first.
	After string
	// Data includes the publications' data.
	Data bool
}

// DefaultDeadLetterPage and MaxDeadLetterPage bound the entries of one
// dead-letter list.
const (
	DefaultDeadLetterPage = 100
	MaxDeadLetterPage     = 1000
)

// DeadLetterList is one page of the dead letters, in id order: by
// subscription, then by sequence.
type DeadLetterList struct {
	DeadLetters []DeadLetter `json:"dead_letters"`
	// More says that entries follow the last of DeadLetters; Next is the
	// id to list them after (DeadLetterQuery.After). A page may hold fewer
	// entries than asked for and still have more: one with data ends
	// where the data would pass the answer's budget.
	More bool   `json:"more"`
	Next string `json:"next,omitempty"`
}

// DeadLetterID is the id of the dead letter of sequence seq of
// subscription sub: <subscription>.<sequence as 20 digits>, so that ids
// sort by subscription, then by sequence, and the ids of a subscription's
// dead letters all come after DeadLetterID(sub, 0), which none has.
func DeadLetterID(sub string, seq uint64) string {
	return fmt.Sprintf("%s.%020d", sub, seq)
}

// ParseDeadLetterID splits an id of the form DeadLetterID makes into its
// subscription and sequence; ok is false for any other string.
func ParseDeadLetterID(id string) (sub string, seq uint64, ok bool) {
	i := strings.LastIndexByte(id, '.')
	if i < 1 || len(id)-i-1 != 20 {
		return "", 0, false
	}
	for _, c := range id[i+1:] {
		if c < '0' || c > '9' {
			return "", 0, false
		}
	}
	seq, err := strconv.ParseUint(id[i+1:], 10, 64)
	if err != nil {
		return "", 0, false // 20 digits past the largest uint64
	}
	return id[:i], seq, true
}

// DeadLetter is a publication whose receiver kept failing.
type DeadLetter struct {
	ID           string `json:"id"`
	Subscription string `json:"subscription"`
	Publisher    string `json:"publisher"`
	Receiver     string `json:"receiver"`
	Subject      string `json:"subject"`
	Seq          uint64 `json:"seq"`
	Hop          uint32 `json:"hop"`
	// Data is the publication, in a list asked for with data only.
	Data json.RawMessage `json:"data,omitempty"`
	// DataOmitted: Data was asked for but left out, as the publication
	// alone is larger than an answer carries (Data is absent, not the
	// publication's). NotJSON: the publication was not JSON (kept as
	// bytes; Data is absent).
	DataOmitted bool `json:"data_omitted,omitempty"`
	NotJSON     bool `json:"not_json,omitempty"`
	// TooLarge is the size of a publication that never arrived: larger
	// than this instance accepts (limits.max_payload), the publisher sent
	// it without its data. It cannot be replayed, only dropped.
	TooLarge uint64    `json:"too_large,omitempty"`
	Error    string    `json:"error"`
	Attempts int       `json:"attempts"`
	FailedAt time.Time `json:"failed_at"`
}
