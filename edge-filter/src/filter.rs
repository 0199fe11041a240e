//! The proxy-wasm glue: one root context per VM (configuration, poller, shared data)
//! and one HTTP context per request, both over a per-VM [`Vm`] state.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use log::{info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};
use shared::edgeset::{EdgeSetError, EdgeUpdate, RevocationSet};
use shared::{JoseError, JwkSet, Keyring};

use crate::authz::{Authorizer, Freshness, Outcome, Reason, Request, Rules};
use crate::config::{Config, KeySource, OnStale, RETRY_CAP_MILLIS};
use crate::replay::{self, ReplayGuard, Verdict};
use crate::request::{
    Preflight, challenge, error_body, fold_header_name, is_bypassed, is_claim_header_alias,
    is_cors_preflight,
};
use crate::sync::{self, Keys, Lease, Refused, StateRecord};

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

/// Metric ids; `None` where the host refused to define one.
struct Metrics {
    allowed: Option<u32>,
    denied: Vec<(Reason, Option<u32>)>,
    unavailable: Option<u32>,
    cache_hits: Option<u32>,
    cache_misses: Option<u32>,
    sync_updates: Option<u32>,
    sync_errors: Option<u32>,
    sync_refused: Vec<(&'static str, Option<u32>)>,
    jwks_refetches: Option<u32>,
    dpop_replay_full: Option<u32>,
    set_size: Option<u32>,
    set_seq: Option<u32>,
    staleness: Option<u32>,
}

impl Metrics {
    fn define() -> Metrics {
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
            dpop_replay_full: counter("dpop_replay_cache_full"),
            set_size: gauge("set_size"),
            set_seq: gauge("set_seq"),
            staleness: gauge("staleness_seconds"),
        }
    }

    fn inc(id: Option<u32>) {
        if let Some(id) = id {
            let _ = proxy_wasm::hostcalls::increment_metric(id, 1);
        }
    }

    fn set(id: Option<u32>, value: u64) {
        if let Some(id) = id {
            let _ = proxy_wasm::hostcalls::record_metric(id, value);
        }
    }

    fn denied(&self, reason: Reason) {
        if let Some((_, id)) = self.denied.iter().find(|(r, _)| *r == reason) {
            Metrics::inc(*id);
        }
    }

    fn refused(&self, why: SyncRefusal) {
        if let Some((_, id)) = self.sync_refused.iter().find(|(r, _)| *r == why.as_str()) {
            Metrics::inc(*id);
        }
    }
}

/// Why the poller did not take a feed answer, as counted in `sync_refused.<why>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncRefusal {
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
}

impl SyncRefusal {
    const ALL: [SyncRefusal; 7] = [
        SyncRefusal::Unreachable,
        SyncRefusal::TooLarge,
        SyncRefusal::UnknownKey,
        SyncRefusal::BadUpdate,
        SyncRefusal::Gap,
        SyncRefusal::Rollback,
        SyncRefusal::Publish,
    ];

    fn as_str(self) -> &'static str {
        match self {
            SyncRefusal::Unreachable => "unreachable",
            SyncRefusal::TooLarge => "too_large",
            SyncRefusal::UnknownKey => "unknown_key",
            SyncRefusal::BadUpdate => "bad_update",
            SyncRefusal::Gap => "gap",
            SyncRefusal::Rollback => "rollback",
            SyncRefusal::Publish => "publish",
        }
    }
}

/// The DPoP replay cache in shared data: one compare-and-swap per proof.
struct SharedReplay<'a> {
    prefix: &'a str,
    buckets: u32,
    full: Option<u32>,
}

impl SharedReplay<'_> {
    /// Creates missing buckets empty, so that every later write can compare-and-swap
    /// (a write to a missing key cannot, and two workers could both record a proof).
    fn create_buckets(prefix: &str, buckets: u32) {
        for b in 0..buckets {
            let key = format!("{prefix}{b}");
            if let (None, None) = shared_get(&key) {
                let _ = proxy_wasm::hostcalls::set_shared_data(&key, Some(&[]), None);
            }
        }
    }
}

impl ReplayGuard for SharedReplay<'_> {
    fn first_use(&mut self, id: [u8; 16], expires_at: i64, now: i64) -> bool {
        let key = format!("{}{}", self.prefix, replay::bucket_of(&id, self.buckets));
        for _ in 0..8 {
            let (bytes, cas) = shared_get(&key);
            if cas.is_none() {
                // The bucket vanished (never created): no safe way to record, fail closed.
                return false;
            }
            let verdict = replay::check_and_record(
                bytes.as_deref().unwrap_or_default(),
                &id,
                replay::seconds_u32(expires_at),
                replay::seconds_u32(now),
            );
            match verdict {
                Verdict::Fresh(next) => {
                    match proxy_wasm::hostcalls::set_shared_data(&key, Some(&next), cas) {
                        Ok(()) => return true,
                        Err(Status::CasMismatch) => continue,
                        Err(_) => return false,
                    }
                }
                Verdict::Replayed => return false,
                Verdict::Full => {
                    Metrics::inc(self.full);
                    return false;
                }
            }
        }
        false
    }
}

/// Everything one VM knows: shared by its root context and its HTTP contexts.
struct Vm {
    config: Config,
    keys: Keys,
    authorizer: Authorizer,
    set: RevocationSet,
    set_version: u64,
    jwks_version: u64,
    state: StateRecord,
    metrics: Metrics,
    /// Claim header names folded with [`fold_header_name`].
    folded_claim_headers: Vec<String>,
    /// A published set version this VM could not decode: not retried per request.
    failed_set_version: Option<u64>,
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
        if state.set_version != self.set_version
            && self.failed_set_version != Some(state.set_version)
        {
            match shared_get(&self.keys.set)
                .0
                .ok_or(EdgeSetError::Malformed("no set blob"))
                .and_then(|blob| sync::decode_set(&blob, self.config.max_revocations))
            {
                Ok((version, set)) if version == state.set_version => {
                    self.set_version = version;
                    self.set = set;
                    self.failed_set_version = None;
                }
                // Published between our two reads: the next request catches up.
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
        self.state = state;
    }

    fn is_stale(&self, now: i64) -> bool {
        self.set_version != self.state.set_version
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
                Err(Status::CasMismatch) => continue,
                Err(_) => return false,
            }
        }
        false
    }
}

/// A call the poller has in flight.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Feed(u32),
    Jwks(u32),
}

#[derive(Default)]
struct Root {
    vm: Option<Rc<RefCell<Vm>>>,
    vm_number: u64,
    in_flight: Vec<Call>,
    next_poll_ms: u64,
    next_jwks_ms: u64,
    want_snapshot: bool,
    /// This VM's poller has applied an update since it took the lease.
    synced: bool,
    /// Feed calls that failed in a row: the pause before the next one doubles with each.
    failures: u32,
    /// Last `jwks_wanted` value acted on, and when the last such refetch started (ms).
    jwks_wanted_seen: u64,
    last_refetch_ms: u64,
}

impl Root {
    fn allocate_vm_number(keys: &Keys) -> u64 {
        for _ in 0..16 {
            let (bytes, cas) = shared_get(&keys.vm_counter);
            let n = bytes
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map_or(0, u64::from_le_bytes)
                .wrapping_add(1);
            if proxy_wasm::hostcalls::set_shared_data(&keys.vm_counter, Some(&n.to_le_bytes()), cas)
                .is_ok()
            {
                return n;
            }
        }
        // Contention that never settles: the clock is distinct enough to break ties.
        now_ms() | (1 << 63)
    }

    fn holds_lease(&self, keys: &Keys, now: u64) -> bool {
        let (bytes, cas) = shared_get(&keys.lease);
        let current = bytes.as_deref().and_then(Lease::decode);
        match Lease::claim(current, self.vm_number, now, LEASE_TTL_MS) {
            Some(lease) => {
                proxy_wasm::hostcalls::set_shared_data(&keys.lease, Some(&lease.encode()), cas)
                    .is_ok()
            }
            None => false,
        }
    }

    fn dispatch(&self, vm: &Vm, path: &str, timeout: Duration) -> Result<u32, Status> {
        let cp = &vm.config.control_plane;
        proxy_wasm::hostcalls::dispatch_http_call(
            &cp.cluster,
            vec![
                (":method", "GET"),
                (":path", path),
                (":authority", &cp.authority),
                ("accept", "application/jose, application/json"),
            ],
            None,
            vec![],
            timeout,
        )
    }

    /// The poller's step: fetch keys when due, keep one long poll running.
    fn drive(&mut self, now: u64) {
        let Some(vm_rc) = self.vm.clone() else {
            return;
        };
        let vm = vm_rc.borrow();
        let cp = vm.config.control_plane.clone();
        let fetch_keys = matches!(vm.config.keys, KeySource::Fetched);
        let jwks_busy = self.in_flight.iter().any(|c| matches!(c, Call::Jwks(_)));
        if fetch_keys && !jwks_busy {
            // A request met an unknown `kid`: refetch now, at most once per interval.
            let wanted = shared_get(&vm.keys.jwks_wanted)
                .0
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map_or(0, u64::from_le_bytes);
            let interval = cp.jwks_min_refetch_seconds.saturating_mul(1000);
            if wanted > self.jwks_wanted_seen
                && now >= self.last_refetch_ms.saturating_add(interval)
            {
                self.jwks_wanted_seen = wanted;
                self.last_refetch_ms = now;
                self.next_jwks_ms = 0;
                Metrics::inc(vm.metrics.jwks_refetches);
            }
        }
        if fetch_keys && !jwks_busy && now >= self.next_jwks_ms {
            match self.dispatch(&vm, &cp.jwks_path, Duration::from_secs(10)) {
                Ok(id) => self.in_flight.push(Call::Jwks(id)),
                Err(e) => {
                    warn!(
                        "edge-filter: cannot call {} for the JWKS: {e:?}",
                        cp.cluster
                    );
                    Metrics::inc(vm.metrics.sync_errors);
                    self.next_jwks_ms = now.saturating_add(cp.retry_millis);
                }
            }
        }
        let feed_busy = self.in_flight.iter().any(|c| matches!(c, Call::Feed(_)));
        if feed_busy || now < self.next_poll_ms || vm.authorizer.keys().is_empty() {
            return;
        }
        // Without a set (or after a gap) ask for a snapshot, answered at once; with one,
        // long-poll from its seq (seq 0 included: the feed holds it like any other).
        let path = if self.want_snapshot || !self.synced {
            format!("{}?wait={}", cp.feed_path, cp.poll_wait_seconds)
        } else {
            format!(
                "{}?since={}&wait={}",
                cp.feed_path,
                vm.set.seq(),
                cp.poll_wait_seconds
            )
        };
        let timeout = Duration::from_secs(cp.poll_wait_seconds.saturating_add(5));
        match self.dispatch(&vm, &path, timeout) {
            Ok(id) => self.in_flight.push(Call::Feed(id)),
            Err(e) => {
                warn!(
                    "edge-filter: cannot call {} for revocations: {e:?}",
                    cp.cluster
                );
                Metrics::inc(vm.metrics.sync_errors);
                self.next_poll_ms = now.saturating_add(cp.retry_millis);
            }
        }
    }

    fn response_body(&self, body_size: usize) -> Option<Vec<u8>> {
        let status = self.get_http_call_response_header_bytes(":status")?;
        if status != b"200" {
            warn!(
                "edge-filter: control plane answered {}",
                String::from_utf8_lossy(&status)
            );
            return None;
        }
        self.get_http_call_response_body(0, body_size)
    }

    /// Verifies, applies and publishes a feed answer; returns when to poll next.
    fn on_feed(
        &mut self,
        vm: &mut Vm,
        body: Option<Vec<u8>>,
        now: u64,
    ) -> Result<u64, (SyncRefusal, String)> {
        let unreachable = |e: &str| (SyncRefusal::Unreachable, e.to_owned());
        let body = body.ok_or_else(|| unreachable("no usable response"))?;
        let token = std::str::from_utf8(&body).map_err(|_| unreachable("response is not text"))?;
        let max = vm.config.max_revocations;
        let update = match EdgeUpdate::open(token.trim(), vm.authorizer.keys(), max) {
            Ok(u) => u,
            Err(EdgeSetError::TooManyEntries(n)) => return Err(self.too_large(vm, n, now)),
            Err(e) => {
                if matches!(e, EdgeSetError::Envelope(JoseError::UnknownKey(_))) {
                    // The feed key may have rotated: fetch the JWKS now.
                    self.next_jwks_ms = 0;
                    return Err((SyncRefusal::UnknownKey, format!("update refused: {e}")));
                }
                return Err((SyncRefusal::BadUpdate, format!("update refused: {e}")));
            }
        };
        vm.refresh();
        let mut set = vm.set.clone();
        let changed = match sync::accept(&mut set, update, secs(now), max) {
            Ok(changed) => changed,
            Err(Refused::Gap(e)) => {
                self.want_snapshot = true;
                return Err((SyncRefusal::Gap, format!("asking for a snapshot: {e}")));
            }
            Err(Refused::Rollback) => {
                return Err((
                    SyncRefusal::Rollback,
                    "update older than the set: refused".into(),
                ));
            }
            Err(Refused::TooLarge(n)) => return Err(self.too_large(vm, n, now)),
        };
        self.want_snapshot = false;
        let publish = |e: String| (SyncRefusal::Publish, e);
        let version = if changed {
            let version = vm.state.set_version.wrapping_add(1).max(1);
            let blob = sync::encode_set(version, &set);
            proxy_wasm::hostcalls::set_shared_data(&vm.keys.set, Some(&blob), None)
                .map_err(|e| publish(format!("cannot publish the set: {e:?}")))?;
            version
        } else {
            vm.state.set_version
        };
        let (seq, generated_at) = (set.seq(), set.generated_at());
        let was_refused = vm.state.refused_at != 0;
        let published = vm.publish_state(|s| {
            s.set_version = version;
            s.seq = seq;
            s.generated_at = generated_at;
            s.verified_at = secs(now);
            s.refused_at = 0;
        });
        if !published {
            return Err(publish("cannot publish the state".into()));
        }
        Metrics::inc(vm.metrics.sync_updates);
        if changed || was_refused {
            info!(
                "edge-filter: revocation set at seq {seq} with {} entries published",
                set.len()
            );
        }
        vm.refresh();
        self.synced = true;
        Ok(now)
    }

    /// An update this edge cannot hold: the set is marked stale at once (revocations
    /// exist that it would not enforce) and the next poll asks for a snapshot, which
    /// fits again once the control plane's live set shrinks or the limit is raised.
    fn too_large(&mut self, vm: &mut Vm, entries: u64, now: u64) -> (SyncRefusal, String) {
        self.want_snapshot = true;
        self.synced = false;
        let marked = vm.publish_state(|s| {
            if s.refused_at == 0 {
                s.refused_at = secs(now).max(1);
            }
        });
        vm.refresh();
        let policy = match vm.config.on_stale {
            OnStale::Deny => "valid tokens get 503",
            OnStale::Allow => "served with the last complete set",
        };
        (
            SyncRefusal::TooLarge,
            format!(
                "the revocation set would hold {entries} entries, over max_revocations = {}: \
                 the set is STALE (on_stale: {policy}){}",
                vm.config.max_revocations,
                if marked {
                    ""
                } else {
                    "; cannot publish the state"
                }
            ),
        )
    }

    fn on_jwks(&mut self, vm: &mut Vm, body: Option<Vec<u8>>) -> Result<(), String> {
        let body = body.ok_or("no usable response")?;
        let ring = JwkSet::parse(&body)
            .and_then(|set| Keyring::from_jwks(&set))
            .map_err(|e| format!("JWKS refused: {e}"))?;
        if ring.is_empty() {
            return Err("JWKS has no usable key".into());
        }
        let current = shared_get(&vm.keys.jwks).0;
        if current
            .as_deref()
            .and_then(sync::unversioned)
            .map(|(_, j)| j)
            == Some(&body[..])
        {
            return Ok(());
        }
        let version = vm.state.jwks_version.wrapping_add(1).max(1);
        proxy_wasm::hostcalls::set_shared_data(
            &vm.keys.jwks,
            Some(&sync::versioned(version, &body)),
            None,
        )
        .map_err(|e| format!("cannot publish the JWKS: {e:?}"))?;
        if !vm.publish_state(|s| s.jwks_version = version) {
            return Err("cannot publish the state".into());
        }
        info!("edge-filter: JWKS with {} keys published", ring.len());
        vm.refresh();
        Ok(())
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _: usize,
    ) {
        let Some(pos) = self
            .in_flight
            .iter()
            .position(|c| matches!(c, Call::Feed(id) | Call::Jwks(id) if *id == token_id))
        else {
            return;
        };
        let call = self.in_flight.swap_remove(pos);
        let Some(vm_rc) = self.vm.clone() else {
            return;
        };
        let now = now_ms();
        let body = self.response_body(body_size);
        let mut vm = vm_rc.borrow_mut();
        let retry = vm.config.control_plane.retry_millis;
        match call {
            Call::Feed(_) => match self.on_feed(&mut vm, body, now) {
                // Usually at once: the next long poll is what carries the next revocation.
                Ok(next) => {
                    self.failures = 0;
                    self.next_poll_ms = next;
                }
                Err((why, e)) => {
                    // Never at once: a feed that answers at once with something we refuse
                    // would otherwise be polled in a hot loop.
                    let pause = sync::backoff_millis(retry, self.failures, RETRY_CAP_MILLIS);
                    self.failures = self.failures.saturating_add(1);
                    warn!(
                        "edge-filter: revocation update refused ({}): {e}; next poll in {pause} ms",
                        why.as_str()
                    );
                    Metrics::inc(vm.metrics.sync_errors);
                    vm.metrics.refused(why);
                    self.next_poll_ms = now.saturating_add(pause);
                }
            },
            Call::Jwks(_) => match self.on_jwks(&mut vm, body) {
                Ok(()) => {
                    let refresh = vm.config.control_plane.jwks_refresh_seconds;
                    self.next_jwks_ms = now.saturating_add(refresh.saturating_mul(1000));
                }
                Err(e) => {
                    warn!("edge-filter: JWKS fetch failed: {e}");
                    Metrics::inc(vm.metrics.sync_errors);
                    self.next_jwks_ms = now.saturating_add(retry);
                }
            },
        }
        drop(vm);
        self.drive(now);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log::error!("edge-filter: {e}");
                return false;
            }
        };
        let keys = Keys::for_cluster(&config.control_plane.cluster);
        let ring = match &config.keys {
            KeySource::Inline(ring) => ring.clone(),
            KeySource::Fetched => Keyring::new(),
        };
        let authorizer = Authorizer::new(
            ring,
            Rules {
                validation: config.validation.clone(),
                limits: config.limits,
                claim_headers: config.claim_headers.clone(),
                dpop_max_age: config.dpop_max_age_seconds,
                fail_open: config.on_stale == OnStale::Allow,
                cache_max_entries: config.cache_max_entries,
            },
        );
        self.vm_number = Root::allocate_vm_number(&keys);
        let folded_claim_headers = config
            .claim_headers
            .iter()
            .map(|(_, h)| fold_header_name(h))
            .collect();
        let mut vm = Vm {
            config,
            keys,
            authorizer,
            set: RevocationSet::new(),
            set_version: 0,
            jwks_version: 0,
            state: StateRecord::default(),
            metrics: Metrics::define(),
            folded_claim_headers,
            failed_set_version: None,
            last_kid_signal_ms: 0,
        };
        SharedReplay::create_buckets(&vm.keys.dpop_replay, vm.config.dpop_replay_buckets);
        vm.refresh();
        self.vm = Some(Rc::new(RefCell::new(vm)));
        self.in_flight.clear();
        self.next_poll_ms = 0;
        self.next_jwks_ms = 0;
        self.set_tick_period(TICK);
        info!("edge-filter: configured (vm {})", self.vm_number);
        true
    }

    fn on_tick(&mut self) {
        let Some(vm_rc) = self.vm.clone() else {
            return;
        };
        let now = now_ms();
        {
            let mut vm = vm_rc.borrow_mut();
            vm.refresh();
            let age = vm.state.staleness(secs(now)).unwrap_or(i64::MAX);
            Metrics::set(vm.metrics.staleness, u64::try_from(age).unwrap_or(0));
            Metrics::set(vm.metrics.set_size, vm.set.len() as u64);
            Metrics::set(vm.metrics.set_seq, vm.set.seq());
        }
        let keys = vm_rc.borrow().keys.clone();
        if self.holds_lease(&keys, now) {
            self.drive(now);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            vm: self.vm.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    vm: Option<Rc<RefCell<Vm>>>,
}

/// What to do with a request, decided while the VM state is borrowed and acted on after
/// the borrow ends (a local reply runs host code that may call back into the VM).
enum Reply {
    Forward,
    Refuse {
        status: u32,
        headers: &'static [(&'static str, &'static str)],
        challenge: Option<&'static str>,
        body: &'static str,
    },
}

const DENY_HEADERS: &[(&str, &str)] = &[
    ("content-type", "application/json"),
    ("cache-control", "no-store"),
];
const STALE_HEADERS: &[(&str, &str)] = &[
    ("content-type", "application/json"),
    ("retry-after", "1"),
    ("cache-control", "no-store"),
];
const STALE_BODY: &str =
    "{\"error\":\"temporarily_unavailable\",\"error_description\":\"revocation set is stale\"}\n";

type Headers = [(String, Vec<u8>)];

fn header<'h>(headers: &'h Headers, name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

fn text<'h>(headers: &'h Headers, name: &str) -> &'h str {
    header(headers, name)
        .and_then(|v| std::str::from_utf8(v).ok())
        .unwrap_or_default()
}

impl Filter {
    fn decide(&self, vm: &mut Vm, headers: &Headers, end_of_stream: bool) -> Reply {
        // Claim headers are ours alone: a client never gets to set them, under any
        // spelling an upstream could read as the same name (`x_auth_sub`, `X-Auth_Sub`).
        if !vm.folded_claim_headers.is_empty() {
            for (name, _) in headers {
                if is_claim_header_alias(name, &vm.folded_claim_headers) {
                    self.set_http_request_header(name, None);
                }
            }
        }
        let path = text(headers, ":path");
        let method = text(headers, ":method");
        let preflight = || Preflight {
            method,
            origin: header(headers, "origin"),
            request_method: header(headers, "access-control-request-method"),
            content_length: header(headers, "content-length"),
            transfer_encoding: header(headers, "transfer-encoding").is_some(),
            end_of_stream,
        };
        if is_bypassed(&vm.config.bypass_paths, path)
            || (vm.config.cors_preflight_bypass && is_cors_preflight(&preflight()))
        {
            return Reply::Forward;
        }
        vm.refresh();
        let now_ms = now_ms();
        let now = secs(now_ms);
        let freshness = if vm.is_stale(now) {
            Freshness::Stale
        } else {
            Freshness::Fresh
        };
        let req = Request {
            authorization: header(headers, "authorization"),
            dpop: header(headers, "dpop"),
            dpop_headers: headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("dpop"))
                .count(),
            method,
            scheme: text(headers, ":scheme"),
            authority: text(headers, ":authority"),
            path,
        };
        let Vm {
            authorizer,
            set,
            keys,
            config,
            metrics,
            ..
        } = &mut *vm;
        let mut replay = SharedReplay {
            prefix: &keys.dpop_replay,
            buckets: config.dpop_replay_buckets,
            full: metrics.dpop_replay_full,
        };
        let outcome = authorizer.authorize(&req, set, freshness, now, &mut replay);
        let hit = |h: bool| {
            Metrics::inc(if h {
                vm.metrics.cache_hits
            } else {
                vm.metrics.cache_misses
            })
        };
        match outcome {
            Outcome::Allow { token, cache_hit } => {
                hit(cache_hit);
                Metrics::inc(vm.metrics.allowed);
                for (name, value) in &token.headers {
                    self.set_http_request_header(name, Some(value));
                }
                if vm.config.strip_authorization {
                    self.set_http_request_header("authorization", None);
                    self.set_http_request_header("dpop", None);
                }
                Reply::Forward
            }
            Outcome::Deny { reason, cache_hit } => {
                if reason != Reason::Missing {
                    hit(cache_hit);
                }
                vm.metrics.denied(reason);
                if reason == Reason::UnknownKey {
                    vm.want_jwks(now_ms);
                }
                Reply::Refuse {
                    status: 401,
                    headers: DENY_HEADERS,
                    challenge: Some(challenge(reason)),
                    body: error_body(reason),
                }
            }
            Outcome::Unavailable => {
                Metrics::inc(vm.metrics.unavailable);
                Reply::Refuse {
                    status: 503,
                    headers: STALE_HEADERS,
                    challenge: None,
                    body: STALE_BODY,
                }
            }
        }
    }

    fn refuse(
        &self,
        status: u32,
        headers: &[(&str, &str)],
        challenge: Option<&str>,
        body: &str,
    ) -> Action {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(c) = challenge {
            all.push(("www-authenticate", c));
        }
        self.send_http_response(status, all, Some(body.as_bytes()));
        Action::Pause
    }
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let Some(vm_rc) = self.vm.clone() else {
            return self.refuse(500, &[], None, "edge filter not configured\n");
        };
        // One host call for every header the decision needs.
        let headers = self.get_http_request_headers_bytes();
        let reply = self.decide(&mut vm_rc.borrow_mut(), &headers, end_of_stream);
        match reply {
            Reply::Forward => Action::Continue,
            Reply::Refuse {
                status,
                headers,
                challenge,
                body,
            } => self.refuse(status, headers, challenge, body),
        }
    }
}
