//! The edge feed: signed revocation snapshots and deltas, long-polled by Envoy filters.

use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{Admin, ApiError, AppState, ErrorBody, Json, Query, blocking};
use crate::metrics::Metrics;
use crate::replication::feed::{Feed, Want};
use crate::replication::fleet::{Caller, EdgeView, Summary};
use crate::time::now;

/// Longest hold of a long-poll, in seconds.
pub(crate) const MAX_WAIT_SECONDS: u64 = 60;

/// `GET /v1/edge/revocations` query.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct FeedQuery {
    /// The sequence number the poller's set is at; absent when it has no set yet,
    /// which is answered at once with a snapshot.
    #[serde(default)]
    pub since: Option<u64>,
    /// Seconds to hold the request while nothing is newer than `since` (max 60).
    #[serde(default)]
    pub wait: u64,
}

/// Answers with a signed snapshot or delta (`content-type: application/jose`, header
/// `x-edge-seq`). A snapshot when `since` is absent, ahead of the feed, or further behind
/// than the retained delta window; otherwise a delta of the rows after `since`, held up
/// to `wait` seconds until one exists. On timeout: an empty delta (a signed heartbeat).
/// `since=0` is a set at sequence 0 (an empty feed), so it is held like any other.
/// Answers are prepared once per `(since, head)` and shared by every poller asking the
/// same (see [`crate::replication::feed`]); each names the feed in its signed header.
#[utoipa::path(get, path = "/v1/edge/revocations", tag = "edge", params(FeedQuery),
    responses((status = 200, content_type = "application/jose",
        description = "compact JWS of a shared::edgeset::EdgeUpdate, signed with ML-DSA-65",
        headers(("x-edge-seq" = u64, description = "the feed sequence number of the update"),
            ("x-edge-feed" = String, description = "the feed id the update names in its signed header"))),
        (status = 400, body = ErrorBody)))]
pub(super) async fn revocations(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Query(query): Query<FeedQuery>,
) -> Result<Response, ApiError> {
    let wait = Duration::from_secs(query.wait.min(MAX_WAIT_SECONDS));
    let feed = state.region.feed();
    // Who polls and what it holds, for the fleet view (the credential middleware names it).
    let poll = caller.map(|Extension(caller)| {
        feed.fleet()
            .arrived(caller.id, caller.address, query.since, now())
    });
    let mut head_rx = feed.subscribe();
    let mut jwks_rx = feed.subscribe_jwks();
    jwks_rx.borrow_and_update();
    let head = *head_rx.borrow_and_update();
    let window = state.region.settings().feed_max_delta;
    let since = query.since.unwrap_or_default();
    let want = if query.since.is_none() || since > head || head - since > window {
        Want {
            since: None,
            upto: head,
        }
    } else if head > since {
        Want {
            since: Some(since),
            upto: head,
        }
    } else {
        // Held polls are capped below the connection cap, so idle pollers can never
        // take every connection a revocation needs.
        let Ok(_slot) = state.long_polls.clone().try_acquire_owned() else {
            Metrics::inc(&state.region.metrics().long_polls_refused);
            return Err(ApiError::Busy(
                "every long-poll slot is taken; retry later".into(),
                Duration::from_secs(1),
            ));
        };
        let mut closing = state.closing();
        let woke = tokio::time::timeout(wait, async {
            tokio::select! {
                head = head_rx.wait_for(|h| *h > since) => head.ok().map(|h| *h),
                // Another JWKS: a heartbeat naming it, so the edge fetches it now.
                _ = jwks_rx.changed() => None,
                _ = closing.wait_for(|c| *c) => None,
            }
        })
        .await;
        // Woken: the delta every poller parked at `since` shares. Timed out (or a new
        // JWKS): the heartbeat every idle poller shares.
        let upto = match woke {
            Ok(Some(head)) => head,
            _ => since,
        };
        Want {
            since: Some(since),
            upto,
        }
    };
    let prepared = Feed::prepare(&state.region, want).await?;
    if let Some(poll) = &poll {
        poll.answered(now());
    }
    let mut response = Body::from(prepared.body.clone()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jose"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-edge-seq", HeaderValue::from(prepared.seq));
    if let Ok(id) = HeaderValue::from_str(feed.id()) {
        headers.insert("x-edge-feed", id);
    }
    Ok(response)
}

/// `GET /v1/edge/fleet` query.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct FleetQuery {
    /// Also say which edges hold the feed up to this sequence number.
    #[serde(default)]
    pub seq: Option<u64>,
    /// Also say which edges hold this revocation event (its feed position here).
    #[serde(default)]
    pub event_id: Option<String>,
}

/// The fleet view's answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FleetView {
    /// The feed's id.
    pub(crate) feed: String,
    /// The feed's head.
    pub(crate) head: u64,
    /// Counts over every edge.
    pub(crate) summary: Summary,
    /// With `seq` or `event_id`: who holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) holds: Option<Holds>,
    /// Every edge seen in the last hour.
    pub(crate) edges: Vec<EdgeView>,
}

/// Who holds a feed position.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Holds {
    /// The position asked about.
    pub(crate) seq: u64,
    /// True when every connected edge holds it.
    pub(crate) every_connected_edge: bool,
    /// True when every edge in the view holds it, disconnected ones too (an edge that
    /// stopped polling keeps enforcing its last set until its staleness bound).
    pub(crate) every_edge: bool,
    /// Edges that hold it.
    pub(crate) holding: usize,
    /// Edges that do not (yet).
    pub(crate) missing: Vec<Missing>,
}

/// An edge that lacks a position.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Missing {
    /// `credential/instance` (`-` for none).
    pub(crate) edge: String,
    /// Whether it is connected.
    pub(crate) connected: bool,
    /// The position it holds.
    pub(crate) position: Option<u64>,
}

/// `GET /v1/edge/ready` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct EdgeReady {
    /// `ready`.
    pub status: String,
}

/// Whether this control plane can serve its region's whole feed: the health check of an
/// Envoy cluster that lists several replicas (`envoy/dev.yaml`). 200 once it serves and
/// while its broker, if it has one, answers (it then receives the other replicas' and
/// regions' revocations); 503 otherwise, so the edges move to a replica that does. The
/// database is not asked: the feed is served from memory. A broker lost by every replica
/// makes them all 503, and Envoy then spreads the polls over all of them (its panic
/// threshold), which keep serving what they hold. The broker is asked at most about once
/// a second, one request at a time, however many edges check; a check that finds a fresh
/// answer costs no thread and no I/O.
#[utoipa::path(get, path = "/v1/edge/ready", tag = "edge",
    responses((status = 200, body = EdgeReady), (status = 503, body = ErrorBody)))]
pub(super) async fn ready(State(state): State<AppState>) -> Result<Json<EdgeReady>, ApiError> {
    if !state.is_ready() {
        return Err(ApiError::NotReady);
    }
    let broker = match state.backends.kafka.clone() {
        None => true,
        Some(kafka) => match kafka.recent_health(Duration::from_secs(1)) {
            Some(up) => up,
            None => tokio::task::spawn_blocking(move || {
                kafka.refresh_health(Duration::from_millis(500))
            })
            .await
            .unwrap_or(false),
        },
    };
    if broker {
        Ok(Json(EdgeReady {
            status: "ready".into(),
        }))
    } else {
        Err(ApiError::Busy(
            "the broker does not answer: this control plane misses the region's other revocations"
                .into(),
            Duration::from_secs(1),
        ))
    }
}

/// The edges that poll this control plane (admin credential): by edge credential and
/// instance, where each is in the feed, how far behind and since when, connected or
/// not (an edge not seen for an hour leaves the view). With `seq` or `event_id`: whether
/// every connected edge holds that position.
#[utoipa::path(get, path = "/v1/edge/fleet", tag = "edge", params(FleetQuery),
    security(("admin" = [])),
    responses((status = 200, body = FleetView),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn fleet(
    State(state): State<AppState>,
    _admin: Admin,
    Query(query): Query<FleetQuery>,
) -> Result<Json<FleetView>, ApiError> {
    let feed = state.region.feed();
    let seq = match (query.seq, query.event_id) {
        (Some(seq), _) => Some(seq),
        (None, Some(event_id)) => {
            let lookup = event_id.clone();
            let found = blocking(&state, move |region| {
                crate::store::db::feed_seq_of(&*region.db().read()?, &lookup)
                    .map_err(crate::region::Error::from)
            })
            .await?;
            Some(found.ok_or_else(|| {
                ApiError::NotFound(format!("no revocation event {event_id} in this feed"))
            })?)
        }
        (None, None) => None,
    };
    let head = feed.head();
    let (edges, summary) = feed.fleet().view(head, now());
    let holds = seq.map(|seq| {
        let missing: Vec<Missing> = edges
            .iter()
            .filter(|e| e.position.is_none_or(|p| p < seq))
            .map(|e| Missing {
                edge: format!("{}/{}", e.credential.as_deref().unwrap_or("-"), e.instance),
                connected: e.connected,
                position: e.position,
            })
            .collect();
        Holds {
            seq,
            every_connected_edge: missing.iter().all(|m| !m.connected),
            every_edge: missing.is_empty(),
            holding: edges.len() - missing.len(),
            missing,
        }
    });
    Ok(Json(FleetView {
        feed: feed.id().to_owned(),
        head,
        summary,
        holds,
        edges,
    }))
}
