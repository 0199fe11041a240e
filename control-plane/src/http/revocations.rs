//! `/revoke*` and `/v1/revocations*`: revoke by identifier or by token, and ask whether
//! something is revoked.

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use serde::{Deserialize, Serialize};
use shared::Kind;
use shared::revocation::TokenIds;
use utoipa::{IntoParams, ToSchema};

use super::{Admin, ApiError, AppState, ClientAddr, ErrorBody, Json, MaybeAdmin, Path, blocking};
use crate::time::{now, rfc3339};

/// Longest `ttl_seconds` accepted (ten years).
const MAX_TTL_SECONDS: i64 = 10 * 365 * 24 * 3600;

/// Parses `revoke_jti` (or plain `jti`) and friends.
fn parse_type(name: &str) -> Result<Kind, ApiError> {
    Kind::parse(name.strip_prefix("revoke_").unwrap_or(name)).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "type {name:?} is not one of revoke_jti, revoke_sub, revoke_kid, revoke_sid"
        ))
    })
}

fn ttl_expiry(ttl_seconds: Option<i64>) -> Result<Option<i64>, ApiError> {
    match ttl_seconds {
        None => Ok(None),
        Some(t) if (1..=MAX_TTL_SECONDS).contains(&t) => Ok(Some(now() + t)),
        Some(t) => Err(ApiError::BadRequest(format!(
            "ttl_seconds must be between 1 and {MAX_TTL_SECONDS}, got {t}"
        ))),
    }
}

/// `POST /revoke` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeRequest {
    /// `revoke_jti`, `revoke_sub`, `revoke_kid` or `revoke_sid`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The identifier to revoke.
    pub value: String,
    /// How long to keep the revocation; by default until every token it can match has
    /// expired.
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
}

/// `POST /revoke` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct RevokeResponse {
    /// Id of the signed revocation event.
    pub event_id: String,
    /// True when the broker took the event within `CP_PUBLISH_WAIT_MS` (always with no
    /// broker); it is committed and will be published either way.
    pub published: bool,
}

/// Revokes by identifier (admin credential required). Answers after the commit.
#[utoipa::path(post, path = "/revoke", tag = "revocations", request_body = RevokeRequest,
    security(("admin" = [])),
    responses((status = 200, body = RevokeResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)))]
pub(super) async fn revoke(
    State(state): State<AppState>,
    _admin: Admin,
    Json(body): Json<RevokeRequest>,
) -> Result<Json<RevokeResponse>, ApiError> {
    let kind = parse_type(&body.kind)?;
    let expires_at = ttl_expiry(body.ttl_seconds)?;
    let done = state
        .region
        .revoke(kind, body.value, expires_at, "api:/revoke")
        .await?;
    let published = published(&state, &done).await;
    Ok(Json(RevokeResponse {
        event_id: done.event.event_id,
        published,
    }))
}

/// `POST /revoke/token` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeTokenRequest {
    /// The token whose identifiers are revoked.
    pub token: String,
    /// Which identifiers: any of `jti`, `sub`, `kid`, `sid` (default `["jti"]`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// How long to keep the revocations.
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
}

/// `POST /revoke/token` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct RevokeTokenResponse {
    /// One event per scope, in the order given.
    pub event_ids: Vec<String>,
    /// True when the event bus accepted every event.
    pub published: bool,
}

/// Revokes a token by its own identifiers. The holder of a valid token may revoke its
/// `jti`, `sid` and `sub` (with a DPoP proof when the token is bound to a key); `kid`
/// (every token of a key) and expired tokens need the admin credential. Repeating a
/// revocation that already covers the token answers with the same event and writes
/// nothing; a holder's revocation never outlives what it can match. Holders are rate
/// limited per client address, and per subject once their token and proof checked out
/// (429 with `Retry-After`).
#[utoipa::path(post, path = "/revoke/token", tag = "revocations", request_body = RevokeTokenRequest,
    security((), ("admin" = [])),
    params(("DPoP" = Option<String>, Header,
        description = "Proof of possession (htm POST, htu this URL, ath of the token); required when the token has cnf.jkt and no admin credential is given")),
    responses((status = 200, body = RevokeTokenResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 429, description = "rate limited; see Retry-After", body = ErrorBody)))]
pub(super) async fn revoke_token(
    State(state): State<AppState>,
    MaybeAdmin(admin): MaybeAdmin,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    uri: Uri,
    Json(body): Json<RevokeTokenRequest>,
) -> Result<Json<RevokeTokenResponse>, ApiError> {
    if !admin {
        state.holder_limits.client(client).map_err(rate_limited)?;
    }
    let mut kinds = Vec::new();
    for scope in &body.scopes {
        let kind = Kind::parse(scope).ok_or_else(|| {
            ApiError::BadRequest(format!("scope {scope:?} is not one of jti, sub, kid, sid"))
        })?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    if kinds.is_empty() {
        kinds.push(Kind::Jti);
    }
    let ttl_expiry = ttl_expiry(body.ttl_seconds)?;
    let region = state.region.clone();
    let (claims, kid) = region
        .verify(&body.token)
        .map_err(|e| ApiError::Unauthorized(format!("token is not valid: {e}")))?;
    if !admin {
        if let Err(e) = claims.validate(&region.settings().validation(), now()) {
            return Err(ApiError::Unauthorized(format!("token is not valid: {e}")));
        }
        if kinds.contains(&Kind::Kid) {
            return Err(ApiError::Forbidden(
                "revoking by kid needs the admin credential".into(),
            ));
        }
        if let Some(cnf) = &claims.cnf {
            let proof = super::refresh::dpop_header(&headers)?;
            let target = super::refresh::proof_target(&headers, &uri);
            let (token, jkt) = (body.token.clone(), cnf.jkt.clone());
            let (jkt, jti) = blocking(&state, move |r| {
                crate::refresh::check_possession(r, proof.as_deref(), &token, &jkt, &target)
            })
            .await
            // Here the bound token is the credential: a protected-resource 401.
            .map_err(|e| match e {
                ApiError::InvalidDpopProof(d) => ApiError::InvalidDpopCredential(d),
                other => other,
            })?;
            if !state.proof_is_fresh_on_replicas(&jkt, &jti).await {
                return Err(ApiError::InvalidDpopCredential(
                    "DPoP proof was already used (replay, on another replica)".into(),
                ));
            }
        }
        // Counted only once the caller proved to hold a valid token (and its key): a
        // stranger with a stolen bound token or an expired one cannot burn the real
        // holder's budget.
        state
            .holder_limits
            .subject(&claims.sub)
            .map_err(rate_limited)?;
    }
    if claims.sid.is_none() && kinds.contains(&Kind::Sid) {
        return Err(ApiError::BadRequest("the token has no sid claim".into()));
    }
    let via = if admin {
        "api:/revoke/token (admin)"
    } else {
        "api:/revoke/token (holder)"
    };
    let done = blocking(&state, move |r| {
        let ids = TokenIds {
            jti: &claims.jti,
            sub: &claims.sub,
            kid: &kid,
            sid: claims.sid.as_deref(),
            iat: claims.iat,
        };
        // A jti revocation only has to outlive the token itself.
        let jti_end = r.token_end(claims.exp);
        kinds
            .into_iter()
            .map(|kind| {
                let expires_at = match (kind, ttl_expiry) {
                    (Kind::Jti, Some(t)) => Some(t.min(jti_end)),
                    (Kind::Jti, None) => Some(jti_end),
                    (_, requested) => requested,
                };
                r.revoke_once(kind, &ids, expires_at, via)
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    let mut all_published = true;
    for revoked in &done {
        all_published &= published(&state, revoked).await;
    }
    Ok(Json(RevokeTokenResponse {
        published: all_published,
        event_ids: done.into_iter().map(|d| d.event.event_id).collect(),
    }))
}

/// Whether the broker has the event, waiting a short bounded time for the outbox relay
/// (`CP_PUBLISH_WAIT_MS`) so the answer can say so; committed either way.
pub(super) async fn published(state: &AppState, revoked: &crate::region::Revoked) -> bool {
    match (revoked.published, revoked.outbox_id) {
        (true, _) => true,
        (false, None) => false,
        (false, Some(id)) => {
            let wait = state.region.settings().publish_wait;
            state.region.wait_published(id, wait).await
        }
    }
}

fn rate_limited(wait: std::time::Duration) -> ApiError {
    ApiError::TooManyRequests(
        "too many revocations from this client or for this subject; retry later".into(),
        wait,
    )
}

/// `GET /v1/revocations/{jti}` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct RevocationStatus {
    /// The token id asked about.
    pub jti: String,
    /// True when a live revocation names this `jti`.
    pub revoked: bool,
    /// When it was revoked (RFC 3339).
    #[serde(rename = "revokedAt")]
    pub revoked_at: Option<String>,
}

/// Path of `GET /v1/revocations/{jti}`.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct JtiPath {
    /// The token id.
    pub jti: String,
}

/// Is this `jti` revoked?
#[utoipa::path(get, path = "/v1/revocations/{jti}", tag = "revocations", params(JtiPath),
    responses((status = 200, body = RevocationStatus), (status = 400, body = ErrorBody)))]
pub(super) async fn status(
    State(state): State<AppState>,
    Path(path): Path<JtiPath>,
) -> Result<Json<RevocationStatus>, ApiError> {
    let jti = path.jti;
    let lookup = jti.clone();
    let hit = blocking(&state, move |r| r.find(Kind::Jti, &lookup)).await?;
    Ok(Json(RevocationStatus {
        jti,
        revoked: hit.is_some(),
        revoked_at: hit.map(|e| rfc3339(e.issued_at)),
    }))
}

/// `POST /v1/revocations/check` body: at least one identifier.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckRequest {
    /// Token id.
    #[serde(default)]
    pub jti: Option<String>,
    /// Subject (any subject revocation counts).
    #[serde(default)]
    pub sub: Option<String>,
    /// Signing key id.
    #[serde(default)]
    pub kid: Option<String>,
    /// Session id.
    #[serde(default)]
    pub sid: Option<String>,
}

/// `POST /v1/revocations/check` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct CheckResponse {
    /// True when any of the identifiers is revoked.
    pub revoked: bool,
    /// Which one: `revoke_jti`, `revoke_sub`, `revoke_kid` or `revoke_sid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When (RFC 3339).
    #[serde(default, rename = "revokedAt", skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

/// Is any of these identifiers revoked?
#[utoipa::path(post, path = "/v1/revocations/check", tag = "revocations", request_body = CheckRequest,
    responses((status = 200, body = CheckResponse), (status = 400, body = ErrorBody)))]
pub(super) async fn check(
    State(state): State<AppState>,
    Json(body): Json<CheckRequest>,
) -> Result<Json<CheckResponse>, ApiError> {
    let asked: Vec<(Kind, String)> = [
        (Kind::Jti, body.jti),
        (Kind::Sub, body.sub),
        (Kind::Kid, body.kid),
        (Kind::Sid, body.sid),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    if asked.is_empty() {
        return Err(ApiError::BadRequest(
            "give at least one of jti, sub, kid, sid".into(),
        ));
    }
    let hit = blocking(&state, move |r| {
        for (kind, value) in &asked {
            if let Some(event) = r.find(*kind, value)? {
                return Ok(Some(event));
            }
        }
        Ok::<_, crate::region::Error>(None)
    })
    .await?;
    Ok(Json(match hit {
        None => CheckResponse {
            revoked: false,
            reason: None,
            revoked_at: None,
        },
        Some(e) => CheckResponse {
            revoked: true,
            reason: Some(format!("revoke_{}", e.kind.as_str())),
            revoked_at: Some(rfc3339(e.issued_at)),
        },
    }))
}
