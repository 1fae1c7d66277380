package node_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/coattail/coattail/datastore"
	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
)

// A control handler that ignores its cancelled context and outlives the
// shutdown timeouts does not hold the service's stop for ever, and does
// not find the datastore closed under it: the node is closed when it
// ends. (The datastore was closed after the 5 s shutdown timeout whatever
// handlers still ran, and their next use of it panicked.)
func TestControlShutdownOutlivedByHandler(t *testing.T) {
	node.SetControlShutdown(t, 100*time.Millisecond, 100*time.Millisecond)
	entered := make(chan struct{})
	release := make(chan struct{})
	result := make(chan error, 1)
	node.SetControlHandlerHook(t, func(n *node.Node, h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != localapi.Prefix+"/test/block" {
				h.ServeHTTP(w, r)
				return
			}
			close(entered)
			<-release // ignores r.Context()
			result <- func() (err error) {
				defer func() {
					if v := recover(); v != nil {
						err = fmt.Errorf("panic: %v", v)
					}
				}()
				_, err = n.DeadLetters(context.Background(), localapi.DeadLetterQuery{})
				return err
			}()
		})
	})
	l, done, cancel := startService(t, node.LoopbackConfig(0))
	defer close(release) // also on failure: the hook must not stay blocked
	c := localapi.Dial(l.Socket())
	defer c.Close()
	blocked := make(chan error, 1)
	go func() { blocked <- c.Do(context.Background(), http.MethodGet, "/test/block", nil, nil) }()
	select {
	case <-entered:
	case err := <-blocked:
		t.Fatalf("blocking request ended before its handler ran: %v", err)
	case <-time.After(testTimeout):
		t.Fatal("blocking request did not reach its handler")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("RunService: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("the service did not stop while a handler ignored its context")
	}
	select {
	case err := <-blocked:
		if err == nil {
			t.Error("the request cut by the service stopping succeeded")
		}
	case <-time.After(testTimeout):
		t.Fatal("the cut request did not end")
	}
	release <- struct{}{} // the handler goes on, after the service has returned
	select {
	case err := <-result:
		if err != nil {
			t.Errorf("datastore use by a handler that outlived shutdown: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("the released handler did not finish")
	}
	// The last handler's end closed the node: its datastore is free.
	checkFor(t, testTimeout, 10*time.Millisecond, func() error {
		db, err := datastore.Open(l.Data())
		if err != nil {
			return err
		}
		return db.Close()
	})
}
