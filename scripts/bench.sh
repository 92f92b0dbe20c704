#!/usr/bin/env bash
# The benchmark beside the peers (issue 15): ../shared/bench/fsbench.sh and scripts/bench-extra.sh
# on a fresh `tessera dev --meta-servers 3` mount (3 replicas, release build) and, interleaved in
# the same run, on a local directory, bindfs, MooseFS and JuiceFS
# (`PEERS_ONLY="local bindfs mfs juicefs" ../shared/bench/peers-setup.sh`), BENCH_ROUNDS rounds
# (default 3). Prints the table of medians with Tessera's ratio to the best peer per row, and
# writes it to OUT_DIR/table.md; every measurement is in OUT_DIR/results.tsv.
#
# Usage: scripts/bench.sh [OUT_DIR]        (root; needs fio, git, fsx; installs fio and the peers)
# Knobs: BENCH_ROUNDS (3), BENCH_TARGETS ("tessera local bindfs mfs juicefs"), BENCH_EXTRA=0 to
# run fsbench only, BENCH_LSL_FILES (100000; `ls -l` of that many entries, round 1 only), and
# those of fsbench.sh and bench-extra.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
bench=${BENCH_DIR:-$here/../../shared/bench}
out=${1:-/var/tmp/tessera-bench-$(date -u +%Y%m%dT%H%M%SZ)}
rounds=${BENCH_ROUNDS:-3}
targets=${BENCH_TARGETS:-tessera local bindfs mfs juicefs}
mkdir -p "$out"
work=$(mktemp -d /var/tmp/tessera-bench.XXXXXX)
mnt="$work/mnt"
command -v fio >/dev/null || apt-get install -y fio >/dev/null
peers=$(echo "$targets" | tr ' ' '\n' | grep -v '^tessera$' | paste -sd' ' || true)

dev=
cleanup() {
  [[ -n "$dev" ]] && { kill -TERM "$dev" 2>/dev/null || true; wait "$dev" 2>/dev/null || true; }
  mountpoint -q "$mnt" && umount -l "$mnt" || true
  rm -rf "$work"
  [[ -n "$peers" ]] && bash "$bench/peers-teardown.sh" >/dev/null 2>&1 || true
}
trap cleanup EXIT

if [[ " $targets " == *" tessera "* ]]; then
  "$TESSERA_BIN/tessera" dev "$mnt" --data-dir "$work/data" --meta-servers 3 --gc-grace 30 > "$work/dev.log" 2>&1 &
  dev=$!
  for _ in $(seq 300); do mountpoint -q "$mnt" && break; sleep 0.2; done
  mountpoint -q "$mnt" || { cat "$work/dev.log"; exit 1; }
fi
[[ -n "$peers" ]] && PEERS_ONLY="$peers" bash "$bench/peers-setup.sh" > "$out/peers-setup.log" 2>&1

dir_of() {
  case $1 in
    tessera) echo "$mnt" ;;
    local) echo /var/tmp/peers/local ;;
    *) echo "/mnt/$1" ;;
  esac
}
# Peak resident memory (VmHWM, KiB) of the processes that serve a target, summed by role.
peak_mem() {
  local pat
  case $1 in
    tessera) pat='^tessera$' ;;
    bindfs) pat='^bindfs$' ;;
    mfs) pat='^mfs' ;;
    juicefs) pat='^(juicefs|redis-server)' ;;
    *) return 0 ;;
  esac
  for p in /proc/[0-9]*; do
    c=$(cat "$p/comm" 2>/dev/null) || continue
    [[ "$c" =~ $pat ]] || continue
    h=$(awk '/^VmHWM/ {print $2}' "$p/status" 2>/dev/null) || continue
    echo "$c $h"
  done | awk -v l="$1" '{s[$1] += $2} END {for (c in s) printf "%s peak_rss_%s_MiB %.0f MiB\n", l, c, s[c] / 1024}'
}

export FSBENCH_TSV="$out/results.tsv"
for r in $(seq 1 "$rounds"); do
  echo "# round $r $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  for t in $targets; do
    d=$(dir_of "$t")
    mountpoint -q "$d" || [[ $t == local ]] || { echo "$t: $d is not mounted" >&2; continue; }
    FSBENCH_ROUND=$r bash "$bench/fsbench.sh" "$d" "$t"
    if [[ ${BENCH_EXTRA:-1} != 0 ]]; then
      lsl=0; [[ $r == 1 ]] && lsl=${BENCH_LSL_FILES:-100000}
      FSBENCH_ROUND=$r BENCH_LSL_FILES=$lsl bash "$here/bench-extra.sh" "$d" "$t"
    fi
  done
done
for t in $targets; do
  peak_mem "$t" | while read -r label metric value unit; do
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$label" "$metric" "$value" "$unit" end >> "$FSBENCH_TSV"
    echo "$label $metric $value $unit"
  done
done
python3 "$here/lib/bench_table.py" "$FSBENCH_TSV" | tee "$out/table.md"
echo "results: $out"
