#!/usr/bin/env bash
# Starts the four services and the gateway as separate processes (so the
# gateway's RSS and CPU are its own), on ports that leave a running
# `cargo run` alone, and waits until the gateway reports healthy.
#
#   bench/start-system.sh [TARGET_DIR]     # default: target
#
# Writes the pids to $BENCH_DIR/pids (BENCH_DIR defaults to /tmp/chatai-bench,
# which also holds the SQLite database and the logs); stop everything with
# bench/stop-system.sh. Environment overrides: CHATAI_GATEWAY_ADDR,
# CHATAI_CHAT_ADDR, CHATAI_HANDOFF_ADDR, CHATAI_PRESENCE_ADDR,
# CHATAI_NOTIFICATION_ADDR, CHATAI_INTERNAL_TOKEN (default: a fresh one,
# written to $BENCH_DIR/internal-token for `chatai-load fanout
# --internal-token-file`), RUST_LOG (default warn: logging is not what is measured),
# BENCH_SECOND_GATEWAY (an address: a second gateway process there, for
# `chatai-load --also-gateways`).
set -euo pipefail

target_dir=${1:-target}
bin="$target_dir/release/chatai"
[[ -x $bin ]] || { echo "no $bin: cargo build --release -p chatai -p chatai-load" >&2; exit 1; }

export BENCH_DIR=${BENCH_DIR:-/tmp/chatai-bench}
export CHATAI_GATEWAY_ADDR=${CHATAI_GATEWAY_ADDR:-127.0.0.1:18080}
export CHATAI_CHAT_ADDR=${CHATAI_CHAT_ADDR:-127.0.0.1:15051}
export CHATAI_HANDOFF_ADDR=${CHATAI_HANDOFF_ADDR:-127.0.0.1:15052}
export CHATAI_PRESENCE_ADDR=${CHATAI_PRESENCE_ADDR:-127.0.0.1:15053}
export CHATAI_NOTIFICATION_ADDR=${CHATAI_NOTIFICATION_ADDR:-127.0.0.1:15054}
# All the load comes from one address, many handshakes at a time: no
# per-address cap on unfinished connections (docs/protocol.md, "Connection limits").
export CHATAI_MAX_UNFINISHED_PER_IP=${CHATAI_MAX_UNFINISHED_PER_IP:-0}
export CHATAI_DATABASE_URL=${CHATAI_DATABASE_URL:-sqlite://$BENCH_DIR/chatai.db}
export RUST_LOG=${RUST_LOG:-warn}

mkdir -p "$BENCH_DIR"
if [[ -s $BENCH_DIR/pids ]]; then
    echo "$BENCH_DIR/pids exists: run bench/stop-system.sh first" >&2
    exit 1
fi
# A part started alone refuses to run without an internal token (or TLS).
if [[ -z ${CHATAI_INTERNAL_TOKEN:-} ]]; then
    CHATAI_INTERNAL_TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
fi
export CHATAI_INTERNAL_TOKEN
(umask 077 && printf '%s\n' "$CHATAI_INTERNAL_TOKEN" > "$BENCH_DIR/internal-token")
: > "$BENCH_DIR/pids"
for part in chat handoff presence notification; do
    "$bin" "$part" > "$BENCH_DIR/$part.log" 2>&1 &
    echo "$part $!" >> "$BENCH_DIR/pids"
done
sleep 2
"$bin" gateway > "$BENCH_DIR/gateway.log" 2>&1 &
echo "gateway $!" >> "$BENCH_DIR/pids"
if [[ -n ${BENCH_SECOND_GATEWAY:-} ]]; then
    CHATAI_GATEWAY_ADDR=$BENCH_SECOND_GATEWAY CHATAI_GATEWAY_ID=gateway-2 \
        "$bin" gateway > "$BENCH_DIR/gateway-2.log" 2>&1 &
    echo "gateway-2 $!" >> "$BENCH_DIR/pids"
fi

for _ in $(seq 1 60); do
    if curl -fsS "http://$CHATAI_GATEWAY_ADDR/api/websocket/health" > /dev/null 2>&1; then
        echo "healthy: ws://$CHATAI_GATEWAY_ADDR (internal token in $BENCH_DIR/internal-token)"
        cat "$BENCH_DIR/pids"
        exit 0
    fi
    sleep 1
done
echo "the gateway did not become healthy; see $BENCH_DIR/*.log" >&2
exit 1
