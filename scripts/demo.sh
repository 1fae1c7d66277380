#!/usr/bin/env bash
# Coattail demo: three real instances on loopback in a temp dir.
#   alice publishes orders.*; bob subscribes to orders.> and, for each order,
#   performs his own action with --notify, which carol receives (a cascade).
# Everything listens on 127.0.0.1 only; nothing is left behind.
set -euo pipefail

# The binary of this checkout, built here unless COATTAIL_BIN names one
# (make demo builds it first).
BIN=${COATTAIL_BIN:-}
if [ -z "$BIN" ]; then
  root=$(cd "$(dirname "$0")/.." && pwd)
  command -v go >/dev/null || { echo "demo: go is required to build coattail (or set COATTAIL_BIN)" >&2; exit 1; }
  echo "Building $root/bin/coattail…"
  (cd "$root" && go build -o bin/coattail ./cmd/coattail)
  BIN=$root/bin/coattail
fi
[ -x "$BIN" ] || { echo "demo: $BIN is not an executable" >&2; exit 1; }
ct() { "$BIN" "$@"; }

DIR=$(mktemp -d /tmp/coattail-demo.XXXXXX)
export COATTAIL_RUNTIME_DIR=$DIR/run
cleanup() {
  for i in alice bob carol; do
    [ -d "$DIR/$i" ] && ct --instance "$DIR/$i" service stop >/dev/null 2>&1 || true
  done
  rm -rf "$DIR"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '\033[2m$ %s\033[0m\n' "$*"; }

step "Create three instances (loopback only)"
for i in alice bob carol; do
  ct new "$DIR/$i" --loopback --port 0 | head -2
done

step "Start their services in the background"
for i in alice bob carol; do
  show "coattail --instance $i service start --headless"
  echo "pid $(ct --instance "$DIR/$i" service start --headless)"
done
ct service status

step "alice: an action orders.created (returns its input, plus a log line)"
cat >"$DIR/alice/actions/orders.created" <<'SH'
#!/bin/sh
input=$(cat)
echo "alice is creating an order" >&2
printf '%s\n' "$input"
SH
chmod +x "$DIR/alice/actions/orders.created"
show 'coattail action perform --action orders.created --data {"id":1}'
ct --instance "$DIR/alice" action perform --action orders.created --data '{"id":1,"item":"coffee"}'

step "bob: a receiver that records each order and cascades it to his own action"
cat >"$DIR/bob/receivers/orders.log" <<'SH'
#!/bin/sh
input=$(cat)
echo "seq=$COATTAIL_SEQUENCE subject=$COATTAIL_SUBJECT data=$input" >>"$COATTAIL_INSTANCE/received.txt"
# Cascade: perform bob's own action and notify bob's subscribers.
coattail action perform --quiet --action shipping.requested --data "$input" --notify >/dev/null
SH
cat >"$DIR/bob/actions/shipping.requested" <<'SH'
#!/bin/sh
exec cat
SH
chmod +x "$DIR/bob/receivers/orders.log" "$DIR/bob/actions/shipping.requested"

step "carol: a receiver for bob's shipping requests"
cat >"$DIR/carol/receivers/ship" <<'SH'
#!/bin/sh
input=$(cat)
echo "from=$COATTAIL_PUBLISHER hop=$COATTAIL_HOP data=$input" >>"$COATTAIL_INSTANCE/received.txt"
SH
chmod +x "$DIR/carol/receivers/ship"

ALICE=$(ct --instance "$DIR/alice" token issuer)
BOB=$(ct --instance "$DIR/bob" token issuer)

step "alice issues bob a token: perform orders.created, subscribe to orders.>"
show "coattail token issue --performable orders.created --subscribable 'orders.>' --print-raw-token --quiet"
TOKEN=$(ct --instance "$DIR/alice" token issue --performable orders.created --subscribable 'orders.>' --print-raw-token --quiet)
echo "${TOKEN:0:48}…"
step "bob adds alice with that token (the token carries alice's addresses)"
show "coattail peer add --token <token>"
ct --instance "$DIR/bob" peer add --token "$TOKEN"
ct --instance "$DIR/bob" peer show --id "$ALICE"

step "bob lists and performs alice's action remotely (her log line streams back)"
ct --instance "$DIR/bob" action list --peer "$ALICE"
ct --instance "$DIR/bob" action perform --peer "$ALICE" --action orders.created --data '{"id":2,"item":"tea"}'

step "bob subscribes to alice's orders.> with his receiver orders.log"
ct --instance "$DIR/bob" action subscribe --peer "$ALICE" --action 'orders.>' --receiver orders.log

step "carol subscribes to bob's shipping.requested"
CTOKEN=$(ct --instance "$DIR/bob" token issue --subscribable shipping.requested --print-raw-token --quiet)
ct --instance "$DIR/carol" peer add --token "$CTOKEN" >/dev/null
ct --instance "$DIR/carol" action subscribe --peer "$BOB" --action shipping.requested --receiver ship

step "alice performs orders.created three times with --notify"
for i in 3 4 5; do
  ct --instance "$DIR/alice" action perform --quiet --action orders.created --data "{\"id\":$i}" --notify
done

wait_lines() { # file count
  for _ in $(seq 1 200); do
    [ -f "$1" ] && [ "$(wc -l <"$1")" -ge "$2" ] && return 0
    sleep 0.05
  done
  echo "demo: timed out waiting for $1" >&2
  return 1
}
wait_lines "$DIR/bob/received.txt" 3
wait_lines "$DIR/carol/received.txt" 3
step "bob's receiver ran once per publication, in order:"
cat "$DIR/bob/received.txt"
step "…and the cascade reached carol (hop 1):"
cat "$DIR/carol/received.txt"

step "alice's subscribers"
ct --instance "$DIR/alice" subscribers list

step "alice revokes bob's token: his access ends at once"
ct --instance "$DIR/alice" token revoke --force "$(ct --instance "$DIR/alice" token list --json | grep -m1 '"id"' | cut -d'"' -f4)"
if ct --instance "$DIR/bob" action perform --peer "$ALICE" --action orders.created --data '{}' 2>&1; then
  echo "demo: revoked token still worked" >&2; exit 1
fi

step "…and the subscription made with it is gone on both sides"
for _ in $(seq 1 100); do
  [ "$(ct --instance "$DIR/bob" subscriptions list --json | tr -d '[:space:]')" = "[]" ] && break
  sleep 0.1
done
show "coattail --instance alice subscribers list"; ct --instance "$DIR/alice" subscribers list
show "coattail --instance bob subscriptions list"; ct --instance "$DIR/bob" subscriptions list

step "Stop the services"
for i in alice bob carol; do ct --instance "$DIR/$i" service stop; done
echo
echo "Demo complete."
