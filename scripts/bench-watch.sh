#!/usr/bin/env bash
# Ballast against etcd 3.4 on the two stream workloads of ballast-bench:
# watch-latency (WATCHERS watchers, puts at WATCH_RATE/s) and lease-keepalive
# (KA_RATE keep-alives/s over LEASES leases), on fresh three-member clusters
# run in alternation (ballast, etcd, ballast, ...; never both at once),
# ROUNDS rounds, medians; then the peak RSS (VmHWM) of each member after
# opening IDLE_WATCHERS idle watchers (watch-latency --total 0). Writes OUT.
#
#   scripts/bench-watch.sh            # needs jq, etcdctl, /usr/bin/etcd
#   env: ROUNDS [3] WATCHERS [100] WATCH_TOTAL [1000] WATCH_RATE [100]
#        LEASES [100] KA_TOTAL [10000] KA_RATE [1000] IDLE_WATCHERS [10000]
#        BASE_PORT [9379] OUT [docs/benchmarks-watch-lease.md] ETCD_BIN
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
WATCHERS=${WATCHERS:-100}
WATCH_TOTAL=${WATCH_TOTAL:-1000}
WATCH_RATE=${WATCH_RATE:-100}
LEASES=${LEASES:-100}
KA_TOTAL=${KA_TOTAL:-10000}
KA_RATE=${KA_RATE:-1000}
IDLE_WATCHERS=${IDLE_WATCHERS:-10000}
BASE_PORT=${BASE_PORT:-9379}
OUT=${OUT:-docs/benchmarks-watch-lease.md}
ETCD_BIN=${ETCD_BIN:-/usr/bin/etcd}
# Where cargo builds (CARGO_TARGET_DIR, if set).
BALLAST_BIN=${CARGO_TARGET_DIR:-target}/release/ballast
BENCH=${CARGO_TARGET_DIR:-target}/release/ballast-bench

log() { echo "bench-watch: $*" >&2; }
die() { log "error: $*"; exit 1; }
for t in jq etcdctl; do command -v $t >/dev/null || die "$t is needed"; done
[ -x "$ETCD_BIN" ] || die "no etcd at $ETCD_BIN"
export ROCKSDB_LIB_DIR=${ROCKSDB_LIB_DIR:-/usr/lib/x86_64-linux-gnu} ROCKSDB_INCLUDE_DIR=${ROCKSDB_INCLUDE_DIR:-/usr/include}
cargo build --release -q -p ballast-benches --bin ballast-bench
cargo build --release -q --bin ballast
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-watch.XXXXXX")
RES=$WORK/results.jsonl
PIDS=()
stop_cluster() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_cluster; rm -rf "$WORK"/ballast "$WORK"/etcd' EXIT

cport() { local off=0; [ "$1" = etcd ] && off=300; echo $((BASE_PORT + off + ($2 - 1) * 100)); }
eps() { echo "127.0.0.1:$(cport "$1" 1),127.0.0.1:$(cport "$1" 2),127.0.0.1:$(cport "$1" 3)"; }

start_cluster() { # sys round
  local sys=$1 i ic="" bin=$BALLAST_BIN extra=()
  [ "$sys" = etcd ] && { bin=$ETCD_BIN; extra=(--logger zap --log-outputs stderr); }
  for i in 1 2 3; do ic+="m$i=http://127.0.0.1:$(($(cport "$sys" $i) + 1)),"; done
  rm -rf "${WORK:?}/$sys"; mkdir -p "$WORK/$sys"
  for i in 1 2 3; do
    local c=http://127.0.0.1:$(cport "$sys" $i) p=http://127.0.0.1:$(($(cport "$sys" $i) + 1))
    env -i PATH="$PATH" HOME="${HOME:-/root}" NO_COLOR=1 "$bin" --name m$i --data-dir "$WORK/$sys/m$i" \
      --listen-client-urls "$c" --advertise-client-urls "$c" --listen-peer-urls "$p" \
      --initial-advertise-peer-urls "$p" --initial-cluster "${ic%,}" \
      --initial-cluster-token "bench-$sys" --initial-cluster-state new "${extra[@]}" \
      >"$WORK/$sys-r$2-m$i.log" 2>&1 &
    PIDS+=($!)
  done
  local deadline=$((SECONDS + 60))
  until ETCDCTL_API=3 etcdctl --endpoints="$(eps "$sys")" --dial-timeout=1s --command-timeout=2s \
    endpoint health >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$sys cluster not ready in 60s"
    sleep 0.5
  done
}

run() { # sys round workload args...
  local sys=$1 round=$2 w=$3; shift 3
  local line
  line=$("$BENCH" --endpoints "$(eps "$sys")" --conns 10 --timeout 5s --deadline 120s \
    --progress-interval 0 "$@" 2>>"$WORK/bench.err" | tail -n 1) || true
  [ -n "$line" ] || line='{"failed_run":true}'
  jq -c --arg s "$sys" --arg w "$w" --argjson r "$round" '{system:$s, workload:$w, round:$r, r:.}' <<<"$line" >>"$RES"
  log "$sys r$round $w: $(jq -c '{qps,p50_ms,p99_ms,failed,failed_run}' <<<"$line")"
}

for round in $(seq 1 "$ROUNDS"); do
  for sys in ballast etcd; do
    start_cluster "$sys" "$round"
    run "$sys" "$round" watch-latency --total "$WATCH_TOTAL" --rate "$WATCH_RATE" watch-latency --watchers "$WATCHERS"
    run "$sys" "$round" lease-keepalive --total "$KA_TOTAL" --rate "$KA_RATE" lease-keepalive --leases "$LEASES"
    if [ "$round" = 1 ]; then
      run "$sys" "$round" watch-idle --total 0 watch-latency --watchers "$IDLE_WATCHERS" --hold 5s
      for i in 1 2 3; do
        hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/${PIDS[$((i - 1))]}/status")
        jq -nc --arg s "$sys" --arg m m$i --argjson k "$hwm" '{system:$s, workload:"rss", member:$m, kb:$k}' >>"$RES"
      done
    fi
    stop_cluster
  done
done

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
CPU=$(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //')
ETCDV=$("$ETCD_BIN" --version | head -1)
export IDLE_WATCHERS
TABLE=$(jq -rs '
  def med: sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
  def f: if . == null then "–" else (. * 100 | round / 100 | tostring) end;
  def m(s; w; k): [.[] | select(.system == s and .workload == w and (.r.failed_run | not)) | .r[k]] | med;
  . as $all |
  (["watch-latency", "lease-keepalive"][] as $w |
    [$all | m("ballast"; $w; "qps"), m("etcd"; $w; "qps"), m("ballast"; $w; "p50_ms"), m("etcd"; $w; "p50_ms"),
            m("ballast"; $w; "p99_ms"), m("etcd"; $w; "p99_ms")] as $v |
    ([$all[] | select(.workload == $w) | "\(.system[0:1])\(.round):\(.r.failed // "?")/\(.r.failed_run)"] | join(" ")) as $err |
    "| \($w) | \($v[0] | f) | \($v[1] | f) | \($v[2] | f) | \($v[3] | f) | \($v[4] | f) | \($v[5] | f) | \(if $v[5] then ($v[4] / $v[5] | f) else "–" end)× | \($err) |"),
  ([$all[] | select(.workload == "rss")] as $r |
    ([$r[] | select(.system == "ballast") | .kb] | max) as $b | ([$r[] | select(.system == "etcd") | .kb] | max) as $e |
    "| peak RSS after \(env.IDLE_WATCHERS) idle watchers (max of 3 members, MiB) | \($b / 1024 | f) | \($e / 1024 | f) | | | | | \($b / $e | f)× (ballast/etcd) | members: \([$r[] | "\(.system[0:1])\(.member)=\(.kb / 1024 | round)"] | join(" ")) |")
' "$RES")
cat >"$OUT" <<DOC
# Ballast vs etcd 3.4: watch latency, lease keep-alive, idle watchers

Written by \`scripts/bench-watch.sh\` on $(date -u +%Y-%m-%d). Machine: $CPU,
$(nproc) CPUs, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM; $ETCDV. Load average at the
end: $LOAD. Both systems run as three members on localhost, one system at
a time, fresh data directories each round; $ROUNDS rounds; medians over the
valid rounds. Only one small machine: treat the ratios as rough.

Commands (ENDPOINTS = the three members):

\`\`\`sh
ballast-bench --endpoints \$ENDPOINTS --conns 10 --total $WATCH_TOTAL --rate $WATCH_RATE watch-latency --watchers $WATCHERS
ballast-bench --endpoints \$ENDPOINTS --conns 10 --total $KA_TOTAL --rate $KA_RATE lease-keepalive --leases $LEASES
ballast-bench --endpoints \$ENDPOINTS --conns 10 --total 0 watch-latency --watchers $IDLE_WATCHERS --hold 5s   # then VmHWM of each member
\`\`\`

watch-latency: latency of each (watcher, event) pair, from just before the
put is sent (as etcd's benchmark) to the event at that watcher; "qps" is
pairs/s. lease-keepalive: send → response on the keep-alive stream.
"errors" lists per round failed/failed_run (b = ballast, e = etcd); missing
watch events count as failed.

| workload | ballast qps | etcd qps | ballast p50 ms | etcd p50 ms | ballast p99 ms | etcd p99 ms | p99 ratio | errors |
|---|---|---|---|---|---|---|---|---|
$TABLE
DOC
log "wrote $OUT (raw results: $RES)"
