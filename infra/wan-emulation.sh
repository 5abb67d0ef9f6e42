#!/usr/bin/env bash
# wan-emulation.sh up|down|status: two "clouds" on one machine.
#
# With root: two network namespaces joined by a veth pair whose addresses exist
# only inside them, each direction shaped by `tc tbf` (RATE below; ~96 Mbit/s
# of 100 measured). Without root: loopback mode, nothing to create; `up` says
# so and exits 0.
#
# This kernel has no netem, so delay, loss and partitions come from
# tandem-wan-proxy on the path. Run it inside cloud A in front of B's leader:
#
#   ip netns exec tandem-b <B's leader, listening on 10.201.0.2:7000>
#   ip netns exec tandem-a build/bin/tandem-wan-proxy --listen 127.0.0.1:7000 \
#       --target 10.201.0.2:7000 --delay-ms 40 --buffer-bytes 4194304 \
#       --control 127.0.0.1:7100 &
#   ip netns exec tandem-a <A's leader, connecting to 127.0.0.1:7000>
#
# Bytes then cross the proxy (40 ms each way, so an 80 ms round trip) and the
# veth (tbf). Drive it from inside the namespace, e.g.
#   ip netns exec tandem-a sh -c 'echo "partition on" | nc -q1 127.0.0.1 7100'
# (commands: partition on|off, reset, delay MS, rate MBIT, loss P, stats).
# In loopback mode run the same proxy without `ip netns exec`, with the
# target on 127.0.0.1 and --rate-mbit for the bandwidth.
#
# Every name and address below can be overridden from the environment (the
# tests do, to use their own namespaces).
set -euo pipefail

NS_A="${TANDEM_NS_A:-tandem-a}"
NS_B="${TANDEM_NS_B:-tandem-b}"
VETH_A="${TANDEM_VETH_A:-tandem-veth-a}" # interface names: at most 15 characters
VETH_B="${TANDEM_VETH_B:-tandem-veth-b}"
ADDR_A="${TANDEM_ADDR_A:-10.201.0.1}" # a /30 that exists only inside NS_A/NS_B
ADDR_B="${TANDEM_ADDR_B:-10.201.0.2}"
PREFIX_LEN=30
RATE="${TANDEM_WAN_RATE:-100mbit}" # per direction, in tc's syntax
BURST=64kb
LATENCY=50ms

usage() {
  cat <<EOF
Usage: $0 up|down|status

  up      create namespaces $NS_A ($ADDR_A) and $NS_B ($ADDR_B), a veth pair, tbf $RATE
          each way (as root; otherwise loopback mode: nothing to do)
  down    delete them (nothing to do if they do not exist)
  status  print what exists
EOF
}

is_root() { [[ "$(id -u)" -eq 0 ]]; }

ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx -- "$1"; }

loopback_note() {
  echo "not root: loopback mode. Nothing to create; run tandem-wan-proxy on 127.0.0.1 with"
  echo "--delay-ms/--rate-mbit for the WAN path."
}

up() {
  if ! is_root; then
    loopback_note
    return 0
  fi
  local ns
  for ns in "$NS_A" "$NS_B"; do
    if ! ns_exists "$ns"; then
      ip netns add "$ns"
    fi
    ip -n "$ns" link set lo up
  done
  if ! ip -n "$NS_A" link show "$VETH_A" >/dev/null 2>&1; then
    # A half-made pair from an interrupted run would make `add` fail.
    ip -n "$NS_B" link del "$VETH_B" >/dev/null 2>&1 || true
    ip link add "$VETH_A" netns "$NS_A" type veth peer name "$VETH_B" netns "$NS_B"
  fi
  ip -n "$NS_A" addr replace "$ADDR_A/$PREFIX_LEN" dev "$VETH_A"
  ip -n "$NS_B" addr replace "$ADDR_B/$PREFIX_LEN" dev "$VETH_B"
  ip -n "$NS_A" link set "$VETH_A" up
  ip -n "$NS_B" link set "$VETH_B" up
  ip netns exec "$NS_A" tc qdisc replace dev "$VETH_A" root tbf rate "$RATE" burst "$BURST" \
    latency "$LATENCY"
  ip netns exec "$NS_B" tc qdisc replace dev "$VETH_B" root tbf rate "$RATE" burst "$BURST" \
    latency "$LATENCY"
  echo "up: $NS_A $VETH_A $ADDR_A/$PREFIX_LEN <-> $NS_B $VETH_B $ADDR_B/$PREFIX_LEN, tbf $RATE each way"
}

down() {
  if ! is_root; then
    echo "not root: loopback mode, nothing to remove"
    return 0
  fi
  local ns
  for ns in "$NS_A" "$NS_B"; do
    if ns_exists "$ns"; then
      ip netns del "$ns" # takes its end of the veth pair with it
      echo "deleted namespace $ns"
    fi
  done
}

status() {
  if ! is_root; then
    echo "mode: loopback (not root)"
    return 0
  fi
  local ns dev addr
  for ns in "$NS_A" "$NS_B"; do
    if [[ "$ns" == "$NS_A" ]]; then dev="$VETH_A" addr="$ADDR_A"; else dev="$VETH_B" addr="$ADDR_B"; fi
    if ! ns_exists "$ns"; then
      echo "$ns: absent"
      continue
    fi
    echo "$ns: present"
    if ip -n "$ns" link show "$dev" >/dev/null 2>&1; then
      echo "  $dev: $(ip -n "$ns" -br addr show dev "$dev" | awk '{$1=""; print $0}' | xargs)"
      echo "  qdisc: $(ip netns exec "$ns" tc qdisc show dev "$dev" | head -n1)"
    else
      echo "  $dev: absent (expected $addr/$PREFIX_LEN)"
    fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
