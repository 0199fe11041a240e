// Runs bench/edge-bench built for wasm32-wasip1 in V8 (Node's WASI), outside Envoy: the
// filter's decision path in the engine Envoy runs it in, without the host calls.
//   cargo build --release -p edge-bench --target wasm32-wasip1
//   node bench/wasm-run.mjs $CARGO_TARGET_DIR/wasm32-wasip1/release/edge-bench.wasm time cached-eddsa 20000
// (`node --cpu-prof` on the same line writes a profile with the Rust function names.)
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';

const [file, ...args] = process.argv.slice(2);
const wasi = new WASI({ version: 'preview1', args: ['edge-bench', ...args], env: {}, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(file));
const imports = { wasi_snapshot_preview1: wasi.wasiImport };
// The proxy-wasm host functions the filter module links against are never called here.
for (const imp of WebAssembly.Module.imports(module)) {
  if (imp.module !== 'wasi_snapshot_preview1') {
    imports[imp.module] ??= {};
    imports[imp.module][imp.name] = () => { throw new Error(`host call ${imp.name}`); };
  }
}
const instance = await WebAssembly.instantiate(module, imports);
// proxy_wasm::main! exports _initialize (a reactor entry) next to _start: hide it.
const exports = Object.fromEntries(Object.entries(instance.exports).filter(([k]) => k !== '_initialize'));
process.exitCode = wasi.start({ exports });
