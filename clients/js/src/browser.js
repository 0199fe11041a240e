// Browser entry point: the wasm module built with `--target web`, and device keys kept
// in IndexedDB. Ed25519 and P-256 (ES256) keys are non-extractable WebCrypto keys
// (IndexedDB stores the CryptoKey itself, which script can use but never read); ML-DSA-65
// has no WebCrypto algorithm yet, so its seed is stored and lives in wasm memory while in
// use.
import init, * as wasmModule from '../pkg/web/shared.js';
import { makeClient, WasmDeviceKey, WebCryptoDeviceKey } from './core.js';

let ready;
const getWasm = () => (ready ??= init().then(() => wasmModule));

const DB = 'pq-edge-client';
const STORE = 'device-keys';

function openDb() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function idb(mode, work) {
  const db = await openDb();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      const request = work(tx.objectStore(STORE));
      tx.oncomplete = () => resolve(request.result);
      tx.onerror = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
}

const store = {
  prefersWebCrypto: () => true,
  async save(key, options) {
    if (options.persist === false) return;
    const name = options.name ?? 'default';
    const record = key instanceof WebCryptoDeviceKey
      ? { alg: key.alg, keyPair: key.keyPair }
      : { alg: key.alg, seed: key.seed() };
    await idb('readwrite', (s) => s.put(record, name));
  },
  async load(wasm, options) {
    const record = await idb('readonly', (s) => s.get(options.name ?? 'default'));
    if (!record) return null;
    if (record.keyPair) return WebCryptoDeviceKey.create(record.keyPair);
    return new WasmDeviceKey(wasm.DeviceKey.fromSeed(record.alg, record.seed), record.alg);
  },
};

const client = makeClient(getWasm, store);

/**
 * A new device key. `alg`: "Ed25519" (default), "ES256" (P-256, a non-extractable
 * WebCrypto key) or "ML-DSA-65". Saved in IndexedDB under `name` (default "default")
 * unless `persist: false`.
 */
export const createDeviceKey = client.createDeviceKey;
/** The key saved under `name` in IndexedDB, or null. */
export const loadDeviceKey = client.loadDeviceKey;
export const Session = client.Session;
export const ClientError = client.ClientError;
export { WasmDeviceKey, WebCryptoDeviceKey };
/** The raw wasm bindings, once initialised. */
export const bindings = getWasm;
