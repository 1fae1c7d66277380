package node

import (
	"net/http"
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

// SetControlShutdown sets how long a stopping service waits for its
// control connections, and then for handlers still running, for the
// services a test starts; restored when the test ends.
func SetControlShutdown(t testing.TB, timeout, grace time.Duration) {
	prevTimeout, prevGrace := controlShutdownTimeout, controlShutdownGrace
	controlShutdownTimeout, controlShutdownGrace = timeout, grace
	t.Cleanup(func() { controlShutdownTimeout, controlShutdownGrace = prevTimeout, prevGrace })
}

// SetControlHandlerHook wraps the control API handler of the services a
// test starts with hook; removed when the test ends.
func SetControlHandlerHook(t testing.TB, hook func(*Node, http.Handler) http.Handler) {
	prev := controlHandlerHook
	controlHandlerHook = hook
	t.Cleanup(func() { controlHandlerHook = prev })
}
