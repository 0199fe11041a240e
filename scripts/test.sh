#!/usr/bin/env bash
# Installs what the tests need (only what is missing), then runs every check of the
# project: format, clippy, wasm builds, native unit, end-to-end, regions and launcher
# tests, the Node tests of the JS bindings and of the JS client package (with real Envoy,
# and its example page in headless Chromium), and a bounded fuzz run of the filter.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
step() { printf '\n=== %s\n' "$*"; }

step "install what is missing"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing_debs=()
command -v node >/dev/null || missing_debs+=(nodejs)
command -v npm >/dev/null || missing_debs+=(npm)
command -v python3 >/dev/null || missing_debs+=(python3 python3-pip)
command -v cc >/dev/null || missing_debs+=(build-essential)
command -v redis-server >/dev/null || missing_debs+=(redis-server)
# The Redis TLS test makes its certificates with the openssl command-line tool.
command -v openssl >/dev/null || missing_debs+=(openssl)
# Debian's chromium, driven by playwright-core for the example page's test.
[ -n "${CHROMIUM_BIN:-}" ] || command -v chromium >/dev/null || missing_debs+=(chromium)
if [ ${#missing_debs[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_debs[@]}"
fi
installed_targets=$(rustup target list --installed)
for target in wasm32-wasip1 wasm32-unknown-unknown; do
  grep -qx "$target" <<<"$installed_targets" || rustup target add "$target"
done
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
if ! wasm-bindgen --version 2>/dev/null | grep -q ' 0.2.130'; then
  cargo install wasm-bindgen-cli --version 0.2.130
fi
# The Kafka-protocol broker of the regions tests (about 15 minutes to build, once).
command -v tansu >/dev/null || cargo install tansu --version 0.6.0 --locked --features dynostore
ENVOY_BIN="$(scripts/envoy-bin.sh)"
# The client package's npm dependencies (playwright-core), from its lock file.
(cd clients/js && npm ls --depth=0 >/dev/null 2>&1) ||
  (cd clients/js && npm ci --no-audit --no-fund)
export ENVOY_BIN
"$ENVOY_BIN" --version | tr -s ' \n' ' '; echo
# Fuzzing needs a nightly toolchain (libFuzzer instrumentation): say so now, not at the end.
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "no nightly toolchain: the fuzz step needs one (rustup toolchain install nightly)" >&2
  exit 1
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
command -v cargo-deny >/dev/null || cargo install cargo-deny --locked

# The checks, in named stages that report separately: a failing stage is named in the
# summary at the end, and the later stages still run (one that needs what a failed one
# builds fails too, and says so in its own log).
failed=()
summary=()
stage_logs=$(mktemp -d)
trap 'rm -rf "$stage_logs"' EXIT
stage() {
  local name=$1
  shift
  step "stage: $name"
  local start=$SECONDS rc
  # Not in an `if`: there bash would ignore `set -e` inside the subshell. The stage's
  # output also goes to its own log, so the summary can repeat why a stage failed.
  set +e
  ( set -euo pipefail; "$@" ) 2>&1 | tee "$stage_logs/$name.log"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" = 0 ]; then
    summary+=("$(printf '%-12s passed  %5ss' "$name" $((SECONDS - start)))")
  else
    summary+=("$(printf '%-12s FAILED  %5ss (exit %s)' "$name" $((SECONDS - start)) "$rc")")
    failed+=("$name")
  fi
}

lint() {
  step "format"
  cargo fmt --all -- --check
  step "clippy (warnings are errors)"
  cargo clippy --workspace --all-targets --all-features -- -D warnings
  cargo clippy -p shared --features js --target wasm32-unknown-unknown -- -D warnings
  cargo clippy -p edge-filter --target wasm32-wasip1 -- -D warnings
  step "API docs (missing docs and broken links are errors)"
  RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p shared -p control-plane -p edge-filter
  step "dependencies: licenses, duplicate versions, sources (deny.toml)"
  # cargo-deny reads the metadata of every platform's dependencies (windows-sys too):
  # fetch them from crates.io first, then check offline (no advisory database needed).
  cargo fetch --locked
  cargo deny --offline check licenses bans sources
  step "minimum supported Rust (rust-version in Cargo.toml)"
  msrv
}

# The workspace builds with the toolchain its `rust-version` names: when the default
# toolchain is that version the builds above were the check; otherwise build with it.
msrv() {
  local want have
  want=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
  have=$(rustc --version | cut -d' ' -f2)
  case "$have" in
  "$want" | "$want".*) echo "rust-version $want is the toolchain every stage builds with ($have)" ;;
  *)
    rustup toolchain list | grep -q "^$want" || rustup toolchain install "$want" --profile minimal
    cargo "+$want" check --workspace --all-targets --all-features
    ;;
  esac
}

wasm() {
  cargo build -p shared --target wasm32-wasip1
  cargo build -p edge-filter --target wasm32-wasip1 --profile wasm-release
  cargo build -p shared --features js --target wasm32-unknown-unknown --release
  rm -rf shared/js/pkg
  wasm-bindgen --target nodejs --out-dir shared/js/pkg \
    "$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/shared.wasm"
  clients/js/build.sh
}

# Unit tests of every crate and the control plane's own binary tests (no Envoy, no broker).
unit() {
  cargo build -p control-plane
  cargo test --workspace --all-features --exclude tests
  cargo test -p tests --all-features --lib
}

e2e() { cargo test -p tests --all-features --test e2e; }
regions() { cargo test -p tests --all-features --test regions; }
launcher() { cargo test -p tests --all-features --test launcher; }

# The JS bindings alone and against the control plane; the client package with real Envoy.
node_tests() {
  node --test shared/js/test/ tests/js/
  node --test clients/js/test/*.test.mjs
}

# The client package's example page in headless Chromium.
browser() { node --test clients/js/example/*.test.mjs; }

fuzz() {
  cd edge-filter/fuzz
  for target in $(cargo +nightly fuzz list); do
    cargo +nightly fuzz run "$target" -- -max_total_time="$FUZZ_SECONDS"
  done
}

stage lint lint
stage wasm wasm
stage unit unit
stage e2e e2e
stage regions regions
stage launcher launcher
stage node node_tests
stage browser browser
stage fuzz fuzz

step "summary"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  # The end of a long run is often all that is kept: repeat each failed stage's failing
  # tests and panic messages here, after the summary.
  for name in "${failed[@]}"; do
    step "why $name failed"
    grep -E -A2 'panicked at|^test .* FAILED|^error(\[|:)' "$stage_logs/$name.log" |
      tail -16 || tail -8 "$stage_logs/$name.log"
  done
  echo "FAILED stages: ${failed[*]}"
  exit 1
fi
echo
echo "all checks passed"
