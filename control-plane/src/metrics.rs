//! Prometheus counters and gauges of the service, rendered in the text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use shared::Kind;

/// Counters updated by the domain and HTTP layers.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Tokens issued.
    pub tokens_issued: AtomicU64,
    /// Validations that found the token valid.
    pub validations_valid: AtomicU64,
    /// Validations that refused the token.
    pub validations_invalid: AtomicU64,
    /// Revocations committed, by kind (jti, sub, kid, sid).
    pub revocations: [AtomicU64; 4],
    /// Events the bus refused (kept in the outbox).
    pub publish_failures: AtomicU64,
    /// Edge feed answers that were snapshots.
    pub edge_snapshots: AtomicU64,
    /// Edge feed answers that were non-empty deltas.
    pub edge_deltas: AtomicU64,
    /// Edge feed answers that were empty deltas (heartbeats).
    pub edge_heartbeats: AtomicU64,
    /// HTTP responses by status class (1xx..5xx).
    pub responses: [AtomicU64; 5],
    /// Long polls answered 503 because every slot was taken.
    pub long_polls_refused: AtomicU64,
    /// Requests answered 429 by a rate limit.
    pub rate_limited: AtomicU64,
    /// Edge feed polls served without an edge credential (`CP_EDGE_CREDENTIALS=warn`).
    pub edge_polls_unauthenticated: AtomicU64,
    /// Edge feed polls answered 401 for carrying no credential (`required`).
    pub edge_polls_missing_credential: AtomicU64,
    /// Edge feed polls answered 401 for a wrong or revoked credential.
    pub edge_polls_invalid_credential: AtomicU64,
    /// Edge feed polls answered 503 because their credential had every slot of its share.
    pub edge_polls_over_credential_share: AtomicU64,
    /// Requests answered 429 because their address had
    /// `CP_MAX_UNAUTHENTICATED_PER_ADDRESS` requests without a credential in progress.
    pub unauthenticated_over_address_cap: AtomicU64,
    /// Session requests this replica did not hold, answered by another replica.
    pub replica_passed: AtomicU64,
    /// Session requests answered 503 because a replica that may hold the session did
    /// not answer.
    pub replica_unanswered: AtomicU64,
    /// Connections open now (a gauge).
    pub connections_open: AtomicU64,
    /// Idle connections closed to make room for a new one at the cap.
    pub connections_evicted: AtomicU64,
    /// Connections refused at the cap because none was idle.
    pub connections_refused: AtomicU64,
    /// Connections closed for sending no complete request within the timeouts.
    pub connections_timed_out: AtomicU64,
}

fn kind_index(kind: Kind) -> usize {
    match kind {
        Kind::Jti => 0,
        Kind::Sub => 1,
        Kind::Kid => 2,
        Kind::Sid => 3,
    }
}

impl Metrics {
    /// Adds one to a counter.
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a committed revocation.
    pub(crate) fn revoked(&self, kind: Kind) {
        Metrics::inc(&self.revocations[kind_index(kind)]);
    }

    /// Counts an HTTP response.
    pub(crate) fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        Metrics::inc(&self.responses[class]);
    }

    /// The Prometheus text exposition, with the gauges passed in.
    pub(crate) fn render(&self, feed_seq: u64, live_revocations: usize, ready: bool) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        counter(
            "cp_tokens_issued_total",
            "Access tokens issued.",
            &[("", get(&self.tokens_issued))],
        );
        counter(
            "cp_token_validations_total",
            "Token validations by result.",
            &[
                ("{result=\"valid\"}", get(&self.validations_valid)),
                ("{result=\"invalid\"}", get(&self.validations_invalid)),
            ],
        );
        let by_kind: Vec<(String, u64)> = Kind::ALL
            .iter()
            .map(|k| {
                (
                    format!("{{kind=\"{}\"}}", k.as_str()),
                    get(&self.revocations[kind_index(*k)]),
                )
            })
            .collect();
        let by_kind: Vec<(&str, u64)> = by_kind.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        counter(
            "cp_revocations_total",
            "Revocations committed by this region.",
            &by_kind,
        );
        counter(
            "cp_publish_failures_total",
            "Revocation events the event bus refused (kept in the outbox).",
            &[("", get(&self.publish_failures))],
        );
        counter(
            "cp_edge_feed_responses_total",
            "Edge feed answers by type.",
            &[
                ("{type=\"snapshot\"}", get(&self.edge_snapshots)),
                ("{type=\"delta\"}", get(&self.edge_deltas)),
                ("{type=\"heartbeat\"}", get(&self.edge_heartbeats)),
            ],
        );
        counter(
            "cp_long_polls_refused_total",
            "Edge long polls answered 503 because every long-poll slot was taken.",
            &[("", get(&self.long_polls_refused))],
        );
        counter(
            "cp_edge_polls_unauthenticated_total",
            "Edge feed polls served without an edge credential (CP_EDGE_CREDENTIALS=warn).",
            &[("", get(&self.edge_polls_unauthenticated))],
        );
        counter(
            "cp_edge_polls_refused_total",
            "Edge feed polls refused by credential checks, by reason.",
            &[
                (
                    "{reason=\"missing_credential\"}",
                    get(&self.edge_polls_missing_credential),
                ),
                (
                    "{reason=\"invalid_credential\"}",
                    get(&self.edge_polls_invalid_credential),
                ),
                (
                    "{reason=\"credential_share\"}",
                    get(&self.edge_polls_over_credential_share),
                ),
            ],
        );
        counter(
            "cp_rate_limited_total",
            "Requests answered 429 by a rate limit.",
            &[("", get(&self.rate_limited))],
        );
        counter(
            "cp_unauthenticated_over_address_cap_total",
            "Requests without a credential answered 429 (and their connection closed) because \
             their address had CP_MAX_UNAUTHENTICATED_PER_ADDRESS such requests in progress.",
            &[("", get(&self.unauthenticated_over_address_cap))],
        );
        counter(
            "cp_replica_session_requests_total",
            "Refresh-session requests whose session this replica does not hold, passed to \
             the region's other replicas, by outcome.",
            &[
                ("{outcome=\"answered\"}", get(&self.replica_passed)),
                ("{outcome=\"unanswered\"}", get(&self.replica_unanswered)),
            ],
        );
        counter(
            "cp_connections_closed_total",
            "Connections the server closed by reason.",
            &[
                ("{reason=\"evicted_idle\"}", get(&self.connections_evicted)),
                (
                    "{reason=\"refused_at_cap\"}",
                    get(&self.connections_refused),
                ),
                ("{reason=\"timeout\"}", get(&self.connections_timed_out)),
            ],
        );
        let classes: Vec<(String, u64)> = (0..5)
            .map(|i| {
                (
                    format!("{{class=\"{}xx\"}}", i + 1),
                    get(&self.responses[i]),
                )
            })
            .collect();
        let classes: Vec<(&str, u64)> = classes.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        counter(
            "cp_http_responses_total",
            "HTTP responses by status class.",
            &classes,
        );
        let _ = writeln!(
            out,
            "# HELP cp_edge_feed_seq Current edge feed sequence number.\n# TYPE cp_edge_feed_seq gauge\ncp_edge_feed_seq {feed_seq}"
        );
        let _ = writeln!(
            out,
            "# HELP cp_live_revocations Revocations that can still match a valid token.\n# TYPE cp_live_revocations gauge\ncp_live_revocations {live_revocations}"
        );
        let _ = writeln!(
            out,
            "# HELP cp_connections_open Connections open now.\n# TYPE cp_connections_open gauge\ncp_connections_open {}",
            get(&self.connections_open)
        );
        let _ = writeln!(
            out,
            "# HELP cp_ready 1 when the service accepts traffic.\n# TYPE cp_ready gauge\ncp_ready {}",
            u8::from(ready)
        );
        out
    }
}
