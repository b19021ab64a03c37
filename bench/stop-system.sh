#!/usr/bin/env bash
# Stops what bench/start-system.sh started (SIGTERM by pid, then waits).
set -uo pipefail
BENCH_DIR=${BENCH_DIR:-/tmp/chatai-bench}
[[ -f $BENCH_DIR/pids ]] || { echo "nothing to stop"; exit 0; }
# The gateway first, so its connections close before the services go.
tac "$BENCH_DIR/pids" | while read -r part pid; do
    kill -TERM "$pid" 2> /dev/null && echo "stopping $part ($pid)"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2> /dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2> /dev/null && { echo "$part ($pid) still running; SIGKILL"; kill -KILL "$pid"; }
done
rm -f "$BENCH_DIR/pids"
