// The client wrapper under Node: device keys (non-extractable, or a 0600 file), the
// sealed refresh at /oauth2/token with the nonce retry, DPoP-bound calls through real
// Envoy with the edge filter, the 401 after a revoke, and the retry rules against a
// scripted server. Needs the control-plane binary, the filter and `./build.sh`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { mkdtempSync, statSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { createDeviceKey, loadDeviceKey, Session, ClientError, bindings } from '@pq-edge-tokens/client';
import { startControlPlane, startUpstream, startEnvoy, createSession, eventually } from './support.mjs';

let cp;
let upstream;
let envoy;
let keyDir;

before(async () => {
  cp = await startControlPlane();
  upstream = await startUpstream();
  envoy = await startEnvoy(cp.port, upstream.port);
  keyDir = mkdtempSync(join(tmpdir(), 'pq-client-keys-'));
});

after(() => {
  envoy?.stop();
  upstream?.stop();
  cp?.stop();
  if (keyDir) rmSync(keyDir, { recursive: true, force: true });
});

/** A fetch that records what it sent and got. */
function recordingFetch(log) {
  return async (url, init) => {
    const response = await fetch(url, init);
    log.push({ url: String(url), status: response.status, dpop: init?.headers?.dpop ?? null });
    return response;
  };
}

test('an ES256 key without a file is a non-extractable WebCrypto P-256 key whose proofs the bindings verify', async () => {
  for (const alg of ['ES256', 'P-256']) {
    const key = await createDeviceKey({ alg });
    assert.equal(key.alg, 'ES256');
    assert.equal(key.nonExtractable, true);
    assert.deepEqual(Object.keys(key.publicJwk).sort(), ['crv', 'kty', 'x', 'y']);
    assert.equal(key.publicJwk.crv, 'P-256');
    assert.equal(key.keyPair.privateKey.algorithm.namedCurve, 'P-256');
    await assert.rejects(crypto.subtle.exportKey('pkcs8', key.keyPair.privateKey));
    const proof = await key.signProof('GET', 'https://api.example/x?y=1', { accessToken: 'at' });
    const header = JSON.parse(Buffer.from(proof.split('.')[0], 'base64url'));
    assert.equal(header.alg, 'ES256');
    const wasm = await bindings();
    const now = Math.floor(Date.now() / 1000);
    assert.equal(wasm.verifyProof(proof, 'GET', 'https://api.example/x', now, 60, 'at'), key.thumbprint);
  }
  // The default is unchanged: Ed25519.
  assert.equal((await createDeviceKey()).alg, 'EdDSA');
});

test('an Ed25519 key without a file is a non-extractable WebCrypto key', async () => {
  const key = await createDeviceKey({ alg: 'Ed25519' });
  assert.equal(key.nonExtractable, true);
  assert.equal(key.publicJwk.kty, 'OKP');
  assert.equal(key.keyPair.privateKey.extractable, false);
  await assert.rejects(crypto.subtle.exportKey('pkcs8', key.keyPair.privateKey));
});

for (const alg of ['Ed25519', 'ES256', 'ML-DSA-65']) {
  test(`a ${alg} key saved to a file has mode 0600 and loads back`, async () => {
    const file = join(keyDir, `${alg}.json`);
    const key = await createDeviceKey({ alg, file });
    assert.equal(statSync(file).mode & 0o777, 0o600);
    const again = await loadDeviceKey({ file });
    assert.equal(again.thumbprint, key.thumbprint);
    assert.equal(again.alg, key.alg);
    await assert.rejects(createDeviceKey({ alg, file }), /EEXIST/, 'never overwrites a key');
    assert.equal(await loadDeviceKey({ file: join(keyDir, 'absent.json') }), null);
  });
}

for (const [alg, file] of [['Ed25519', false], ['ES256', false], ['ES256', true], ['ML-DSA-65', true]]) {
  test(`a ${alg} session${file ? ' (key in a file)' : ''} refreshes (nonce retry, sealed token), calls through Envoy, and gets 401 after a revoke`, async () => {
    const key = await createDeviceKey({ alg, file: file ? join(keyDir, `session-${alg}.json`) : undefined });
    const subject = `js-${alg}${file ? '-file' : ''}`;
    const created = await createSession(cp, { subject, device_jwk: key.publicJwk, scope: 'read' });
    const saved = [];
    const log = [];
    const session = new Session({
      tokenEndpoint: `${cp.url}/oauth2/token`,
      refreshToken: created.refresh_token,
      sessionId: created.session_id,
      accessToken: created.access_token,
      deviceKey: key,
      onRefreshToken: (rt) => saved.push(rt),
      fetch: recordingFetch(log),
    });

    // The first refresh learns the nonce (400 use_dpop_nonce), then succeeds.
    const first = await session.refresh();
    assert.equal(first.tokenType, 'DPoP');
    assert.deepEqual(log.map((e) => e.status), [400, 200]);
    assert.equal(saved.length, 1);
    assert.match(saved[0], /^rt_/);
    assert.notEqual(saved[0], created.refresh_token);
    assert.equal(session.refreshToken, saved[0]);
    const claims = JSON.parse(Buffer.from(session.accessToken.split('.')[1], 'base64url'));
    assert.equal(claims.cnf.jkt, key.thumbprint);

    // The next refresh already has the nonce: one request.
    log.length = 0;
    await session.refresh();
    assert.deepEqual(log.map((e) => e.status), [200]);
    assert.equal(saved.length, 2);

    // Through Envoy: DPoP-bound call (the edge checks the proof, its ath and cnf.jkt).
    const hello = `${envoy.url}/hello?x=1`;
    const ok = await eventually(60000, async () => {
      const r = await session.fetch(hello);
      return r.status === 200 ? r.json() : null;
    });
    assert.ok(ok, 'Envoy lets the bound token through');
    assert.equal(ok.sub, subject);
    assert.equal(ok.sid, created.session_id);
    assert.equal(ok.authorization, null, 'the credential is stripped');

    // A stolen access token without the key is refused at the edge.
    const stolen = await fetch(hello, { headers: { authorization: `DPoP ${session.accessToken}` } });
    assert.equal(stolen.status, 401);

    // A copy of the refresh token alone cannot end the bound session.
    const copied = await fetch(`${cp.url}/oauth2/revoke`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token: session.refreshToken }).toString(),
    });
    assert.equal(copied.status, 401);
    assert.equal((await copied.json()).error, 'invalid_dpop_proof');

    // The holder revokes its session (RFC 7009 with the refresh token and a proof of its
    // key): the edge drops every access token of it within the feed's latency.
    await session.revoke();
    const denied = await eventually(10000, async () => {
      const r = await session.fetch(hello);
      return r.status === 401 ? r : null;
    });
    assert.ok(denied, 'a revoked session gets 401 at the edge');
    assert.match(denied.headers.get('www-authenticate'), /revoked/);

    // And it can no longer refresh.
    await assert.rejects(session.refresh(), (e) => e instanceof ClientError && e.code === 'invalid_grant');
  });
}

test('an unbound session refreshes with the sealed extension and calls with Bearer', async () => {
  const created = await createSession(cp, { subject: 'js-bearer' });
  const session = new Session({
    tokenEndpoint: `${cp.url}/oauth2/token`,
    refreshToken: created.refresh_token,
    sessionId: created.session_id,
  });
  const answer = await session.refresh();
  assert.equal(answer.tokenType, 'Bearer');
  assert.match(session.refreshToken, /^rt_/);
  const ok = await eventually(60000, async () => {
    const r = await session.fetch(`${envoy.url}/bearer`);
    return r.status === 200 ? r.json() : null;
  });
  assert.equal(ok.sub, 'js-bearer');
});

/** A scripted resource server: answers what `script` returns for each request. */
async function scripted(script) {
  const seen = [];
  const server = createServer((req, res) => {
    seen.push({ authorization: req.headers.authorization, dpop: req.headers.dpop });
    const [status, headers, body] = script(seen.length, req);
    res.writeHead(status, headers);
    res.end(body ?? '');
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  return { url: `http://127.0.0.1:${server.address().port}/r`, seen, close: () => server.close() };
}

const payload = (dpop) => JSON.parse(Buffer.from(dpop.split('.')[1], 'base64url'));

test('fetch retries once with the nonce on use_dpop_nonce, and refreshes once on an expired token', async () => {
  const key = await createDeviceKey({ alg: 'Ed25519' });
  const created = await createSession(cp, { subject: 'js-retry', device_jwk: key.publicJwk });
  const session = new Session({
    tokenEndpoint: `${cp.url}/oauth2/token`,
    refreshToken: created.refresh_token,
    sessionId: created.session_id,
    accessToken: created.access_token,
    deviceKey: key,
  });

  // use_dpop_nonce at the resource: one retry carrying the nonce, then 200.
  const nonceServer = await scripted((n) => (n === 1
    ? [401, { 'www-authenticate': 'DPoP error="use_dpop_nonce"', 'dpop-nonce': 'resource-nonce-1' }]
    : [200, {}, 'ok']));
  const r1 = await session.fetch(nonceServer.url, { method: 'POST', body: 'x' });
  assert.equal(r1.status, 200);
  assert.equal(nonceServer.seen.length, 2);
  assert.equal(payload(nonceServer.seen[0].dpop).nonce, undefined);
  const retried = payload(nonceServer.seen[1].dpop);
  assert.equal(retried.nonce, 'resource-nonce-1');
  assert.equal(retried.htm, 'POST');
  assert.equal(retried.htu, nonceServer.url);
  assert.ok(retried.ath);
  assert.equal(nonceServer.seen[1].authorization, `DPoP ${session.accessToken}`);
  nonceServer.close();

  // An expired token (the resource says so): one refresh, one retry with the new token.
  const before = session.accessToken;
  const expiredServer = await scripted((n) => (n === 1
    ? [401, { 'www-authenticate': 'DPoP error="invalid_token", error_description="expired"' }]
    : [200, {}, 'ok']));
  const r2 = await session.fetch(expiredServer.url);
  assert.equal(r2.status, 200);
  assert.notEqual(session.accessToken, before);
  assert.equal(expiredServer.seen[1].authorization, `DPoP ${session.accessToken}`);
  expiredServer.close();

  // A 401 for another reason is returned as is, without a refresh or a retry.
  const deniedServer = await scripted(() => [401, { 'www-authenticate': 'DPoP error="invalid_token", error_description="revoked"' }]);
  const kept = session.accessToken;
  assert.equal((await session.fetch(deniedServer.url)).status, 401);
  assert.equal(deniedServer.seen.length, 1);
  assert.equal(session.accessToken, kept);
  deniedServer.close();

  // A token whose exp passed is refreshed before the call.
  session.accessToken = `e30.${Buffer.from(JSON.stringify({ exp: 1 })).toString('base64url')}.e30`;
  const okServer = await scripted(() => [200, {}, 'ok']);
  assert.equal((await session.fetch(okServer.url)).status, 200);
  assert.notEqual(session.accessToken.split('.')[1], Buffer.from(JSON.stringify({ exp: 1 })).toString('base64url'));
  okServer.close();
});

test('refresh refuses an answer whose transcript hash is not this exchange and keeps the old token', async () => {
  const created = await createSession(cp, { subject: 'js-transcript' });
  const session = new Session({
    tokenEndpoint: `${cp.url}/oauth2/token`,
    refreshToken: created.refresh_token,
    sessionId: created.session_id,
    fetch: async (url, init) => {
      const response = await fetch(url, init);
      const body = await response.json();
      body.transcript_hash = 'AAAA';
      return new Response(JSON.stringify(body), { status: response.status, headers: response.headers });
    },
  });
  await assert.rejects(session.refresh(), (e) => e.code === 'transcript_mismatch');
  assert.equal(session.refreshToken, created.refresh_token);
});
