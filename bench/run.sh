#!/usr/bin/env bash
# Benchmarks the edge in one command: the same Envoy listener with no filter, a no-op
# proxy-wasm filter (the floor of any wasm filter), our edge filter (verified-token cache
# on, and cut to one entry so every request verifies), and Envoy's native jwt_authn with
# its JWT cache on and off, all under the same load. Every Envoy runs from the start and
# the cells are interleaved (round 1 of every cell, then round 2, ...); each figure is the
# median of BENCH_ROUNDS rounds. Besides req/s and latency it reports Envoy's CPU time per
# request (utime+stime of the Envoy process over the cell, from /proc/<pid>/stat), which
# moves less than req/s on shared cores. Then: E3 (revoke call -> first 401 at the edge),
# E5 (a 1,000,000-entry revocation set) and instruction counts (bench/count.sh).
# A full run (no BENCH_CONFIGS) writes the edge sections of BENCHMARKS.md.
#
# Settings (environment): BENCH_SECONDS (8) per cell, BENCH_ROUNDS (3), BENCH_CONNECTIONS
# (32), BENCH_TOKENS (200) distinct tokens per rotating scenario, BENCH_REVOKED (1000)
# entries in the revocation set, BENCH_E3 (200) revocations timed, BENCH_E5_ENTRIES
# (1000000), BENCH_CONFIGS (a subset of: nofilter noop edge edge-cold jwt-cache jwt-nocache
# e5; a subset skips E3 and the counts, and E5 unless it names e5: `BENCH_CONFIGS=e5` runs
# the E5 cells alone), BENCH_COUNT_CASES (cases of bench/count.sh, all),
# BENCH_REPORT (BENCHMARKS.md), ENVOY_BIN, CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN="${BENCH_SECONDS:-8}"
ROUNDS="${BENCH_ROUNDS:-3}"
CONNECTIONS="${BENCH_CONNECTIONS:-32}"
TOKENS="${BENCH_TOKENS:-200}"
REVOKED="${BENCH_REVOKED:-1000}"
E3_COUNT="${BENCH_E3:-200}"
E5_ENTRIES="${BENCH_E5_ENTRIES:-1000000}"
CONFIGS="${BENCH_CONFIGS:-nofilter noop edge edge-cold jwt-cache jwt-nocache}"
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TARGET_DIR="$TARGET"
CLK_TCK=$(getconf CLK_TCK)

if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
  elif command -v sudo >/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
  else
    echo "wrk is missing and this is not root: install Debian's wrk first" >&2
    exit 1
  fi
fi
full_run=yes
[ -z "${BENCH_CONFIGS:-}" ] || full_run=
run_e5=$full_run
[[ " $CONFIGS " != *" e5 "* ]] || run_e5=yes
if [ -n "$full_run" ] && ! command -v valgrind >/dev/null; then
  echo "valgrind is missing (instruction counts): apt-get install valgrind" >&2
  exit 1
fi
ENVOY_BIN="$(scripts/envoy-bin.sh)"

cargo build -j2 --release -p control-plane
cargo build -j2 --release -p edge-bench # alone, as bench/count.sh builds it (same features)
cargo build -j2 -p edge-filter -p noop-filter --target wasm32-wasip1 --profile wasm-release
WASM="$TARGET/wasm32-wasip1/wasm-release"

cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
cores=$(nproc)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== CPU: ${cpu_model:-unknown}, $cores cores; load average at start: $load_start"

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
wait_http() { # url: wait up to 60 s for any HTTP answer
  for _ in $(seq 600); do
    curl -s -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2
  return 1
}

CP_PORT=$(free_port); UP_PORT=$(free_port); UP_ADMIN=$(free_port)
CP="http://127.0.0.1:$CP_PORT"

echo "== control plane (release) on $CP, upstream on 127.0.0.1:$UP_PORT"
# The issuer the bench configs and edge-bench's E5 tokens name (a non-URL issuer still
# works, with a warning; the benchmarks measure no discovery).
"$TARGET/release/control-plane" serve --listen "127.0.0.1:$CP_PORT" --data-dir "$work/cp" \
  --issuer pq-control-plane >"$work/cp.log" 2>&1 &
pids+=($!)
wait_http "$CP/health"
sed -e "s/port_value: 9911/port_value: $UP_ADMIN/" -e "s/port_value: 8081/port_value: $UP_PORT/" \
  bench/upstream.yaml >"$work/upstream.yaml"
"$ENVOY_BIN" -c "$work/upstream.yaml" --concurrency 1 --base-id 7301 -l error \
  >"$work/upstream.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$UP_PORT/"

ADMIN_SECRET=$(cat "$work/cp/admin.secret")
export CP ADMIN_SECRET
echo "== issuing $TOKENS EdDSA and $TOKENS ML-DSA-65 tokens, revoking $REVOKED jtis (8 at a time)"
issue_http() { # n: one file per token, so parallel jobs never interleave their output
  curl -sf -X POST "$CP/token" -H "authorization: Bearer $ADMIN_SECRET" \
    -H 'content-type: application/json' -d "{\"subject\":\"user-$1\",\"expires_minutes\":60}" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])' >"$work/issued/$1"
}
export -f issue_http
export work
mkdir "$work/issued"
seq "$TOKENS" | xargs -P 8 -I{} bash -c 'issue_http {}'
for i in $(seq "$TOKENS"); do cat "$work/issued/$i"; done >"$work/eddsa.txt"
head -n 1 "$work/eddsa.txt" >"$work/eddsa-one.txt"
for i in $(seq "$TOKENS"); do
  "$TARGET/release/control-plane" issue --data-dir "$work/cp" --signing-alg ML-DSA-65 \
    --subject "pq-user-$i" --expires-minutes 60 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])'
done >"$work/mldsa.txt"
seq "$REVOKED" | xargs -P 8 -I{} curl -sf -o /dev/null -X POST "$CP/revoke" \
  -H "authorization: Bearer $ADMIN_SECRET" -H 'content-type: application/json' \
  -d '{"type":"revoke_jti","value":"bench-{}"}'
[ "$(grep -c '^ey[^.]*\.[^.]*\.[^.]*$' "$work/eddsa.txt")" = "$TOKENS" ] &&
  [ "$(grep -c '^ey[^.]*\.[^.]*\.[^.]*$' "$work/mldsa.txt")" = "$TOKENS" ] ||
  { echo "token issuance failed" >&2; exit 1; }

declare -A port admin envoy_pid
# Writes the config for one name: the listener and admin ports, the control plane, the
# upstream and the wasm paths rewritten; "edge-cold" keeps one verified token, "noop"
# swaps in the no-op filter, "jwt-cache" turns jwt_authn's JWT cache on.
config_for() { # name cp_port -> config path
  local name=$1 cp_port=$2 source extra=()
  case $name in
    nofilter) source=nofilter ;;
    edge | e5) source=edge-filter ;;
    noop)
      source=edge-filter
      extra=(-e "s#target/wasm32-wasip1/wasm-release/edge_filter.wasm#$WASM/noop_filter.wasm#")
      ;;
    edge-cold)
      source=edge-filter
      extra=(-e 's/"staleness_bound_seconds": 30,/"staleness_bound_seconds": 30, "cache_max_entries": 1,/')
      ;;
    jwt-nocache) source=jwt-authn ;;
    jwt-cache)
      source=jwt-authn
      extra=(-e 's/^\(\s*\)forward: true$/\1forward: true\n\1jwt_cache_config: {jwt_cache_size: 1000}/')
      ;;
  esac
  if [ "$name" = e5 ]; then
    # A feed that only changes when told to: no staleness during the E5 cells.
    extra=(-e 's/"staleness_bound_seconds": 30,/"staleness_bound_seconds": 3600,/'
      -e 's/"poll_wait_seconds": 10/"poll_wait_seconds": 1/')
  fi
  sed "${extra[@]}" -e "s/port_value: 10000/port_value: ${port[$name]}/" \
    -e "s/port_value: 9901/port_value: ${admin[$name]}/" \
    -e "s/port_value: 8000/port_value: $cp_port/" -e "s/port_value: 8081/port_value: $UP_PORT/" \
    -e "s#127.0.0.1:8000#127.0.0.1:$cp_port#g" \
    -e "s#target/wasm32-wasip1/wasm-release/edge_filter.wasm#$WASM/edge_filter.wasm#" \
    "envoy/bench-$source.yaml" >"$work/$name.yaml"
  echo "$work/$name.yaml"
}
base_id=7310
start_envoy() { # name cp_port token-file
  local name=$1 file code
  port[$name]=$(free_port); admin[$name]=$(free_port)
  file=$(config_for "$name" "$2")
  base_id=$((base_id + 1))
  "$ENVOY_BIN" -c "$file" --concurrency 2 --base-id "$base_id" -l error >"$work/envoy-$name.log" 2>&1 &
  envoy_pid[$name]=$!
  pids+=($!)
  wait_http "http://127.0.0.1:${admin[$name]}/ready"
  # Ready means the filter accepts a valid token (the edge filter fails closed until it
  # has the keys and a first revocation set; jwt_authn fetches its JWKS lazily).
  for _ in $(seq 600); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $(head -1 "$3")" \
      "http://127.0.0.1:${port[$name]}/")
    [ "$code" = 200 ] && return 0
    sleep 0.1
  done
  echo "$name never answered 200 (last $code)" >&2
  return 1
}
envoy_cpu_ticks() { # pid -> utime+stime in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}
# One cell: prints "req/s p50_ms p99_ms non2xx cpu_us_per_request".
measure() { # name tokens-file seconds
  local out before after
  before=$(envoy_cpu_ticks "${envoy_pid[$1]}")
  out=$(TOKENS_FILE="$2" wrk -t2 -c"$CONNECTIONS" -d"${3}s" --latency -s bench/rotate.lua \
    "http://127.0.0.1:${port[$1]}/")
  after=$(envoy_cpu_ticks "${envoy_pid[$1]}")
  python3 - "$out" "$before" "$after" "$CLK_TCK" <<'PY'
import re, sys
out, before, after, tck = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s|m)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
total = int(re.search(r"(\d+) requests in", out).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
cpu_us = (after - before) * 1e6 / tck / max(total, 1)
print(f"{rps:.0f} {p50:.3f} {p99:.3f} {int(bad.group(1)) if bad else 0} {cpu_us:.1f}")
PY
}

# Cells: config/scenario. nofilter is measured on both token sizes (ML-DSA tokens are
# ~4.4 KB of header); the ML-DSA rows compare with it.
cells=()
for c in $CONFIGS; do
  case $c in
    nofilter) cells+=(nofilter/eddsa-one nofilter/mldsa) ;;
    noop) cells+=(noop/eddsa-one) ;;
    edge) cells+=(edge/eddsa-one edge/eddsa edge/mldsa) ;;
    edge-cold) cells+=(edge-cold/eddsa edge-cold/mldsa) ;;
    jwt-cache | jwt-nocache) cells+=("$c/eddsa-one" "$c/eddsa") ;;
    e5) ;;
    *) echo "unknown config $c" >&2; exit 1 ;;
  esac
done
for c in $CONFIGS; do
  [ "$c" != e5 ] || continue
  echo "== envoy: $c"
  start_envoy "$c" "$CP_PORT" "$work/eddsa-one.txt"
  TOKENS_FILE="$work/eddsa.txt" wrk -t2 -c"$CONNECTIONS" -d2s -s bench/rotate.lua \
    "http://127.0.0.1:${port[$c]}/" >/dev/null # warm-up
done
: >"$work/results"
for round in $(seq "$ROUNDS"); do
  echo "== round $round of $ROUNDS (load average $(cut -d' ' -f1 /proc/loadavg))"
  for cell in "${cells[@]}"; do
    r=$(measure "${cell%%/*}" "$work/${cell#*/}.txt" "$SECONDS_PER_RUN")
    echo "   $cell: $r"
    echo "$cell $r" >>"$work/results"
  done
done

e3_line="" e5_lines="" counts=""
if [ -n "$full_run" ]; then
  # E3, same region: revoke call -> first 401 at the edge (cached path, the usual case).
  echo "== E3: $E3_COUNT revocations, revoke call -> first 401 at the edge"
  e3_line=$(python3 bench/e3.py "$CP" "$ADMIN_SECRET" "http://127.0.0.1:${port[edge]}/" \
    "$work/eddsa.txt" "$E3_COUNT")
  echo "   $e3_line"
  for c in $CONFIGS; do kill "${envoy_pid[$c]}"; done
fi
if [ -n "$run_e5" ]; then
  # E5: a 1,000,000-entry set, served by bench/e5-feed.py with snapshots signed like the
  # control plane's; p99 with the set steady vs while a fresh 1M snapshot arrives every
  # 1.5 s (each one decoded by the poller, then copied by every worker VM).
  echo "== E5: $E5_ENTRIES revocations"
  e5_native=$("$TARGET/release/edge-bench" e5)
  echo "$e5_native" | sed 's/^/   /'
  mkdir "$work/e5"
  "$TARGET/release/edge-bench" e5-feed "$work/e5" "$E5_ENTRIES"
  FEED_PORT=$(free_port)
  python3 bench/e5-feed.py "$work/e5" "$FEED_PORT" --every 1.5 &
  pids+=($!)
  wait_http "http://127.0.0.1:$FEED_PORT/steady"
  start_envoy e5 "$FEED_PORT" "$work/e5/tokens.txt"
  head -1 "$work/e5/tokens.txt" >"$work/e5/one.txt"
  updates() { # snapshots the feed served (heartbeats are not counted)
    curl -s "http://127.0.0.1:$FEED_PORT/served"
  }
  for round in $(seq "$ROUNDS"); do
    curl -s -o /dev/null "http://127.0.0.1:$FEED_PORT/steady"
    # Steady means no snapshot was served for 5 s (the last one of a churn cell is decoded
    # by the poller and then by every worker VM, which takes a while at 1M entries).
    last=$(updates) quiet=0
    while [ "$quiet" -lt 5 ]; do
      sleep 1
      now=$(updates)
      if [ "$now" = "$last" ]; then quiet=$((quiet + 1)); else quiet=0 last=$now; fi
    done
    # One request per worker so that each VM has adopted the newest set.
    for _ in 1 2 3 4 5 6 7 8; do
      curl -s -o /dev/null -H "authorization: Bearer $(cat "$work/e5/one.txt")" \
        "http://127.0.0.1:${port[e5]}/"
    done
    r=$(measure e5 "$work/e5/one.txt" "$SECONDS_PER_RUN")
    echo "   steady: $r"
    echo "e5/steady $r" >>"$work/results"
    u0=$(updates)
    curl -s -o /dev/null "http://127.0.0.1:$FEED_PORT/churn"
    r=$(measure e5 "$work/e5/one.txt" "$SECONDS_PER_RUN")
    u1=$(updates)
    echo "   while 1M snapshots are applied: $r ($((u1 - u0)) snapshots)"
    echo "e5/apply $r" >>"$work/results"
    echo "e5/snapshots $((u1 - u0))" >>"$work/results"
  done
  curl -s -o /dev/null "http://127.0.0.1:$FEED_PORT/steady"
  e5_lines=$e5_native
fi
if [ -n "$full_run" ]; then
  echo "== instruction counts (callgrind, bench/count.sh)"
  # shellcheck disable=SC2086 # a list of case names
  counts=$(bench/count.sh ${BENCH_COUNT_CASES:-})
  echo "$counts" | sed 's/^/   /'
  native_mldsa_ns=$("$TARGET/release/edge-bench" time verify-mldsa 2000)
  native_eddsa_ns=$("$TARGET/release/edge-bench" time verify-eddsa 5000)
  echo "   native verify: $native_mldsa_ns, $native_eddsa_ns"
fi
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

report="${BENCH_REPORT:-BENCHMARKS.md}"
[ -n "$full_run" ] || report=/dev/null
envoy_version=$("$ENVOY_BIN" --version | sed -n 's#.*/\([0-9][0-9]*\.[0-9][0-9]*\.[0-9][0-9]*\)/.*#\1#p' | head -1)
export SECONDS_PER_RUN ROUNDS CONNECTIONS TOKENS REVOKED E3_COUNT E5_ENTRIES cpu_model cores \
  load_start load_end envoy_version e3_line e5_lines counts
export native_mldsa_ns="${native_mldsa_ns:-}" native_eddsa_ns="${native_eddsa_ns:-}"
python3 bench/report.py "$work/results" "$report"
