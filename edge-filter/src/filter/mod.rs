//! The proxy-wasm glue: one root context per VM (configuration, poller, shared data)
//! and one HTTP context per request, both over a per-VM [`Vm`] state.
//!
//! By role: [`poller`] (the root context: lease, feed and JWKS calls), [`http`] (the
//! per-request path), [`metrics`] (what Envoy shows under `wasmcustom.edge_filter.`).

// Reads untrusted request input and feed bytes: no input may panic the VM.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

mod http;
mod metrics;
mod poller;

use std::time::{Duration, UNIX_EPOCH};

use log::{info, warn};
use proxy_wasm::traits::RootContext;
use proxy_wasm::types::{LogLevel, Status};
use shared::edgeset::{EdgeSetError, RevocationSet};
use shared::{JwkSet, Keyring};

use crate::authz::{Authorizer, ExpLeeway};
use crate::config::{Config, KeySource, Role};
use crate::sync::{self, Keys, StateRecord};
use metrics::Metrics;
use poller::Root;

const TICK_MS: u64 = 200;
const TICK: Duration = Duration::from_millis(TICK_MS);
const LEASE_TTL_MS: u64 = 2_000;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

fn now_ms() -> u64 {
    proxy_wasm::hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn secs(ms: u64) -> i64 {
    i64::try_from(ms / 1000).unwrap_or(i64::MAX)
}

fn shared_get(key: &str) -> (Option<Vec<u8>>, Option<u32>) {
    proxy_wasm::hostcalls::get_shared_data(key).unwrap_or((None, None))
}

/// Everything one VM knows: shared by its root context and its HTTP contexts.
struct Vm {
    config: Config,
    keys: Keys,
    authorizer: Authorizer,
    set: RevocationSet,
    /// Versions of the set's arrays and of its recent entries this VM holds.
    set_version: u64,
    recent_version: u64,
    jwks_version: u64,
    state: StateRecord,
    metrics: Metrics,
    /// Claim header names folded with [`fold_header_name`].
    folded_claim_headers: Vec<String>,
    /// A published set (or recent-entries) version this VM could not decode: not retried
    /// per request.
    failed_set_version: Option<u64>,
    failed_recent_version: Option<u64>,
    /// When this VM last asked the poller for the JWKS (unknown `kid`), in ms.
    last_kid_signal_ms: u64,
}

impl Vm {
    /// Catches up with what the poller published; cheap when nothing changed.
    fn refresh(&mut self) {
        let state = match shared_get(&self.keys.state) {
            (Some(bytes), _) => StateRecord::decode(&bytes),
            _ => StateRecord::default(),
        };
        if matches!(self.config.keys, KeySource::Fetched) && state.jwks_version != self.jwks_version
        {
            self.jwks_version = state.jwks_version;
            match shared_get(&self.keys.jwks)
                .0
                .as_deref()
                .and_then(sync::unversioned)
            {
                Some((version, json)) => {
                    self.jwks_version = version;
                    match JwkSet::parse(json).and_then(|set| Keyring::from_jwks(&set)) {
                        Ok(ring) => self.authorizer.set_keys(ring),
                        Err(e) => warn!("edge-filter: published JWKS unusable: {e}"),
                    }
                }
                None => warn!(
                    "edge-filter: JWKS version {} has no blob",
                    state.jwks_version
                ),
            }
        }
        // The version is adopted only with a set decoded within the limits: a VM that
        // cannot load what was published stays behind and reads as stale (`is_stale`).
        if state.set_version > self.set_version
            && self.failed_set_version != Some(state.set_version)
        {
            match shared_get(&self.keys.set)
                .0
                .ok_or(EdgeSetError::Malformed("no set blob"))
                .and_then(|blob| sync::decode_set(&blob, self.config.max_revocations))
            {
                // A blob newer than the state record we read is complete too: the poller
                // publishes blobs before the record that names them.
                Ok((version, set)) if version >= state.set_version => {
                    self.set_version = version;
                    self.set = set;
                    // The recent entries published with these arrays load next.
                    self.recent_version = 0;
                    self.failed_set_version = None;
                }
                // An older blob: the record names one not written yet; the next request.
                Ok(_) => {}
                Err(e) => {
                    warn!(
                        "edge-filter: published set version {} unusable, the set is STALE \
                         here: {e}",
                        state.set_version
                    );
                    self.failed_set_version = Some(state.set_version);
                }
            }
        }
        // The recent entries a small delta published: a copy of their own size.
        if state.recent_version > self.recent_version
            && self.set_version >= state.set_version
            && self.failed_recent_version != Some(state.recent_version)
        {
            let blob = shared_get(&self.keys.recent).0.unwrap_or_default();
            match sync::decode_recent(&blob) {
                Some((version, set_version, payload))
                    if version >= state.recent_version && set_version == self.set_version =>
                {
                    match self.set.load_recent(payload, self.config.max_revocations) {
                        Ok(()) => {
                            self.recent_version = version;
                            self.failed_recent_version = None;
                        }
                        Err(e) => {
                            warn!(
                                "edge-filter: published recent entries version {version} \
                                 unusable, the set is STALE here: {e}"
                            );
                            self.failed_recent_version = Some(version);
                        }
                    }
                }
                // For other arrays (published between our reads): the next request.
                Some(_) => {}
                None => {
                    warn!(
                        "edge-filter: published recent entries version {} unusable, the set \
                         is STALE here: no blob",
                        state.recent_version
                    );
                    self.failed_recent_version = Some(state.recent_version);
                }
            }
        }
        self.adopt_feed_leeway(state.feed_leeway);
        self.state = state;
    }

    /// Caps the `exp` leeway at what the feed's revocations assume; logs and counts a
    /// change once (this runs per request, and costs a comparison when nothing changed).
    fn adopt_feed_leeway(&mut self, feed: Option<u32>) {
        let Some(applied) = self.authorizer.set_feed_leeway(feed) else {
            return;
        };
        // The poller service checks no request: its `leeway_seconds` may not be the
        // filter's, and its word on the clamp would flap the gauge.
        if self.config.role == Role::Poller {
            return;
        }
        self.record_leeway_clamp();
        match applied {
            ExpLeeway::Clamped { configured, feed } => warn!(
                "edge-filter: leeway_seconds = {configured} clamped to {feed} for exp: the \
                 revocation feed's entries assume {feed} s, and a revoked token would pass \
                 once its entry lapsed"
            ),
            ExpLeeway::Configured(configured) => info!(
                "edge-filter: leeway_seconds = {configured} applies to exp again (the \
                 revocation feed assumes at least as much, or does not say)"
            ),
        }
    }

    /// Sets the `leeway_clamped_seconds` gauge (filter VMs only, see above).
    fn record_leeway_clamp(&self) {
        if self.config.role != Role::Poller {
            let clamped = self.authorizer.exp_leeway().clamped_by();
            Metrics::set(
                self.metrics.leeway_clamped_seconds,
                u64::try_from(clamped).unwrap_or(0),
            );
        }
    }

    fn is_stale(&self, now: i64) -> bool {
        self.set_version < self.state.set_version
            || self.recent_version < self.state.recent_version
            || self
                .state
                .is_stale(now, self.config.staleness_bound_seconds)
    }

    /// Asks the poller to refetch the JWKS: a token named a `kid` we do not know, maybe a
    /// key that was just rotated in. Each VM writes at most once per tick period.
    fn want_jwks(&mut self, now: u64) {
        if !matches!(self.config.keys, KeySource::Fetched)
            || now < self.last_kid_signal_ms.saturating_add(TICK_MS)
        {
            return;
        }
        self.last_kid_signal_ms = now;
        let _ = proxy_wasm::hostcalls::set_shared_data(
            &self.keys.jwks_wanted,
            Some(&now.to_le_bytes()),
            None,
        );
    }

    /// Writes the state record with the given change, retrying on concurrent writes.
    fn publish_state(&self, change: impl Fn(&mut StateRecord)) -> bool {
        for _ in 0..8 {
            let (bytes, cas) = shared_get(&self.keys.state);
            let mut state = bytes.map(|b| StateRecord::decode(&b)).unwrap_or_default();
            change(&mut state);
            match proxy_wasm::hostcalls::set_shared_data(
                &self.keys.state,
                Some(&state.encode()),
                cas,
            ) {
                Ok(()) => return true,
                // Another worker wrote the record first: read it again.
                Err(Status::CasMismatch) => {}
                Err(_) => return false,
            }
        }
        false
    }
}
