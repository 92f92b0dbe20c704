#!/usr/bin/env bash
# Install what a fresh Debian machine lacks to build and mount Tessera: FUSE 3 and the RocksDB
# build's needs (clang for bindgen, a C++ compiler), and acl and attr (setfacl, getfattr) for
# the xattr tests. Idempotent; asks apt only when needed.
set -euo pipefail
need=()
for pkg in fuse3 libclang-dev clang g++ pkg-config make acl attr; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust from https://rustup.rs" >&2
  exit 1
fi
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing (load the fuse module: modprobe fuse)" >&2; exit 1; }
