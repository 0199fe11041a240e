//! Device-binding proofs with RFC 9449 (DPoP) fields, signed by an Ed25519, P-256 (ES256)
//! or ML-DSA-65 device key whose public JWK travels in the proof header.

// Parses untrusted input: no input may panic it.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use serde::{Deserialize, Serialize};

use crate::jws::{self, Jws, Limits};
use crate::keys::SigningKey;
use crate::{JoseError, b64, sha256};

/// `typ` of a proof.
pub const TYP_DPOP: &str = "dpop+jwt";

/// The proof `alg` values accepted (RFC 8414 `dpop_signing_alg_values_supported`):
/// Ed25519 under both of its names (RFC 9864), ES256 and ML-DSA-65.
pub const PROOF_ALGS: [&str; 4] = ["EdDSA", "Ed25519", "ES256", "ML-DSA-65"];

/// [`PROOF_ALGS`] separated by spaces, for the `algs` of a `DPoP` challenge (RFC 9449
/// section 7.1).
pub const PROOF_ALGS_CHALLENGE: &str = "EdDSA Ed25519 ES256 ML-DSA-65";

/// The claims of a proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DpopClaims {
    /// Unique id of this proof (replay detection).
    pub jti: String,
    /// HTTP method of the request.
    pub htm: String,
    /// HTTP URI of the request, without query and fragment.
    pub htu: String,
    /// Creation time.
    pub iat: i64,
    /// Hash of the access token the proof goes with (base64url SHA-256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ath: Option<String>,
    /// Server-provided nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// The `ath` value for an access token.
pub fn ath(access_token: &str) -> String {
    b64::encode(&sha256(access_token.as_bytes()))
}

/// Signs a proof with the device key.
pub fn sign_proof(key: &SigningKey, claims: &DpopClaims) -> Result<String, JoseError> {
    let payload = serde_json::to_vec(claims).map_err(|_| JoseError::SigningFailed)?;
    jws::sign(
        key,
        TYP_DPOP,
        None,
        Some(key.verifying_key().to_jwk()),
        &payload,
    )
}

/// What a proof must match.
#[derive(Debug, Clone, Copy)]
pub struct ProofRequirements<'a> {
    /// Expected `htm`.
    pub method: &'a str,
    /// Expected `htu` (query and fragment are ignored on both sides).
    pub uri: &'a str,
    /// Current time.
    pub now: i64,
    /// Largest accepted distance between `iat` and `now`, in seconds.
    pub max_age: i64,
    /// The access token the proof must be bound to (`ath`), if any.
    pub access_token: Option<&'a str>,
    /// The nonce the proof must carry, if any.
    pub nonce: Option<&'a str>,
    /// The key thumbprint the proof must be signed with (`cnf.jkt`), if any.
    pub jkt: Option<&'a str>,
}

/// Why a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    /// The proof is not a valid JWS or has no usable key.
    #[error("invalid DPoP proof: {0}")]
    Jose(#[from] JoseError),
    /// The header carries no public JWK, or a private one.
    #[error("DPoP proof header must carry a public jwk")]
    BadJwk,
    /// `htm` or `htu` does not match the request.
    #[error("DPoP proof is for {0}, not this request")]
    WrongRequest(String),
    /// `iat` is outside the accepted window.
    #[error("DPoP proof iat is {0} s away from now")]
    Stale(i64),
    /// `ath` is missing or does not match the access token.
    #[error("DPoP proof is not bound to this access token")]
    WrongAccessToken,
    /// `nonce` is missing or wrong.
    #[error("DPoP proof nonce is missing or wrong")]
    WrongNonce,
    /// The proof key is not the key the token is bound to.
    #[error("DPoP proof key does not match the token's cnf.jkt")]
    WrongKey,
}

/// A proof that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// Thumbprint of the device key that signed it.
    pub jkt: String,
    /// Its claims.
    pub claims: DpopClaims,
}

fn without_query(uri: &str) -> &str {
    uri.split(['?', '#']).next().unwrap_or(uri)
}

/// Verifies a proof against the request and, optionally, the token it goes with.
pub fn verify_proof(proof: &str, req: &ProofRequirements<'_>) -> Result<VerifiedProof, DpopError> {
    let jws = Jws::parse(proof, &Limits::default())?;
    jws.expect_typ(TYP_DPOP)?;
    let jwk = jws.header.jwk.as_ref().ok_or(DpopError::BadJwk)?;
    if jwk.has_private_part() {
        return Err(DpopError::BadJwk);
    }
    let key = jwk.to_verifying_key()?;
    jws.verify_with(&key)?;
    let claims: DpopClaims = jws.claims()?;
    if claims.htm != req.method || without_query(&claims.htu) != without_query(req.uri) {
        return Err(DpopError::WrongRequest(format!(
            "{} {}",
            claims.htm, claims.htu
        )));
    }
    let age = req.now.saturating_sub(claims.iat);
    if age.abs() > req.max_age {
        return Err(DpopError::Stale(age));
    }
    if req
        .access_token
        .is_some_and(|token| claims.ath.as_deref() != Some(ath(token).as_str()))
    {
        return Err(DpopError::WrongAccessToken);
    }
    if req.nonce.is_some() && claims.nonce.as_deref() != req.nonce {
        return Err(DpopError::WrongNonce);
    }
    let jkt = key.thumbprint();
    if req.jkt.is_some_and(|expected| expected != jkt) {
        return Err(DpopError::WrongKey);
    }
    Ok(VerifiedProof { jkt, claims })
}
