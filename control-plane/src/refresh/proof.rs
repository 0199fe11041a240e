//! Device proofs: the device key a session is bound to, and the DPoP proofs of it that a
//! refresh, a revocation or a bound access token needs, each accepted once.

use shared::dpop::{self, ProofRequirements};
use shared::{Jwk, b64};

use super::store::remember_proof;
use super::{Error, ProofTarget};
use crate::region::Region;
use crate::time::now;

/// How far a DPoP proof's `iat` may be from now, in seconds.
pub(crate) const PROOF_MAX_AGE: i64 = 60;

/// Longest DPoP proof accepted (an ML-DSA-65 proof with its JWK is about 6 KB).
const MAX_PROOF_LEN: usize = 16 * 1024;

/// Longest DPoP proof `jti`.
const MAX_PROOF_JTI_LEN: usize = 256;

pub(super) fn parse_device_jwk(value: serde_json::Value) -> Result<String, Error> {
    let bytes = serde_json::to_vec(&value)
        .map_err(|e| Error::InvalidRequest(format!("device_jwk does not serialize: {e}")))?;
    let jwk = Jwk::parse(&bytes)
        .map_err(|e| Error::InvalidRequest(format!("device_jwk is not a valid JWK: {e}")))?;
    if jwk.has_private_part() {
        return Err(Error::InvalidRequest(
            "device_jwk must be a public key: it carries a private part (d or priv)".into(),
        ));
    }
    let key = jwk.to_verifying_key().map_err(|e| {
        Error::InvalidRequest(format!(
            "device_jwk is not a usable OKP Ed25519, EC P-256 or AKP ML-DSA-65 public key: {e}"
        ))
    })?;
    Ok(key.thumbprint())
}

/// Decodes the claims of a proof without verifying them, only to learn which scheme
/// the client used (`http` or `https`); everything is verified afterwards.
fn proof_scheme(proof: &str) -> &'static str {
    let htu = proof
        .split('.')
        .nth(1)
        .and_then(|p| b64::decode(p, "proof payload").ok())
        .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
        .and_then(|v| v.get("htu").and_then(|h| h.as_str()).map(str::to_owned));
    match htu {
        Some(h) if h.starts_with("https://") => "https",
        _ => "http",
    }
}

/// Checks that the presenter of a DPoP-bound access token holds its key: a proof for
/// this request (`htm`, `htu`), bound to the token (`ath`) and to `cnf.jkt`, never seen
/// before. A stolen bound token alone is no credential, not even to revoke with. Returns
/// the proof's `(jkt, jti)`, recorded here (the other replicas are asked by the caller).
pub(crate) fn check_possession(
    region: &Region,
    proof: Option<&str>,
    access_token: &str,
    jkt: &str,
    target: &ProofTarget,
) -> Result<(String, String), Error> {
    if proof.is_none() {
        return Err(Error::InvalidProof(
            "this access token is bound to a device key (cnf.jkt): a DPoP header with a proof \
             of possession is required"
                .into(),
        ));
    }
    prove(region, proof, Some(access_token), jkt, target)
}

/// Verifies a proof of the key `jkt` for this request (bound to `access_token`, when
/// given) and records its jti, refusing one seen before; returns its `(jkt, jti)`.
pub(super) fn prove(
    region: &Region,
    proof: Option<&str>,
    access_token: Option<&str>,
    jkt: &str,
    target: &ProofTarget,
) -> Result<(String, String), Error> {
    let t = now();
    let (jkt, jti) = verify_proof(proof, jkt, target, t, access_token, None)?;
    if !record_proof(region, &jkt, &jti)? {
        return Err(Error::InvalidProof(
            "DPoP proof was already used (replay)".into(),
        ));
    }
    Ok((jkt, jti))
}

/// Records a proof's `jti` for its key `jkt`; false when it was recorded before (a
/// replay). Another replica's proofs are recorded here too, when it asks.
pub(crate) fn record_proof(region: &Region, jkt: &str, jti: &str) -> Result<bool, Error> {
    if jkt.is_empty() || jti.is_empty() || jti.len() > MAX_PROOF_JTI_LEN || jkt.len() > 64 {
        return Err(Error::InvalidRequest(
            "a proof's jkt and jti are 1 to 64 and 1 to 256 bytes".into(),
        ));
    }
    let t = now();
    publish_proof(region, jkt, jti);
    let (jkt, jti) = (jkt.to_owned(), jti.to_owned());
    Ok(region
        .writer()
        .run(move |tx| remember_proof(tx, &jkt, &jti, t))?)
}

/// Verifies the DPoP proof of a bound session (or, with `access_token`, of a bound access
/// token) and returns its `(jkt, jti)`.
pub(super) fn verify_proof(
    proof: Option<&str>,
    jkt: &str,
    target: &ProofTarget,
    t: i64,
    access_token: Option<&str>,
    accepted_nonces: Option<&[String]>,
) -> Result<(String, String), Error> {
    let proof = proof.ok_or_else(|| {
        Error::InvalidProof(
            "this session is bound to a device key: a DPoP header with a proof is required".into(),
        )
    })?;
    if proof.len() > MAX_PROOF_LEN {
        return Err(Error::InvalidProof(format!(
            "DPoP proof is {} bytes, over the {MAX_PROOF_LEN}-byte limit",
            proof.len()
        )));
    }
    // The client may reach us through a TLS terminator: accept the scheme it used, but
    // the host and path must be this request's.
    let uri = format!("{}://{}{}", proof_scheme(proof), target.host, target.path);
    let verified = dpop::verify_proof(
        proof,
        &ProofRequirements {
            method: &target.method,
            uri: &uri,
            now: t,
            max_age: PROOF_MAX_AGE,
            access_token,
            nonce: None,
            jkt: Some(jkt),
        },
    )
    .map_err(|e| Error::InvalidProof(e.to_string()))?;
    // The shared check takes one nonce; the server accepts two (current and previous
    // window), so the nonce is compared here, after every other check passed.
    if let Some(accepted) = accepted_nonces {
        let fresh = verified
            .claims
            .nonce
            .as_ref()
            .is_some_and(|n| accepted.iter().any(|a| a == n));
        if !fresh {
            return Err(Error::UseDpopNonce(
                match verified.claims.nonce {
                    Some(_) => "DPoP proof nonce is stale or unknown: use the nonce in the DPoP-Nonce header",
                    None => "DPoP proof must carry the server nonce given in the DPoP-Nonce header",
                }
                .into(),
            ));
        }
    }
    let jti = verified.claims.jti;
    if jti.is_empty() || jti.len() > MAX_PROOF_JTI_LEN {
        return Err(Error::InvalidProof(format!(
            "DPoP proof jti must be 1 to {MAX_PROOF_JTI_LEN} bytes"
        )));
    }
    Ok((verified.jkt, jti))
}

/// Records a proof's jti in the region's shared cache (Redis), when there is one, for
/// services that read it. Only SQLite decides whether a proof was replayed: what anyone
/// writes to or deletes from Redis can neither let a replay through nor refuse a proof.
pub(super) fn publish_proof(region: &Region, jkt: &str, jti: &str) {
    let key = format!("dpop:{}:{jkt}:{jti}", region.settings().region);
    if let Some(Some(Err(e))) = region
        .shared_cache()
        .map(|c| c.remember_once(&key, 2 * PROOF_MAX_AGE + 1))
    {
        tracing::warn!(error = %e, "DPoP proof jti not published to Redis");
    }
}
