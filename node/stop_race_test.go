package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
)

// StopService of a service that another command stops at the same time:
// the stopping service refuses the request (503 unavailable) or closes
// its connection unanswered, either at StopService's first question
// (status) or at its stop request. StopService waits until the service's
// process is gone and reports it stopped; a service that then does not
// end within StopService's time fails, naming its pid.
//
// The service is a stand-in: a process (sleep) named in the locked pid
// file and in the status answer, and a control socket served here, which
// answers as a stopping service does. The process ends a moment after
// the stop is asked (or never, for the last case).
func TestStopServiceRacingAnotherStop(t *testing.T) {
	refuse := func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(localapi.Error{Code: localapi.CodeUnavailable, Message: "the service is stopping"})
	}
	cut := func(w http.ResponseWriter) {
		c, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			_ = c.Close()
		}
	}
	for _, tc := range []struct {
		name           string
		status, stop   func(http.ResponseWriter) // nil: answered
		neverEnds      bool
		wantErrContain string
	}{
		{name: "stop refused as stopping", stop: refuse},
		{name: "stop cut", stop: cut},
		{name: "status refused as stopping", status: refuse},
		{name: "status cut", status: cut},
		{name: "stopping never ends", stop: refuse, neverEnds: true, wantErrContain: "did not stop"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(node.EnvRuntimeDir, t.TempDir())
			l := node.Layout{Dir: t.TempDir()}
			svc := exec.Command("sleep", "60")
			if err := svc.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			go func() { _ = svc.Wait(); close(exited) }()
			t.Cleanup(func() { _ = svc.Process.Kill(); <-exited })
			pid := svc.Process.Pid
			end := func() { time.AfterFunc(200*time.Millisecond, func() { _ = svc.Process.Kill() }) }

			// The pid file, held as a running service holds it.
			f, err := os.OpenFile(l.PIDFile(), os.O_RDWR|os.O_CREATE, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteString(strconv.Itoa(pid) + "\n"); err != nil {
				t.Fatal(err)
			}

			ln, err := net.Listen("unix", l.Socket())
			if err != nil {
				t.Fatal(err)
			}
			mux := http.NewServeMux()
			mux.HandleFunc("GET "+localapi.Prefix+"/status", func(w http.ResponseWriter, r *http.Request) {
				if tc.status != nil {
					if !tc.neverEnds {
						end()
					}
					tc.status(w)
					return
				}
				w.Header().Set("Content-Type", "application/json")
				_ = json.NewEncoder(w).Encode(localapi.Status{PID: pid})
			})
			mux.HandleFunc("POST "+localapi.Prefix+"/stop", func(w http.ResponseWriter, r *http.Request) {
				if !tc.neverEnds {
					end()
				}
				if tc.stop != nil {
					tc.stop(w)
					return
				}
				_, _ = w.Write([]byte("{}"))
			})
			srv := &http.Server{Handler: mux}
			go srv.Serve(ln) //nolint:errcheck // ends with Close
			t.Cleanup(func() { srv.Close() })

			timeout := testTimeout
			if tc.neverEnds {
				timeout = time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			stopped, err := node.StopService(ctx, l, 0)
			if tc.wantErrContain != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErrContain) || !strings.Contains(err.Error(), strconv.Itoa(pid)) {
					t.Fatalf("StopService of a service that does not end: pid %d, %v; want an error with %q and pid %d", stopped, err, tc.wantErrContain, pid)
				}
				if errors.Is(err, node.ErrNotRunning) {
					t.Errorf("StopService of a service that does not end says it is not running: %v", err)
				}
				return
			}
			if err != nil || stopped != pid {
				t.Fatalf("StopService: pid %d, %v; want pid %d stopped", stopped, err, pid)
			}
			if !processGone(pid) {
				t.Fatalf("StopService returned while the service (pid %d) still runs", pid)
			}
		})
	}
}
