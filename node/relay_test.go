package node_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	pbv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/pb"
	ma "github.com/multiformats/go-multiaddr"
)

// A subscription streamed through a relay moves to a direct connection
// as soon as one to the publisher exists (a hole punch that succeeded),
// and every publication still runs its receiver exactly once.
func TestSubscriptionMovesFromRelayToDirect(t *testing.T) {
	ctx := testCtx(t)
	relay := newTestNode(t, withQuietLog(), func(o *node.Options) { o.Relay = true })
	relayAddr := fmt.Sprintf("%s/p2p/%s", relay.Host().Addrs()[0], relay.ID())
	pub := newTestNode(t, withQuietLog())
	sub := newTestNode(t, withQuietLog())
	// A reservation made directly: AutoRelay does not use relays that
	// only have loopback addresses.
	if _, err := client.Reserve(ctx, pub.Host(), peer.AddrInfo{ID: relay.ID(), Addrs: relay.Host().Addrs()}); err != nil {
		t.Fatalf("reserve a slot on the relay: %v", err)
	}

	var runs numberRuns
	if err := sub.RegisterReceiver("rec", runs.handler); err != nil {
		t.Fatal(err)
	}
	pid, _ := connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"mv.>"}})

	// Only a relayed connection: drop the direct one and every direct
	// address, then reach the publisher through its circuit.
	h := sub.Host()
	if err := h.Network().ClosePeer(pub.ID()); err != nil {
		t.Fatal(err)
	}
	h.Peerstore().ClearAddrs(pub.ID())
	circuit := ma.StringCast(relayAddr + "/p2p-circuit")
	if err := h.Connect(network.WithAllowLimitedConn(ctx, "test"), peer.AddrInfo{ID: pub.ID(), Addrs: []ma.Multiaddr{circuit}}); err != nil {
		t.Fatalf("connect through the relay: %v", err)
	}
	for _, c := range h.Network().ConnsToPeer(pub.ID()) {
		if !c.Stat().Limited {
			t.Fatalf("connection %s to the publisher is not relayed", c.RemoteMultiaddr())
		}
	}
	if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pid, Pattern: "mv.>", Receiver: "rec"}); err != nil {
		t.Fatal(err)
	}
	path := func(want string) {
		t.Helper()
		checkFor(t, 20*time.Second, 20*time.Millisecond, func() error {
			subs, err := sub.Subscriptions(ctx)
			if err != nil {
				return err
			}
			if len(subs) != 1 || subs[0].Path != want {
				return fmt.Errorf("subscriptions %+v, want one on a %s stream", subs, want)
			}
			// The publisher sees the same stream.
			if ss := pub.Subscribers(); len(ss) != 1 || !ss[0].Connected || ss[0].Path != want {
				return fmt.Errorf("subscribers at the publisher %+v, want one on a %s stream", ss, want)
			}
			return nil
		})
	}
	publish := func(from, to int) {
		for i := from; i <= to; i++ {
			if _, err := pub.Publish(ctx, "mv.x", json.RawMessage(strconv.Itoa(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	path("relayed")
	publish(1, 50)

	// The direct connection appears, dialled as a hole punch dials it.
	if err := h.Connect(network.WithForceDirectDial(ctx, "test"), peer.AddrInfo{ID: pub.ID(), Addrs: pub.Host().Addrs()}); err != nil {
		t.Fatalf("direct connect: %v", err)
	}
	path("direct")
	publish(51, 100)
	checkFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		got := runs.runs()
		for i := 1; i <= 100; i++ {
			if got[i] != 1 {
				return fmt.Errorf("publication %d ran the receiver %d times", i, got[i])
			}
		}
		return nil
	})
}

// relayedOnly returns a publisher and a subscriber that reach each other
// only through a relay whose circuits carry limitData bytes each way (no
// direct path either way, as behind symmetric NATs): both stop listening
// directly, and the subscriber knows the publisher only through its
// circuit. The subscriber holds a token to subscribe to r.>.
func relayedOnly(t *testing.T, limitData node.ByteSize) (pub, sub *node.Node) {
	t.Helper()
	ctx := testCtx(t)
	relay := newTestNode(t, withQuietLog(), func(o *node.Options) { o.Relay = true; o.Config.Network.RelayLimitData = limitData })
	pub, sub = newTestNode(t, withQuietLog()), newTestNode(t, withQuietLog())
	relayTCP := relay.Host().Addrs()[0]
	if _, err := client.Reserve(ctx, pub.Host(), peer.AddrInfo{ID: relay.ID(), Addrs: []ma.Multiaddr{relayTCP}}); err != nil {
		t.Fatalf("reserve a slot on the relay: %v", err)
	}
	connectPeers(t, pub, sub, localapi.IssueRequest{Subscribe: []string{"r.>"}})
	for _, n := range []*node.Node{pub, sub} {
		var direct []ma.Multiaddr
		for _, a := range n.Host().Network().ListenAddresses() {
			if _, err := a.ValueForProtocol(ma.P_CIRCUIT); err != nil {
				direct = append(direct, a)
			}
		}
		n.Host().Network().(*swarm.Swarm).ListenClose(direct...)
	}
	if err := sub.Host().Network().ClosePeer(pub.ID()); err != nil {
		t.Fatal(err)
	}
	sub.Host().Peerstore().ClearAddrs(pub.ID())
	circuit := ma.StringCast(fmt.Sprintf("%s/p2p/%s/p2p-circuit", relayTCP, relay.ID()))
	sub.Host().Peerstore().AddAddrs(pub.ID(), []ma.Multiaddr{circuit}, time.Hour)
	if err := sub.Host().Connect(network.WithAllowLimitedConn(ctx, "test"), peer.AddrInfo{ID: pub.ID(), Addrs: []ma.Multiaddr{circuit}}); err != nil {
		t.Fatalf("connect through the relay: %v", err)
	}
	return pub, sub
}

// subscribeRelayed subscribes sub's receiver to r.> at pub (set up by
// relayedOnly) and waits until the publisher streams it over the relay.
func subscribeRelayed(t *testing.T, pub, sub *node.Node, receiver string) {
	t.Helper()
	if _, err := sub.Subscribe(testCtx(t), localapi.SubscribeRequest{Peer: pub.ID().String(), Pattern: "r.>", Receiver: receiver}); err != nil {
		t.Fatal(err)
	}
	// The publisher attached the stream before it answered.
	if subs := pub.Subscribers(); len(subs) != 1 || subs[0].Path != "relayed" {
		t.Fatalf("subscribers %+v, want one on a relayed stream", subs)
	}
}

// Over a relay circuit that carries little (here 64 KiB, libp2p's default
// is 128 KiB), publications that each fit still all arrive: they go one
// per frame. Eight to a frame (the window over a limited connection),
// every frame was larger than a circuit carries, was cut, and was sent
// again on the next circuit, for ever.
func TestDeliveryOverTightRelayCircuit(t *testing.T) {
	ctx := testCtx(t)
	pub, sub := relayedOnly(t, 64<<10)
	var c counter
	if err := sub.RegisterReceiver("rec", c.handler); err != nil {
		t.Fatal(err)
	}
	subscribeRelayed(t, pub, sub, "rec")
	const total = 40
	msgs := make([]node.Message, total)
	for i := range msgs {
		msgs[i] = node.Message{Subject: "r.a", Data: json.RawMessage(`"` + strings.Repeat("x", 12<<10) + `"`)}
	}
	if _, err := pub.PublishBatch(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if s := pub.Subscribers(); len(s) != 1 || s[0].Acked != total || c.count() != total {
			return fmt.Errorf("acked %+v, receiver ran %d times; want %d each", s, c.count(), total)
		}
		return nil
	})
}

// A publication larger than a relay circuit carries never crosses it: it
// was cut, sent again on the next circuit, and cut again, for ever, and
// everything queued behind it waited. It goes without its data instead;
// the subscriber parks it as a dead letter that says why, and the
// publications behind it arrive.
func TestPublicationLargerThanRelayCircuitIsParked(t *testing.T) {
	ctx := testCtx(t)
	pub, sub := relayedOnly(t, 64<<10)
	rec := &flRecorder{}
	if err := sub.RegisterReceiver("rec", rec.handle); err != nil {
		t.Fatal(err)
	}
	subscribeRelayed(t, pub, sub, "rec")
	big := json.RawMessage(`"` + strings.Repeat("y", 80<<10) + `"`)
	d := parkedAmongSmall(t, pub, sub, rec, "r", big)
	if !strings.Contains(d.Error, "relay circuit") {
		t.Fatalf("dead letter %+v; want an error naming the relay circuit as the reason", d)
	}
	if err := sub.ReplayDeadLetter(ctx, d.ID, nil); err == nil || !strings.Contains(err.Error(), "relay circuit") {
		t.Fatalf("replay of a publication that never arrived = %v, want a refusal naming the relay circuit", err)
	}
}

// A static relay that gives the instance no relay address is logged with
// why: one that cannot be reached, one that runs no relay service, one
// reachable only at non-public addresses (libp2p announces relay
// addresses only through public ones). AutoRelay said nothing, and
// `service status` just had no relay_reservations.
func TestStaticRelayProblemsAreLogged(t *testing.T) {
	defer node.SetRelayCheckAfter(100 * time.Millisecond)()
	relay := newTestNode(t, withQuietLog(), func(o *node.Options) { o.Relay = true })
	plain := newTestNode(t, withQuietLog())
	gone := newTestNode(t, withQuietLog())
	goneAddr := fmt.Sprintf("%s/p2p/%s", gone.Host().Addrs()[0], gone.ID())
	if err := gone.Close(); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	newTestNode(t, func(o *node.Options) {
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		o.Config.Network.Relays = []string{
			fmt.Sprintf("%s/p2p/%s", relay.Host().Addrs()[0], relay.ID()),
			fmt.Sprintf("%s/p2p/%s", plain.Host().Addrs()[0], plain.ID()),
			goneAddr,
		}
	})
	checkFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		out := logs.String()
		for id, want := range map[peer.ID]string{
			relay.ID(): "has none",
			plain.ID(): "does not run a relay service",
			gone.ID():  "cannot be reached",
		} {
			found := false
			for _, line := range strings.Split(out, "\n") {
				if strings.Contains(line, "static relay gives this instance no relay address") && strings.Contains(line, id.String()) && strings.Contains(line, want) {
					found = true
				}
			}
			if !found {
				return fmt.Errorf("no warning for relay %s saying %q in:\n%s", id, want, out)
			}
		}
		return nil
	})
}

// A relay gives at most network.relay_max_reservations_per_ip reservations
// to peers from one IP address (libp2p's cap, 8 by default, was not
// configurable: the ninth instance behind one NAT got none); the relay
// logs each refusal (libp2p only at debug level), and an instance refused
// says so, naming the settings.
func TestRelayReservationsPerIP(t *testing.T) {
	defer node.SetRelayCheckAfter(100 * time.Millisecond)()
	ctx := testCtx(t)
	var relayLogs syncBuffer
	relay := newTestNode(t, func(o *node.Options) {
		o.Relay = true
		o.Config.Network.RelayMaxReservationsPerIP = 1
		o.Logger = slog.New(slog.NewTextHandler(&relayLogs, nil))
	})
	relayInfo := peer.AddrInfo{ID: relay.ID(), Addrs: relay.Host().Addrs()}
	first := newTestNode(t, withQuietLog())
	if _, err := client.Reserve(ctx, first.Host(), relayInfo); err != nil {
		t.Fatalf("first reservation from 127.0.0.1: %v", err)
	}
	second := newTestNode(t, withQuietLog())
	_, err := client.Reserve(ctx, second.Host(), relayInfo)
	var re client.ReservationError
	if !errors.As(err, &re) || re.Status != pbv2.Status_RESERVATION_REFUSED {
		t.Fatalf("second reservation from 127.0.0.1 with relay_max_reservations_per_ip 1: %v, want refused", err)
	}
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if out := relayLogs.String(); !strings.Contains(out, "relay service refused a reservation") || !strings.Contains(out, "relay_max_reservations_per_ip=1") {
			return fmt.Errorf("relay log lacks the refusal:\n%s", out)
		}
		return nil
	})
	// An instance with the relay in network.relays says why it has no
	// relay address. (Only for a relay with a public address is a
	// reservation asked for: loopback counts as public here.)
	// Restored after the node below is closed (cleanups run last first):
	// its relay check reads it until then.
	t.Cleanup(node.TreatRelayAddrsAsPublic())
	var logs syncBuffer
	newTestNode(t, func(o *node.Options) {
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		o.Config.Network.Relays = []string{fmt.Sprintf("%s/p2p/%s", relay.Host().Addrs()[0], relay.ID())}
	})
	checkFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if out := logs.String(); !strings.Contains(out, "static relay gives this instance no relay address: it refuses this instance a reservation") || !strings.Contains(out, "relay_max_reservations_per_ip") {
			return fmt.Errorf("no refusal warning in:\n%s", out)
		}
		return nil
	})
	// With room for two, the second is given one.
	roomy := newTestNode(t, withQuietLog(), func(o *node.Options) {
		o.Relay = true
		o.Config.Network.RelayMaxReservationsPerIP = 2
	})
	roomyInfo := peer.AddrInfo{ID: roomy.ID(), Addrs: roomy.Host().Addrs()}
	for i, n := range []*node.Node{first, second} {
		if _, err := client.Reserve(ctx, n.Host(), roomyInfo); err != nil {
			t.Fatalf("reservation %d with relay_max_reservations_per_ip 2: %v", i+1, err)
		}
	}
}
