//! RFC 7009 token revocation and RFC 7662 token introspection.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse as _, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use shared::Kind;
use utoipa::ToSchema;

use super::{Admin, ApiError, AppState, ClientAddr, ErrorBody, Form, Json, blocking};
use crate::refresh;
use crate::time::now;

/// The form both endpoints take.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct TokenForm {
    /// The token.
    #[serde(default)]
    pub token: Option<String>,
    /// `access_token` or `refresh_token`; only a hint (RFC 7009 2.1).
    #[serde(default)]
    pub token_type_hint: Option<String>,
}

impl TokenForm {
    fn token(self) -> Result<String, ApiError> {
        if let Some(hint) = &self.token_type_hint {
            // The form of the token tells its type; a hint is only a hint (RFC 7009 2.1).
            tracing::debug!(hint, "token_type_hint");
        }
        match self.token {
            Some(t) if !t.is_empty() => Ok(t),
            _ => Err(ApiError::BadRequest(
                "the token parameter is required".into(),
            )),
        }
    }
}

/// Revokes the presented token: an access token by its `jti`, a refresh token with its
/// whole session (`sid`). As RFC 7009 requires, an invalid, expired or already revoked
/// token also gets 200. An access token bound to a device key (`cnf.jkt`) needs a DPoP
/// proof of that key, as at `/revoke/token` (with `ath` of the token); so does a refresh
/// token of a session bound to a device key (a proof of the session's key, no `ath`, as
/// at a refresh): whoever copied the token alone cannot end it. Without a valid proof the
/// answer is 401 `invalid_dpop_proof` with a `DPoP` challenge (RFC 7009 2.2.1 lets the
/// endpoint answer an error; a 200 would tell the caller it was revoked) and nothing is
/// revoked.
#[utoipa::path(post, path = "/oauth2/revoke", tag = "oauth2",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "revoked, or nothing to revoke"),
        (status = 400, body = ErrorBody),
        (status = 401, description = "a DPoP-bound access token, or a refresh token of a session bound to a device key, without a valid proof of its key: nothing revoked", body = ErrorBody),
        (status = 429, description = "rate limited per client address; see Retry-After", body = ErrorBody)))]
pub(super) async fn revoke(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    uri: Uri,
    Form(form): Form<TokenForm>,
) -> Result<Response, ApiError> {
    // Anyone may call this: it writes events, so it shares the holder revocation limit
    // (a request another replica passed on was counted there).
    if !state.passed_by_replica(&headers) {
        state.holder_limits.client(client).map_err(|wait| {
            ApiError::TooManyRequests(
                "too many revocations from this client; retry later".into(),
                wait,
            )
        })?;
    }
    let token = form.token()?;
    let proof = super::refresh::dpop_header(&headers)?;
    let target = super::refresh::proof_target(&headers, &uri);
    if refresh::is_refresh_token(&token) {
        let outcome = blocking(&state, move |r| {
            match refresh::revoke_presented(
                r,
                &token,
                proof.as_deref(),
                &target,
                "api:/oauth2/revoke (holder)",
            ) {
                Ok(_) => Ok(true),
                // A bound session without a valid proof of its key: nothing is revoked.
                Err(refresh::Error::InvalidProof(d)) => Err(ApiError::InvalidDpopCredential(d)),
                Err(refresh::Error::Region(e)) => Err(ApiError::from(e)),
                // Not held here: another replica of the region may hold it.
                Err(refresh::Error::UnknownToken) => Ok(false),
                // Expired or already revoked: nothing to do (RFC 7009 2.2).
                Err(_) => Ok(true),
            }
        });
        let held = outcome.await?;
        let mut response = StatusCode::OK.into_response();
        if !held {
            // Unknown everywhere is still 200 (RFC 7009 2.2), once the replicas are asked.
            response.extensions_mut().insert(super::replicas::NotHere);
        }
        return Ok(response);
    }
    // Checked on the blocking pool (a proof is recorded through the writer); the
    // revocation's signature and commit are awaited.
    let (unrevoked, proved) = blocking(&state, move |r| {
        let Ok((claims, _)) = r.verify(&token) else {
            return Ok((None, None));
        };
        if claims.validate(&r.settings().validation(), now()).is_err() {
            return Ok((None, None));
        }
        let proved = match &claims.cnf {
            Some(cnf) => Some(
                refresh::check_possession(r, proof.as_deref(), &token, &cnf.jkt, &target).map_err(
                    |e| match ApiError::from(e) {
                        // The bound token is the credential here: a protected-resource 401.
                        ApiError::InvalidDpopProof(d) => ApiError::InvalidDpopCredential(d),
                        other => other,
                    },
                )?,
            ),
            None => None,
        };
        if r.find(Kind::Jti, &claims.jti)?.is_some() {
            return Ok((None, proved));
        }
        Ok::<_, ApiError>((Some((claims.jti, r.token_end(claims.exp))), proved))
    })
    .await?;
    if let Some((jkt, jti)) = proved
        && !state.proof_is_fresh_on_replicas(&jkt, &jti).await
    {
        return Err(ApiError::InvalidDpopCredential(
            "DPoP proof was already used (replay, on another replica)".into(),
        ));
    }
    if let Some((jti, expires_at)) = unrevoked {
        state
            .region
            .revoke(Kind::Jti, jti, Some(expires_at), "oauth2/revoke")
            .await?;
    }
    Ok(StatusCode::OK.into_response())
}

/// Introspection answer: `{"active": false}` or the claims with `active: true`.
#[derive(Debug, ToSchema)]
#[expect(dead_code, reason = "documents the response shape in the OpenAPI spec")]
pub(crate) struct IntrospectResponse {
    /// True when the token is valid and not revoked.
    active: bool,
    /// When active: `DPoP` for a token bound to a key (`cnf.jkt`), else `Bearer`
    /// (RFC 7662 2.2: an RFC 6749 token type).
    token_type: Option<String>,
    /// Subject.
    sub: Option<String>,
    /// Expiry.
    exp: Option<i64>,
    /// Token id.
    jti: Option<String>,
}

/// Introspects a token (admin credential required).
#[utoipa::path(post, path = "/oauth2/introspect", tag = "oauth2",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    security(("admin" = [])),
    responses((status = 200, body = IntrospectResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)))]
pub(super) async fn introspect(
    State(state): State<AppState>,
    _admin: Admin,
    Form(form): Form<TokenForm>,
) -> Result<Json<Value>, ApiError> {
    let token = form.token()?;
    let region = state.region.clone();
    let check = super::tokens::check_token(&state, move || region.check(&token, true)).await?;
    let (true, Some(claims)) = (check.valid, check.claims) else {
        return Ok(Json(json!({ "active": false })));
    };
    let mut body = match serde_json::to_value(&claims) {
        Ok(Value::Object(map)) => map,
        _ => return Err(ApiError::Internal("claims do not serialize".into())),
    };
    body.insert("active".into(), Value::Bool(true));
    // RFC 7662 2.2: an RFC 6749 token type, i.e. how the token must be presented.
    let token_type = if claims.cnf.is_some() {
        "DPoP"
    } else {
        "Bearer"
    };
    body.insert("token_type".into(), Value::String(token_type.into()));
    Ok(Json(Value::Object(body)))
}
