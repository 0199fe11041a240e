// The example page: every step goes through the client package.
import { createDeviceKey, Session } from '/client/src/browser.js';

const $ = (id) => document.getElementById(id);
let session = null;

function log(kind, text) {
  const li = document.createElement('li');
  li.className = kind;
  li.textContent = text;
  $('log').append(li);
}

function busy(on) {
  for (const id of ['login', 'call', 'refresh', 'revoke']) $(id).disabled = on || (id !== 'login' && !session);
}

async function step(work) {
  busy(true);
  try {
    await work();
  } catch (e) {
    log('error', String(e.message ?? e));
  } finally {
    busy(false);
  }
}

$('login').onclick = () => step(async () => {
  const alg = $('alg').value;
  const key = await createDeviceKey({ alg, name: 'example' });
  const res = await fetch('/demo/login', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username: $('username').value, device_jwk: key.publicJwk }),
  });
  const answer = await res.json();
  if (res.status !== 200) throw new Error(`login: ${res.status} ${answer.error_description ?? ''}`);
  session = new Session({
    tokenEndpoint: `${location.origin}/oauth2/token`,
    sessionId: answer.session_id,
    refreshToken: answer.refresh_token,
    accessToken: answer.access_token,
    deviceKey: key,
  });
  $('status').textContent = `logged in as ${$('username').value} (${alg} key, non-extractable: ${key.nonExtractable})`;
  log('info', `login: session ${answer.session_id.slice(0, 8)}..., token_type ${answer.token_type}`);
});

$('call').onclick = () => step(async () => {
  const res = await session.fetch('/api/hello');
  const text = await res.text();
  let detail = text;
  try {
    const body = JSON.parse(text);
    detail = body.sub ? `sub=${body.sub}` : (body.error_description ?? body.error ?? text);
  } catch { /* not JSON */ }
  log(res.status === 200 ? 'ok' : 'denied', `GET /api/hello -> ${res.status} ${detail}`);
  $('status').dataset.last = String(res.status);
});

$('refresh').onclick = () => step(async () => {
  const answer = await session.refresh();
  log('info', `refresh: new ${answer.tokenType} token, refresh token ...${session.refreshToken.slice(-6)} (opened from the sealed answer)`);
});

$('revoke').onclick = () => step(async () => {
  // The refresh token and a proof of the device key (a bound session needs both).
  await session.revoke();
  log('info', 'revoke session: 200');
});
