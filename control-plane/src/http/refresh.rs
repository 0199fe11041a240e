//! `/token/refresh*`: refresh sessions (create, rotate, revoke); the rules live in
//! [`crate::refresh`].

use axum::extract::State;
use axum::http::{HeaderMap, Uri, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::{b64, kem};
use utoipa::ToSchema;

use super::{Admin, ApiError, AppState, ErrorBody, Json, MaybeAdmin, blocking};
use crate::refresh::{self, Delivery, ProofTarget, RevokeTarget};
use crate::region::Issued;

/// `DPoP` for tokens bound to a device key (RFC 9449), `bearer` otherwise.
fn token_type(issued: &Issued) -> String {
    if issued.claims.cnf.is_some() {
        "DPoP".into()
    } else {
        "bearer".into()
    }
}

/// `POST /token/refresh/create` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateSessionRequest {
    /// `sub` of the session's access tokens.
    pub subject: String,
    /// The device's public JWK: OKP Ed25519 (`crv`, `x`) or AKP ML-DSA-65 (`alg`,
    /// `pub`). Its RFC 7638 thumbprint becomes `cnf.jkt`; every refresh then needs a
    /// DPoP proof signed by it and a `kem_public_key` (or `client_public_key`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub device_jwk: Option<Value>,
    /// A client fingerprint each refresh must repeat (the seed's weaker binding mode).
    #[serde(default)]
    pub client_binding: Option<String>,
    /// Session lifetime in days, 1-365 (default `CP_REFRESH_DAYS`).
    #[serde(default)]
    pub expires_days: Option<i64>,
    /// `scope` of the session's access tokens.
    #[serde(default)]
    pub scope: Option<String>,
}

/// `POST /token/refresh/create` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct CreateSessionResponse {
    /// The first refresh token (opaque; only its SHA-256 is stored).
    pub refresh_token: String,
    /// The session (`sid` claim of its access tokens).
    pub session_id: String,
    /// `DPoP` when bound to a device key, else `bearer`.
    pub token_type: String,
    /// The first access token (carries `sid`, and `cnf.jkt` when bound).
    pub access_token: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// Seconds until the session (every refresh token of it) expires.
    pub refresh_expires_in: i64,
    /// The access token's id.
    pub jti: String,
    /// The subject.
    pub subject: String,
}

/// Creates a refresh session for a subject (admin credential required).
#[utoipa::path(post, path = "/token/refresh/create", tag = "refresh",
    request_body = CreateSessionRequest, security(("admin" = [])),
    responses((status = 200, body = CreateSessionResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)))]
pub(super) async fn create(
    State(state): State<AppState>,
    _admin: Admin,
    Json(body): Json<CreateSessionRequest>,
) -> Result<Json<CreateSessionResponse>, ApiError> {
    let created = blocking(&state, move |r| {
        refresh::create(
            r,
            refresh::CreateRequest {
                subject: body.subject,
                device_jwk: body.device_jwk,
                client_binding: body.client_binding,
                expires_days: body.expires_days,
                scope: body.scope,
            },
            "api:/token/refresh/create",
        )
    })
    .await?;
    Ok(Json(CreateSessionResponse {
        token_type: token_type(&created.access),
        refresh_token: created.refresh_token,
        session_id: created.session_id,
        access_token: created.access.token,
        expires_in: created.access.expires_in,
        refresh_expires_in: created.refresh_expires_in,
        jti: created.access.claims.jti,
        subject: created.access.claims.sub,
    }))
}

/// `POST /token/refresh` body. Unknown fields are refused (400), so a misspelt key
/// name can never turn a sealed delivery into a clear one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefreshRequest {
    /// The current refresh token of the session.
    pub refresh_token: String,
    /// A fresh ephemeral X-Wing public key, base64url (1216 bytes). Required for
    /// device-bound sessions (or `client_public_key`); when given, the rotated token
    /// comes back sealed to it in `sealed_refresh_token`.
    #[serde(default)]
    pub kem_public_key: Option<String>,
    /// The original service's name for the same key: a fresh ephemeral X-Wing public
    /// key, base64url (1216 bytes). When given, the rotated token comes back sealed in
    /// the original shape: top-level `kem_ciphertext` and `encrypted_session_key`.
    /// At most one of `kem_public_key` and `client_public_key`.
    #[serde(default)]
    pub client_public_key: Option<String>,
    /// The session's client binding (binding mode only).
    #[serde(default)]
    pub client_binding: Option<String>,
}

/// The rotated refresh token sealed to the client's ephemeral KEM key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct SealedRefreshToken {
    /// X-Wing ciphertext, base64url (1120 bytes).
    pub kem_ciphertext: String,
    /// ChaCha20-Poly1305 ciphertext and tag of the refresh token, base64url.
    pub sealed: String,
}

/// `POST /token/refresh` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct RefreshResponse {
    /// The new access token.
    pub access_token: String,
    /// `DPoP` when bound to a device key, else `bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// The access token's id.
    pub jti: String,
    /// The session.
    pub session_id: String,
    /// Seconds until the session expires.
    pub refresh_expires_in: i64,
    /// The rotated refresh token in clear (only when no KEM key was sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The rotated refresh token, sealed (when `kem_public_key` was sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_refresh_token: Option<SealedRefreshToken>,
    /// X-Wing ciphertext, base64url (1120 bytes), when `client_public_key` was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kem_ciphertext: Option<String>,
    /// The rotated refresh token (UTF-8) encrypted with ChaCha20-Poly1305 (ciphertext
    /// and 16-byte tag), base64url, when `client_public_key` was sent: the same seal as
    /// `sealed_refresh_token.sealed` (key from HKDF-SHA256 over the X-Wing shared
    /// secret and the transcript, transcript as associated data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_session_key: Option<String>,
    /// base64url SHA-256 of the transcript the seal is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript_hash: Option<String>,
}

/// Which field carried the client's KEM key, so the answer uses the same vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SealShape {
    /// `kem_public_key` -> `sealed_refresh_token {kem_ciphertext, sealed}`.
    Nested,
    /// `client_public_key` (the original service) -> top-level `kem_ciphertext` and
    /// `encrypted_session_key`.
    Original,
}

/// Decodes and checks the client's KEM public key; a key that was sent but is unusable
/// is a 400 naming its field, never a clear-text answer.
fn client_kem_key(body: &RefreshRequest) -> Result<Option<(Vec<u8>, SealShape)>, ApiError> {
    let (field, value, shape) = match (&body.kem_public_key, &body.client_public_key) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give at most one of kem_public_key, client_public_key".into(),
            ));
        }
        (Some(k), None) => ("kem_public_key", k, SealShape::Nested),
        (None, Some(k)) => ("client_public_key", k, SealShape::Original),
        (None, None) => return Ok(None),
    };
    Ok(Some((decode_kem_key(field, value)?, shape)))
}

/// Decodes an X-Wing public key sent in `field`; anything unusable is a 400 naming it.
pub(super) fn decode_kem_key(field: &'static str, value: &str) -> Result<Vec<u8>, ApiError> {
    let key = b64::decode(value, field)
        .map_err(|_| ApiError::BadRequest(format!("{field} must be unpadded base64url")))?;
    if key.len() != kem::PUBLIC_KEY_LEN {
        return Err(ApiError::BadRequest(format!(
            "{field} must be {} bytes (an X-Wing public key), got {}",
            kem::PUBLIC_KEY_LEN,
            key.len()
        )));
    }
    kem::check_public_key(&key).map_err(|e| ApiError::BadRequest(format!("{field}: {e}")))?;
    Ok(key)
}

pub(super) fn dpop_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("dpop").iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::InvalidDpopProof(
            "send exactly one DPoP header".into(),
        ));
    }
    let proof = first.to_str().map_err(|_| {
        ApiError::InvalidDpopProof("DPoP header is not a compact JWS (non-ASCII bytes)".into())
    })?;
    Ok(Some(proof.trim().to_owned()))
}

/// What a DPoP proof for this `POST` must name: its host and path.
pub(super) fn proof_target(headers: &HeaderMap, uri: &Uri) -> ProofTarget {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_default();
    ProofTarget {
        method: "POST".into(),
        host,
        path: uri.path().to_owned(),
    }
}

/// Rotates a refresh token: answers a new access token and the next refresh token
/// (sealed when `kem_public_key` or `client_public_key` is given; never in clear then). Presenting a rotated token again revokes
/// the whole session.
#[utoipa::path(post, path = "/token/refresh", tag = "refresh", request_body = RefreshRequest,
    params(("DPoP" = Option<String>, Header,
        description = "Proof signed by the device key (htm POST, htu this URL); required for device-bound sessions")),
    responses((status = 200, body = RefreshResponse),
        (status = 400, description = "`invalid_request` (malformed input, unknown field, bad KEM key), \
            `invalid_grant` (unknown, expired, revoked or reused refresh token: reuse revokes the \
            session; wrong client_binding) or `invalid_dpop_proof` (missing, invalid or replayed \
            proof); RFC 6749 5.2, RFC 9449 5", body = ErrorBody)))]
pub(super) async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Json(body): Json<RefreshRequest>,
) -> Result<Json<RefreshResponse>, ApiError> {
    let dpop = dpop_header(&headers)?;
    let (kem_public_key, shape) = match client_kem_key(&body)? {
        Some((key, shape)) => (Some(key), shape),
        None => (None, SealShape::Nested),
    };
    let request = refresh::RefreshRequest {
        refresh_token: body.refresh_token,
        kem_public_key,
        client_binding: body.client_binding,
        dpop,
        target: proof_target(&headers, &uri),
        accepted_nonces: None,
        seal_bound: true,
        scope: None,
    };
    let done = blocking(&state, move |r| refresh::refresh(r, request)).await?;
    let mut answer = RefreshResponse {
        token_type: token_type(&done.access),
        access_token: done.access.token,
        expires_in: done.access.expires_in,
        jti: done.access.claims.jti,
        session_id: done.session_id,
        refresh_expires_in: done.refresh_expires_in,
        refresh_token: None,
        sealed_refresh_token: None,
        kem_ciphertext: None,
        encrypted_session_key: None,
        transcript_hash: None,
    };
    match done.delivery {
        Delivery::Clear(token) => answer.refresh_token = Some(token),
        Delivery::Sealed {
            sealed,
            transcript_hash,
        } => {
            let kem_ciphertext = b64::encode(&sealed.kem_ciphertext);
            let boxed = b64::encode(&sealed.sealed);
            match shape {
                SealShape::Nested => {
                    answer.sealed_refresh_token = Some(SealedRefreshToken {
                        kem_ciphertext,
                        sealed: boxed,
                    });
                }
                SealShape::Original => {
                    answer.kem_ciphertext = Some(kem_ciphertext);
                    answer.encrypted_session_key = Some(boxed);
                }
            }
            answer.transcript_hash = Some(transcript_hash);
        }
    }
    Ok(Json(answer))
}

/// `POST /token/refresh/revoke` body: exactly one of the two.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeSessionRequest {
    /// Any refresh token of the session (the holder revokes its own session).
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// The session id (admin credential required).
    #[serde(default)]
    pub session_id: Option<String>,
}

/// `POST /token/refresh/revoke` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct RevokeSessionResponse {
    /// Always true.
    pub revoked: bool,
    /// The session.
    pub session_id: String,
    /// The signed `sid` revocation event (the first one if it was already revoked).
    pub event_id: String,
}

/// Revokes a refresh session and every access token of it (a signed `sid` revocation
/// that reaches the edges): by a refresh token of it (holder), or by `session_id`
/// (admin credential). A holder of a session bound to a device key sends a `DPoP` proof
/// of that key (`htm` `POST`, `htu` this URL, no `ath`), as for a refresh; without a
/// valid one the answer is 401 `invalid_dpop_proof` and nothing is revoked.
#[utoipa::path(post, path = "/token/refresh/revoke", tag = "refresh",
    request_body = RevokeSessionRequest, security((), ("admin" = [])),
    params(("DPoP" = Option<String>, Header,
        description = "Proof signed by the device key (htm POST, htu this URL); required for a holder of a device-bound session")),
    responses((status = 200, body = RevokeSessionResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn revoke(
    State(state): State<AppState>,
    MaybeAdmin(admin): MaybeAdmin,
    headers: HeaderMap,
    uri: Uri,
    Json(body): Json<RevokeSessionRequest>,
) -> Result<Json<RevokeSessionResponse>, ApiError> {
    let target = match (body.refresh_token, body.session_id) {
        (Some(token), None) if admin => RevokeTarget::Token(token),
        (Some(token), None) => {
            // The holder: a bound session's token needs a proof of the session's key.
            let proof = dpop_header(&headers)?;
            let target = proof_target(&headers, &uri);
            let done = blocking(&state, move |r| {
                refresh::revoke_presented(
                    r,
                    &token,
                    proof.as_deref(),
                    &target,
                    "api:/token/refresh/revoke (holder)",
                )
                .map_err(|e| match e {
                    refresh::Error::InvalidProof(d) => ApiError::InvalidDpopCredential(d),
                    other => ApiError::from(other),
                })
            })
            .await?;
            return Ok(Json(RevokeSessionResponse {
                revoked: true,
                session_id: done.session_id,
                event_id: done.event_id,
            }));
        }
        (None, Some(sid)) if admin => RevokeTarget::Session(sid),
        (None, Some(_)) => {
            return Err(ApiError::Unauthorized(
                "revoking by session_id needs the admin credential; a holder sends its \
                 refresh_token"
                    .into(),
            ));
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of refresh_token, session_id".into(),
            ));
        }
    };
    let done = blocking(&state, move |r| refresh::revoke(r, target)).await?;
    Ok(Json(RevokeSessionResponse {
        revoked: true,
        session_id: done.session_id,
        event_id: done.event_id,
    }))
}
