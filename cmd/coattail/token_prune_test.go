package main

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// `token prune` deletes the records of expired tokens only, online and
// offline: a dry run lists them and deletes nothing, --expired-for keeps
// the recently expired, and a pruned token is still refused.
func TestTokenPrune(t *testing.T) {
	a, b := newInstance(t, "prunea"), newInstance(t, "pruneb")
	a.start()
	b.start()
	short := a.tokenID(a.issue("--subscribable", "x", "--expires-in", "1s"))
	shortTok := a.issue("--subscribable", "y", "--expires-in", "1s")
	short2 := a.tokenID(shortTok)
	hour := a.tokenID(a.issue("--expires-in", "1h"))
	never := a.tokenID(a.issue())
	time.Sleep(7 * time.Second) // past their expiry and auth's 5s leeway
	listed := func() []string {
		var ts []struct {
			ID string `json:"id"`
		}
		a.decodeJSON(a.mustRun("token", "list", "--json"), &ts)
		var ids []string
		for _, tk := range ts {
			ids = append(ids, tk.ID)
		}
		slices.Sort(ids)
		return ids
	}
	all := []string{short, short2, hour, never}
	slices.Sort(all)
	if got := listed(); !slices.Equal(got, all) {
		t.Fatalf("token list %v, want %v", got, all)
	}
	out := a.mustRun("token", "prune", "--dry-run")
	if !strings.Contains(out, "Would prune token "+short) || !strings.Contains(out, "Would prune token "+short2) || strings.Contains(out, hour) {
		t.Fatalf("token prune --dry-run:\n%s\nwant the two expired tokens", out)
	}
	if got := listed(); !slices.Equal(got, all) {
		t.Fatalf("after a dry run token list %v, want %v", got, all)
	}
	if out := a.mustRun("token", "prune", "--expired-for", "1h"); !strings.Contains(out, "No expired tokens to prune.") {
		t.Fatalf("token prune --expired-for 1h:\n%s\nwant nothing pruned", out)
	}
	var res struct {
		Pruned []struct {
			ID    string `json:"id"`
			Token string `json:"token"`
		} `json:"pruned"`
	}
	a.decodeJSON(a.mustRun("token", "prune", "--json"), &res)
	var pruned []string
	for _, p := range res.Pruned {
		if p.Token != "" {
			t.Fatal("token prune --json echoed a raw token")
		}
		pruned = append(pruned, p.ID)
	}
	slices.Sort(pruned)
	want := []string{short, short2}
	slices.Sort(want)
	if !slices.Equal(pruned, want) {
		t.Fatalf("token prune --json pruned %v, want %v", pruned, want)
	}
	left := []string{hour, never}
	slices.Sort(left)
	if got := listed(); !slices.Equal(got, left) {
		t.Fatalf("after prune token list %v, want %v", got, left)
	}
	// The pruned token is refused, as expired.
	b.mustFail([]string{"peer", "add", "--token", shortTok}, "expired")

	a.mustRun("service", "stop")
	if out := a.mustRun("token", "prune"); !strings.Contains(out, "No expired tokens to prune.") {
		t.Fatalf("offline token prune after pruning:\n%s", out)
	}
	a.mustFail([]string{"token", "prune", "--expired-for", "soon"}, "--expired-for", "1d")
}

// A token a subscription held here still names is kept by `token prune`,
// online and offline, once expired: the subscription ends with it only
// when its subscriber comes back (the publisher handles the expiry on the
// delivery stream).
func TestTokenPruneKeepsSubscriptionToken(t *testing.T) {
	pub, sub := newInstance(t, "prunekp"), newInstance(t, "prunekps")
	sub.recordingReceiver("rec", "got.log")
	pub.start()
	sub.start()
	tok := sub.addPeer(pub, "--subscribable", "kp.>", "--expires-in", "2s")
	id := sub.subscribe(pub, "kp.>", "rec")
	tokID := pub.tokenID(tok)
	sub.mustRun("service", "stop")
	time.Sleep(8 * time.Second) // past its expiry and auth's 5s leeway
	if s, ok := pub.subscriberFor(id); !ok || s.TokenID != tokID {
		t.Fatalf("the subscription %s is not held with token %s at the publisher: %+v", id, tokID, s)
	}
	if out := pub.mustRun("token", "prune"); !strings.Contains(out, "No expired tokens to prune.") {
		t.Fatalf("token prune online pruned the token a subscription names:\n%s", out)
	}
	pub.mustRun("service", "stop")
	if out := pub.mustRun("token", "prune"); !strings.Contains(out, "No expired tokens to prune.") {
		t.Fatalf("token prune offline pruned the token a subscription names:\n%s", out)
	}
}
