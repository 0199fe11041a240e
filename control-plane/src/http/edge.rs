//! The edge feed: signed revocation snapshots and deltas, long-polled by Envoy filters.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiError, AppState, ErrorBody, Query};
use crate::metrics::Metrics;
use crate::replication::feed::{Feed, Want};

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
    Query(query): Query<FeedQuery>,
) -> Result<Response, ApiError> {
    let wait = Duration::from_secs(query.wait.min(MAX_WAIT_SECONDS));
    let feed = state.region.feed();
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
