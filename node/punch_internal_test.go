package node

import (
	"errors"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
	ma "github.com/multiformats/go-multiaddr"
)

// punchConn is a connection as punchInitiator and newestOpened see it.
type punchConn struct {
	network.Conn
	relayed bool
	dir     network.Direction
	opened  time.Time
}

func (c punchConn) Stat() network.ConnStats {
	return network.ConnStats{Stats: network.Stats{Direction: c.dir, Opened: c.opened, Limited: c.relayed}}
}

func (c punchConn) RemoteMultiaddr() ma.Multiaddr {
	if c.relayed {
		return ma.StringCast("/ip4/192.0.0.193/tcp/4001/p2p/12D3KooWSuRJ3Ubv6V6sVAd16Y5THa1YwdebQzb6bDwD1g7NKEZw/p2p-circuit")
	}
	return ma.StringCast("/ip4/192.0.0.194/tcp/4001")
}

func TestPunchAfterBacksOff(t *testing.T) {
	want := []time.Duration{30 * time.Second, time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 16 * time.Minute, 16 * time.Minute, 16 * time.Minute}
	for n, w := range want {
		if got := punchAfter(n); got != w {
			t.Errorf("punchAfter(%d) = %v, want %v", n, got, w)
		}
	}
	if got := punchAfter(1000); got != punchRetryMax {
		t.Errorf("punchAfter(1000) = %v, want %v", got, punchRetryMax)
	}
}

func TestPunchInitiator(t *testing.T) {
	lo, hi := peer.ID("a-lower"), peer.ID("b-higher")
	in := punchConn{relayed: true, dir: network.DirInbound}
	out := punchConn{relayed: true, dir: network.DirOutbound}
	direct := punchConn{dir: network.DirOutbound}
	for _, c := range []struct {
		name  string
		self  peer.ID
		conns []network.Conn
		want  bool
	}{
		{"no connection", lo, nil, false},
		{"a direct connection exists", hi, []network.Conn{in, direct}, false},
		{"received relayed: DCUtR's initiator", hi, []network.Conn{in}, true},
		{"dialled relayed: the peer initiates", lo, []network.Conn{out}, false},
		{"both ways, lower id", lo, []network.Conn{in, out}, true},
		{"both ways, higher id", hi, []network.Conn{out, in}, false},
	} {
		remote := hi
		if c.self == hi {
			remote = lo
		}
		if got := punchInitiator(c.self, remote, c.conns); got != c.want {
			t.Errorf("%s: punchInitiator = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestNewestOpened(t *testing.T) {
	t0 := time.Unix(1000, 0)
	got := newestOpened([]network.Conn{punchConn{opened: t0}, punchConn{opened: t0.Add(time.Minute)}, punchConn{opened: t0.Add(time.Second)}})
	if !got.Equal(t0.Add(time.Minute)) {
		t.Errorf("newestOpened = %v, want %v", got, t0.Add(time.Minute))
	}
}

// TestPunchPlan walks one peer's schedule: the first attempt
// punchRetryFirst after it is first seen relayed-only, back-off after
// failures, no count for a busy service, no more after
// punchRetryMaxFailures, a fresh start with a new relayed connection, and
// nothing once it is no longer eligible.
func TestPunchPlan(t *testing.T) {
	p := peer.ID("peer")
	var pl punchPlan
	t0 := time.Unix(1000, 0)
	opened := t0.Add(-time.Hour)
	failed := errors.New("all retries for hole punch failed")

	now := t0
	if pl.due(p, true, opened, now) {
		t.Fatal("due at once when first seen relayed-only")
	}
	if pl.due(p, true, opened, now.Add(punchRetryFirst-time.Second)) {
		t.Fatal("due before punchRetryFirst")
	}
	now = now.Add(punchRetryFirst)
	if !pl.due(p, true, opened, now) {
		t.Fatal("not due after punchRetryFirst")
	}
	if pl.due(p, true, opened, now.Add(time.Hour)) {
		t.Fatal("due again while an attempt runs")
	}
	// libp2p's own attempt was running: again at the next scan, not
	// counted.
	if n, next := pl.done(p, holepunch.ErrHolePunchActive, now); n != 0 || next != punchScan {
		t.Fatalf("busy: done = %d, %v; want 0, %v", n, next, punchScan)
	}
	if !pl.due(p, true, opened, now.Add(punchScan)) {
		t.Fatal("not due at the next scan after a busy service")
	}
	for i := 1; i < punchRetryMaxFailures; i++ {
		n, next := pl.done(p, failed, now)
		if n != i || next != punchAfter(i) {
			t.Fatalf("failure %d: done = %d, %v; want %d, %v", i, n, next, i, punchAfter(i))
		}
		if pl.due(p, true, opened, now.Add(next-time.Second)) {
			t.Fatalf("failure %d: due before its back-off %v", i, next)
		}
		now = now.Add(next)
		if !pl.due(p, true, opened, now) {
			t.Fatalf("failure %d: not due after its back-off %v", i, next)
		}
	}
	if n, next := pl.done(p, failed, now); n != punchRetryMaxFailures || next != 0 {
		t.Fatalf("last failure: done = %d, %v; want %d, 0", n, next, punchRetryMaxFailures)
	}
	if pl.due(p, true, opened, now.Add(24*time.Hour)) {
		t.Fatal("due after punchRetryMaxFailures with the same relayed connection")
	}
	// A new relayed connection: libp2p tries on it, and the schedule
	// starts again.
	opened2 := now.Add(time.Hour)
	now = opened2
	if pl.due(p, true, opened2, now) {
		t.Fatal("due at once with a new relayed connection")
	}
	if !pl.due(p, true, opened2, now.Add(punchRetryFirst)) {
		t.Fatal("a new relayed connection does not start the schedule again")
	}
	if n, next := pl.done(p, nil, now); n != 0 || next != 0 {
		t.Fatalf("success: done = %d, %v; want 0, 0", n, next)
	}
	// Direct now, or the peer cannot punch: forgotten, and a peer seen
	// relayed-only again waits punchRetryFirst.
	if pl.due(p, false, opened2, now.Add(time.Hour)) {
		t.Fatal("due while not eligible")
	}
	if len(pl.peers) != 0 {
		t.Fatalf("a peer not eligible is remembered: %v", pl.peers)
	}
	now = now.Add(2 * time.Hour)
	if pl.due(p, true, opened2, now) || !pl.due(p, true, opened2, now.Add(punchRetryFirst)) {
		t.Fatal("relayed-only again: want the first attempt punchRetryFirst later")
	}
	pl.forget(map[peer.ID]bool{})
	if len(pl.peers) != 0 {
		t.Fatalf("forget kept %v", pl.peers)
	}
	if n, next := pl.done(p, failed, now); n != -1 || next != 0 {
		t.Fatalf("done for a forgotten peer = %d, %v; want -1 (no schedule), 0", n, next)
	}
}
