//! Rate limits for what callers without the admin credential can make the region write:
//! token buckets per client address and per subject, answered with 429 and `Retry-After`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most keys one limiter tracks; beyond it the full (idle) buckets are dropped first.
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
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
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
            if buckets.len() >= MAX_KEYS {
                // Still full: every key is busy. Refuse new keys rather than forget limits.
                return Err(Duration::from_secs(1));
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refilled =
            bucket.tokens + now.saturating_duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = refilled.min(burst);
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

#[cfg(test)]
mod tests {
    use super::*;

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
