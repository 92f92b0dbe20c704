#!/usr/bin/env bash
# Failover of the metadata leader, measured: scripts/failover-bench.sh [KILLS] [OUT]
#
# Three metadata servers under Raft and three chunk servers (scripts/cluster up
# --meta-servers 3, in network namespaces), one mount. A writer creates, writes (4 KiB),
# fsyncs and closes one file after another and logs the time of every acknowledgement. KILLS
# times (default 20): the leader is killed with SIGKILL, and restarted 3 s later. The failover
# time of a kill is the longest gap between two acknowledgements around it (what an
# application sees: from the last write acknowledged before the leader died to the first after). Prints each gap, p50, p90, p99 and max, and a histogram; with
# OUT, writes the gaps there. Afterwards every acknowledged file is read back and checked, and
# `tessera fsck` must be clean. Needs root and the release build.
set -euo pipefail
S="$(cd "$(dirname "$0")" && pwd)"
. "$S/lib/cluster.sh"
KILLS=${1:-20}
OUT=${2:-}
[[ $EUID -eq 0 ]] || die "must run as root"
"$S/cluster" down > /dev/null 2>&1 || true
"$S/cluster" up --hosts 3 --meta-servers 3 --clients 1 > /var/tmp/failover-bench.cluster 2>&1 || { cat /var/tmp/failover-bench.cluster; die "cluster up failed"; }
trap '"$S/cluster" down > /dev/null 2>&1 || true' EXIT
load_state
mnt="$CLUSTER_DIR/client1/mnt"
acks="$CLUSTER_DIR/acks" kills="$CLUSTER_DIR/kills"
mkdir -p "$mnt/fb"
python3 - "$mnt/fb" "$acks" <<'PY' &
import os, sys, time
d, log = sys.argv[1], open(sys.argv[2], "w", buffering=1)
data = os.urandom(4096)
open(sys.argv[2] + ".data", "wb").write(data)
i = 0
while not os.path.exists(d + "/.stop"):
    p = f"{d}/f{i}"
    try:
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        log.write(f"{time.time():.6f} {i}\n")
    except OSError as e:
        log.write(f"# {time.time():.6f} f{i}: {e}\n")
    i += 1
PY
writer=$!
sleep 3
for ((k = 1; k <= KILLS; k++)); do
  l=$(leader_node) || die "no leader before kill $k"
  echo "$(date +%s.%6N) $l" >> "$kills"
  "$S/fault" kill "$l" > /dev/null
  sleep 3
  "$S/fault" restart "$l" > /dev/null
  sleep 3
done
touch "$mnt/fb/.stop"
wait "$writer"
python3 - "$acks" "$kills" "$OUT" <<'PY'
import sys
acks = [float(l.split()[0]) for l in open(sys.argv[1]) if not l.startswith("#")]
errors = [l for l in open(sys.argv[1]) if l.startswith("#")]
# The time is taken just before `fault kill` runs, which takes a few tens of ms to send the
# signal: the stall is the longest gap between two acknowledgements from then to 3 s later.
gaps = []
for line in open(sys.argv[2]):
    t = float(line.split()[0])
    pairs = [(a, b) for a, b in zip(acks, acks[1:]) if b > t and a < t + 3]
    if pairs:
        gaps.append(max(b - a for a, b in pairs))
gaps.sort()
q = lambda p: gaps[min(len(gaps) - 1, int(p * len(gaps)))]
print(f"kills: {len(gaps)}, writes acknowledged: {len(acks)}, failed: {len(errors)}")
print("gaps (s): " + " ".join(f"{g:.2f}" for g in gaps))
print(f"p50 {q(0.5):.2f} s   p90 {q(0.9):.2f} s   p99 {q(0.99):.2f} s   max {gaps[-1]:.2f} s")
for lo in [x / 4 for x in range(0, 16)]:
    n = sum(lo <= g < lo + 0.25 for g in gaps)
    if n:
        print(f"  {lo:4.2f}-{lo + 0.25:4.2f} s  {'#' * n} {n}")
if sys.argv[3]:
    open(sys.argv[3], "w").write("\n".join(f"{g:.3f}" for g in gaps) + "\n")
PY
# Every acknowledged file is there with its bytes; fsck is clean.
python3 - "$acks" "$mnt/fb" <<'PY' || die "acknowledged files are missing or wrong"
import sys
data = open(sys.argv[1] + ".data", "rb").read()
bad = [i for i in (l.split()[1] for l in open(sys.argv[1]) if not l.startswith("#")) if open(f"{sys.argv[2]}/f{i}", "rb").read() != data]
print(f"{len(bad)} acknowledged files missing or wrong" if bad else "every acknowledged file reads back as written")
sys.exit(1 if bad else 0)
PY
admin fsck > /dev/null || die "fsck is not clean"
echo "fsck clean"
