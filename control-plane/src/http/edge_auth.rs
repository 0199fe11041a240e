//! Edge credentials on the edge feed: who may poll, and how many polls each may hold.
//!
//! A middleware on `GET /v1/edge/revocations` only (the JWKS stays public). It reads
//! `Authorization: Bearer <edge credential>` and `x-edge-instance` (the Envoy node id),
//! and per `CP_EDGE_CREDENTIALS`:
//! - `off`: passes every request on, unchecked and unlimited per caller;
//! - `warn` (the default, for upgrades): a request WITHOUT a credential is served, counted
//!   in `cp_edge_polls_unauthenticated_total` and logged at most once a minute; a wrong or
//!   revoked one is refused;
//! - `required`: a request without a valid credential is refused.
//!
//! A refusal is a 401 at once, before the feed handler runs: it never holds a long-poll
//! slot. A request let through holds one of its credential's
//! `CP_MAX_LONG_POLLS_PER_CREDENTIAL` slots until its answer is ready (requests without a
//! credential share one such allowance), so no caller can take every slot of the total
//! `CP_MAX_LONG_POLLS`; over its share a request gets what a full total cap gives: 503
//! with `Retry-After: 1`.
//!
//! Credentials live in SQLite (`crate::store::credentials`) and are created and revoked
//! by the CLI, possibly while the server runs: the valid set is re-read when it is older
//! than a second, and on a miss unless it was re-read since the request arrived (one
//! re-read at a time), so a new credential works at once and a revoked one stops within
//! about a second (a poll it already holds runs to its end).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument as _;

use super::{ApiError, AppState};
use crate::config::EdgeCredentials;
use crate::metrics::Metrics;
use crate::replication::fleet::{Caller, EdgeId};
use crate::store::credentials::{self, Valid};

/// Header naming the edge instance (Envoy's node id).
pub(crate) const INSTANCE_HEADER: &str = "x-edge-instance";

/// Longest accepted instance name.
pub(crate) const MAX_INSTANCE: usize = 128;

/// Oldest the valid set may be when a credential is found in it.
const REFRESH: Duration = Duration::from_secs(1);

/// Least time between two log lines about polls without a credential.
const WARN_EVERY: Duration = Duration::from_secs(60);

struct Snapshot {
    valid: Vec<Valid>,
    loaded_at: Option<Instant>,
}

/// The valid credentials as last read, the slots each holds, and the warn log's state.
pub(crate) struct EdgeAuth {
    mode: EdgeCredentials,
    per_credential: usize,
    known: RwLock<Arc<Snapshot>>,
    reloading: tokio::sync::Mutex<()>,
    /// Requests in progress by credential name (`None`: without a credential).
    in_use: Arc<Mutex<HashMap<Option<Arc<str>>, usize>>>,
    /// Polls without a credential since the last log line, and when that was.
    unauthenticated: Mutex<(u64, Option<Instant>)>,
}

impl std::fmt::Debug for EdgeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeAuth")
            .field("mode", &self.mode)
            .field("per_credential", &self.per_credential)
            .finish_non_exhaustive()
    }
}

/// A slot of one credential's share, given back on drop.
struct Slot {
    key: Option<Arc<str>>,
    in_use: Arc<Mutex<HashMap<Option<Arc<str>>, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut in_use = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = in_use.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                in_use.remove(&self.key);
            }
        }
    }
}

impl EdgeAuth {
    /// Enforces `mode`, with `per_credential` requests in progress per credential.
    pub(crate) fn new(mode: EdgeCredentials, per_credential: usize) -> EdgeAuth {
        EdgeAuth {
            mode,
            per_credential: per_credential.max(1),
            known: RwLock::new(Arc::new(Snapshot {
                valid: Vec::new(),
                loaded_at: None,
            })),
            reloading: tokio::sync::Mutex::new(()),
            in_use: Arc::new(Mutex::new(HashMap::new())),
            unauthenticated: Mutex::new((0, None)),
        }
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.known.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The valid set, re-read unless it was read at or after `since`. One re-read runs
    /// at a time; whoever waited for it uses its result.
    async fn valid_since(&self, state: &AppState, since: Instant) -> Arc<Snapshot> {
        let fresh = |s: &Snapshot| s.loaded_at.is_some_and(|at| at >= since);
        let current = self.snapshot();
        if fresh(&current) {
            return current;
        }
        let _turn = self.reloading.lock().await;
        let current = self.snapshot();
        if fresh(&current) {
            return current;
        }
        let started = Instant::now();
        let region = state.region.clone();
        let read = tokio::task::spawn_blocking(move || {
            let conn = region.db().read().map_err(credentials::Error::from)?;
            credentials::valid(&conn)
        })
        .await;
        match read {
            Ok(Ok(valid)) => {
                let snapshot = Arc::new(Snapshot {
                    valid,
                    loaded_at: Some(started),
                });
                *self.known.write().unwrap_or_else(|e| e.into_inner()) = snapshot.clone();
                snapshot
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the edge credentials; using the last ones read");
                current
            }
            Err(e) => {
                tracing::error!(error = %e, "edge credential read failed; using the last ones read");
                current
            }
        }
    }

    /// The name of the valid credential `presented` is, if it is one.
    async fn identify(&self, state: &AppState, presented: &str) -> Option<Arc<str>> {
        let arrived = Instant::now();
        let recent = arrived.checked_sub(REFRESH).unwrap_or(arrived);
        let known = self.valid_since(state, recent).await;
        if let Some(name) = credentials::find(&known.valid, presented) {
            return Some(Arc::from(name));
        }
        // Perhaps created a moment ago by the CLI.
        let known = self.valid_since(state, arrived).await;
        credentials::find(&known.valid, presented).map(Arc::from)
    }

    /// Whether `presented` is a valid credential as read within the last second: cheap
    /// enough for every request (the per-address cap asks it), never a read per request.
    /// One created a moment ago may be missed for up to a second.
    pub(crate) async fn is_known(&self, state: &AppState, presented: &str) -> bool {
        let now = Instant::now();
        let recent = now.checked_sub(REFRESH).unwrap_or(now);
        let known = self.valid_since(state, recent).await;
        credentials::find(&known.valid, presented).is_some()
    }

    fn take_slot(&self, key: Option<Arc<str>>) -> Option<Slot> {
        let mut in_use = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        let n = in_use.entry(key.clone()).or_insert(0);
        if *n >= self.per_credential {
            return None;
        }
        *n += 1;
        Some(Slot {
            key,
            in_use: self.in_use.clone(),
        })
    }

    fn note_unauthenticated(&self, instance: Option<&str>) {
        let mut seen = self
            .unauthenticated
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        seen.0 += 1;
        let now = Instant::now();
        if seen.1.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
            tracing::warn!(
                polls = seen.0,
                instance = instance.unwrap_or("-"),
                "edge feed polled without an edge credential (CP_EDGE_CREDENTIALS=warn serves it; \
                 give every filter control_plane.edge_credential, then set required); \
                 polls counts those since the last such line"
            );
            *seen = (0, Some(now));
        }
    }
}

/// The bearer credential: `None` without an `Authorization` header, `Some(Err)` when it
/// is not a usable bearer credential.
fn presented(request: &Request) -> Option<Result<&str, ()>> {
    let value = request.headers().get(header::AUTHORIZATION)?;
    let credential = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, rest)| rest.trim())
        .filter(|c| !c.is_empty() && c.len() <= 256);
    Some(credential.ok_or(()))
}

/// `x-edge-instance`, checked: at most [`MAX_INSTANCE`] characters of
/// `A-Z a-z 0-9 . _ ~ : @ / + = -`.
fn instance(request: &Request) -> Result<Option<String>, ApiError> {
    let Some(value) = request.headers().get(INSTANCE_HEADER) else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_INSTANCE
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._~:@/+=-".contains(b));
    if !ok {
        return Err(ApiError::BadRequest(format!(
            "{INSTANCE_HEADER} must be 1 to {MAX_INSTANCE} characters of A-Z a-z 0-9 . _ ~ : @ / + = -"
        )));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// Who polls, for the fleet view: the credential's name, the instance (`-`: none) and
/// the client address.
fn caller(request: &Request, credential: Option<Arc<str>>, instance: Option<&str>) -> Caller {
    Caller {
        id: EdgeId {
            credential,
            instance: Arc::from(instance.unwrap_or("-")),
        },
        address: request
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip()),
    }
}

/// The middleware of `GET /v1/edge/revocations` (see the module documentation).
pub(crate) async fn require(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let auth = state.edge_auth.clone();
    if auth.mode == EdgeCredentials::Off {
        // Unchecked: a malformed instance name is shown as none.
        let instance = instance(&request).ok().flatten();
        let mut request = request;
        let caller = caller(&request, None, instance.as_deref());
        request.extensions_mut().insert(caller);
        return next.run(request).await;
    }
    let metrics = state.region.metrics();
    let instance = match instance(&request) {
        Ok(instance) => instance,
        Err(e) => return e.into_response(),
    };
    let credential = match presented(&request) {
        None if auth.mode == EdgeCredentials::Required => {
            Metrics::inc(&metrics.edge_polls_missing_credential);
            return ApiError::Unauthorized(
                "the edge feed requires an edge credential: Authorization: Bearer <credential> \
                 (control-plane edge-credential makes one)"
                    .into(),
            )
            .into_response();
        }
        None => {
            Metrics::inc(&metrics.edge_polls_unauthenticated);
            auth.note_unauthenticated(instance.as_deref());
            None
        }
        Some(Ok(secret)) => match auth.identify(&state, secret).await {
            Some(name) => Some(name),
            None => return invalid(&state, instance.as_deref()),
        },
        Some(Err(())) => return invalid(&state, instance.as_deref()),
    };
    let Some(_slot) = auth.take_slot(credential.clone()) else {
        Metrics::inc(&metrics.edge_polls_over_credential_share);
        Metrics::inc(&metrics.long_polls_refused);
        return ApiError::Busy(
            "this edge credential holds every long-poll slot of its share; retry later".into(),
            Duration::from_secs(1),
        )
        .into_response();
    };
    let mut request = request;
    let caller = caller(&request, credential.clone(), instance.as_deref());
    request.extensions_mut().insert(caller);
    // Every log line of the poll names who polls.
    let span = tracing::info_span!(
        "edge_poll",
        credential = credential.as_deref().unwrap_or("-"),
        instance = instance.as_deref().unwrap_or("-"),
    );
    next.run(request).instrument(span).await
}

fn invalid(state: &AppState, instance: Option<&str>) -> Response {
    Metrics::inc(&state.region.metrics().edge_polls_invalid_credential);
    tracing::debug!(
        instance = instance.unwrap_or("-"),
        "edge feed poll with a wrong or revoked credential"
    );
    ApiError::Unauthorized("the edge credential is not valid (wrong or revoked)".into())
        .into_response()
}
