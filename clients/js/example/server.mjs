// The example's tiny server: serves the page and the client package, offers a demo
// login (it holds the admin credential and calls POST /token/refresh/create server
// side; the page never sees the secret), and passes /oauth2/* to the control plane and
// /api/* to Envoy with the Host header and path unchanged, so the page's DPoP proofs
// name the URLs it used and no CORS is needed.
//
//   CP_URL=http://127.0.0.1:8000 EDGE_URL=http://127.0.0.1:10000 \
//   CP_ADMIN_SECRET_FILE=./data/admin.secret PORT=8080 node example/server.mjs
import { createServer, request as httpRequest } from 'node:http';
import { readFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { join, resolve, dirname, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const pkgRoot = resolve(here, '..');

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.wasm': 'application/wasm', '.css': 'text/css' };

/** Static files: the page, and under /client/ the package's src/ and pkg/web/ only. */
function staticPath(path) {
  if (path === '/' || path === '/index.html') return join(here, 'index.html');
  if (path === '/app.js') return join(here, 'app.js');
  for (const allowed of ['/client/src/', '/client/pkg/web/']) {
    if (path.startsWith(allowed)) {
      const file = normalize(join(pkgRoot, path.slice('/client/'.length)));
      const base = join(pkgRoot, allowed.slice('/client/'.length));
      if (file.startsWith(base) && !file.includes(`${sep}..${sep}`)) return file;
    }
  }
  return null;
}

function proxy(req, res, target) {
  const upstream = new URL(target);
  const out = httpRequest({
    host: upstream.hostname, port: upstream.port, method: req.method, path: req.url,
    // Host unchanged: the control plane and Envoy check proofs against it.
    headers: req.headers,
  }, (answer) => {
    res.writeHead(answer.statusCode, answer.headers);
    answer.pipe(res);
  });
  out.on('error', (e) => {
    res.writeHead(502, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: 'bad_gateway', error_description: e.message }));
  });
  req.pipe(out);
}

async function body(req, limit = 64 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * Starts the example server. `controlPlane`, `edge`: base URLs; `adminSecret`: the
 * control plane's admin credential (used server side only); `port`: 0 for a free one.
 * Returns `{url, stop()}`.
 */
export async function startExample({ controlPlane, edge, adminSecret, port = 0, host = '127.0.0.1' }) {
  const server = createServer(async (req, res) => {
    try {
      const path = new URL(req.url, 'http://x').pathname;
      if (path.startsWith('/oauth2/')) return proxy(req, res, controlPlane);
      if (path.startsWith('/api/')) return proxy(req, res, edge);
      if (path === '/demo/login' && req.method === 'POST') {
        // A demo: any user name logs in. A real login service checks a password or an
        // IdP first, then binds the session to the device key the page generated.
        const { username, device_jwk: deviceJwk } = JSON.parse(await body(req));
        if (typeof username !== 'string' || !/^[a-z0-9._-]{1,64}$/i.test(username) || typeof deviceJwk !== 'object') {
          res.writeHead(400, { 'content-type': 'application/json' });
          return res.end(JSON.stringify({ error: 'invalid_request', error_description: 'username and device_jwk' }));
        }
        const created = await fetch(`${controlPlane}/token/refresh/create`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${adminSecret}` },
          body: JSON.stringify({ subject: username, device_jwk: deviceJwk, scope: 'demo' }),
        });
        const answer = await created.json();
        res.writeHead(created.status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
        return res.end(JSON.stringify(created.status === 200 ? {
          session_id: answer.session_id, refresh_token: answer.refresh_token,
          access_token: answer.access_token, token_type: answer.token_type,
        } : answer));
      }
      const file = req.method === 'GET' ? staticPath(path) : null;
      if (!file) {
        res.writeHead(404, { 'content-type': 'text/plain' });
        return res.end('not found');
      }
      const data = await readFile(file);
      const ext = file.slice(file.lastIndexOf('.'));
      res.writeHead(200, { 'content-type': TYPES[ext] ?? 'application/octet-stream', 'cache-control': 'no-cache' });
      return res.end(data);
    } catch (e) {
      if (!res.headersSent) res.writeHead(e.code === 'ENOENT' ? 404 : 500, { 'content-type': 'text/plain' });
      return res.end(e.code === 'ENOENT' ? 'not found' : 'error');
    }
  });
  await new Promise((ok) => server.listen(port, host, ok));
  return {
    url: `http://${host}:${server.address().port}`,
    stop: () => { server.closeAllConnections?.(); server.close(); },
  };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const need = (name) => {
    if (!process.env[name]) {
      console.error(`${name} is required (see the top of this file)`);
      process.exit(2);
    }
    return process.env[name];
  };
  const adminSecret = process.env.CP_ADMIN_SECRET
    ?? readFileSync(need('CP_ADMIN_SECRET_FILE'), 'utf8').trim();
  const example = await startExample({
    controlPlane: need('CP_URL').replace(/\/$/, ''),
    edge: need('EDGE_URL').replace(/\/$/, ''),
    adminSecret,
    port: Number(process.env.PORT ?? 8080),
  });
  console.log(`example page on ${example.url}/`);
}
