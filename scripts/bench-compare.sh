#!/usr/bin/env bash
# Ballast against etcd 3.4, on this machine and this disk, with the same
# load tool (ballast-bench) and the same workloads; writes docs/benchmarks.md.
#
#   scripts/bench-compare.sh            # about 8-10 minutes on 2 cores
#   ROUNDS=3 PUT_TOTAL=10000 scripts/bench-compare.sh
#
# It builds release binaries, then for each round starts a fresh
# three-member Ballast cluster, runs every workload, records each member's
# peak RSS (VmHWM) and data-dir size, stops it, and does the same with a
# fresh three-member etcd cluster: A B A B ..., never both at once, so they
# do not compete for the CPUs. Figures in the doc are medians over the rounds
# of the runs that did not fail. After the rounds, a fresh cluster of each
# system is loaded with a million keys of 256 B, and its members' peak RSS
# and data-dir sizes are read (LOAD_1M=0 skips it: it takes minutes). SVG
# charts of the results (`ballast-bench chart`) go next to the doc.
#
# Environment (defaults in brackets):
#   ROUNDS [7]  CLIENTS [100]  CONNS [10]  PUT_TOTAL [20000]
#   RANGE_TOTAL [50000]  TXN_TOTAL [20000]  VAL_SIZE [256]  KEY_SPACE [100000]
#   BASE_PORT [9379]: Ballast uses client ports BASE, BASE+100, BASE+200 (peer
#     port = client port + 1); etcd uses BASE+300, +400, +500. All stay below
#     10000 by default, outside the range the test suite picks ports from.
#   BENCH_DIR: where data dirs and logs go [a new temporary directory under
#     $TMPDIR or /tmp]; it must be on the disk you mean to measure.
#   QUIET_CPU [0.3], QUIET_WAIT [45], QUIET_WAIT_RUN [20]: before starting
#     each cluster (and before each run), wait up to QUIET_WAIT (QUIET_WAIT_RUN)
#     seconds for the rest of the machine to use less than QUIET_CPU CPUs
#     over 2 s: the machine may be shared with other work. The doc gives
#     medians over all runs and over the "quiet" runs, during which the rest
#     of the machine used less than QUIET_RUN_CPU [0.2] CPUs on average.
#   LOAD_1M [1]: the million-key stage; LOAD_KEYS [1000000] keys (and puts),
#     LOAD_DEADLINE [1800] s for the load, LOAD_SETTLE [5] s before reading
#     the members.
#   OUT [docs/benchmarks.md]; CHART_DIR [the directory benchmarks/ next to
#     OUT]: the SVG charts and the raw JSON lines they are drawn from.
#   ETCD_BIN [/usr/bin/etcd]   KEEP=1 keeps BENCH_DIR.
# The doc is replaced down to a marker line; what follows the marker in the
# existing OUT (sections written by hand) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

ROUNDS=${ROUNDS:-7}
CLIENTS=${CLIENTS:-100}
CONNS=${CONNS:-10}
PUT_TOTAL=${PUT_TOTAL:-20000}
RANGE_TOTAL=${RANGE_TOTAL:-50000}
TXN_TOTAL=${TXN_TOTAL:-20000}
VAL_SIZE=${VAL_SIZE:-256}
KEY_SPACE=${KEY_SPACE:-100000}
KEY_SIZE=8
BASE_PORT=${BASE_PORT:-9379}
OUT=${OUT:-docs/benchmarks.md}
CHART_DIR=${CHART_DIR:-$(dirname "$OUT")/benchmarks}
LOAD_1M=${LOAD_1M:-1}
LOAD_KEYS=${LOAD_KEYS:-1000000}
LOAD_DEADLINE=${LOAD_DEADLINE:-1800}
LOAD_SETTLE=${LOAD_SETTLE:-5}
ETCD_BIN=${ETCD_BIN:-/usr/bin/etcd}
READY_TIMEOUT=60
QUIET_CPU=${QUIET_CPU:-0.3}
QUIET_WAIT=${QUIET_WAIT:-45}
QUIET_WAIT_RUN=${QUIET_WAIT_RUN:-20}
QUIET_RUN_CPU=${QUIET_RUN_CPU:-0.2}

log() { echo "bench-compare: $*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in jq etcdctl du awk; do
  command -v "$tool" >/dev/null || die "$tool is needed (apt-get install -y jq etcd-client coreutils gawk)"
done
[ -x "$ETCD_BIN" ] || die "no etcd at $ETCD_BIN (apt-get install -y etcd-server, or set ETCD_BIN)"
[ "$ROUNDS" -ge 1 ] || die "ROUNDS must be at least 1"
[ "$LOAD_KEYS" -ge 1 ] && [ "$LOAD_KEYS" -le 100000000 ] || die "LOAD_KEYS must be 1 to 100000000 (8-byte keys)"

# ---------------------------------------------------------------------------
# Build

eval "$(scripts/setup.sh)"
log "building release binaries"
cargo build --release --locked -p ballast-server -p ballast-benches
TARGET_DIR=${CARGO_TARGET_DIR:-target}
[ -x "$TARGET_DIR/release/ballast" ] && [ -x "$TARGET_DIR/release/ballast-bench" ] || die "release binaries missing in $TARGET_DIR/release"

WORK=${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/ballast-bench-compare.XXXXXX")}
mkdir -p "$WORK/results" "$WORK/bin"
# Copies: a build by someone else during the run must not change them.
cp "$TARGET_DIR/release/ballast" "$TARGET_DIR/release/ballast-bench" "$WORK/bin/"
BALLAST_BIN=$WORK/bin/ballast
BENCH_BIN=$WORK/bin/ballast-bench
RESULTS=$WORK/results/runs.jsonl
MEMBERS=$WORK/results/members.jsonl
LOADS=$WORK/results/loadavg.txt
LOAD_RUNS=$WORK/results/load-1m-runs.jsonl
LOAD_MEMBERS=$WORK/results/load-1m-members.jsonl
: >"$RESULTS"
: >"$MEMBERS"
: >"$LOAD_RUNS"
: >"$LOAD_MEMBERS"
: >"$LOADS"
IDLE_LOADS=$WORK/results/loadavg-idle.txt
: >"$IDLE_LOADS"
QUIET_LOG=$WORK/results/quiet.txt
: >"$QUIET_LOG"
log "working in $WORK"

# ---------------------------------------------------------------------------
# Clusters

PIDS=()
cleanup() {
  stop_cluster || true
  if [ "${KEEP:-0}" = 1 ]; then
    log "kept $WORK"
  else
    rm -rf "$WORK/ballast" "$WORK/etcd" "$WORK/bin"
    log "logs and raw results are in $WORK (data dirs and binaries removed)"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

client_port() { # system member
  local off=0
  [ "$1" = etcd ] && off=300
  echo $((BASE_PORT + off + ($2 - 1) * 100))
}
peer_port() { echo $(($(client_port "$1" "$2") + 1)); }
endpoints() { # system
  echo "127.0.0.1:$(client_port "$1" 1),127.0.0.1:$(client_port "$1" 2),127.0.0.1:$(client_port "$1" 3)"
}
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The command line of member $2 of system $1 with data in $3, one word per line.
member_args() {
  local sys=$1 i=$2 dir=$3 ic="" j
  for j in 1 2 3; do
    ic+="m$j=http://127.0.0.1:$(peer_port "$sys" "$j")"
    [ "$j" = 3 ] || ic+=","
  done
  local c p
  c=http://127.0.0.1:$(client_port "$sys" "$i")
  p=http://127.0.0.1:$(peer_port "$sys" "$i")
  if [ "$sys" = etcd ]; then echo "$ETCD_BIN"; else echo "$BALLAST_BIN"; fi
  printf '%s\n' --name "m$i" --data-dir "$dir" \
    --listen-client-urls "$c" --advertise-client-urls "$c" \
    --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" \
    --initial-cluster "$ic" --initial-cluster-token "bench-$sys" \
    --initial-cluster-state new
  if [ "$sys" = etcd ]; then printf '%s\n' --logger zap --log-outputs stderr; fi
}

start_cluster() { # system round
  local sys=$1 round=$2 i port
  for i in 1 2 3; do
    for port in "$(client_port "$sys" "$i")" "$(peer_port "$sys" "$i")"; do
      port_busy "$port" && die "port $port is in use (set BASE_PORT)"
    done
  done
  rm -rf "${WORK:?}/$sys"
  mkdir -p "$WORK/$sys"
  PIDS=()
  for i in 1 2 3; do
    local args=()
    mapfile -t args < <(member_args "$sys" "$i" "$WORK/$sys/m$i")
    if [ "$round" = 1 ] && [ "$i" = 1 ]; then
      echo "${args[*]}" | sed "s|$WORK/bin/ballast|target/release/ballast|; s|$WORK|\$BENCH_DIR|g" >"$WORK/results/cmd-$sys.txt"
    fi
    # A clean environment: no ETCD_* variables of the caller.
    env -i PATH="$PATH" HOME="${HOME:-/root}" NO_COLOR=1 "${args[@]}" \
      >"$WORK/results/$sys-r$round-m$i.log" 2>&1 &
    PIDS+=($!)
  done
  local deadline=$((SECONDS + READY_TIMEOUT)) ready ep
  while :; do
    ready=0
    for i in 1 2 3; do
      kill -0 "${PIDS[$((i - 1))]}" 2>/dev/null ||
        die "$sys member m$i exited at start; log: $WORK/results/$sys-r$round-m$i.log"
      ep=127.0.0.1:$(client_port "$sys" "$i")
      if ETCDCTL_API=3 etcdctl --endpoints="$ep" --dial-timeout=1s --command-timeout=2s \
        get bench-compare-ready-probe >/dev/null 2>&1; then
        ready=$((ready + 1))
      fi
    done
    [ "$ready" = 3 ] && break
    [ "$SECONDS" -lt "$deadline" ] || die "$sys cluster not ready within ${READY_TIMEOUT}s"
    sleep 0.5
  done
  log "$sys cluster up (round $round): pids ${PIDS[*]}"
}

# Records each member's peak RSS and data-dir size (while running), as one
# JSON line each in file $3 (with "stage": $4 and the LOAD_KEYS if given).
record_members() { # system round|null file [stage]
  local sys=$1 round=$2 file=$3 stage=${4:-} i pid hwm alloc apparent
  for i in 1 2 3; do
    pid=${PIDS[$((i - 1))]}
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo null)
    [ -n "$hwm" ] || hwm=null
    alloc=$(du -sk "$WORK/$sys/m$i" | awk '{print $1}')
    apparent=$(du -sk --apparent-size "$WORK/$sys/m$i" | awk '{print $1}')
    jq -nc --arg system "$sys" --argjson round "$round" --arg member "m$i" --arg stage "$stage" \
      --argjson keys "$LOAD_KEYS" --argjson hwm_kb "$hwm" --argjson du_kb "$alloc" --argjson apparent_kb "$apparent" \
      '{system:$system, round:$round} + (if $stage == "" then {} else {stage:$stage, keys:$keys} end) +
       {member:$member, vmhwm_kb:$hwm_kb, du_kb:$du_kb, apparent_kb:$apparent_kb}' \
      >>"$file"
  done
}

stop_cluster() {
  local pid n
  [ "${#PIDS[@]}" -gt 0 ] || return 0
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    n=0
    while kill -0 "$pid" 2>/dev/null && [ "$n" -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}

# ---------------------------------------------------------------------------
# Workloads

# name|ballast-bench arguments after the common ones
WORKLOADS=(
  "put|--total $PUT_TOTAL put --key-size $KEY_SIZE --val-size $VAL_SIZE --key-space-size $KEY_SPACE"
  "range-l|--total $RANGE_TOTAL range 00000000 --consistency l"
  "range-s|--total $RANGE_TOTAL range 00000000 --consistency s"
  "txn-put|--total $TXN_TOTAL txn-put --key-size $KEY_SIZE --val-size $VAL_SIZE --key-space-size $KEY_SPACE"
)
COMMON="--conns $CONNS --clients $CLIENTS --timeout 5s --deadline 120s --progress-interval 5s"

# CPU accounting, to tell how much of the machine other people's work took
# during a run. SNAP = (process ticks of the whole machine: user, nice and
# system, not interrupts or steal; ticks of the members; ticks of this
# shell's waited-for children, i.e. the load tool; time). Builtins only: no
# process is started while measuring.
HZ=$(getconf CLK_TCK)
SNAP=()
cpu_snapshot() {
  local -a c s
  local t=0 pid
  read -r -a c </proc/stat
  for pid in "${PIDS[@]}"; do
    if read -r -a s <"/proc/$pid/stat"; then t=$((t + s[13] + s[14])); fi 2>/dev/null
  done
  read -r -a s <"/proc/$$/stat"
  SNAP=("$((c[1] + c[2] + c[3]))" "$t" "$((s[15] + s[16]))" "$EPOCHREALTIME")
}

# Waits (at most $2 s) until the rest of the machine (everything but the
# members of the cluster running, if any) uses less than QUIET_CPU CPUs over
# 2 s; logs what it found.
wait_for_quiet() { # label max-wait
  local -a a
  local start=$SECONDS used
  while :; do
    cpu_snapshot
    a=("${SNAP[@]}")
    sleep 2
    cpu_snapshot
    used=$(awk -v t=$((SNAP[0] - a[0] - SNAP[1] + a[1])) -v hz="$HZ" 'BEGIN { u = t / hz / 2; printf "%.2f", u < 0 ? 0 : u }')
    if awk -v u="$used" -v q="$QUIET_CPU" 'BEGIN { exit !(u < q) }'; then
      echo "$1: others used $used CPUs; waited $((SECONDS - start)) s" >>"$QUIET_LOG"
      return 0
    fi
    if [ $((SECONDS - start)) -ge "$2" ]; then
      echo "$1: others used $used CPUs; gave up waiting after $((SECONDS - start)) s" >>"$QUIET_LOG"
      return 0
    fi
  done
}

# Runs ballast-bench against system $1 with the arguments after the fourth,
# output in results/<system>-r<round>-<name>.{txt,err}, and appends its JSON
# report to file $4 with the system, workload name, load average and the
# CPUs used during the run by the rest of the machine and by the benchmark.
# Sets LAST_LOAD (the load average right after). Dies if the tool could not
# run (exit status above 1); a failed run (1) is recorded as such.
LAST_LOAD=
bench_run() { # system round name results-file ballast-bench-arguments...
  local sys=$1 round=$2 name=$3 file=$4 rc=0 before cpu out
  shift 4
  out=$WORK/results/$sys-r$round-$name
  cpu_snapshot
  before=("${SNAP[@]}")
  "$BENCH_BIN" --endpoints "$(endpoints "$sys")" "$@" >"$out.txt" 2>"$out.err" || rc=$?
  cpu_snapshot
  # CPUs used on average during the run: by everything else on the
  # machine (other people's processes, and kernel threads; clamped at 0),
  # and by the benchmark (members and load tool).
  cpu=$(awk -v all=$((SNAP[0] - before[0])) -v members=$((SNAP[1] - before[1])) \
    -v tool=$((SNAP[2] - before[2])) -v t0="${before[3]}" -v t1="${SNAP[3]}" -v hz="$HZ" \
    'BEGIN { w = t1 - t0; o = (all - members - tool) / hz / w; if (o < 0) o = 0;
             printf "{\"other_cpu\":%.2f,\"own_cpu\":%.2f}", o, (members + tool) / hz / w }')
  # The 1-minute load average right after the run: it includes the
  # cluster and the load tool themselves.
  LAST_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
  if [ "$rc" -gt 1 ]; then
    die "ballast-bench exited $rc: $(cat "$out.err")"
  fi
  local round_json=$round
  [[ "$round" =~ ^[0-9]+$ ]] || round_json=null
  tail -n 1 "$out.txt" |
    jq -c --arg system "$sys" --argjson round "$round_json" --arg wl "$name" --arg load "$LAST_LOAD" \
      --argjson cpu "$cpu" '. + {system:$system, round:$round, wl:$wl, loadavg:$load} + $cpu' >>"$file"
  tail -n 1 "$file" | jq -r '"  qps \(.qps)  p50 \(.p50_ms) ms  p99 \(.p99_ms) ms  errors \(.failed)  failed_run \(.failed_run)  CPUs: others \(.other_cpu), benchmark \(.own_cpu)"' >&2
}

run_workloads() { # system round
  local sys=$1 round=$2 w name args
  for w in "${WORKLOADS[@]}"; do
    name=${w%%|*}
    args=${w#*|}
    if [ "$name" = range-l ]; then
      # The key the range workloads read (not measured).
      "$BENCH_BIN" --endpoints "$(endpoints "$sys")" --total 1 --progress-interval 0 \
        put --key-size "$KEY_SIZE" --val-size "$VAL_SIZE" >/dev/null
    fi
    wait_for_quiet "$sys round $round $name" "$QUIET_WAIT_RUN"
    log "$sys round $round: $name (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    [ "$round" = 1 ] && echo "ballast-bench --endpoints <3 endpoints> $COMMON $args" >>"$WORK/results/cmd-$sys-workloads.txt"
    # shellcheck disable=SC2086 # word splitting of the argument lists is intended
    bench_run "$sys" "$round" "$name" "$RESULTS" $COMMON $args
    echo "$sys round $round $name: $LAST_LOAD" >>"$LOADS"
  done
}

# The million-key stage: a fresh cluster loaded with LOAD_KEYS puts of
# VAL_SIZE bytes to LOAD_KEYS distinct keys (request n writes key n), then,
# LOAD_SETTLE s later, its members' peak RSS and data-dir sizes.
LOAD_ARGS="--conns $CONNS --clients $CLIENTS --timeout 5s --deadline ${LOAD_DEADLINE}s --progress-interval 10s --total $LOAD_KEYS put --key-size $KEY_SIZE --val-size $VAL_SIZE --key-space-size $LOAD_KEYS --sequential-keys"
load_1m() { # system
  local sys=$1
  wait_for_quiet "$sys load-1m start" "$QUIET_WAIT"
  start_cluster "$sys" 1m
  log "$sys: loading $LOAD_KEYS keys (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  # shellcheck disable=SC2086 # word splitting of the argument list is intended
  bench_run "$sys" 1m load "$LOAD_RUNS" $LOAD_ARGS
  sleep "$LOAD_SETTLE"
  record_members "$sys" null "$LOAD_MEMBERS" load-1m
  jq -r --arg s "$sys" 'def mib: if . == null then "?" else . / 1024 | floor end;
    select(.system == $s) | "  \(.member): peak RSS \(.vmhwm_kb | mib) MiB, data dir \(.du_kb | mib) MiB (apparent \(.apparent_kb | mib) MiB)"' "$LOAD_MEMBERS" >&2
  stop_cluster
  rm -rf "${WORK:?}/$sys"
}

# ---------------------------------------------------------------------------
# The rounds

# Processes using more than 5% of a CPU over two seconds (other people's
# work on a shared machine), as "name (cpu%)".
busiest() {
  top -b -n 2 -d 2 -w 256 2>/dev/null |
    awk '/^top -/ {n++} n == 2 && $1 ~ /^[0-9]+$/ && $9 + 0 > 5 {printf "%s (%s%%), ", $12, $9}' |
    sed 's/, $//'
}

UPTIME_START=$(uptime)
TOP_START=$(busiest)
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
T0=$SECONDS
for round in $(seq 1 "$ROUNDS"); do
  for sys in ballast etcd; do
    wait_for_quiet "$sys round $round start" "$QUIET_WAIT"
    echo "$sys round $round idle: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$IDLE_LOADS"
    start_cluster "$sys" "$round"
    run_workloads "$sys" "$round"
    record_members "$sys" "$round" "$MEMBERS"
    stop_cluster
    rm -rf "${WORK:?}/$sys"
  done
done
if [ "$LOAD_1M" = 1 ]; then
  for sys in ballast etcd; do load_1m "$sys"; done
  # The stage's put runs carry "stage" too, for `ballast-bench chart`.
  jq -c '. + {stage: "load-1m"}' "$LOAD_RUNS" >"$LOAD_RUNS.tmp" && mv "$LOAD_RUNS.tmp" "$LOAD_RUNS"
fi
DURATION=$((SECONDS - T0))
UPTIME_END=$(uptime)
TOP_END=$(busiest)

# ---------------------------------------------------------------------------
# The doc

DISK_SRC=$(findmnt -no SOURCE,FSTYPE -T "$WORK" 2>/dev/null | head -1 || echo unknown)
DISK_DEV=$(basename "$(findmnt -no SOURCE -T "$WORK" 2>/dev/null | head -1)" 2>/dev/null || true)
DISK_INFO=$(lsblk -dno NAME,SIZE,ROTA,MODEL "/dev/$DISK_DEV" 2>/dev/null |
  awk '{m = ""; for (i = 4; i <= NF; i++) m = m " " $i; printf "%s, %s, rotational flag %s%s", $1, $2, $3, m}' || true)
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
MEM=$(awk '/^MemTotal:/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain 2>/dev/null | grep -q . && echo " with uncommitted changes" || true)
load_range() { # file field
  awk -v f="$2" '{print $f}' "$1" | sort -n |
    awk '{a[NR] = $1} END {printf "%s to %s (median %s)", a[1], a[NR], a[int((NR + 1) / 2)]}'
}
LOAD_RANGE=$(load_range "$LOADS" 5)
IDLE_LOAD_RANGE=$(load_range "$IDLE_LOADS" 5)
OTHER_CPU=$(jq -rs 'map(.other_cpu) | sort |
  "\(.[0]) to \(.[-1]) CPUs (median \(.[(length - 1) / 2 | floor]), mean \(add / length * 100 | round / 100))"' "$RESULTS")
QUIET_WAITED=$(awk '{s += $(NF - 1)} /gave up/ {g++} END {printf "%d s of waiting in all; %d of %d waits ended without a quiet moment", s, g, NR}' "$QUIET_LOG")
OWN_CPU=$(jq -rs 'map(.own_cpu) | sort | "\(.[0]) to \(.[-1]) (median \(.[(length - 1) / 2 | floor]))"' "$RESULTS")

JQ_LIB='def median: map(select(. != null)) | sort | if length == 0 then null
          elif length % 2 == 1 then .[(length - 1) / 2]
          else (.[length / 2 - 1] + .[length / 2]) / 2 end;
        def r(n): if . == null then null else (. * n | round) / n end;
        def show: if . == null then "–" else tostring end;
        def x2: if . == null then "–" else (. * 100 | round) as $n |
          "\($n / 100 | floor).\($n % 100 | tostring | if length < 2 then "0" + . else . end)" end;'

# Medians per system and workload, over the runs that did not fail, among
# those during which the rest of the machine used less than $1 CPUs.
summarize() { # max-other-cpu
  jq -s --argjson q "$1" "$JQ_LIB"'
  group_by(.wl) | map(
    . as $runs | ($runs[0].wl) as $wl |
    [ "ballast", "etcd" ] | map(. as $s |
      ($runs | map(select(.system == $s and .other_cpu < $q))) as $all |
      ($all | map(select(.failed_run | not))) as $ok |
      { key: $s, value: {
          n: ($all | length), valid: ($ok | length),
          qps: ($ok | map(.qps) | median | r(10)),
          p50: ($ok | map(.p50_ms) | median | r(100)),
          p99: ($ok | map(.p99_ms) | median | r(100)),
          errors: ($all | map(.failed) | add // 0),
          conflicts: ($ok | map(.conflicts) | median) } }) | from_entries
    | { wl: $wl } + .)' "$RESULTS"
}
SUMMARY=$(summarize 1000)
SUMMARY_QUIET=$(summarize "$QUIET_RUN_CPU")

ORDER='["put","range-l","range-s","txn-put"]'
LABELS='{"put":"put (headline)","range-l":"range, linearizable","range-s":"range, serializable","txn-put":"txn-put (read + CAS)"}'

table() { # summary
  jq -r --argjson order "$ORDER" --argjson labels "$LABELS" "$JQ_LIB"'
  . as $all | $order[] as $w | ($all[] | select(.wl == $w)) |
  (if .ballast.qps != null and .etcd.qps != null and .etcd.qps > 0
     then (.ballast.qps / .etcd.qps) else null end) as $ratio |
  (if .ballast.p99 != null and .etcd.p99 != null and .etcd.p99 > 0
     then (.ballast.p99 / .etcd.p99) else null end) as $p99ratio |
  "| \($labels[$w]) | \(.ballast.qps | show) | \(.etcd.qps | show) | **\($ratio | x2)×** | \(.ballast.p50 | show) | \(.etcd.p50 | show) | \(.ballast.p99 | show) | \(.etcd.p99 | show) | \($p99ratio | x2)× | \(.ballast.valid)/\(.ballast.n), \(.etcd.valid)/\(.etcd.n) | \(.ballast.errors), \(.etcd.errors) |"
' <<<"$1"
}
TABLE=$(table "$SUMMARY")
TABLE_QUIET=$(table "$SUMMARY_QUIET")

headline() { # summary what
  jq -r --arg what "$2" "$JQ_LIB"'
  .[] | select(.wl == "put") |
  if .ballast.qps == null or .etcd.qps == null then
    "- \($what): no valid put run for \(if .ballast.qps == null then "Ballast" else "etcd" end)."
  else
    "- \($what): Ballast **\(.ballast.qps) puts/s**, etcd **\(.etcd.qps) puts/s**: Ballast/etcd = **\(.ballast.qps / .etcd.qps | x2)×**; p99 \(.ballast.p99) ms against \(.etcd.p99) ms (medians of \(.ballast.valid) and \(.etcd.valid) runs)."
  end' <<<"$1"
}
HEADLINE="Put throughput with $CLIENTS concurrent clients, three members each, same disk:

$(headline "$SUMMARY" "all runs")
$(headline "$SUMMARY_QUIET" "quiet runs only (the rest of the machine used < $QUIET_RUN_CPU CPUs)")"

ROUNDS_TABLE=$(jq -rs --argjson order "$ORDER" '
  sort_by(.round, .system, (.wl as $w | $order | index($w))) |
  .[] | "| \(.round) | \(.system) | \(.wl) | \(.qps) | \(.p50_ms) | \(.p99_ms) | \(.p999_ms) | \(.failed) | \(.conflicts) | \(if .failed_run then "**failed run**" else "ok" end) | \(.other_cpu) | \(.loadavg | split(" ")[0]) |"' "$RESULTS")

ERRORS_LIST=$(jq -rs '
  map(select(.failed > 0) | "- round \(.round), \(.system) \(.wl): " +
      (.errors | to_entries | map("\(.value) × `\(.key)`") | join(", ")) +
      (if .failed_run then " — " + .notes[0] else "" end)) | .[]' "$RESULTS")
[ -n "$ERRORS_LIST" ] || ERRORS_LIST="None: every request of every run succeeded."

MEMBERS_TABLE=$(jq -rs '
  group_by(.system + .member) | .[] |
  "| \(.[0].system) | \(.[0].member) | \(map(.vmhwm_kb) | max / 1024 | . * 10 | round / 10) | \(map(.du_kb) | max / 1024 | . * 10 | round / 10) | \(map(.apparent_kb) | max / 1024 | . * 10 | round / 10) |"' "$MEMBERS")

# The million-key stage.
LOAD_TITLE="$(echo "$LOAD_KEYS" | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta') keys: peak RSS and data directory"
LOAD_ANCHOR="$LOAD_KEYS-keys-peak-rss-and-data-directory"
if [ "$LOAD_1M" = 1 ]; then
  LOAD_RUNS_TABLE=$(jq -rs 'sort_by(.system) | .[] |
    "| \(.system) | \(.ok) of \(.total) | \(.elapsed_s) | \(.qps) | \(.failed) | \(if .failed_run then "**failed run**" else "ok" end) | \(.other_cpu) |"' "$LOAD_RUNS")
  LOAD_MEMBERS_TABLE=$(jq -rs --argjson keys "$LOAD_KEYS" '
    def mib: if . == null then "–" else . / 1024 | . * 10 | round / 10 | tostring end;
    sort_by(.system, .member) | .[] |
    "| \(.system) | \(.member) | \(.vmhwm_kb | mib) | \(.du_kb | mib) | \(.apparent_kb | mib) | \(if .apparent_kb == null then "–" else .apparent_kb * 1024 / $keys | round end) |"' "$LOAD_MEMBERS")
  METHOD_LOAD="After the rounds, one fresh cluster of each system is loaded with
  $LOAD_KEYS keys, and its members' peak RSS and data-dir sizes are read (see
  [$LOAD_TITLE](#$LOAD_ANCHOR))."
  CHART_LOAD=" and after loading $LOAD_KEYS keys"
  LOAD_SECTION="After the rounds, a fresh three-member cluster of each system (Ballast,
then etcd; one at a time) is loaded with $LOAD_KEYS puts of $VAL_SIZE-byte random
values to $LOAD_KEYS distinct keys of $KEY_SIZE bytes (\`--sequential-keys\`: request n
writes key n), by $CLIENTS clients over $CONNS connections; $LOAD_SETTLE s after the
last put, each member's peak RSS and data directory are read as above.

\`\`\`sh
ballast-bench --endpoints <3 endpoints> $LOAD_ARGS
\`\`\`

| system | puts done | time (s) | puts/s | failed requests | verdict | other CPU |
|---|---|---|---|---|---|---|
$LOAD_RUNS_TABLE

| system | member | peak RSS (MiB) | data dir, allocated (MiB) | data dir, apparent (MiB) | apparent bytes per key |
|---|---|---|---|---|---|
$LOAD_MEMBERS_TABLE"
else
  LOAD_SECTION="Not measured in this run (\`LOAD_1M=0\`)."
  METHOD_LOAD="The key-load stage was skipped in this run (\`LOAD_1M=0\`)."
  CHART_LOAD=""
fi

# The charts, and the JSON lines they are drawn from (to draw them again:
# ballast-bench chart --input ... --out-dir ...).
mkdir -p "$CHART_DIR/data"
cp "$RESULTS" "$CHART_DIR/data/runs.jsonl"
cp "$MEMBERS" "$CHART_DIR/data/members.jsonl"
CHART_INPUTS=(--input "$CHART_DIR/data/runs.jsonl" --input "$CHART_DIR/data/members.jsonl")
rm -f "$CHART_DIR/data/load-1m.jsonl"
if [ "$LOAD_1M" = 1 ]; then
  cat "$LOAD_RUNS" "$LOAD_MEMBERS" >"$CHART_DIR/data/load-1m.jsonl"
  CHART_INPUTS+=(--input "$CHART_DIR/data/load-1m.jsonl")
fi
rm -f "$CHART_DIR"/*.svg
CHART_LINKS=""
if CHARTS=$("$BENCH_BIN" chart "${CHART_INPUTS[@]}" --out-dir "$CHART_DIR" 2>"$WORK/results/chart.err"); then
  CHART_REL=$(realpath -m --relative-to="$(dirname "$OUT")" "$CHART_DIR")
  while read -r svg; do
    name=$(basename "$svg")
    case $name in
      throughput.svg) alt="Throughput per workload, Ballast and etcd" ;;
      latency-p99.svg) alt="p99 latency per workload, Ballast and etcd" ;;
      rss.svg) alt="Peak RSS per member, Ballast and etcd" ;;
      data-dir.svg) alt="Data directory per member, Ballast and etcd" ;;
      *) alt=$name ;;
    esac
    CHART_LINKS+="![$alt]($CHART_REL/$name)"$'\n\n'
    log "chart: $svg"
  done <<<"$CHARTS"
  CHART_LINKS+="Drawn by \`ballast-bench chart\` from this run's JSON lines, which are in
[\`$CHART_REL/data/\`]($CHART_REL/data/): the bars are the medians over all valid
runs (as in the first table) and, for the members, the highest at the end
of the rounds$CHART_LOAD; under each group, Ballast's figure divided by
etcd's."
else
  log "warning: no charts: $(cat "$WORK/results/chart.err")"
  CHART_LINKS="No charts: \`ballast-bench chart\` failed ($(head -c 300 "$WORK/results/chart.err"))."
fi

CMD_BALLAST=$(cat "$WORK/results/cmd-ballast.txt")
CMD_ETCD=$(cat "$WORK/results/cmd-etcd.txt")
CMD_WORKLOADS=$(cat "$WORK/results/cmd-ballast-workloads.txt")

# What follows the marker line in the existing doc (sections written by
# hand) is kept, read now so that edits made during the run are kept too.
KEEP_MARK='<!-- scripts/bench-compare.sh writes everything above this line; it keeps what follows when it runs again. -->'
KEPT=""
if [ -f "$OUT" ]; then
  KEPT=$(awk -v m="$KEEP_MARK" 'found {print} $0 == m {found = 1}' "$OUT")
fi
mkdir -p "$(dirname "$OUT")"
cat >"$OUT.tmp" <<EOF
# Ballast against etcd 3.4: benchmarks

Written by \`scripts/bench-compare.sh\` (\`make bench-compare\`) on $DATE;
run it again to replace this page. Ballast and etcd are measured on the same
machine and the same disk, with the same load tool (\`ballast-bench\`,
\`benches/src/bin/ballast-bench.rs\`) and the same workloads.

## Result

$HEADLINE

Medians over the rounds, of the runs that did not fail (a run fails when
more than 10% of its requests fail, or none succeeds). qps = successful
requests per second; latencies in ms, per request as the client saw it
(\`txn-put\`: the read and the transaction together).

All runs:

| workload | Ballast qps | etcd qps | Ballast/etcd qps | Ballast p50 | etcd p50 | Ballast p99 | etcd p99 | Ballast/etcd p99 | valid runs (B, e) | failed requests (B, e) |
|---|---|---|---|---|---|---|---|---|---|---|
$TABLE

Quiet runs only: those during which the rest of the machine (other
people's processes) used less than $QUIET_RUN_CPU CPUs on average (column
"other CPU" under [Every run](#every-run)); the machine is shared, and a
run that competed with someone's build is not a measurement of the system:

| workload | Ballast qps | etcd qps | Ballast/etcd qps | Ballast p50 | etcd p50 | Ballast p99 | etcd p99 | Ballast/etcd p99 | quiet valid runs (B, e) | failed requests (B, e) |
|---|---|---|---|---|---|---|---|---|---|---|
$TABLE_QUIET

A ratio above 1 means Ballast had more throughput (qps) or a higher p99
latency (worse) than etcd. With so few runs, and runs this short, a
difference of 10–15% between the two is within the spread of the runs
(compare the rounds under [Every run](#every-run)).

### Charts

$CHART_LINKS

## Machine

- $(nproc) CPUs: $CPU_MODEL; $MEM RAM; Linux $(uname -r).
- Disk: $DISK_SRC ($DISK_INFO); every data directory was under \`$WORK\`.
- Ballast $COMMIT$DIRTY, release build ($(rustc -V 2>/dev/null || echo rustc));
  $("$ETCD_BIN" --version 2>/dev/null | head -1) ($("$ETCD_BIN" --version 2>/dev/null | awk -F': ' '/Go Version/ {print $2}')).
- Load: \`uptime\` before: \`$UPTIME_START\`; after: \`$UPTIME_END\`.
  The machine is shared: other developers' builds and tests may have been
  running during the runs. **Other processes used $OTHER_CPU of the $(nproc)
  CPUs** during the runs (user and system CPU time of the whole machine,
  from \`/proc/stat\`, minus that of the members and the load tool: other
  people's processes and kernel threads; the "other CPU" column below has
  it for each run). The benchmark itself used
  $OWN_CPU CPUs. The 1-minute load average was $IDLE_LOAD_RANGE before each
  cluster started and $LOAD_RANGE right after each run (both include the
  benchmark's own recent load: a load average lags). Processes using more
  than 5% of a CPU just before the first round: ${TOP_START:-none}; just
  after the last: ${TOP_END:-none}. Before each cluster start (each run) the
  script waited up to ${QUIET_WAIT} s (${QUIET_WAIT_RUN} s) for the rest of
  the machine to use less than $QUIET_CPU CPUs over 2 s: $QUIET_WAITED.
- The whole comparison took $((DURATION / 60)) min $((DURATION % 60)) s.

## Method

- $ROUNDS rounds. In each round a fresh three-member Ballast cluster is
  started, runs the four workloads below in order, has its members' peak
  RSS and data-dir sizes read, and is stopped; then the same with a fresh
  three-member etcd 3.4 cluster (A B A B ...). Only one cluster runs at a
  time, so the two never compete for the CPUs or the disk.
- Both run on 127.0.0.1 with default settings: etcd 3.4.23 with its
  defaults (fsync on every commit, \`--snapshot-count\` 100000), Ballast
  with its defaults (fsync on every commit).
- The load tool runs on the same machine and competes for the same 2 cores
  with the three members; that is the same for both.
- Every workload uses $CLIENTS concurrent clients over $CONNS gRPC
  connections, each connection balanced over the three members' client
  endpoints (followers forward writes to the leader, in both systems).
- Workloads: \`put\`: $PUT_TOTAL puts of $VAL_SIZE-byte random values to random keys of
  $KEY_SIZE bytes among $KEY_SPACE. \`range-l\` / \`range-s\`: $RANGE_TOTAL reads of one
  existing key, linearizable / serializable. \`txn-put\`: $TXN_TOTAL operations
  shaped like kube-apiserver's update: read the key's \`mod_revision\` r
  (linearizable), then \`Txn(if mod_revision == r then put else get)\`,
  on $KEY_SPACE keys (few conflicts).
- $METHOD_LOAD
- Peak RSS is \`VmHWM\` from \`/proc/<pid>/status\` at the end of a round
  (the highest over the rounds is shown). Data-dir size is \`du\` at the same
  time, as blocks allocated and as apparent size: etcd preallocates 64 MB
  WAL segments, and RocksDB preallocates its logs, so the allocated size
  says more about the disk space held than about the data.

### Commands

Cluster members (member 1 of 3; \$BENCH_DIR is the temporary directory):

\`\`\`sh
$CMD_BALLAST
$CMD_ETCD
\`\`\`

Workloads, against \`$(endpoints ballast)\` (Ballast) and
\`$(endpoints etcd)\` (etcd). Before the range workloads, one put writes
the key they read (\`00000000\`).

\`\`\`sh
$CMD_WORKLOADS
\`\`\`

The whole comparison:

\`\`\`sh
ROUNDS=$ROUNDS CLIENTS=$CLIENTS CONNS=$CONNS PUT_TOTAL=$PUT_TOTAL RANGE_TOTAL=$RANGE_TOTAL TXN_TOTAL=$TXN_TOTAL LOAD_1M=$LOAD_1M LOAD_KEYS=$LOAD_KEYS scripts/bench-compare.sh
\`\`\`

## Members: peak RSS and data directory

| system | member | peak RSS (MiB) | data dir, allocated (MiB) | data dir, apparent (MiB) |
|---|---|---|---|---|
$MEMBERS_TABLE

## $LOAD_TITLE

$LOAD_SECTION

## Every run

| round | system | workload | qps | p50 ms | p99 ms | p99.9 ms | failed requests | txn conflicts | verdict | other CPU | load after (1 min) |
|---|---|---|---|---|---|---|---|---|---|---|---|
$ROUNDS_TABLE

Failed requests:

$ERRORS_LIST

$KEEP_MARK
EOF
if [ -n "$KEPT" ]; then printf '%s\n' "$KEPT" >>"$OUT.tmp"; fi
mv "$OUT.tmp" "$OUT"
log "wrote $OUT"
jq -r --argjson order "$ORDER" '. as $all | $order[] as $w | ($all[] | select(.wl == $w)) |
  "\(.wl): ballast \(.ballast.qps) qps p99 \(.ballast.p99) ms | etcd \(.etcd.qps) qps p99 \(.etcd.p99) ms"' <<<"$SUMMARY" >&2
echo "quiet runs:" >&2
jq -r --argjson order "$ORDER" '. as $all | $order[] as $w | ($all[] | select(.wl == $w)) |
  "\(.wl): ballast \(.ballast.qps) qps p99 \(.ballast.p99) ms (\(.ballast.valid) runs) | etcd \(.etcd.qps) qps p99 \(.etcd.p99) ms (\(.etcd.valid) runs)"' <<<"$SUMMARY_QUIET" >&2
