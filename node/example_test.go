package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
)

// Embedding an instance in a Go program, as the README shows. (Compiled,
// not run: it listens on a fixed port.)
func Example() {
	ctx := context.Background()
	l, err := node.CreateInstance("/tmp/shop", node.CreateOptions{Port: 5210})
	if err != nil {
		log.Fatal(err)
	}
	cfg, err := node.LoadConfig(l.Config())
	if err != nil {
		log.Fatal(err)
	}
	n, err := node.New(node.Options{Dir: l.Dir, Config: cfg})
	if err != nil {
		log.Fatal(err)
	}
	_ = n.RegisterAction("orders.created", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		node.Log(ctx, "creating an order")
		return in, nil
	})
	_ = n.RegisterReceiver("orders.log", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		inv := node.InvocationFrom(ctx)
		log.Printf("%s #%d from %s: %s", inv.Subject, inv.Sequence, inv.Publisher, in)
		return nil, nil
	})
	if err := n.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer n.Close()
	if _, err := n.Publish(ctx, "orders.created", json.RawMessage(`{"id":1}`)); err != nil {
		log.Fatal(err)
	}
}

// Two embedded instances on this machine: the publisher issues a token
// that lets the subscriber subscribe, the subscriber adds the publisher
// with it (the token carries the publisher's addresses) and subscribes an
// in-process receiver to a wildcard; every publication on a matching
// subject reaches it, once, in order.
func Example_subscribe() {
	ctx := context.Background()
	open := func(name string) *node.Node {
		dir, err := os.MkdirTemp("", "coattail-example-")
		if err != nil {
			log.Fatal(err)
		}
		l, err := node.CreateInstance(filepath.Join(dir, name), node.CreateOptions{Loopback: true}) // port 0: any free one
		if err != nil {
			log.Fatal(err)
		}
		n, err := node.New(node.Options{Dir: l.Dir, Config: node.LoopbackConfig(0)})
		if err != nil {
			log.Fatal(err)
		}
		return n
	}
	pub, sub := open("pub"), open("sub")
	got := make(chan string)
	// Receivers are registered before Start: subscriptions resume then.
	if err := sub.RegisterReceiver("orders.log", func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		inv := node.InvocationFrom(ctx)
		got <- fmt.Sprintf("%s #%d: %s", inv.Subject, inv.Sequence, in)
		return nil, nil
	}); err != nil {
		log.Fatal(err)
	}
	for _, n := range []*node.Node{pub, sub} {
		if err := n.Start(ctx); err != nil {
			log.Fatal(err)
		}
		defer os.RemoveAll(filepath.Dir(n.Dir()))
		defer n.Close()
	}
	tok, err := pub.IssueToken(ctx, localapi.IssueRequest{Subscribe: []string{"orders.>"}, Bearers: []string{"vt://" + sub.ID().String()}})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := sub.AddPeer(ctx, tok.Token); err != nil {
		log.Fatal(err)
	}
	if _, err := sub.Subscribe(ctx, localapi.SubscribeRequest{Peer: pub.ID().String(), Pattern: "orders.>", Receiver: "orders.log"}); err != nil {
		log.Fatal(err)
	}
	for i, subject := range []string{"orders.created", "invoices.sent", "orders.shipped"} {
		if _, err := pub.Publish(ctx, subject, json.RawMessage(fmt.Sprintf(`{"id":%d}`, i+1))); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Println(<-got)
	fmt.Println(<-got)
	// Output:
	// orders.created #1: {"id":1}
	// orders.shipped #2: {"id":3}
}
