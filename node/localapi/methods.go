package localapi

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
)

// Status returns the instance's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.Do(ctx, http.MethodGet, "/status", nil, &s)
}

// Stop asks the service to shut down; it returns before shutdown completes.
func (c *Client) Stop(ctx context.Context) error {
	return c.Do(ctx, http.MethodPost, "/stop", nil, nil)
}

// Actions lists actions (or receivers) locally or, with peer, on a peer.
func (c *Client) Actions(ctx context.Context, receivers bool, peer string) ([]ActionInfo, error) {
	q := url.Values{}
	if receivers {
		q.Set("receivers", "1")
	}
	if peer != "" {
		q.Set("peer", peer)
	}
	var out []ActionInfo
	return out, c.Do(ctx, http.MethodGet, "/actions?"+q.Encode(), nil, &out)
}

// Perform runs an action; onLog receives its stderr lines live.
func (c *Client) Perform(ctx context.Context, r PerformRequest, onLog func(string)) (PerformResult, error) {
	var out PerformResult
	return out, c.Stream(ctx, http.MethodPost, "/actions/perform", r, &out, onLog)
}

// Publish publishes data to an action's subscribers.
func (c *Client) Publish(ctx context.Context, r PublishRequest) (PublishResult, error) {
	var out PublishResult
	return out, c.Do(ctx, http.MethodPost, "/actions/publish", r, &out)
}

// IssueToken issues a capability token.
func (c *Client) IssueToken(ctx context.Context, r IssueRequest) (Token, error) {
	var out Token
	return out, c.Do(ctx, http.MethodPost, "/tokens", r, &out)
}

// Tokens lists issued tokens.
func (c *Client) Tokens(ctx context.Context) ([]Token, error) {
	var out []Token
	return out, c.Do(ctx, http.MethodGet, "/tokens", nil, &out)
}

// Token shows one issued token.
func (c *Client) Token(ctx context.Context, id string) (Token, error) {
	var out Token
	return out, c.Do(ctx, http.MethodGet, "/tokens/"+segment(id), nil, &out)
}

// RevokeToken revokes an issued token.
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, "/tokens/"+segment(id), nil, nil)
}

// RevokeTokenResult is RevokeToken, saying the revoked token's id in its
// canonical form (a service of an older release does not: ID is empty).
func (c *Client) RevokeTokenResult(ctx context.Context, id string) (RevokedToken, error) {
	var out RevokedToken
	return out, c.Do(ctx, http.MethodDelete, "/tokens/"+segment(id), nil, &out)
}

// PruneTokens deletes the records of long-expired tokens.
func (c *Client) PruneTokens(ctx context.Context, r PruneTokensRequest) (PruneTokensResult, error) {
	var out PruneTokensResult
	return out, c.Do(ctx, http.MethodPost, "/tokens/prune", r, &out)
}

// IssueValidation issues a validation token for this instance.
func (c *Client) IssueValidation(ctx context.Context, r ValidationIssueRequest) (ValidationIssueResult, error) {
	var out ValidationIssueResult
	return out, c.Do(ctx, http.MethodPost, "/validations/issue", r, &out)
}

// AddValidation imports another instance's validation token.
func (c *Client) AddValidation(ctx context.Context, token string) (Validation, error) {
	var out Validation
	return out, c.Do(ctx, http.MethodPost, "/validations", AddTokenRequest{Token: token}, &out)
}

// Validations lists imported validation tokens.
func (c *Client) Validations(ctx context.Context) ([]Validation, error) {
	var out []Validation
	return out, c.Do(ctx, http.MethodGet, "/validations", nil, &out)
}

// Validation shows one imported validation token.
func (c *Client) Validation(ctx context.Context, id string) (Validation, error) {
	var out Validation
	return out, c.Do(ctx, http.MethodGet, "/validations/"+segment(id), nil, &out)
}

// RemoveValidation deletes an imported validation token.
func (c *Client) RemoveValidation(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, "/validations/"+segment(id), nil, nil)
}

// AddPeer adds the issuer of token as a peer.
func (c *Client) AddPeer(ctx context.Context, token string) (Peer, error) {
	return c.AddPeerRequest(ctx, AddPeerRequest{Token: token})
}

// AddPeerRequest adds the issuer of r.Token as a peer, or replaces the
// token held for it (see AddPeerRequest).
func (c *Client) AddPeerRequest(ctx context.Context, r AddPeerRequest) (Peer, error) {
	var out Peer
	return out, c.Do(ctx, http.MethodPost, "/peers", r, &out)
}

// Peers lists added peers.
func (c *Client) Peers(ctx context.Context) ([]Peer, error) {
	var out []Peer
	return out, c.Do(ctx, http.MethodGet, "/peers", nil, &out)
}

// Peer shows one peer, with live connection details when online.
func (c *Client) Peer(ctx context.Context, id string) (Peer, error) {
	var out Peer
	return out, c.Do(ctx, http.MethodGet, "/peers/"+segment(id), nil, &out)
}

// RemovePeer forgets a peer.
func (c *Client) RemovePeer(ctx context.Context, id string) (RemovedPeer, error) {
	var out RemovedPeer
	return out, c.Do(ctx, http.MethodDelete, "/peers/"+segment(id), nil, &out)
}

// Subscribe subscribes a local receiver to a pattern at a peer.
func (c *Client) Subscribe(ctx context.Context, r SubscribeRequest) (Subscription, error) {
	var out Subscription
	return out, c.Do(ctx, http.MethodPost, "/subscriptions", r, &out)
}

// Unsubscribe ends matching subscriptions on both sides.
func (c *Client) Unsubscribe(ctx context.Context, r SubscribeRequest) (UnsubscribeResult, error) {
	var out UnsubscribeResult
	return out, c.Do(ctx, http.MethodPost, "/subscriptions/remove", r, &out)
}

// Subscriptions lists the subscriptions this instance holds.
func (c *Client) Subscriptions(ctx context.Context) ([]Subscription, error) {
	var out []Subscription
	return out, c.Do(ctx, http.MethodGet, "/subscriptions", nil, &out)
}

// Subscribers lists the subscriptions peers hold here.
func (c *Client) Subscribers(ctx context.Context) ([]Subscriber, error) {
	var out []Subscriber
	return out, c.Do(ctx, http.MethodGet, "/subscribers", nil, &out)
}

// RevokeSubscriber removes a subscription held here and tells its owner.
func (c *Client) RevokeSubscriber(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, "/subscribers/"+segment(id), nil, nil)
}

// DeadLetters lists one page of the parked publications.
func (c *Client) DeadLetters(ctx context.Context, q DeadLetterQuery) (DeadLetterList, error) {
	v := url.Values{}
	if q.Limit != 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	if q.After != "" {
		v.Set("after", q.After)
	}
	if q.Data {
		v.Set("data", "1")
	}
	path := "/deadletters"
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var out DeadLetterList
	return out, c.Do(ctx, http.MethodGet, path, nil, &out)
}

// ReplayDeadLetter runs the receiver again for a parked publication.
func (c *Client) ReplayDeadLetter(ctx context.Context, id string, onLog func(string)) error {
	return c.Stream(ctx, http.MethodPost, "/deadletters/"+segment(id)+"/replay", nil, nil, onLog)
}

// DropDeadLetter deletes a parked publication.
func (c *Client) DropDeadLetter(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, "/deadletters/"+segment(id), nil, nil)
}

// segment escapes id as one path segment. An id of "." or ".." is escaped
// too (url.PathEscape leaves dots): as it is, the path would name another
// route once cleaned; escaped, the service gets the id and refuses it.
func segment(id string) string {
	switch id {
	case ".":
		return "%2E"
	case "..":
		return "%2E%2E"
	}
	return url.PathEscape(id)
}
