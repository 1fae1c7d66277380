package node_test

// The caller's side of remote perform against a peer that breaks the
// protocol, never answers, or is left by its caller (found by review).

import (
	"crypto/ed25519"
	"encoding/binary"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/auth"
	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/wire"
	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
)

// newFakePeer starts a stock libp2p host that poses as a Coattail peer and
// adds it as a peer of n, with a token it signed itself. It answers list
// streams (so that peer add works) and hands each perform stream, once it
// read the hello and the request, to perform, with a function that writes
// raw bytes to it. It returns the peer id as n knows it.
func newFakePeer(t *testing.T, n *node.Node, perform func(s network.Stream, w func(frames ...[]byte))) string {
	t.Helper()
	priv, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	h, err := libp2p.New(libp2p.Identity(priv), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	writer := func(s network.Stream) func(frames ...[]byte) {
		return func(frames ...[]byte) {
			for _, fr := range frames {
				if _, err := s.Write(fr); err != nil {
					return
				}
			}
		}
	}
	ok := wire.AppendFrame(nil, wire.TOK, []byte(`{}`))
	h.SetStreamHandler(wire.ProtoList, func(s network.Stream) {
		defer s.Close()
		r := wire.NewReader(s, 0)
		_, _, _ = r.Next() // hello
		_, _, _ = r.Next() // request
		writer(s)(ok, wire.AppendFrame(nil, wire.TResult, []byte(`{"actions":[]}`)))
	})
	h.SetStreamHandler(wire.ProtoPerform, func(s network.Stream) {
		r := wire.NewReader(s, 0)
		_, _, _ = r.Next()
		_, _, _ = r.Next()
		perform(s, writer(s))
	})

	raw, err := priv.Raw()
	if err != nil {
		t.Fatal(err)
	}
	c := auth.Claims{
		RegisteredClaims: jwt.RegisteredClaims{Issuer: h.ID().String(), ID: uuid.NewString(), IssuedAt: jwt.NewNumericDate(time.Now())},
		Type:             auth.TypeCapability,
		Perform:          []string{">"},
	}
	for _, a := range h.Addrs() {
		c.Addrs = append(c.Addrs, a.String())
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c).SignedString(ed25519.PrivateKey(raw))
	if err != nil {
		t.Fatal(err)
	}
	p, err := n.AddPeer(testCtx(t), tok)
	if err != nil {
		t.Fatalf("adding the fake peer: %v", err)
	}
	return p.ID
}

// A server that breaks the protocol after accepting the hello gets the
// caller an error that names the peer and matches node.ErrPeer, whatever
// it sends: a malformed result or error frame came back as a bare decoding
// error, and a malformed log line was skipped, so the perform succeeded.
func TestRemotePerformAgainstBrokenServer(t *testing.T) {
	b := newTestNode(t)
	ok := wire.AppendFrame(nil, wire.TOK, []byte(`{}`))
	result := wire.AppendFrame(nil, wire.TResult, []byte(`{"output":1}`))
	cases := []struct {
		name   string
		frames [][]byte
	}{
		{"garbage", [][]byte{ok, []byte("HTTP/1.1 200 OK\r\n\r\n")}},
		{"unknown frame type", [][]byte{ok, wire.AppendFrame(nil, wire.Type(200), []byte(`{}`)), result}},
		{"oversized header", [][]byte{ok, append(binary.AppendUvarint(nil, 1<<40), byte(wire.TResult))}},
		{"truncated result", [][]byte{ok, result[:5]}},
		{"malformed result", [][]byte{ok, wire.AppendFrame(nil, wire.TResult, []byte(`{"output":`))}},
		{"result with an unknown key", [][]byte{ok, wire.AppendFrame(nil, wire.TResult, []byte(`{"output":1,"admin":true}`))}},
		{"malformed log line", [][]byte{ok, wire.AppendFrame(nil, wire.TLog, []byte(`{"line":1}`)), result}},
		{"malformed error", [][]byte{ok, wire.AppendFrame(nil, wire.TError, []byte(`nope`))}},
		{"a second OK", [][]byte{ok, ok, result}},
		{"nothing, then close", [][]byte{ok}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pid := newFakePeer(t, b, func(s network.Stream, w func(...[]byte)) {
				w(c.frames...)
				_ = s.Close()
			})
			res, err := perform(testCtx(t), b, pid, "x", `1`)
			if err == nil {
				t.Fatalf("perform against a broken server succeeded: %+v", res)
			}
			if !errors.Is(err, node.ErrPeer) {
				t.Errorf("error %q (%T) does not match node.ErrPeer", err, err)
			}
			if !strings.Contains(err.Error(), pid) {
				t.Errorf("error %q does not name the peer", err)
			}
		})
	}
	// A well-formed answer still works, log lines included.
	pid := newFakePeer(t, b, func(s network.Stream, w func(...[]byte)) {
		w(ok, wire.AppendFrame(nil, wire.TLog, []byte(`{"line":"hi"}`)), result)
		_ = s.Close()
	})
	var lines []string
	res, err := b.Perform(testCtx(t), performReq(pid, "x"), func(l string) { lines = append(lines, l) })
	if err != nil || string(res.Output) != "1" || len(lines) != 1 || lines[0] != "hi" {
		t.Fatalf("well-formed answer: %+v, %v, lines %q", res, err, lines)
	}
}

func performReq(pid, action string) localapi.PerformRequest {
	return localapi.PerformRequest{Peer: pid, Action: action, Input: json.RawMessage(`1`)}
}
