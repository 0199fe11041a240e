// The JS client bindings against the real control plane: a device-bound refresh session
// whose rotated refresh tokens arrive sealed under a fresh hybrid KEM key each time.
// Needs the control-plane binary (cargo build -p control-plane) and the bindings built
// into shared/js/pkg (see shared/README.md).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const pq = createRequire(import.meta.url)(join(root, 'shared', 'js', 'pkg', 'shared.js'));
const targetDir = process.env.CARGO_TARGET_DIR || join(root, 'target');

let server;
let base;
let admin;
let dataDir;

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'pq-js-'));
  server = spawn(join(targetDir, 'debug', 'control-plane'),
    ['serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir],
    { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, NO_COLOR: '1' } });
  base = await new Promise((ok, fail) => {
    let log = '';
    const timer = setTimeout(() => fail(new Error(`control plane did not start:\n${log}`)), 30000);
    server.stderr.on('data', (chunk) => {
      log += chunk;
      const m = log.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (m) { clearTimeout(timer); ok(m[1]); }
    });
    server.on('exit', (code) => fail(new Error(`control plane exited (${code}):\n${log}`)));
  });
  admin = readFileSync(join(dataDir, 'admin.secret'), 'utf8').trim();
});

after(() => {
  server?.kill('SIGKILL');
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

const b64sha = (data) => createHash('sha256').update(data).digest('base64url');
const now = () => Math.floor(Date.now() / 1000);

async function post(path, body, headers = {}) {
  const res = await fetch(base + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

for (const alg of ['EdDSA', 'ML-DSA-65']) {
  test(`a ${alg} device refreshes twice, opening each sealed token, then reuse revokes the session`, async () => {
    const device = new pq.DeviceKey(alg);
    const created = await post('/token/refresh/create',
      { subject: 'js-client', device_jwk: JSON.parse(device.publicJwk()) },
      { authorization: `Bearer ${admin}` });
    assert.equal(created.status, 200, JSON.stringify(created.body));
    const sid = created.body.session_id;
    const first = created.body.refresh_token;
    let refreshToken = first;
    let accessToken;

    for (let round = 0; round < 2; round++) {
      const kem = new pq.EphemeralKem();
      const proof = device.signProof('POST', `${base}/token/refresh`, now(), undefined, undefined);
      const res = await post('/token/refresh',
        { refresh_token: refreshToken, kem_public_key: kem.publicKey() }, { dpop: proof });
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.equal(res.body.refresh_token, undefined, 'the rotated token never travels in clear');
      const transcript = [
        'pq-refresh-v1',
        `sid=${sid}`,
        `rt=${b64sha(refreshToken)}`,
        `dpop=${b64sha(proof)}`,
        `kem=${b64sha(Buffer.from(kem.publicKey(), 'base64url'))}`,
      ].join('\n');
      assert.equal(res.body.transcript_hash, b64sha(transcript));
      const sealed = res.body.sealed_refresh_token;
      const next = kem.open(sealed.kem_ciphertext, transcript, sealed.sealed);
      assert.notEqual(next, refreshToken);
      refreshToken = next;
      accessToken = res.body.access_token;
      const claims = JSON.parse(Buffer.from(accessToken.split('.')[1], 'base64url'));
      assert.equal(claims.sid, sid);
      assert.equal(claims.cnf.jkt, device.thumbprint());
    }

    // The first refresh token was rotated: presenting it again revokes the family.
    const proof = device.signProof('POST', `${base}/token/refresh`, now(), undefined, undefined);
    const reuse = await post('/token/refresh',
      { refresh_token: first, kem_public_key: new pq.EphemeralKem().publicKey() }, { dpop: proof });
    assert.equal(reuse.status, 400, JSON.stringify(reuse.body));
    assert.equal(reuse.body.error, 'invalid_grant');
    assert.match(reuse.body.error_description, /reuse detected/);
    const check = await post('/token/validate', { token: accessToken });
    assert.equal(check.body.revoked, true);
  });
}
