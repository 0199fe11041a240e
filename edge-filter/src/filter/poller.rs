//! The root context of each VM: configuration, the poller lease, and the feed and JWKS
//! calls of the VM that holds it, published to every VM through shared data.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use log::{info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, Status};
use shared::edgeset::{EdgeSetError, EdgeUpdate, RevocationSet};
use shared::{JoseError, JwkSet, Keyring};

use super::http::{Filter, SharedReplay};
use super::metrics::{Metrics, SyncRefusal};
use super::{LEASE_TTL_MS, TICK, Vm, now_ms, secs, shared_get};
use crate::authz::{Authorizer, Rules};
use crate::config::{Config, KeySource, OnStale, RETRY_CAP_MILLIS, Role, instance_from_node_id};
use crate::request::fold_header_name;
use crate::sync::{self, Keys, Lease, Refused, StateRecord};

/// A call the poller has in flight.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Feed(u32),
    Jwks(u32),
}

#[derive(Default)]
pub(super) struct Root {
    vm: Option<Rc<RefCell<Vm>>>,
    vm_number: u64,
    /// This root context is the singleton poller service (`role: poller`).
    service: bool,
    /// This VM held the lease at its last tick.
    polling: bool,
    /// `generation()` of the set whose arrays this poller last published; `None` until it
    /// has, or after a failed publish: the next publish includes the arrays.
    published_generation: Option<u64>,
    in_flight: Vec<Call>,
    next_poll_ms: u64,
    next_jwks_ms: u64,
    want_snapshot: bool,
    /// The feed the set this poller applied came from (`None`: a control plane that names
    /// none); a delta of another feed is never applied (see `sync::accept_from_feed`).
    feed: Option<String>,
    /// This VM's poller has applied an update since it took the lease.
    synced: bool,
    /// Feed calls that failed in a row: the pause before the next one doubles with each.
    failures: u32,
    /// Last `jwks_wanted` value acted on, and when the last such refetch started (ms).
    jwks_wanted_seen: u64,
    last_refetch_ms: u64,
    /// The JWKS digest (`shared::edgeset::jwks_digest`) of the JWKS in shared data, as
    /// this poller last computed it; `None`: not computed yet.
    held_jwks_digest: Option<String>,
    /// The last JWKS digest a feed update announced that made this poller refetch: a
    /// digest the fetched document never matches (a proxy rewriting it) costs one
    /// refetch, not one per update.
    announced_jwks_digest: Option<String>,
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

    /// Claims or renews the lease; logs when this VM starts or stops polling.
    fn holds_lease(&mut self, keys: &Keys, now: u64) -> bool {
        let (bytes, cas) = shared_get(&keys.lease);
        let current = bytes.as_deref().and_then(Lease::decode);
        let held = Lease::claim(current, self.vm_number, self.service, now, LEASE_TTL_MS)
            .is_some_and(|lease| {
                proxy_wasm::hostcalls::set_shared_data(&keys.lease, Some(&lease.encode()), cas)
                    .is_ok()
            });
        if held != self.polling {
            self.polling = held;
            self.published_generation = None;
            let who = if self.service {
                "the poller service"
            } else {
                "filter VM"
            };
            if held {
                info!(
                    "edge-filter: {who} (vm {}) polls the control plane",
                    self.vm_number
                );
            } else {
                info!("edge-filter: {who} (vm {}) stopped polling", self.vm_number);
            }
        }
        held
    }

    /// Still the poller: an answer to a call made before the lease moved is dropped.
    fn still_polling(&self, keys: &Keys, now: u64) -> bool {
        let current = shared_get(&keys.lease).0.as_deref().and_then(Lease::decode);
        Lease::is_held_by(current, self.vm_number, now)
    }

    /// Calls the control plane; `feed` calls carry the edge credential and instance name
    /// (the JWKS is public: the credential goes nowhere it is not needed).
    fn dispatch(vm: &Vm, path: &str, timeout: Duration, feed: bool) -> Result<u32, Status> {
        let cp = &vm.config.control_plane;
        let bearer = (cp.edge_credential.as_ref())
            .filter(|_| feed)
            .map(|c| format!("Bearer {c}"));
        let mut headers = vec![
            (":method", "GET"),
            (":path", path),
            (":authority", cp.authority.as_str()),
            ("accept", "application/jose, application/json"),
        ];
        if let Some(bearer) = &bearer {
            headers.push(("authorization", bearer));
        }
        if let Some(instance) = cp.edge_instance.as_deref().filter(|_| feed) {
            headers.push(("x-edge-instance", instance));
        }
        proxy_wasm::hostcalls::dispatch_http_call(&cp.cluster, headers, None, vec![], timeout)
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
            match Self::dispatch(&vm, &cp.jwks_path, Duration::from_secs(10), false) {
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
        match Self::dispatch(&vm, &path, timeout, true) {
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
            Err(EdgeSetError::TooManyEntries(n)) => {
                return Err(self.too_large(vm, &format!("would hold {n} entries"), now));
            }
            // An answer too long to hold the limit's worth of entries is a set over the
            // limit too (the control plane sends nothing else that large); treating it as
            // a mere bad update would keep the set fresh until the staleness bound.
            Err(EdgeSetError::Envelope(JoseError::TooLarge { len, .. })) => {
                return Err(self.too_large(vm, &format!("came as {len} bytes"), now));
            }
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
        if let Some(digest) = update.jwks.as_deref() {
            self.on_announced_jwks(vm, digest);
        }
        // The newest verified update says what its revocations assume (heartbeats too).
        let feed_leeway = update.leeway;
        // Applied in place (no copy of a large set per delta): a refused update leaves the
        // set as it was, and if publishing fails below, the next publish has it all.
        let changed =
            match sync::accept_from_feed(&mut vm.set, &mut self.feed, update, secs(now), max) {
                Ok(changed) => changed,
                Err(Refused::Gap(e)) => {
                    self.want_snapshot = true;
                    return Err((SyncRefusal::Gap, format!("asking for a snapshot: {e}")));
                }
                Err(Refused::OtherFeed { held, got }) => {
                    // Its sequence numbers count in another history: only a snapshot is safe.
                    self.want_snapshot = true;
                    return Err((
                        SyncRefusal::Gap,
                        format!(
                            "update of feed {} on a set of feed {}: asking for a snapshot",
                            got.as_deref().unwrap_or("(none)"),
                            held.as_deref().unwrap_or("(none)")
                        ),
                    ));
                }
                Err(Refused::Rollback) => {
                    return Err((
                        SyncRefusal::Rollback,
                        "update older than the set: refused".into(),
                    ));
                }
                Err(Refused::TooLarge(n)) => {
                    return Err(self.too_large(vm, &format!("would hold {n} entries"), now));
                }
            };
        self.want_snapshot = false;
        let published = self.publish_set(vm, changed, feed_leeway, now);
        if published.is_err() {
            // The set this VM holds is ahead of what the other VMs can see: the next
            // publish includes the arrays, whatever it adds.
            self.published_generation = None;
        }
        published?;
        vm.refresh();
        self.synced = true;
        Ok(now)
    }

    /// Publishes what `accept` changed in the VM's set, and the state record (with the
    /// update's `feed_leeway`): the recent entries alone when the arrays are those this
    /// poller last published, else the arrays too.
    fn publish_set(
        &mut self,
        vm: &mut Vm,
        changed: bool,
        feed_leeway: Option<u32>,
        now: u64,
    ) -> Result<(), (SyncRefusal, String)> {
        let publish = |e: String| (SyncRefusal::Publish, e);
        let (version, recent_version) = if changed {
            let rebuilt = self.published_generation != Some(vm.set.generation());
            let version = if rebuilt {
                let version = vm.state.set_version.wrapping_add(1).max(1);
                let blob = sync::encode_set(version, &vm.set);
                proxy_wasm::hostcalls::set_shared_data(&vm.keys.set, Some(&blob), None)
                    .map_err(|e| publish(format!("cannot publish the set: {e:?}")))?;
                self.published_generation = Some(vm.set.generation());
                version
            } else {
                vm.state.set_version
            };
            let recent_version = vm.state.recent_version.wrapping_add(1).max(1);
            let blob = sync::encode_recent(recent_version, version, &vm.set);
            proxy_wasm::hostcalls::set_shared_data(&vm.keys.recent, Some(&blob), None)
                .map_err(|e| publish(format!("cannot publish the recent entries: {e:?}")))?;
            (version, recent_version)
        } else {
            (vm.state.set_version, vm.state.recent_version)
        };
        let (seq, generated_at) = (vm.set.seq(), vm.set.generated_at());
        let was_refused = vm.state.refused_at != 0;
        let published = vm.publish_state(|s| {
            s.set_version = version;
            s.recent_version = recent_version;
            s.seq = seq;
            s.generated_at = generated_at;
            s.verified_at = secs(now);
            s.refused_at = 0;
            s.feed_leeway = feed_leeway;
        });
        if !published {
            return Err(publish("cannot publish the state".into()));
        }
        Metrics::inc(vm.metrics.sync_updates);
        if changed || was_refused {
            info!(
                "edge-filter: revocation set at seq {seq} with {} entries published",
                vm.set.len()
            );
        }
        // This VM holds exactly what it published: no need to load it back.
        vm.set_version = version;
        vm.recent_version = recent_version;
        vm.failed_set_version = None;
        vm.failed_recent_version = None;
        Ok(())
    }

    /// An update this edge cannot hold: the set is marked stale at once (revocations
    /// exist that it would not enforce) and the next poll asks for a snapshot, which
    /// fits again once the control plane's live set shrinks or the limit is raised.
    fn too_large(&mut self, vm: &mut Vm, what: &str, now: u64) -> (SyncRefusal, String) {
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
                "the revocation set {what}, over max_revocations = {}: \
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

    /// A verified update named the JWKS its control plane serves: when it is not the one
    /// held, fetch it now (a key rotation reaches the edge with the next update, see
    /// `shared::edgeset`, "The keys an edge should hold").
    fn on_announced_jwks(&mut self, vm: &Vm, digest: &str) {
        if !matches!(vm.config.keys, KeySource::Fetched)
            || self.announced_jwks_digest.as_deref() == Some(digest)
        {
            return;
        }
        if self.held_jwks_digest.is_none() {
            self.held_jwks_digest = shared_get(&vm.keys.jwks)
                .0
                .as_deref()
                .and_then(sync::unversioned)
                .map(|(_, body)| shared::edgeset::jwks_digest(body));
        }
        if self.held_jwks_digest.as_deref() != Some(digest) {
            self.announced_jwks_digest = Some(digest.to_owned());
            self.next_jwks_ms = 0;
            Metrics::inc(vm.metrics.jwks_announced_refetches);
        }
    }

    fn on_jwks(&mut self, vm: &mut Vm, body: Option<Vec<u8>>) -> Result<(), JwksError> {
        let body = body.ok_or(JwksError::NoResponse)?;
        self.held_jwks_digest = None;
        let ring = JwkSet::parse(&body)
            .and_then(|set| Keyring::from_jwks(&set))
            .map_err(JwksError::Refused)?;
        if ring.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        self.held_jwks_digest = Some(shared::edgeset::jwks_digest(&body));
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
        .map_err(JwksError::Publish)?;
        if !vm.publish_state(|s| s.jwks_version = version) {
            return Err(JwksError::PublishState);
        }
        info!("edge-filter: JWKS with {} keys published", ring.len());
        vm.refresh();
        Ok(())
    }
}

/// Why a fetched JWKS was not published (logged; the fetch is retried).
#[derive(Debug)]
enum JwksError {
    /// The call failed, or answered other than 200 with a body.
    NoResponse,
    /// The document is no JWKS this filter takes.
    Refused(JoseError),
    /// The document holds no key of an algorithm this filter verifies.
    NoUsableKey,
    /// The host refused to store the JWKS in shared data.
    Publish(Status),
    /// The host refused to store the state record naming the new JWKS version.
    PublishState,
}

impl std::fmt::Display for JwksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksError::NoResponse => f.write_str("no usable response"),
            JwksError::Refused(e) => write!(f, "JWKS refused: {e}"),
            JwksError::NoUsableKey => f.write_str("JWKS has no usable key"),
            JwksError::Publish(status) => write!(f, "cannot publish the JWKS: {status:?}"),
            JwksError::PublishState => f.write_str("cannot publish the state"),
        }
    }
}

/// The refusal of a feed answer 401: the control plane does not take this edge's
/// credential (missing, wrong or revoked).
fn refused_credential(vm: &Vm) -> (SyncRefusal, String) {
    let what = if vm.config.control_plane.edge_credential.is_some() {
        "refused control_plane.edge_credential (wrong or revoked?)"
    } else {
        "requires an edge credential: set control_plane.edge_credential"
    };
    (
        SyncRefusal::Unauthorized,
        format!("the control plane {what}; the set goes stale at staleness_bound_seconds"),
    )
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
        if !self.still_polling(&vm_rc.borrow().keys, now) {
            // The lease moved (the poller service started): the new poller publishes.
            return;
        }
        // A refused credential is told apart from other failures: it needs the operator.
        let unauthorized = matches!(call, Call::Feed(_))
            && self.get_http_call_response_header(":status").as_deref() == Some("401");
        let body = self.response_body(body_size);
        let mut vm = vm_rc.borrow_mut();
        let retry = vm.config.control_plane.retry_millis;
        match call {
            Call::Feed(_) => match if unauthorized {
                Err(refused_credential(&vm))
            } else {
                self.on_feed(&mut vm, body, now)
            } {
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
            Ok(mut c) => {
                if c.control_plane.edge_instance.is_none() {
                    c.control_plane.edge_instance = self
                        .get_property(vec!["node", "id"])
                        .and_then(|id| String::from_utf8(id).ok())
                        .and_then(|id| instance_from_node_id(&id));
                }
                c
            }
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
        let mut authorizer = Authorizer::new(
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
        authorizer.set_dpop_origins(config.dpop_origins.clone());
        self.vm_number = Root::allocate_vm_number(&keys);
        self.service = config.role == Role::Poller;
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
            recent_version: 0,
            jwks_version: 0,
            state: StateRecord::default(),
            metrics: Metrics::define(),
            folded_claim_headers,
            failed_set_version: None,
            failed_recent_version: None,
            last_kid_signal_ms: 0,
        };
        SharedReplay::create_buckets(&vm.keys.dpop_replay, vm.config.dpop_replay_buckets);
        vm.refresh();
        self.vm = Some(Rc::new(RefCell::new(vm)));
        self.in_flight.clear();
        self.next_poll_ms = 0;
        self.next_jwks_ms = 0;
        self.set_tick_period(TICK);
        info!(
            "edge-filter: configured (vm {}{})",
            self.vm_number,
            if self.service {
                ", the poller service"
            } else {
                ""
            }
        );
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
            // Again per tick: a reconfigured VM starts with the gauge where it was.
            vm.record_leeway_clamp();
        }
        let keys = vm_rc.borrow().keys.clone();
        if self.holds_lease(&keys, now) {
            self.drive(now);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter::new(self.vm.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
