//! Signed envelopes: control-plane messages (revocation events, edge snapshots and
//! deltas, token events) as compact JWS signed with ML-DSA-65, each with its own `typ`.
//!
//! Any JOSE library that knows ML-DSA-65 can check them against the region's JWKS.

// Parses untrusted input: no input may panic it.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use crate::JoseError;
use crate::jws::{self, Header, Jws, Limits};
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
    seal_with_leeway(key, typ, None, payload)
}

/// Like [`seal`], with the protected header member `leeway` when given (the leeway the
/// revocations of an edge update assume; see [`crate::edgeset`]).
pub fn seal_with_leeway(
    key: &SigningKey,
    typ: &str,
    leeway: Option<u32>,
    payload: &[u8],
) -> Result<String, JoseError> {
    seal_edge(key, typ, leeway, None, None, payload)
}

/// Like [`seal`], with the protected header members of an edge update when given:
/// `leeway` (the leeway its revocations assume), `feed` (the id of the feed it belongs
/// to) and `jwks` (the digest of the JWKS served with it); see [`crate::edgeset`].
pub fn seal_edge(
    key: &SigningKey,
    typ: &str,
    leeway: Option<u32>,
    feed: Option<&str>,
    jwks: Option<&str>,
    payload: &[u8],
) -> Result<String, JoseError> {
    if key.alg() != Alg::MlDsa65 {
        return Err(JoseError::AlgMismatch {
            header: key.alg().as_str(),
            key: Alg::MlDsa65.as_str(),
        });
    }
    jws::sign_with_header(
        key,
        Header {
            typ: Some(typ.into()),
            kid: Some(key.kid()),
            leeway: leeway.map(u64::from),
            feed: feed.map(str::to_owned),
            jwks: jwks.map(str::to_owned),
            ..Header::default()
        },
        payload,
    )
}

/// A verified envelope.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The `typ` found, one of those asked for.
    pub typ: &'static str,
    /// The whole protected header (for members such as `leeway`).
    pub header: Header,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Verifies an envelope of one of the `typs` with an ML-DSA-65 key from `keys`; returns
/// the `typ` found and the payload.
pub fn open(
    token: &str,
    typs: &[&'static str],
    keys: &Keyring,
    max_len: usize,
) -> Result<(&'static str, Vec<u8>), JoseError> {
    open_with_header(token, typs, keys, max_len).map(|o| (o.typ, o.payload))
}

/// Like [`open`], also returning the protected header.
pub fn open_with_header(
    token: &str,
    typs: &[&'static str],
    keys: &Keyring,
    max_len: usize,
) -> Result<Opened, JoseError> {
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
    Ok(Opened {
        typ,
        header: jws.header,
        payload: jws.payload,
    })
}
