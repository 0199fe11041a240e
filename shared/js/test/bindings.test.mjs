// Node tests of the client bindings: device keys, DPoP proofs, the refresh handshake.
// Run after building the package into ../pkg (see shared/README.md).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const pq = require('../pkg/shared.js');

const now = () => Math.floor(Date.now() / 1000);

for (const alg of ['EdDSA', 'ML-DSA-65']) {
  test(`a ${alg} device key signs proofs the verifier accepts`, () => {
    const device = new pq.DeviceKey(alg);
    const jwk = JSON.parse(device.publicJwk());
    assert.equal(jwk.alg, alg);
    assert.equal(jwk.d, undefined);
    assert.equal(jwk.priv, undefined);
    const proof = device.signProof('POST', 'https://cp.example/token/refresh', now(), 'access-token', undefined);
    const header = JSON.parse(Buffer.from(proof.split('.')[0], 'base64url'));
    assert.equal(header.typ, 'dpop+jwt');
    const jkt = pq.verifyProof(proof, 'POST', 'https://cp.example/token/refresh', now(), 60, 'access-token');
    assert.equal(jkt, device.thumbprint());
  });
}

test('a device key restored from its seed has the same thumbprint', () => {
  const device = new pq.DeviceKey('ML-DSA-65');
  const again = pq.DeviceKey.fromSeed('ML-DSA-65', device.seed());
  assert.equal(again.thumbprint(), device.thumbprint());
});

test('a proof for another request or token is refused', () => {
  const device = new pq.DeviceKey('EdDSA');
  const proof = device.signProof('POST', 'https://cp.example/token/refresh', now(), 'access-token', undefined);
  assert.throws(() => pq.verifyProof(proof, 'GET', 'https://cp.example/token/refresh', now(), 60, undefined), /not this request/);
  assert.throws(() => pq.verifyProof(proof, 'POST', 'https://cp.example/token/refresh', now(), 60, 'other'), /not bound/);
});

test('unknown algorithms are refused with a clear error', () => {
  assert.throws(() => new pq.DeviceKey('HS256'), /HMAC/);
  assert.throws(() => new pq.DeviceKey('none'), /alg none/);
});

test('the hybrid KEM handshake opens only with the same transcript', () => {
  const eph = new pq.EphemeralKem();
  const pk = eph.publicKey();
  assert.equal(Buffer.from(pk, 'base64url').length, 1216);
  const box = JSON.parse(pq.hybridSeal(pk, 'transcript-1', 'rotated-refresh-token'));
  assert.equal(eph.open(box.kemCiphertext, 'transcript-1', box.sealed), 'rotated-refresh-token');
  assert.throws(() => eph.open(box.kemCiphertext, 'transcript-2', box.sealed), /does not open/);
  const stranger = new pq.EphemeralKem();
  assert.throws(() => stranger.open(box.kemCiphertext, 'transcript-1', box.sealed));
});
