#!/usr/bin/env bash
# The broker hop: `POST /revoke` at region a -> the first 401 for that token at region b's
# Envoy, through the Kafka-protocol broker, beside the same revocation seen at a's own
# Envoy (E3). Runs `scripts/run.sh --regions 2` (release build, tansu, Redis, two Envoys)
# once per consumer fetch wait in HOP_FETCH_WAITS and prints one table, so the rows of
# one run compare like with like.
#
#   bench/hop.sh [COUNT]          COUNT revocations per region pair and setting [100]
#   HOP_FETCH_WAITS="10 2 1"      CP_KAFKA_FETCH_WAIT_MS values to compare (tansu answers a
#                                 fetch only when its wait ends, Kafka as soon as data is in)
#   HOP_BASE_PORT=18000           first of the ports the runs use (see below)
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-100}
WAITS=${HOP_FETCH_WAITS:-"10 2 1"}
BASE=${HOP_BASE_PORT:-18000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"

echo "== building (release control plane, wasm filter)"
cargo build -q --release -p control-plane
cargo build -q -p edge-filter --target wasm32-wasip1 --profile wasm-release

work=$(mktemp -d)
runner=
cleanup() {
  if [ -n "$runner" ]; then kill -TERM "$runner" 2>/dev/null || true; wait "$runner" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

rows=()
for wait_ms in $WAITS; do
  cp=$BASE cp_admin=$((BASE + 100)) envoy=$((BASE + 200)) envoy_admin=$((BASE + 300))
  log="$work/run-$wait_ms.log"
  echo "== regions a and b, CP_KAFKA_FETCH_WAIT_MS=$wait_ms"
  CP_KAFKA_FETCH_WAIT_MS=$wait_ms scripts/run.sh --regions 2 --no-build \
    --data-dir "$work/data-$wait_ms" --cp-port "$cp" --cp-admin-port "$cp_admin" \
    --envoy-port "$envoy" --envoy-admin-port "$envoy_admin" \
    --upstream-port $((BASE + 400)) --redis-port $((BASE + 500)) \
    --kafka-port $((BASE + 600)) >"$log" 2>&1 &
  runner=$!
  for _ in $(seq 1 600); do
    grep -qx ready "$log" && break
    kill -0 "$runner" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.2
  done
  grep -qx ready "$log" || { echo "the regions never became ready:" >&2; cat "$log" >&2; exit 1; }
  secret=$(cat "$work/data-$wait_ms/a/admin.secret")
  : >"$work/tokens-a.txt"
  : >"$work/tokens-b.txt"
  for file in tokens-a tokens-b; do
    for i in $(seq "$COUNT"); do
      curl -sf -X POST "http://127.0.0.1:$cp/token" -H "authorization: Bearer $secret" \
        -H 'content-type: application/json' \
        -d "{\"subject\":\"hop-$file-$i\",\"expires_minutes\":60}" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])' \
          >>"$work/$file.txt"
    done
  done
  # b's Envoy accepts a's tokens once b's control plane has a's keys and b's filter the
  # JWKS with them: wait for the first token to pass there.
  first=$(head -n 1 "$work/tokens-b.txt")
  for _ in $(seq 1 600); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $first" \
      "http://127.0.0.1:$((envoy + 1))/")
    [ "$code" = 200 ] && break
    sleep 0.5
  done
  [ "$code" = 200 ] || { echo "region b's Envoy never accepted a's token ($code)" >&2; exit 1; }
  same=$(python3 bench/e3.py "http://127.0.0.1:$cp" "$secret" "http://127.0.0.1:$envoy/" \
    "$work/tokens-a.txt" "$COUNT")
  cross=$(python3 bench/e3.py "http://127.0.0.1:$cp" "$secret" "http://127.0.0.1:$((envoy + 1))/" \
    "$work/tokens-b.txt" "$COUNT")
  read -r s50 s99 smax ack sn <<<"$same"
  read -r c50 c99 cmax _ cn <<<"$cross"
  rows+=("$(printf '| %s | %s | %s | %s / %s / %s | %s / %s / %s |' \
    "$wait_ms" "$sn" "$ack" "$s50" "$s99" "$smax" "$c50" "$c99" "$cmax")")
  kill -TERM "$runner" 2>/dev/null || true
  wait "$runner" 2>/dev/null || true
  runner=
done

echo
echo "revoke at a -> first 401 (ms, p50 / p99 / max), release build, tansu broker"
echo
echo "| fetch wait (ms) | revocations | a's answer, p50 | a's Envoy (E3) | b's Envoy (broker hop) |"
echo "|---:|---:|---:|---|---|"
printf '%s\n' "${rows[@]}"
