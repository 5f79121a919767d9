#!/usr/bin/env bash
# Checks Cargo.lock against the RustSec advisory database shipped in the repository
# (.ci/advisory-db.tar.gz, plus our own entries in .ci/advisories/ for advisories the
# snapshot lacks). Runs offline: CI has no access to GitHub.
#
#   scripts/audit.sh            # audit (installs cargo-audit if it is missing)
#   scripts/audit.sh --refresh DIR
#       rebuilds .ci/advisory-db.tar.gz from DIR, a clone of
#       https://github.com/rustsec/advisory-db (do this when a network is at hand)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--refresh" ]; then
  src=${2:?usage: scripts/audit.sh --refresh DIR}
  git -C "$src" archive --format=tar.gz --prefix=advisory-db/ HEAD crates rust LICENSE.txt README.md \
    > .ci/advisory-db.tar.gz
  echo "advisory-db.tar.gz rebuilt from $(git -C "$src" log -1 --format='%H (%cs)')"
  exit 0
fi

if ! command -v cargo-audit >/dev/null; then
  # Without binary scanning (we audit the lockfile, not binaries) and unoptimised: the
  # tool reads a few hundred advisories, and its build is most of this step's time.
  echo "== installing cargo-audit (crates.io)"
  cargo install cargo-audit --locked --quiet --no-default-features --debug
fi

db=target/advisory-db
rm -rf "$db"
mkdir -p target
tar -xzf .ci/advisory-db.tar.gz -C target
cp -r .ci/advisories/crates/. "$db/crates/"
echo "== cargo audit against the shipped database ($(find "$db/crates" -name '*.md' | wc -l) advisories)"
cargo audit --db "$db" --no-fetch --file Cargo.lock "$@"
