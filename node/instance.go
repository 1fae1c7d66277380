package node

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Version is the Coattail version; the build may override it with
// -ldflags "-X github.com/coattail/coattail/node.Version=...".
var Version = "0.1.0-dev"

// Instance errors.
var (
	ErrNoInstance     = errors.New("node: no coattail instance")
	ErrInstanceExists = errors.New("node: instance already exists")
	ErrKeyPermissions = errors.New("node: key file permissions too open")
)

// EnvInstance names the environment variable that selects an instance.
const EnvInstance = "COATTAIL_INSTANCE"

// Layout names the files of an instance directory.
type Layout struct{ Dir string }

// Paths inside an instance directory.
func (l Layout) Actions() string     { return filepath.Join(l.Dir, "actions") }
func (l Layout) Receivers() string   { return filepath.Join(l.Dir, "receivers") }
func (l Layout) Keys() string        { return filepath.Join(l.Dir, "keys") }
func (l Layout) IdentityKey() string { return filepath.Join(l.Dir, "keys", "identity.key") }
func (l Layout) Config() string      { return filepath.Join(l.Dir, "config.yml") }
func (l Layout) Data() string        { return filepath.Join(l.Dir, "data") }
func (l Layout) VersionFile() string { return filepath.Join(l.Dir, ".ct.version") }
func (l Layout) Socket() string      { return filepath.Join(l.Dir, "coattail.sock") }
func (l Layout) PIDFile() string     { return filepath.Join(l.Dir, "service.pid") }

// LogFile resolves the configured log file against the instance directory.
func (l Layout) LogFile(c Config) string {
	if filepath.IsAbs(c.Log.File) {
		return c.Log.File
	}
	return filepath.Join(l.Dir, c.Log.File)
}

// IsInstance reports whether dir holds a Coattail instance.
func IsInstance(dir string) bool {
	l := Layout{Dir: dir}
	if _, err := os.Stat(l.VersionFile()); err != nil {
		return false
	}
	_, err := os.Stat(l.Config())
	return err == nil
}

// CreateOptions configures a new instance.
type CreateOptions struct {
	// Port is the TCP and UDP port the config listens on. 0 asks for any
	// free port at every start: peers then find the instance only at the
	// addresses it told them last (fine for tests; two instances that
	// both restart on port 0 lose each other).
	Port     int
	Loopback bool // listen on 127.0.0.1 only, no port mapping (labs, demos, tests)
}

// CreateInstance lays out a new instance in dir (created if missing). It
// refuses to touch a directory that already holds an instance.
func CreateInstance(dir string, o CreateOptions) (Layout, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Layout{}, err
	}
	l := Layout{Dir: abs}
	for _, p := range []string{l.VersionFile(), l.Config(), l.IdentityKey(), l.Data()} {
		if _, err := os.Lstat(p); err == nil {
			return Layout{}, fmt.Errorf("%w in %s (found %s); choose an empty directory", ErrInstanceExists, abs, filepath.Base(p))
		}
	}
	if o.Port < 0 || o.Port > 65535 {
		return Layout{}, fmt.Errorf("node: port %d out of range 0..65535", o.Port)
	}
	cfg := DefaultConfig(o.Port)
	if o.Loopback {
		cfg = LoopbackConfig(o.Port)
	}
	for _, d := range []string{abs, l.Actions(), l.Receivers()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return Layout{}, fmt.Errorf("node: create instance: %w", err)
		}
	}
	// The datastore holds issued tokens as they were issued, and the key
	// is the identity: both are the owner's only.
	for _, d := range []string{l.Keys(), l.Data()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return Layout{}, fmt.Errorf("node: create instance: %w", err)
		}
	}
	if err := writeNewKey(l.IdentityKey()); err != nil {
		return Layout{}, err
	}
	conf, err := RenderConfig(cfg, o.Port)
	if err != nil {
		return Layout{}, err
	}
	if err := os.WriteFile(l.Config(), conf, 0o644); err != nil {
		return Layout{}, fmt.Errorf("node: create instance: %w", err)
	}
	// The version file goes last: its presence marks a complete instance.
	if err := os.WriteFile(l.VersionFile(), []byte(Version+"\n"), 0o644); err != nil {
		return Layout{}, fmt.Errorf("node: create instance: %w", err)
	}
	return l, nil
}

func writeNewKey(path string) error {
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return fmt.Errorf("node: generate identity key: %w", err)
	}
	b, err := crypto.MarshalPrivateKey(priv)
	if err != nil {
		return fmt.Errorf("node: encode identity key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("node: write identity key: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("node: write identity key: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("node: write identity key: %w", err)
	}
	return f.Close()
}

// LoadKey reads the identity key, refusing a file that group or others can
// read or write.
func LoadKey(path string) (crypto.PrivKey, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("node: identity key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; run: chmod 600 %s", ErrKeyPermissions, path, st.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("node: identity key: %w", err)
	}
	k, err := crypto.UnmarshalPrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("node: identity key %s is corrupt: %w", path, err)
	}
	if k.Type() != crypto.Ed25519 {
		return nil, fmt.Errorf("node: identity key %s is not Ed25519", path)
	}
	return k, nil
}

// PeerIDOf returns the peer id of an instance without starting it.
func PeerIDOf(l Layout) (peer.ID, error) {
	k, err := LoadKey(l.IdentityKey())
	if err != nil {
		return "", err
	}
	return peer.IDFromPrivateKey(k)
}

// FindInstance resolves which instance a command acts on: the explicit
// directory if given, else $COATTAIL_INSTANCE, else the current directory
// or its nearest parent that holds an instance.
func FindInstance(explicit string) (Layout, error) {
	if explicit == "" {
		explicit = os.Getenv(EnvInstance)
	}
	if explicit != "" {
		abs, err := filepath.Abs(explicit)
		if err != nil {
			return Layout{}, err
		}
		if !IsInstance(abs) {
			return Layout{}, fmt.Errorf("%w in %s (create one with: coattail new %s)", ErrNoInstance, abs, explicit)
		}
		return Layout{Dir: abs}, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return Layout{}, err
	}
	for d := wd; ; {
		if IsInstance(d) {
			return Layout{Dir: d}, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			break
		}
		d = parent
	}
	return Layout{}, fmt.Errorf("%w in %s or its parents (use --instance DIR, set %s, or create one with: coattail new DIR)", ErrNoInstance, wd, EnvInstance)
}
