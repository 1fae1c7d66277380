package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/coattail/coattail/datastore"
	"github.com/coattail/coattail/node/localapi"
)

// Conn is the CLI's handle on an instance: a control API client that talks
// to the running service, or to an offline in-process node when no service
// runs. This is the one place that decides which.
type Conn struct {
	*localapi.Client
	// Online is true when a service answered on the control socket.
	Online bool
	node   *Node
}

// Close releases the client and, for an offline node, the datastore.
func (c *Conn) Close() error {
	err := c.Client.Close()
	if c.node != nil {
		err = errors.Join(err, c.node.Close())
	}
	return err
}

// Connect returns a Conn for the instance in l.
func Connect(ctx context.Context, l Layout) (*Conn, error) {
	// Before the socket is dialled: in a directory anyone can write to,
	// it could be anyone's.
	if err := checkInstanceWritable(l); err != nil {
		return nil, err
	}
	if _, err := probe(l); err == nil {
		return &Conn{Client: localapi.Dial(l.Socket()), Online: true}, nil
	}
	cfg, err := LoadConfig(l.Config())
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		db, err := datastore.Open(l.Data(), datastore.WithOwner(holderOffline, command))
		if err == nil {
			n, err := New(Options{Dir: l.Dir, Config: cfg, DB: db, Offline: true, Logger: offlineLogger()})
			if err != nil {
				db.Close()
				return nil, err
			}
			n.ownDB = true
			if err := n.Start(ctx); err != nil {
				return nil, errors.Join(err, n.Close())
			}
			return &Conn{Client: localapi.InProcess(n.Handler(nil)), node: n}, nil
		}
		if !errors.Is(err, datastore.ErrLocked) {
			return nil, err
		}
		// Another process holds the datastore: a service that is starting
		// (its socket will answer soon) or another short command.
		if _, perr := probe(l); perr == nil {
			return &Conn{Client: localapi.Dial(l.Socket()), Online: true}, nil
		}
		if time.Now().After(deadline) {
			if o := ownerOf(err); o != nil && o.Kind == holderService {
				return nil, &dataInUseError{err: err, msg: fmt.Sprintf("node: the instance's service (pid %d) holds its data, and %s", o.PID, unansweredService(l, o.PID))}
			} else if o != nil && o.Kind == holderEmbedded {
				return nil, &dataInUseError{err: err, msg: "node: the instance's data is held by " + holderText(o)}
			}
			return nil, &dataInUseError{err: err, msg: fmt.Sprintf(
				"node: the instance's data is in use by %s; wait for it to finish and retry", holderText(ownerOf(err)))}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// offlineLogger sends an offline node's warnings to stderr only when
// COATTAIL_DEBUG is set: the CLI reports errors itself.
func offlineLogger() *slog.Logger {
	if os.Getenv("COATTAIL_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}
