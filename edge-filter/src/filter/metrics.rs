//! The filter's metrics: counters and gauges Envoy shows under `wasmcustom.edge_filter.`.

use proxy_wasm::types::MetricType;

use crate::reason::Reason;

/// Metric ids; `None` where the host refused to define one.
pub(super) struct Metrics {
    pub(super) allowed: Option<u32>,
    pub(super) denied: Vec<(Reason, Option<u32>)>,
    pub(super) unavailable: Option<u32>,
    pub(super) cache_hits: Option<u32>,
    pub(super) cache_misses: Option<u32>,
    pub(super) sync_updates: Option<u32>,
    pub(super) sync_errors: Option<u32>,
    pub(super) sync_refused: Vec<(&'static str, Option<u32>)>,
    pub(super) jwks_refetches: Option<u32>,
    /// JWKS refetches because a feed update announced another JWKS than the one held.
    pub(super) jwks_announced_refetches: Option<u32>,
    pub(super) dpop_replay_full: Option<u32>,
    pub(super) set_size: Option<u32>,
    pub(super) set_seq: Option<u32>,
    pub(super) staleness: Option<u32>,
    /// Seconds of `leeway_seconds` the `exp` check does not apply because the feed's
    /// revocations assume less (0: not clamped).
    pub(super) leeway_clamped_seconds: Option<u32>,
}

impl Metrics {
    pub(super) fn define() -> Metrics {
        let def = |t, name: &str| proxy_wasm::hostcalls::define_metric(t, name).ok();
        let counter = |name: &str| def(MetricType::Counter, &format!("edge_filter.{name}"));
        let gauge = |name: &str| def(MetricType::Gauge, &format!("edge_filter.{name}"));
        Metrics {
            allowed: counter("allowed"),
            denied: Reason::ALL
                .iter()
                .map(|r| (*r, counter(&format!("denied.{}", r.as_str()))))
                .collect(),
            unavailable: counter("denied.stale_set"),
            cache_hits: counter("cache_hits"),
            cache_misses: counter("cache_misses"),
            sync_updates: counter("sync_updates"),
            sync_errors: counter("sync_errors"),
            sync_refused: SyncRefusal::ALL
                .iter()
                .map(|r| (r.as_str(), counter(&format!("sync_refused.{}", r.as_str()))))
                .collect(),
            jwks_refetches: counter("jwks_unknown_kid_refetches"),
            jwks_announced_refetches: counter("jwks_announced_refetches"),
            dpop_replay_full: counter("dpop_replay_cache_full"),
            set_size: gauge("set_size"),
            set_seq: gauge("set_seq"),
            staleness: gauge("staleness_seconds"),
            leeway_clamped_seconds: gauge("leeway_clamped_seconds"),
        }
    }

    pub(super) fn inc(id: Option<u32>) {
        if let Some(id) = id {
            let _ = proxy_wasm::hostcalls::increment_metric(id, 1);
        }
    }

    pub(super) fn set(id: Option<u32>, value: u64) {
        if let Some(id) = id {
            let _ = proxy_wasm::hostcalls::record_metric(id, value);
        }
    }

    pub(super) fn denied(&self, reason: Reason) {
        if let Some((_, id)) = self.denied.iter().find(|(r, _)| *r == reason) {
            Metrics::inc(*id);
        }
    }

    pub(super) fn refused(&self, why: SyncRefusal) {
        if let Some((_, id)) = self.sync_refused.iter().find(|(r, _)| *r == why.as_str()) {
            Metrics::inc(*id);
        }
    }
}

/// Why the poller did not take a feed answer, as counted in `sync_refused.<why>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SyncRefusal {
    /// No answer, an error status or a body that is not text.
    Unreachable,
    /// The set would exceed `max_revocations`.
    TooLarge,
    /// Signed by a key not in the JWKS.
    UnknownKey,
    /// Signature, envelope or payload invalid.
    BadUpdate,
    /// A delta that does not start at our `seq`.
    Gap,
    /// Older than the set (a replay).
    Rollback,
    /// Shared data refused the write.
    Publish,
    /// The control plane answered 401: the edge credential is missing, wrong or revoked.
    Unauthorized,
}

impl SyncRefusal {
    const ALL: [SyncRefusal; 8] = [
        SyncRefusal::Unreachable,
        SyncRefusal::TooLarge,
        SyncRefusal::UnknownKey,
        SyncRefusal::BadUpdate,
        SyncRefusal::Gap,
        SyncRefusal::Rollback,
        SyncRefusal::Publish,
        SyncRefusal::Unauthorized,
    ];

    pub(super) fn as_str(self) -> &'static str {
        match self {
            SyncRefusal::Unreachable => "unreachable",
            SyncRefusal::TooLarge => "too_large",
            SyncRefusal::UnknownKey => "unknown_key",
            SyncRefusal::BadUpdate => "bad_update",
            SyncRefusal::Gap => "gap",
            SyncRefusal::Rollback => "rollback",
            SyncRefusal::Publish => "publish",
            SyncRefusal::Unauthorized => "unauthorized",
        }
    }
}
