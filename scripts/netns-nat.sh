#!/usr/bin/env bash
# Builds (and tears down) a small internet in network namespaces, for NAT tests and
# demos. Needs root, iproute2 and iptables. Nothing outside the namespaces is touched:
# every interface is created inside them, and no address is added to the host.
#
#   scripts/netns-nat.sh up   [--prefix P] [--lan-nodes N] [--symmetric]
#   scripts/netns-nat.sh down [--prefix P]
#   scripts/netns-nat.sh list [--prefix P]
#
# Topology (P defaults to "cm"):
#
#   P-pub   the public segment: bridge br0, 10.77.0.1/24 (run the bootstrap/relay here)
#   P-ra    NAT router of LAN A: wan 10.77.0.11/24 on br0, lan bridge 10.77.1.1/24
#   P-rb    NAT router of LAN B: wan 10.77.0.12/24 on br0, lan bridge 10.77.2.1/24
#   P-a1..  nodes on LAN A: 10.77.1.11, .12, ... (default route via the router)
#   P-b1..  nodes on LAN B: 10.77.2.11, .12, ...
#
# The routers masquerade what leaves through wan and drop unsolicited inbound traffic,
# like a home router. By default the mapping keeps the source port when it can
# (endpoint-independent, "cone": hole punching works); --symmetric picks a random port
# per connection (iptables --random-fully), where hole punching cannot succeed.
# Run a command inside with: ip netns exec P-a1 <command>.
set -euo pipefail

prefix=cm
lan_nodes=2
symmetric=0
cmd=${1:-}
[ $# -gt 0 ] && shift
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --lan-nodes) lan_nodes=$2; shift 2 ;;
    --symmetric) symmetric=1; shift ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

if ! [[ "$prefix" =~ ^[a-z0-9]{1,10}$ ]]; then
  echo "--prefix must be 1-10 characters of [a-z0-9]" >&2
  exit 2
fi
if ! [[ "$lan_nodes" =~ ^[1-9]$ ]]; then
  echo "--lan-nodes must be 1..9" >&2
  exit 2
fi

namespaces() {
  ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${prefix}-(pub|ra|rb|a[1-9]|b[1-9])$" || true
}

down() {
  for ns in $(namespaces); do
    # Processes left inside (nodes of an interrupted test) go with their namespace.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
}

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

router() { # router <side a|b> <lan octet> <wan host>
  local side=$1 octet=$2 host=$3 r="${prefix}-r$1"
  ip netns add "$r"
  in_ns "$r" ip link set lo up
  ip link add wan netns "$r" type veth peer name "r$side" netns "${prefix}-pub"
  in_ns "${prefix}-pub" ip link set "r$side" master br0 up
  in_ns "$r" ip addr add "10.77.0.$host/24" dev wan
  in_ns "$r" ip link set wan up
  in_ns "$r" ip link add lan type bridge
  in_ns "$r" ip addr add "10.77.$octet.1/24" dev lan
  in_ns "$r" ip link set lan up
  in_ns "$r" sysctl -qw net.ipv4.ip_forward=1
  local random=()
  [ "$symmetric" = 1 ] && random=(--random-fully)
  in_ns "$r" iptables -t nat -A POSTROUTING -o wan -j MASQUERADE "${random[@]}"
  in_ns "$r" iptables -A FORWARD -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  in_ns "$r" iptables -A FORWARD -i wan -j DROP
  in_ns "$r" iptables -A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  in_ns "$r" iptables -A INPUT -i wan -j DROP
  for i in $(seq 1 "$lan_nodes"); do
    local n="${prefix}-$side$i"
    ip netns add "$n"
    in_ns "$n" ip link set lo up
    ip link add eth0 netns "$n" type veth peer name "p$i" netns "$r"
    in_ns "$r" ip link set "p$i" master lan up
    in_ns "$n" ip addr add "10.77.$octet.$((10 + i))/24" dev eth0
    in_ns "$n" ip link set eth0 up
    in_ns "$n" ip route add default via "10.77.$octet.1"
  done
}

up() {
  command -v ip >/dev/null || { echo "ip (iproute2) is not installed" >&2; exit 1; }
  command -v iptables >/dev/null || { echo "iptables is not installed" >&2; exit 1; }
  down
  ip netns add "${prefix}-pub"
  in_ns "${prefix}-pub" ip link set lo up
  in_ns "${prefix}-pub" ip link add br0 type bridge
  in_ns "${prefix}-pub" ip addr add 10.77.0.1/24 dev br0
  in_ns "${prefix}-pub" ip link set br0 up
  router a 1 11
  router b 2 12
  echo "up: ${prefix}-pub (10.77.0.1), LAN A behind ${prefix}-ra (10.77.0.11), LAN B behind ${prefix}-rb (10.77.0.12), $lan_nodes node(s) each, $([ "$symmetric" = 1 ] && echo symmetric || echo cone) NAT"
}

case "$cmd" in
  up) up ;;
  down) down ;;
  list) namespaces ;;
  *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
