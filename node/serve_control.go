package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// ServeControl serves the instance's control API on its control socket
// (<dir>/coattail.sock, owner-only), as `coattail service start` does,
// until ctx ends or the node closes. A program that embeds a node and
// calls it lets the coattail CLI reach the instance (`coattail
// --instance DIR subscribers list`, …) and lets the executable actions and
// receivers in its directory cascade with `coattail action perform
// --notify` (they are told the socket in their environment). Without it
// those commands find the instance's data held by the program and fail.
// It returns once the socket listens; the node must be started.
func (n *Node) ServeControl(ctx context.Context) error {
	n.mu.Lock()
	closed, started := n.closed, n.net != nil
	n.mu.Unlock()
	switch {
	case closed:
		return fmt.Errorf("node: serve control: %w", ErrClosed)
	case !started:
		return errors.New("node: serve control: start the node first")
	}
	if _, err := probe(n.layout); err == nil {
		return fmt.Errorf("%w: something already answers on %s", ErrAlreadyRunning, n.layout.Socket())
	}
	ctx, cancel := context.WithCancel(ctx)
	srv := controlServer(ctx, bodyDeadline(n.Handler(nil), controlReadTimeout))
	sock, err := serveControl(n.layout, srv)
	if err != nil {
		cancel()
		return err
	}
	stop := sync.OnceFunc(func() {
		cancel()
		shutdownControl(srv)
		sock.remove()
	})
	// Whichever comes first: ctx, or Close (before the datastore closes).
	n.onClose(func() error { stop(); return nil })
	go func() {
		<-ctx.Done()
		stop()
	}()
	return nil
}
