// Package node owns a running Coattail instance: the instance directory
// layout and config, the libp2p host and its /coattail/* protocols, the
// local control API served to the CLI, the action runner, and the service
// lifecycle (start, stop, status across the machine). A Go program embeds an
// instance with New, registers in-process actions and receivers, and calls
// Start and Close (and ServeControl to let the CLI reach it).
//
// # Errors
//
// The errors of the embedding API wrap sentinels to match with errors.Is:
// ErrBadRequest (a request that can never succeed: data that is not JSON
// or over limits.max_payload, a nil handler), ErrUnknownPeer (no such
// peer added), ErrPeer (the peer failed or broke the protocol), ErrOffline,
// ErrClosed (after Close), ErrHopLimit (a cascade past limits.max_hops),
// topics.ErrInvalidSubject and topics.ErrInvalidPattern, and the runner's
// for what an action did (runner.ErrNotFound, runner.ErrBadInput,
// runner.ErrInputTooLarge, runner.ErrTimeout, runner.ErrExit; an
// in-process handler's own error is wrapped too). A peer's refusal is a
// *wire.Error, whose Code says why (forbidden, unauthorized, too_large,
// …). Messages are written for people and may name CLI commands.
//
// Lock order: Node.mu is never held while calling into auth, datastore,
// topics or the network.
package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coattail/coattail/auth"
	"github.com/coattail/coattail/datastore"
	"github.com/coattail/coattail/node/runner"
	"github.com/coattail/coattail/topics"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
)

// ErrClosed is returned by a node's methods after Close (it is
// datastore.ErrClosed, which the datastore's operations return).
var ErrClosed = datastore.ErrClosed

// isClosed reports whether Close was called.
func (n *Node) isClosed() bool { return n.shut.Load() }

// ErrOffline is returned for operations that need the network when the
// node runs without a libp2p host (the CLI with the service stopped).
var ErrOffline = errors.New("node: the service is not running (start it with: coattail service start --headless)")

// Handler is an in-process action or receiver: input JSON in, output JSON out.
type Handler func(ctx context.Context, input json.RawMessage) (json.RawMessage, error)

// Options configures a Node.
type Options struct {
	// Dir is the instance directory (actions/, receivers/, data/ ...).
	Dir    string
	Config Config
	// Key is the identity key; loaded from Dir/keys/identity.key when nil.
	Key crypto.PrivKey
	// DB is the datastore; opened from Dir/data when nil (Close closes it).
	DB     *datastore.DB
	Logger *slog.Logger
	// Offline skips the libp2p host: local commands only.
	Offline bool
	// Relay makes the host a circuit-relay v2 server (also config
	// network.relay_service).
	Relay bool
	// Binary is the coattail executable handed to actions (COATTAIL_BIN).
	Binary string
}

// Node is one Coattail instance.
type Node struct {
	opts       Options
	layout     Layout
	cfg        Config
	key        crypto.PrivKey
	id         peer.ID
	log        *slog.Logger
	db         *datastore.DB
	ownDB      bool
	auth       *auth.Authority
	runner     *runner.Runner
	peers      *datastore.Store[peerRecord]
	queues     *topics.Queues
	subscriber *subscriberSide
	inProc     sync.Map // receiver name -> Handler: in-process receivers, called inline
	peerCache  sync.Map // peer id -> peerRecord: the hot path of every remote call
	// peerMu orders filling peerCache from the datastore against changing
	// a record (AddPeer, RemovePeer), so the cache never keeps a record
	// read before the change. Cache hits do not take it.
	peerMu  sync.Mutex
	host    host.Host
	net     *netsvc // nil when offline
	started time.Time
	stats   counters
	// metricsURL is where RunService serves the Prometheus metrics
	// (metrics.listen); "" when it does not. Set before the metrics
	// endpoint and the control socket serve, never changed after.
	metricsURL string
	// space refuses writes that grow the datastore while its disk is
	// nearly full (limits.min_free_disk; nil when off).
	space *spaceGuard
	// noisy samples the log lines peers can cause at will.
	noisy *logSampler
	// hops records the receiver runs whose cascade the hop limit refused.
	hops *hopRefusals

	mu       sync.Mutex
	closed   bool
	closeFns []func() error
	shut     atomic.Bool // closed, read without mu (the publish path)
}

type counters struct {
	performed, published, received, duplicates, deadLetters atomic.Uint64
	// deadBytes is what the dead letters deleted since start held (a
	// hint for the idle reclaimer: their space comes back only when the
	// datastore compacts them away).
	deadBytes atomic.Uint64
}

// New assembles a node; nothing listens until Start.
func New(o Options) (*Node, error) {
	if o.Dir == "" {
		return nil, errors.New("node: Options.Dir is required")
	}
	if err := o.Config.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	n := &Node{opts: o, layout: Layout{Dir: o.Dir}, cfg: o.Config, log: o.Logger, key: o.Key}
	if n.key == nil {
		k, err := LoadKey(n.layout.IdentityKey())
		if err != nil {
			return nil, err
		}
		n.key = k
	}
	id, err := peer.IDFromPrivateKey(n.key)
	if err != nil {
		return nil, fmt.Errorf("node: peer id: %w", err)
	}
	n.id = id
	n.db = o.DB
	if n.db == nil {
		db, err := datastore.Open(n.layout.Data(), datastore.WithOwner(holderEmbedded, filepath.Base(os.Args[0])))
		if err != nil {
			return nil, err
		}
		n.db, n.ownDB = db, true
	}
	if err := checkDataIdentity(context.Background(), n.db.Batching(), n.layout, id); err != nil {
		n.closeDB()
		return nil, err
	}
	n.auth, err = auth.NewAuthority(n.key, n.db.Batching())
	if err != nil {
		n.closeDB()
		return nil, err
	}
	n.peers = datastore.NewStore[peerRecord](n.db.Batching(), "/peers")
	var spaceCheck func(int) error // nil: no check
	if reserve := o.Config.Limits.MinFreeDisk; reserve > 0 && n.db.Dir() != "" {
		db, log := n.db, o.Logger
		g := &spaceGuard{free: db.FreeSpace, pending: db.Unflushed, reserve: uint64(reserve), what: db.Dir(), log: log}
		g.reclaim = func(compact bool) {
			if err := n.reclaimDisk(context.Background(), compact); err != nil && !errors.Is(err, datastore.ErrClosed) {
				log.Warn("reclaiming disk space failed", "err", err)
			}
		}
		spaceCheck = g.check
		n.space = g
	}
	n.queues, err = topics.OpenQueues(context.Background(), n.db.Batching(), topics.QueueOptions{
		SpaceCheck:     spaceCheck,
		Bound:          o.Config.Limits.QueueBound,
		Policy:         o.Config.Limits.QueueFull,
		MemoryPerQueue: int(o.Config.Limits.QueueMemory),
		MemoryTotal:    int(o.Config.Limits.QueueMemoryTotal),
		Logger:         o.Logger,
	})
	if err != nil {
		n.closeDB()
		return nil, err
	}
	n.subscriber = newSubscriberSide(n)
	n.noisy = newLogSampler()
	n.hops = newHopRefusals(o.Config.Limits.ActionTimeout)
	// Offline too (a CLI revoking with no service running): a revoked
	// token's subscriptions go with it.
	n.auth.OnRevoke(n.onTokenRevoked)
	bin := o.Binary
	if bin == "" {
		bin, _ = os.Executable()
	}
	// Absolute: a relative COATTAIL_RUNTIME_DIR is from this process's
	// working directory, where the service registers; programs run in
	// the instance directory.
	rt := RuntimeDir()
	if abs, err := filepath.Abs(rt); err == nil {
		rt = abs
	}
	n.runner = runner.New(runner.Config{
		Dir:        o.Dir,
		PeerID:     id.String(),
		Socket:     n.layout.Socket(),
		Binary:     bin,
		RuntimeDir: rt,
		Timeout:    o.Config.Limits.ActionTimeout,
		MaxInput:   int(o.Config.Limits.MaxPayload),
		MaxOutput:  int(o.Config.Limits.MaxOutput),
		MaxRunning: o.Config.Limits.MaxRunning,
		Logger:     o.Logger,
	})
	return n, nil
}

// ID is the instance's peer id.
func (n *Node) ID() peer.ID { return n.id }

// Host is the libp2p host (nil before Start or when offline).
func (n *Node) Host() host.Host { return n.host }

// Authority is the instance's token issuer and verifier.
func (n *Node) Authority() *auth.Authority { return n.auth }

// Dir is the instance directory.
func (n *Node) Dir() string { return n.layout.Dir }

// RegisterAction registers an in-process action; it takes precedence over
// an executable of the same name.
func (n *Node) RegisterAction(name string, h Handler) error {
	if h == nil {
		return fmt.Errorf("%w: action %q: the handler is nil", ErrBadRequest, name)
	}
	return n.runner.Register(runner.KindAction, name, adapt(h))
}

// RegisterReceiver registers an in-process receiver. It is called inline
// on its subscription's goroutine, one publication at a time, and must
// honour ctx: ctx is cancelled when a call runs longer than
// limits.action_timeout, and a call that then returns an error fails as a
// timeout (retried, then parked in the dead letters); one that returns nil
// all the same has handled its publication. Its input and its Invocation's Subject
// are its own copies (a retry gets a new copy): it may keep them after it
// returns. Register receivers before Start: the subscriptions held with
// them resume when Start returns, and until a receiver exists its
// subscriptions' publications wait at the publisher.
func (n *Node) RegisterReceiver(name string, h Handler) error {
	if h == nil {
		return fmt.Errorf("%w: receiver %q: the handler is nil", ErrBadRequest, name)
	}
	if err := n.runner.Register(runner.KindReceiver, name, adapt(h)); err != nil {
		return err
	}
	n.inProc.Store(name, h)
	return nil
}

func (n *Node) inProcessReceiver(name string) (Handler, bool) {
	h, ok := n.inProc.Load(name)
	if !ok {
		return nil, false
	}
	return h.(Handler), true
}

func adapt(h Handler) runner.Handler {
	return func(ctx context.Context, inv runner.Invocation) (json.RawMessage, error) {
		i := &Invocation{Kind: string(inv.Kind), Name: inv.Name, Caller: inv.Caller, Env: inv.Env, log: inv.Log,
			Publisher: inv.Env["COATTAIL_PUBLISHER"], Subject: inv.Env["COATTAIL_SUBJECT"], Subscription: inv.Env["COATTAIL_SUBSCRIPTION"]}
		i.Sequence, _ = strconv.ParseUint(inv.Env["COATTAIL_SEQUENCE"], 10, 64)
		hop, _ := strconv.ParseUint(inv.Env["COATTAIL_HOP"], 10, 32)
		i.Hop = uint32(hop)
		return h(context.WithValue(ctx, invocationKey{}, i), inv.Input)
	}
}

type invocationKey struct{}

// Invocation describes the call an in-process handler is serving: who asked
// and, for receivers, the COATTAIL_* details of the publication.
type Invocation struct {
	Kind   string            // "action" or "receiver"
	Name   string            // the action or receiver subject
	Caller string            // peer id, or "local"
	Env    map[string]string // extra COATTAIL_* variables, when run through the runner
	// Receivers: the publication being handled.
	Publisher    string
	Subject      string
	Sequence     uint64
	Subscription string
	Hop          uint32
	log          func(string)
	// receiverLog, when log is nil, writes the line to this node's log
	// with the publication's fields: a receiver called inline costs no
	// closure per publication.
	receiverLog *Node
}

// InvocationFrom returns the invocation an in-process handler serves (nil
// outside a handler).
func InvocationFrom(ctx context.Context) *Invocation {
	inv, _ := ctx.Value(invocationKey{}).(*Invocation)
	return inv
}

// cascadeHop is the hop of a perform or publication made with ctx: made
// by an in-process receiver, it continues the cascade of the publication
// being handled, one hop further (as the CLI does from COATTAIL_HOP for an
// executable receiver), so that limits.max_hops also stops loops between
// Go receivers. A larger hop given explicitly stands.
func cascadeHop(ctx context.Context, hop int) int {
	if inv := InvocationFrom(ctx); inv != nil && inv.Kind == string(runner.KindReceiver) {
		return max(hop, int(inv.Hop)+1)
	}
	return hop
}

// Log sends one log line of an in-process handler to whoever performed it
// (the CLI, or a remote caller), like a stderr line of an executable.
func Log(ctx context.Context, line string) {
	inv := InvocationFrom(ctx)
	switch {
	case inv == nil:
	case inv.log != nil:
		inv.log(line)
	case inv.receiverLog != nil:
		inv.receiverLog.logReceiverLine(inv.Name, inv.Subscription, inv.Sequence, line)
	}
}

// logReceiverLine logs one line a receiver wrote (stderr, or node.Log).
func (n *Node) logReceiverLine(receiver, subscription string, seq uint64, line string) {
	n.log.Info("receiver log", "receiver", receiver, "subscription", subscription, "seq", seq, "line", line)
}

// Start brings up the libp2p host and protocols (unless offline), and
// resumes the subscriptions this instance holds. The node runs until
// Close: cancelling ctx does not stop it. A node starts once.
func (n *Node) Start(ctx context.Context) error {
	switch {
	case n.isClosed():
		return ErrClosed
	case n.net != nil:
		return errors.New("node: already started")
	}
	n.started = time.Now()
	if n.opts.Offline {
		return nil
	}
	nw, err := startNetwork(ctx, n)
	if err != nil {
		return err
	}
	n.net = nw
	n.host = nw.host
	n.onClose(nw.close)
	n.onClose(n.subscriber.close)
	n.startIdleReclaim()
	return n.subscriber.startAll()
}

func (n *Node) onClose(fn func() error) {
	n.mu.Lock()
	n.closeFns = append(n.closeFns, fn)
	n.mu.Unlock()
}

// Close stops the network and closes the datastore. It is idempotent.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.shut.Store(true)
	fns := n.closeFns
	n.mu.Unlock()
	var errs []error
	for i := len(fns) - 1; i >= 0; i-- {
		errs = append(errs, fns[i]())
	}
	// In-process handlers whose runs were cancelled or timed out may still
	// be running (they ignore their context); they may use this node.
	if !n.runner.WaitHandlers(handlersDrain) {
		n.log.Error("in-process handlers still running after their runs ended; closing the datastore anyway", "waited", handlersDrain)
	}
	errs = append(errs, n.queues.Close(), n.closeDB())
	return errors.Join(errs...)
}

func (n *Node) closeDB() error {
	if n.ownDB && n.db != nil {
		return n.db.Close()
	}
	return nil
}
