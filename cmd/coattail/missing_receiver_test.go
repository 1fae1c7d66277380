package main

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

// A subscription whose executable receiver was deleted (or renamed) leaves
// its publications waiting at the publisher, and runs them once each, in
// order, when the receiver is back. Each was parked as a dead letter
// instead (three tries, then parked), for want of a file.
func TestMissingReceiverWaits(t *testing.T) {
	pub, sub := newInstance(t, "pub"), newInstance(t, "sub")
	pub.start()
	sub.start()
	sub.recordingReceiver("rec", "got.txt")
	sub.addPeer(pub, "--subscribable", "m.>")
	id := sub.subscribe(pub, "m.>", "rec")
	script, err := os.ReadFile(sub.path("receivers", "rec"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(sub.path("receivers", "rec")); err != nil {
		t.Fatal(err)
	}
	pub.mustPublishRange("m.x", 1, 3)
	checkFor(t, 20*time.Second, func() error {
		if b, _ := os.ReadFile(sub.path("service.log")); !strings.Contains(string(b), "receiver does not exist") {
			return errors.New("the subscriber has not met the missing receiver yet")
		}
		return nil
	})
	time.Sleep(time.Second) // more tries, none parks
	if dl := sub.deadLetters(); len(dl) != 0 {
		t.Fatalf("publications for a missing receiver were parked: %+v", dl)
	}
	if s, ok := pub.subscriberFor(id); !ok || s.Depth != 3 {
		t.Fatalf("at the publisher the subscription is %+v (present %v), want its 3 publications waiting", s, ok)
	}
	if err := os.WriteFile(sub.path("receivers", "rec"), script, 0o755); err != nil {
		t.Fatal(err)
	}
	lines := sub.waitLines("got.txt", 3, 30*time.Second)
	if want := "m.x 1 0 1,m.x 2 0 2,m.x 3 0 3"; strings.Join(lines, ",") != want {
		t.Errorf("the receiver ran for %q, want %q", lines, want)
	}
	if dl := sub.deadLetters(); len(dl) != 0 {
		t.Errorf("dead letters after the receiver came back: %+v", dl)
	}
}
