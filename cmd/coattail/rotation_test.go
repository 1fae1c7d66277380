package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Rotating a token as SECURITY.md says ("peer add --token <new>" before
// the old one expires) keeps the subscriptions made with the old one. The
// subscription stream stayed authorized by the old token: at its expiry the
// publisher removed the subscription, with what was queued for it, and the
// subscriber forgot it although it held a valid replacement; revoking the
// old token later also ended it. Now the subscriber resumes its streams
// with the new token at once and the publisher holds the subscription with
// it (subscribers list shows the new token id).
func TestRotatedTokenKeepsLiveSubscription(t *testing.T) {
	pub, sub := newInstance(t, "pub"), newInstance(t, "sub")
	pub.fixPort()
	pub.start()
	sub.start()
	sub.recordingReceiver("rot.log", "rot.txt")
	old := sub.addPeer(pub, "--subscribable", "rot.>", "--expires-in", "4s")
	oldID := pub.tokenID(old)
	oldExpiry := time.Now().Add(4 * time.Second)
	id := sub.subscribe(pub, "rot.>", "rot.log")
	pub.mustRun("action", "publish", "--action", "rot.a", "--data", "1")
	sub.waitLines("rot.txt", 1, 20*time.Second)

	// Rotate well before the old token expires.
	fresh := sub.addPeer(pub, "--subscribable", "rot.>", "--expires-in", "1h")
	freshID := pub.tokenID(fresh)
	checkFor(t, 10*time.Second, func() error {
		if s, ok := pub.subscriberFor(id); !ok || s.TokenID != freshID || !s.Connected {
			return fmt.Errorf("the publisher's subscription %s is %+v (present: %v), want it connected and held with the new token %s", id, s, ok, freshID)
		}
		return nil
	})
	// Past the old token's expiry and the 5 s leeway the publisher gives it.
	time.Sleep(time.Until(oldExpiry.Add(6 * time.Second)))
	if _, ok := pub.subscriberFor(id); !ok {
		t.Fatalf("the publisher removed subscription %s when the token it was made with expired, although the subscriber rotated to a valid token", id)
	}
	// Revoking the old token does not end it either.
	pub.mustRun("token", "revoke", oldID)
	pub.mustRun("action", "publish", "--action", "rot.b", "--data", "2")
	lines := sub.waitLines("rot.txt", 2, 20*time.Second)
	if want := []string{"rot.a 1 0 1", "rot.b 2 0 2"}; strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("the receiver ran for %q, want %q", lines, want)
	}
	if s, ok := pub.subscriberFor(id); !ok || s.TokenID != freshID {
		t.Errorf("after the old token was revoked the publisher's subscription %s is %+v (present: %v), want it held with %s", id, s, ok, freshID)
	}
	if out := sub.mustRun("subscriptions", "list"); !strings.Contains(out, id) {
		t.Errorf("the subscriber no longer lists subscription %s:\n%s", id, out)
	}
}
