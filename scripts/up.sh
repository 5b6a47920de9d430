#!/usr/bin/env bash
# Starts Ballast on this machine: builds it (release) and runs `ballast up`,
# a three-member cluster on 127.0.0.1 (client ports 2379, 22379, 32379; peer
# ports 2380, 22380, 32380) with data and logs in .ballast/, kept between
# runs. Ctrl-C stops it. Extra arguments go to `ballast up` (e.g. --fresh).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh)"
cargo build --release --locked --bin ballast
exec target/release/ballast up --dir .ballast "$@"
