package node_test

import (
	"context"
	"encoding/json"
	"log"

	"github.com/coattail/coattail/node"
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
