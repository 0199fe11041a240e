//! Probes, metrics, published keys, key rotation and the API description.

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{OpenApi as _, ToSchema};

use super::{Admin, ApiDoc, ApiError, AppState, ErrorBody, Json, blocking};
use crate::keys::KeyChanges;

/// Probe answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// `ok` or `ready`.
    pub status: String,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "meta", responses((status = 200, body = Status)))]
pub(super) async fn health() -> Json<Status> {
    Json(Status {
        status: "ok".into(),
    })
}

/// Readiness: the database answers and the service accepts traffic.
#[utoipa::path(get, path = "/ready", tag = "meta",
    responses((status = 200, body = Status), (status = 503, body = ErrorBody)))]
pub(super) async fn ready(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
    if !state.is_ready() {
        return Err(ApiError::NotReady);
    }
    let db_ok = blocking(&state, |r| {
        Ok(r.db()
            .lock()
            .query_row("SELECT 1", [], |row| row.get::<_, i64>(0))
            .is_ok())
    })
    .await?;
    if !db_ok {
        return Err(ApiError::NotReady);
    }
    Ok(Json(Status {
        status: "ready".into(),
    }))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let region = &state.region;
    let body = region.metrics().render(
        *region.feed().borrow(),
        region.cache().len(),
        state.is_ready(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// The public keys: OKP Ed25519 and AKP ML-DSA-65 (RFC 9964), `kid` = RFC 7638 thumbprint.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "meta",
    responses((status = 200, body = Object, description = "JWK Set")))]
pub(super) async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    let keys = state.region.keys();
    (
        [(header::CACHE_CONTROL, "max-age=60")],
        Json(keys.jwks.clone()),
    )
}

/// Retires the active signing keys and creates new ones (admin credential required).
/// Old keys keep verifying until their tokens expire.
#[utoipa::path(post, path = "/admin/keys/rotate", tag = "meta", security(("admin" = [])),
    responses((status = 200, body = Object, description = "created and retired keys"),
        (status = 401, body = ErrorBody)))]
pub(super) async fn rotate_keys(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<KeyChanges>, ApiError> {
    Ok(Json(
        blocking(&state, |r| r.rotate_keys("api:/admin/keys/rotate")).await?,
    ))
}

/// This API's OpenAPI 3.1 description, generated from the code.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, body = Object)))]
pub(super) async fn openapi() -> Json<Value> {
    Json(serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({})))
}

/// Interactive API docs; self-contained, work offline.
#[utoipa::path(get, path = "/docs", tag = "meta",
    responses((status = 200, content_type = "text/html", body = String)))]
pub(super) async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}
