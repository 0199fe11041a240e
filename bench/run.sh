#!/usr/bin/env bash
# Benchmarks the edge: the same Envoy listener with no auth filter, with our edge filter,
# and with Envoy's native jwt_authn on the control plane's JWKS, under the same load, in
# one run. Prints a table of throughput, latency and ratios, and writes BENCHMARKS.md.
#
# Settings (environment): BENCH_SECONDS (10) per measurement, BENCH_CONNECTIONS (32),
# BENCH_TOKENS (200) distinct tokens per rotating scenario, BENCH_REVOKED (1000) entries
# in the revocation set, BENCH_CONFIGS (a subset of: nofilter edge-filter edge-filter-cold
# jwt-authn), ENVOY_BIN, CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN="${BENCH_SECONDS:-10}"
CONNECTIONS="${BENCH_CONNECTIONS:-32}"
TOKENS="${BENCH_TOKENS:-200}"
REVOKED="${BENCH_REVOKED:-1000}"
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"

if ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
fi
ENVOY_BIN="$(scripts/envoy-bin.sh)"

cargo build --release -p control-plane
cargo build -p edge-filter --target wasm32-wasip1 --profile wasm-release

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_http() { # url: wait up to 30 s for any HTTP answer
  for _ in $(seq 300); do
    curl -s -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2
  return 1
}

CP_PORT=$(free_port); UP_PORT=$(free_port); UP_ADMIN=$(free_port)
EDGE_PORT=$(free_port); EDGE_ADMIN=$(free_port)
CP="http://127.0.0.1:$CP_PORT"

echo "== control plane on $CP, upstream on 127.0.0.1:$UP_PORT"
"$TARGET/release/control-plane" serve --listen "127.0.0.1:$CP_PORT" --data-dir "$work/cp" \
  >"$work/cp.log" 2>&1 &
pids+=($!)
wait_http "$CP/health"
sed -e "s/port_value: 9911/port_value: $UP_ADMIN/" -e "s/port_value: 8081/port_value: $UP_PORT/" \
  bench/upstream.yaml >"$work/upstream.yaml"
"$ENVOY_BIN" -c "$work/upstream.yaml" --concurrency 1 --base-id 7301 -l error \
  >"$work/upstream.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$UP_PORT/"

ADMIN_SECRET=$(cat "$work/cp/admin.secret")
echo "== issuing $TOKENS EdDSA and $TOKENS ML-DSA-65 tokens, revoking $REVOKED jtis"
issue_http() {
  curl -sf -X POST "$CP/token" -H "authorization: Bearer $ADMIN_SECRET" \
    -H 'content-type: application/json' -d "{\"subject\":\"user-$1\",\"expires_minutes\":60}" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])'
}
for i in $(seq "$TOKENS"); do issue_http "$i"; done >"$work/eddsa.txt"
head -n 1 "$work/eddsa.txt" >"$work/eddsa-one.txt"
for i in $(seq "$TOKENS"); do
  "$TARGET/release/control-plane" issue --data-dir "$work/cp" --signing-alg ML-DSA-65 \
    --subject "pq-user-$i" --expires-minutes 60 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])'
done >"$work/mldsa.txt"
for i in $(seq "$REVOKED"); do
  curl -sf -o /dev/null -X POST "$CP/revoke" -H "authorization: Bearer $ADMIN_SECRET" \
    -H 'content-type: application/json' -d "{\"type\":\"revoke_jti\",\"value\":\"bench-$i\"}"
done

config_for() { # name -> rewritten config path; "edge-filter-cold" keeps 1 verified token
  local source=$1 cold=()
  if [ "$1" = edge-filter-cold ]; then
    source=edge-filter
    cold=(-e 's/"staleness_bound_seconds": 30,/"staleness_bound_seconds": 30, "cache_max_entries": 1,/')
  fi
  sed "${cold[@]}" -e "s/port_value: 10000/port_value: $EDGE_PORT/" -e "s/port_value: 9901/port_value: $EDGE_ADMIN/" \
    -e "s/port_value: 8000/port_value: $CP_PORT/" -e "s/port_value: 8081/port_value: $UP_PORT/" \
    -e "s#127.0.0.1:8000#127.0.0.1:$CP_PORT#g" \
    -e "s#target/wasm32-wasip1/wasm-release/edge_filter.wasm#$TARGET/wasm32-wasip1/wasm-release/edge_filter.wasm#" \
    "envoy/bench-$source.yaml" >"$work/$1.yaml"
  echo "$work/$1.yaml"
}

# One measurement: prints "req/s p50_ms p99_ms non2xx".
measure() { # tokens-file
  local out
  out=$(TOKENS_FILE="$1" wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency \
    -s bench/rotate.lua "http://127.0.0.1:$EDGE_PORT/")
  python3 - "$out" <<'PY'
import re, sys
out = sys.argv[1]
def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s|m)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
errors = re.search(r"Socket errors: (.*)", out)
print(f"{rps:.0f} {p50:.3f} {p99:.3f} {int(bad.group(1)) if bad else 0}{' socket-errors' if errors else ''}")
PY
}

scenarios=("eddsa-one:EdDSA, one token (verified-token cache)" "eddsa:EdDSA, $TOKENS tokens in turn"
  "mldsa:ML-DSA-65, $TOKENS tokens in turn")
declare -A result
base_id=7310
for config in ${BENCH_CONFIGS:-nofilter edge-filter edge-filter-cold jwt-authn}; do
  base_id=$((base_id + 1))
  file=$(config_for "$config")
  echo "== envoy: $config"
  "$ENVOY_BIN" -c "$file" --concurrency 2 --base-id "$base_id" -l error >"$work/envoy-$config.log" 2>&1 &
  envoy_pid=$!
  pids+=("$envoy_pid")
  wait_http "http://127.0.0.1:$EDGE_ADMIN/ready"
  # Ready means every filter accepts a valid token (the edge filter fails closed until
  # it has the keys and a first revocation set; jwt_authn fetches its JWKS lazily).
  token=$(cat "$work/eddsa-one.txt")
  for _ in $(seq 300); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $token" "http://127.0.0.1:$EDGE_PORT/")
    [ "$code" = 200 ] && break
    sleep 0.1
  done
  TOKENS_FILE="$work/eddsa.txt" wrk -t2 -c"$CONNECTIONS" -d2s -s bench/rotate.lua \
    "http://127.0.0.1:$EDGE_PORT/" >/dev/null # warm-up
  for s in "${scenarios[@]}"; do
    key=${s%%:*}
    if [ "$config" = jwt-authn ] && [ "$key" = mldsa ]; then
      result[$config/$key]="- - - n/a"
      continue
    fi
    if [ "$config" = edge-filter-cold ]; then
      [ "$key" = eddsa-one ] && continue
      # The edge filter with its verified-token cache cut to one entry: with tokens in
      # turn every request parses and verifies its signature.
      result[edge-filter/$key-cold]=$(measure "$work/$key.txt")
      echo "   ${s#*:}, cache off: ${result[edge-filter/$key-cold]}"
      continue
    fi
    result[$config/$key]=$(measure "$work/$key.txt")
    echo "   ${s#*:}: ${result[$config/$key]}"
  done
  kill "$envoy_pid"
  wait "$envoy_pid" 2>/dev/null || true
done

# A run of a subset of the configs prints its table but leaves BENCHMARKS.md alone.
report=BENCHMARKS.md
[ -z "${BENCH_CONFIGS:-}" ] || report=/dev/null
envoy_version=$("$ENVOY_BIN" --version | sed -n 's#.*/\([0-9][0-9]*\.[0-9][0-9]*\.[0-9][0-9]*\)/.*#\1#p' | head -1)
python3 - "$SECONDS_PER_RUN" "$CONNECTIONS" "$REVOKED" "$(nproc)" "$envoy_version" \
  "${scenarios[@]}" -- \
  "$(for k in "${!result[@]}"; do echo "$k=${result[$k]}"; done)" <<'PY' | tee "$report"
import sys
args = sys.argv[1:]
seconds, conns, revoked, cores, envoy = args[:5]
sep = args.index("--")
scenarios = [s.split(":", 1) for s in args[5:sep]]
results = {}
for line in args[sep + 1].splitlines():
    k, v = line.split("=", 1)
    results[k] = v.split()
def rps(cfg, key):
    r = results.get(f"{cfg}/{key}")
    return None if not r or r[0] == "-" else float(r[0])
def cell(cfg, key):
    r = results.get(f"{cfg}/{key}")
    if not r or r[0] == "-":
        return "n/a"
    bad = f", {r[3]} non-2xx" if r[3] != "0" else ""
    return f"{float(r[0]):,.0f} req/s, p50 {float(r[1]):.2f} ms, p99 {float(r[2]):.2f} ms{bad}"
def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "n/a"
print("# Benchmarks\n")
print("Produced by `bench/run.sh` (one run, all columns under the same load): wrk, "
      f"{conns} connections, {seconds} s per cell, Envoy {envoy} with `--concurrency 2`, "
      f"{cores} cores shared by wrk, Envoy, the upstream and the control plane; "
      f"{revoked} entries in the edge revocation set.\n")
print("| scenario | no filter | edge filter | jwt_authn | edge / no filter | edge / jwt_authn |")
print("|---|---|---|---|---|---|")
rows = []
for key, label in scenarios:
    rows.append((key, key, label))
    if key != "eddsa-one":
        rows.append((key, key + "-cold", label + ", edge cache off"))
for base, key, label in rows:
    e, n, j = rps("edge-filter", key), rps("nofilter", base), rps("jwt-authn", base)
    print(f"| {label} | {cell('nofilter', base)} | {cell('edge-filter', key)} | "
          f"{cell('jwt-authn', base)} | {ratio(e, n)} | {ratio(e, j)} |")
print("\nRows marked \"edge cache off\" run the edge filter with `cache_max_entries: 1`, so "
      "every request parses the token and verifies its signature in wasm; their no-filter and "
      "jwt_authn cells repeat the row above (the same workload). jwt_authn cannot verify "
      "ML-DSA-65 and has no revocation; the edge filter checks the revocation set on every "
      "request in every row. Figures move by about 10% between runs on this shared machine: "
      "compare columns within one run.")
PY
