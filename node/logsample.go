package node

import (
	"sync/atomic"

	"golang.org/x/time/rate"
)

// logSampler bounds how many lines a kind of message that peers can cause
// at will (a refused stream, a failed request, a cascade cut) writes to the
// log: a peer flooding at its rate limit would otherwise rotate the log
// every few seconds and push away everything else. Lines beyond the rate
// are counted, and the next line written says how many were left out.
type logSampler struct {
	lim        *rate.Limiter
	suppressed atomic.Int64
}

// Lines per second, and burst, of peer-caused messages.
const (
	noisyLogRate  = 20
	noisyLogBurst = 100
)

func newLogSampler() *logSampler {
	return &logSampler{lim: rate.NewLimiter(noisyLogRate, noisyLogBurst)}
}

// allow reports whether a line may be written now, and with which extra
// attributes (the count of lines left out since the last one written).
func (s *logSampler) allow() (bool, []any) {
	if !s.lim.Allow() {
		s.suppressed.Add(1)
		return false, nil
	}
	if n := s.suppressed.Swap(0); n > 0 {
		return true, []any{"suppressed_since_last", n}
	}
	return true, nil
}
