#!/usr/bin/env bash
# Builds the wasm part of the package from `shared` (feature `js`) for Node and browsers:
# pkg/node (wasm-bindgen --target nodejs, CommonJS) and pkg/web (--target web, ES module).
# Needs the wasm32-unknown-unknown target and wasm-bindgen-cli 0.2.130 (the version of
# the wasm-bindgen crate in Cargo.lock).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
(cd "$root" && cargo build -p shared --features js --target wasm32-unknown-unknown --release)
wasm="$target_dir/wasm32-unknown-unknown/release/shared.wasm"
rm -rf "$here/pkg"
wasm-bindgen --target nodejs --out-dir "$here/pkg/node" "$wasm"
wasm-bindgen --target web --out-dir "$here/pkg/web" "$wasm"
# The package is "type": "module"; the Node build is CommonJS.
echo '{"type": "commonjs"}' > "$here/pkg/node/package.json"
