package node_test

import (
	"bufio"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
)

// closedByPeer reports, without waiting, whether the other end of c has
// closed it (a read would return end of file at once).
func closedByPeer(t *testing.T, c net.Conn) bool {
	t.Helper()
	rc, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var rerr error
	if err := rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, rerr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	return rerr == nil && n == 0
}

// The control socket serves at most its connection limit at once: with
// the limit held by silent connections, a request on one more connection
// waits until the server has cut one of them (header read timeout), and is
// then answered. (Without the limit it was answered at once, beside them.)
func TestControlConnectionLimit(t *testing.T) {
	node.SetControlLimits(t, time.Second, 2)
	l := runService(t, node.LoopbackConfig(0))
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("unix", l.Socket())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	silent := []net.Conn{dial(), dial()}
	c := dial()
	if _, err := c.Write([]byte("GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(testTimeout))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status over a waiting connection: HTTP %d", resp.StatusCode)
	}
	if !closedByPeer(t, silent[0]) && !closedByPeer(t, silent[1]) {
		t.Error("a third connection was served while the limit of 2 was held by two open connections")
	}
}
