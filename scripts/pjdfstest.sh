#!/usr/bin/env bash
# pjdfstest.sh DIR [SECONDARY] -- POSIX conformance of the file system holding DIR: pjdfstest
# (crate `pjdfstest`, 0.2.2, installed by scripts/setup.sh) with the configuration of the shared
# conformance script (Linux feature set, naptime 1.0, dummy users nobody and tests). SECONDARY,
# a directory on another file system, enables the two EXDEV tests.
#
# Prints the failing tests, then "pjdfstest passed=N failed=N skipped=N seconds=N" last.
# Exit status: 0 when nothing failed, 1 when a test failed (or passed unexpectedly) or the run
# did not complete, 2 on usage or setup errors. Every skip is explained in docs/posix.md.
# Needs root (pjdfstest switches users) and, on a FUSE mount, allow_other.
set -uo pipefail
if [[ $# -lt 1 ]]; then echo "usage: $0 DIR [SECONDARY]" >&2; exit 2; fi
DIR=$1; SECONDARY=${2:-}
[[ $EUID -eq 0 ]] || { echo "pjdfstest.sh: must run as root" >&2; exit 2; }
[[ -d "$DIR" ]] || { echo "pjdfstest.sh: $DIR is not a directory" >&2; exit 2; }
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
command -v pjdfstest >/dev/null || { echo "pjdfstest.sh: pjdfstest not found (run scripts/setup.sh)" >&2; exit 2; }

# pjdfstest switches its effective user to these.
NOBODY_GROUP=$(id -gn nobody 2>/dev/null) || { echo "pjdfstest.sh: no user nobody" >&2; exit 2; }
if ! getent passwd tests >/dev/null; then
  getent group tests >/dev/null || groupadd --system tests
  useradd --system -g tests -d / -s /usr/sbin/nologin -c "Dummy User for pjdfstest" tests
fi
TESTS_GROUP=$(id -gn tests)

# Short: pjdfstest binds unix sockets several levels below it (sun_path holds 107 bytes).
W="$DIR/pjd.$$"
(( ${#W} <= 47 )) || { echo "pjdfstest.sh: $W is longer than 47 bytes (unix socket paths)" >&2; exit 2; }
OUT=$(mktemp -d /tmp/pjdfstest.XXXXXX)
cleanup() { rm -rf "$W"; [[ -n "${PJD_KEEP:-}" ]] || rm -rf "$OUT"; }
trap cleanup EXIT
mkdir -p "$W" && chmod 0755 "$W" || exit 2
runuser -u nobody -- test -x "$W/." 2>/dev/null \
  || { echo "pjdfstest.sh: user nobody cannot reach $W (a parent directory's mode, or a FUSE mount without allow_other)" >&2; exit 2; }

# The Linux feature set. Not enabled: chflags, file_flags (BSD), nfsv4_acls, stat_st_birthtime
# (not on Linux). allow_remount=false: the erofs tests remount read-only.
cat > "$OUT/pjdfstest.toml" <<CONF
[features]
posix_fallocate = {}
rename_ctime = {}
utime_now = {}
utimensat = {}

[settings]
naptime = 1.0
allow_remount = false

[dummy_auth]
entries = [
  ["nobody", "$NOBODY_GROUP"],
  ["tests", "$TESTS_GROUP"],
]
CONF
SEC_ARGS=()
[[ -n "$SECONDARY" ]] && SEC_ARGS=(-s "$SECONDARY")

t0=$(date +%s)
( cd "$OUT" && NO_COLOR=1 RUST_BACKTRACE=0 timeout -k 30 1800 pjdfstest -c "$OUT/pjdfstest.toml" "${SEC_ARGS[@]}" -p "$W" ) > "$OUT/pjdfstest.log" 2>&1
rc=$?
secs=$(( $(date +%s) - t0 ))
# Status lines: "NAME<spaces>STATUS".
sed 's/\x1b\[[0-9;]*m//g' "$OUT/pjdfstest.log" | awk '
  /^[A-Za-z0-9_]+::[^ \t]*[ \t]+(ok|FAILED|skipped|failed as expected|PASSED UNEXPECTEDLY)$/ {
    name=$1; st=$0; sub(/^[^ \t]+[ \t]+/, "", st); print name "\t" st }' > "$OUT/results.tsv"
cnt() { awk -F'\t' -v s="$1" '$2==s' "$OUT/results.tsv" | wc -l; }
passed=$(cnt ok); failed=$(( $(cnt FAILED) + $(cnt "PASSED UNEXPECTEDLY") )); skipped=$(cnt skipped)
complete=yes; grep -q '^Summary:' <(sed 's/\x1b\[[0-9;]*m//g' "$OUT/pjdfstest.log") || complete=no
awk -F'\t' '$2=="FAILED" || $2=="PASSED UNEXPECTEDLY" { print "pjdfstest failed " $1 }' "$OUT/results.tsv"
if [[ -n "${PJD_SHOW_SKIPPED:-}" ]]; then
  awk -F'\t' '$2=="skipped" { print "pjdfstest skipped " $1 }' "$OUT/results.tsv"
fi
if [[ $complete == no ]]; then
  echo "pjdfstest did not complete (rc=$rc); last lines of its log:"; tail -20 "$OUT/pjdfstest.log"
fi
echo "pjdfstest passed=$passed failed=$failed skipped=$skipped seconds=$secs"
[[ $failed -eq 0 && $complete == yes && $passed -gt 0 ]]
