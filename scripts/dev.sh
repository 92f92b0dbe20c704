#!/usr/bin/env bash
# Quick start: install build needs, build, and run a local cluster mounted at $1 (default ./mnt).
# Ctrl-C unmounts and stops it; run again with the same data directory and every file is back.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
"$here/setup.sh"
cargo build --release --bins --manifest-path "$here/../Cargo.toml"
mnt="${1:-./mnt}"
shift || true
exec "$TESSERA_BIN/tessera" dev "$mnt" "$@"
