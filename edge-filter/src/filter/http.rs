//! The per-request path: claim headers cleared, bypass rules, the decision, and the
//! reply, sent only after the VM state is no longer borrowed.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, Status};

use super::metrics::Metrics;
use super::{Vm, now_ms, secs, shared_get};
use crate::authz::{Freshness, Outcome, Request};
use crate::reason::Reason;
use crate::replay::{self, ReplayGuard, Verdict};
use crate::request::{
    Preflight, challenge, error_body, is_bypassed, is_claim_header_alias, is_cors_preflight,
};

/// The DPoP replay cache in shared data: one compare-and-swap per proof.
pub(super) struct SharedReplay<'a> {
    prefix: &'a str,
    buckets: u32,
    full: Option<u32>,
}

impl SharedReplay<'_> {
    /// Creates missing buckets empty, so that every later write can compare-and-swap
    /// (a write to a missing key cannot, and two workers could both record a proof).
    pub(super) fn create_buckets(prefix: &str, buckets: u32) {
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
                        // Another worker wrote the bucket first: read it again.
                        Err(Status::CasMismatch) => {}
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

pub(super) struct Filter {
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
    pub(super) fn new(vm: Option<Rc<RefCell<Vm>>>) -> Filter {
        Filter { vm }
    }

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
        let dpop = header(headers, "dpop");
        // `:scheme` and `:authority` only matter to a DPoP proof's `htu`.
        let (scheme, authority) = if dpop.is_some() {
            (text(headers, ":scheme"), text(headers, ":authority"))
        } else {
            ("", "")
        };
        let req = Request {
            authorization: header(headers, "authorization"),
            dpop,
            dpop_headers: if dpop.is_some() {
                headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case("dpop"))
                    .count()
            } else {
                0
            },
            method,
            scheme,
            authority,
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
            Outcome::Deny {
                reason,
                cache_hit,
                challenge: scheme,
            } => {
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
                    challenge: Some(challenge(reason, scheme)),
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
