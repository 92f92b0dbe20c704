#!/usr/bin/env bash
# Install what a fresh Debian machine lacks to build and mount Tessera: FUSE 3 and the RocksDB
# build's needs (clang for bindgen, a C++ compiler), and acl and attr (setfacl, getfattr) for
# the xattr tests. Idempotent; asks apt only when needed.
set -euo pipefail
need=()
# The second line: what the end-to-end tests run on a mount (tests/tests/programs.rs, sqlite.rs,
# xattr.rs) and pjdfstest's build (libacl1-dev, listed in its README); the third: what the fault
# scripts use (scripts/fault, scripts/chaos); the fourth: the browser that opens `tessera web`'s
# page in its test (tests/tests/web.rs).
for pkg in fuse3 libclang-dev clang g++ pkg-config make \
           gcc rsync sqlite3 python3 libacl1-dev acl attr \
           nftables conntrack iproute2 e2fsprogs faketime \
           chromium; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
command -v git >/dev/null || need+=(git)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust from https://rustup.rs" >&2
  exit 1
fi
# POSIX conformance (scripts/pjdfstest.sh, run by the conformance test); pinned like the shared
# benchmark scripts.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if [ "$(pjdfstest --version 2>/dev/null | awk '{print $2}')" != "0.2.2" ]; then
  cargo install --locked pjdfstest@0.2.2
fi
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing (load the fuse module: modprobe fuse)" >&2; exit 1; }
# fsx (data-integrity exerciser, the version ../shared/bench/conformance.sh uses): scripts/test.sh runs it.
if ! "${CARGO_HOME:-$HOME/.cargo}/bin/fsx" --version 2>/dev/null | grep -q '0\.3\.2'; then
  cargo install fsx@0.3.2
fi
