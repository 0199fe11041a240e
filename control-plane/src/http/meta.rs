//! Probes, metrics, published keys, key rotation and the API description.

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{OpenApi as _, ToSchema};

use super::{Admin, ApiDoc, ApiError, AppState, ErrorBody, Json, blocking};
use crate::store::keys::KeyChanges;

/// Probe answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Status {
    /// `ok` or `ready`.
    pub status: String,
    /// For `/ready`: the state of each part (`sqlite`, `redis`, `kafka`, `outbox_depth`,
    /// `consumer_lag`). Redis or Kafka being down does not make the service unready:
    /// checks fall back to SQLite and the outbox keeps events until the broker is back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Value>,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "meta", responses((status = 200, body = Status)))]
pub(super) async fn health() -> Json<Status> {
    Json(Status {
        status: "ok".into(),
        checks: None,
    })
}

/// What `/ready` and `/metrics` report about the region's parts.
#[derive(Debug, Clone, Copy)]
struct Parts {
    sqlite: bool,
    outbox_depth: u64,
    /// `(answers, holds the whole set)`.
    redis: Option<(bool, bool)>,
    kafka: Option<bool>,
    live_revocations: usize,
}

async fn parts(state: &AppState) -> Result<Parts, ApiError> {
    let backends = state.backends.clone();
    blocking(state, move |r| {
        let (sqlite, outbox_depth) = match r.db().read() {
            Ok(conn) => (
                conn.query_row("SELECT 1", [], |row| row.get::<_, i64>(0))
                    .is_ok(),
                crate::store::db::outbox_depth(&conn).unwrap_or(0),
            ),
            Err(_) => (false, 0),
        };
        let redis = backends.redis.as_ref().map(|redis| {
            let up = redis.marker_present();
            (up.is_ok(), up.unwrap_or(false) && redis.is_trusted())
        });
        let kafka = backends
            .kafka
            .as_ref()
            .map(|k| k.healthy(std::time::Duration::from_millis(500)));
        Ok::<_, crate::region::Error>(Parts {
            sqlite,
            outbox_depth,
            redis,
            kafka,
            live_revocations: crate::cache::RevocationCache::len(r.revocations()),
        })
    })
    .await
}

/// Readiness: the database answers and the service accepts traffic; also reports Redis,
/// the broker, the outbox depth and the consumer lag.
#[utoipa::path(get, path = "/ready", tag = "meta",
    responses((status = 200, body = Status), (status = 503, body = ErrorBody)))]
pub(super) async fn ready(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
    if !state.is_ready() {
        return Err(ApiError::NotReady);
    }
    let parts = parts(&state).await?;
    if !parts.sqlite {
        return Err(ApiError::NotReady);
    }
    let word = |up: bool| if up { "ok" } else { "down" };
    let consumer = &state.backends.consumer;
    Ok(Json(Status {
        status: "ready".into(),
        checks: Some(json!({
            "sqlite": "ok",
            "redis": parts.redis.map_or("not configured", |(up, whole)| match (up, whole) {
                (true, true) => "ok",
                (true, false) => "rebuilding",
                (false, _) => "down",
            }),
            "kafka": parts.kafka.map_or("not configured", word),
            "outbox_depth": parts.outbox_depth,
            "consumer_lag": consumer.lag.load(std::sync::atomic::Ordering::Relaxed),
        })),
    }))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub(super) async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering;
    let parts = parts(&state).await?;
    let region = &state.region;
    let mut body = region.metrics().render(
        region.feed().head(),
        parts.live_revocations,
        state.is_ready(),
    );
    let signer = region.signer_stats();
    let _ = writeln!(
        body,
        "# HELP cp_events_signed_total Revocation events signed by this region.\n\
         # TYPE cp_events_signed_total counter\n\
         cp_events_signed_total {}\n\
         # HELP cp_event_signatures_total ML-DSA-65 signatures made for them (one per batch).\n\
         # TYPE cp_event_signatures_total counter\n\
         cp_event_signatures_total {}",
        signer.events.load(Ordering::Relaxed),
        signer.signatures.load(Ordering::Relaxed)
    );
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            body,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    gauge(
        "cp_outbox_depth",
        "Committed events not yet handed to the broker.",
        parts.outbox_depth,
    );
    let head = region.feed().head();
    let fleet = region.feed().fleet().summary(head, crate::time::now());
    gauge(
        "cp_edges_known",
        "Edges that polled the feed in the last hour (GET /v1/edge/fleet lists them).",
        fleet.edges as u64,
    );
    gauge(
        "cp_edges_connected",
        "Edges with a poll in progress or answered in the last 5 s.",
        fleet.connected as u64,
    );
    gauge(
        "cp_edges_at_head",
        "Connected edges that hold the feed's head.",
        fleet.at_head as u64,
    );
    gauge(
        "cp_edge_oldest_position",
        "The lowest feed position a connected edge holds (the head when none is connected).",
        fleet.oldest_position.unwrap_or(head),
    );
    gauge(
        "cp_edge_max_lag_seconds",
        "Seconds since the head passed the position of the connected edge furthest behind.",
        u64::try_from(fleet.max_lag_seconds).unwrap_or(0),
    );
    if let Some((up, whole)) = parts.redis {
        gauge("cp_redis_up", "1 when Redis answers.", u64::from(up));
        gauge(
            "cp_redis_trusted",
            "1 when Redis holds every live revocation (checks use it); 0 while rebuilding.",
            u64::from(whole),
        );
    }
    if let Some(up) = parts.kafka {
        gauge("cp_kafka_up", "1 when the broker answers.", u64::from(up));
        let consumer = &state.backends.consumer;
        gauge(
            "cp_consumer_lag",
            "Messages of the revocations topic not yet applied by this region.",
            consumer.lag.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            body,
            "# HELP cp_consumer_events_total Peer events applied (ahead: by the tail reader \
             during a backlog), and own events seen back.\n\
             # TYPE cp_consumer_events_total counter\n\
             cp_consumer_events_total{{result=\"applied\"}} {}\n\
             cp_consumer_events_total{{result=\"applied_ahead\"}} {}\n\
             cp_consumer_events_total{{result=\"own\"}} {}",
            consumer.applied.load(Ordering::Relaxed),
            consumer.tail_applied.load(Ordering::Relaxed),
            consumer.own.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            body,
            "# HELP cp_consumer_tail_jumps_total Times the tail reader went to the end of the \
             topic, ahead of a backlog (see docs/operations.md).\n\
             # TYPE cp_consumer_tail_jumps_total counter\n\
             cp_consumer_tail_jumps_total {}",
            consumer.tail_jumps.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            body,
            "# HELP cp_consumer_rejected_total Messages not applied, by reason.\n\
             # TYPE cp_consumer_rejected_total counter"
        );
        for (reason, n) in consumer.rejected() {
            let _ = writeln!(
                body,
                "cp_consumer_rejected_total{{reason=\"{}\"}} {n}",
                reason.as_str()
            );
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    ))
}

/// The public keys that verify tokens here: OKP Ed25519 and AKP ML-DSA-65 (RFC 9964),
/// `kid` = RFC 7638 thumbprint; this region's, then the other regions' (`PEER_JWKS`).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "meta",
    responses((status = 200, body = Object, description = "JWK Set")))]
pub(super) async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    // Serialised once per change and shared (see `crate::replication::feed`): a fleet
    // of edges refetching after a rotation costs bytes written, not JSON encoding.
    let doc = state.region.feed().jwks();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "max-age=60"),
        ],
        doc.body.clone(),
    )
}

/// This region's own public keys only: what the other regions list in `PEER_JWKS`
/// (`/.well-known/jwks.json` also carries the peers' keys, and trust must not pass on),
/// with a `region` member naming this region, to which the peers bind the keys.
#[utoipa::path(get, path = "/v1/region/jwks", tag = "meta",
    responses((status = 200, body = Object, description = "JWK Set")))]
pub(super) async fn region_jwks(State(state): State<AppState>) -> impl IntoResponse {
    // `region` binds these keys to this region at the peers (an older peer ignores it).
    let mut body = serde_json::to_value(&state.region.keys().jwks).unwrap_or_else(|_| json!({}));
    if let Some(object) = body.as_object_mut() {
        object.insert(
            "region".into(),
            Value::String(state.region.settings().region.clone()),
        );
    }
    ([(header::CACHE_CONTROL, "max-age=60")], Json(body))
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
