package main

import (
	"strconv"
	"strings"
	"testing"
)

// A program that starts a service with `coattail service start --headless`
// (README, "Actions and receivers": such a service is not part of the run)
// registers it where the service running the program registers, so that
// `service status` lists it and `service start` finds a copy of it running.
// Programs were not told the runtime directory (COATTAIL_RUNTIME_DIR, or
// the one XDG_RUNTIME_DIR gives, as in any desktop session): the service
// they started registered in the default one, where neither looked.
func TestProgramStartedServiceIsListed(t *testing.T) {
	t.Parallel()
	a, shop := newInstance(t, "a"), newInstance(t, "shop")
	a.writeScript("actions", "starter", "exec coattail --instance '"+shop.dir+"' service start --headless\n")
	a.start()
	out := strings.TrimSpace(a.mustRun("action", "perform", "--action", "starter"))
	pid, err := strconv.Atoi(out)
	if err != nil || pid <= 0 {
		t.Fatalf("the action starting %s's service printed %q, want its pid", shop.dir, out)
	}
	shop.pid = pid
	t.Cleanup(func() { shop.cleanupService(pid) })

	var status []struct {
		PID      int    `json:"pid"`
		Instance string `json:"instance"`
		Online   bool   `json:"online"`
	}
	a.decodeJSON(a.mustRun("service", "status", "--json"), &status)
	listed := false
	for _, s := range status {
		if s.PID == pid {
			listed = true
			if s.Instance != shop.dir || !s.Online {
				t.Errorf("service status lists pid %d as %+v; want %s, online", pid, s, shop.dir)
			}
		}
	}
	if !listed {
		t.Errorf("service status does not list the service (pid %d) an action started: %+v", pid, status)
	}
}
