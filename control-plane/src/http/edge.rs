//! The edge feed: signed revocation snapshots and deltas, long-polled by Envoy filters.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use shared::edgeset::{EdgeUpdate, Entry, UpdateKind};
use utoipa::IntoParams;

use super::{ApiError, AppState, ErrorBody, Query, blocking};
use crate::metrics::Metrics;
use crate::region::Region;
use crate::store::db;
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
#[utoipa::path(get, path = "/v1/edge/revocations", tag = "edge", params(FeedQuery),
    responses((status = 200, content_type = "application/jose",
        description = "compact JWS of a shared::edgeset::EdgeUpdate, signed with ML-DSA-65",
        headers(("x-edge-seq" = u64, description = "the feed sequence number of the update"))),
        (status = 400, body = ErrorBody)))]
pub(super) async fn revocations(
    State(state): State<AppState>,
    Query(query): Query<FeedQuery>,
) -> Result<Response, ApiError> {
    let wait = Duration::from_secs(query.wait.min(MAX_WAIT_SECONDS));
    let mut head_rx = state.region.feed().subscribe();
    let head = *head_rx.borrow_and_update();
    let window = state.region.settings().feed_max_delta;
    let since = query.since.unwrap_or_default();
    let (kind, base, upto) = if query.since.is_none() || since > head || head - since > window {
        (UpdateKind::Snapshot, 0, head)
    } else if head > since {
        (UpdateKind::Delta, since, head)
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
                _ = closing.wait_for(|c| *c) => None,
            }
        })
        .await;
        match woke {
            Ok(Some(head)) => (UpdateKind::Delta, since, head),
            _ => (UpdateKind::Delta, since, since),
        }
    };
    let signed = blocking(&state, move |r| {
        let entries: Vec<Entry> = if upto == base && kind == UpdateKind::Delta {
            Vec::new()
        } else {
            db::feed_range(&*r.db().read()?, base, upto, Some(now()))?
                .iter()
                .map(|(_, event)| Entry::from_event(event))
                .collect()
        };
        let metrics = r.metrics();
        Metrics::inc(match (kind, upto == base) {
            (UpdateKind::Snapshot, _) => &metrics.edge_snapshots,
            (UpdateKind::Delta, false) => &metrics.edge_deltas,
            (UpdateKind::Delta, true) => &metrics.edge_heartbeats,
        });
        EdgeUpdate {
            kind,
            base_seq: base,
            seq: upto,
            generated_at: now(),
            entries,
            leeway: Some(revocation_leeway(r)),
            feed: None,
        }
        .sign(&r.keys().event_key)
        .map_err(crate::region::Error::Signing)
    })
    .await?;
    let mut response = signed.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jose"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-edge-seq", HeaderValue::from(upto));
    Ok(response)
}

/// The clock leeway, in seconds, that the region's revocation entries assume (each
/// covers its tokens until their `exp` plus this), declared in every update so that an
/// edge never applies more to `exp` (see `shared::edgeset`, "The leeway the revocations
/// assume").
fn revocation_leeway(region: &Region) -> u32 {
    let leeway = region.revocation_leeway();
    // A constant far below the maximum; clamped all the same, so a wider one never makes
    // every edge refuse the feed.
    u32::try_from(leeway.clamp(0, i64::from(shared::edgeset::MAX_FEED_LEEWAY))).unwrap_or(0)
}
