#!/usr/bin/env bash
# Coattail NAT lab: network namespaces with two NAT routers and a public relay.
#
#   scripts/natlab.sh up   [cone|symmetric]   create the lab
#   scripts/natlab.sh down                    remove it
#   scripts/natlab.sh run  [cone|symmetric]   create it, run a relay and two
#                                             instances behind NAT, show a
#                                             subscription crossing both NATs,
#                                             then remove everything
#   scripts/natlab.sh ns   pub|ra|rb|a|b      print a namespace's name
#
# Needs root, iproute2 and iptables. `run` also needs a built coattail
# (COATTAIL_BIN, default bin/coattail). See docs/NAT.md.
#
# Topology (NATLAB_PREFIX, default "ctlab", names the namespaces):
#
#   <p>-a  10.0.1.2 --lan-- <p>-ra 10.0.1.1 | 192.0.0.194 --+
#                            (router A, NAT)                 |
#                                                    <p>-pub br0 192.0.0.193
#                                                    (the "public" segment,
#                                                     where the relay runs)
#                            (router B, NAT)                 |
#   <p>-b  10.0.2.2 --lan-- <p>-rb 10.0.2.1 | 192.0.0.195 --+
#
# Routers masquerade their LAN and silently DROP unsolicited inbound packets
# (a REJECT's RST or ICMP error would abort a TCP hole punch). "cone" keeps
# source ports (endpoint-independent mapping: hole punching works);
# "symmetric" randomises them per connection (MASQUERADE --random-fully:
# hole punching cannot work, traffic stays on the relay).
#
# Why 192.0.0.192/26 for the public segment: libp2p treats RFC 1918 and CGNAT
# ranges as non-public, and then neither hole-punches nor advertises relay
# addresses. 192.0.0.0/24 is IANA's "IETF protocol assignments" block, never
# routed on the Internet, and outside the ranges go-multiaddr calls private or
# unroutable (it lists only 192.0.0.0/26), so libp2p treats it as public.
# It exists only inside the namespaces this script creates: they have no link
# to the host's network, so no lab packet can leave them.
set -Eeuo pipefail

P=${NATLAB_PREFIX:-ctlab}
NAMESPACES=(pub ra rb a b)
PUB_NET=26
RELAY_IP=192.0.0.193
WAN_IP_A=192.0.0.194
WAN_IP_B=192.0.0.195
LAN_A=10.0.1
LAN_B=10.0.2
PORT=4001

die() { echo "natlab: $*" >&2; exit 1; }
ns() { echo "$P-$1"; }
inns() { local n=$1; shift; ip netns exec "$(ns "$n")" "$@"; }

need() {
  [ "$(id -u)" = 0 ] || die "must run as root (it creates network namespaces)"
  command -v ip >/dev/null || die "needs iproute2 (apt-get install -y iproute2)"
  command -v iptables >/dev/null || die "needs iptables (apt-get install -y iptables)"
  [ ${#P} -le 12 ] || die "NATLAB_PREFIX must be at most 12 characters"
}

down() {
  local n
  for n in "${NAMESPACES[@]}"; do
    # Killing what still runs inside keeps `ip netns del` from leaving a
    # namespace alive behind a process.
    if ip netns pids "$(ns "$n")" >/dev/null 2>&1; then
      ip netns pids "$(ns "$n")" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
      ip netns del "$(ns "$n")" 2>/dev/null || true
    fi
  done
}

router() { # namespace nat-kind
  local r=$1 kind=$2
  inns "$r" sysctl -qw net.ipv4.ip_forward=1
  local masq=(-j MASQUERADE)
  [ "$kind" = symmetric ] && masq=(-j MASQUERADE --random-fully)
  inns "$r" iptables -t nat -A POSTROUTING -o wan "${masq[@]}"
  # Forward what the LAN starts and its replies; drop everything else,
  # silently.
  inns "$r" iptables -P FORWARD DROP
  inns "$r" iptables -A FORWARD -i lan -o wan -j ACCEPT
  inns "$r" iptables -A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  inns "$r" iptables -P INPUT DROP
  inns "$r" iptables -A INPUT -i lo -j ACCEPT
  inns "$r" iptables -A INPUT -i lan -j ACCEPT
  inns "$r" iptables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
}

up() {
  local kind=${1:-${NATLAB_NAT:-cone}}
  case $kind in cone | symmetric) ;; *) die "unknown NAT kind $kind (cone or symmetric)" ;; esac
  need
  down
  # A half-built lab is removed, so a failed `up` leaves nothing behind.
  trap 'echo "natlab: up failed; removing the lab" >&2; down' ERR
  local n
  for n in "${NAMESPACES[@]}"; do
    ip netns add "$(ns "$n")"
    inns "$n" ip link set lo up
    inns "$n" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    inns "$n" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
  done

  # The public segment: a bridge whose own address is the relay's.
  inns pub ip link add br0 type bridge
  inns pub ip addr add "$RELAY_IP/$PUB_NET" dev br0
  inns pub ip link set br0 up

  local r wan lan h
  for r in a b; do
    if [ $r = a ]; then wan=$WAN_IP_A lan=$LAN_A; else wan=$WAN_IP_B lan=$LAN_B; fi
    # Each veth pair is created inside the lab namespaces, never in the
    # caller's: router <-> public bridge, host <-> router.
    inns pub ip link add "r$r" type veth peer name wan netns "$(ns "r$r")"
    inns pub ip link set "r$r" master br0 up
    inns "r$r" ip addr add "$wan/$PUB_NET" dev wan
    inns "r$r" ip link set wan up
    inns "r$r" ip link add lan type veth peer name eth0 netns "$(ns $r)"
    inns "r$r" ip addr add "$lan.1/24" dev lan
    inns "r$r" ip link set lan up
    h=$r
    inns "$h" ip addr add "$lan.2/24" dev eth0
    inns "$h" ip link set eth0 up
    inns "$h" ip route add default via "$lan.1"
    router "r$r" "$kind"
  done
  trap - ERR
  cat <<EOF
NAT lab up ($kind NAT), namespaces $P-{pub,ra,rb,a,b}:
  relay     $(ns pub)  $RELAY_IP
  router A  $(ns ra)   $WAN_IP_A -> LAN $LAN_A.0/24
  router B  $(ns rb)   $WAN_IP_B -> LAN $LAN_B.0/24
  host A    $(ns a)    $LAN_A.2
  host B    $(ns b)    $LAN_B.2
Run a command inside: ip netns exec $(ns a) <cmd>.  Remove: $0 down
EOF
}

# run: the whole flow with the coattail binary, as docs/NAT.md describes it.
run() {
  local kind=${1:-${NATLAB_NAT:-cone}}
  # Global, like dir: the EXIT trap uses it.
  bin=${COATTAIL_BIN:-bin/coattail}
  [ -x "$bin" ] || die "build first (make build) or set COATTAIL_BIN"
  bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
  need
  # Global: the EXIT trap runs after this function has returned.
  dir=$(mktemp -d /tmp/ctnat.XXXXXX)
  export COATTAIL_RUNTIME_DIR=$dir/run
  cleanup() {
    local i
    for i in relay a b; do
      [ -d "$dir/$i" ] && "$bin" --instance "$dir/$i" service stop >/dev/null 2>&1 || true
    done
    down
    if [ -n "${NATLAB_KEEP:-}" ]; then echo "natlab: kept $dir" >&2; else rm -rf "$dir"; fi
  }
  trap cleanup EXIT
  up "$kind"

  ct() { local i=$1; shift; "$bin" --instance "$dir/$i" "$@"; }
  setcfg() { # instance key value: replace a top-level-in-section key
    sed -i -E "s|^(  $2:).*|\\1 $3|" "$dir/$1/config.yml"
    # A list value continues on "    - " lines; drop them.
    awk -v k="  $2:" 'skip && /^    - / {next} {skip=0} index($0,k)==1 {skip=1} {print}' "$dir/$1/config.yml" >"$dir/$1/config.tmp"
    mv "$dir/$1/config.tmp" "$dir/$1/config.yml"
  }
  local listen="[/ip4/0.0.0.0/tcp/$PORT, /ip4/0.0.0.0/udp/$PORT/quic-v1]"
  for i in relay a b; do
    "$bin" new "$dir/$i" --port "$PORT" >/dev/null
    setcfg "$i" listen "$listen"
    setcfg "$i" port_mapping false
  done
  local relay_id
  relay_id=$(ct relay token issuer)
  local relay_addr="/ip4/$RELAY_IP/tcp/$PORT/p2p/$relay_id"
  for i in a b; do setcfg "$i" relays "[$relay_addr]"; done

  echo "== relay on the public segment: $relay_addr"
  ip netns exec "$(ns pub)" "$bin" --instance "$dir/relay" service start --headless --relay >/dev/null
  echo "== instances A and B behind their NATs"
  inns a "$bin" --instance "$dir/a" service start --headless >/dev/null
  inns b "$bin" --instance "$dir/b" service start --headless >/dev/null

  wait_for() { # what seconds command...
    local what=$1 secs=$2; shift 2
    local t
    for t in $(seq 1 $((secs * 4))); do
      if "$@" >/dev/null 2>&1; then return 0; fi
      sleep 0.25
    done
    echo "natlab: timed out after ${secs}s waiting for $what" >&2
    return 1
  }
  # service status lists every service of the runtime dir: look only at
  # the object of this instance ("instance" comes before the reservations).
  has_reservation() {
    ct "$1" service status --json | awk -v want="\"$dir/$1\"" '
      /"instance":/ { cur = $2; sub(/,$/, "", cur) }
      /"relay_reservations":/ && cur == want { found = 1 }
      END { exit !found }'
  }
  # libp2p registers its hole-punch handler only once the host has learnt
  # a public address of its own (from the relay's identify); a relayed
  # connection made before that is not upgraded.
  hp_ready() { grep -q 'hole punching ready' "$dir/$1/service.log"; }
  for i in a b; do
    wait_for "$i's relay reservation" 90 has_reservation "$i" || exit 1
    wait_for "$i's hole-punch handler" 90 hp_ready "$i" || exit 1
  done
  ct a service status

  cat >"$dir/a/actions/orders.created" <<'SH'
#!/bin/sh
cat
SH
  cat >"$dir/b/receivers/orders.log" <<'SH'
#!/bin/sh
{ cat; echo; } >>"$COATTAIL_INSTANCE/received.txt"
SH
  chmod +x "$dir/a/actions/orders.created" "$dir/b/receivers/orders.log"
  local a_id token
  a_id=$(ct a token issuer)
  token=$(ct a token issue --performable orders.created --subscribable 'orders.>' --print-raw-token --quiet)
  echo "== A's token carries its relay address:"
  ct a token decode --json "$token" | grep -o '"/ip4/[^"]*p2p-circuit[^"]*"' || true
  echo "== B adds A by token, performs remotely and subscribes"
  ct b peer add --token "$token" >/dev/null
  ct b action perform --peer "$a_id" --action orders.created --data '{"id":0}'
  ct b action subscribe --peer "$a_id" --action 'orders.>' --receiver orders.log
  local i
  for i in 1 2 3; do ct a action perform --quiet --action orders.created --data "{\"id\":$i}" --notify; done
  lines3() { [ -f "$dir/b/received.txt" ] && [ "$(grep -c . "$dir/b/received.txt")" -ge 3 ]; }
  wait_for "B's receiver" 60 lines3 || exit 1
  echo "== B received:"
  cat "$dir/b/received.txt"
  if [ "$kind" = cone ]; then
    direct() { ct b peer show --id "$a_id" --json | grep -q '"connection": *"direct"'; }
    echo "== waiting for the hole punch to upgrade the connection to direct"
    wait_for "a direct connection" 60 direct || true
  fi
  ct b peer show --id "$a_id"
  echo
  echo "NAT lab run complete ($kind)."
}

case ${1:-} in
  up) up "${2:-}" ;;
  down) need; down; echo "NAT lab $P removed." ;;
  run) run "${2:-}" ;;
  ns) [ -n "${2:-}" ] || die "usage: $0 ns pub|ra|rb|a|b"; ns "$2" ;;
  *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
