package node

import (
	"testing"
	"time"
)

// SetControlLimits sets the control socket's header and body read timeout
// and its connection limit for the services a test starts; they are
// restored when the test ends. Call it before the service starts.
func SetControlLimits(t testing.TB, readTimeout time.Duration, maxConns int) {
	prevRead, prevConns := controlReadTimeout, controlMaxConns
	controlReadTimeout, controlMaxConns = readTimeout, maxConns
	t.Cleanup(func() { controlReadTimeout, controlMaxConns = prevRead, prevConns })
}
