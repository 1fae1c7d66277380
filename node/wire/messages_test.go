package wire_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/coattail/coattail/node/wire"
)

// The JSON layouts are part of the protocol (docs/PROTOCOL.md): these
// goldens fail if a field is renamed, retagged or loses omitempty.
func TestJSONGolden(t *testing.T) {
	cases := []struct {
		v    any
		want string
	}{
		{&wire.Hello{Token: "eyJ", Version: "1.0.0"}, `{"token":"eyJ","version":"1.0.0"}`},
		{&wire.OK{}, `{}`},
		{&wire.ListRequest{Receivers: true}, `{"receivers":true}`},
		{&wire.ListRequest{}, `{}`},
		{&wire.ListResponse{Actions: []wire.ActionInfo{{Name: "a.b", Performable: true, Publishable: true, Subscribable: true}, {Name: "c"}}},
			`{"actions":[{"name":"a.b","performable":true,"publishable":true,"subscribable":true},{"name":"c"}]}`},
		{&wire.PerformRequest{Action: "a", Input: json.RawMessage(`{"x":1}`), Notify: true, Hop: 2, To: []string{"12D3K"}},
			`{"action":"a","input":{"x":1},"notify":true,"hop":2,"to":["12D3K"]}`},
		{&wire.PerformRequest{Action: "a"}, `{"action":"a"}`},
		{&wire.Log{Line: "<started> & going"}, `{"line":"<started> & going"}`},
		{&wire.PerformResult{Output: json.RawMessage(`[1]`), Published: 3}, `{"output":[1],"published":3}`},
		{&wire.PublishResult{Accepted: 256, LastSeq: 1024, Published: 512}, `{"accepted":256,"last_seq":1024,"published":512}`},
		{&wire.SubscribeRequest{SubscriptionID: "s", Pattern: "orders.>", Receiver: "r", ResumeAfter: 9, Window: 64},
			`{"subscription_id":"s","pattern":"orders.>","receiver":"r","resume_after":9,"window":64}`},
		{&wire.SubscribeResponse{SubscriptionID: "s", NextSeq: 10, Window: 64}, `{"subscription_id":"s","next_seq":10,"window":64}`},
		{&wire.UnsubscribeRequest{SubscriptionID: "s"}, `{"subscription_id":"s"}`},
		{&wire.RevokeNotice{SubscriptionID: "s", Reason: "token revoked"}, `{"subscription_id":"s","reason":"token revoked"}`},
		{&wire.DeliverHello{Version: "1.0.0", SubscriptionIDs: []string{"s", "t"}}, `{"version":"1.0.0","subscription_ids":["s","t"]}`},
		{&wire.Error{Code: wire.CodeRateLimited, Message: "m", RetryAfterMs: 250}, `{"code":"rate_limited","message":"m","retry_after_ms":250}`},
		{&wire.Error{Code: wire.CodeForbidden, Message: "m"}, `{"code":"forbidden","message":"m"}`},
	}
	for _, c := range cases {
		var buf bytes.Buffer
		w := wire.NewWriter(&buf)
		if err := w.JSON(wire.TRequest, c.v); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		_, payload, err := wire.NewReader(&buf, 0).Next()
		if err != nil {
			t.Fatal(err)
		}
		if string(payload) != c.want {
			t.Errorf("%T:\n got %s\nwant %s", c.v, payload, c.want)
			continue
		}
		// And back: the decoded value equals the original.
		back := reflect.New(reflect.TypeOf(c.v).Elem()).Interface()
		if err := wire.DecodeJSON(payload, back); err != nil {
			t.Fatalf("%T: decode: %v", c.v, err)
		}
		if !reflect.DeepEqual(back, c.v) {
			t.Errorf("%T: decoded %+v, want %+v", c.v, back, c.v)
		}
	}
}

func TestDecodeJSONStrict(t *testing.T) {
	cases := map[string]string{
		"unknown field":  `{"token":"t","version":"1.0.0","admin":true}`,
		"trailing value": `{"token":"t"}{"token":"u"}`,
		"trailing junk":  `{"token":"t"} x`,
		"empty":          ``,
		"blank":          "  \n",
		"truncated":      `{"token":`,
		"wrong type":     `{"token":5}`,
		"not an object":  `[1,2]`,
	}
	for name, in := range cases {
		var h wire.Hello
		if err := wire.DecodeJSON([]byte(in), &h); !errors.Is(err, wire.ErrMalformed) {
			t.Errorf("%s: got %v, want ErrMalformed", name, err)
		}
	}
	var h wire.Hello
	if err := wire.DecodeJSON([]byte(" {\"token\":\"t\",\"version\":\"v\"}\n"), &h); err != nil || h.Token != "t" || h.Version != "v" {
		t.Fatalf("surrounding whitespace refused: %+v %v", h, err)
	}
}

func TestErrorMessages(t *testing.T) {
	e := wire.Errorf(wire.CodeForbidden, "no %s permission on %q", "perform", "orders.created")
	if got, want := e.Error(), `remote: forbidden: no perform permission on "orders.created"`; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	rl := &wire.Error{Code: wire.CodeRateLimited, Message: "too fast", RetryAfterMs: 1500}
	if got, want := rl.Error(), "remote: rate_limited: too fast (retry after 1.5s)"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got := (&wire.Error{Code: wire.CodeInternal}).Error(); got != "remote: internal" {
		t.Fatalf("empty message: %q", got)
	}
	if got, want := (&wire.Error{Code: wire.CodeTooLarge, Message: "too big", Item: 3}).Error(), "remote: too_large: too big (publication 3 of the batch)"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}

	wrapped := fmt.Errorf("perform: %w", e)
	if !wire.IsCode(wrapped, wire.CodeForbidden) || wire.IsCode(wrapped, wire.CodeNotFound) || wire.IsCode(errors.New("x"), wire.CodeForbidden) {
		t.Fatal("IsCode does not follow the code through wrapping")
	}
	if !errors.Is(&wire.Error{Code: wire.CodeVersion}, wire.ErrVersion) || errors.Is(e, wire.ErrVersion) {
		t.Fatal("only CodeVersion errors should match ErrVersion")
	}
}

// Error.Item (publish 1.3.0) goes over the wire in an error frame, and an
// error frame without it (an older acceptor) still decodes, with Item 0.
func TestErrorItemOnTheWire(t *testing.T) {
	for _, sent := range []string{
		`{"code":"too_large","message":"m","item":7}`,
		`{"code":"too_large","message":"m"}`,
	} {
		var buf bytes.Buffer
		w := wire.NewWriter(&buf)
		if err := w.Frame(wire.TError, []byte(sent)); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		err := wire.NewReader(&buf, 0).Expect(wire.TResult, nil)
		var we *wire.Error
		if !errors.As(err, &we) || we.Code != wire.CodeTooLarge || we.Message != "m" {
			t.Fatalf("%s: decoded as %v", sent, err)
		}
		if want := map[bool]int{true: 7, false: 0}[strings.Contains(sent, "item")]; we.Item != want {
			t.Fatalf("%s: item %d, want %d", sent, we.Item, want)
		}
	}
	// Sent as item, omitted when 0.
	var buf bytes.Buffer
	w := wire.NewWriter(&buf)
	if err := w.JSON(wire.TError, &wire.Error{Code: wire.CodeTooLarge, Message: "m"}); err != nil {
		t.Fatal(err)
	}
	if err := w.JSON(wire.TError, &wire.Error{Code: wire.CodeTooLarge, Message: "m", Item: 2}); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	r := wire.NewReader(&buf, 0)
	for _, want := range []string{`{"code":"too_large","message":"m"}`, `{"code":"too_large","message":"m","item":2}`} {
		_, p, err := r.Next()
		if err != nil || strings.TrimSpace(string(p)) != want {
			t.Fatalf("error frame %q, %v; want %s", p, err, want)
		}
	}
}

func TestVersion(t *testing.T) {
	if err := wire.CheckVersion(wire.ProtoPerform, wire.Version); err != nil {
		t.Fatalf("own version refused: %v", err)
	}
	err := wire.CheckVersion(wire.ProtoPerform, "2.0.0")
	var ve *wire.VersionError
	if !errors.As(err, &ve) || ve.Got != "2.0.0" || ve.Want != wire.Version || !errors.Is(err, wire.ErrVersion) {
		t.Fatalf("got %v", err)
	}
	for _, s := range []string{"2.0.0", "1.0.0", "/coattail/perform/1.0.0", "remote speaks"} {
		if !strings.Contains(err.Error(), s) {
			t.Fatalf("message %q does not mention %q", err.Error(), s)
		}
	}
}

func TestToError(t *testing.T) {
	own := wire.Errorf(wire.CodeNotFound, "no action %q", "x")
	if got := wire.ToError(fmt.Errorf("ctx: %w", own)); got != own {
		t.Fatalf("wrapped *Error not passed through: %v", got)
	}
	got := wire.ToError(wire.CheckVersion(wire.ProtoList, "0.9.0"))
	if got.Code != wire.CodeVersion || !strings.Contains(got.Message, "0.9.0") {
		t.Fatalf("version error: %+v", got)
	}
	got = wire.ToError(errors.New("open /home/secret/data: permission denied"))
	if got.Code != wire.CodeInternal || strings.Contains(got.Message, "secret") {
		t.Fatalf("internal error leaked or misclassified: %+v", got)
	}
}

func TestProtocolIDs(t *testing.T) {
	want := []string{
		"/coattail/list/1.0.0", "/coattail/perform/1.0.0", "/coattail/publish/1.0.0",
		"/coattail/subscribe/1.0.0", "/coattail/unsubscribe/1.0.0", "/coattail/deliver/1.0.0", "/coattail/revoke/1.0.0",
		"/coattail/publish/1.1.0", "/coattail/subscribe/1.1.0", "/coattail/revoke/1.1.0",
		"/coattail/perform/1.1.0", "/coattail/publish/1.2.0", "/coattail/publish/1.3.0",
	}
	if got := wire.Protocols(); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for id, v := range map[string]string{wire.ProtoSubscribe11: "1.1.0", wire.ProtoList: "1.0.0", "/coattail/x/": "", "/other/a/1.0.0": "", "/coattail/list": ""} {
		if got := wire.VersionOf(id); got != v {
			t.Errorf("VersionOf(%q) = %q, want %q", id, got, v)
		}
	}
	if got := wire.Newest(wire.ProtoSubscribe); !reflect.DeepEqual(got, []string{wire.ProtoSubscribe11, wire.ProtoSubscribe}) {
		t.Errorf("Newest(subscribe) = %v, want 1.1.0 then 1.0.0", got)
	}
	if got := wire.Newest(wire.ProtoPublish); !reflect.DeepEqual(got, []string{wire.ProtoPublish13, wire.ProtoPublish12, wire.ProtoPublish11, wire.ProtoPublish}) {
		t.Errorf("Newest(publish) = %v, want 1.3.0, 1.2.0, 1.1.0 then 1.0.0", got)
	}
	if got := wire.Newest(wire.ProtoPerform); !reflect.DeepEqual(got, []string{wire.ProtoPerform11, wire.ProtoPerform}) {
		t.Errorf("Newest(perform) = %v, want 1.1.0 then 1.0.0", got)
	}
	if got := wire.Newest(wire.ProtoList); !reflect.DeepEqual(got, []string{wire.ProtoList}) {
		t.Errorf("Newest(list) = %v, want only 1.0.0", got)
	}
}

// A message is a UTF-8 JSON object: null (which would decode as a zero
// message), other values and invalid UTF-8 are malformed, and a cut JSON
// value does not look like a stream that ended mid-frame.
func TestDecodeJSONObjectsOnly(t *testing.T) {
	for _, in := range []string{`null`, ` null`, `"x"`, `[]`, "{\"subscription_id\":\"a\xffb\"}"} {
		if err := wire.DecodeJSON([]byte(in), new(wire.UnsubscribeRequest)); !errors.Is(err, wire.ErrMalformed) {
			t.Errorf("%q: %v, want ErrMalformed", in, err)
		}
	}
	if err := wire.DecodeJSON([]byte(`{"token":`), new(wire.Hello)); !errors.Is(err, wire.ErrMalformed) || errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("cut value: %v, want ErrMalformed and not io.ErrUnexpectedEOF", err)
	}
	var e wire.Error
	if err := wire.DecodeJSON([]byte(`{"code":"rate_limited","message":"m","retry_after_ms":9223372036854775807}`), &e); err != nil || e.RetryAfter() != time.Hour {
		t.Errorf("retry_after_ms near 2^63: %v, %v; want it clamped to an hour", e.RetryAfter(), err)
	}
}

// A revoke 1.1.0 token notice carries token_id and revoked_at; a 1.0.0
// notice (a subscription) decodes into the same message without them,
// and the strict decoder still refuses keys it does not know.
func TestRevokeNoticeTokenFields(t *testing.T) {
	at := time.Date(2026, 11, 27, 21, 0, 0, 0, time.UTC)
	var buf bytes.Buffer
	w := wire.NewWriter(&buf)
	if err := w.JSON(wire.TRequest, wire.RevokeNotice{TokenID: "t1", RevokedAt: &at, Reason: "token revoked"}); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	_, payload, err := wire.NewReader(&buf, 1<<16).Next()
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"reason":"token revoked","token_id":"t1","revoked_at":"2026-11-27T21:00:00Z"}`; string(payload) != want {
		t.Fatalf("token notice = %s, want %s", payload, want)
	}
	var n wire.RevokeNotice
	if err := wire.DecodeJSON(payload, &n); err != nil || n.TokenID != "t1" || n.RevokedAt == nil || !n.RevokedAt.Equal(at) || n.SubscriptionID != "" {
		t.Fatalf("decoded %+v, %v", n, err)
	}
	n = wire.RevokeNotice{}
	if err := wire.DecodeJSON([]byte(`{"subscription_id":"s1","reason":"token revoked"}`), &n); err != nil || n.SubscriptionID != "s1" || n.TokenID != "" || n.RevokedAt != nil {
		t.Fatalf("1.0.0 notice decoded %+v, %v", n, err)
	}
	for _, in := range []string{`{"subscription_id":"s1","token":"x"}`, `{"token_id":"t1","revoked_at":"yesterday"}`} {
		if err := wire.DecodeJSON([]byte(in), new(wire.RevokeNotice)); !errors.Is(err, wire.ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", in, err)
		}
	}
}
