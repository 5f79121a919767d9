#!/usr/bin/env bash
# A local devnet of chainmesh processes on 127.0.0.1.
#
#   scripts/devnet.sh up N [--authorities K] [--tx-rate R] [--dir D] [--base-port P] [--block-time-ms B]
#   scripts/devnet.sh status [--dir D]
#   scripts/devnet.sh logs I [--dir D]
#   scripts/devnet.sh down [--dir D] [--clean]
#   scripts/devnet.sh screenshot [I] [--out FILE] [--dir D]
#
# `up` writes the network (keys, one genesis, a config per node: `chainmesh devnet-init`)
# unless D already holds one, starts every node that is not running, waits until all are
# connected and the chain grows, and prints each node's API address. Node i serves its API
# on P+i and p2p on P+100+i (P = 7800). Each node dials the two before it on a ring; peer
# exchange and the DHT do the rest. --tx-rate R also starts `chainmesh loadgen` (R valid
# transfers a second from the devnet's funded accounts, spread over every node, for an
# hour; its report goes to D/loadgen.log). `down` stops exactly the processes `up`
# started (by the pid files it wrote) and keeps the data unless --clean. Safe to rerun.
# Every node serves a dashboard at its API address; `screenshot` saves node I's (default
# 0) as a PNG with headless Chromium ($CHROMIUM, else `chromium`), to D/dashboard.png.
# The binary: $CHAINMESH_BIN, else target/release/chainmesh, else target/debug/chainmesh,
# else it is built (cargo build --release --bin chainmesh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

cmd=${1:-}
[ $# -gt 0 ] && shift
n=""
authorities=1
dir="$root/devnet"
base_port=7800
block_time=1000
tx_rate=0
clean=0
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --authorities) authorities=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --base-port) base_port=$2; shift 2 ;;
    --block-time-ms) block_time=$2; shift 2 ;;
    --tx-rate) tx_rate=$2; shift 2 ;;
    --clean) clean=1; shift ;;
    --out) out=$2; shift 2 ;;
    -*) echo "unknown option: $1" >&2; exit 2 ;;
    *) n=$1; shift ;;
  esac
done

bin() {
  if [ -n "${CHAINMESH_BIN:-}" ]; then echo "$CHAINMESH_BIN"
  elif [ -x "$root/target/release/chainmesh" ]; then echo "$root/target/release/chainmesh"
  elif [ -x "$root/target/debug/chainmesh" ]; then echo "$root/target/debug/chainmesh"
  else
    (cd "$root" && cargo build --release --bin chainmesh >&2)
    echo "$root/target/release/chainmesh"
  fi
}

nodes() { # the node folders, in order
  local i=0
  while [ -d "$dir/n$i" ]; do echo "$dir/n$i"; i=$((i + 1)); done
}

running() { # running <node dir>: its process is alive (and is ours)
  local pidf="$1/pid"
  [ -f "$pidf" ] || return 1
  local pid
  pid=$(cat "$pidf")
  kill -0 "$pid" 2>/dev/null && grep -q "run" "/proc/$pid/cmdline" 2>/dev/null
}

api_of() { # api_of <node dir>: from the config
  sed -n '/^\[api\]/,/^\[/s/^listen = "\(.*\)"/\1/p' "$1/config.toml" | head -1
}

get() { # get <host:port> <path>: a GET without curl, through the CLI's own client
  "$BIN" status --api "http://$1" 2>/dev/null
}

height_of() { # height_of <host:port>
  get "$1" | sed -n 's/^height *:* *\([0-9]*\).*/\1/p' | head -1
}

up() {
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] || { echo "usage: devnet.sh up N [--authorities K]" >&2; exit 2; }
  BIN=$(bin)
  if [ ! -f "$dir/devnet.json" ]; then
    "$BIN" devnet-init --dir "$dir" --nodes "$n" --authorities "$authorities" \
      --base-port "$base_port" --block-time-ms "$block_time" >/dev/null
    echo "wrote a $n-node devnet in $dir"
  elif [ "$(nodes | wc -l)" != "$n" ]; then
    echo "$dir holds a devnet of $(nodes | wc -l) nodes; 'down --clean' it first to change the size" >&2
    exit 1
  fi
  for d in $(nodes); do
    if running "$d"; then continue; fi
    nohup "$BIN" --log-format json run --config "$d/config.toml" >>"$d/node.log" 2>&1 &
    echo $! >"$d/pid"
  done
  # Every API answers, and the chain grows.
  local deadline=$((SECONDS + 90))
  for d in $(nodes); do
    until get "$(api_of "$d")" >/dev/null; do
      running "$d" || { echo "$(basename "$d") exited; see $d/node.log" >&2; tail -5 "$d/node.log" >&2; exit 1; }
      [ $SECONDS -lt $deadline ] || { echo "$(basename "$d") API not up" >&2; exit 1; }
      sleep 0.2
    done
  done
  local first
  first=$(api_of "$dir/n0")
  local h0
  h0=$(height_of "$first")
  until [ "$(height_of "$first")" -gt "${h0:-0}" ]; do
    [ $SECONDS -lt $deadline ] || { echo "no block produced" >&2; exit 1; }
    sleep 0.5
  done
  echo "devnet up: $(nodes | wc -l) nodes (each API address serves a dashboard at /)"
  for d in $(nodes); do echo "  $(basename "$d")  http://$(api_of "$d")  pid $(cat "$d/pid")"; done
  if [[ "$tx_rate" =~ ^[0-9]+$ ]] && [ "$tx_rate" -gt 0 ]; then
    if [ -f "$dir/loadgen.pid" ] && kill -0 "$(cat "$dir/loadgen.pid")" 2>/dev/null; then
      echo "load already running (pid $(cat "$dir/loadgen.pid"))"
    else
      local apis
      apis=$(for d in $(nodes); do printf 'http://%s,' "$(api_of "$d")"; done)
      nohup "$BIN" loadgen --api "${apis%,}" --keys "$dir/keys" --rate "$tx_rate" --duration 3600 \
        >>"$dir/loadgen.log" 2>&1 &
      echo $! >"$dir/loadgen.pid"
      echo "load: $tx_rate tx/s (pid $(cat "$dir/loadgen.pid"), report in $dir/loadgen.log)"
    fi
  fi
}

status() {
  BIN=$(bin)
  printf '%-5s %-8s %-22s %8s %6s  %s\n' node process api height peers tip
  for d in $(nodes); do
    local api s h tip peers state=down
    api=$(api_of "$d")
    running "$d" && state=up
    s=$(get "$api" || true)
    h=$(echo "$s" | sed -n 's/^height *:* *\([0-9]*\).*/\1/p' | head -1)
    tip=$(echo "$s" | sed -n 's/^tip *:* *\([0-9a-f]*\).*/\1/p' | head -1)
    peers=$(echo "$s" | sed -n 's/^peers *\([0-9]*\).*/\1/p' | head -1)
    printf '%-5s %-8s %-22s %8s %6s  %s\n' "$(basename "$d")" "$state" "$api" "${h:--}" "${peers:--}" "${tip:0:16}"
  done
}

down() {
  if [ -f "$dir/loadgen.pid" ]; then
    # SIGTERM makes loadgen stop sending, wait a few slots for inclusion and print its
    # report; it still needs the nodes for that, so they stop after it.
    local lg t=0
    lg=$(cat "$dir/loadgen.pid")
    kill -TERM "$lg" 2>/dev/null || true
    while kill -0 "$lg" 2>/dev/null && [ $t -lt 300 ]; do sleep 0.1; t=$((t + 1)); done
    kill -KILL "$lg" 2>/dev/null || true
    rm -f "$dir/loadgen.pid"
  fi
  for d in $(nodes); do
    if running "$d"; then
      kill -TERM "$(cat "$d/pid")" 2>/dev/null || true
    fi
  done
  for d in $(nodes); do
    local t=0
    while running "$d" && [ $t -lt 100 ]; do sleep 0.1; t=$((t + 1)); done
    running "$d" && kill -KILL "$(cat "$d/pid")" 2>/dev/null || true
    rm -f "$d/pid"
  done
  if [ "$clean" = 1 ]; then rm -rf "$dir"; echo "devnet removed ($dir)"; else echo "devnet stopped (data kept in $dir)"; fi
}

screenshot() {
  local i=${n:-0} browser=${CHROMIUM:-chromium}
  local file=${out:-$dir/dashboard.png}
  [ -d "$dir/n$i" ] || { echo "no node n$i in $dir" >&2; exit 1; }
  command -v "$browser" >/dev/null || { echo "no $browser: apt-get install chromium, or set CHROMIUM" >&2; exit 1; }
  local profile
  profile=$(mktemp -d)
  # Virtual time stands still while the page's requests are in flight: 3 s of it is a
  # first render plus a refresh.
  "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
    --user-data-dir="$profile" --window-size=1280,900 --virtual-time-budget=3000 \
    --screenshot="$file" "http://$(api_of "$dir/n$i")/" >/dev/null 2>&1
  rm -rf "$profile"
  [ -s "$file" ] || { echo "no screenshot written" >&2; exit 1; }
  echo "wrote $file"
}

case "$cmd" in
  up) up ;;
  screenshot) screenshot ;;
  status) status ;;
  logs) [ -n "$n" ] || { echo "usage: devnet.sh logs I" >&2; exit 2; }; tail -f "$dir/n$n/node.log" ;;
  down) down ;;
  *) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
