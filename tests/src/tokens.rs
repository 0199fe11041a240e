//! Tokens the tests mint themselves with a test key (for the rejection reasons the
//! control plane would never issue: expired, wrong issuer, ...).

use serde_json::{Value, json};
use shared::jws::sign;
use shared::{Alg, SigningKey, b64};

/// The issuer every test control plane is given (`CP_ISSUER`; a URL, as RFC 8414 wants:
/// `.test` names no real host) and the test filter config accepts.
pub const ISSUER: &str = "https://cp.pq-edge.test";
/// The former default issuer, for the issuer-switch tests.
pub const LEGACY_ISSUER: &str = "pq-control-plane";
/// The audience the control plane uses by default.
pub const AUDIENCE: &str = "pq-api";

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The test signing key (EdDSA), trusted by Envoys whose JWKS includes [`test_jwk`].
pub fn test_key() -> SigningKey {
    SigningKey::from_seed(Alg::EdDsa, &[42; 32])
}

/// A key nobody trusts.
pub fn stranger_key() -> SigningKey {
    SigningKey::from_seed(Alg::EdDsa, &[43; 32])
}

/// The public JWK of [`test_key`].
pub fn test_jwk() -> Value {
    serde_json::to_value(test_key().verifying_key().to_jwk()).unwrap_or(Value::Null)
}

/// Valid claims for `sub`, with the given `jti` and `sid`.
pub fn claims(sub: &str, jti: &str, sid: &str) -> Value {
    let now = now();
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "jti": jti, "sid": sid,
        "iat": now - 5, "nbf": now - 5, "exp": now + 600, "scope": "read"
    })
}

/// Signs `claims` as an access token with `key`, under its own kid.
pub fn mint_with(key: &SigningKey, claims: &Value) -> String {
    sign(
        key,
        "at+jwt",
        Some(&key.kid()),
        None,
        claims.to_string().as_bytes(),
    )
    .unwrap_or_default()
}

/// Signs `claims` with [`test_key`].
pub fn mint(claims: &Value) -> String {
    mint_with(&test_key(), claims)
}

/// `token` with its signature replaced by one from another key of the same algorithm.
pub fn forge(token: &str) -> String {
    let Some((input, _)) = token.rsplit_once('.') else {
        return token.to_owned();
    };
    let header: Value = input
        .split('.')
        .next()
        .and_then(|h| b64::decode(h, "header").ok())
        .and_then(|h| serde_json::from_slice(&h).ok())
        .unwrap_or(Value::Null);
    let alg = match header["alg"].as_str() {
        Some("ML-DSA-65") => Alg::MlDsa65,
        _ => Alg::EdDsa,
    };
    let other = SigningKey::from_seed(alg, &[44; 32]);
    let sig = other.sign(input.as_bytes()).unwrap_or_default();
    format!("{input}.{}", b64::encode(&sig))
}

/// The decoded payload of a token (unverified).
pub fn payload(token: &str) -> Value {
    token
        .split('.')
        .nth(1)
        .and_then(|p| b64::decode(p, "payload").ok())
        .and_then(|p| serde_json::from_slice(&p).ok())
        .unwrap_or(Value::Null)
}

/// The `kid` in a token's header.
pub fn kid(token: &str) -> String {
    token
        .split('.')
        .next()
        .and_then(|h| b64::decode(h, "header").ok())
        .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
        .and_then(|h| h["kid"].as_str().map(str::to_owned))
        .unwrap_or_default()
}
