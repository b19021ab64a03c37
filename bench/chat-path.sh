#!/usr/bin/env bash
# The stored chat path, measured as a user feels it (BENCHMARKS.md, "The
# stored chat path"): starts the all-in-one system (`chatai` with no
# arguments: SQLite under a fresh folder, events in memory — what
# `cargo run --release` runs) with the per-connection rate limit raised, runs
# one `chatai-load` scenario against it, and stops it. The system's CPU time
# over the run is read with `perf stat` (task-clock) when perf is installed
# (`apt-get install linux-perf`), else from /proc.
#
#   bench/chat-path.sh TARGET_DIR -- SCENARIO ARGS…
#   e.g. bench/chat-path.sh target -- chat --rate 5000 --duration 10 --users 500
#        bench/chat-path.sh target -- pairs --pairs 500 --rate 2500 --duration 10
#
# Environment: BENCH_DIR (default /tmp/chatai-chat-path: database, logs),
# CHATAI_INTERNAL_TOKEN (default: a fresh one, for the system and the tool),
# LOAD_TARGET_DIR (where chatai-load is; default: TARGET_DIR),
# CHATAI_DATABASE_URL / CHATAI_REDIS_URL to measure PostgreSQL and the Redis
# event log instead, SYSTEM_CPUS / LOAD_CPUS (taskset lists, e.g. 0 and 1) to
# pin the system and the load tool to their own cores.
set -euo pipefail

target_dir=${1:?usage: bench/chat-path.sh TARGET_DIR -- SCENARIO ARGS…}
shift
[[ ${1:-} == -- ]] && shift
bin="$target_dir/release/chatai"
load="${LOAD_TARGET_DIR:-$target_dir}/release/chatai-load"
[[ -x $bin ]] || { echo "no $bin: cargo build --release -p chatai" >&2; exit 1; }
[[ -x $load ]] || { echo "no $load: cargo build --release -p chatai-load" >&2; exit 1; }

export BENCH_DIR=${BENCH_DIR:-/tmp/chatai-chat-path}
export CHATAI_GATEWAY_ADDR=${CHATAI_GATEWAY_ADDR:-127.0.0.1:28080}
export CHATAI_CHAT_ADDR=${CHATAI_CHAT_ADDR:-127.0.0.1:25051}
export CHATAI_HANDOFF_ADDR=${CHATAI_HANDOFF_ADDR:-127.0.0.1:25052}
export CHATAI_PRESENCE_ADDR=${CHATAI_PRESENCE_ADDR:-127.0.0.1:25053}
export CHATAI_NOTIFICATION_ADDR=${CHATAI_NOTIFICATION_ADDR:-127.0.0.1:25054}
# All the load comes from one address, many handshakes at a time: no
# per-address cap on unfinished connections (docs/protocol.md, "Connection limits").
export CHATAI_MAX_UNFINISHED_PER_IP=${CHATAI_MAX_UNFINISHED_PER_IP:-0}
export CHATAI_DATABASE_URL=${CHATAI_DATABASE_URL:-sqlite://$BENCH_DIR/chatai.db}
export CHATAI_RATE_LIMIT_PER_SEC=${CHATAI_RATE_LIMIT_PER_SEC:-100000}
export CHATAI_RATE_LIMIT_BURST=${CHATAI_RATE_LIMIT_BURST:-100000}
export RUST_LOG=${RUST_LOG:-warn}
# The internal token both processes use (else the all-in-one would write one
# to ./data/internal-token): given, or fresh for this run.
if [[ -z ${CHATAI_INTERNAL_TOKEN:-} ]]; then
    CHATAI_INTERNAL_TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
fi
export CHATAI_INTERNAL_TOKEN

# Each command, pinned to its cores when asked (taskset execs it: same pid).
system_cmd=("$bin")
[[ -n ${SYSTEM_CPUS:-} ]] && system_cmd=(taskset -c "$SYSTEM_CPUS" "$bin")
load_cmd=("$load")
[[ -n ${LOAD_CPUS:-} ]] && load_cmd=(taskset -c "$LOAD_CPUS" "$load")

rm -rf "$BENCH_DIR"; mkdir -p "$BENCH_DIR"
"${system_cmd[@]}" > "$BENCH_DIR/system.log" 2>&1 &
system=$!
trap 'kill -TERM $system 2>/dev/null; wait $system 2>/dev/null || true' EXIT
for _ in $(seq 1 60); do
    curl -fsS "http://$CHATAI_GATEWAY_ADDR/api/websocket/health" > /dev/null 2>&1 && break
    sleep 0.5
done

if command -v perf > /dev/null; then
    perf stat -e task-clock -p "$system" -o "$BENCH_DIR/perf-stat.txt" &
    perf=$!
fi
cpu_before=$(awk '{print $14 + $15}' "/proc/$system/stat")
"${load_cmd[@]}" --gateway "$CHATAI_GATEWAY_ADDR" "$@" --gateway-pid "$system" \
    | tee "$BENCH_DIR/load.txt"
cpu_after=$(awk '{print $14 + $15}' "/proc/$system/stat")
if [[ -n ${perf:-} ]]; then
    kill -INT "$perf"; wait "$perf" 2>/dev/null || true
    grep -E 'task-clock|elapsed' "$BENCH_DIR/perf-stat.txt"
fi
echo "system CPU over the whole run (setup and drain included): $(( (cpu_after - cpu_before) * 10 )) ms"
