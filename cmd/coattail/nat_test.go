package main

// NAT tests: real instances in the network namespaces of scripts/natlab.sh
// (a public relay, two instances each behind a NAT router that drops
// unsolicited packets). They need root, iproute2 and iptables, and skip
// without them unless COATTAIL_REQUIRE_NAT_TESTS is set (CI), in which case
// they fail. docs/NAT.md describes the lab and what these tests prove.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// natPort is what every lab instance listens on (TCP and QUIC); each one is
// alone in its namespace.
const natPort = 4001

// natRelayIP is the relay's address on the lab's public segment
// (scripts/natlab.sh).
const natRelayIP = "192.0.0.193"

// natTimeout bounds each wait in the lab: AutoNAT alone needs a 15s boot
// delay plus a dial-back that the NAT makes time out.
const natTimeout = 90 * time.Second

// requireNATLab skips (or, with COATTAIL_REQUIRE_NAT_TESTS, fails) unless
// this process can build the lab.
func requireNATLab(t *testing.T) {
	t.Helper()
	needBinary(t)
	stop := t.Skipf
	if os.Getenv("COATTAIL_REQUIRE_NAT_TESTS") != "" {
		stop = t.Fatalf
	}
	switch {
	case runtime.GOOS != "linux":
		stop("NAT lab: needs Linux network namespaces (GOOS=%s)", runtime.GOOS)
	case os.Geteuid() != 0:
		stop("NAT lab: needs root to create network namespaces; run `sudo make test` to include the NAT tests")
	}
	if err := exec.Command("ip", "netns", "list").Run(); err != nil {
		stop("NAT lab: `ip netns` is unavailable (%v); install iproute2", err)
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		stop("NAT lab: iptables is not installed (apt-get install -y iptables)")
	}
}

// natLab is one lab built by scripts/natlab.sh, torn down when the test
// ends.
type natLab struct {
	t      *testing.T
	prefix string
}

func newNATLab(t *testing.T, kind, tag string) *natLab {
	t.Helper()
	requireNATLab(t)
	// Unique per process, kind and tag, so parallel tests and a lab a
	// developer left up never collide.
	l := &natLab{t: t, prefix: fmt.Sprintf("ct%d%c%s", os.Getpid()%1000000, kind[0], tag)}
	t.Cleanup(func() {
		if out, err := l.script("down"); err != nil {
			t.Errorf("natlab down: %v\n%s", err, out)
		}
	})
	if out, err := l.script("up", kind); err != nil {
		t.Fatalf("natlab up %s: %v\n%s", kind, err, out)
	}
	return l
}

func (l *natLab) script(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{filepath.Join("..", "..", "scripts", "natlab.sh")}, args...)...)
	cmd.Env = append(os.Environ(), "NATLAB_PREFIX="+l.prefix)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// ns is the namespace of a lab node: pub, ra, rb, a or b.
func (l *natLab) ns(node string) string { return l.prefix + "-" + node }

// natInstance creates an instance that listens on every address of its
// namespace, with hole punching and AutoNAT on, and the given relays.
func natInstance(t *testing.T, name string, relays ...string) *instance {
	t.Helper()
	i := newInstance(t, name)
	i.setConfig("listen", fmt.Sprintf("[/ip4/0.0.0.0/tcp/%d, /ip4/0.0.0.0/udp/%d/quic-v1]", natPort, natPort))
	i.setConfig("hole_punching", "true")
	i.setConfig("autonat", "true")
	i.setConfig("port_mapping", "false") // the lab's routers speak no UPnP/NAT-PMP
	if len(relays) > 0 {
		i.setConfig("relays", "["+strings.Join(relays, ", ")+"]")
	}
	return i
}

// startIn starts the instance's service inside a namespace (the headless
// child inherits it); the control socket is a file, so every other
// command runs from the test's own namespace.
func (i *instance) startIn(ns string, extra ...string) int {
	i.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	args := append([]string{"netns", "exec", ns, binPath, "service", "start", "--headless"}, extra...)
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Dir = i.dir
	cmd.Env = childEnv(i.t, i.env...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		i.t.Fatalf("%s: service start in %s: %v\n%s%s", i.name, ns, err, out, stderr)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil || pid <= 0 {
		i.t.Fatalf("%s: service start --headless printed %q, want a pid", i.name, out)
	}
	i.pid = pid
	i.t.Cleanup(func() { i.cleanupService(pid) })
	return pid
}

// natStatus is the part of `service status --json` the NAT tests read.
type natStatus struct {
	Instance     string   `json:"instance"`
	Reachability string   `json:"reachability"`
	Relays       []string `json:"relay_reservations"`
}

func (i *instance) natStatus() (natStatus, error) {
	out, stderr, code := i.run("service", "status", "--json")
	if code != 0 {
		return natStatus{}, fmt.Errorf("service status: exit %d: %s", code, stderr)
	}
	var all []natStatus
	if err := json.Unmarshal([]byte(out), &all); err != nil {
		return natStatus{}, fmt.Errorf("service status --json: %v", err)
	}
	for _, s := range all {
		if s.Instance == i.dir {
			return s, nil
		}
	}
	return natStatus{}, fmt.Errorf("service status lists no service for %s", i.dir)
}

type natPeer struct {
	Connected   bool     `json:"connected"`
	Connection  string   `json:"connection"`
	RemoteAddrs []string `json:"remote_addrs"`
}

func (i *instance) natPeer(id string) natPeer {
	i.t.Helper()
	var p natPeer
	i.decodeJSON(i.mustRun("peer", "show", "--id", id, "--json"), &p)
	return p
}

// received returns the lines B's receiver recorded, failing the test on a
// duplicate: receivers run exactly once per publication.
func received(t *testing.T, i *instance) (map[string]bool, error) {
	b, err := os.ReadFile(i.path("received.txt"))
	if os.IsNotExist(err) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, err
	}
	got := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		id, _, _ := strings.Cut(line, " ")
		if got[id] {
			t.Fatalf("publication %s reached the receiver twice:\n%s", id, b)
		}
		got[id] = true
	}
	return got, nil
}

// natOptions vary the flow between the two labs.
type natOptions struct {
	kind string
	// relayConfig is applied to the relay's config.yml.
	relayConfig map[string]string
	// publications and padding: how many A publishes and how big each is.
	publications, padding int
	// want is B's connection to A at the end: direct or relayed.
	want string
	// restart: then SIGKILL and restart B, then A, each time checking
	// that the subscription is back on a want connection and delivers.
	restart bool
	// mappingLost: then flush router A's NAT mappings (conntrack -F), so
	// that A's connection to the relay dies at A and lives on at the relay
	// (a NAT that forgot its mappings, or rebooted), and check that the
	// subscription delivers again within mappingLostWithin.
	mappingLost bool
	// outage: then router A's uplink goes down and comes back with the
	// routers dropping direct packets between them (stale state), so that
	// the hole punch on the relayed connection made meanwhile fails; once
	// it has, direct packets pass again, and the pair must be direct again
	// within outageDirectWithin with every publication delivered once.
	outage bool
	// labTag tells this test's lab apart from another test's of the same
	// kind.
	labTag string
}

// mappingLostWithin bounds recovery after a NAT forgot its mappings: well
// under the keep-alive timeout (30–60 s) after which libp2p notices a
// connection whose packets go nowhere.
const mappingLostWithin = 20 * time.Second

// natFlow is the user's story across NAT: B adds a token from A, performs
// A's action remotely, subscribes to it and receives every publication.
func natFlow(t *testing.T, o natOptions) {
	lab := newNATLab(t, o.kind, o.labTag)

	relay := natInstance(t, "relay")
	for k, v := range o.relayConfig {
		relay.setConfig(k, v)
	}
	relayAddr := fmt.Sprintf("/ip4/%s/tcp/%d/p2p/%s", natRelayIP, natPort, relay.peerID())
	relay.startIn(lab.ns("pub"), "--relay")

	a := natInstance(t, "a", relayAddr)
	b := natInstance(t, "b", relayAddr)
	if o.outage {
		// libp2p's hole-punch log (debug) tells when its own attempts
		// on a relayed connection have failed.
		for _, i := range []*instance{a, b} {
			i.env = append(i.env, "GOLOG_LOG_LEVEL=p2p-holepunch=debug")
		}
	}
	a.writeScript("actions", "orders.created", "exec cat\n")
	b.writeScript("receivers", "orders.log",
		`id=$(cat | sed -n 's/.*"id":\([0-9]*\).*/\1/p')`+"\n"+
			`echo "$id seq=$COATTAIL_SEQUENCE" >>"$COATTAIL_INSTANCE/received.txt"`+"\n")
	a.startIn(lab.ns("a"))
	b.startIn(lab.ns("b"))

	for _, i := range []*instance{a, b} {
		checkFor(t, natTimeout, func() error {
			s, err := i.natStatus()
			if err == nil && len(s.Relays) == 0 {
				err = fmt.Errorf("%s holds no relay reservation yet", i.name)
			}
			return err
		})
		// libp2p registers the hole-punch handler only once the host knows
		// a public address of its own; a relayed connection made before
		// that stays relayed (docs/NAT.md).
		checkFor(t, natTimeout, func() error {
			log, _ := os.ReadFile(i.path("service.log"))
			if !strings.Contains(string(log), "hole punching ready") {
				return fmt.Errorf("%s: no 'hole punching ready' in service.log", i.name)
			}
			return nil
		})
	}

	// A is private, so its token must carry its relay address: it is the
	// only way B can reach it.
	token := a.issue("--performable", "orders.created", "--subscribable", "orders.>")
	var claims struct {
		Addrs []string `json:"addrs"`
	}
	a.decodeJSON(a.mustRun("token", "decode", "--json", token), &claims)
	circuit := false
	for _, s := range claims.Addrs {
		circuit = circuit || strings.Contains(s, natRelayIP) && strings.HasSuffix(s, "/p2p-circuit")
	}
	if !circuit {
		t.Fatalf("A's token carries no /p2p-circuit address through the relay: %v", claims.Addrs)
	}
	// A listens on every address of its namespace, loopback included; B,
	// elsewhere, could only dial its own loopback with that.
	for _, s := range claims.Addrs {
		if strings.HasPrefix(s, "/ip4/127.") || strings.HasPrefix(s, "/ip6/::1/") {
			t.Fatalf("A's token carries a loopback address: %v", claims.Addrs)
		}
	}

	aID := a.peerID()
	b.mustRun("peer", "add", "--token", token)
	if out := b.mustRun("action", "perform", "--peer", aID, "--action", "orders.created", "--data", `{"id":0}`); !strings.Contains(out, `"id":0`) {
		t.Fatalf("remote perform across NAT printed %q, want the action's output", out)
	}
	b.mustRun("action", "subscribe", "--peer", aID, "--action", "orders.>", "--receiver", "orders.log")

	pad := strings.Repeat("x", o.padding)
	publish := func(from, to int) {
		for n := from; n <= to; n++ {
			a.mustRun("action", "perform", "--quiet", "--action", "orders.created", "--notify",
				"--data", fmt.Sprintf(`{"id":%d,"pad":%q}`, n, pad))
		}
	}
	waitAllWithin := func(to int, within time.Duration) {
		checkFor(t, within, func() error {
			got, err := received(t, b)
			if err != nil {
				return err
			}
			for n := 1; n <= to; n++ {
				if !got[strconv.Itoa(n)] {
					return fmt.Errorf("B's receiver has %d of %d publications (missing %d)", len(got), to, n)
				}
			}
			return nil
		})
	}
	waitAll := func(to int) { waitAllWithin(to, natTimeout) }
	publish(1, o.publications)
	waitAll(o.publications)

	var p natPeer
	checkFor(t, natTimeout, func() error {
		p = b.natPeer(aID)
		if !p.Connected || p.Connection != o.want {
			return fmt.Errorf("B's connection to A is %q (connected %v, via %v), want %q", p.Connection, p.Connected, p.RemoteAddrs, o.want)
		}
		return nil
	})
	t.Logf("%s NAT: B reaches A %s, via %v", o.kind, p.Connection, p.RemoteAddrs)
	if o.want == "relayed" {
		for _, r := range p.RemoteAddrs {
			if !strings.Contains(r, "/p2p-circuit") {
				t.Fatalf("behind symmetric NATs B has a direct connection to A (%s): the lab's NAT is not symmetric", r)
			}
		}
	}
	// The subscription's stream follows: once a direct connection exists,
	// a stream opened over the relay moves to it.
	checkFor(t, natTimeout, func() error {
		var subs []struct {
			Connected bool   `json:"connected"`
			Path      string `json:"path"`
		}
		b.decodeJSON(b.mustRun("subscriptions", "list", "--json"), &subs)
		if len(subs) != 1 || !subs[0].Connected || subs[0].Path != o.want {
			return fmt.Errorf("B's subscriptions: %+v, want one connected %s", subs, o.want)
		}
		return nil
	})
	// Deliveries keep flowing on whatever path the connection now takes.
	publish(o.publications+1, o.publications+3)
	waitAll(o.publications + 3)

	if o.outage {
		natOutage(t, lab, a, b, aID, o.publications+3, publish, waitAll)
	}

	if o.restart {
		last := o.publications + 3
		for _, victim := range []struct {
			i  *instance
			ns string
		}{{b, lab.ns("b")}, {a, lab.ns("a")}} {
			// A restarted instance reconnects through the relay before it
			// is ready to hole-punch (it has not yet learnt its public
			// address); that connection must not stay relayed.
			if victim.i == b {
				// Killed after its receiver ran but before it recorded
				// that, B would rightly run that publication again
				// (at-least-once across a crash): the kill waits until
				// B's progress has the last one.
				checkFor(t, natTimeout, func() error {
					var subs []struct {
						LastSeq uint64 `json:"last_seq"`
					}
					b.decodeJSON(b.mustRun("subscriptions", "list", "--json"), &subs)
					if len(subs) != 1 || subs[0].LastSeq != uint64(last) {
						return fmt.Errorf("B's subscriptions: %+v, want last_seq %d before killing B", subs, last)
					}
					return nil
				})
			}
			killAndWait(t, victim.i.pid)
			victim.i.startIn(victim.ns)
			publish(last+1, last+3)
			last += 3
			waitAll(last)
			// Hole punching takes a second or two once both sides are
			// ready; the relay's duration limit (1h) would end a relayed
			// connection only much later. libp2p's own attempt, made when
			// the relayed connection is, fails now and then when the
			// restarted side is not ready yet; Coattail's retry comes
			// punchRetryFirst (30 s) after it, found within a 5 s scan.
			checkFor(t, 60*time.Second, func() error {
				p = b.natPeer(aID)
				if !p.Connected || p.Connection != o.want {
					return fmt.Errorf("after restarting %s, B's connection to A is %q (connected %v, via %v), want %q", victim.i.name, p.Connection, p.Connected, p.RemoteAddrs, o.want)
				}
				return nil
			})
			t.Logf("%s NAT, %s restarted: B reaches A %s, via %v", o.kind, victim.i.name, p.Connection, p.RemoteAddrs)
		}
	}

	if o.mappingLost {
		last := o.publications + 3
		flush := exec.Command("ip", "netns", "exec", lab.ns("ra"), "conntrack", "-F")
		if out, err := flush.CombinedOutput(); err != nil {
			t.Fatalf("conntrack -F in router A: %v\n%s", err, out)
		}
		start := time.Now()
		publish(last+1, last+3)
		waitAllWithin(last+3, mappingLostWithin)
		t.Logf("%s NAT: delivering again %v after router A forgot its mappings", o.kind, time.Since(start).Round(time.Millisecond))
	}

	// AutoNAT's verdict is in status. Its timing is libp2p's (a 15s boot
	// delay, then a 90s retry whenever a probe is inconclusive, as one
	// through a relayed peer is), too slow to wait for here; but an
	// instance behind NAT must never be reported public.
	for _, i := range []*instance{a, b} {
		s, err := i.natStatus()
		if err != nil {
			t.Fatal(err)
		}
		if s.Reachability != "unknown" && s.Reachability != "private" {
			t.Errorf("%s behind NAT: service status reachability %q, want unknown or private", i.name, s.Reachability)
		}
	}
}

// TestNATCone: behind two port-preserving NATs, B reaches A through the
// relay first and hole punching upgrades the connection to direct.
func TestNATCone(t *testing.T) {
	t.Parallel()
	natFlow(t, natOptions{kind: "cone", publications: 5, want: "direct", restart: true})
}

// TestNATConeOutage: after router A's uplink was down, the routers' stale
// state (modelled here by dropping direct packets between them for a
// while) makes libp2p's hole punch on the new relayed connection fail.
// libp2p never tries again on that connection, which stayed relayed up to
// the relay's duration limit (1h); Coattail tries again, so the
// pair is direct again soon after direct packets pass, and the
// subscription moves to it without losing or repeating a publication.
func TestNATConeOutage(t *testing.T) {
	t.Parallel()
	if !haveSS(t) {
		return
	}
	natFlow(t, natOptions{kind: "cone", labTag: "o", publications: 3, want: "direct", outage: true})
}

// outageDirectWithin bounds how long after hole punching can work again
// the pair must be direct: Coattail's first retry comes 30 s after the
// pair is seen reached only through the relay (a scan every 5 s), and the
// relay's limit would have kept it relayed for an hour.
const outageDirectWithin = 45 * time.Second

// natOutage is TestNATConeOutage's fault and recovery (natOptions.outage).
// last is the last publication published so far.
func natOutage(t *testing.T, lab *natLab, a, b *instance, aID string, last int, publish func(from, to int), waitAll func(to int)) {
	wan := map[string]string{"ra": "192.0.0.194", "rb": "192.0.0.195"}
	other := map[string]string{"ra": wan["rb"], "rb": wan["ra"]}
	inNS := func(node string, args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"netns", "exec", lab.ns(node)}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("%s in %s: %v\n%s", strings.Join(args, " "), node, err, out)
		}
	}
	// stale drops (op -I) or lets through again (-D) every packet between
	// the two routers' public addresses, both ways, on both routers:
	// what a router that still holds the state of the connections it
	// carried before an outage does to a new hole punch on the same
	// ports, made sure. The relay's traffic is not touched. Dropped in
	// FORWARD, no packet leaves conntrack state behind.
	stale := func(op string) {
		for r, o := range other {
			inNS(r, "iptables", op, "FORWARD", "-s", o, "-j", "DROP")
			inNS(r, "iptables", op, "FORWARD", "-d", o, "-j", "DROP")
		}
	}
	punchFailures := func() int {
		n := 0
		for _, i := range []*instance{a, b} {
			log, _ := os.ReadFile(i.path("service.log"))
			n += strings.Count(string(log), "all retries for hole punch")
		}
		return n
	}
	failedBefore := punchFailures()
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, i := range []*instance{a, b} {
			log, _ := os.ReadFile(i.path("service.log"))
			lines := strings.Split(strings.TrimSpace(string(log)), "\n")
			t.Logf("== %s's service.log, last lines:\n%s", i.name, strings.Join(lines[max(0, len(lines)-60):], "\n"))
		}
	})

	stale("-I")
	t.Cleanup(func() {
		for r, o := range other {
			for _, d := range []string{"-s", "-d"} {
				_ = exec.Command("ip", "netns", "exec", lab.ns(r), "iptables", "-D", "FORWARD", d, o, "-j", "DROP").Run()
			}
		}
	})
	inNS("ra", "ip", "link", "set", "wan", "down")
	// Every connection through router A is lost with its uplink: A's to
	// the relay (and the circuits in it) and the direct one to B. Their
	// ends would learn that from keep-alive in about 40 s; the test
	// aborts them at once, on A, on the relay and on B (the resets go
	// nowhere).
	inNS("a", "ss", "-K", "-t", "dst", "192.0.0.192/26")
	inNS("pub", "ss", "-K", "-t", "dst", wan["ra"])
	inNS("b", "ss", "-K", "-t", "dst", wan["ra"])
	time.Sleep(2 * time.Second)
	inNS("ra", "ip", "link", "set", "wan", "up")

	// The subscription comes back through the relay, and libp2p's hole
	// punch on that connection fails.
	publish(last+1, last+3)
	last += 3
	waitAll(last)
	checkFor(t, natTimeout, func() error {
		if p := b.natPeer(aID); !p.Connected || p.Connection != "relayed" {
			return fmt.Errorf("during the outage's aftermath, B's connection to A is %q (connected %v, via %v), want relayed", p.Connection, p.Connected, p.RemoteAddrs)
		}
		if n := punchFailures(); n <= failedBefore {
			return fmt.Errorf("libp2p's hole punch on the relayed connection has not failed yet (%d failures logged)", n)
		}
		return nil
	})
	stale("-D")
	start := time.Now()
	// Deliveries go on, relayed, then on the direct connection.
	publish(last+1, last+3)
	last += 3
	var p natPeer
	checkFor(t, outageDirectWithin, func() error {
		p = b.natPeer(aID)
		if !p.Connected || p.Connection != "direct" {
			return fmt.Errorf("%v after hole punching can work again, B's connection to A is %q (connected %v, via %v), want direct", time.Since(start).Round(time.Second), p.Connection, p.Connected, p.RemoteAddrs)
		}
		return nil
	})
	t.Logf("cone NAT after an outage: direct again %v after hole punching could work, via %v", time.Since(start).Round(time.Millisecond), p.RemoteAddrs)
	checkFor(t, natTimeout, func() error {
		var subs []struct {
			Connected bool   `json:"connected"`
			Path      string `json:"path"`
		}
		b.decodeJSON(b.mustRun("subscriptions", "list", "--json"), &subs)
		if len(subs) != 1 || !subs[0].Connected || subs[0].Path != "direct" {
			return fmt.Errorf("B's subscriptions: %+v, want one connected direct", subs)
		}
		return nil
	})
	publish(last+1, last+3)
	last += 3
	// Every publication once (received fails on a duplicate), none lost.
	waitAll(last)
	got, err := received(t, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != last {
		t.Fatalf("B's receiver has %d publications, want %d", len(got), last)
	}
}

// haveSS reports whether ss (iproute2; to abort connections) is
// installed, skipping the test (failing it under
// COATTAIL_REQUIRE_NAT_TESTS) when not.
func haveSS(t *testing.T) bool {
	if _, err := exec.LookPath("ss"); err != nil {
		if os.Getenv("COATTAIL_REQUIRE_NAT_TESTS") != "" {
			t.Fatalf("NAT lab: ss is not installed (apt-get install -y iproute2)")
		}
		t.Skip("NAT lab: ss is not installed (apt-get install -y iproute2)")
	}
	return true
}

// TestNATSymmetric: behind two NATs that randomise ports, hole punching
// cannot work and everything goes through the relay. The relay's circuits
// are limited to 64KiB each way and A publishes 40 publications of 4KiB,
// so the circuit carrying the subscription is reset several times: every
// publication must still arrive exactly once, because the subscriber
// reconnects and resumes from its last ack.
func TestNATSymmetric(t *testing.T) {
	t.Parallel()
	natFlow(t, natOptions{
		kind:         "symmetric",
		relayConfig:  map[string]string{"relay_limit_data": "64KiB", "relay_limit_duration": "10m"},
		publications: 40,
		padding:      4 << 10,
		want:         "relayed",
		mappingLost:  haveConntrack(t),
	})
}

// haveConntrack reports whether conntrack (to flush a router's NAT
// mappings) is installed; without it the check that needs it is skipped
// (failed under COATTAIL_REQUIRE_NAT_TESTS).
func haveConntrack(t *testing.T) bool {
	if _, err := exec.LookPath("conntrack"); err != nil {
		if os.Getenv("COATTAIL_REQUIRE_NAT_TESTS") != "" {
			t.Fatalf("NAT lab: conntrack is not installed (apt-get install -y conntrack)")
		}
		t.Logf("NAT lab: conntrack is not installed (apt-get install -y conntrack); the lost-mapping check is skipped")
		return false
	}
	return true
}

// TestRelayLimitsConfig needs no lab: the relay_* keys are documented in a
// new instance's config.yml and bad values stop the service from starting
// with a message that names the key.
func TestRelayLimitsConfig(t *testing.T) {
	i := newInstance(t, "relaycfg")
	cfg, err := os.ReadFile(i.path("config.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"relay_limit_duration: 1h0m0s", "relay_limit_data: 64MiB", "relay_max_reservations: 128", "relay_max_circuits: 16"} {
		if !strings.Contains(string(cfg), want) {
			t.Errorf("config.yml lacks %q", want)
		}
	}
	i.setConfig("relay_limit_data", "1KiB")
	i.setConfig("relay_max_circuits", "0")
	i.mustFail([]string{"service", "start", "--headless", "--relay"},
		"network.relay_limit_data", "network.relay_max_circuits")
	// Zero means no limit, and is accepted.
	i.setConfig("relay_limit_data", "0")
	i.setConfig("relay_limit_duration", "0s")
	i.setConfig("relay_max_circuits", "4")
	i.setConfig("relay_service", "true")
	i.start()
}
