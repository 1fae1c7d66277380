//go:build !linux

package runner

import "log/slog"

// reaper finds processes by the cookie in their environment through
// /proc, which only Linux has (reap_linux.go). Elsewhere a run's
// process group is killed, and a process that left it (setsid, a
// daemon) is not: the runs still carry EnvCookie, and this reaper does
// nothing.
type reaper struct{}

type pidMark struct{}

func newReaper(*slog.Logger) *reaper { return &reaper{} }

func (*reaper) mark() pidMark { return pidMark{} }

func (*reaper) killAll(string, int) int { return 0 }

func (*reaper) reapExited(string, pidMark, int) int { return 0 }
