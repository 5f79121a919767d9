#!/usr/bin/env bash
# Runs every fuzz target of tests/fuzz (cargo fuzz, libFuzzer) for a bounded time.
#
# Usage: scripts/fuzz.sh [--build-only] [--seconds TOTAL] [TARGET...]
#   --build-only     install cargo-fuzz if needed and build the targets, run nothing
#                    (CI builds them at low priority while the tests run)
#   --seconds TOTAL  time shared by the targets run (default 54: 3 s each, for CI)
#   TARGET...        only these targets (default: all, as `cargo fuzz list` gives them)
#
# Each target starts from its committed seeds (tests/fuzz/corpus/<target>, read only) and
# a working corpus under target/fuzz-corpus/<target> that grows from run to run on one
# machine. A crash or a failed check stops the run: libFuzzer's input is saved under
# tests/fuzz/artifacts/<target>/; copy it into tests/fuzz/regressions/<target>/ and it
# becomes a regression test of `cargo test` (tests/it/fuzz.rs) once fixed.
#
# Stable toolchain: no sanitizer (`-s none`; AddressSanitizer needs nightly). Our decoders
# are safe Rust, so what fuzzing looks for here is panics, overflows (checks are on), and
# the targets' own assertions (round trips, caps). Built with `--dev`, whose profile in
# tests/fuzz/Cargo.toml is optimised (opt-level 1) without debug info: 5 min 54 s cold on
# two cores against 10 min 45 s for cargo fuzz's release build, at the same speed
# (block: 149,000 runs/s against 125,000).
set -euo pipefail
cd "$(dirname "$0")/.."

total=54
build_only=
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) total="$2"; shift 2 ;;
    --build-only) build_only=1; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz (about a minute)"
  cargo install cargo-fuzz --locked --version 0.13.2
fi

dir=(--fuzz-dir tests/fuzz)
echo "== building the fuzz targets (coverage instrumentation, tests/fuzz/target)"
cargo fuzz build "${dir[@]}" -s none --dev
[ -z "$build_only" ] || exit 0

if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list "${dir[@]}")
fi
per=$(( total / ${#targets[@]} ))
[ "$per" -ge 1 ] || per=1

printf '%-16s %12s %10s %8s\n' target runs runs/s coverage
for t in "${targets[@]}"; do
  seeds=tests/fuzz/corpus/$t
  [ -d "$seeds" ] || { echo "no seed corpus for fuzz target $t ($seeds)" >&2; exit 1; }
  work=target/fuzz-corpus/$t
  mkdir -p "$work"
  log=target/fuzz-corpus/$t.log
  # -rss_limit_mb: a decoder that allocates beyond its cap shows up as an out-of-memory
  # finding; 2 GiB is far above any cap of ours (8 MiB at most).
  if ! cargo fuzz run "${dir[@]}" -s none --dev "$t" "$work" "$seeds" -- \
      -max_total_time="$per" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz target $t failed; its input is under tests/fuzz/artifacts/$t/" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  printf '%-16s %12s %10s %8s\n' "$t" "${runs:-?}" "${rate:-?}" "${cov:-?}"
done
echo "fuzzing passed: ${#targets[@]} targets, ${per} s each"
