# Shared build settings, sourced by the scripts: one target directory outside the clone, so
# the ~20-minute RocksDB build is done once and reused by every build and CI run.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tessera-target}"
TESSERA_BIN="$CARGO_TARGET_DIR/release"
