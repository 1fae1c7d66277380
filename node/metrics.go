package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Prometheus metrics. Everything is read when scraped, from the same state
// `service status` and `subscribers list` report: nothing is added to the
// publish or delivery path.

// metricsScrapeTimeout bounds the datastore reads of one scrape (the
// subscriptions this instance holds).
const metricsScrapeTimeout = 5 * time.Second

// MetricsCollector returns a Prometheus collector of the node's metrics
// (all named coattail_*): the counters of `service status`, and one series
// per subscription held here (queue depth, delivered, redelivered,
// dropped, corrupt, connected) and per subscription this instance holds at
// publishers (connected, last processed sequence). An embedding program
// registers it with its own registry; the service serves it, with
// libp2p's and Go's metrics, at metrics.listen.
func (n *Node) MetricsCollector() prometheus.Collector { return &metricsCollector{n: n} }

var (
	mInfo = prometheus.NewDesc("coattail_info", "The instance: its peer id and Coattail version (always 1).",
		[]string{"peer_id", "version"}, nil)
	mStart = prometheus.NewDesc("coattail_start_time_seconds", "When the node started, in seconds since the Unix epoch.", nil, nil)

	mPerformed   = prometheus.NewDesc("coattail_performed_total", "Actions performed here (for local and remote callers) since the node started.", nil, nil)
	mPublished   = prometheus.NewDesc("coattail_published_total", "Publications accepted here since the node started (one per publication, whatever its fan-out).", nil, nil)
	mDelivered   = prometheus.NewDesc("coattail_delivered_total", "Deliveries subscribers acknowledged since the node started (subscriptions removed since included).", nil, nil)
	mRedelivered = prometheus.NewDesc("coattail_redelivered_total", "Deliveries sent again (after a reconnect) since the node started.", nil, nil)
	mDropped     = prometheus.NewDesc("coattail_dropped_total", "Queued publications dropped by queue_full: drop_oldest since the node started.", nil, nil)
	mCorrupt     = prometheus.NewDesc("coattail_corrupt_total", "Queued publications lost to damaged storage since the node started.", nil, nil)
	mReceived    = prometheus.NewDesc("coattail_received_total", "Publications received from publishers and handled (the receiver ran, or the publication was parked) since the node started.", nil, nil)
	mDuplicates  = prometheus.NewDesc("coattail_duplicates_total", "Publications received again and skipped (already processed) since the node started.", nil, nil)
	mDeadLetters = prometheus.NewDesc("coattail_dead_letters_total", "Publications parked as dead letters since the node started.", nil, nil)
	mStorageBad  = prometheus.NewDesc("coattail_storage_corruption_total", "Times the datastore met damaged data on disk (a read or a background compaction failing a checksum) since the node started.", nil, nil)

	mPeers    = prometheus.NewDesc("coattail_connected_peers", "Peers with an open connection.", nil, nil)
	mRelays   = prometheus.NewDesc("coattail_relay_reservations", "Relay addresses this instance holds (reservations on circuit relays).", nil, nil)
	mDiskFree = prometheus.NewDesc("coattail_disk_free_bytes", "Bytes free on the disk holding the datastore.", nil, nil)
	mDiskLow  = prometheus.NewDesc("coattail_disk_low", "1 while free disk is below limits.min_free_disk (publications are refused), else 0.", nil, nil)
	mStorErr  = prometheus.NewDesc("coattail_storage_failed", "1 while the instance refuses every publication until it restarts (its datastore is damaged where the damage could not be cut out while it runs, or a write to it failed; service status says which), else 0.", nil, nil)

	subLabels       = []string{"subscription", "subscriber", "pattern"}
	mQueueDepth     = prometheus.NewDesc("coattail_queue_depth", "Publications queued for a subscription held here, not yet acknowledged.", subLabels, nil)
	mQueueDelivered = prometheus.NewDesc("coattail_queue_delivered_total", "Deliveries of a subscription held here that its subscriber acknowledged, since it was created.", subLabels, nil)
	mQueueRedeliv   = prometheus.NewDesc("coattail_queue_redelivered_total", "Deliveries of a subscription held here sent again, since it was created.", subLabels, nil)
	mQueueDropped   = prometheus.NewDesc("coattail_queue_dropped_total", "Publications of a subscription held here dropped by queue_full: drop_oldest, since it was created.", subLabels, nil)
	mQueueCorrupt   = prometheus.NewDesc("coattail_queue_corrupt_total", "Publications of a subscription held here lost to damaged storage, since it was created.", subLabels, nil)
	mQueueConnected = prometheus.NewDesc("coattail_queue_connected", "1 while the subscriber of a subscription held here has its delivery stream open, else 0.", subLabels, nil)
	mQueueLast      = prometheus.NewDesc("coattail_queue_last_delivered_time_seconds", "When a subscription held here last had a delivery acknowledged (seconds since the Unix epoch; absent before the first).", subLabels, nil)

	heldLabels    = []string{"subscription", "publisher", "pattern", "receiver"}
	mHeldConn     = prometheus.NewDesc("coattail_subscription_connected", "1 while a subscription this instance holds at a publisher has its stream open, else 0.", heldLabels, nil)
	mHeldLastSeq  = prometheus.NewDesc("coattail_subscription_last_seq", "The last sequence number this instance processed for a subscription it holds at a publisher.", heldLabels, nil)
	mScrapeErrors = prometheus.NewDesc("coattail_metrics_errors", "1 when part of this scrape could not be read (see the service log), else 0.", nil, nil)
)

type metricsCollector struct{ n *Node }

func (c *metricsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mInfo, mStart, mPerformed, mPublished, mDelivered, mRedelivered, mDropped, mCorrupt,
		mReceived, mDuplicates, mDeadLetters, mStorageBad, mStorErr, mPeers, mRelays, mDiskFree, mDiskLow,
		mQueueDepth, mQueueDelivered, mQueueRedeliv, mQueueDropped, mQueueCorrupt, mQueueConnected, mQueueLast,
		mHeldConn, mHeldLastSeq, mScrapeErrors} {
		ch <- d
	}
}

func (c *metricsCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	// One snapshot of the queues for the whole scrape (it copies and sorts
	// every queue): the node's status and the per-subscription series are
	// both read from it.
	st := n.queueSnapshot()
	s := n.status(st)
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(mInfo, 1, s.PeerID, s.Version)
	gauge(mStart, float64(s.StartedAt.UnixNano())/1e9)
	counter(mPerformed, s.Counters.Performed)
	counter(mPublished, s.Counters.Published)
	counter(mDelivered, s.Counters.Delivered)
	counter(mRedelivered, s.Counters.Redelivered)
	counter(mDropped, s.Counters.Dropped)
	counter(mCorrupt, s.Counters.Corrupt)
	counter(mReceived, s.Counters.Received)
	counter(mDuplicates, s.Counters.Duplicates)
	counter(mDeadLetters, s.Counters.DeadLetters)
	counter(mStorageBad, s.Counters.StorageCorruption)
	gauge(mStorErr, b2f(s.StorageError != ""))
	gauge(mPeers, float64(s.Peers))
	gauge(mRelays, float64(len(s.Relays)))
	if s.DiskFree > 0 {
		gauge(mDiskFree, float64(s.DiskFree))
		gauge(mDiskLow, b2f(s.DiskLow))
	}
	for _, q := range n.subscribers(st) {
		l := []string{q.ID, q.Subscriber, q.Pattern}
		gauge(mQueueDepth, float64(q.Depth), l...)
		counter(mQueueDelivered, q.Delivered, l...)
		counter(mQueueRedeliv, q.Redelivered, l...)
		counter(mQueueDropped, q.Dropped, l...)
		counter(mQueueCorrupt, q.Corrupt, l...)
		gauge(mQueueConnected, b2f(q.Connected), l...)
		if q.LastDelivered != nil {
			gauge(mQueueLast, float64(q.LastDelivered.UnixNano())/1e9, l...)
		}
	}
	failed := false
	ctx, cancel := context.WithTimeout(context.Background(), metricsScrapeTimeout)
	defer cancel()
	held, err := n.Subscriptions(ctx)
	if err != nil {
		failed = true
		n.log.Warn("metrics: listing the subscriptions this instance holds failed", "err", err)
	}
	for _, h := range held {
		l := []string{h.ID, h.Publisher, h.Pattern, h.Receiver}
		gauge(mHeldConn, b2f(h.Connected), l...)
		gauge(mHeldLastSeq, float64(h.LastSeq), l...)
	}
	gauge(mScrapeErrors, b2f(failed))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// metricsServer serves /metrics for a service: the node's collector and
// the process-wide default registry, where libp2p registers its own
// metrics (swarm, identify, hole punching, relay, …) and client_golang the
// Go runtime's and the process's.
type metricsServer struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
}

// serveMetrics listens on addr (host:port; port 0 picks one), sets
// n.metricsURL, and serves the metrics until close. A listen error is
// returned: a service asked for metrics does not start without them, as a
// port in use would otherwise go unnoticed until someone looks at a
// dashboard.
func serveMetrics(addr string, n *Node, log *slog.Logger) (*metricsServer, error) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(n.MetricsCollector()); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w: metrics.listen %s: %w", ErrConfig, addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(prometheus.Gatherers{reg, prometheus.DefaultGatherer}, promhttp.HandlerOpts{
		ErrorHandling:       promhttp.ContinueOnError,
		ErrorLog:            slogPromLogger{log},
		MaxRequestsInFlight: 4,
		Timeout:             2 * metricsScrapeTimeout,
	}))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "Coattail metrics: /metrics (Prometheus text format)")
	})
	var h http.Handler = mux
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && tcp.IP.IsLoopback() {
		h = loopbackHostOnly(mux)
	}
	m := &metricsServer{
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      3 * metricsScrapeTimeout,
			IdleTimeout:       time.Minute,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		},
		ln:   ln,
		done: make(chan struct{}),
	}
	// Before it serves: a scrape reads it (Status), and must not race
	// this write.
	n.metricsURL = m.URL()
	go func() {
		defer close(m.done)
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server failed", "addr", ln.Addr().String(), "err", err)
		}
	}()
	return m, nil
}

// loopbackHostOnly refuses requests to a loopback listener that name a
// host other than an IP address or localhost. A web page a browser on
// this machine opens can reach a loopback port under a name of its own
// that resolves to 127.0.0.1 (DNS rebinding), and then read the peer ids
// and patterns the metrics show; such a request carries that name as its
// Host. Scrapers name the address itself, or localhost.
func loopbackHostOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.TrimSuffix(strings.ToLower(host), ".")
		if net.ParseIP(strings.Trim(host, "[]")) == nil && host != "localhost" && !strings.HasSuffix(host, ".localhost") {
			http.Error(w, "Coattail metrics on a loopback address answer only requests naming an IP address or localhost as their host (this one named "+strconv.Quote(r.Host)+"): scrape 127.0.0.1:<port> or localhost:<port>", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// URL is where the metrics are served.
func (m *metricsServer) URL() string { return "http://" + m.ln.Addr().String() + "/metrics" }

// close stops the server: a scrape in progress gets a second to finish.
func (m *metricsServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if m.srv.Shutdown(ctx) != nil {
		_ = m.srv.Close()
	}
	<-m.done
}

// slogPromLogger is promhttp's error log.
type slogPromLogger struct{ log *slog.Logger }

func (l slogPromLogger) Println(v ...any) { l.log.Warn("metrics: " + fmt.Sprint(v...)) }
