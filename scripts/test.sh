#!/usr/bin/env bash
# The project's test command: build the binaries the end-to-end tests start, then run every
# test of the workspace. FUSE tests need root and /dev/fuse.
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tessera-target}"

cargo build --release --workspace --bins

# fsx on a real mount, two fixed seeds, every operation (~4 min per 100,000 operations here);
# skipped when the caller picks tests (arguments for nextest).
if [ $# -eq 0 ]; then
    scripts/fsx.sh
fi

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --release --workspace --no-fail-fast "$@"
else
    echo "cargo-nextest not found; falling back to cargo test" >&2
    cargo test --release --workspace --no-fail-fast "$@"
fi

# Faults injected from scripts, every scenario in its short form (docs/faults.md; ~7 min);
# skipped like fsx when the caller picks tests.
if [ $# -eq 0 ]; then
    scripts/chaos all --quick
fi
