package node

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coattail/coattail/datastore"
)

// A service that starts while an offline command holds the instance's data
// says that it waits, and for what (the command and its pid); if the
// command does not finish in time, it fails naming the command and saying
// to wait for it, rather than asking whether a service runs. It used to
// wait 10 s in silence and then blame a service that did not exist.
func TestServiceStartWaitsForOfflineCommand(t *testing.T) {
	t.Setenv(EnvRuntimeDir, t.TempDir())
	oldOffline, oldNotice := dataWaitOffline, dataWaitNotice
	dataWaitOffline, dataWaitNotice = 2*time.Second, 200*time.Millisecond
	defer func() { dataWaitOffline, dataWaitNotice = oldOffline, oldNotice }()
	l, err := CreateInstance(filepath.Join(t.TempDir(), "i"), CreateOptions{Port: 0, Loopback: true})
	if err != nil {
		t.Fatal(err)
	}
	hold := func() *datastore.DB {
		db, err := datastore.Open(l.Data(), datastore.WithOwner(holderOffline, "coattail action perform"))
		if err != nil {
			t.Fatal(err)
		}
		return db
	}
	pid := strconv.Itoa(os.Getpid())
	var mu sync.Mutex
	var notices []string
	opts := ServiceOptions{Notice: func(msg string) {
		mu.Lock()
		defer mu.Unlock()
		notices = append(notices, msg)
	}}

	t.Run("gives up", func(t *testing.T) {
		db := hold()
		defer db.Close()
		begin := time.Now()
		err := RunService(context.Background(), l, opts)
		if !errors.Is(err, datastore.ErrLocked) {
			t.Fatalf("RunService = %v, want the data in use", err)
		}
		if took := time.Since(begin); took < dataWaitOffline || took > dataWaitOffline+10*time.Second {
			t.Errorf("gave up after %v, want about %v", took, dataWaitOffline)
		}
		msg := err.Error()
		for _, want := range []string{`offline command "coattail action perform"`, "pid " + pid, "wait for it to finish"} {
			if !strings.Contains(msg, want) {
				t.Errorf("error %q lacks %q", msg, want)
			}
		}
		if strings.Contains(msg, "service running") || strings.Contains(msg, "stop it or use the running service") {
			t.Errorf("error %q blames a service", msg)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(notices) != 1 || !strings.Contains(notices[0], "Waiting for") || !strings.Contains(notices[0], "pid "+pid) {
			t.Errorf("notices %q, want one saying it waits for pid %s", notices, pid)
		}
		notices = nil
	})

	t.Run("waits for it", func(t *testing.T) {
		// The command ends once the service has said it waits for it, not
		// after a time the service may not yet have got that far in; and
		// the service would give up only long after that.
		dataWaitOffline = time.Minute
		db := hold()
		noticed := make(chan struct{})
		go func() {
			<-noticed
			db.Close()
		}()
		notice := func(msg string) {
			opts.Notice(msg)
			select {
			case <-noticed:
			default:
				close(noticed)
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- RunService(ctx, l, ServiceOptions{Notice: notice, Ready: func(int) { cancel() }})
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("RunService = %v, want it to start once the command is done", err)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("the service did not start")
		}
		mu.Lock()
		defer mu.Unlock()
		if len(notices) != 1 {
			t.Errorf("notices %q, want one", notices)
		}
	})
}
