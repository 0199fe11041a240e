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
use crate::config::{Config, KeySource, OnStale};
use crate::request::{challenge, error_body, is_bypassed, is_cors_preflight};
use crate::sync::{self, Keys, Lease, Refused, StateRecord};

const TICK: Duration = Duration::from_millis(200);
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
        if state.set_version != self.set_version {
            self.set_version = state.set_version;
            if let Some(blob) = shared_get(&self.keys.set).0 {
                match sync::decode_set(&blob, self.config.max_revocations) {
                    Ok((version, set)) => {
                        self.set_version = version;
                        self.set = set;
                    }
                    Err(e) => warn!("edge-filter: published set unusable: {e}"),
                }
            }
        }
        self.state = state;
    }

    fn is_stale(&self, now: i64) -> bool {
        self.state
            .is_stale(now, self.config.staleness_bound_seconds)
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
    fn on_feed(&mut self, vm: &mut Vm, body: Option<Vec<u8>>, now: u64) -> Result<u64, String> {
        let body = body.ok_or("no usable response")?;
        let token = std::str::from_utf8(&body).map_err(|_| "response is not text")?;
        let update = match EdgeUpdate::open(
            token.trim(),
            vm.authorizer.keys(),
            vm.config.max_revocations,
        ) {
            Ok(u) => u,
            Err(e) => {
                if matches!(e, EdgeSetError::Envelope(JoseError::UnknownKey(_))) {
                    // The feed key may have rotated: fetch the JWKS now.
                    self.next_jwks_ms = 0;
                }
                return Err(format!("update refused: {e}"));
            }
        };
        vm.refresh();
        let mut set = vm.set.clone();
        let changed = match sync::accept(&mut set, update, secs(now)) {
            Ok(changed) => changed,
            Err(Refused::Gap(e)) => {
                self.want_snapshot = true;
                return Err(format!("asking for a snapshot: {e}"));
            }
            Err(Refused::Rollback) => return Err("update older than the set: refused".into()),
        };
        self.want_snapshot = false;
        let version = if changed {
            let version = vm.state.set_version.wrapping_add(1).max(1);
            let blob = sync::encode_set(version, &set);
            proxy_wasm::hostcalls::set_shared_data(&vm.keys.set, Some(&blob), None)
                .map_err(|e| format!("cannot publish the set: {e:?}"))?;
            version
        } else {
            vm.state.set_version
        };
        let (seq, generated_at) = (set.seq(), set.generated_at());
        let published = vm.publish_state(|s| {
            s.set_version = version;
            s.seq = seq;
            s.generated_at = generated_at;
            s.verified_at = secs(now);
        });
        if !published {
            return Err("cannot publish the state".into());
        }
        Metrics::inc(vm.metrics.sync_updates);
        if changed {
            info!(
                "edge-filter: revocation set at seq {seq} with {} entries published",
                set.len()
            );
        }
        vm.refresh();
        self.synced = true;
        Ok(now)
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
                Ok(next) => self.next_poll_ms = next,
                Err(e) => {
                    warn!("edge-filter: revocation sync failed: {e}");
                    Metrics::inc(vm.metrics.sync_errors);
                    self.next_poll_ms = now.saturating_add(retry);
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
        let mut vm = Vm {
            config,
            keys,
            authorizer,
            set: RevocationSet::new(),
            set_version: 0,
            jwks_version: 0,
            state: StateRecord::default(),
            metrics: Metrics::define(),
        };
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

impl Filter {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.get_http_request_header_bytes(name)
    }

    fn text(&self, name: &str) -> String {
        self.header(name)
            .and_then(|v| String::from_utf8(v).ok())
            .unwrap_or_default()
    }

    fn refuse(&self, status: u32, headers: Vec<(&str, &str)>, body: &str) -> Action {
        self.send_http_response(status, headers, Some(body.as_bytes()));
        Action::Pause
    }
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Some(vm_rc) = self.vm.clone() else {
            return self.refuse(500, vec![], "edge filter not configured\n");
        };
        let mut vm = vm_rc.borrow_mut();
        // Claim headers are ours alone: a client never gets to set them.
        for (_, header) in &vm.config.claim_headers {
            self.set_http_request_header(header, None);
        }
        let path = self.text(":path");
        let method = self.text(":method");
        if is_bypassed(&vm.config.bypass_paths, &path)
            || (vm.config.cors_preflight_bypass
                && is_cors_preflight(
                    &method,
                    self.header("access-control-request-method").is_some(),
                ))
        {
            return Action::Continue;
        }
        vm.refresh();
        let now = now_ms();
        let freshness = if vm.is_stale(secs(now)) {
            Freshness::Stale
        } else {
            Freshness::Fresh
        };
        let authorization = self.header("authorization");
        let dpop = self.header("dpop");
        let scheme = self.text(":scheme");
        let authority = self.text(":authority");
        let req = Request {
            authorization: authorization.as_deref(),
            dpop: dpop.as_deref(),
            method: &method,
            scheme: &scheme,
            authority: &authority,
            path: &path,
        };
        let Vm {
            authorizer, set, ..
        } = &mut *vm;
        let outcome = authorizer.authorize(&req, set, freshness, secs(now));
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
                Action::Continue
            }
            Outcome::Deny { reason, cache_hit } => {
                if reason != Reason::Missing {
                    hit(cache_hit);
                }
                vm.metrics.denied(reason);
                let challenge = challenge(reason);
                self.refuse(
                    401,
                    vec![
                        ("www-authenticate", &challenge),
                        ("content-type", "application/json"),
                        ("cache-control", "no-store"),
                    ],
                    &error_body(reason),
                )
            }
            Outcome::Unavailable => {
                Metrics::inc(vm.metrics.unavailable);
                self.refuse(
                    503,
                    vec![
                        ("content-type", "application/json"),
                        ("retry-after", "1"),
                        ("cache-control", "no-store"),
                    ],
                    "{\"error\":\"temporarily_unavailable\",\"error_description\":\"revocation set is stale\"}\n",
                )
            }
        }
    }
}
