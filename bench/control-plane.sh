#!/usr/bin/env bash
# Benchmarks the control plane's own routes: builds the release binary, prints the raw
# limits (SQLite commits single and grouped, ML-DSA-65 and Ed25519 signatures on one
# core: control-plane/benches/raw_limits.rs), then starts the control plane on a fresh
# data directory and drives POST /token (EdDSA, then ML-DSA-65 on a second fresh
# server), POST /revoke and POST /token/validate with wrk at several concurrencies, and
# one revocation at a time on an otherwise idle server, and a refresh and a refresh
# reuse one at a time while wrk revokes (bench/refresh.py). Ends with a table of the
# measurements against the targets of issue 9 (at -t2 -c32) and `audit verify`.
# The Criterion micro-benchmarks of the signing code are apart:
# `cargo bench -p control-plane --bench signing`.
#
# Settings (environment): BENCH_SECONDS (8) per measurement, BENCH_CONCURRENCY
# ("8 32 64"), RAW_SECONDS (2) per raw limit, BENCH_SKIP_BUILD=1, CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${BENCH_SECONDS:-8}"
CONCURRENCY="${BENCH_CONCURRENCY:-8 32 64}"
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
BIN="$TARGET/release/control-plane"

if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "wrk is missing: apt-get install wrk (as root)" >&2
    exit 1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
fi

if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
  cargo build --release -j2 -p control-plane
fi

work=$(mktemp -d)
pid=""
stop() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  pid=""
}
cleanup() { stop; rm -rf "$work"; }
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
start() { # name alg: a control plane on a fresh data dir
  local port
  port=$(free_port)
  CP="http://127.0.0.1:$port"
  DATA="$work/$1"
  "$BIN" serve --listen "127.0.0.1:$port" --data-dir "$DATA" --signing-alg "$2" \
    >"$work/$1.log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do
    curl -s -o /dev/null "$CP/health" && break
    sleep 0.1
  done
  ADMIN_SECRET=$(cat "$DATA/admin.secret")
  export ADMIN_SECRET
}

echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
echo "== raw limits (one core each)"
cargo bench -j2 -q -p control-plane --bench raw_limits 2>/dev/null | tee "$work/raw.txt"

results="$work/results.txt"
: >"$results"
run() { # label route threads connections
  local line
  line=$(ROUTE="$2" wrk -t"$3" -c"$4" -d"${SECS}s" --latency -s bench/cp.lua "$CP" |
    grep '^RESULT' || echo "RESULT 0 0 0 0 0")
  echo "$1 $4 ${line#RESULT }" | tee -a "$results"
}

echo "== EdDSA control plane (label connections req/s p50_ms p99_ms non2xx sockerr)"
start eddsa EdDSA
for i in $(seq 200); do
  curl -sf -X POST "$CP/token" -H "authorization: Bearer $ADMIN_SECRET" \
    -H 'content-type: application/json' -d "{\"subject\":\"v-$i\",\"expires_minutes\":60}" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])'
done >"$work/tokens.txt"
export TOKENS_FILE="$work/tokens.txt"
run revoke-idle revoke 1 1
for c in $CONCURRENCY; do run token-eddsa token 2 "$c"; done
for c in $CONCURRENCY; do run revoke revoke 2 "$c"; done
echo "== refresh and refresh reuse one at a time (bench/refresh.py) while wrk revokes at -c32"
ROUTE=revoke wrk -t2 -c32 -d"${SECS}s" --latency -s bench/cp.lua "$CP" >"$work/revoke-beside.txt" &
beside=$!
python3 bench/refresh.py "$CP" "$ADMIN_SECRET" "$SECS" | tee -a "$results"
wait "$beside"
line=$(grep '^RESULT' "$work/revoke-beside.txt" || echo "RESULT 0 0 0 0 0")
echo "revoke-beside-refresh 32 ${line#RESULT }" | tee -a "$results"
echo "== revocation events signed, and the ML-DSA-65 signatures they took (batched)"
curl -s "$CP/metrics" | grep -E '^cp_event(s_signed|_signatures)_total' | tee "$work/signer.txt"
for c in $CONCURRENCY; do run validate validate 2 "$c"; done
echo "== audit log of the EdDSA run"
sleep 0.2
"$BIN" audit verify --data-dir "$DATA" | tee "$work/verify.txt"
stop

echo "== ML-DSA-65 control plane"
start mldsa ML-DSA-65
for c in $CONCURRENCY; do run token-mldsa token 2 "$c"; done
"$BIN" audit verify --data-dir "$DATA"
stop

python3 - "$work/raw.txt" "$results" <<'PY'
import sys
raw = {}
for line in open(sys.argv[1]):
    parts = line.rstrip("\n").split("\t")
    if len(parts) == 3:
        raw[parts[0]] = (float(parts[1]), parts[2])
rows = [l.split() for l in open(sys.argv[2]) if l.strip()]
print()
print("| raw limit (one core) | per second | what |")
print("|---|---:|---|")
for name, (v, note) in raw.items():
    print(f"| `{name}` | {v:,.0f} | {note} |")
print()
print("| route | connections | req/s | p50 ms | p99 ms | non-2xx |")
print("|---|---:|---:|---:|---:|---:|")
for label, c, rps, p50, p99, non2xx, sockerr in rows:
    print(f"| {label} | {c} | {float(rps):,.0f} | {p50} | {p99} | {non2xx} |")
targets = [
    ("POST /token (EdDSA)", "token-eddsa", "rps", 20000),
    ("POST /token (ML-DSA-65)", "token-mldsa", "rps", 1500),
    ("POST /revoke", "revoke", "rps", 5000),
    ("POST /token/validate", "validate", "rps", 30000),
    ("one POST /revoke on an idle server, p99", "revoke-idle", "p99", 5.0),
]
print()
print("| target (wrk -t2 -c32) | measured | target | ratio |")
print("|---|---:|---:|---:|")
for name, label, what, target in targets:
    want_c = "1" if label == "revoke-idle" else "32"
    hit = [r for r in rows if r[0] == label and r[1] == want_c]
    if not hit:
        print(f"| {name} | not measured | {target} | |")
        continue
    r = hit[0]
    if what == "rps":
        v = float(r[2])
        print(f"| {name} | {v:,.0f} req/s | >= {target:,} req/s | {v / target:.2f} |")
    else:
        v = float(r[4])
        print(f"| {name} | {v:.2f} ms | <= {target} ms | {target / v if v else 0:.2f} |")
PY
