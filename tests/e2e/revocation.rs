//! Revocations made at the control plane reach the edge within the propagation bound.

use std::time::{Duration, Instant};

use serde_json::json;
use shared::edgeset::EdgeUpdate;
use shared::{JwkSet, Keyring};
use tests::envoy::{Poller, shipped_hcm_options};
use tests::tokens::{self, claims, mint};
use tests::{eventually, http};

use crate::Stack;

/// Longest wait before a revocation counts as lost (a failure bound, not a measurement).
const PROPAGATION_BOUND: Duration = Duration::from_secs(15);

/// Revokes, then measures until the edge answers `revoked`; later requests stay refused.
fn revoke_and_measure(stack: &Stack, kind: &str, value: &str, token: &str) -> Duration {
    let port = stack.envoy.port;
    // Several requests on fresh connections warm the cache of every worker.
    for _ in 0..6 {
        let r = http::get_with_token(port, "/orders", token).expect("request");
        assert_eq!(r.status, 200, "{kind}: before revocation: {}", r.text());
    }
    let start = Instant::now();
    stack.cp.revoke(kind, value);
    let acknowledged = start.elapsed();
    let refused = eventually(PROPAGATION_BOUND, || {
        http::get_with_token(port, "/orders", token)
            .ok()
            .filter(|r| r.status == 401)
    });
    let elapsed = start.elapsed();
    let refused = refused
        .unwrap_or_else(|| panic!("revoke {kind}: still accepted after {PROPAGATION_BOUND:?}"));
    assert_eq!(refused.json()["error_description"], "revoked");
    for _ in 0..6 {
        let r = http::get_with_token(port, "/orders", token).expect("request");
        assert_eq!(
            r.status, 401,
            "{kind}: every worker enforces the revocation"
        );
    }
    println!(
        "revoke {kind}: refused at the edge {elapsed:?} after the request (control plane acknowledged after {acknowledged:?})"
    );
    elapsed
}

#[test]
fn revoking_a_jti_sub_sid_or_kid_refuses_the_next_requests_within_the_propagation_bound() {
    let stack = Stack::with_test_key();
    let issued = stack.cp.issue("dave");
    stack.envoy.wait_until_serving(&issued);
    let jti = tokens::payload(&issued)["jti"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut times = vec![revoke_and_measure(&stack, "jti", &jti, &issued)];

    let by_sub = mint(&claims("erin", "jti-erin", "sid-erin"));
    times.push(revoke_and_measure(&stack, "sub", "erin", &by_sub));

    let by_sid = mint(&claims("frank", "jti-frank", "sid-frank"));
    times.push(revoke_and_measure(&stack, "sid", "sid-frank", &by_sid));

    // Last: revoking the test key's kid refuses every token the tests mint.
    let by_kid = mint(&claims("grace", "jti-grace", "sid-grace"));
    let kid = tokens::kid(&by_kid);
    times.push(revoke_and_measure(&stack, "kid", &kid, &by_kid));

    // A new token of a revoked subject issued later is accepted again.
    let fresh = stack.cp.issue("dave");
    let r = http::get_with_token(stack.envoy.port, "/orders", &fresh).expect("request");
    assert_eq!(r.status, 200, "a new token is unaffected: {}", r.text());
    println!(
        "propagation: max {:?} over {} revocations",
        times.iter().max().copied().unwrap_or_default(),
        times.len()
    );
}

/// The VM that polls last, from the filter's log ("... (vm N) polls the control plane").
fn last_poller(stack: &Stack) -> Option<String> {
    stack
        .envoy
        .filter_log()
        .into_iter()
        .rfind(|l| l.ends_with("polls the control plane"))
}

#[test]
fn the_poller_service_polls_for_every_worker_and_revocations_reach_them() {
    let stack = Stack::fetched_keys();
    let issued = stack.cp.issue("heidi");
    stack.envoy.wait_until_serving(&issued);
    // A filter VM may hold the lease for a tick before the service's first one, and
    // Envoy writes its log out in batches.
    let service = eventually(Duration::from_secs(20), || {
        last_poller(&stack).filter(|l| l.starts_with("the poller service"))
    });
    assert!(
        service.is_some(),
        "the service never took the lease: {:?}",
        stack.envoy.filter_log()
    );
    let jti = tokens::payload(&issued)["jti"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    revoke_and_measure(&stack, "jti", &jti, &issued);
    std::thread::sleep(Duration::from_secs(3));
    // No filter VM took the lease back while the service renewed it.
    assert!(
        last_poller(&stack).is_some_and(|l| l.starts_with("the poller service")),
        "{:?}",
        stack.envoy.filter_log()
    );
}

#[test]
fn without_the_poller_service_a_filter_vm_polls_and_revocations_reach_every_worker() {
    let stack = Stack::start_polled_by(|_, _| {}, &shipped_hcm_options(), Poller::FilterVm);
    let issued = stack.cp.issue("ivan");
    stack.envoy.wait_until_serving(&issued);
    // Envoy writes its log out in batches: wait for the line.
    let filter_vm = eventually(Duration::from_secs(20), || {
        last_poller(&stack).filter(|l| l.starts_with("filter VM"))
    });
    assert!(filter_vm.is_some(), "{:?}", stack.envoy.filter_log());
    let jti = tokens::payload(&issued)["jti"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    revoke_and_measure(&stack, "jti", &jti, &issued);
}

/// The leeway the control plane's feed says its revocations assume (from a snapshot
/// fetched as the filter fetches it).
fn feed_leeway(stack: &Stack) -> u32 {
    let jwks = stack.cp.jwks().to_string();
    let keys = JwkSet::parse(jwks.as_bytes())
        .and_then(|set| Keyring::from_jwks(&set))
        .expect("the control plane's JWKS");
    let bearer = format!("Bearer {}", stack.cp.edge_credential());
    let r = http::get(
        stack.cp.port,
        "/v1/edge/revocations",
        &[("authorization", &bearer)],
    )
    .expect("GET the feed");
    assert_eq!(r.status, 200, "feed: {}", r.text());
    EdgeUpdate::open(r.text().trim(), &keys, 100_000)
        .expect("a signed update")
        .leeway
        .expect("the feed says the leeway its revocations assume")
}

#[test]
fn an_edge_configured_with_more_leeway_than_the_feed_assumes_is_clamped_to_it() {
    // The edge's maximum: over any leeway a control plane's revocations assume.
    let configured = 3600;
    let stack = Stack::start(|filter, jwks| {
        let mut keys = jwks["keys"].as_array().cloned().unwrap_or_default();
        keys.push(tokens::test_jwk());
        filter["jwks"] = json!({ "keys": keys });
        filter["leeway_seconds"] = json!(configured);
    });
    stack
        .envoy
        .wait_until_serving(&mint(&claims("judy", "jti-judy", "sid-judy")));
    let feed = i64::from(feed_leeway(&stack));
    assert!(
        (10..configured - 60).contains(&feed),
        "a feed leeway of {feed} s leaves nothing to show"
    );
    let expired_ago = |ago: i64, jti: &str| {
        let mut c = claims("judy", jti, "sid-judy");
        let now = tokens::now();
        c["exp"] = json!(now - ago);
        c["iat"] = json!(now - ago - 300);
        c["nbf"] = json!(now - ago - 300);
        mint(&c)
    };
    // Within what the revocations cover: still a clock difference.
    let r = http::get_with_token(
        stack.envoy.port,
        "/orders",
        &expired_ago(feed / 2, "jti-in"),
    )
    .expect("request");
    assert_eq!(r.status, 200, "within the feed's leeway: {}", r.text());
    // Past it, though within leeway_seconds: a revocation of this token may be gone.
    for _ in 0..10 {
        let r = http::get_with_token(
            stack.envoy.port,
            "/orders",
            &expired_ago(feed + 60, "jti-past"),
        )
        .expect("request");
        assert_eq!(r.status, 401, "past the feed's leeway: {}", r.text());
        assert_eq!(r.json()["error_description"], "expired");
    }
    // Counted and logged once per change, naming both values.
    let gauge = "wasmcustom.edge_filter.leeway_clamped_seconds";
    let clamped = eventually(Duration::from_secs(5), || {
        Some(stack.envoy.stat(gauge)).filter(|&v| v > 0)
    });
    assert_eq!(clamped, Some((configured - feed) as u64), "{gauge}");
    let line = format!("leeway_seconds = {configured} clamped to {feed} for exp");
    let logged = eventually(Duration::from_secs(20), || {
        let log = stack.envoy.filter_log();
        let n = log.iter().filter(|l| l.starts_with(&line)).count();
        (n > 0).then_some(n)
    });
    // One line per filter VM (Envoy's main thread and each worker), not one per request.
    let filter_vms = stack
        .envoy
        .filter_log()
        .iter()
        .filter(|l| l.starts_with("configured (vm") && !l.contains("poller service"))
        .count();
    assert!(
        logged.is_some_and(|n| n <= filter_vms && n < 10),
        "{logged:?} lines for {filter_vms} filter VMs: {:?}",
        stack.envoy.filter_log()
    );
}
