#!/usr/bin/env bash
# Instructions per operation of the edge filter's decision path, run natively under
# callgrind (bench/edge-bench): stable on a busy machine, unlike wrk. Each case runs twice,
# with 0 and with N iterations; the difference over N is the cost of one operation,
# setup excluded. Prints "case instructions-per-op" lines.
# Usage: bench/count.sh [case...]   (CARGO_TARGET_DIR as for cargo)
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build -j2 --release -p edge-bench >&2
bin="$TARGET/release/edge-bench"
declare -A iterations=([cached-eddsa]=2000 [cached-mldsa]=200 [uncached-eddsa]=100 [uncached-mldsa]=50
  [verify-eddsa]=100 [verify-mldsa]=50 [verify-eddsa-dalek]=100 [eddsa-key-table]=20 [lookup-1k]=5000 [lookup-1m]=5000
  [verify-es256]=50 [verify-es256-p256]=20 [proof-eddsa]=100 [proof-es256]=50 [proof-mldsa]=50)
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(cached-eddsa cached-mldsa uncached-eddsa uncached-mldsa verify-eddsa verify-mldsa lookup-1k lookup-1m)
collected() { # case n -> instructions
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
for c in "${cases[@]}"; do
  n=${iterations[$c]}
  base=$(collected "$c" 0)
  full=$(collected "$c" "$n")
  echo "$c $(((full - base) / n))"
done
