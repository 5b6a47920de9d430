#!/usr/bin/env bash
# Installs what building and testing Ballast needs beyond the Rust toolchain,
# or stops naming the exact command to run. Prints, on stdout, the environment
# to build with (source it: `eval "$(scripts/setup.sh)"`).
#
#   libclang-dev       RocksDB's Rust bindings are generated with bindgen
#   librocksdb-dev     Debian's RocksDB 7.8.3, the version the `rocksdb` crate
#                      0.20.1 bundles: linking it saves a ~25 minute C++ build
#   protobuf-compiler  the etcd-client crate (used by the tests) runs protoc
#   etcd-client        etcdctl, for the black-box tests
#   etcd-server        a real etcd, for the differential tests and benchmarks
#   python3-kubernetes the official Kubernetes Python client, for the API facade's tests
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in libclang-dev librocksdb-dev protobuf-compiler etcd-client etcd-server python3-kubernetes; do
  have_pkg "$pkg" || need+=("$pkg")
done

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
  else
    echo "setup: missing packages: ${need[*]}" >&2
    echo "setup: run:  sudo apt-get update && sudo apt-get install -y ${need[*]}" >&2
    # Without Debian's RocksDB the bundled one is built instead (slow but
    # complete); everything else is required.
    for pkg in "${need[@]}"; do
      [ "$pkg" = librocksdb-dev ] || exit 1
    done
  fi
fi

multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
if [ -e "/usr/lib/$multiarch/librocksdb.so" ] && [ -e /usr/include/rocksdb/db.h ]; then
  echo "export ROCKSDB_LIB_DIR=/usr/lib/$multiarch ROCKSDB_INCLUDE_DIR=/usr/include"
else
  echo "setup: Debian's librocksdb-dev is not installed: RocksDB will be built from source (20+ minutes)" >&2
  echo "unset ROCKSDB_LIB_DIR ROCKSDB_INCLUDE_DIR"
fi
