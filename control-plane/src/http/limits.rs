//! Limits on what callers without a credential can consume: token buckets per client
//! address and per subject for what they can make the region write, and a cap on the
//! requests one address may have in progress at once; over either, 429 with
//! `Retry-After`.
//!
//! The per-address cap (`CP_MAX_UNAUTHENTICATED_PER_ADDRESS`) counts a request from the
//! moment its headers are in until its response has been sent, body included, unless it
//! carries the admin credential or a valid edge credential: edges behind one NAT and the
//! services that issue and revoke never count, while one address trickling slow bodies
//! without a credential cannot take more than its share of the connection cap. Over the
//! cap the answer is 429 at once and the connection is closed (nothing of its body is
//! read). The edge feed's polls are left to the feed's own caps (long-poll slots per edge
//! credential and one share for polls without one, in `edge_auth`): they carry no body,
//! and a lookup per parked poll per revocation would cost a fleet measurably.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, SizeHint};

use super::{ApiError, AppState, ClientAddr};
use crate::metrics::Metrics;

/// Most keys one limiter tracks; beyond it the full (idle) buckets are dropped first.
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// The tokens held at `now` after refilling at `rate` a second, before the cap.
    fn refilled(&self, now: Instant, rate: f64) -> f64 {
        now.saturating_duration_since(self.at)
            .as_secs_f64()
            .mul_add(rate, self.tokens)
    }
}

/// A token bucket per key: `per_minute` requests a minute, bursts up to `per_minute`.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// A limiter allowing `per_minute` requests a minute per key (0 turns it off).
    pub(crate) fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn rate(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }

    /// Takes one request for `key` at `now`; `Err(wait)` when over the limit.
    pub(crate) fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let burst = f64::from(self.per_minute);
        let rate = self.rate();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            // A bucket that has refilled holds no state worth keeping.
            buckets.retain(|_, b| b.refilled(now, rate) < burst);
            if buckets.len() >= MAX_KEYS {
                // Still full: every key is busy. Refuse new keys rather than forget limits.
                return Err(Duration::from_secs(1));
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens = bucket.refilled(now, rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

/// The limits on holder revocations (`/revoke/token`, `/oauth2/revoke` without the
/// admin credential).
#[derive(Debug)]
pub(crate) struct HolderLimits {
    by_client: RateLimiter,
    by_subject: RateLimiter,
}

impl HolderLimits {
    /// Limits of `per_client` and `per_subject` requests a minute.
    pub(crate) fn new(per_client: u32, per_subject: u32) -> HolderLimits {
        HolderLimits {
            by_client: RateLimiter::new(per_client),
            by_subject: RateLimiter::new(per_subject),
        }
    }

    /// Counts a request from `client` (when known); `Err(wait)` when over a limit.
    pub(crate) fn client(&self, client: Option<IpAddr>) -> Result<(), Duration> {
        let key = client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        self.by_client.take(&key, Instant::now())
    }

    /// Counts a request made with a token of `subject`; `Err(wait)` when over the limit.
    pub(crate) fn subject(&self, subject: &str) -> Result<(), Duration> {
        self.by_subject.take(subject, Instant::now())
    }
}

/// Requests in progress without a credential, per client address.
#[derive(Debug)]
pub(crate) struct AddressPermits {
    cap: usize,
    in_use: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One request in progress of an address, given back on drop.
#[derive(Debug)]
pub(crate) struct AddressPermit {
    ip: IpAddr,
    in_use: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let mut in_use = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = in_use.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // The map holds only addresses with requests in progress.
                in_use.remove(&self.ip);
            }
        }
    }
}

impl AddressPermits {
    /// At most `cap` requests in progress per address (0 turns the cap off).
    pub(crate) fn new(cap: usize) -> AddressPermits {
        AddressPermits {
            cap,
            in_use: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Whether the cap is on.
    pub(crate) fn enabled(&self) -> bool {
        self.cap > 0
    }

    /// A permit for one more request of `ip`; `None` when it has `cap` in progress.
    pub(crate) fn take(&self, ip: IpAddr) -> Option<AddressPermit> {
        let mut in_use = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        let n = in_use.entry(ip).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(AddressPermit {
            ip,
            in_use: self.in_use.clone(),
        })
    }
}

/// A response body that keeps something (a permit) until it has been sent or dropped.
struct Holding<B, T> {
    inner: B,
    _held: T,
}

impl<B, T> hyper::body::Body for Holding<B, T>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    T: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The route the per-address cap leaves to the edge feed's own caps.
const FEED_PATH: &str = "/v1/edge/revocations";

/// The middleware of every route: the per-address cap on requests without a credential
/// (see the module documentation). Requests with no TCP peer (in-process) are not
/// counted.
pub(crate) async fn per_address(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    request: Request,
    next: Next,
) -> Response {
    let permits = &state.address_permits;
    // The edge feed has its own caps (long-poll slots per edge credential, one share for
    // polls without one: `edge_auth`) and no body; checking each of a fleet's polls here
    // as well would cost every parked edge a credential lookup per revocation.
    let Some(ip) = client.filter(|_| permits.enabled() && request.uri().path() != FEED_PATH) else {
        return next.run(request).await;
    };
    // A request another replica passed on was counted there.
    if state.passed_by_replica(request.headers()) {
        return next.run(request).await;
    }
    let secret = bearer(&request).map(str::to_owned);
    if has_credential(&state, secret).await {
        return next.run(request).await;
    }
    let Some(permit) = permits.take(ip) else {
        Metrics::inc(&state.region.metrics().unauthenticated_over_address_cap);
        let mut refused = ApiError::TooManyRequests(
            "too many requests in progress from this address without a credential; retry \
             later (requests with the admin or an edge credential are not limited)"
                .into(),
            Duration::from_secs(1),
        )
        .into_response();
        // Its body is never read: the connection cannot carry another request.
        refused
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return refused;
    };
    next.run(request).await.map(|body| {
        axum::body::Body::new(Holding {
            inner: body,
            _held: permit,
        })
    })
}

/// Whether `secret` (a request's `Authorization: Bearer`) is the admin credential or a
/// valid edge credential.
async fn has_credential(state: &AppState, secret: Option<String>) -> bool {
    // An owned secret: a request (not `Sync`) must not be borrowed across the await.
    match secret {
        Some(secret) => {
            state.region.is_admin(&secret) || state.edge_auth.is_known(state, &secret).await
        }
        None => false,
    }
}

fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, rest)| rest.trim())
        .filter(|c| !c.is_empty() && c.len() <= 256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_cap_of_permits_and_each_comes_back_on_drop() {
        let permits = AddressPermits::new(2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = permits.take(a).expect("first");
        let second = permits.take(a).expect("second");
        assert!(permits.take(a).is_none(), "over the cap");
        assert!(permits.take(b).is_some(), "another address is not affected");
        drop(first);
        let third = permits.take(a).expect("one came back");
        drop((second, third));
        assert!(
            permits.in_use.lock().unwrap().is_empty(),
            "no address is remembered once its requests are done"
        );
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let limiter = RateLimiter::new(60);
        let t0 = Instant::now();
        for _ in 0..60 {
            assert!(limiter.take("a", t0).is_ok());
        }
        let wait = limiter.take("a", t0).expect_err("over the burst");
        assert!(wait <= Duration::from_secs(1) && wait > Duration::ZERO);
        // Other keys are not affected.
        assert!(limiter.take("b", t0).is_ok());
        // One request a second comes back.
        assert!(limiter.take("a", t0 + Duration::from_millis(1100)).is_ok());
        assert!(limiter.take("a", t0 + Duration::from_millis(1100)).is_err());
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limiter = RateLimiter::new(0);
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert!(limiter.take("a", t0).is_ok());
        }
    }
}
