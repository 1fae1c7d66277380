package node_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coattail/coattail/node"
)

func TestCreateInstanceLayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b") // parents are created too
	l, err := node.CreateInstance(dir, node.CreateOptions{Port: 0, Loopback: true})
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(l.Dir) {
		t.Errorf("layout dir %q is not absolute", l.Dir)
	}
	for _, d := range []string{l.Actions(), l.Receivers(), l.Keys(), l.Data()} {
		if st, err := os.Stat(d); err != nil || !st.IsDir() {
			t.Errorf("%s: not a directory (%v)", d, err)
		}
	}
	if st, err := os.Stat(l.Keys()); err == nil && st.Mode().Perm() != 0o700 {
		t.Errorf("keys/ has mode %04o, want 0700", st.Mode().Perm())
	}
	st, err := os.Stat(l.IdentityKey())
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("identity key has mode %04o, want 0600", st.Mode().Perm())
	}
	v, err := os.ReadFile(l.VersionFile())
	if err != nil || strings.TrimSpace(string(v)) != node.Version {
		t.Errorf("version file = %q, %v; want %q", v, err, node.Version)
	}
	if !node.IsInstance(l.Dir) {
		t.Error("IsInstance is false for a new instance")
	}
	cfg, err := node.LoadConfig(l.Config())
	if err != nil {
		t.Fatalf("the written config.yml does not load: %v", err)
	}
	want := node.LoopbackConfig(0)
	if strings.Join(cfg.Network.Listen, " ") != strings.Join(want.Network.Listen, " ") || cfg.Network.PortMapping {
		t.Errorf("loopback instance config network = %+v, want %+v", cfg.Network, want.Network)
	}
	k, err := node.LoadKey(l.IdentityKey())
	if err != nil {
		t.Fatalf("LoadKey: %v", err)
	}
	id, err := node.PeerIDOf(l)
	if err != nil {
		t.Fatal(err)
	}
	if !id.MatchesPrivateKey(k) {
		t.Error("PeerIDOf does not match the identity key")
	}
}

func TestCreateInstanceDefaultPortConfig(t *testing.T) {
	l, err := node.CreateInstance(t.TempDir(), node.CreateOptions{Port: 6123})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := node.LoadConfig(l.Config())
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cfg.Network.Listen, " "); !strings.Contains(got, "/ip4/0.0.0.0/tcp/6123") || !strings.Contains(got, "/udp/6123/quic-v1") {
		t.Errorf("listen = %s, want all interfaces on port 6123 (TCP and QUIC)", got)
	}
}

func TestCreateInstanceRefusesExisting(t *testing.T) {
	dir := t.TempDir()
	l, err := node.CreateInstance(dir, node.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(l.IdentityKey())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := node.CreateInstance(dir, node.CreateOptions{}); !errors.Is(err, node.ErrInstanceExists) {
		t.Fatalf("second CreateInstance: got %v, want ErrInstanceExists", err)
	}
	after, err := os.ReadFile(l.IdentityKey())
	if err != nil || string(after) != string(before) {
		t.Error("the refused CreateInstance changed the identity key")
	}

	// A half-created instance (a key but no version file) is refused too:
	// its key must never be overwritten.
	half := t.TempDir()
	if err := os.MkdirAll(filepath.Join(half, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(half, "keys", "identity.key"), []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := node.CreateInstance(half, node.CreateOptions{}); !errors.Is(err, node.ErrInstanceExists) {
		t.Fatalf("CreateInstance over a key: got %v, want ErrInstanceExists", err)
	}
}

func TestCreateInstanceRefusesBadPort(t *testing.T) {
	for _, p := range []int{-1, 65536} {
		if _, err := node.CreateInstance(t.TempDir(), node.CreateOptions{Port: p}); err == nil {
			t.Errorf("port %d accepted", p)
		}
	}
}

func TestLoadKeyRefusesOpenPermissions(t *testing.T) {
	l, err := node.CreateInstance(t.TempDir(), node.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660} {
		if err := os.Chmod(l.IdentityKey(), mode); err != nil {
			t.Fatal(err)
		}
		_, err := node.LoadKey(l.IdentityKey())
		if !errors.Is(err, node.ErrKeyPermissions) {
			t.Errorf("mode %04o: got %v, want ErrKeyPermissions", mode, err)
		}
		errorsContain(t, err, "chmod 600")
	}
	if err := os.Chmod(l.IdentityKey(), 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := node.LoadKey(l.IdentityKey()); err != nil {
		t.Errorf("mode 0400: %v", err)
	}
}

func TestLoadKeyRefusesCorruptAndMissing(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "identity.key")
	if err := os.WriteFile(bad, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := node.LoadKey(bad); err == nil {
		t.Error("corrupt key accepted")
	}
	if _, err := node.LoadKey(filepath.Join(dir, "missing.key")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing key: got %v, want an error wrapping fs.ErrNotExist", err)
	}
}

// newInstance creates an instance in dir and returns its absolute path
// with symlinks resolved, as os.Getwd reports it.
func newInstance(t *testing.T, dir string) string {
	t.Helper()
	l, err := node.CreateInstance(dir, node.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	real, err := filepath.EvalSymlinks(l.Dir)
	if err != nil {
		t.Fatal(err)
	}
	return real
}

func TestFindInstance(t *testing.T) {
	root, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	outer := newInstance(t, filepath.Join(root, "outer"))
	inner := newInstance(t, filepath.Join(outer, "projects", "inner"))
	other := newInstance(t, filepath.Join(root, "other"))
	empty := filepath.Join(root, "empty")
	if err := os.MkdirAll(filepath.Join(inner, "actions", "deep"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(empty, 0o755); err != nil {
		t.Fatal(err)
	}

	t.Setenv(node.EnvInstance, "")
	find := func(explicit string) string {
		t.Helper()
		l, err := node.FindInstance(explicit)
		if err != nil {
			t.Fatalf("FindInstance(%q): %v", explicit, err)
		}
		return l.Dir
	}

	t.Chdir(filepath.Join(inner, "actions", "deep"))
	if got := find(""); got != inner {
		t.Errorf("from inner/actions/deep: got %s, want the nearest instance %s", got, inner)
	}
	t.Chdir(filepath.Join(outer, "projects"))
	if got := find(""); got != outer {
		t.Errorf("from outer/projects: got %s, want %s", got, outer)
	}
	t.Chdir(outer)
	if got := find(""); got != outer {
		t.Errorf("from outer itself: got %s, want %s", got, outer)
	}
	if got := find(other); got != other {
		t.Errorf("explicit dir: got %s, want %s", got, other)
	}
	// A relative explicit directory is resolved against the working directory.
	if got := find(filepath.Join("projects", "inner")); got != inner {
		t.Errorf("relative explicit dir: got %s, want %s", got, inner)
	}

	t.Setenv(node.EnvInstance, other)
	if got := find(""); got != other {
		t.Errorf("with %s set: got %s, want %s", node.EnvInstance, got, other)
	}
	if got := find(inner); got != inner {
		t.Errorf("explicit dir must win over %s: got %s, want %s", node.EnvInstance, got, inner)
	}

	t.Setenv(node.EnvInstance, empty)
	if _, err := node.FindInstance(""); !errors.Is(err, node.ErrNoInstance) {
		t.Errorf("%s naming a non-instance: got %v, want ErrNoInstance", node.EnvInstance, err)
	}

	t.Setenv(node.EnvInstance, "")
	if _, err := node.FindInstance(empty); !errors.Is(err, node.ErrNoInstance) {
		t.Errorf("explicit non-instance: got %v, want ErrNoInstance", err)
	}
	t.Chdir(empty)
	_, err = node.FindInstance("")
	if !errors.Is(err, node.ErrNoInstance) {
		t.Fatalf("no instance anywhere: got %v, want ErrNoInstance", err)
	}
	errorsContain(t, err, empty, node.EnvInstance)
}
