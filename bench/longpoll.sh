#!/usr/bin/env bash
# Long-poll benchmark (not part of the test suite): two release allot
# replicas on 127.0.0.1 sharing one fresh PostgreSQL schema, driven by
# examples/longpoll.rs:
#
#   1. wake-up delay across replicas: a participant long-polls replica A
#      while replica B forms its pair; the delay is from B's answer to A's
#      answer to the poll (SAMPLES of them, p50/p99);
#   2. memory per held long-poll: HELD participants wait on A, each with a
#      long-poll (wait_seconds=60) held open on A, opened OPEN_RATE a second
#      (each costs A a write and a few reads as it arrives; far faster than
#      the store serves, they queue past db_acquire_timeout_ms and are
#      answered 503); A's RSS before and while
#      they are held; then one formation on B answers them all, and every
#      one must be answered "assigned".
#
# Loopback only; everything (processes, schema, temporary files) is removed
# on exit, whatever happens.
#
#   bash bench/longpoll.sh                      # 300 samples, 10 000 held polls
#   SAMPLES=100 HELD=2000 bash bench/longpoll.sh
#
# Knobs: SAMPLES (300), HELD (10000), OPEN_RATE (1000), LONGPOLL_PORTS ("18311 18312"),
# BENCH_DATABASE_URL. Holding 10 000 polls takes 10 000 sockets on each side:
# the open-file limit (ulimit -n) must be above that.
set -euo pipefail
cd "$(dirname "$0")/.."

SAMPLES=${SAMPLES:-300}
HELD=${HELD:-10000}
OPEN_RATE=${OPEN_RATE:-1000}
PG=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
PORTS=(${LONGPOLL_PORTS:-18311 18312})
(( ${#PORTS[@]} == 2 )) || { echo "LONGPOLL_PORTS needs two ports" >&2; exit 2; }
if (( $(ulimit -n) < HELD + 1000 )); then
    ulimit -n $(( HELD + 1000 )) 2>/dev/null || {
        echo "holding $HELD polls needs more open files than ulimit -n allows ($(ulimit -n))" >&2
        exit 2
    }
fi

source bench/lib.sh
require_free_ports LONGPOLL_PORTS "${PORTS[@]}"

cargo build --release --quiet --bin allot --example longpoll

schema="longpoll_$$"
work=$(mktemp -d)
pids=()
driver=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $driver ]] && kill "$driver" 2>/dev/null || true
    stop_processes 0.2 ${pids[@]+"${pids[@]}"}
    PGOPTIONS="--client-min-messages=warning" psql "$PG" -q -c "DROP SCHEMA IF EXISTS $schema CASCADE" || true
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

psql "$PG" -q -c "CREATE SCHEMA $schema"
url="$PG?options=-c%20search_path%3D$schema"
for i in 0 1; do
    ALLOT_LISTEN=127.0.0.1:${PORTS[$i]} ALLOT_LOG_LEVEL=warn ALLOT_DATABASE_URL="$url" \
        ./target/release/allot >"$work/replica-$i.log" 2>&1 &
    pids+=($!)
done
for i in 0 1; do
    wait_ready "replica $i" "${PORTS[$i]}" "${pids[$i]}" "$work/replica-$i.log"
done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); PostgreSQL $(psql "$PG" -Atc 'SHOW server_version'); schema $schema"
echo "replicas: A 127.0.0.1:${PORTS[0]} (pid ${pids[0]}), B 127.0.0.1:${PORTS[1]}; $SAMPLES samples, $HELD held polls opened $OPEN_RATE/s"
# In the background, so that a signal to this script reaches its traps at once.
./target/release/examples/longpoll "http://127.0.0.1:${PORTS[0]}" "http://127.0.0.1:${PORTS[1]}" \
    "${pids[0]}" "$SAMPLES" "$HELD" "$OPEN_RATE" &
driver=$!
status=0
wait "$driver" || status=$?
driver=
for i in 0 1; do
    kill -0 "${pids[$i]}" 2>/dev/null || { echo "replica $i died:" >&2; tail -20 "$work/replica-$i.log" >&2; status=1; }
    errors=$(grep -c ERROR "$work/replica-$i.log" || true)
    (( errors == 0 )) || { echo "replica $i logged $errors errors:"; grep -m 5 ERROR "$work/replica-$i.log" | cut -c1-300; }
done
exit "$status"
