#!/usr/bin/env bash
# Starts Ballast on this machine: builds it (release) and runs a member with
# its data in .ballast/, client URL http://127.0.0.1:2379. Ctrl-C stops it.
# Extra arguments are passed to `ballast` (etcd's flags).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh)"
cargo build --release --locked --bin ballast
echo "try: ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:2379 put hello world" >&2
exec target/release/ballast --name default --data-dir .ballast/default \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 "$@"
