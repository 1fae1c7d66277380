package main

// The NATS side: an embedded nats-server on 127.0.0.1 and nats.go clients
// connected to it over TCP.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const (
	natsServerVersion = server.VERSION
	natsClientVersion = nats.Version

	// subject is where every message is published: the subject perf's
	// publisher uses; the stream takes streamSubjects.
	subject        = "bench.delivery"
	streamSubjects = "bench.>"
	streamName     = "BENCH"
	consumerName   = "natsbench"
	// pullBatch is what `nats bench js consume` uses by default: the
	// consumer's MaxAckPending and the messages Consume keeps buffered.
	pullBatch = 500
	// startWait bounds starting and stopping a server.
	startWait = 30 * time.Second
)

// startServer starts a nats-server on 127.0.0.1 at a random port with no
// listener but the client one (cluster, leaf node, gateway, websocket,
// MQTT and monitoring ports are left 0: off) and no logging or signal
// handling. With storeDir it runs JetStream there, with sync always if
// asked (else the default sync_interval, 2 minutes).
func startServer(storeDir string, syncAlways bool) (*server.Server, error) {
	opts := &server.Options{
		ServerName: "natsbench",
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		NoLog:      true,
		NoSigs:     true,
	}
	if storeDir != "" {
		opts.JetStream = true
		opts.StoreDir = storeDir
		opts.SyncAlways = syncAlways
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats-server: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(startWait) {
		return nil, errors.Join(fmt.Errorf("nats-server: not ready for connections after %v", startWait), stopServer(srv))
	}
	if storeDir != "" && !srv.JetStreamEnabled() {
		return nil, errors.Join(errors.New("nats-server: JetStream did not start"), stopServer(srv))
	}
	return srv, nil
}

// stopServer shuts srv down, waiting at most startWait.
func stopServer(srv *server.Server) error {
	done := make(chan struct{})
	go func() {
		srv.Shutdown()
		srv.WaitForShutdown()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-time.After(startWait):
		return fmt.Errorf("nats-server: not shut down after %v", startWait)
	}
}

// failures collects the asynchronous errors of a measurement (client
// connections, publish acks, the consumer); failed is closed at the first.
type failures struct {
	mu     sync.Mutex
	errs   []error
	failed chan struct{}
}

func newFailures() *failures { return &failures{failed: make(chan struct{})} }

func (f *failures) add(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.errs) == 0 {
		close(f.failed)
	}
	if len(f.errs) < 10 {
		f.errs = append(f.errs, err)
	}
}

func (f *failures) err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return errors.Join(f.errs...)
}

// connect opens a client connection to srv that never reconnects: a
// connection the server closes (a slow consumer) fails the measurement.
func connect(srv *server.Server, name string, f *failures) (*nats.Conn, error) {
	nc, err := nats.Connect(srv.ClientURL(), nats.Name(name), nats.NoReconnect(), nats.Timeout(5*time.Second),
		nats.NoCallbacksAfterClientClose(),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			f.add(fmt.Errorf("%s: %w", name, err))
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				f.add(fmt.Errorf("%s disconnected: %w", name, err))
			}
		}))
	if err != nil {
		return nil, fmt.Errorf("%s: connect: %w", name, err)
	}
	return nc, nil
}

// rig is an embedded server (startServer) and two connections to it: the
// receiving side's and the publisher's, sharing one failures.
type rig struct {
	srv      *server.Server
	sub, pub *nats.Conn
	fails    *failures
}

// openRig starts a server (storeDir and syncAlways as startServer takes
// them) and connects the receiving side, named subName, and the publisher.
func openRig(storeDir string, syncAlways bool, subName string) (*rig, error) {
	srv, err := startServer(storeDir, syncAlways)
	if err != nil {
		return nil, err
	}
	r := &rig{srv: srv, fails: newFailures()}
	if r.sub, err = connect(srv, subName, r.fails); err != nil {
		return nil, errors.Join(err, stopServer(srv))
	}
	if r.pub, err = connect(srv, "natsbench-publisher", r.fails); err != nil {
		r.sub.Close()
		return nil, errors.Join(err, stopServer(srv))
	}
	return r, nil
}

// close closes both connections, then stops the server.
func (r *rig) close() error {
	r.pub.Close()
	r.sub.Close()
	return stopServer(r.srv)
}

// natsCore publishes n messages of size bytes from one goroutine on one
// connection to a subscriber on another and measures from the first
// publish until the subscriber has received the last. Nothing is stored:
// a subscriber that falls too far behind is cut off by the server (a slow
// consumer), which fails the measurement, as does any message lost or
// altered.
func natsCore(ctx context.Context, size, n int) (m Measure, err error) {
	m.Messages = n
	rg, err := openRig("", false, "natsbench-subscriber")
	if err != nil {
		return m, err
	}
	defer func() { err = errors.Join(err, rg.close()) }()
	srv, fails, subc, pubc := rg.srv, rg.fails, rg.sub, rg.pub

	data := payload(size)
	var got, wrong atomic.Int64
	done := make(chan struct{})
	var end time.Time // written before done is closed
	sub, err := subc.Subscribe(subject, func(msg *nats.Msg) {
		if !bytes.Equal(msg.Data, data) {
			wrong.Add(1)
		}
		if got.Add(1) == int64(n) {
			end = time.Now()
			close(done)
		}
	})
	if err != nil {
		return m, fmt.Errorf("subscribe: %w", err)
	}
	// No client-side limit: the subscriber queues what it has not handled
	// yet instead of dropping it.
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		return m, fmt.Errorf("subscribe: %w", err)
	}
	if err := subc.FlushWithContext(ctx); err != nil { // the server has the subscription
		return m, fmt.Errorf("subscribe: %w", err)
	}

	meter, err := startMeter()
	if err != nil {
		return m, err
	}
	for i := range n {
		if err := pubc.Publish(subject, data); err != nil {
			return m, fmt.Errorf("publish %d of %d: %w", i+1, n, err)
		}
	}
	if err := pubc.FlushWithContext(ctx); err != nil {
		return m, fmt.Errorf("publish: flush: %w", err)
	}
	lost := func() error {
		dropped, _ := sub.Dropped()
		return fmt.Errorf("subscriber received %d of %d messages (%d dropped by the client, %d slow consumers at the server)",
			got.Load(), n, dropped, srv.NumSlowConsumers())
	}
	select {
	case <-done:
	case <-fails.failed:
		return m, errors.Join(lost(), fails.err())
	case <-ctx.Done():
		return m, fmt.Errorf("%w: %w", lost(), ctx.Err())
	}
	if m.Seconds, m.Cores, err = meter.stop(end); err != nil {
		return m, err
	}
	m.Delivered = int(got.Load())
	dropped, _ := sub.Dropped()
	if sc := srv.NumSlowConsumers(); sc > 0 || dropped > 0 {
		return m, errors.Join(lost(), fails.err())
	}
	if w := wrong.Load(); w > 0 {
		return m, fmt.Errorf("%d of %d messages arrived altered", w, n)
	}
	return m, fails.err()
}

// jetStream publishes n messages of size bytes into a file stream from
// one goroutine, asynchronously with at most jetStreamWindow(size)
// publishes awaiting their PubAck, while a durable pull consumer on
// another connection consumes them (Consume, as `nats bench js consume`
// does: pullBatch messages buffered, MaxAckPending pullBatch, an explicit
// ack per message; the last one's ack is a double ack, confirmed by the
// server). It measures from the first publish until every PubAck has
// arrived and the last message's ack is confirmed; every message must
// arrive exactly once and in order (its stream sequence is its position),
// unaltered. The store is in a temporary directory, removed afterwards.
func jetStream(ctx context.Context, size, n int, syncAlways bool) (m Measure, err error) {
	m.Messages, m.Window = n, jetStreamWindow(size)
	dir, err := os.MkdirTemp("", "natsbench-jetstream-")
	if err != nil {
		return m, err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()
	if err := checkFree(dir, n, size); err != nil {
		return m, err
	}
	rg, err := openRig(dir, syncAlways, "natsbench-consumer")
	if err != nil {
		return m, err
	}
	defer func() { err = errors.Join(err, rg.close()) }()
	fails, subc, pubc := rg.fails, rg.sub, rg.pub

	deadline, ok := ctx.Deadline()
	if !ok {
		return m, errors.New("jetstream: no deadline")
	}
	js, err := jetstream.New(pubc,
		jetstream.WithPublishAsyncMaxPending(m.Window),
		jetstream.WithPublishAsyncTimeout(time.Until(deadline)),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) {
			fails.add(fmt.Errorf("publish: %w", err))
		}))
	if err != nil {
		return m, err
	}
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: streamName, Subjects: []string{streamSubjects}, Storage: jetstream.FileStorage})
	if err != nil {
		return m, fmt.Errorf("create stream: %w", err)
	}
	if _, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: consumerName,
		AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
		ReplayPolicy: jetstream.ReplayInstantPolicy, MaxAckPending: pullBatch}); err != nil {
		return m, fmt.Errorf("create consumer: %w", err)
	}
	jsc, err := jetstream.New(subc)
	if err != nil {
		return m, err
	}
	cons, err := jsc.Consumer(ctx, streamName, consumerName)
	if err != nil {
		return m, fmt.Errorf("consumer: %w", err)
	}

	data := payload(size)
	var got atomic.Int64
	done := make(chan struct{})
	var end time.Time // written before done is closed
	handle := func(msg jetstream.Msg) {
		md, err := msg.Metadata()
		if err != nil {
			fails.add(fmt.Errorf("consume: %w", err))
			return
		}
		i := got.Add(1)
		if md.Sequence.Stream != uint64(i) || md.NumDelivered != 1 || !bytes.Equal(msg.Data(), data) {
			fails.add(fmt.Errorf("consume: message %d of %d is stream sequence %d, delivered %d times, %d bytes (%d sent)",
				i, n, md.Sequence.Stream, md.NumDelivered, len(msg.Data()), len(data)))
			return
		}
		if i < int64(n) {
			if err := msg.Ack(); err != nil {
				fails.add(fmt.Errorf("ack: %w", err))
			}
			return
		}
		if err := msg.DoubleAck(ctx); err != nil {
			fails.add(fmt.Errorf("ack of the last message: %w", err))
			return
		}
		end = time.Now()
		close(done)
	}
	cc, err := cons.Consume(handle, jetstream.PullMaxMessages(pullBatch),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			fails.add(fmt.Errorf("consume: %w", err))
		}))
	if err != nil {
		return m, fmt.Errorf("consume: %w", err)
	}
	defer cc.Stop()

	lost := func() error {
		return fmt.Errorf("consumer received %d of %d messages, %d publishes awaiting a PubAck", got.Load(), n, js.PublishAsyncPending())
	}
	meter, err := startMeter()
	if err != nil {
		return m, err
	}
	// Publishes wait for room in the window; one that waits past the
	// deadline fails.
	stall := jetstream.WithStallWait(time.Until(deadline))
	for i := range n {
		if _, err := js.PublishAsync(subject, data, stall); err != nil {
			return m, errors.Join(fmt.Errorf("publish %d of %d: %w", i+1, n, err), fails.err())
		}
		select {
		case <-fails.failed:
			return m, errors.Join(lost(), fails.err())
		default:
		}
	}
	var published time.Time
	select {
	case <-js.PublishAsyncComplete():
		published = time.Now()
	case <-fails.failed:
		return m, errors.Join(lost(), fails.err())
	case <-ctx.Done():
		return m, fmt.Errorf("%w: %w", lost(), ctx.Err())
	}
	select {
	case <-done:
	case <-fails.failed:
		return m, errors.Join(lost(), fails.err())
	case <-ctx.Done():
		return m, fmt.Errorf("%w: %w", lost(), ctx.Err())
	}
	if published.After(end) {
		end = published
	}
	if m.Seconds, m.Cores, err = meter.stop(end); err != nil {
		return m, err
	}
	m.PublishSeconds = published.Sub(meter.wall).Seconds()
	m.Delivered = int(got.Load())
	if err := fails.err(); err != nil {
		return m, err
	}
	return m, checkStored(ctx, js, n)
}

// checkStored verifies, after a JetStream measurement, that the stream
// holds n messages and the consumer has every one acknowledged, none
// pending or redelivered (waiting briefly for the acks sent before the
// last, confirmed one to be counted).
func checkStored(ctx context.Context, js jetstream.JetStream, n int) error {
	st, err := js.Stream(ctx, streamName)
	if err != nil {
		return fmt.Errorf("stream info: %w", err)
	}
	if msgs := st.CachedInfo().State.Msgs; msgs != uint64(n) {
		return fmt.Errorf("stream holds %d messages, want %d", msgs, n)
	}
	cons, err := js.Consumer(ctx, streamName, consumerName)
	if err != nil {
		return fmt.Errorf("consumer info: %w", err)
	}
	for wait := time.Now().Add(5 * time.Second); ; {
		ci, err := cons.Info(ctx)
		if err != nil {
			return fmt.Errorf("consumer info: %w", err)
		}
		if ci.AckFloor.Stream == uint64(n) && ci.NumAckPending == 0 && ci.NumPending == 0 && ci.NumRedelivered == 0 {
			return nil
		}
		if time.Now().After(wait) || ctx.Err() != nil {
			return fmt.Errorf("consumer: ack floor %d of %d, %d acks pending, %d messages pending, %d redelivered",
				ci.AckFloor.Stream, n, ci.NumAckPending, ci.NumPending, ci.NumRedelivered)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkFree fails unless dir's file system has room for a stream of n
// messages of size bytes: the server takes at most 75 % of the free space
// for JetStream.
func checkFree(dir string, n, size int) error {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	free := int64(fs.Bavail) * int64(fs.Bsize)
	need := int64(n)*int64(size+64) + 64<<20 // a record's header and subject; the server's own files
	if free/4*3 < need {
		return fmt.Errorf("%s has %d MiB free; a stream of %d × %d B needs about %d MiB (JetStream uses at most 3/4 of the free space)",
			dir, free>>20, n, size, (need*4/3)>>20)
	}
	return nil
}
