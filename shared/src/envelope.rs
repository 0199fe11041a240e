//! Signed envelopes: control-plane messages (revocation events, edge snapshots and
//! deltas, token events) as compact JWS signed with ML-DSA-65, each with its own `typ`.
//!
//! Any JOSE library that knows ML-DSA-65 can check them against the region's JWKS.

use crate::JoseError;
use crate::jws::{self, Jws, Limits};
use crate::keys::{Alg, Keyring, SigningKey};

/// `typ` of a revocation event.
pub const TYP_REVOCATION: &str = "revocation-event+jwt";
/// `typ` of the signed root of a batch of revocation events (see
/// [`crate::revocation::sign_batch`]).
pub const TYP_REVOCATION_BATCH: &str = "revocation-batch+jws";
/// `typ` of a token lifecycle event.
pub const TYP_TOKEN_EVENT: &str = "token-event+jwt";
/// `typ` of a full edge revocation snapshot.
pub const TYP_EDGE_SNAPSHOT: &str = "edge-snapshot+jws";
/// `typ` of an edge revocation delta.
pub const TYP_EDGE_DELTA: &str = "edge-delta+jws";

/// Signs `payload` under `typ`; the key must be ML-DSA-65.
pub fn seal(key: &SigningKey, typ: &str, payload: &[u8]) -> Result<String, JoseError> {
    if key.alg() != Alg::MlDsa65 {
        return Err(JoseError::AlgMismatch {
            header: key.alg().as_str(),
            key: Alg::MlDsa65.as_str(),
        });
    }
    jws::sign(key, typ, Some(&key.kid()), None, payload)
}

/// Verifies an envelope of one of the `typs` with an ML-DSA-65 key from `keys`; returns
/// the `typ` found and the payload.
pub fn open(
    token: &str,
    typs: &[&'static str],
    keys: &Keyring,
    max_len: usize,
) -> Result<(&'static str, Vec<u8>), JoseError> {
    let jws = Jws::parse(
        token,
        &Limits {
            max_token_len: max_len,
        },
    )?;
    let typ = typs
        .iter()
        .find(|t| jws.expect_typ(t).is_ok())
        .ok_or_else(|| JoseError::WrongType {
            found: jws.header.typ.clone(),
            expected: typs.first().copied().unwrap_or(""),
        })?;
    if jws.alg != Alg::MlDsa65 {
        return Err(JoseError::UnsupportedAlg(jws.alg.as_str().into()));
    }
    jws.verify(keys)?;
    Ok((typ, jws.payload))
}
