#!/usr/bin/env bash
# Scale: does Tessera stay as fast with a million files as with ten thousand, and does the
# mount's memory stay flat in file size? On a cluster of real processes (`scripts/cluster up
# --local`: three metadata servers under Raft, three chunk servers, one mount):
#
#   1. memory: the mount's resident memory after writing a 1 GiB and a 100 GiB file, each as
#      64 pieces of 1 MiB spread over its length (sparse), pieces read back and compared;
#   2. for each size in SCALE_STEPS (default 10,000, 100,000 and 1,000,000 files), in one
#      directory and in a tree of 1,000 directories: fill up to that size with `meta-fill`
#      (empty files, created straight at the metadata service, many at once), then on the
#      mount: SCALE_SAMPLE (2,000) creates of 4 KiB files as fsbench makes them (final sync
#      included), `lstat` of as many existing files picked at random after drop_caches, and
#      the unlink of the sample; `ls -l` of the whole directory up to 100,000 entries; the
#      metadata servers' resident memory and on-disk size.
#
# Prints a table (also OUT/table.md) and keeps the raw lines in OUT/scale.tsv.
# Usage: scripts/scale.sh [OUT_DIR]   (root; release build; about 25 minutes here)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
out=${1:-/var/tmp/tessera-scale-$(date -u +%Y%m%d-%H%M%S)}
steps=${SCALE_STEPS:-"10000 100000 1000000"}
sample=${SCALE_SAMPLE:-2000}
mkdir -p "$out"
tsv="$out/scale.tsv"
: > "$tsv"
layouts=${SCALE_LAYOUTS:-"dir tree"}

emit() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" | tee -a "$tsv"; }
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$(cat "$C/$1/pid")/status"; }
dropc() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# A fresh cluster for each layout, so that each starts from an empty file system.
up() {
  export TESSERA_CLUSTER_DIR="$out/cluster-$1"
  C=$TESSERA_CLUSTER_DIR
  "$here/cluster" up --local --meta-servers 3 --hosts 3 --disk-mb 2048 > "$out/up-$1.log" 2>&1 || { cat "$out/up-$1.log"; exit 1; }
  mnt=$C/client1/mnt
  meta=$(sed -n 's/^TESSERA_META=//p' "$C/cluster.env")
  local metas i; metas=$(sed -n 's/^TESSERA_META_SERVERS=//p' "$C/cluster.env")
  meta_nodes=meta; for ((i = 2; i <= metas; i++)); do meta_nodes+=" meta$i"; done
}
down() {
  "$TESSERA_BIN/tessera" fsck --meta "$meta" --certs "$C/certs/admin" > "$out/fsck-$1.log" 2>&1 && emit "$1" fsck clean - || { emit "$1" fsck FAILED -; cat "$out/fsck-$1.log"; }
  "$here/cluster" down > "$out/down-$1.log" 2>&1 || true
  rm -rf "$C"
}
trap '[[ -n "${C:-}" && -d "$C" ]] && "$here/cluster" down > /dev/null 2>&1 || true' EXIT

up memory
# ---- 1. the mount's memory against file size
emit memory mount_rss_start_MiB "$(( $(kib client1 VmRSS) / 1024 ))" MiB
for gib in 1 100; do
  python3 - "$mnt/sparse-$gib" "$gib" <<'EOF'
import os, sys
path, gib = sys.argv[1], int(sys.argv[2])
size, pieces, piece = gib << 30, 64, 1 << 20
step = size // pieces
data = [os.urandom(piece) for _ in range(4)]
fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_RDWR, 0o644)
for k in range(pieces):
    os.pwrite(fd, data[k % 4], k * step + step - piece)
os.fsync(fd); os.close(fd)
assert os.stat(path).st_size == size, "size %d" % os.stat(path).st_size
fd = os.open(path, os.O_RDONLY)
for k in range(pieces):
    assert os.pread(fd, piece, k * step + step - piece) == data[k % 4], "piece %d differs" % k
os.close(fd)
EOF
  emit "memory ${gib}GiB" mount_rss_MiB "$(( $(kib client1 VmRSS) / 1024 ))" MiB
  emit "memory ${gib}GiB" mount_peak_rss_MiB "$(( $(kib client1 VmHWM) / 1024 ))" MiB
  rm -f "$mnt/sparse-$gib"
done
down memory

# ---- 2. metadata at growing sizes
measure() { # LAYOUT DIR HAVE: creates, stats, unlinks of the sample on the mount
  python3 - "$2" "$3" "$sample" "$1" <<'EOF'
import os, random, sys, time
d, have, n, layout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
where = (lambda k: os.path.join(d, "d%d" % (k % 1000))) if layout == "tree" else (lambda k: d)
buf = b"x" * 4096
new = [os.path.join(where(k), "s%d" % k) for k in range(n)]
t0 = time.perf_counter()
for p in new:
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644); os.write(fd, buf); os.close(fd)
os.sync(); t1 = time.perf_counter()
print("creates_per_s %.0f" % (n / (t1 - t0)))
os.sync(); open("/proc/sys/vm/drop_caches", "w").write("3\n")
old = [os.path.join(where(k), "f%d" % k) for k in random.sample(range(have), min(n, have))]
t0 = time.perf_counter()
for p in old: os.lstat(p)
t1 = time.perf_counter()
print("stats_per_s %.0f" % (len(old) / (t1 - t0)))
t0 = time.perf_counter()
for p in new: os.unlink(p)
os.sync(); t1 = time.perf_counter()
print("unlinks_per_s %.0f" % (n / (t1 - t0)))
EOF
}

# Wait (at most 3 minutes) until the metadata servers are idle after a fill: RocksDB compacts
# what the fill wrote in the background, and the measurements should not share the machine
# with it. Prints the seconds waited.
settle() {
  local t0=$SECONDS m before after
  cpu() { for m in $meta_nodes; do awk '{print $14 + $15}' "/proc/$(cat "$C/$m/pid")/stat"; done | awk '{s += $1} END {print s}'; }
  while (( SECONDS - t0 < 180 )); do
    before=$(cpu); sleep 3; after=$(cpu)
    # Under 10% of one core over those 3 seconds (clock ticks of 1/100 s).
    (( after - before < 30 )) && break
  done
  echo $(( SECONDS - t0 ))
}

for layout in $layouts; do
  up "$layout"
  mkdir -p "$mnt/$layout"
  ino=$(stat -c %i "$mnt/$layout")
  tree=(); [[ $layout == tree ]] && tree=(--tree 1000)
  have=0
  for n in $steps; do
    fill=$("$TESSERA_BIN/meta-fill" --meta "$meta" --certs "$C/certs/client1" --dir "$ino" --files $((n - have)) --prefix f --first "$have" "${tree[@]}")
    have=$n
    emit "$layout $n" fill_files_per_s "$(python3 -c 'import json,sys; print("%.0f" % json.loads(sys.argv[1])["files_per_s"])' "$fill")" files/s
    emit "$layout $n" settle_s "$(settle)" s
    measure "$layout" "$mnt/$layout" "$n" | while read -r k v; do emit "$layout $n" "$k" "$v" /s; done
    if [[ $layout == dir && $n -le 100000 ]]; then
      dropc
      t0=$(date +%s.%N); ls -l "$mnt/$layout" > /dev/null; t1=$(date +%s.%N)
      emit "$layout $n" ls_l_s "$(echo "$t1 - $t0" | bc)" s
    fi
    # The largest of the metadata servers, each read once.
    rss=$(for m in $meta_nodes; do kib "$m" VmRSS; done | sort -n | tail -1)
    disk=$(for m in $meta_nodes; do du -sk "$C/$m/data/meta" | cut -f1; done | sort -n | tail -1)
    emit "$layout $n" meta_rss_MiB "$((rss / 1024))" MiB
    emit "$layout $n" meta_disk_MiB "$((disk / 1024))" MiB
    emit "$layout $n" mount_rss_MiB "$(( $(kib client1 VmRSS) / 1024 ))" MiB
  done
  down "$layout"
done

python3 - "$tsv" <<'EOF' | tee "$out/table.md"
import collections, sys
rows = collections.OrderedDict()
for line in open(sys.argv[1]):
    where, k, v, _ = line.rstrip("\n").split("\t")
    rows.setdefault(where, {})[k] = v
keys = ["fill_files_per_s", "settle_s", "creates_per_s", "stats_per_s", "unlinks_per_s", "ls_l_s", "meta_rss_MiB", "meta_disk_MiB", "mount_rss_MiB"]
print("| files | " + " | ".join(keys) + " |")
print("|---" * (len(keys) + 1) + "|")
sized = lambda w: len(w.split()) == 2 and w.split()[1].isdigit() and not w.startswith("memory")
for where, r in rows.items():
    if sized(where):
        print("| %s | %s |" % (where, " | ".join(r.get(k, "–") for k in keys)))
for where, r in rows.items():
    if not sized(where):
        print("%s: %s" % (where, ", ".join("%s %s" % kv for kv in r.items())))
EOF
echo "results: $out"
