//! `GET /v1/events`: the signed revocation events of this region's feed, for any party
//! that wants to check what was revoked and by whom (admin credential).

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{Admin, ApiError, AppState, ErrorBody, Json, Query, blocking};
use crate::store::db::{self, SignedEvent};

/// Most events one page holds.
pub(crate) const MAX_LIMIT: u32 = 1000;

/// Events per page when `limit` is absent.
pub(crate) const DEFAULT_LIMIT: u32 = 100;

/// `GET /v1/events` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// Answer events with a sequence number greater than this (default 0: from the
    /// start). Pass the previous page's `next` to continue.
    #[serde(default)]
    pub since: u64,
    /// At most this many events, 1-1000 (default 100).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `GET /v1/events` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct EventsPage {
    /// The events, in feed order.
    pub events: Vec<SignedEvent>,
    /// The sequence number to pass as `since` for the next page (the last event's, or
    /// `since` when the page is empty).
    pub next: u64,
    /// The feed head when the page was read.
    pub head: u64,
}

/// The signed revocation events (each a member of a signed batch: a flattened JWS,
/// ML-DSA-65, `typ: revocation-batch+jws`, with its inclusion proof) in feed order with their sequence numbers, local and applied remote ones alike,
/// expired ones included. Each verifies on its own with the JWKS of its origin region.
#[utoipa::path(get, path = "/v1/events", tag = "revocations", params(EventsQuery),
    security(("admin" = [])),
    responses((status = 200, body = EventsPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)))]
pub(super) async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    Query(query): Query<EventsQuery>,
) -> Result<Json<EventsPage>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1-{MAX_LIMIT}, got {limit}"
        )));
    }
    let since = query.since;
    let (events, head) = blocking(&state, move |r| {
        let conn = r.db().read()?;
        Ok::<_, crate::region::Error>((
            db::signed_events(&conn, since, limit)?,
            db::feed_head(&conn)?,
        ))
    })
    .await?;
    let next = events.last().map_or(since, |e| e.seq);
    Ok(Json(EventsPage { events, next, head }))
}
