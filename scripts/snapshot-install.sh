#!/usr/bin/env bash
# Measures a follower catching up by snapshot from a large state: starts a
# three-member Ballast cluster (release build), stops one member, writes
# SIZE_MB MiB of values through the others (the log is compacted behind a
# snapshot every SNAPSHOT_COUNT entries, so the stopped member can only catch
# up from a snapshot), restarts it and times until it has the leader's
# revision and HashKV. Prints one summary line (also as JSON).
#
#   scripts/snapshot-install.sh                 # 1 GiB, about 2-4 minutes
#   SIZE_MB=128 scripts/snapshot-install.sh
#
# Environment (defaults in brackets): SIZE_MB [1024], VALUE_KB [1000],
#   SNAPSHOT_COUNT [64], BASE_PORT [9779] (client ports BASE, BASE+100,
#   BASE+200; peer = client + 1), BENCH_DIR [new temporary directory; must
#   have room for about 6x SIZE_MB], KEEP=1 keeps BENCH_DIR,
#   CATCHUP_TIMEOUT [600] seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SIZE_MB=${SIZE_MB:-1024}
VALUE_KB=${VALUE_KB:-1000}
SNAPSHOT_COUNT=${SNAPSHOT_COUNT:-64}
BASE_PORT=${BASE_PORT:-9779}
CATCHUP_TIMEOUT=${CATCHUP_TIMEOUT:-600}

log() { echo "snapshot-install: $*" >&2; }
die() { log "error: $*"; exit 1; }
command -v jq >/dev/null || die "jq is needed (apt-get install -y jq)"
command -v etcdctl >/dev/null || die "etcdctl is needed (apt-get install -y etcd-client)"

eval "$(scripts/setup.sh)"
cargo build --release -q -p ballast-server -p ballast-benches
BALLAST=$ROOT/target/release/ballast
BENCH=$ROOT/target/release/ballast-bench

DIR=${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/ballast-snapinst.XXXXXX")}
mkdir -p "$DIR"
declare -A PIDS
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] || rm -rf "$DIR"
}
trap cleanup EXIT

port() { echo $((BASE_PORT + 100 * ($1 - 1))); }
CLUSTER=""
for i in 1 2 3; do
  CLUSTER+="${CLUSTER:+,}s$i=http://127.0.0.1:$(($(port "$i") + 1))"
done
start() {
  local i=$1 p
  p=$(port "$i")
  "$BALLAST" --name "s$i" --data-dir "$DIR/s$i" \
    --listen-client-urls "http://127.0.0.1:$p" --advertise-client-urls "http://127.0.0.1:$p" \
    --listen-peer-urls "http://127.0.0.1:$((p + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((p + 1))" \
    --initial-cluster "$CLUSTER" --initial-cluster-token snapinst \
    --initial-cluster-state new --snapshot-count "$SNAPSHOT_COUNT" \
    --experimental-snapshot-catchup-entries 8 \
    --quota-backend-bytes $(((SIZE_MB * 4 + 2048) * 1024 * 1024)) \
    >>"$DIR/s$i.log" 2>&1 &
  PIDS[$i]=$!
}
ctl() { ETCDCTL_API=3 etcdctl --command-timeout=20s --endpoints="127.0.0.1:$(port "$1")" "${@:2}"; }
wait_healthy() {
  local i=$1 deadline=$((SECONDS + 60))
  until ctl "$i" endpoint health >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "member s$i not healthy in 60 s: $(tail -5 "$DIR/s$i.log")"
    sleep 0.2
  done
}

for i in 1 2 3; do start "$i"; done
for i in 1 2 3; do wait_healthy "$i"; done
log "cluster up in $DIR; stopping s3"
kill -TERM "${PIDS[3]}"; wait "${PIDS[3]}" 2>/dev/null || true; unset 'PIDS[3]'

TOTAL=$((SIZE_MB * 1024 / VALUE_KB))
log "writing $TOTAL values of $VALUE_KB KiB through s1 and s2"
t0=$SECONDS
"$BENCH" put --endpoints "127.0.0.1:$(port 1),127.0.0.1:$(port 2)" --clients 4 --conns 2 \
  --key-size 16 --val-size $((VALUE_KB * 1024)) --key-space-size "$TOTAL" --sequential-keys \
  --total "$TOTAL" --timeout 30s --progress-interval 0 >"$DIR/put.txt"
log "written in $((SECONDS - t0)) s: $(tail -1 "$DIR/put.txt")"
ctl 1 compact "$(ctl 1 endpoint status -w json | jq '.[0].Status.header.revision')" >/dev/null
LEADER_REV=$(ctl 1 endpoint status -w json | jq '.[0].Status.header.revision')
SNAP=$(ls -S "$DIR"/s1/member/raft-snapshots/*.snap 2>/dev/null | head -1 || true)
SNAP_BYTES=$([ -n "$SNAP" ] && stat -c %s "$SNAP" || echo 0)
log "revision $LEADER_REV; s1's largest snapshot file: $SNAP_BYTES bytes"

log "restarting s3"
t1=$(date +%s.%N)
start 3
deadline=$((SECONDS + CATCHUP_TIMEOUT))
while :; do
  rev=$(ctl 3 get x --consistency=s -w json 2>/dev/null | jq '.header.revision' 2>/dev/null || echo 0)
  [ "${rev:-0}" -ge "$LEADER_REV" ] && break
  [ $SECONDS -lt $deadline ] || die "s3 at revision ${rev:-?} after ${CATCHUP_TIMEOUT}s (leader: $LEADER_REV): $(tail -5 "$DIR/s3.log")"
  sleep 0.2
done
t2=$(date +%s.%N)
H1=$(ctl 1 endpoint hashkv -w json | jq '.[0].HashKV.hash')
H3=$(ctl 3 endpoint hashkv -w json | jq '.[0].HashKV.hash')
RSS3=$(awk '/VmHWM/ {print $2}' "/proc/${PIDS[3]}/status")
INSTALLS=$(grep -c -i "install" "$DIR/s3.log" || true)
SECS=$(echo "$t2 - $t1" | bc)
DATA_MB=$(du -sm "$DIR/s3" | cut -f1)
[ "$H1" = "$H3" ] || die "HashKV differs after catch-up: s1 $H1, s3 $H3"
log "s3 caught up to revision $LEADER_REV in $SECS s (snapshot $SNAP_BYTES bytes, s3 peak RSS $((RSS3 / 1024)) MiB, data dir $DATA_MB MiB, HashKV equal)"
echo "{\"size_mb\":$SIZE_MB,\"revision\":$LEADER_REV,\"snapshot_bytes\":$SNAP_BYTES,\"catchup_seconds\":$SECS,\"follower_peak_rss_kib\":$RSS3,\"follower_data_mb\":$DATA_MB,\"hashkv_equal\":true,\"install_log_lines\":$INSTALLS}"
