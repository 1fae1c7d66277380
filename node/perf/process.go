package perf

// Subscriber instances in processes of their own (DeliveryOptions.Spawn):
// what separate services on one machine are, each with its own Go
// scheduler, heap and garbage collector. The bench process keeps the
// publisher and talks to each subscriber process over its stdin and stdout,
// one JSON object per line: a subConfig first, then subRequests, each
// answered by one subReply. Closing stdin stops the subscriber, also when
// the bench dies (its end of the pipe closes).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/libp2p/go-libp2p/core/peer"
)

// subConfig is the first line a subscriber process reads.
type subConfig struct {
	Dir       string `json:"dir"`
	Transport string `json:"transport"`
	Receiver  string `json:"receiver"`
	Messages  int    `json:"messages"`
	Size      int    `json:"size"`
}

// subRequest asks a subscriber process to subscribe with a token of the
// publisher ("subscribe") or to report what it processed and the CPU it
// used ("stats").
type subRequest struct {
	Cmd   string `json:"cmd"`
	Token string `json:"token,omitempty"`
}

// subReply answers the config (with the instance's peer id) and each
// request.
type subReply struct {
	Error     string `json:"error,omitempty"`
	ID        string `json:"id,omitempty"`
	Processed int64  `json:"processed"` // publications the in-process receiver counted
	CPUNanos  int64  `json:"cpu_ns"`    // CPU time (user and system) of the process
}

// ServeSubscriber runs one subscriber instance of a bench in this process,
// driven by the bench process over in and out (see the file comment). It
// returns when in is closed, having closed the instance. A program offers
// it as a hidden mode of its own binary and returns it from
// DeliveryOptions.Spawn; `coattail bench --processes` does.
func ServeSubscriber(ctx context.Context, in io.Reader, out io.Writer) error {
	dec := json.NewDecoder(bufio.NewReader(in))
	enc := json.NewEncoder(out)
	fail := func(err error) error {
		_ = enc.Encode(subReply{Error: err.Error()})
		return err
	}
	var cfg subConfig
	if err := dec.Decode(&cfg); err != nil {
		return fail(fmt.Errorf("perf: subscriber config: %w", err))
	}
	n, cnt, err := startSubscriber(ctx, cfg.Dir, DeliveryOptions{Transport: cfg.Transport, Receiver: cfg.Receiver, Messages: cfg.Messages})
	if err != nil {
		return fail(err)
	}
	defer n.Close()
	serveRaw(n, cfg.Messages, cfg.Size)
	if err := enc.Encode(subReply{ID: n.ID().String()}); err != nil {
		return err
	}
	for {
		var req subRequest
		if err := dec.Decode(&req); err != nil {
			if errors.Is(err, io.EOF) {
				return n.Close()
			}
			return fmt.Errorf("perf: subscriber request: %w", err)
		}
		var rep subReply
		switch req.Cmd {
		case "subscribe":
			if err := subscribe(ctx, n, req.Token); err != nil {
				rep.Error = err.Error()
			}
		case "stats":
			cpu, err := cpuTime()
			if err != nil {
				rep.Error = err.Error()
			}
			rep.CPUNanos = int64(cpu)
			if cnt != nil {
				rep.Processed = cnt.n.Load()
			}
		default:
			rep.Error = fmt.Sprintf("perf: unknown request %q", req.Cmd)
		}
		if err := enc.Encode(rep); err != nil {
			return err
		}
	}
}

// subProcess is the bench's side of one subscriber process.
type subProcess struct {
	cmd     *exec.Cmd
	in      io.WriteCloser
	out     *json.Decoder
	stdout  *os.File     // out's pipe, closed by close
	stderr  bytes.Buffer // read only after Wait
	id      peer.ID
	counted bool       // its receiver is in-process: stats report what it processed
	mu      sync.Mutex // one request at a time
	closed  bool       // close has begun: an exit is expected
	exited  chan struct{}
	waitErr error // set before exited is closed
}

// requestTimeout bounds one request to a subscriber process (a subscribe
// dials the publisher); one that does not answer in time is killed.
const requestTimeout = time.Minute

// startSubProcess starts a subscriber process with spawn and configures
// it; the process is killed when ctx ends, and died (if not nil) is
// called if it exits before close.
func startSubProcess(ctx context.Context, spawn func(context.Context) *exec.Cmd, cfg subConfig, died func(error)) (*subProcess, error) {
	p := &subProcess{cmd: spawn(ctx), counted: cfg.Receiver != ReceiverExecutable, exited: make(chan struct{})}
	p.cmd.Stderr = &p.stderr
	var err error
	if p.in, err = p.cmd.StdinPipe(); err != nil {
		return nil, fmt.Errorf("perf: subscriber process: %w", err)
	}
	// A pipe of our own, not StdoutPipe: Wait closes that one's read end
	// as soon as the process is gone, so an answer it wrote just before
	// exiting could be lost ("file already closed") instead of read. Ours
	// reads to EOF, which comes when the process (its only writer) exits.
	stdout, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("perf: subscriber process: %w", err)
	}
	p.stdout = stdout
	p.cmd.Stdout = w
	p.out = json.NewDecoder(stdout)
	err = p.cmd.Start()
	w.Close()
	if err != nil {
		stdout.Close()
		return nil, fmt.Errorf("perf: subscriber process: %w", err)
	}
	go func() {
		// The process gone, its stdout reads EOF, which ends a request
		// waiting for its answer.
		p.waitErr = p.cmd.Wait()
		close(p.exited)
		p.mu.Lock()
		expected := p.closed
		p.mu.Unlock()
		if !expected && died != nil {
			died(fmt.Errorf("perf: subscriber process %d exited during the run (%v); its stderr: %q", p.cmd.Process.Pid, p.waitErr, tail(p.stderr.Bytes(), 2048)))
		}
	}()
	rep, err := p.roundTrip(cfg)
	if err == nil {
		p.id, err = peer.Decode(rep.ID)
	}
	if err != nil {
		return nil, errors.Join(err, p.close())
	}
	return p, nil
}

// roundTrip writes one line and reads the answer.
func (p *subProcess) roundTrip(v any) (subReply, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	hung := time.AfterFunc(requestTimeout, func() { _ = p.cmd.Process.Kill() })
	defer hung.Stop()
	var rep subReply
	b, err := json.Marshal(v)
	if err == nil {
		_, err = p.in.Write(append(b, '\n'))
	}
	if err == nil {
		err = p.out.Decode(&rep)
	}
	if err != nil {
		return rep, fmt.Errorf("perf: subscriber process %d: %w", p.cmd.Process.Pid, err)
	}
	if rep.Error != "" {
		return rep, fmt.Errorf("perf: subscriber process %d: %s", p.cmd.Process.Pid, rep.Error)
	}
	return rep, nil
}

func (p *subProcess) subscribe(token string) error {
	_, err := p.roundTrip(subRequest{Cmd: "subscribe", Token: token})
	return err
}

func (p *subProcess) stats() (processed int64, cpu time.Duration, err error) {
	rep, err := p.roundTrip(subRequest{Cmd: "stats"})
	return rep.Processed, time.Duration(rep.CPUNanos), err
}

// close stops the process (stdin closed: it closes its instance and
// exits), killing it if it has not exited within 30 s.
func (p *subProcess) close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	_ = p.in.Close()
	var err error
	select {
	case <-p.exited:
		err = p.waitErr
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		err = errors.Join(errors.New("did not exit within 30s of its stdin closing; killed"), p.waitErr)
	}
	p.stdout.Close()
	if err != nil {
		return fmt.Errorf("perf: subscriber process %d: %w; its stderr: %q", p.cmd.Process.Pid, err, tail(p.stderr.Bytes(), 2048))
	}
	return nil
}

// tail returns at most the last n bytes of b.
func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// startSubscriber starts a subscriber instance in dir with its receiver;
// cnt counts the in-process receiver's calls (nil for an executable one).
func startSubscriber(ctx context.Context, dir string, o DeliveryOptions) (n *node.Node, cnt *counter, err error) {
	if n, err = startNode(ctx, dir, o); err != nil {
		return nil, nil, err
	}
	if cnt, err = addReceiver(n, o.Receiver); err != nil {
		return nil, nil, errors.Join(err, n.Close())
	}
	return n, cnt, nil
}
