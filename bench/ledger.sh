#!/usr/bin/env bash
# Exposure-ledger benchmark on PostgreSQL (§8): ingestion of new units,
# results for the phase holding them, and a streamed export of that phase
# (examples/ledger_load.rs). Works in a schema of its own, dropped after.
#
#   bash bench/ledger.sh               # 1 000 000 units, batches of 50 000
#   UNITS=200000 BATCH=10000 bash bench/ledger.sh
set -euo pipefail
cd "$(dirname "$0")/.."

UNITS=${UNITS:-1000000}
BATCH=${BATCH:-50000}
PG=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
schema="bench_ledger_$$"

cargo build --release --quiet --example ledger_load
psql "$PG" -q -c "CREATE SCHEMA $schema"
trap 'PGOPTIONS="--client-min-messages=warning" psql "$PG" -q -c "DROP SCHEMA IF EXISTS $schema CASCADE" || true' EXIT
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
./target/release/examples/ledger_load "$PG?options=-c%20search_path%3D$schema" "$UNITS" "$BATCH"
