# Shared by scripts/cluster, scripts/fault and scripts/chaos: where a scripted cluster keeps its
# state, how its nodes are named and addressed, and how a node's process is started and stopped.
#
# A node is `meta` (metadata server 1; with several, `meta2`, `meta3`, ... under Raft), `chunkN`
# or `clientN`. In namespace mode each node is a network namespace
# `$NS_PREFIX-NODE` with one address on a bridge that lives in its own namespace
# `$NS_PREFIX-net` (nothing is added to the host's interfaces); in local mode every node listens
# on loopback with its own port.

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$here/env.sh"
export PATH="$TESSERA_BIN:$PATH"
CLUSTER_DIR="${TESSERA_CLUSTER_DIR:-/var/tmp/tessera-cluster}"
NS_PREFIX="${TESSERA_CLUSTER_NS:-ts}"
FAKETIME_LIB="${FAKETIME_LIB:-/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1}"
SUBNET="${TESSERA_CLUSTER_SUBNET:-10.77.0}"
PORT_BASE="${TESSERA_CLUSTER_PORT:-17100}"
META_PORT=7100
CHUNK_PORT=7200

die() { echo "$(basename "$0"): $*" >&2; exit 1; }
say() { echo "$*"; }

# The saved settings of the running cluster (written by `cluster up`).
load_state() {
  [[ -f "$CLUSTER_DIR/state" ]] || die "no cluster in $CLUSTER_DIR (run scripts/cluster up)"
  # shellcheck disable=SC1091
  . "$CLUSTER_DIR/state"
}

ns_of() { echo "$NS_PREFIX-$1"; }

# The address a node is reached at: its bridge address, or loopback with its own port.
node_ip() {
  if [[ "$MODE" == local ]]; then echo 127.0.0.1; return; fi
  case "$1" in
    meta) echo "$SUBNET.2" ;;
    meta[0-9]*) echo "$SUBNET.$((4 + ${1#meta}))" ;;
    admin) echo "$SUBNET.3" ;;
    chunk*) echo "$SUBNET.$((10 + ${1#chunk}))" ;;
    client*) echo "$SUBNET.$((100 + ${1#client}))" ;;
    *) die "unknown node $1" ;;
  esac
}
node_port() {
  case "$1" in
    meta) if [[ "$MODE" == local ]]; then echo "$PORT_BASE"; else echo "$META_PORT"; fi ;;
    meta[0-9]*) if [[ "$MODE" == local ]]; then echo $((PORT_BASE + 90 + ${1#meta})); else echo "$META_PORT"; fi ;;
    chunk*) if [[ "$MODE" == local ]]; then echo $((PORT_BASE + ${1#chunk})); else echo "$CHUNK_PORT"; fi ;;
    *) die "$1 has no port" ;;
  esac
}
node_addr() { echo "$(node_ip "$1"):$(node_port "$1")"; }

# The metadata servers (METAS of them, from the state file): meta, meta2, ...
meta_nodes() {
  echo meta
  local i
  for ((i = 2; i <= ${METAS:-1}; i++)); do echo "meta$i"; done
}
# Their first Raft ids: meta is 1, metaN is N (`fault replace` gives a node a new one).
meta_id() { if [[ "$1" == meta ]]; then echo 1; else echo "${1#meta}"; fi; }
# What --meta takes: every metadata server's address, comma-separated.
meta_list() {
  local n out=()
  for n in $(meta_nodes); do out+=("$(node_addr "$n")"); done
  local IFS=,; echo "${out[*]}"
}
# The metadata server that leads now (as `tessera status` shows it); `meta` when it runs alone.
leader_node() {
  [[ "${METAS:-1}" -gt 1 ]] || { echo meta; return 0; }
  local addr n
  addr=$(admin status --json 2>/dev/null | python3 -c 'import json,sys; print(next(m["addr"] for m in json.load(sys.stdin)["meta_servers"] if m["role"] == "leader"))' 2>/dev/null) || return 1
  for n in $(meta_nodes); do [[ "$(node_addr "$n")" == "$addr" ]] && { echo "$n"; return 0; }; done
  return 1
}

# A metadata server that follows the leader now (running, not leading).
follower_node() {
  local lead n
  lead=$(leader_node) || return 1
  for n in $(meta_nodes); do [[ "$n" != "$lead" ]] && is_running "$n" && { echo "$n"; return 0; }; done
  return 1
}

# Every node name of the cluster, servers first.
all_nodes() {
  meta_nodes
  local i
  for ((i = 1; i <= HOSTS; i++)); do echo "chunk$i"; done
  for ((i = 1; i <= CLIENTS; i++)); do echo "client$i"; done
}

# Run a command in a node's network namespace only: the mount namespace stays the host's, so
# a FUSE mount made there is visible to everyone (`ip netns exec` would make a private one).
in_node() {
  local node=$1; shift
  if [[ "$MODE" == local ]]; then "$@"; else nsenter --net="/run/netns/$(ns_of "$node")" -- "$@"; fi
}
# Admin commands (status, fsck, gc) run from the admin namespace with the admin certificate.
admin() {
  if [[ "$MODE" == local ]]; then
    TESSERA_META="$(meta_list)" TESSERA_CERTS="$CLUSTER_DIR/certs/admin" "$TESSERA_BIN/tessera" "$@"
  else
    TESSERA_META="$(meta_list)" TESSERA_CERTS="$CLUSTER_DIR/certs/admin" in_node admin "$TESSERA_BIN/tessera" "$@"
  fi
}

pid_of() { cat "$CLUSTER_DIR/$1/pid" 2>/dev/null || true; }
# Alive and still the process we started (its command line names our directory).
is_running() {
  local pid; pid=$(pid_of "$1")
  [[ -n "$pid" && -r /proc/$pid/cmdline ]] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF "$CLUSTER_DIR/"
}
# Start a node's saved command line (`cmd`, one argument per line) in the background.
start_node() {
  local node=$1 d="$CLUSTER_DIR/$1"
  is_running "$node" && { echo "$node is already running (pid $(pid_of "$node"))"; return 0; }
  local -a cmd; mapfile -t cmd < "$d/cmd"
  echo "--- start $(date -u +%FT%TZ)" >> "$d/log"
  local -a pre=()
  [[ "$MODE" == local ]] || pre=(nsenter --net="/run/netns/$(ns_of "$node")" --)
  # `fault clock`: the wall clock moved by the offset in `clock`, the monotonic one left alone.
  [[ -s "$d/clock" ]] && pre+=(env LD_PRELOAD="$FAKETIME_LIB" FAKETIME="$(cat "$d/clock")" FAKETIME_DONT_FAKE_MONOTONIC=1)
  setsid "${pre[@]}" "${cmd[@]}" >> "$d/log" 2>&1 < /dev/null &
  local pid=$! i
  echo "$pid" > "$d/pid"
  # Until the background shell has exec'd the command, its cmdline is this script's, and
  # is_running would call the node dead (a loaded machine makes that window long).
  for ((i = 0; i < 100; i++)); do
    is_running "$node" || ! [[ -d /proc/$pid ]] && break
    sleep 0.05
  done
}
# Send a signal to a node's process, if it is ours and alive.
signal_node() {
  local node=$1 sig=$2
  is_running "$node" || return 1
  kill "-$sig" "$(pid_of "$node")"
}
# Wait until a node's process is gone (at most $2 seconds). A zombie counts as gone: it has
# exited and let go of its ports; its reaper (PID 1) may take seconds to collect it.
wait_gone() {
  local node=$1 secs=${2:-10} pid; pid=$(pid_of "$node")
  [[ -z "$pid" ]] && return 0
  local i state
  for ((i = 0; i < secs * 10; i++)); do
    state=$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || return 0
    [[ -z "$state" || "$state" == Z ]] && return 0
    sleep 0.1
  done
  return 1
}
