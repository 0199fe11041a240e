// Types of @pq-edge-tokens/client (the same API in Node and browsers).

/**
 * `"Ed25519"` (alias `"EdDSA"`; the default), `"ES256"` (alias `"P-256"`: an ECDSA P-256
 * key, non-extractable in WebCrypto like hardware-backed keys) or `"ML-DSA-65"`.
 */
export type DeviceKeyAlg = 'Ed25519' | 'EdDSA' | 'ES256' | 'P-256' | 'ML-DSA-65';

export interface CreateDeviceKeyOptions {
  /** Default `"Ed25519"`. */
  alg?: DeviceKeyAlg;
  /**
   * Node: write the key's seed to this file (mode 0600, never overwritten). Without it an
   * Ed25519 or P-256 key is a non-extractable WebCrypto key kept in memory only.
   */
  file?: string;
  /** Browsers: the IndexedDB entry name (default `"default"`). */
  name?: string;
  /** Browsers: `false` keeps the key out of IndexedDB. */
  persist?: boolean;
}

export interface LoadDeviceKeyOptions {
  /** Node: the file given to `createDeviceKey`. */
  file?: string;
  /** Browsers: the IndexedDB entry name (default `"default"`). */
  name?: string;
}

/** What a refresh session needs from a device key. */
export interface DeviceKey {
  /** JOSE `alg` of its proofs. */
  readonly alg: 'EdDSA' | 'ES256' | 'ML-DSA-65';
  /**
   * Public JWK (OKP Ed25519, EC P-256 or AKP ML-DSA-65): the `device_jwk` of the
   * session.
   */
  readonly publicJwk: Record<string, string>;
  /** RFC 7638 thumbprint: the `cnf.jkt` of the session's access tokens. */
  readonly thumbprint: string;
  /** True when script can sign with the key but never read it (WebCrypto Ed25519 or P-256). */
  readonly nonExtractable: boolean;
  /** A DPoP proof (`dpop+jwt`) for `method` and `url` (query and fragment dropped). */
  signProof(method: string, url: string, options?: { accessToken?: string; nonce?: string }): Promise<string>;
}

export interface SessionOptions {
  /** The token endpoint, e.g. `https://cp.example/oauth2/token` (the proofs' `htu`). */
  tokenEndpoint: string;
  /** The session's current refresh token. */
  refreshToken: string;
  /** The session id (`session_id` from `/token/refresh/create`; part of the transcript). */
  sessionId: string;
  /** The device key of a bound session; absent for an unbound (Bearer) one. */
  deviceKey?: DeviceKey | null;
  /** An access token to start with (else the first `fetch` refreshes). */
  accessToken?: string | null;
  /** Called with every new refresh token, to persist it. */
  onRefreshToken?: (refreshToken: string) => void | Promise<void>;
  /** The fetch to use (default: the global one). */
  fetch?: typeof fetch;
}

export interface Refreshed {
  accessToken: string;
  /** `DPoP` for a bound session, `Bearer` otherwise. */
  tokenType: string;
  expiresIn: number;
}

export declare class Session {
  constructor(options: SessionOptions);
  refreshToken: string;
  accessToken: string | null;
  readonly sessionId: string;
  readonly deviceKey: DeviceKey | null;
  /**
   * Rotates the refresh token at the token endpoint with a fresh X-Wing key per call:
   * checks `transcript_hash`, opens the sealed token, stores it (and calls
   * `onRefreshToken`). Retries once on `use_dpop_nonce`. Throws `ClientError`.
   */
  refresh(): Promise<Refreshed>;
  /**
   * `fetch` with `Authorization: DPoP <token>` and a proof with `ath` (bound), or
   * `Bearer`. Retries once on `use_dpop_nonce`; refreshes once when the token is expired
   * (locally, or a 401 saying so). Give a re-sendable body.
   */
  fetch(url: string | URL, init?: RequestInit): Promise<Response>;
  /**
   * Ends the session: RFC 7009 revocation of the refresh token at `revocationEndpoint`
   * (default: `revoke` beside the token endpoint), with a DPoP proof of the device key
   * for a bound session (required by the control plane). Throws `ClientError` unless 200.
   */
  revoke(revocationEndpoint?: string | URL): Promise<void>;
  /** True when the access token's `exp` is within `skewSecs` (default 5) or past. */
  accessTokenExpired(skewSecs?: number): boolean;
}

export declare class ClientError extends Error {
  readonly status: number;
  /** OAuth error code (`invalid_grant`, ...) or `not_sealed`, `transcript_mismatch`. */
  readonly code: string;
  readonly description: string;
}

/** A new device key (see the options for where it is kept). */
export declare function createDeviceKey(options?: CreateDeviceKeyOptions): Promise<DeviceKey>;
/** A saved device key, or null when there is none. */
export declare function loadDeviceKey(options?: LoadDeviceKeyOptions): Promise<DeviceKey | null>;
/** The raw wasm bindings of `shared` (DeviceKey, EphemeralKem, verifyProof, hybridSeal). */
export declare function bindings(): Promise<unknown>;
