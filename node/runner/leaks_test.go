package runner

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// zombieChildren lists this process's children that exited and were never
// waited for.
func zombieChildren(t *testing.T) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var zombies []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fields, _ := procStat(pid) // state ppid ...
		if len(fields) > 1 && fields[0] == "Z" && fields[1] == strconv.Itoa(os.Getpid()) {
			zombies = append(zombies, pid)
		}
	}
	return zombies
}

// Many runs of every outcome leave no file descriptor open and no child
// unreaped. Not parallel: it counts this process's descriptors.
func TestRunsLeakNoDescriptorsOrZombies(t *testing.T) {
	r, dir := newTestRunner(t, func(c *Config) { c.Timeout = 200 * time.Millisecond; c.MaxOutput = 1024 })
	writeProgram(t, dir, KindAction, "echo", `exec cat`)
	// quiet must succeed, so it runs under the default timeout, not the
	// 200ms that ends slow and flood quickly and that a busy machine can
	// take just to start a shell.
	long, longDir := newTestRunner(t, func(c *Config) { c.MaxOutput = 1024 })
	writeProgram(t, longDir, KindAction, "quiet", `cat >/dev/null`)
	writeProgram(t, dir, KindAction, "fail", `exit 3`)
	writeProgram(t, dir, KindAction, "slow", `sleep 30`)
	writeProgram(t, dir, KindAction, "flood", `exec yes`)
	writeProgram(t, dir, KindAction, "bg", `sleep 30 & echo 1`)
	writeFile(t, dir, KindAction, "badshebang", "#!/nonexistent/interpreter\n", 0o755)
	bigInput := `"` + strings.Repeat("a", 2*pipePrefill) + `"` // takes the temporary-file path

	before := openFDs(t)
	for i := 0; i < 5; i++ {
		for _, name := range []string{"echo", "fail", "slow", "flood", "bg", "badshebang", "missing"} {
			_, _ = r.Run(context.Background(), action(name, `{"i":1}`))
		}
		if _, err := long.Run(context.Background(), action("quiet", bigInput)); err != nil {
			t.Fatal(err)
		}
	}
	if after := openFDs(t); after > before {
		t.Errorf("%d descriptors open before the runs, %d after", before, after)
	}
	if z := zombieChildren(t); len(z) != 0 {
		t.Errorf("unreaped children after the runs: %v", z)
	}
}
