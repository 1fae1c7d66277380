package node

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"
)

// probeListen refuses only a port some socket holds, and judges each
// address as libp2p binds it (an /ip6 wildcard v6-only); an address that
// is not on this host is left to libp2p.
func TestProbeListen(t *testing.T) {
	held, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	port := held.Addr().(*net.TCPAddr).Port
	if err := probeListen([]string{fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port)}); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("a held port: %v, want EADDRINUSE", err)
	}
	if err := probeListen([]string{"/ip4/192.0.2.1/tcp/45123", "/ip4/127.0.0.1/tcp/0"}); err != nil {
		t.Fatalf("an address not on this host: %v, want it left to libp2p", err)
	}
	if l6, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		_ = l6.Close()
		held4, err := net.Listen("tcp4", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		defer held4.Close()
		p4 := held4.Addr().(*net.TCPAddr).Port
		if err := probeListen([]string{fmt.Sprintf("/ip6/::/tcp/%d", p4)}); err != nil {
			t.Fatalf("an IPv6 wildcard on a port an IPv4 socket holds: %v, want it allowed (libp2p binds it v6-only)", err)
		}
	}
}
