#!/usr/bin/env bash
# Propagation benchmark (not part of the test suite): two release allot
# replicas on 127.0.0.1 sharing one fresh PostgreSQL schema; for each size N,
# examples/propagation.rs configures N experiments through replica A, makes W
# weight changes through A and times each until replica B serves the new
# version, and times creates on A until B's first 200. Contract §7 says a
# change is in force on every replica within 100 ms (p99). Loopback only;
# everything (processes, schema, temporary files) is removed on exit,
# whatever happens.
#
#   bash bench/propagation.sh                  # N = 1, 100, 1000; W = 200
#   SIZES="10 5000" CHANGES=500 bash bench/propagation.sh
#   REFRESH_MS=60000 bash bench/propagation.sh # polling out of the way: push only
#
# Knobs: SIZES ("1 100 1000"), CHANGES (200), CREATES (20), REFRESH_MS (the
# replicas' refresh_interval_ms; unset = their default), PROPAGATION_PORTS
# ("18301 18302"), PROPAGATION_SEED, BENCH_DATABASE_URL.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=(${SIZES:-1 100 1000})
CHANGES=${CHANGES:-200}
CREATES=${CREATES:-20}
PG=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
PORTS=(${PROPAGATION_PORTS:-18301 18302})
(( ${#PORTS[@]} == 2 )) || { echo "PROPAGATION_PORTS needs two ports" >&2; exit 2; }

source bench/lib.sh
require_free_ports PROPAGATION_PORTS "${PORTS[@]}"

cargo build --release --quiet --bin allot --example propagation

schema="prop_$$"
work=$(mktemp -d)
pids=()
driver= viewer=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $driver ]] && kill "$driver" 2>/dev/null || true
    [[ -n $viewer ]] && kill "$viewer" 2>/dev/null || true
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
extra=()
[[ -n ${REFRESH_MS:-} ]] && extra=("ALLOT_REFRESH_INTERVAL_MS=$REFRESH_MS")
for i in 0 1; do
    env ${extra[@]+"${extra[@]}"} ALLOT_LISTEN=127.0.0.1:${PORTS[$i]} ALLOT_LOG_LEVEL=warn ALLOT_DATABASE_URL="$url" \
        ./target/release/allot >"$work/replica-$i.log" 2>&1 &
    pids+=($!)
done
for i in 0 1; do
    wait_ready "replica $i" "${PORTS[$i]}" "${pids[$i]}" "$work/replica-$i.log"
done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); PostgreSQL $(psql "$PG" -Atc 'SHOW server_version'); schema $schema"
echo "replicas: A 127.0.0.1:${PORTS[0]}, B 127.0.0.1:${PORTS[1]}; refresh_interval_ms ${REFRESH_MS:-default}; $CHANGES weight changes and $CREATES creates per size"
status=0
for n in "${SIZES[@]}"; do
    echo
    echo "== N = $n"
    # In the background, so that a signal to this script reaches its traps at
    # once; its output goes to a file (read for the table) and to the screen.
    ./target/release/examples/propagation "http://127.0.0.1:${PORTS[0]}" "http://127.0.0.1:${PORTS[1]}" \
        "$n" "$CHANGES" "$CREATES" >"$work/run-$n.txt" &
    driver=$!
    tail -n +1 -f --pid="$driver" "$work/run-$n.txt" &
    viewer=$!
    rc=0
    wait "$driver" || rc=$?
    wait "$viewer" || true
    driver= viewer=
    (( rc == 0 )) || { echo "N = $n: the driver exited $rc" >&2; status=1; }
    for i in 0 1; do
        kill -0 "${pids[$i]}" 2>/dev/null || { echo "replica $i died:" >&2; tail -20 "$work/replica-$i.log" >&2; exit 1; }
    done
done

echo
echo "Propagation A → B (ms; each delay includes one GET on B, shown apart)"
printf '%-6s %-7s %-8s %-8s %-8s %-8s %-10s %-10s %-8s %-5s\n' N changes p50 p90 p99 max create_p50 create_max get_p50 lost
for n in "${SIZES[@]}"; do
    line=$(grep -h '^RESULT ' "$work/run-$n.txt" || true)
    if [[ -z $line ]]; then
        printf '%-6s (no result)\n' "$n"
        continue
    fi
    field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
    printf '%-6s %-7s %-8s %-8s %-8s %-8s %-10s %-10s %-8s %-5s\n' "$n" "$(field changes)" "$(field p50)" "$(field p90)" \
        "$(field p99)" "$(field max)" "$(field create_p50)" "$(field create_max)" "$(field get_p50)" "$(field lost)"
done
for i in 0 1; do
    errors=$(grep -c ERROR "$work/replica-$i.log" || true)
    (( errors == 0 )) || { echo "replica $i logged $errors errors:"; grep -m 5 ERROR "$work/replica-$i.log" | cut -c1-300; }
done
exit "$status"
