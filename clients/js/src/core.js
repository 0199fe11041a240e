// The platform-neutral part of the client: device keys, the sealed refresh at the
// standard token endpoint (RFC 6749 + RFC 9449 DPoP, server nonces) and DPoP-bound
// calls to APIs. node.js and browser.js give it the wasm module and a key store.

const encoder = new TextEncoder();

/** base64url without padding. */
export function b64url(bytes) {
  let binary = '';
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** Decodes unpadded base64url. */
export function fromB64url(text) {
  const binary = atob(text.replace(/-/g, '+').replace(/_/g, '/'));
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

/** base64url SHA-256 of a string or bytes. */
export async function sha256b64(data) {
  const bytes = typeof data === 'string' ? encoder.encode(data) : data;
  return b64url(new Uint8Array(await crypto.subtle.digest('SHA-256', bytes)));
}

const nowSecs = () => Math.floor(Date.now() / 1000);

/** The `htu` of a URL: no query, no fragment (RFC 9449 4.2). */
export function htuOf(url) {
  const u = new URL(url, globalThis.location?.href);
  return `${u.origin}${u.pathname}`;
}

/** The error a client sees when the server refuses; `code` is the OAuth error. */
export class ClientError extends Error {
  constructor(status, code, description) {
    super(`${status} ${code}: ${description}`);
    this.status = status;
    this.code = code;
    this.description = description;
  }
}

function normalizeAlg(alg) {
  switch (alg) {
    case 'Ed25519':
    case 'EdDSA':
      return 'EdDSA';
    case 'ES256':
    case 'P-256':
      return 'ES256';
    case 'ML-DSA-65':
      return 'ML-DSA-65';
    default:
      throw new TypeError(`alg must be "Ed25519" (or "EdDSA"), "ES256" (or "P-256") or "ML-DSA-65", got ${JSON.stringify(alg)}`);
  }
}

/** A device key held by the wasm module (its seed lives in wasm memory). */
export class WasmDeviceKey {
  constructor(key, alg) {
    this.wasmKey = key;
    this.alg = alg;
    this.publicJwk = JSON.parse(key.publicJwk());
    this.thumbprint = key.thumbprint();
    /** False: the seed can be read by this process (see `seed()`). */
    this.nonExtractable = false;
  }

  /** The secret seed, base64url (for the caller's key store). */
  seed() {
    return this.wasmKey.seed();
  }

  async signProof(method, url, { accessToken, nonce } = {}) {
    return this.wasmKey.signProof(method, htuOf(url), nowSecs(), accessToken ?? undefined, nonce ?? undefined);
  }
}

/**
 * A device key held by WebCrypto as a non-extractable CryptoKey: script can sign with it
 * but never read it (browsers keep it so in IndexedDB too). Ed25519 (proofs say `EdDSA`,
 * the name every verifier knows) or ECDSA P-256 (`ES256`: the kind hardware-backed
 * keys are, and that every browser has).
 */
export class WebCryptoDeviceKey {
  constructor(keyPair, alg, publicJwk) {
    this.keyPair = keyPair;
    this.alg = alg;
    this.publicJwk = publicJwk;
    this.thumbprint = null; // set by create()
    this.nonExtractable = !keyPair.privateKey.extractable;
  }

  static async create(keyPair) {
    let key;
    if (keyPair.privateKey.algorithm.name === 'ECDSA') {
      // The public half of a generated pair is always exportable.
      const { x, y } = await crypto.subtle.exportKey('jwk', keyPair.publicKey);
      key = new WebCryptoDeviceKey(keyPair, 'ES256', { kty: 'EC', crv: 'P-256', x, y });
      // RFC 7638: the required members in lexicographic order, no whitespace.
      key.thumbprint = await sha256b64(`{"crv":"P-256","kty":"EC","x":"${x}","y":"${y}"}`);
    } else {
      const raw = new Uint8Array(await crypto.subtle.exportKey('raw', keyPair.publicKey));
      key = new WebCryptoDeviceKey(keyPair, 'EdDSA', { kty: 'OKP', crv: 'Ed25519', x: b64url(raw) });
      key.thumbprint = await sha256b64(`{"crv":"Ed25519","kty":"OKP","x":"${key.publicJwk.x}"}`);
    }
    return key;
  }

  async signProof(method, url, { accessToken, nonce } = {}) {
    const header = { alg: this.alg, typ: 'dpop+jwt', jwk: this.publicJwk };
    const claims = { jti: b64url(crypto.getRandomValues(new Uint8Array(16))), htm: method, htu: htuOf(url), iat: nowSecs() };
    if (accessToken) claims.ath = await sha256b64(accessToken);
    if (nonce) claims.nonce = nonce;
    const input = `${b64url(encoder.encode(JSON.stringify(header)))}.${b64url(encoder.encode(JSON.stringify(claims)))}`;
    // WebCrypto's ECDSA signature is already JOSE's 64-byte r || s (not DER).
    const params = this.alg === 'ES256' ? { name: 'ECDSA', hash: 'SHA-256' } : { name: 'Ed25519' };
    const signature = await crypto.subtle.sign(params, this.keyPair.privateKey, encoder.encode(input));
    return `${input}.${b64url(new Uint8Array(signature))}`;
  }
}

/**
 * A non-extractable WebCrypto key pair for `alg` (`EdDSA`: Ed25519, `ES256`: ECDSA P-256),
 * or null where unsupported.
 */
export async function webCryptoKey(alg) {
  const params = alg === 'ES256' ? { name: 'ECDSA', namedCurve: 'P-256' } : { name: 'Ed25519' };
  try {
    const pair = await crypto.subtle.generateKey(params, false, ['sign', 'verify']);
    return await WebCryptoDeviceKey.create(pair);
  } catch {
    return null;
  }
}

/**
 * Builds the public API over a wasm module getter and a platform key store
 * (`{ save(key, options), load(options) }`).
 */
export function makeClient(getWasm, store) {
  const normalize = normalizeAlg;
  async function createDeviceKey(options = {}) {
    const alg = normalizeAlg(options.alg ?? 'Ed25519');
    const wasm = await getWasm();
    let key = null;
    if (alg !== 'ML-DSA-65' && store.prefersWebCrypto(options)) key = await webCryptoKey(alg);
    if (!key) key = new WasmDeviceKey(new wasm.DeviceKey(alg), alg);
    await store.save(key, options);
    return key;
  }

  async function loadDeviceKey(options = {}) {
    return store.load(await getWasm(), options);
  }

  class Session {
    /**
     * @param {object} o `tokenEndpoint` (URL of /oauth2/token), `refreshToken`,
     *   `sessionId`, `deviceKey` (absent for an unbound session), `accessToken`?,
     *   `onRefreshToken`? (called with each new refresh token, to persist it),
     *   `fetch`? (defaults to the global one).
     */
    constructor(o) {
      if (!o?.tokenEndpoint || !o.refreshToken || !o.sessionId) {
        throw new TypeError('Session needs tokenEndpoint, refreshToken and sessionId');
      }
      this.tokenEndpoint = o.tokenEndpoint;
      this.refreshToken = o.refreshToken;
      this.sessionId = o.sessionId;
      this.deviceKey = o.deviceKey ?? null;
      this.accessToken = o.accessToken ?? null;
      this.onRefreshToken = o.onRefreshToken ?? null;
      this.fetchImpl = o.fetch ?? ((...args) => globalThis.fetch(...args));
      /** Last `DPoP-Nonce` per origin (RFC 9449 8 and 9). */
      this.nonces = new Map();
    }

    rememberNonce(url, response) {
      const nonce = response.headers.get('dpop-nonce');
      if (nonce) this.nonces.set(new URL(url, globalThis.location?.href).origin, nonce);
      return nonce;
    }

    /**
     * Rotates the refresh token at the token endpoint with a fresh X-Wing key: the new
     * refresh token comes back sealed, its transcript hash is checked, then the box is
     * opened and the ephemeral secret freed. Retries once on `use_dpop_nonce`.
     * Returns `{accessToken, tokenType, expiresIn}`.
     */
    async refresh() {
      const wasm = await getWasm();
      for (let attempt = 0; ; attempt++) {
        const kem = new wasm.EphemeralKem();
        try {
          const kemPublicKey = kem.publicKey();
          const headers = { 'content-type': 'application/x-www-form-urlencoded' };
          let proof = null;
          if (this.deviceKey) {
            const nonce = this.nonces.get(new URL(this.tokenEndpoint, globalThis.location?.href).origin);
            proof = await this.deviceKey.signProof('POST', this.tokenEndpoint, { nonce });
            headers.dpop = proof;
          }
          const presented = this.refreshToken;
          const body = new URLSearchParams({
            grant_type: 'refresh_token',
            refresh_token: presented,
            kem_public_key: kemPublicKey,
          });
          const response = await this.fetchImpl(this.tokenEndpoint, { method: 'POST', headers, body: body.toString() });
          const nonce = this.rememberNonce(this.tokenEndpoint, response);
          const answer = await response.json().catch(() => ({}));
          if (response.status !== 200) {
            if (answer.error === 'use_dpop_nonce' && nonce && attempt === 0) continue;
            throw new ClientError(response.status, answer.error ?? 'error', answer.error_description ?? '');
          }
          if (answer.refresh_token !== undefined || !answer.sealed_refresh_token) {
            throw new ClientError(200, 'not_sealed', 'the token endpoint answered a refresh token in clear');
          }
          const transcript = [
            'pq-refresh-v1',
            `sid=${this.sessionId}`,
            `rt=${await sha256b64(presented)}`,
            `dpop=${proof ? await sha256b64(proof) : '-'}`,
            `kem=${await sha256b64(fromB64url(kemPublicKey))}`,
          ].join('\n');
          if (answer.transcript_hash !== (await sha256b64(transcript))) {
            throw new ClientError(200, 'transcript_mismatch', 'transcript_hash is not the hash of this exchange');
          }
          const sealed = answer.sealed_refresh_token;
          const next = kem.open(sealed.kem_ciphertext, transcript, sealed.sealed);
          this.refreshToken = next;
          this.accessToken = answer.access_token;
          if (this.onRefreshToken) await this.onRefreshToken(next);
          return { accessToken: answer.access_token, tokenType: answer.token_type, expiresIn: answer.expires_in };
        } finally {
          kem.free();
        }
      }
    }

    /**
     * Ends the session: RFC 7009 revocation of the refresh token at `revocationEndpoint`
     * (default: `revoke` beside the token endpoint), with a proof of the device key for a
     * bound session (the control plane revokes nothing without it). Throws `ClientError`
     * unless the answer is 200.
     */
    async revoke(revocationEndpoint) {
      const base = new URL(this.tokenEndpoint, globalThis.location?.href);
      const url = new URL(revocationEndpoint ?? 'revoke', base).href;
      const headers = { 'content-type': 'application/x-www-form-urlencoded' };
      if (this.deviceKey) headers.dpop = await this.deviceKey.signProof('POST', url);
      const body = new URLSearchParams({ token: this.refreshToken, token_type_hint: 'refresh_token' });
      const response = await this.fetchImpl(url, { method: 'POST', headers, body: body.toString() });
      if (response.status !== 200) {
        const answer = await response.json().catch(() => ({}));
        throw new ClientError(response.status, answer.error ?? 'error', answer.error_description ?? '');
      }
    }

    /** True when the access token's `exp` has passed (or there is none). */
    accessTokenExpired(skewSecs = 5) {
      if (!this.accessToken) return true;
      try {
        const claims = JSON.parse(new TextDecoder().decode(fromB64url(this.accessToken.split('.')[1])));
        return typeof claims.exp !== 'number' || claims.exp <= nowSecs() + skewSecs;
      } catch {
        return true;
      }
    }

    async send(url, init) {
      const headers = new Headers(init.headers ?? {});
      const method = (init.method ?? 'GET').toUpperCase();
      if (this.deviceKey) {
        headers.set('authorization', `DPoP ${this.accessToken}`);
        const nonce = this.nonces.get(new URL(url, globalThis.location?.href).origin);
        headers.set('dpop', await this.deviceKey.signProof(method, url, { accessToken: this.accessToken, nonce }));
      } else {
        headers.set('authorization', `Bearer ${this.accessToken}`);
      }
      const response = await this.fetchImpl(url, { ...init, method, headers });
      return response;
    }

    /**
     * `fetch` with the session's access token: `Authorization: DPoP` and a proof with
     * `ath` for a bound session (`Bearer` otherwise). Retries once with the server's
     * nonce on `use_dpop_nonce`, and refreshes once when the token is expired. Give a
     * re-sendable body (string, bytes), not a stream.
     */
    async fetch(url, init = {}) {
      // Absolute, so the proof's htu names the URL the request really goes to.
      url = new URL(String(url), globalThis.location?.href).href;
      let refreshed = false;
      if (this.accessTokenExpired()) {
        await this.refresh();
        refreshed = true;
      }
      let response = await this.send(url, init);
      let nonceRetried = false;
      for (;;) {
        if (response.status !== 401) break;
        const challenge = response.headers.get('www-authenticate') ?? '';
        if (!nonceRetried && /use_dpop_nonce/.test(challenge) && this.rememberNonce(url, response)) {
          nonceRetried = true;
        } else if (!refreshed && /expired/.test(challenge)) {
          await this.refresh();
          refreshed = true;
        } else {
          break;
        }
        response = await this.send(url, init);
      }
      this.rememberNonce(url, response);
      return response;
    }
  }

  return { createDeviceKey, loadDeviceKey, Session, ClientError, normalizeAlg: normalize };
}
