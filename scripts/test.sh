#!/usr/bin/env bash
# The test command: installs what is missing, builds once (debug), runs every
# test: engine unit and property tests, and black-box tests of the real binary
# with etcdctl, the etcd-client crate and a real etcd side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh)"
# A `ballast` with deliberate bugs (the fault-injection feature), for the
# test that proves the jepsen harness catches them; built first, because
# the workspace build then puts the normal binary back in place.
cargo build -p ballast-server --features fault-injection --locked
target_dir=$(cargo metadata --format-version 1 --no-deps --locked | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
cp "$target_dir/debug/ballast" "$target_dir/debug/ballast-fault-injection"
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
