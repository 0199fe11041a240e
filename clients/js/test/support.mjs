// Starts what the client tests and the example need, on free ports: the control-plane
// binary on a temp data dir, a tiny upstream that echoes the claim headers, and real
// Envoy with the edge filter in front of it. Paths come from the environment
// (CARGO_TARGET_DIR, ENVOY_BIN) or the repository layout, never from this machine.
import { spawn, execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createServer as netServer } from 'node:net';

export const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const targetDir = process.env.CARGO_TARGET_DIR || join(root, 'target');

export async function freePort() {
  return new Promise((ok, fail) => {
    const s = netServer();
    s.unref();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

export const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

/** Polls `check` until it returns a truthy value or `ms` pass. */
export async function eventually(ms, check) {
  const end = Date.now() + ms;
  for (;;) {
    const value = await check().catch(() => null);
    if (value) return value;
    if (Date.now() > end) return null;
    await sleep(200);
  }
}

/** `control-plane serve` on a free port; `{url, port, admin, stop()}`. */
export async function startControlPlane(extraArgs = []) {
  const dataDir = mkdtempSync(join(tmpdir(), 'pq-client-cp-'));
  const bin = process.env.CONTROL_PLANE_BIN || join(targetDir, 'debug', 'control-plane');
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('CP_')));
  const child = spawn(bin, ['serve', '--listen', '127.0.0.1:0', '--data-dir', join(dataDir, 'data'), ...extraArgs],
    { stdio: ['ignore', 'ignore', 'pipe'], env: { ...env, NO_COLOR: '1' } });
  const url = await new Promise((ok, fail) => {
    let log = '';
    const timer = setTimeout(() => fail(new Error(`control plane did not start:\n${log}`)), 30000);
    child.stderr.on('data', (chunk) => {
      log += chunk;
      const m = log.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (m) { clearTimeout(timer); ok(m[1]); }
    });
    child.on('exit', (code) => fail(new Error(`control plane exited (${code}):\n${log}`)));
  });
  child.stderr.resume();
  const admin = readFileSync(join(dataDir, 'data', 'admin.secret'), 'utf8').trim();
  return {
    url,
    port: Number(new URL(url).port),
    admin,
    adminSecretFile: join(dataDir, 'data', 'admin.secret'),
    stop() {
      child.kill('SIGKILL');
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** An upstream that answers 200 JSON with the claim headers Envoy set. */
export async function startUpstream() {
  const server = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({
      upstream: 'hello', path: req.url,
      sub: req.headers['x-auth-sub'] ?? null, sid: req.headers['x-auth-sid'] ?? null,
      // Envoy strips these with strip_authorization: the upstream never sees them.
      authorization: req.headers.authorization ?? null, dpop: req.headers.dpop ?? null,
    }));
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  return { port: server.address().port, stop: () => server.close() };
}

function envoyBin() {
  if (process.env.ENVOY_BIN) return process.env.ENVOY_BIN;
  return execFileSync(join(root, 'scripts', 'envoy-bin.sh'), { encoding: 'utf8' }).trim();
}

const cluster = (name, port) => ({
  name, type: 'STATIC', connect_timeout: '1s',
  load_assignment: { cluster_name: name, endpoints: [{ lb_endpoints: [
    { endpoint: { address: { socket_address: { address: '127.0.0.1', port_value: port } } } },
  ] }] },
});

/** Envoy with the edge filter (as tests/src/envoy.rs configures it); `{url, stop()}`. */
export async function startEnvoy(controlPlanePort, upstreamPort) {
  const wasm = join(targetDir, 'wasm32-wasip1', 'wasm-release', 'edge_filter.wasm');
  if (!existsSync(wasm)) {
    throw new Error(`${wasm} is missing: cargo build -p edge-filter --target wasm32-wasip1 --profile wasm-release`);
  }
  const dir = mkdtempSync(join(tmpdir(), 'pq-client-envoy-'));
  const [port, adminPort] = [await freePort(), await freePort()];
  const filter = {
    // The issuer the control plane derives from its (loopback) listen address.
    issuer: `http://127.0.0.1:${controlPlanePort}`, audience: 'pq-api',
    control_plane: { cluster: 'control_plane', poll_wait_seconds: 2, retry_millis: 200 },
    staleness_bound_seconds: 10,
    claim_headers: { sub: 'x-auth-sub', jti: 'x-auth-jti', sid: 'x-auth-sid' },
    strip_authorization: true,
    bypass_paths: ['/health'],
  };
  const config = {
    admin: { address: { socket_address: { address: '127.0.0.1', port_value: adminPort } } },
    static_resources: {
      listeners: [{
        name: 'edge',
        address: { socket_address: { address: '127.0.0.1', port_value: port } },
        filter_chains: [{ filters: [{
          name: 'envoy.filters.network.http_connection_manager',
          typed_config: {
            '@type': 'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
            stat_prefix: 'edge',
            normalize_path: true,
            merge_slashes: true,
            common_http_protocol_options: { headers_with_underscores_action: 'REJECT_REQUEST' },
            route_config: { virtual_hosts: [{ name: 'all', domains: ['*'],
              routes: [{ match: { prefix: '/' }, route: { cluster: 'upstream' } }] }] },
            http_filters: [{
              name: 'envoy.filters.http.wasm',
              typed_config: {
                '@type': 'type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm',
                config: {
                  name: 'edge_filter', root_id: 'edge_filter', failure_policy: 'FAIL_RELOAD',
                  vm_config: { vm_id: 'edge_filter', runtime: 'envoy.wasm.runtime.v8', code: { local: { filename: wasm } } },
                  configuration: { '@type': 'type.googleapis.com/google.protobuf.StringValue', value: JSON.stringify(filter) },
                },
              },
            }, {
              name: 'envoy.filters.http.router',
              typed_config: { '@type': 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router' },
            }],
          },
        }] }],
      }],
      clusters: [cluster('upstream', upstreamPort), cluster('control_plane', controlPlanePort)],
    },
  };
  const configPath = join(dir, 'envoy.json');
  writeFileSync(configPath, JSON.stringify(config));
  const child = spawn(envoyBin(), ['-c', configPath, '--use-dynamic-base-id', '--concurrency', '2',
    '-l', 'warning', '--log-path', join(dir, 'envoy.log')], { stdio: 'ignore' });
  let exited = null;
  child.on('exit', (code) => { exited = code; });
  const ready = await eventually(60000, async () => {
    if (exited !== null) throw new Error('envoy exited');
    const r = await fetch(`http://127.0.0.1:${adminPort}/ready`);
    return r.status === 200;
  });
  if (!ready) {
    child.kill('SIGKILL');
    throw new Error(`envoy did not become ready (exit ${exited}); logs in ${dir}`);
  }
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    stop() {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Creates a refresh session with the admin credential (what a login service does). */
export async function createSession(cp, body) {
  const res = await fetch(`${cp.url}/token/refresh/create`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${cp.admin}` },
    body: JSON.stringify(body),
  });
  const answer = await res.json();
  if (res.status !== 200) throw new Error(`create session: ${res.status} ${JSON.stringify(answer)}`);
  return answer;
}
