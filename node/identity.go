package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	ds "github.com/ipfs/go-datastore"
	"github.com/libp2p/go-libp2p/core/peer"
)

// ErrIdentityInUse is returned by RunService when another service on this
// machine runs with the instance's peer id: the instance directory is a
// copy of that service's. Two services with one identity take each
// other's connections, and a subscriber that took a publication's
// sequence number from one ignores the other's (its publications are
// lost).
var ErrIdentityInUse = errors.New("node: peer id in use by another service")

// ErrIdentityMismatch is returned by New when the instance's identity key
// is not the one its data was written with.
var ErrIdentityMismatch = errors.New("node: the identity key does not match the instance's data")

// peerIDKey records the peer id of the identity key an instance's data
// was written with.
var peerIDKey = ds.NewKey("/meta/peer-id")

// checkDataIdentity makes sure db holds the data of peer id: it records
// id in a datastore that does not say whose it is yet (a new instance, or
// one from before the record existed), and refuses one written with
// another identity key. Everything in data/ is bound to that key: the
// tokens it issued are signed with it, subscriptions and peers know the
// instance by its peer id. With another key in keys/ the service started
// silently, its issued tokens listed as valid, and it queued publications
// for subscribers that could never reach it.
func checkDataIdentity(ctx context.Context, db ds.Batching, l Layout, id peer.ID) error {
	b, err := db.Get(ctx, peerIDKey)
	switch {
	case errors.Is(err, ds.ErrNotFound):
		if err := db.Put(ctx, peerIDKey, []byte(id.String())); err != nil {
			return fmt.Errorf("node: record the instance's peer id: %w", err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("node: read the instance's peer id: %w", err)
	case string(b) == id.String():
		return nil
	}
	return fmt.Errorf("%w: %s is peer %s, but %s was written by peer %s (with another identity key): the key was replaced, or data/ was copied from another instance. "+
		"The tokens, subscriptions and peers in data/ are %s's and do not work with this key. Put %s's key back in %s, "+
		"or, to give this instance the new identity, move %s aside (the instance then starts with no tokens, peers or subscriptions); see \"Rotate the identity key\" in docs/SECURITY.md",
		ErrIdentityMismatch, l.IdentityKey(), id, l.Data(), b, b, b, l.IdentityKey(), l.Data())
}

// identityHolder is what a service writes in its identity lock file.
type identityHolder struct {
	PID      int    `json:"pid"`
	Instance string `json:"instance"`
}

// identityLockPath is the file in the runtime directory dir that a
// service of peer id holds locked while it runs.
func identityLockPath(dir string, id peer.ID) string {
	return filepath.Join(dir, "id-"+id.String()+".lock")
}

// claimIdentity makes sure that no other service of this user on this
// machine runs with peer id id, and keeps it so until release is called:
// it holds the runtime directory's lock file of id (flock, so a service
// that was killed holds nothing, and two copies that start at once cannot
// both have it), and it checks the registrations of running services, for
// one whose lock file went with its runtime directory (it registers again,
// keepRegistered) or that is of an older version. Only a live service
// counts: a registration whose process is gone is not. When the runtime
// directory cannot be used, there is nothing to check against: warn is
// told why, and the service runs (as it does unregistered).
func claimIdentity(l Layout, id peer.ID, warn func(error)) (release func(), err error) {
	dir := RuntimeDir()
	release = func() {}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		warn(err)
		return release, nil
	}
	if err := checkSharedRuntimeDir(dir); err != nil {
		warn(err)
		return release, nil
	}
	path := identityLockPath(dir, id)
	f, held, err := lockExclusive(path)
	switch {
	case held:
		h := readIdentityHolder(path)
		if h.PID > 0 && h.PID != os.Getpid() {
			return nil, identityInUse(l, id, h.Instance, h.PID)
		}
		return nil, fmt.Errorf("%w: another service on this machine runs with this instance's peer id %s (it is starting); %s", ErrIdentityInUse, id, copyAdvice(l))
	case err != nil:
		warn(err)
	default:
		b, _ := json.Marshal(identityHolder{PID: os.Getpid(), Instance: l.Dir})
		if _, err := f.WriteAt(append(b, '\n'), 0); err != nil {
			warn(err)
		}
		release = func() {
			// Only if the path is still the file locked: after the
			// runtime directory was wiped, it may be another service's.
			if fi, err := f.Stat(); err == nil {
				if pi, err := os.Stat(path); err == nil && os.SameFile(fi, pi) {
					_ = os.Remove(path)
				}
			}
			f.Close() // releases the lock, after the removal
		}
	}
	if r, ok := registeredWithID(dir, id); ok {
		release()
		return nil, identityInUse(l, id, r.Instance, r.PID)
	}
	return release, nil
}

// registeredWithID returns the registration, in the runtime directory dir,
// of a live service (other than this process) that runs with peer id id.
// A registration that does not say its peer id (an older version wrote
// it) is judged by its instance's identity key.
func registeredWithID(dir string, id peer.ID) (registration, bool) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return registration{}, false
	}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		var r registration
		if json.Unmarshal(b, &r) != nil || r.PID == os.Getpid() || !r.registered() {
			continue
		}
		rid := r.PeerID
		if rid == "" {
			if k, err := PeerIDOf(Layout{Dir: r.Instance}); err == nil {
				rid = k.String()
			}
		}
		if rid == id.String() {
			return r, true
		}
	}
	return registration{}, false
}

func identityInUse(l Layout, id peer.ID, instance string, pid int) error {
	return fmt.Errorf("%w: the service of %s (pid %d) runs with this instance's peer id %s; is %s a copy of it? %s",
		ErrIdentityInUse, instance, pid, id, l.Dir, copyAdvice(l))
}

// copyAdvice says how a copied instance gets an identity of its own.
func copyAdvice(l Layout) string {
	return fmt.Sprintf("Two services with one identity take each other's connections, and their publications are lost. "+
		"A copied instance must get its own identity: create a new instance (coattail new DIR) and copy %s's actions/, receivers/ and config.yml into it, "+
		"but not keys/ or data/, which are the original's identity and state (see \"Rotate the identity key\" in docs/SECURITY.md)", l.Dir)
}

// readIdentityHolder reads what the service holding an identity lock
// wrote in it (zero if nothing yet).
func readIdentityHolder(path string) identityHolder {
	var h identityHolder
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return h
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err == nil {
		_ = json.Unmarshal(b, &h)
	}
	return h
}

// lockExclusive opens (creating it, 0600) and flocks the file at path.
// held reports that another open file holds the lock; the lock goes with
// the process, so a file left by a killed process is simply taken over.
// The file is truncated for its new holder to write in. A service's pid
// file and its identity lock are held with it.
func lockExclusive(path string) (f *os.File, held bool, err error) {
	f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, false, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, true, nil
		}
		return nil, false, fmt.Errorf("%s: %w", path, err)
	}
	// A path that no longer names the file we locked (its holder removed
	// it as it stopped) would let another process lock a new one.
	fi, ferr := f.Stat()
	pi, perr := os.Stat(path)
	if ferr != nil || perr != nil || !os.SameFile(fi, pi) {
		f.Close()
		return lockExclusive(path)
	}
	err = f.Chmod(0o600)
	if err == nil {
		err = f.Truncate(0)
	}
	if err != nil {
		f.Close()
		return nil, false, err
	}
	return f, false, nil
}
