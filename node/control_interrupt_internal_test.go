package node

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"testing"

	"github.com/coattail/coattail/node/localapi"
)

// A request that the service's stop cut while it ran (its context
// cancelled, the error a cancellation) is answered as interrupted: what
// it had done by then is unknown (a publish may have been queued before
// the stop was noticed), so the caller must not take it for refused.
// Other failures, and a cancellation the request did not suffer, are not.
func TestRequestErrorInterrupted(t *testing.T) {
	cut, cancel := context.WithCancel(context.Background())
	cancel()
	live := context.Background()
	canceled := fmt.Errorf("topics: publish: %w", context.Canceled)
	for _, c := range []struct {
		name        string
		ctx         context.Context
		err         error
		interrupted bool
	}{
		{"cut while it ran", cut, canceled, true},
		{"failed on its own", cut, errors.New("disk on fire"), false},
		{"cancellation of something else", live, canceled, false},
	} {
		r := httptest.NewRequest("POST", localapi.Prefix+"/actions/publish", nil).WithContext(c.ctx)
		e := requestError(r, c.err)
		if e.Interrupted != c.interrupted {
			t.Errorf("%s: Interrupted = %v, want %v (%+v)", c.name, e.Interrupted, c.interrupted, e)
		}
	}
}
