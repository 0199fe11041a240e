//! `/token*`: issue, validate and inspect access tokens.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use shared::AccessClaims;
use shared::jws::Limits;
use shared::revocation::TokenIds;
use utoipa::{IntoParams, ToSchema};

use super::{Admin, ApiError, AppState, ErrorBody, Json, Query, blocking};
use crate::region::{IssueRequest, TokenCheck, describe};

/// `POST /token` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenRequest {
    /// The `sub` of the token.
    pub subject: String,
    /// Lifetime in minutes (default from `CP_DEFAULT_TOKEN_MINUTES`).
    #[serde(default)]
    pub expires_minutes: Option<i64>,
    /// Extra claims; may not set `iss sub aud exp iat nbf jti`. `sid`, `scope`,
    /// `client_id` (strings) and `cnf` (`{"jkt": ...}`) are recognised.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub additional_claims: Option<Map<String, Value>>,
}

/// `POST /token` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct TokenResponse {
    /// The compact JWS (`typ: at+jwt`).
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: String,
    /// Seconds until expiry.
    pub expires_in: i64,
    /// The token's id.
    pub jti: String,
    /// The token's subject.
    pub subject: String,
}

/// Mints an access token for any subject (admin credential required).
#[utoipa::path(post, path = "/token", tag = "tokens", request_body = TokenRequest,
    security(("admin" = [])),
    responses((status = 200, body = TokenResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(super) async fn issue(
    State(state): State<AppState>,
    _admin: Admin,
    Json(body): Json<TokenRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let issued = state
        .region
        .issue(
            IssueRequest {
                subject: body.subject,
                expires_minutes: body.expires_minutes,
                additional_claims: body.additional_claims,
            },
            "api",
        )
        .await?;
    Ok(Json(TokenResponse {
        access_token: issued.token,
        token_type: "bearer".into(),
        expires_in: issued.expires_in,
        jti: issued.claims.jti,
        subject: issued.claims.sub,
    }))
}

fn yes() -> bool {
    true
}

/// `POST /token/validate` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ValidateRequest {
    /// The compact JWS.
    pub token: String,
    /// Also consult the revocation set (default true).
    #[serde(default = "yes")]
    pub check_revocation: bool,
}

/// `POST /token/validate` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ValidateResponse {
    /// True when signature, times, issuer, audience and revocation state all pass.
    pub valid: bool,
    /// The claims, when the signature verified.
    #[schema(value_type = Option<Object>)]
    pub claims: Option<Value>,
    /// True when a revocation covers the token.
    pub revoked: bool,
    /// Why, precisely (e.g. `token expired 12 s ago`, `token revoked by subject at ...`).
    pub message: String,
}

fn to_value(claims: &AccessClaims) -> Option<Value> {
    serde_json::to_value(claims).ok()
}

/// Verifies a token: signature, `exp`/`nbf`, issuer, audience and revocation.
#[utoipa::path(post, path = "/token/validate", tag = "tokens", request_body = ValidateRequest,
    responses((status = 200, body = ValidateResponse), (status = 400, body = ErrorBody)))]
pub(super) async fn validate(
    State(state): State<AppState>,
    Json(body): Json<ValidateRequest>,
) -> Result<Json<ValidateResponse>, ApiError> {
    // A check is CPU only (a signature verification, then the in-process revocation
    // set): run it here rather than paying a hop to the blocking pool.
    let region = state.region.clone();
    let check = check_token(&state, move || {
        region.check(&body.token, body.check_revocation)
    })
    .await?;
    Ok(Json(ValidateResponse {
        valid: check.valid,
        claims: check.claims.as_ref().and_then(to_value),
        revoked: check.revocation.is_some(),
        message: check.message,
    }))
}

/// Runs `check`; when the token names a key nobody is known to hold, fetches the peers'
/// keys again first (at most every 2 s: a key a peer or a sibling replica made since the
/// last fetch verifies at once, not up to a minute later) and checks once more.
pub(super) async fn check_token(
    state: &AppState,
    check: impl Fn() -> Result<TokenCheck, crate::region::Error>,
) -> Result<TokenCheck, ApiError> {
    let first = check()?;
    let Some(peers) = state.backends.peers.as_ref().filter(|_| first.unknown_key) else {
        return Ok(first);
    };
    if !peers.refresh_soon().await {
        return Ok(first);
    }
    peers.hand_to(&state.region);
    Ok(check()?)
}

/// `GET /token/inspect` query.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct InspectQuery {
    /// The compact JWS.
    pub token: String,
}

/// `GET /token/inspect` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct InspectResponse {
    /// The claims, decoded WITHOUT verifying the signature.
    #[schema(value_type = Object)]
    pub claims: Value,
    /// True when a revocation covers the token's identifiers.
    pub revoked: bool,
    /// Which revocation, in words.
    pub revocation_reason: Option<String>,
    /// Reminder that nothing was verified.
    pub note: String,
}

/// Decodes a token without verifying it and reports its revocation state.
#[utoipa::path(get, path = "/token/inspect", tag = "tokens", params(InspectQuery),
    responses((status = 200, body = InspectResponse), (status = 400, body = ErrorBody)))]
pub(super) async fn inspect(
    State(state): State<AppState>,
    Query(query): Query<InspectQuery>,
) -> Result<Json<InspectResponse>, ApiError> {
    let (claims, header) = AccessClaims::decode_unverified(&query.token, &Limits::default())
        .map_err(|e| ApiError::BadRequest(format!("token cannot be decoded: {e}")))?;
    let kid = header.kid.clone().unwrap_or_default();
    let lookup = claims.clone();
    let revocation = blocking(&state, move |r| {
        r.revocation_of(&TokenIds {
            jti: &lookup.jti,
            sub: &lookup.sub,
            kid: &kid,
            sid: lookup.sid.as_deref(),
            iat: lookup.iat,
        })
    })
    .await?;
    Ok(Json(InspectResponse {
        claims: to_value(&claims).unwrap_or(Value::Null),
        revoked: revocation.is_some(),
        revocation_reason: revocation.as_ref().map(describe),
        note: "claims decoded without verifying the signature; use POST /token/validate to verify"
            .into(),
    }))
}
