#!/usr/bin/env bash
# Runs .ci/run in a fresh clone of the committed HEAD, as CI does: anything that is not
# committed (or that the scripts do not install) makes it fail here first.
# Usage: scripts/ci-clean-clone.sh [--keep]
set -euo pipefail
top=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
trap '[ "${1:-}" = "--keep" ] || rm -rf "$work"' EXIT
git clone -q "$top" "$work/chainmesh"
# Reuse the build cache of the working tree when there is one, to save the clean build.
if [ -d "$top/target" ] && [ -z "${CI_COLD:-}" ]; then
  export CARGO_TARGET_DIR="$top/target"
fi
cd "$work/chainmesh"
start=$(date +%s)
CI=true bash .ci/run
echo "clean-clone CI passed in $(( $(date +%s) - start )) s"
