//! Revocations made at the control plane reach the edge within the propagation bound.

use std::time::{Duration, Instant};

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
