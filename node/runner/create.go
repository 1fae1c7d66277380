package runner

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// actionTemplate returns its input unchanged. It is a POSIX sh script so
// that it runs on any machine without further set-up.
const actionTemplate = `#!/bin/sh
# Coattail action "{{NAME}}".
#
# Contract:
#   stdin   the input, one JSON value (null when none was given)
#   stdout  the output, one JSON value; print nothing to return null
#   stderr  log lines, one per line (streamed back to a remote caller)
#   exit    0 for success; any other status fails the run and the last
#           stderr line becomes the error message
# The run is killed, with any children, when it exceeds the instance's
# action_timeout, or when stdout exceeds max_output.
#
# Environment:
#   COATTAIL_ACTION    this action's name          COATTAIL_KIND  "action"
#   COATTAIL_CALLER    peer id of the caller, or "local"
#   COATTAIL_INSTANCE  the instance directory (also the working directory)
#   COATTAIL_PEER_ID   this instance's peer id
#   COATTAIL_SOCKET    the running service's control socket
#   COATTAIL_BIN       the coattail binary (also first on PATH)
#
# Peers may be allowed to perform this action remotely: validate the input
# before acting on it.
#
# This template returns its input unchanged.
exec cat
`

// receiverTemplate logs what it received and outputs nothing.
const receiverTemplate = `#!/bin/sh
# Coattail receiver "{{NAME}}": handles messages published by an action this
# instance subscribed to.
#
# Contract:
#   stdin   the published output of the action, one JSON value
#   stdout  not used, whatever it prints (past max_output it is dropped)
#   stderr  log lines, one per line
#   exit    0 when the message was handled; any other status is a failure
#           (retried limits.receiver_retries times, then a dead letter)
# A message is handed to the receiver once (duplicates are dropped), except
# that one it was handling when the service stopped or crashed is handed to
# it again after the restart: for effects that must happen once, record the
# last COATTAIL_SEQUENCE applied per COATTAIL_SUBSCRIPTION (each counts from
# 1) and skip any message at or below it, except a replay from the dead
# letters (COATTAIL_REPLAY=1), which keeps its message's sequence, below
# those handled after it was parked.
#
# Environment:
#   COATTAIL_SUBJECT       the subject the message was published on
#   COATTAIL_PUBLISHER     peer id of the publishing instance
#   COATTAIL_SEQUENCE      the message's sequence number in its subscription
#   COATTAIL_SUBSCRIPTION  the subscription id
#   COATTAIL_HOP           how many receivers this event has cascaded through
#   COATTAIL_REPLAY        1 when replayed from the dead letters
#   COATTAIL_ACTION        this receiver's name        COATTAIL_KIND "receiver"
#   COATTAIL_INSTANCE      the instance directory (also the working directory)
#   COATTAIL_PEER_ID       this instance's peer id
#   COATTAIL_SOCKET        the running service's control socket
#   COATTAIL_BIN           the coattail binary (also first on PATH)
#
# To cascade, perform another action and notify its subscribers, e.g.:
#   coattail action perform --action my.other.action --data "$input" --notify
#
# This template logs what it got and outputs nothing.
input=$(cat | tr '\n' ' ')
echo "received subject=${COATTAIL_SUBJECT} publisher=${COATTAIL_PUBLISHER} sequence=${COATTAIL_SEQUENCE} input=${input}" >&2
`

// Create writes a ready-to-edit /bin/sh program for kind/name into the
// instance directory dir (creating actions/ or receivers/ when missing)
// and returns its path. An action template returns its input unchanged; a
// receiver template logs the subject, publisher, sequence and input to
// stderr and outputs nothing. Create refuses a name that is not a valid
// subject and never overwrites an existing file.
func Create(dir string, kind Kind, name string) (string, error) {
	if err := checkName(kind, name); err != nil {
		return "", err
	}
	tmpl := actionTemplate
	if kind == KindReceiver {
		tmpl = receiverTemplate
	}
	body := strings.ReplaceAll(tmpl, "{{NAME}}", name)

	progDir := filepath.Join(dir, kind.Dir())
	if err := os.MkdirAll(progDir, 0o755); err != nil {
		return "", fmt.Errorf("runner: creating %s: %w", progDir, err)
	}
	path := filepath.Join(progDir, name)
	// O_EXCL makes "refuse to overwrite" hold even against a concurrent
	// create of the same name.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("%w: %s %q (%s); edit or remove it", ErrExists, kind, name, path)
	}
	if err != nil {
		return "", fmt.Errorf("runner: creating %s %q: %w", kind, name, err)
	}
	_, werr := f.WriteString(body)
	// The umask may have removed execute bits the program needs.
	cherr := f.Chmod(0o755)
	cerr := f.Close()
	if err := errors.Join(werr, cherr, cerr); err != nil {
		_ = os.Remove(path) // do not leave a half-written program behind
		return "", fmt.Errorf("runner: writing %s %q: %w", kind, name, err)
	}
	return path, nil
}
