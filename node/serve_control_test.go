package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
)

// An embedding program that calls ServeControl lets the CLI (and the
// executable actions of its directory, which cascade through it) reach the
// instance over its control socket, as a service's; the socket goes with
// the node's Close. Without it those commands found the data held by the
// program and failed after 5 s.
func TestServeControlForEmbeddedNode(t *testing.T) {
	ctx := testCtx(t)
	n := newDiskNode(t, nil)
	if err := n.ServeControl(ctx); err == nil {
		t.Fatal("ServeControl before Start succeeded")
	}
	if err := n.RegisterAction("echo", func(_ context.Context, in json.RawMessage) (json.RawMessage, error) { return in, nil }); err != nil {
		t.Fatal(err)
	}
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n.ServeControl(ctx); err != nil {
		t.Fatal(err)
	}
	l := node.Layout{Dir: n.Dir()}
	if err := n.ServeControl(ctx); !errors.Is(err, node.ErrAlreadyRunning) {
		t.Errorf("a second ServeControl: %v, want ErrAlreadyRunning", err)
	}
	c, err := node.Connect(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.Online {
		t.Fatal("Connect did not reach the embedded node's socket")
	}
	st, err := c.Status(ctx)
	if err != nil || st.PeerID != n.ID().String() {
		t.Fatalf("status over the socket: %+v, %v", st, err)
	}
	res, err := c.Perform(ctx, localapi.PerformRequest{Action: "echo", Input: json.RawMessage(`{"a":1}`)}, nil)
	if err != nil || string(res.Output) != `{"a":1}` {
		t.Fatalf("perform over the socket: %s, %v", res.Output, err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.Socket()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the control socket is left after Close: %v", err)
	}
	if err := n.ServeControl(ctx); !errors.Is(err, node.ErrClosed) {
		t.Errorf("ServeControl after Close: %v, want ErrClosed", err)
	}
	if _, err := n.Publish(ctx, "x", json.RawMessage(`1`)); !errors.Is(err, node.ErrClosed) {
		t.Errorf("Publish after Close: %v, want ErrClosed", err)
	}
	if _, err := n.Perform(ctx, localapi.PerformRequest{Action: "echo"}, nil); !errors.Is(err, node.ErrClosed) {
		t.Errorf("Perform after Close: %v, want ErrClosed", err)
	}
}

// Without ServeControl, a command on an embedded node's instance says the
// program holds its data and how to let commands in; it said the data was
// in use by a pid, "wait for it to finish and retry".
func TestConnectToEmbeddedNodeSaysWhy(t *testing.T) {
	ctx := testCtx(t)
	n := newDiskNode(t, nil)
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := node.Connect(cctx, node.Layout{Dir: n.Dir()})
	if err == nil || !strings.Contains(err.Error(), "embeds this instance") || !strings.Contains(err.Error(), "ServeControl") {
		t.Fatalf("Connect to an embedded node's instance: %v", err)
	}
}
