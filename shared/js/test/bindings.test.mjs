// Node tests of the client bindings: device keys, DPoP proofs, the refresh handshake.
// Run after building the package into ../pkg (see shared/README.md).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const pq = require('../pkg/shared.js');

const now = () => Math.floor(Date.now() / 1000);

for (const alg of ['EdDSA', 'ES256', 'ML-DSA-65']) {
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

// Interop with an independent implementation: Node's WebCrypto (OpenSSL) signs DPoP proofs
// with its own P-256 and Ed25519 keys, exported as JWKs the way browsers export them; our
// verifier accepts them and computes the RFC 7638 thumbprint this test computes itself.
const { subtle } = globalThis.crypto;
const b64u = (bytes) => Buffer.from(bytes).toString('base64url');
const sha256 = async (text) => b64u(await subtle.digest('SHA-256', new TextEncoder().encode(text)));
const thumbprint = (jwk) => sha256(jwk.kty === 'EC'
  ? JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y })
  : JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x }));

async function webcryptoProof(alg, keys, claims) {
  const jwk = await subtle.exportKey('jwk', keys.publicKey);
  const header = { typ: 'dpop+jwt', alg, jwk };
  const input = `${b64u(JSON.stringify(header))}.${b64u(JSON.stringify(claims))}`;
  const params = alg === 'ES256' ? { name: 'ECDSA', hash: 'SHA-256' } : { name: 'Ed25519' };
  const signature = await subtle.sign(params, keys.privateKey, new TextEncoder().encode(input));
  return { proof: `${input}.${b64u(signature)}`, jwk };
}

for (const [alg, generate] of [
  ['ES256', { name: 'ECDSA', namedCurve: 'P-256' }],
  ['Ed25519', { name: 'Ed25519' }],
  ['EdDSA', { name: 'Ed25519' }],
]) {
  test(`a DPoP proof signed by WebCrypto with ${alg} verifies and gives the RFC 7638 jkt`, async () => {
    const keys = await subtle.generateKey(generate, false, ['sign', 'verify']);
    const iat = now();
    const claims = { jti: `wc-${alg}`, htm: 'POST', htu: 'https://cp.example/oauth2/token', iat, ath: await sha256('at') };
    const { proof, jwk } = await webcryptoProof(alg, keys, claims);
    if (alg === 'ES256') assert.equal(Buffer.from(proof.split('.')[2], 'base64url').length, 64, 'raw r||s');
    const jkt = pq.verifyProof(proof, 'POST', 'https://cp.example/oauth2/token', iat, 60, 'at');
    assert.equal(jkt, await thumbprint(jwk));
    // The same proof for another URL, or altered, is refused.
    assert.throws(() => pq.verifyProof(proof, 'POST', 'https://cp.example/other', iat, 60, 'at'), /not this request/);
    const sig = Buffer.from(proof.split('.')[2], 'base64url');
    sig[5] ^= 1;
    const altered = `${proof.split('.').slice(0, 2).join('.')}.${b64u(sig)}`;
    assert.throws(() => pq.verifyProof(altered, 'POST', 'https://cp.example/oauth2/token', iat, 60, 'at'), /signature/);
  });
}

test('a WebCrypto ES256 signature in DER form, or under another alg name, is refused', async () => {
  const keys = await subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign']);
  const iat = now();
  const claims = { jti: 'wc-der', htm: 'GET', htu: 'https://api.example/x', iat };
  const { proof } = await webcryptoProof('ES256', keys, claims);
  const [h, p, s] = proof.split('.');
  const raw = Buffer.from(s, 'base64url');
  const int = (b) => { let v = b; while (v.length > 1 && v[0] === 0 && v[1] < 0x80) v = v.subarray(1); return v[0] >= 0x80 ? Buffer.concat([Buffer.from([0]), v]) : v; };
  const r = int(raw.subarray(0, 32)); const sv = int(raw.subarray(32));
  const der = Buffer.concat([Buffer.from([0x30, r.length + sv.length + 4, 0x02, r.length]), r, Buffer.from([0x02, sv.length]), sv]);
  assert.throws(() => pq.verifyProof(`${h}.${p}.${b64u(der)}`, 'GET', 'https://api.example/x', iat, 60, undefined), /signature/);
  const header = JSON.parse(Buffer.from(h, 'base64url'));
  header.alg = 'EdDSA';
  assert.throws(() => pq.verifyProof(`${b64u(JSON.stringify(header))}.${p}.${s}`, 'GET', 'https://api.example/x', iat, 60, undefined), /does not match/);
});

test('an ES256 proof of our DeviceKey verifies with WebCrypto from its public JWK', async () => {
  const device = new pq.DeviceKey('ES256');
  const jwk = JSON.parse(device.publicJwk());
  assert.deepEqual([jwk.kty, jwk.crv, jwk.alg], ['EC', 'P-256', 'ES256']);
  assert.equal(device.thumbprint(), await thumbprint(jwk));
  const proof = device.signProof('GET', 'https://api.example/x', now(), undefined, undefined);
  const [h, p, s] = proof.split('.');
  assert.equal(JSON.parse(Buffer.from(h, 'base64url')).alg, 'ES256');
  const key = await subtle.importKey('jwk', { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y }, { name: 'ECDSA', namedCurve: 'P-256' }, false, ['verify']);
  const ok = await subtle.verify({ name: 'ECDSA', hash: 'SHA-256' }, key, Buffer.from(s, 'base64url'), new TextEncoder().encode(`${h}.${p}`));
  assert.equal(ok, true);
});
