#!/usr/bin/env bash
# Routing benchmark on PostgreSQL: a release allot on 127.0.0.1 against a
# fresh database, driven by examples/route_load.rs (32 concurrent clients by
# default). Loopback only; bounded by the participant count.
#
#   bash bench/routing.sh                # 3000 participants, 32 clients
#   PARTICIPANTS=10000 CLIENTS=64 bash bench/routing.sh
#   PRELOAD=4000 CLIENTS=1 PARTICIPANTS=1000 bash bench/routing.sh   # against a large idle pool
set -euo pipefail
cd "$(dirname "$0")/.."

PARTICIPANTS=${PARTICIPANTS:-3000}
CLIENTS=${CLIENTS:-32}
PRELOAD=${PRELOAD:-0}
PG=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
ADDR=127.0.0.1:18183

# ALLOT_BIN runs another build of the server (e.g. an older commit's, for a
# comparison on the same machine at the same time).
ALLOT_BIN=${ALLOT_BIN:-./target/release/allot}
cargo build --release --quiet --bin allot --example route_load
schema="bench_$$"
psql "$PG" -q -c "CREATE SCHEMA $schema"
work=$(mktemp -d)
ALLOT_LISTEN=$ADDR ALLOT_LOG_LEVEL=warn ALLOT_DATABASE_URL="$PG?options=-c%20search_path%3D$schema" \
    "$ALLOT_BIN" >"$work/allot.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait 2>/dev/null || true; psql "$PG" -q -c "DROP SCHEMA $schema CASCADE"; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
    curl -fs "http://$ADDR/readyz" >/dev/null && break
    sleep 0.1
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); PostgreSQL $(psql "$PG" -Atc 'SHOW server_version')"
./target/release/examples/route_load "http://$ADDR" "$PARTICIPANTS" "$CLIENTS" "$PRELOAD"
