#!/usr/bin/env bash
# The test command: installs what is missing, builds once (debug), runs every
# test: engine unit and property tests, and black-box tests of the real binary
# with etcdctl, the etcd-client crate and a real etcd side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh)"
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
