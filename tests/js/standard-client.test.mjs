// A standard OAuth 2.0 + DPoP client, written from the published documents only (RFC 8414
// metadata, RFC 6749 refresh grant, RFC 9449 proofs and nonces, RFC 7638 thumbprints) with
// nothing but fetch and WebCrypto: none of this repository's types, bindings or client
// package. It discovers the control plane, refreshes with an ES256 proof and with an
// Ed25519 one (`alg: "Ed25519"`, RFC 9864, as current libraries sign), retries with the
// server's nonce, and calls an API through real Envoy with the edge filter.
// Needs the control-plane binary (cargo build -p control-plane), Envoy ($ENVOY_BIN, else
// scripts/envoy-bin.sh) and the filter (cargo build -p edge-filter --target wasm32-wasip1
// --profile wasm-release); the harness that starts them is clients/js/test/support.mjs.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  startControlPlane, startUpstream, startEnvoy, createSession, eventually,
} from '../../clients/js/test/support.mjs';

const { subtle } = globalThis.crypto;
const encoder = new TextEncoder();
const b64u = (bytes) => Buffer.from(bytes).toString('base64url');
const sha256 = async (text) => b64u(await subtle.digest('SHA-256', encoder.encode(text)));
const now = () => Math.floor(Date.now() / 1000);

let cp;
let upstream;
let envoy;

before(async () => {
  cp = await startControlPlane();
  upstream = await startUpstream();
  envoy = await startEnvoy(cp.port, upstream.port);
});

after(() => {
  envoy?.stop();
  upstream?.stop();
  cp?.stop();
});

/** A DPoP key as a browser or a library makes one: non-extractable, public JWK exported. */
async function dpopKey(alg) {
  const params = alg === 'ES256' ? { name: 'ECDSA', namedCurve: 'P-256' } : { name: 'Ed25519' };
  const pair = await subtle.generateKey(params, false, ['sign', 'verify']);
  const exported = await subtle.exportKey('jwk', pair.publicKey);
  // RFC 9449 4.2: the public key only; RFC 7638: the thumbprint over the required members.
  const jwk = alg === 'ES256'
    ? { kty: 'EC', crv: 'P-256', x: exported.x, y: exported.y }
    : { kty: 'OKP', crv: 'Ed25519', x: exported.x };
  const required = alg === 'ES256'
    ? { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y }
    : { crv: jwk.crv, kty: jwk.kty, x: jwk.x };
  return {
    alg,
    jwk,
    jkt: await sha256(JSON.stringify(required)),
    async proof(htm, htu, { accessToken, nonce } = {}) {
      const header = { typ: 'dpop+jwt', alg, jwk };
      const claims = { jti: b64u(crypto.getRandomValues(new Uint8Array(12))), htm, htu, iat: now() };
      if (accessToken) claims.ath = await sha256(accessToken);
      if (nonce) claims.nonce = nonce;
      const input = `${b64u(encoder.encode(JSON.stringify(header)))}.${b64u(encoder.encode(JSON.stringify(claims)))}`;
      const sign = alg === 'ES256' ? { name: 'ECDSA', hash: 'SHA-256' } : { name: 'Ed25519' };
      return `${input}.${b64u(await subtle.sign(sign, pair.privateKey, encoder.encode(input)))}`;
    },
  };
}

for (const alg of ['ES256', 'Ed25519']) {
  test(`a standard client discovers, refreshes with an ${alg} proof after the nonce retry, and calls through Envoy`, async () => {
    // Discovery (RFC 8414 3): the issuer is the URL the metadata was fetched under.
    const meta = await (await fetch(`${cp.url}/.well-known/oauth-authorization-server`)).json();
    assert.equal(meta.issuer, cp.url);
    assert.ok(meta.grant_types_supported.includes('refresh_token'));
    assert.ok(meta.dpop_signing_alg_values_supported.includes(alg), JSON.stringify(meta));

    // The session: created server side for this device key (out of band for the client).
    const key = await dpopKey(alg);
    const created = await createSession(cp, { subject: `std-${alg}`, device_jwk: key.jwk });

    // RFC 6749 6 with RFC 9449: the first proof has no nonce, the server answers
    // use_dpop_nonce with a DPoP-Nonce header (RFC 9449 8), the retry carries it.
    const grant = (proof) => fetch(meta.token_endpoint, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', dpop: proof },
      body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: created.refresh_token }).toString(),
    });
    const first = await grant(await key.proof('POST', meta.token_endpoint));
    assert.equal(first.status, 400);
    assert.equal((await first.json()).error, 'use_dpop_nonce');
    const nonce = first.headers.get('dpop-nonce');
    assert.ok(nonce);
    const second = await grant(await key.proof('POST', meta.token_endpoint, { nonce }));
    const tokens = await second.json();
    assert.equal(second.status, 200, JSON.stringify(tokens));
    assert.equal(tokens.token_type, 'DPoP');
    assert.ok(tokens.refresh_token && tokens.refresh_token !== created.refresh_token, 'rotated');
    const claims = JSON.parse(Buffer.from(tokens.access_token.split('.')[1], 'base64url'));
    assert.equal(claims.cnf.jkt, key.jkt, 'bound to the RFC 7638 thumbprint of our key');
    assert.equal(claims.iss, meta.issuer);

    // RFC 9449 7: the protected call through Envoy, a fresh proof with ath each time.
    const api = `${envoy.url}/hello`;
    const call = async (signer) => fetch(`${api}?x=1`, {
      headers: {
        authorization: `DPoP ${tokens.access_token}`,
        dpop: await signer.proof('GET', api, { accessToken: tokens.access_token }),
      },
    });
    const ok = await eventually(60000, async () => ((await call(key)).status === 200 ? true : null));
    assert.ok(ok, 'Envoy lets the bound token through');
    // Another key's proof: the DPoP challenge (RFC 9449 7.1) naming the accepted algs.
    const refused = await call(await dpopKey(alg));
    assert.equal(refused.status, 401);
    const challenge = refused.headers.get('www-authenticate');
    assert.match(challenge, /^DPoP error="invalid_dpop_proof"/);
    assert.ok(challenge.match(/algs="([^"]*)"/)[1].split(' ').includes(alg), challenge);
  });
}
