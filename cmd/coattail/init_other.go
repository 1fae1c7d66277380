//go:build !linux

package main

// runAsInit is Linux's PID 1 init (init_linux.go); elsewhere coattail
// always runs as itself.
func runAsInit() (code int, ran bool) { return 0, false }
