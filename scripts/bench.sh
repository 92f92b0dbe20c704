#!/usr/bin/env bash
# Side-by-side benchmark: the same fsbench workload on a fresh `tessera dev` mount, a plain
# local directory and bindfs (a FUSE passthrough), in one run, so the ratios are comparable on a
# noisy machine. Usage: scripts/bench.sh [OUT_TSV]   (needs root, fio; release build)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
bench=${BENCH_DIR:-$here/../../shared/bench}
out=${1:-/var/tmp/tessera-bench.tsv}
work=$(mktemp -d /var/tmp/tessera-bench.XXXXXX)
mnt="$work/mnt"
"$TESSERA_BIN/tessera" dev "$mnt" --data-dir "$work/data" > "$work/dev.log" 2>&1 &
dev=$!
cleanup() {
  kill -TERM "$dev" 2>/dev/null || true
  wait "$dev" 2>/dev/null || true
  mountpoint -q "$mnt" && umount -l "$mnt" || true
  rm -rf "$work"
  bash "$bench/peers-teardown.sh" >/dev/null 2>&1 || true
}
trap cleanup EXIT
for _ in $(seq 100); do mountpoint -q "$mnt" && break; sleep 0.2; done
mountpoint -q "$mnt" || { cat "$work/dev.log"; exit 1; }
PEERS_ONLY="local bindfs" bash "$bench/peers-setup.sh" >/dev/null 2>&1
export FSBENCH_TSV="$out"
bash "$bench/fsbench.sh" "$mnt" tessera
bash "$bench/fsbench.sh" /var/tmp/peers/local local
bash "$bench/fsbench.sh" /mnt/bindfs bindfs
