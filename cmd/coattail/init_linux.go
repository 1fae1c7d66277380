package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// forwardedSignals are the signals the init passes on to the coattail
// process it runs: what `docker stop`, `docker kill -s`, a terminal and
// process supervisors send.
var forwardedSignals = []os.Signal{
	syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM,
	syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH,
}

// runAsInit makes a coattail that is its PID namespace's first process
// (PID 1: a container's entrypoint) a minimal init, as `docker run --init`
// would add: it runs the same command as a child, forwards the signals
// above to it, reaps every process the kernel hands to PID 1, and exits
// with the child's status. The service kills what actions and receivers
// leave behind, and those killed orphans (and daemons that left their
// process group) become PID 1's children: a PID 1 that never reaps them
// fills the process table with zombies over a long run. It reports
// whether it ran (false when this process is not PID 1).
func runAsInit() (code int, ran bool) {
	if os.Getpid() != 1 {
		return 0, false
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "coattail: init: finding this program:", err)
		return 1, true
	}
	sigs := make(chan os.Signal, 64)
	// Before the child starts, so that none of its exits is missed.
	signal.Notify(sigs, append([]os.Signal{syscall.SIGCHLD}, forwardedSignals...)...)
	child, err := os.StartProcess(exe, os.Args, &os.ProcAttr{
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
		Env:   os.Environ(),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "coattail: init: starting coattail:", err)
		return 1, true
	}
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			// An error means the child is gone; its SIGCHLD follows.
			_ = child.Signal(sig)
			continue
		}
		if code, done := reap(child.Pid); done {
			return code, true
		}
	}
	return 1, true // not reached: sigs is never closed
}

// reap waits for every child that has exited, without blocking, and
// reports the exit code of pid once it is among them (128 + the signal
// for one killed by a signal, as shells report it).
func reap(pid int) (code int, done bool) {
	for {
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || got <= 0 {
			return code, done
		}
		if got != pid {
			continue
		}
		done = true
		switch {
		case ws.Exited():
			code = ws.ExitStatus()
		case ws.Signaled():
			code = 128 + int(ws.Signal())
		default:
			code = 1
		}
	}
}
