//! Requests about a refresh session go to the replica that holds it. Each replica of a
//! region keeps its own sessions (its own SQLite), so a refresh, or a session
//! revocation, that reaches a replica not holding the session is passed on to the other
//! replicas (`CP_REPLICA_URLS`) and the one holding it decides. One writer per session
//! gives what a single control plane gives: one winner of two concurrent refreshes,
//! reuse detection, each DPoP proof `jti` accepted once.
//!
//! A passed request carries `x-cp-replica`, a key derived from the shared admin
//! credential that no client can make. It is never passed on again (whether its key is
//! right or not, so two replicas that disagree on the key cannot bounce a request
//! between them), it does not count against the sender's per-address cap, and the
//! replica it reaches answers `x-cp-not-here: 1` when it does not hold the session
//! either. When no replica holds it the client gets this replica's own answer; when one
//! could not be asked, 503 with `Retry-After` (the session may be on that replica).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shared::b64;

use super::{ApiError, AppState};

/// Header of a request passed by a replica: its replica key.
pub(crate) const REPLICA_HEADER: &str = "x-cp-replica";
/// Header of a passed request's answer when this replica does not hold the session.
const NOT_HERE_HEADER: &str = "x-cp-not-here";
/// Largest answer read from another replica (ours are a few KiB).
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// Marks a response whose request named a session this replica does not hold.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NotHere;

/// The region's other replicas and the key that passes a request to them.
#[derive(Debug)]
pub(crate) struct Replicas {
    urls: Vec<String>,
    key: String,
    http: reqwest::Client,
}

impl Replicas {
    /// The replicas at `urls`, passed requests signed with `key`; none when empty.
    pub(crate) fn new(urls: &[String], key: &[u8; 32]) -> Option<Replicas> {
        (!urls.is_empty()).then(|| Replicas {
            urls: urls.to_vec(),
            key: b64::encode(key),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        })
    }

    /// Whether `headers` carry this region's replica key.
    pub(crate) fn is_passed(&self, headers: &HeaderMap) -> bool {
        use subtle::ConstantTimeEq as _;
        headers
            .get(REPLICA_HEADER)
            .is_some_and(|v| v.as_bytes().ct_eq(self.key.as_bytes()).into())
    }

    /// Sends the request to the replica at `url` and returns its answer, or `None` when
    /// it does not hold the session either.
    async fn pass(
        &self,
        url: &str,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Option<Response>, reqwest::Error> {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut request = self
            .http
            .request(method.clone(), format!("{url}{path}"))
            .body(body);
        for (name, value) in headers {
            // The client's Host stays: a DPoP proof names the URL the client used.
            if !is_hop_by_hop(name) && name != header::CONTENT_LENGTH && name != REPLICA_HEADER {
                request = request.header(name, value);
            }
        }
        let answer = request
            .header(REPLICA_HEADER, self.key.as_str())
            .send()
            .await?;
        if answer.headers().contains_key(NOT_HERE_HEADER) {
            return Ok(None);
        }
        let status = answer.status();
        let mut out_headers = HeaderMap::new();
        for (name, value) in answer.headers() {
            if !is_hop_by_hop(name) && name != header::CONTENT_LENGTH {
                out_headers.append(name.clone(), value.clone());
            }
        }
        let bytes = read_capped(answer).await?;
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = status;
        *response.headers_mut() = out_headers;
        Ok(Some(response))
    }
}

impl Replicas {
    /// Asks every other replica to record a DPoP proof this one accepted (a holder's
    /// revocation of a bound access token is checked where it arrives); false when one
    /// had seen it: a replay. A replica that does not answer is skipped with a warning:
    /// the proof is bound to one token and one revocation request, so a replay it might
    /// accept meanwhile can only revoke that token once more.
    pub(crate) async fn claim_proof(&self, jkt: &str, jti: &str) -> bool {
        let body = serde_json::json!({ "jkt": jkt, "jti": jti });
        for url in &self.urls {
            let answer = self
                .http
                .post(format!("{url}{PROOFS_PATH}"))
                .header(REPLICA_HEADER, self.key.as_str())
                .json(&body)
                .send()
                .await;
            let fresh = match answer {
                Ok(answer) if answer.status().is_success() => answer
                    .json::<serde_json::Value>()
                    .await
                    .map(|v| v["fresh"].as_bool()),
                Ok(answer) => {
                    tracing::warn!(replica = %url, status = %answer.status(), "a replica did not record a DPoP proof");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(replica = %url, error = %e, "a replica could not be asked to record a DPoP proof");
                    continue;
                }
            };
            if fresh.ok().flatten() == Some(false) {
                return false;
            }
        }
        true
    }
}

/// Path of [`record_proof`].
pub(crate) const PROOFS_PATH: &str = "/v1/replica/proofs";

/// `POST /v1/replica/proofs` body.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProofClaim {
    jkt: String,
    jti: String,
}

/// `POST /v1/replica/proofs`, for the other replicas only (their replica key): records a
/// DPoP proof another replica accepted and answers `{"fresh": bool}`, false when this
/// replica had seen it.
pub(crate) async fn record_proof(
    State(state): State<AppState>,
    headers: HeaderMap,
    super::Json(claim): super::Json<ProofClaim>,
) -> Result<super::Json<serde_json::Value>, ApiError> {
    if !state.passed_by_replica(&headers) {
        return Err(ApiError::NotFound(format!("no route for {PROOFS_PATH}")));
    }
    let fresh = super::blocking(&state, move |r| {
        crate::refresh::record_proof(r, &claim.jkt, &claim.jti)
    })
    .await?;
    Ok(super::Json(serde_json::json!({ "fresh": fresh })))
}

/// An answer's body, at most [`MAX_ANSWER_BYTES`] (the rest is dropped).
async fn read_capped(mut answer: reqwest::Response) -> Result<Bytes, reqwest::Error> {
    let mut bytes = Vec::new();
    while let Some(chunk) = answer.chunk().await? {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            break;
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(bytes))
}

/// Says, at most once a minute (anyone can send a wrong key), that a request came with a
/// replica key that is not this region's: a sibling with another `admin.secret`, or a
/// client. Such a request is answered here only, like any client's.
fn warn_wrong_key() {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(i64::MIN);
    let t = crate::time::now();
    let last = LAST.load(Ordering::Relaxed);
    if t.saturating_sub(last) >= 60
        && LAST
            .compare_exchange(last, t, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            "a request carries a wrong replica key (x-cp-replica); if another replica sent \
             it, the replicas do not share admin.secret. Answered here only"
        );
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Runs a session request here; when this replica does not hold the session, passes it
/// to the other replicas (see the module doc).
pub(crate) async fn route_to_holder(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(replicas) = state.replicas.as_deref() else {
        return next.run(request).await;
    };
    if request.headers().contains_key(REPLICA_HEADER) {
        if !replicas.is_passed(request.headers()) {
            warn_wrong_key();
        }
        let mut response = next.run(request).await;
        if response.extensions().get::<NotHere>().is_some() {
            response
                .headers_mut()
                .insert(NOT_HERE_HEADER, HeaderValue::from_static("1"));
        }
        return response;
    }
    let (parts, body) = request.into_parts();
    let limit = state.region.settings().max_body_bytes;
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(body) => body,
        Err(_) => {
            return ApiError::PayloadTooLarge(format!(
                "the request body could not be read within its limit of {limit} bytes"
            ))
            .into_response();
        }
    };
    let (method, uri, headers) = (
        parts.method.clone(),
        parts.uri.clone(),
        parts.headers.clone(),
    );
    let here = next
        .run(Request::from_parts(parts, Body::from(body.clone())))
        .await;
    if here.extensions().get::<NotHere>().is_none() {
        return here;
    }
    let mut unanswered = 0;
    for url in &replicas.urls {
        match replicas
            .pass(url, &method, &uri, &headers, body.clone())
            .await
        {
            Ok(None) => {}
            Ok(Some(answer)) => {
                crate::metrics::Metrics::inc(&state.region.metrics().replica_passed);
                return answer;
            }
            Err(e) => {
                tracing::warn!(replica = %url, error = %e, "a replica could not be asked about a session");
                unanswered += 1;
            }
        }
    }
    if unanswered > 0 {
        crate::metrics::Metrics::inc(&state.region.metrics().replica_unanswered);
        return ApiError::Busy(
            "the session is not held by this replica and another replica, which may hold it, \
             did not answer; retry shortly"
                .into(),
            Duration::from_secs(1),
        )
        .into_response();
    }
    here
}
