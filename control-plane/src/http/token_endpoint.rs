//! The standard OAuth 2.0 token endpoint (`POST /oauth2/token`, RFC 6749 with RFC 9449
//! DPoP and server nonces) over [`crate::refresh`], and the RFC 8414 metadata that
//! points clients at it.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::refresh::{SealedRefreshToken, decode_kem_key, dpop_header, proof_target};
use super::{ApiError, AppState, ErrorBody, Form, Json, blocking};
use crate::refresh::{self, Delivery};
use crate::time::now;

/// The response header carrying the server's current DPoP nonce (RFC 9449 8).
const DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");

/// `POST /oauth2/token` form (`application/x-www-form-urlencoded`). As RFC 6749 3.2
/// requires, unknown parameters are ignored; a repeated one is `invalid_request`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct TokenRequest {
    /// `refresh_token` (the only grant this endpoint serves).
    #[serde(default)]
    pub grant_type: Option<String>,
    /// The session's current refresh token.
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Optional; when given it must be the session's scope (narrowing is not supported).
    #[serde(default)]
    pub scope: Option<String>,
    /// A public client's id (`token_endpoint_auth_method` `none`); not checked.
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "documented in the form schema; read only by serde"
    )]
    pub client_id: Option<String>,
    /// Extension: a fresh ephemeral X-Wing public key, base64url (1216 bytes). With it
    /// the rotated refresh token comes back sealed in `sealed_refresh_token` (never in
    /// clear), bound to the transcript of this exchange.
    #[serde(default)]
    pub kem_public_key: Option<String>,
    /// Extension: the session's client binding (sessions created with one).
    #[serde(default)]
    pub client_binding: Option<String>,
}

/// RFC 6749 5.1 answer, with this service's extensions.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct TokenResponse {
    /// The new access token (`at+jwt`).
    pub access_token: String,
    /// `DPoP` when bound to the session's device key (`cnf.jkt`), else `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// The rotated refresh token, in clear when no `kem_public_key` was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The access token's scope (the session's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Extension: the rotated refresh token sealed to `kem_public_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_refresh_token: Option<SealedRefreshToken>,
    /// Extension: base64url SHA-256 of the transcript the seal is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript_hash: Option<String>,
    /// Extension: the session (`sid`).
    pub session_id: String,
    /// Extension: seconds until the session expires.
    pub refresh_expires_in: i64,
}

/// Refreshes a session the standard way: `grant_type=refresh_token`, with a `DPoP`
/// proof (`htm` POST, `htu` this URL, the session's device key, the server nonce) when
/// the session is bound. Every answer carries `Cache-Control: no-store` and, when
/// nonces are on (`CP_DPOP_NONCE`), the current `DPoP-Nonce`.
#[utoipa::path(post, path = "/oauth2/token", tag = "oauth2",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    params(("DPoP" = Option<String>, Header,
        description = "Proof signed by the device key (htm POST, htu this URL, nonce from DPoP-Nonce); \
            required for device-bound sessions")),
    responses(
        (status = 200, body = TokenResponse, headers(("DPoP-Nonce" = String,
            description = "The nonce the next proof must carry (when nonces are on)"))),
        (status = 400, description = "RFC 6749 5.2 / RFC 9449: `invalid_request` (missing or \
            repeated parameter, bad kem_public_key), `unsupported_grant_type`, `invalid_grant` \
            (unknown, expired, revoked or reused refresh token: reuse revokes the session), \
            `invalid_scope`, `invalid_dpop_proof` (missing, invalid, replayed or wrong-key \
            proof) or `use_dpop_nonce` (retry with the nonce in the DPoP-Nonce header)",
            body = ErrorBody),
        (status = 415, body = ErrorBody)))]
pub(super) async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<TokenRequest>, ApiError>,
) -> Response {
    let t = now();
    let result = exchange(&state, &headers, &uri, form, t).await;
    let mut response = match result {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => e.into_response(),
    };
    let out = response.headers_mut();
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    out.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if let Some(nonces) = &state.nonces
        && let Ok(value) = HeaderValue::from_str(&nonces.current(t))
    {
        out.insert(DPOP_NONCE, value);
    }
    response
}

async fn exchange(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    form: Result<Form<TokenRequest>, ApiError>,
    t: i64,
) -> Result<TokenResponse, ApiError> {
    let Form(form) = form?;
    match form.grant_type.as_deref() {
        Some("refresh_token") => {}
        None | Some("") => {
            return Err(ApiError::BadRequest(
                "the grant_type parameter is required".into(),
            ));
        }
        Some(other) => {
            return Err(ApiError::UnsupportedGrantType(format!(
                "grant_type {other:?} is not supported; this endpoint serves refresh_token"
            )));
        }
    }
    let refresh_token = match form.refresh_token {
        Some(token) if !token.is_empty() => token,
        _ => {
            return Err(ApiError::BadRequest(
                "the refresh_token parameter is required".into(),
            ));
        }
    };
    let kem_public_key = form
        .kem_public_key
        .as_deref()
        .map(|k| decode_kem_key("kem_public_key", k))
        .transpose()?;
    let scope = form.scope.filter(|s| !s.trim().is_empty());
    let request = refresh::RefreshRequest {
        refresh_token,
        kem_public_key,
        client_binding: form.client_binding,
        dpop: dpop_header(headers)?,
        target: proof_target(headers, uri),
        accepted_nonces: state.nonces.as_ref().map(|n| n.accepted(t)),
        seal_bound: false,
        scope,
    };
    let done = blocking(state, move |r| refresh::refresh(r, request)).await?;
    let mut answer = TokenResponse {
        token_type: if done.access.claims.cnf.is_some() {
            "DPoP".into()
        } else {
            "Bearer".into()
        },
        scope: done.access.claims.scope.clone(),
        access_token: done.access.token,
        expires_in: done.access.expires_in,
        refresh_token: None,
        sealed_refresh_token: None,
        transcript_hash: None,
        session_id: done.session_id,
        refresh_expires_in: done.refresh_expires_in,
    };
    match done.delivery {
        Delivery::Clear(token) => answer.refresh_token = Some(token),
        Delivery::Sealed {
            sealed,
            transcript_hash,
        } => {
            answer.sealed_refresh_token = Some(SealedRefreshToken {
                kem_ciphertext: shared::b64::encode(&sealed.kem_ciphertext),
                sealed: shared::b64::encode(&sealed.sealed),
            });
            answer.transcript_hash = Some(transcript_hash);
        }
    }
    Ok(answer)
}

/// The base URL of the endpoints: `CP_PUBLIC_URL`, else the issuer when it is a URL,
/// else the URL this request reached (`X-Forwarded-Proto: https` from a TLS terminator is
/// honoured).
fn base_url(settings: &crate::config::Settings, headers: &HeaderMap) -> String {
    if let Some(url) = &settings.public_url {
        return url.clone();
    }
    let issuer = &settings.issuer;
    if issuer.starts_with("https://") || issuer.starts_with("http://") {
        return issuer.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    format!("{}://{host}", if https { "https" } else { "http" })
}

/// RFC 8414 authorization server metadata. `issuer` is the `iss` of the tokens
/// (`CP_ISSUER`, else `CP_PUBLIC_URL`, else the listen address); endpoint URLs start with
/// `CP_PUBLIC_URL`, else the issuer when it is a URL, else the URL of this request.
#[utoipa::path(get, path = "/.well-known/oauth-authorization-server", tag = "oauth2",
    responses((status = 200, description = "RFC 8414 metadata", body = Object)))]
pub(super) async fn metadata(State(state): State<AppState>, headers: HeaderMap) -> Json<Value> {
    let settings = state.region.settings();
    let issuer = settings.issuer.clone();
    let base = base_url(settings, &headers);
    Json(json!({
        "issuer": issuer,
        "token_endpoint": format!("{base}/oauth2/token"),
        "revocation_endpoint": format!("{base}/oauth2/revoke"),
        "introspection_endpoint": format!("{base}/oauth2/introspect"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "service_documentation": format!("{base}/docs"),
        "grant_types_supported": ["refresh_token"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "dpop_signing_alg_values_supported": shared::dpop::PROOF_ALGS,
    }))
}
