#!/usr/bin/env bash
# HTTP benchmark on loopback: allot's single assign side by side with a bare
# axum handler that parses the same JSON and answers a constant (the
# ceiling), then batch assign. Sends traffic to 127.0.0.1 only, for a bounded
# time, and stops both servers when it ends.
#
#   bash bench/http.sh                 # 10 s per run, 64 connections, 2 wrk threads
#   DURATION=30s CONNECTIONS=128 bash bench/http.sh
#   EXPOSURES=false bash bench/http.sh # the experiment without its ledger
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
EXPOSURES=${EXPOSURES:-true}
ALLOT=127.0.0.1:18181
CEILING=127.0.0.1:18182

if ! command -v wrk >/dev/null; then
    echo "installing wrk (Debian package)"
    apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --quiet --bin allot --example ceiling

work=$(mktemp -d)
ALLOT_LISTEN=$ALLOT ALLOT_DATA_DIR="$work" ./target/release/allot >"$work/allot.log" 2>&1 &
allot_pid=$!
./target/release/examples/ceiling $CEILING >"$work/ceiling.log" 2>&1 &
ceiling_pid=$!
trap 'kill $allot_pid $ceiling_pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

for _ in $(seq 1 100); do
    curl -fs "http://$ALLOT/readyz" >/dev/null && curl -s -o /dev/null "http://$CEILING/" && break
    sleep 0.1
done

json() { curl -fs -X PUT -H 'content-type: application/json' "$@" >/dev/null; }
json "http://$ALLOT/v1/flags/organizations:code-review-experiments-enabled" \
    -d '{"rules": [{"name": "early adopters", "condition": {"plan": {"$in": ["business", "enterprise"]}}, "rollout": 100}, {"name": "everyone else", "rollout": 10}]}'
json "http://$ALLOT/v1/experiments/code-review" \
    -d '{"eligibility_flag": "organizations:code-review-experiments-enabled", "salt": "code-review", "treatments": [{"name": "noop", "weight": 1}, {"name": "cost-optimized", "weight": 1}], "exposures": '"$EXPOSURES"'}'

cat >"$work/single.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, '{"org_id": 42, "unit_id": "getsentry/sentry#' .. n .. '", "attributes": {"plan": "business"}}')
end
LUA
python3 - "$work/batch.json" <<'PY'
import json, sys
items = [{"experiment": "code-review", "org_id": 42, "unit_id": f"getsentry/sentry#{i}", "attributes": {"plan": "business"}} for i in range(1000)]
json.dump({"items": items}, open(sys.argv[1], "w"))
PY
cat >"$work/batch.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$work/batch.json", "r")
wrk.body = f:read("*a")
f:close()
LUA

rps() { awk '/Requests\/sec/ {print $2}'; }
run() {
    local name=$1 url=$2 script=$3
    local out
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$script" "$url")
    echo "--- $name" >&2
    echo "$out" >&2
    echo "$out" | rps
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); wrk -t$THREADS -c$CONNECTIONS -d$DURATION; exposures: $EXPOSURES"
ceiling=$(run "ceiling (bare axum, same JSON)" "http://$CEILING/v1/experiments/code-review/assign" "$work/single.lua")
single=$(run "allot single assign" "http://$ALLOT/v1/experiments/code-review/assign" "$work/single.lua")
batch=$(DURATION=$DURATION run "allot batch assign (1000 items)" "http://$ALLOT/v1/assign" "$work/batch.lua")
python3 - "$ceiling" "$single" "$batch" <<'PY'
import sys
ceiling, single, batch = map(float, sys.argv[1:])
print(f"ceiling      {ceiling:>12,.0f} req/s")
print(f"allot single {single:>12,.0f} req/s  ({100 * single / ceiling:.0f}% of the ceiling)")
print(f"allot batch  {batch:>12,.1f} req/s = {batch * 1000:,.0f} assignments/s")
PY
