// Node entry point: the wasm module built with `--target nodejs`, and device keys kept
// either in memory as non-extractable WebCrypto keys (Ed25519, P-256) or, when the
// caller names a `file`, as a seed (for P-256 the private scalar) in that file with mode
// 0600.
import { createRequire } from 'node:module';
import { readFile, writeFile, chmod } from 'node:fs/promises';
import { makeClient, WasmDeviceKey, WebCryptoDeviceKey } from './core.js';

const require = createRequire(import.meta.url);
let wasm;
const getWasm = async () => (wasm ??= require('../pkg/node/shared.js'));

const store = {
  // A key the caller wants in a file must be exportable: only without `file` does
  // an Ed25519 or P-256 key stay a non-extractable WebCrypto key.
  prefersWebCrypto: (options) => !options.file,
  async save(key, options) {
    if (!options.file) return;
    const record = JSON.stringify({ alg: key.alg, seed: key.seed() });
    await writeFile(options.file, `${record}\n`, { mode: 0o600, flag: 'wx' });
    await chmod(options.file, 0o600);
  },
  async load(wasmModule, options) {
    if (!options.file) throw new TypeError('loadDeviceKey needs { file } in Node');
    let text;
    try {
      text = await readFile(options.file, 'utf8');
    } catch (e) {
      if (e.code === 'ENOENT') return null;
      throw e;
    }
    const { alg, seed } = JSON.parse(text);
    return new WasmDeviceKey(wasmModule.DeviceKey.fromSeed(alg, seed), alg);
  },
};

const client = makeClient(getWasm, store);

/**
 * A new device key. `alg`: "Ed25519" (default), "ES256" (P-256) or "ML-DSA-65". With
 * `file`, the key's seed is written there (mode 0600, never overwritten); without, an
 * Ed25519 or P-256 key is a non-extractable WebCrypto key living in memory only.
 */
export const createDeviceKey = client.createDeviceKey;
/** The key saved by `createDeviceKey({ file })`, or null when the file is missing. */
export const loadDeviceKey = client.loadDeviceKey;
export const Session = client.Session;
export const ClientError = client.ClientError;
export { WasmDeviceKey, WebCryptoDeviceKey };
/** The raw wasm bindings (`DeviceKey`, `EphemeralKem`, `verifyProof`, `hybridSeal`). */
export const bindings = getWasm;
