package main

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// config check reads config.yml as the service would at start: valid says
// so (exit 0), a mistake is named with its key and line (exit 1); a file
// that sets nothing is valid but warned about (it listens on every
// interface), as is a file changed after the running service started.
// An emptied config started the service public without a word.
func TestConfigCheck(t *testing.T) {
	i := newInstance(t, "cfg")
	if out := i.mustRun("config", "check"); out != i.path("config.yml")+" is valid\n" {
		t.Errorf("config check of a new instance: %q", out)
	}
	orig, err := os.ReadFile(i.path("config.yml"))
	if err != nil {
		t.Fatal(err)
	}
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(i.path("config.yml"), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	i.setConfig("stream_timeout", "soon")
	i.mustFail([]string{"config", "check"}, "stream_timeout", "not a duration")

	write("# nothing set\n")
	_, stderr, code := i.run("config", "check")
	if code != 0 || !strings.Contains(stderr, "sets nothing") || !strings.Contains(stderr, "every interface") {
		t.Errorf("config check of an empty config: exit %d, stderr %q; want valid with a warning", code, stderr)
	}
	// The service says so at start too, on stderr and in its log.
	i.setConfigText(t, string(orig))
	i.start()
	_, stderr, code = i.run("config", "check")
	if code != 0 || stderr != "" {
		t.Errorf("config check with the service running on it: exit %d, stderr %q", code, stderr)
	}
	later := time.Now().Add(2 * time.Second)
	write(string(orig) + "\n# edited\n")
	if err := os.Chtimes(i.path("config.yml"), later, later); err != nil {
		t.Fatal(err)
	}
	_, stderr, code = i.run("config", "check")
	if code != 0 || !strings.Contains(stderr, "started before") || !strings.Contains(stderr, "coattail service restart") {
		t.Errorf("config check of a config changed after the start: exit %d, stderr %q", code, stderr)
	}
	i.mustRun("service", "stop")

	// The service warns at start too, on stderr and in its log. With
	// nothing set it listens on every interface and asks the router for a
	// port mapping: started in a network namespace of its own, with no
	// network, so that nothing leaves the machine.
	if os.Geteuid() != 0 {
		return
	}
	write("")
	cmd := exec.Command(binPath, "service", "start", "--headless")
	cmd.Dir, cmd.Env = i.dir, childEnv(t, i.env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	var stdout, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &errb
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		t.Fatalf("service start with an empty config, in a network namespace: %v, stderr %q", err, errb.String())
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(stdout.String())); err == nil {
		t.Cleanup(func() { i.cleanupService(pid) })
	}
	if !strings.Contains(errb.String(), "warning: ") || !strings.Contains(errb.String(), "sets nothing") {
		t.Errorf("service start with an empty config: stderr %q, want a warning", errb.String())
	}
	i.mustRun("service", "stop")
	if b, _ := os.ReadFile(i.path("service.log")); !strings.Contains(string(b), "sets nothing") {
		t.Errorf("the service log does not warn about the empty config")
	}
}

func (i *instance) setConfigText(t *testing.T, text string) {
	t.Helper()
	if err := os.WriteFile(i.path("config.yml"), []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}
