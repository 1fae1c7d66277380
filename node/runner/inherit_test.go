package runner

import (
	"context"
	"os"
	"syscall"
	"testing"
)

// A program gets stdin, stdout and stderr and no other descriptor, also
// none that this process holds without close-on-exec, as inherited ones
// are. It used to inherit every such descriptor (a dup stands in for one
// here). Not parallel: it holds a descriptor that every program started
// meanwhile would inherit.
func TestProgramsInheritOnlyStdio(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd, err := syscall.Dup(int(f.Fd())) // a dup is not close-on-exec
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)

	r, dir := newTestRunner(t, nil)
	// ls lists the descriptor it reads the directory with, too: the lowest
	// free one, 3.
	writeProgram(t, dir, KindAction, "fds", `ls /proc/self/fd | sort -n | tr '\n' ' ' | sed 's/^/"/; s/ $/"/'`)
	out, err := r.Run(context.Background(), action("fds", ""))
	if err != nil || string(out) != `"0 1 2 3"` {
		t.Errorf("descriptors a program sees = %s, %v; want \"0 1 2 3\" (3 is ls's own; %d was held open without close-on-exec)", out, err, fd)
	}
}
