package node_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/coattail/coattail/node"
)

// A publication larger than the subscriber's max_payload but small enough
// for a frame arrives whole and is parked without its data ("it arrived,
// but the receiver was not run and it is not kept"). Refusing its replay,
// the subscriber used to say that it "never arrived", contradicting the
// dead letter's own error; it says that its data was not kept.
func TestReplayRefusalOfArrivedTooLarge(t *testing.T) {
	pub := newTestNode(t)
	sub := newTestNode(t, withLimits(func(l *node.LimitsConfig) { l.MaxPayload = 1024 }))
	rec := &flRecorder{}
	flSubscribe(t, pub, sub, rec.handle)
	big := json.RawMessage(`"` + strings.Repeat("z", 3000) + `"`)
	d := parkedAmongSmall(t, pub, sub, rec, "p", big)
	if !strings.Contains(d.Error, "it arrived") {
		t.Fatalf("dead letter %+v; want an error saying it arrived (a frame carried it)", d)
	}
	err := sub.ReplayDeadLetter(testCtx(t), d.ID, nil)
	if err == nil || !strings.Contains(err.Error(), "cannot be replayed") || !strings.Contains(err.Error(), "not kept") ||
		strings.Contains(err.Error(), "never arrived") {
		t.Fatalf("replay of a publication that arrived too large = %v; want a refusal saying its data was not kept (not that it never arrived)", err)
	}
}
