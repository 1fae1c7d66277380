package auth

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// fixture is an Authority with a movable clock over an in-memory store.
// skew moves its wall clock (a.now), monoSkew its monotonic one (a.mono).
type fixture struct {
	a        *Authority
	key      crypto.PrivKey
	store    ds.Batching
	skew     *atomic.Int64
	monoSkew *atomic.Int64
}

func newKey(t testing.TB) crypto.PrivKey {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newStore() ds.Batching { return dssync.MutexWrap(ds.NewMapDatastore()) }

func newFixture(t testing.TB) *fixture {
	t.Helper()
	return fixtureOver(t, newKey(t), newStore())
}

func fixtureOver(t testing.TB, key crypto.PrivKey, store ds.Batching) *fixture {
	t.Helper()
	a, err := NewAuthority(key, store)
	if err != nil {
		t.Fatal(err)
	}
	skew, monoSkew := new(atomic.Int64), new(atomic.Int64)
	a.now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	realMono := a.mono
	a.mono = func() time.Duration { return realMono() + time.Duration(monoSkew.Load()) }
	return &fixture{a: a, key: key, store: store, skew: skew, monoSkew: monoSkew}
}

// advance moves the fixture's clock forward: time passes.
func (f *fixture) advance(d time.Duration) {
	f.skew.Add(int64(d))
	f.monoSkew.Add(int64(d))
}

// stepWall sets the wall clock ahead (d > 0) or back (d < 0) without time
// passing, as an operator or NTP correcting the clock does.
func (f *fixture) stepWall(d time.Duration) { f.skew.Add(int64(d)) }

func (f *fixture) issue(t testing.TB, o IssueOptions) Record {
	t.Helper()
	rec, err := f.a.Issue(context.Background(), o)
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	return rec
}

func newPeer(t testing.TB) peer.ID {
	t.Helper()
	id, err := peer.IDFromPrivateKey(newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func direct(p peer.ID, ip string) Remote {
	r := Remote{Peer: p}
	if ip != "" {
		r.IP = netip.MustParseAddr(ip)
	}
	return r
}

func ed25519Priv(raw []byte) ed25519.PrivateKey { return ed25519.PrivateKey(raw) }
