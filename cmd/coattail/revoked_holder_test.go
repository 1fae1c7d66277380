package main

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// revokedPeerJSON is what peer list/show --json say of a peer's token.
type revokedPeerJSON struct {
	ID        string     `json:"id"`
	TokenID   string     `json:"token_id"`
	RevokedAt *time.Time `json:"revoked_at"`
}

// peerRevoked reports what b's peer list and peer show (text and JSON)
// say of peer id's token: revoked or not, and fails the test if they
// disagree (the state must be settled).
func peerRevoked(t *testing.T, b *instance, id string) bool {
	t.Helper()
	revoked, err := peerRevokedState(t, b, id)
	if err != nil {
		t.Fatal(err)
	}
	return revoked
}

// peerRevokedState is peerRevoked, returning the disagreement as an error.
func peerRevokedState(t *testing.T, b *instance, id string) (bool, error) {
	t.Helper()
	var list []revokedPeerJSON
	b.decodeJSON(b.mustRun("peer", "list", "--json"), &list)
	listed := false
	for _, p := range list {
		if p.ID == id {
			listed = p.RevokedAt != nil
		}
	}
	var shown revokedPeerJSON
	b.decodeJSON(b.mustRun("peer", "show", "--id", id, "--json"), &shown)
	text := b.mustRun("peer", "show", "--id", id)
	table := b.mustRun("peer", "list")
	row := ""
	for _, l := range strings.Split(table, "\n") {
		if strings.HasPrefix(l, id) {
			row = l
		}
	}
	revoked := shown.RevokedAt != nil
	if listed != revoked || strings.Contains(row, "(revoked)") != revoked ||
		strings.Contains(text, "(revoked)") != revoked || strings.Contains(text, "Revoked:") != revoked ||
		revoked && !strings.Contains(text, "coattail peer add --token") {
		return false, fmt.Errorf("peer list and show disagree on whether %s's token is revoked: list --json %v, show --json %v\npeer list:\n%s\npeer show:\n%s",
			id, listed, shown.RevokedAt, table, text)
	}
	return revoked, nil
}

// waitPeerRevoked waits until b shows peer id's token revoked, in every
// listing (the notice may come in between two of them).
func waitPeerRevoked(t *testing.T, b *instance, id string) {
	t.Helper()
	checkFor(t, 30*time.Second, func() error {
		revoked, err := peerRevokedState(t, b, id)
		if err == nil && !revoked {
			err = errors.New("the holder does not show the token revoked yet")
		}
		return err
	})
}

// When the issuer revokes a token, the holder shows it revoked in peer
// list/show (text and JSON) and refuses commands that need it itself,
// saying what to do; a revocation by another peer marks only that peer's
// token; a holder that was away when its token was revoked learns it at
// its next contact; peer add of a new token clears it.
func TestRevokedTokenAtHolderE2E(t *testing.T) {
	a, b, c := newInstance(t, "a"), newInstance(t, "b"), newInstance(t, "c")
	// Fixed ports: the issuer is restarted and must be found where its
	// tokens say it listens.
	for _, i := range []*instance{a, b} {
		p := freePort(t)
		i.setConfig("listen", fmt.Sprintf(`["/ip4/127.0.0.1/tcp/%d", "/ip4/127.0.0.1/udp/%d/quic-v1"]`, p, p))
	}
	a.writeScript("actions", "echo", "cat\n")
	c.writeScript("actions", "echo", "cat\n")
	a.start()
	b.start()
	c.start()
	aID, cID := a.peerID(), c.peerID()
	tok := a.issue("--performable", "echo")
	b.mustRun("peer", "add", "--token", tok)
	b.mustRun("peer", "add", "--token", c.issue("--performable", "echo"))
	b.mustRun("action", "perform", "--peer", aID, "--action", "echo", "--data", "1")
	if peerRevoked(t, b, aID) || peerRevoked(t, b, cID) {
		t.Fatal("fresh tokens show revoked")
	}

	// Another issuer's revocation marks its own token, not a's.
	c.mustRun("token", "revoke", "--force", tokenIDOf(t, b, cID))
	waitPeerRevoked(t, b, cID)
	if peerRevoked(t, b, aID) {
		t.Fatal("c's revocation of its own token marked a's revoked")
	}
	b.mustRun("action", "perform", "--peer", aID, "--action", "echo", "--data", "2")

	// a revokes: b is told and shows it. With a stopped, b's commands
	// fail at once with what to do (not "unreachable": a is not asked).
	a.mustRun("token", "revoke", "--force", a.tokenID(tok))
	waitPeerRevoked(t, b, aID)
	a.mustRun("service", "stop")
	for _, args := range [][]string{
		{"action", "perform", "--peer", aID, "--action", "echo", "--data", "3"},
		{"action", "list", "--peer", aID},
		{"action", "publish", "--peer", aID, "--action", "echo", "--data", "3"},
	} {
		b.mustFail(args, "the token for peer "+aID, "was revoked by its issuer at", "coattail peer add --token")
	}

	// peer add with a new token clears it.
	a.start()
	tok2 := a.issue("--performable", "echo")
	b.mustRun("peer", "add", "--token", tok2)
	if peerRevoked(t, b, aID) {
		t.Fatal("the new token shows revoked")
	}
	if out := b.mustRun("action", "perform", "--peer", aID, "--action", "echo", "--data", "4"); strings.TrimSpace(out) != "4" {
		t.Errorf("perform with the new token printed %q", out)
	}

	// Revoked while both were stopped (a's CLI revokes offline, so
	// nobody is told): b learns it from the refusal of its next call,
	// whose error already says what to do.
	b.mustRun("service", "stop")
	a.mustRun("service", "stop")
	a.mustRun("token", "revoke", "--force", a.tokenID(tok2))
	a.start()
	b.start()
	if peerRevoked(t, b, aID) {
		t.Fatal("the holder shows the token revoked before it heard of it")
	}
	b.mustFail([]string{"action", "perform", "--peer", aID, "--action", "echo", "--data", "5"},
		"the token for peer "+aID, "was revoked by its issuer at", "coattail peer add --token")
	if !peerRevoked(t, b, aID) {
		t.Fatal("the holder does not show the token revoked after the issuer refused it")
	}
}

// tokenIDOf returns the id of the token b holds for peer id.
func tokenIDOf(t *testing.T, b *instance, id string) string {
	t.Helper()
	var p revokedPeerJSON
	b.decodeJSON(b.mustRun("peer", "show", "--id", id, "--json"), &p)
	return p.TokenID
}
