#!/usr/bin/env bash
# bench-extra.sh DIR LABEL: the workloads of issue 15 that ../shared/bench/fsbench.sh does not
# run, on any mounted directory, printed and appended to $FSBENCH_TSV in fsbench's format
# (`LABEL METRIC VALUE UNIT`; TSV: utc, label, metric, value, unit, round).
#
#   randwrite_fdatasync_4k_iops  fio 4 KiB random writes, fdatasync after each, QD1, 64 MiB file
#   dedup_first_MBps             a 1 GiB file of random bytes copied in, then synced
#   dedup_second_MBps            the same bytes copied in again as a second file, synced
#   dedup_second_disk_ratio      bytes the host disk (the file system of /var/tmp, which holds
#                                every target's backing store) grew by for the second copy,
#                                over the file's size: 3 for three plain copies, 0 for dedup
#   git_clone_s                  `git clone --no-local` of a repository of real source files
#   tar_x_s                      `tar -x` of a tarball of the same files, then sync
#   meta_4proc_ops_per_s         4 processes at once, each create+stat+rename+unlink of its own files
#   fsx_ops_per_s                fsx 0.3.2 (conformance.sh's configuration), BENCH_FSX_OPS operations
#   ls_l_s                       `ls -l` of a directory of BENCH_LSL_FILES entries after drop_caches
#                                (only if BENCH_LSL_FILES is not 0; the entries stay until the
#                                target is torn down: deleting 100,000 files is a benchmark too)
#
# Knobs: BENCH_DEDUP_SIZE (1G), BENCH_SRC_FILES (3000), BENCH_META_FILES (1000 per process),
# BENCH_FSX_OPS (2000), BENCH_LSL_FILES (0), BENCH_SRC (/var/tmp/tessera-bench-src: the random
# file, the source tree, its tarball and repository, made once). Needs root, fio, git, fsx.
set -uo pipefail
DIR=$1; LABEL=$2
TSV=${FSBENCH_TSV:-}
SRC=${BENCH_SRC:-/var/tmp/tessera-bench-src}
DEDUP_SIZE=${BENCH_DEDUP_SIZE:-1G}
SRC_FILES=${BENCH_SRC_FILES:-3000}
META_FILES=${BENCH_META_FILES:-1000}
FSX_OPS=${BENCH_FSX_OPS:-2000}
LSL_FILES=${BENCH_LSL_FILES:-0}
W="$DIR/bench-extra.$$"
mkdir -p "$W" || { echo "cannot create $W" >&2; exit 1; }
trap 'rm -rf "$W"' EXIT

emit() {
  echo "$LABEL $1 $2 $3"
  [[ -n "$TSV" ]] && printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$LABEL" "$1" "$2" "$3" "${FSBENCH_ROUND:-}" >> "$TSV"
  return 0
}
dropc() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print('%.3f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$(now)"; }
disk_used() { df -B1 --output=used /var/tmp | tail -1 | tr -d ' '; }

# ---- inputs, made once and kept (the same bytes for every target of a run)
mkdir -p "$SRC"
if [[ ! -s "$SRC/random.bin" ]]; then
  head -c "$DEDUP_SIZE" /dev/urandom > "$SRC/random.bin.tmp" && mv "$SRC/random.bin.tmp" "$SRC/random.bin"
fi
if [[ ! -s "$SRC/tree.tar" ]]; then
  # Real source files: whole crates from the cargo registry, in name order, until SRC_FILES.
  rm -rf "$SRC/tree"; mkdir -p "$SRC/tree"
  n=0
  for c in $(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/*/ | sort); do
    cp -r "$c" "$SRC/tree/"
    n=$((n + $(find "$c" -type f | wc -l)))
    (( n >= SRC_FILES )) && break
  done
  tar -C "$SRC" -cf "$SRC/tree.tar" tree
  rm -rf "$SRC/repo.git"
  ( cd "$SRC/tree" && git init -q && git add -A && git -c user.name=bench -c user.email=bench@localhost commit -qm tree ) \
    && git clone -q --bare "$SRC/tree" "$SRC/repo.git"
fi

# ---- 4 KiB random writes, each followed by fdatasync
J=$(mktemp /tmp/bench-extra.XXXXXX.json)
if fio --name=rwsync --directory="$W" --filename=rw.dat --rw=randwrite --bs=4k --size=64M --fdatasync=1 \
     --ioengine=psync --runtime=20 --time_based --output-format=json > "$J" 2>/dev/null; then
  emit randwrite_fdatasync_4k_iops "$(python3 -c "import json,sys; t=open(sys.argv[1]).read(); print('%.0f' % json.loads(t[t.index('{'):])['jobs'][0]['write']['iops'])" "$J")" IOPS
else
  emit randwrite_fdatasync_4k_iops NA IOPS
fi
rm -f "$J" "$W/rw.dat"

# ---- the same 1 GiB twice
size=$(stat -c %s "$SRC/random.bin")
dropc
cat "$SRC/random.bin" > /dev/null   # the source in page cache: the target's write is timed, not our read
# A copy that fails (ENOSPC, say) is NA, not a speed: its time would be that of the failure.
ok=1
t=$(now); { cp "$SRC/random.bin" "$W/copy1" && sync -f "$W/copy1"; } || ok=0; s1=$(since "$t")
sleep 2; sync; before=$(disk_used)
t=$(now); { cp "$SRC/random.bin" "$W/copy2" && sync -f "$W/copy2"; } || ok=0; s2=$(since "$t")
sleep 5; sync; after=$(disk_used)
if [[ $ok == 1 ]]; then
  emit dedup_first_MBps "$(python3 -c "print('%.1f' % ($size / 1e6 / $s1))")" MB/s
  emit dedup_second_MBps "$(python3 -c "print('%.1f' % ($size / 1e6 / $s2))")" MB/s
  emit dedup_second_disk_ratio "$(python3 -c "print('%.2f' % (($after - $before) / $size))")" x
else
  emit dedup_first_MBps NA MB/s; emit dedup_second_MBps NA MB/s; emit dedup_second_disk_ratio NA x
fi
rm -f "$W/copy1" "$W/copy2"

# ---- git clone and tar -x of real source files
dropc
t=$(now); git clone -q --no-local "$SRC/repo.git" "$W/clone" && sync -f "$W/clone" && emit git_clone_s "$(since "$t")" s || emit git_clone_s NA s
dropc
mkdir -p "$W/untar"
t=$(now); tar -C "$W/untar" -xf "$SRC/tree.tar" && sync -f "$W/untar" && emit tar_x_s "$(since "$t")" s || emit tar_x_s NA s
rm -rf "$W/clone" "$W/untar"

# ---- metadata from 4 processes at once
t=$(now)
for p in 1 2 3 4; do
  python3 - "$W/meta$p" "$META_FILES" <<'EOF' &
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.mkdir(d)
for i in range(n):
    os.close(os.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
for i in range(n):
    os.stat(f"{d}/f{i}")
for i in range(n):
    os.rename(f"{d}/f{i}", f"{d}/g{i}")
for i in range(n):
    os.unlink(f"{d}/g{i}")
os.rmdir(d)
EOF
done
ok=1; for p in 1 2 3 4; do wait -n || ok=0; done
s=$(since "$t")
[[ $ok == 1 ]] && emit meta_4proc_ops_per_s "$(python3 -c "print('%.0f' % (4 * 4 * $META_FILES / $s))")" ops/s || emit meta_4proc_ops_per_s NA ops/s

# ---- fsx: the configuration of ../shared/bench/conformance.sh (no hole punching), at least 1 byte
# per operation (see scripts/fsx.sh for why)
cat > "$W/fsx.toml" <<'EOF'
flen = 262144
nomsyncafterwrite = false
nosizechecks = false
blockmode = false
[opsize]
max = 65536
min = 1
align = 1
[weights]
close_open = 1
read = 10
write = 10
mapread = 10
mapwrite = 10
invalidate = 1
truncate = 2
fsync = 1
fdatasync = 1
posix_fallocate = 1
punch_hole = 0
sendfile = 1
posix_fadvise = 1
copy_file_range = 1
EOF
t=$(now)
if NO_COLOR=1 timeout 1800 fsx -N "$FSX_OPS" -S 1 -f "$W/fsx.toml" -P "$W" "$W/fsx.data" > "$W/fsx.log" 2>&1; then
  emit fsx_ops_per_s "$(python3 -c "print('%.0f' % ($FSX_OPS / $(since "$t")))")" ops/s
else
  tail -3 "$W/fsx.log" >&2; emit fsx_ops_per_s NA ops/s
fi

# ---- ls -l of a big directory (left in place: see above)
if [[ "$LSL_FILES" != 0 ]]; then
  big="$DIR/bench-lsl"
  if [[ "$(ls -f "$big" 2>/dev/null | wc -l)" -lt "$LSL_FILES" ]]; then
    python3 - "$big" "$LSL_FILES" <<'EOF'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d, exist_ok=True)
for i in range(n):
    os.close(os.open(f"{d}/entry-{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644))
EOF
  fi
  dropc
  t=$(now); ls -l "$big" > /dev/null && emit ls_l_s "$(since "$t")" s || emit ls_l_s NA s
  emit ls_l_entries "$LSL_FILES" entries
fi
exit 0
