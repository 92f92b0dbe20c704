#!/usr/bin/env bash
# Metadata throughput, one metadata server beside a Raft group of three, in one run: two
# `tessera dev` clusters run side by side (idle while the other is measured), and
# `meta-bench` (C concurrent sessions of create, lookup, unlink) is timed against each in turn
# with farm-bench, which prints the ratio pair by pair; each run's own JSON line (operations
# per second, p50 and p99 latency) is kept too.
# Usage: scripts/meta-bench.sh [CLIENTS] [ROUNDS] [RUNS]   (needs root; release build)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
clients=${1:-16} rounds=${2:-100} runs=${3:-5}
work=$(mktemp -d /var/tmp/tessera-meta-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for m in "$work"/m1 "$work"/m3; do mountpoint -q "$m" && umount -l "$m" || true; done
  rm -rf "$work"
}
trap cleanup EXIT
"$TESSERA_BIN/tessera" dev "$work/m1" --data-dir "$work/d1" > "$work/dev1.log" 2>&1 &
pids+=($!)
"$TESSERA_BIN/tessera" dev "$work/m3" --data-dir "$work/d3" --meta-servers 3 > "$work/dev3.log" 2>&1 &
pids+=($!)
for m in m1 m3; do
  for _ in $(seq 300); do mountpoint -q "$work/$m" && break; sleep 0.2; done
  mountpoint -q "$work/$m" || { cat "$work/dev${m#m}.log"; exit 1; }
done
meta_of() { sed -n 's/^TESSERA_META=//p' "$work/$1/cluster.env"; }
cmd() { echo "$TESSERA_BIN/meta-bench --meta $(meta_of "$1") --certs $work/$1/certs/client --clients $clients --rounds $rounds"; }
echo "one metadata server: $(meta_of d1); three: $(meta_of d3)"
# A is the group of three, B the single server: the ratio is three's time over one's.
[[ -n "${META_BENCH_ONCE:-}" ]] && { for d in d1 d3; do echo "$d: $($(cmd $d))"; done; exit 0; }
farm-bench -n "$runs" --timeout 3000 --vs "sh -c 'exec $(cmd d1) >> $work/one.jsonl'" -- sh -c "exec $(cmd d3) >> $work/three.jsonl"
python3 - "$work/one.jsonl" "$work/three.jsonl" <<'EOF'
import json, statistics, sys
for label, path in (("one server", sys.argv[1]), ("three (Raft)", sys.argv[2])):
    rows = [json.loads(l) for l in open(path) if l.startswith("{")]
    med = lambda k: statistics.median(r[k] for r in rows)
    print(f"{label:13} runs {len(rows)}  ops/s median {med('ops_per_s'):8.0f}  p50 {med('p50_us'):6.0f} us  p99 {med('p99_us'):7.0f} us")
EOF
