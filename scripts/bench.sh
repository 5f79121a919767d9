#!/usr/bin/env bash
# The benchmark suite in one command: calibrates this machine (one libp2p stream, sled
# batch writes, ed25519 single and batch verification, a bare swarm holding many
# connections), then runs every benchmark (sync, gossip latency and amplification, mempool
# ingest, store import and reopen, relay admission, API under load, connection scale)
# with real nodes on 127.0.0.1, and writes one table of (workload, result, limit, ratio,
# target), a JSON file and two charts (propagation CDF, sync throughput).
#
#   scripts/bench.sh [--quick] [--out DIR] [--write FILE]
#
# Full mode (about half an hour): results in docs/bench/, the table also into the
# summary section of BENCHMARKS.md. --quick (a few minutes, the CI smoke run): results in
# target/bench-quick/ only. Nothing is asserted: a missed target shows as "no".
#
# --quick runs the debug build the tests have just made (dependencies optimised, our
# crates not): a smoke run checks that every benchmark completes and writes its table,
# and a release build of the whole tree would be a third cold build of libp2p in CI
# (about five minutes). Figures worth quoting come from the full, release run.
set -euo pipefail
cd "$(dirname "$0")/.."
for a in "$@"; do
  if [ "$a" = "--quick" ]; then
    exec cargo run -q -p chainmesh-bench -- all "$@"
  fi
done
exec cargo run --release -q -p chainmesh-bench -- all "$@"
