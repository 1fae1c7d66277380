package runner

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
)

func TestCreatedActionReturnsItsInput(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	path, err := Create(dir, KindAction, "orders.created")
	if err != nil {
		t.Fatal(err)
	}
	if path != r.Path(KindAction, "orders.created") {
		t.Errorf("Create returned %s, want %s", path, r.Path(KindAction, "orders.created"))
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o755 {
		t.Errorf("mode = %v, want 0755", st.Mode().Perm())
	}
	body, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range []string{"#!/bin/sh", "stdin", "stdout", "stderr", "COATTAIL_CALLER", "COATTAIL_SOCKET"} {
		if !strings.Contains(string(body), doc) {
			t.Errorf("template does not mention %q", doc)
		}
	}

	var logs []string
	in := `{"order":{"id":7,"items":["a","b"]},"note":"multi\nline"}`
	out, err := r.Run(context.Background(), Invocation{
		Kind: KindAction, Name: "orders.created", Input: json.RawMessage(in),
		Log: func(l string) { logs = append(logs, l) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != in {
		t.Errorf("created action returned %s, want its input %s", out, in)
	}
	if len(logs) != 0 {
		t.Errorf("created action logged %q, want nothing", logs)
	}
}

func TestCreatedReceiverLogsWhatItGot(t *testing.T) {
	t.Parallel()
	r, dir := newTestRunner(t, nil)
	if _, err := Create(dir, KindReceiver, "orders.audit"); err != nil {
		t.Fatal(err)
	}
	var logs []string
	out, err := r.Run(context.Background(), Invocation{
		Kind:   KindReceiver,
		Name:   "orders.audit",
		Input:  json.RawMessage("{\n  \"id\": 7\n}"),
		Caller: "12D3KooWPub",
		Env: map[string]string{
			"COATTAIL_SUBJECT":      "orders.created",
			"COATTAIL_PUBLISHER":    "12D3KooWPub",
			"COATTAIL_SEQUENCE":     "42",
			"COATTAIL_SUBSCRIPTION": "sub-1",
		},
		Log: func(l string) { logs = append(logs, l) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "null" {
		t.Errorf("created receiver output %s, want null", out)
	}
	if len(logs) != 1 {
		t.Fatalf("created receiver logged %d lines %q, want 1", len(logs), logs)
	}
	for _, want := range []string{"subject=orders.created", "publisher=12D3KooWPub", "sequence=42", `"id": 7`} {
		if !strings.Contains(logs[0], want) {
			t.Errorf("log line %q lacks %q", logs[0], want)
		}
	}
}

func TestCreateRefusesOverwrite(t *testing.T) {
	t.Parallel()
	_, dir := newTestRunner(t, nil)
	path := writeProgram(t, dir, KindAction, "mine", `echo '"precious"'`)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Create(dir, KindAction, "mine")
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), path) {
		t.Fatalf("err = %v, want ErrExists naming %s", err, path)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(after) != string(before) {
		t.Error("Create changed an existing file")
	}
	// The same name as a receiver is a different program.
	if _, err := Create(dir, KindReceiver, "mine"); err != nil {
		t.Errorf("Create(receiver mine): %v", err)
	}
}

// The receiver template's exactly-once advice holds for a receiver with
// more than one subscription, whose sequences each count from 1, and for
// a dead letter's replay, which keeps its publication's sequence, below
// those that ran after it was parked: the advice used to be to skip any
// sequence at or below the last one applied, which skipped such replays
// and a second subscription's publications.
func TestCreatedReceiverExactlyOnceAdvice(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path, err := Create(dir, KindReceiver, "orders.audit")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(strings.Fields(strings.ReplaceAll(string(b), "#", " ")), " ")
	for _, want := range []string{
		"last COATTAIL_SEQUENCE applied per COATTAIL_SUBSCRIPTION",
		"except a replay from the dead letters (COATTAIL_REPLAY=1)",
		"COATTAIL_REPLAY 1 when replayed from the dead letters",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("receiver template lacks %q:\n%s", want, b)
		}
	}
}
