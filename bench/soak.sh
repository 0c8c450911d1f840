#!/usr/bin/env bash
# Soak test (not part of the test suite): two release allot replicas on
# 127.0.0.1 sharing one fresh PostgreSQL schema, driven for DURATION at RATE
# requests/s of mixed valid and hostile traffic by examples/soak.rs, which
# watches both processes (RSS, CPU, open descriptors) and fails on any 5xx,
# a dead replica or a broken invariant. Then both replicas get SIGTERM and
# must exit 0. Loopback only; everything is removed on exit, whatever happens.
#
#   DURATION=60 bash bench/soak.sh       # smoke run
#   bash bench/soak.sh                   # 10 minutes at 300 requests/s
#   DURATION=30m RATE=500 bash bench/soak.sh
#
# The replicas' logs (warn level) stay in target/soak/ for the request ids
# (soak-<n>) the driver quotes. Knobs: DURATION, RATE, SOAK_PORTS ("18291
# 18292"), SOAK_BACKTRACE (0), BENCH_DATABASE_URL.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10m}
RATE=${RATE:-300}
PG=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
PORTS=(${SOAK_PORTS:-18291 18292})

case $DURATION in
    *m) seconds=$(( ${DURATION%m} * 60 )) ;;
    *s) seconds=${DURATION%s} ;;
    *) seconds=$DURATION ;;
esac
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || { echo "DURATION must be seconds or Nm, not '$DURATION'" >&2; exit 2; }

source bench/lib.sh
require_free_ports SOAK_PORTS "${PORTS[@]}"

cargo build --release --quiet --bin allot --example soak

schema="soak_$$"
logs=target/soak
mkdir -p "$logs"
pids=()
driver=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $driver ]] && kill "$driver" 2>/dev/null || true
    # Give them their shutdown grace, then make sure.
    stop_processes 0.5 ${pids[@]+"${pids[@]}"}
    psql "$PG" -q -c "DROP SCHEMA IF EXISTS $schema CASCADE" || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

psql "$PG" -q -c "CREATE SCHEMA $schema"
url="$PG?options=-c%20search_path%3D$schema"
# RUST_BACKTRACE off, as in the image: the first panic's backtrace would load
# the binary's debug info (over 100 MiB of RSS, once) and blur the memory
# figures. SOAK_BACKTRACE=1 brings it back to locate a panic.
for i in "${!PORTS[@]}"; do
    RUST_BACKTRACE=${SOAK_BACKTRACE:-0} ALLOT_LISTEN=127.0.0.1:${PORTS[$i]} ALLOT_LOG_LEVEL=warn ALLOT_DATABASE_URL="$url" \
        ./target/release/allot >"$logs/replica-$((i + 1)).log" 2>&1 &
    pids+=($!)
done
for i in "${!PORTS[@]}"; do
    wait_ready "replica $((i + 1))" "${PORTS[$i]}" "${pids[$i]}" "$logs/replica-$((i + 1)).log"
done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); PostgreSQL $(psql "$PG" -Atc 'SHOW server_version'); schema $schema"
args=()
for i in "${!PORTS[@]}"; do args+=("127.0.0.1:${PORTS[$i]}=${pids[$i]}"); done
# In the background, so that a signal to this script reaches its traps at once.
./target/release/examples/soak "$seconds" "$RATE" "${args[@]}" &
driver=$!
status=0
wait "$driver" || status=$?
driver=

# SIGTERM: each replica must drain and exit 0.
for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
for i in "${!pids[@]}"; do
    rc=0
    wait "${pids[$i]}" || rc=$?
    echo "replica $((i + 1)) (pid ${pids[$i]}) exited $rc after SIGTERM"
    (( rc == 0 )) || status=1
done
pids=()
for i in "${!PORTS[@]}"; do
    log="$logs/replica-$((i + 1)).log"
    echo "replica $((i + 1)) log: $(grep -c . "$log" || true) lines ($log); WARN $(grep -c WARN "$log" || true), ERROR $(grep -c ERROR "$log" || true)"
    grep -m 5 ERROR "$log" | cut -c1-400 || true
done
echo "soak: $([[ $status == 0 ]] && echo PASS || echo FAIL)"
exit "$status"
