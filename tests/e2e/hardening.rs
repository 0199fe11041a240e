//! The edge findings of issue 7, each reproduced through real Envoy: a set the edge
//! cannot hold, forged claim headers, path tricks on prefix bypasses, loose CORS
//! preflights, DPoP proof duplicates and replays, and a key rotation.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::tokens::{self, claims, mint};
use tests::{eventually, http};

use crate::Stack;

fn feed_calls(stack: &Stack) -> u64 {
    stack.envoy.stat("cluster.control_plane.upstream_rq_total")
}

#[test]
fn a_set_over_max_revocations_is_stale_and_fails_closed_without_a_hot_loop() {
    let stack = Stack::start(|filter, _| filter["max_revocations"] = json!(3));
    let token = stack.cp.issue("alice");
    stack.envoy.wait_until_serving(&token);
    let port = stack.envoy.port;
    for n in 0..3 {
        stack.cp.revoke("jti", &format!("filler-{n}"));
    }
    // Three entries fit: the edge keeps serving (and knows the newest of them).
    std::thread::sleep(Duration::from_millis(1500));
    let r = http::get_with_token(port, "/orders", &token).expect("request");
    assert_eq!(r.status, 200, "a set at the limit is fine: {}", r.text());

    // The fourth does not fit; it is the very token in use, so serving it would be the
    // fail-open of the finding.
    let jti = tokens::payload(&token)["jti"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    stack.cp.revoke("jti", &jti);
    let refused = eventually(Duration::from_secs(5), || {
        http::get_with_token(port, "/orders", &token)
            .ok()
            .filter(|r| r.status != 200)
    })
    .expect("a set over the limit must not be served as fresh");
    assert_eq!(
        refused.status,
        503,
        "stale, fail closed: {}",
        refused.text()
    );
    assert!(
        stack
            .envoy
            .stat("wasmcustom.edge_filter.sync_refused.too_large")
            >= 1
    );
    // Backing off: a handful of feed calls in 3 s, not thousands.
    let before = feed_calls(&stack);
    std::thread::sleep(Duration::from_secs(3));
    let calls = feed_calls(&stack) - before;
    assert!(calls <= 15, "{calls} calls to the control plane in 3 s");
    for _ in 0..4 {
        let r = http::get_with_token(port, "/orders", &token).expect("request");
        assert_eq!(r.status, 503, "still stale: {}", r.text());
    }
}

/// Names the upstream saw, with their values.
fn seen_headers(stack: &Stack, id: &str) -> Vec<(String, String)> {
    stack
        .upstream
        .request_with_id(id)
        .unwrap_or_else(|| panic!("the upstream never saw {id}"))
}

#[test]
fn claim_headers_cannot_be_forged_with_underscores_even_when_envoy_allows_them() {
    // Envoy's defaults: header names with '_' are let through, so only the filter stands
    // between `x_auth_sub` and an upstream that reads it as `HTTP_X_AUTH_SUB`.
    let stack = Stack::start_with(|_, _| {}, &json!({}));
    let token = stack.cp.issue("alice");
    stack.envoy.wait_until_serving(&token);
    let authorization = format!("Bearer {token}");
    let forged = [
        ("x_auth_sub", "admin"),
        ("X_Auth-Scope", "admin"),
        ("x-auth_jti", "forged"),
        ("X-AUTH-SID", "forged"),
    ];
    let mut headers = vec![
        ("authorization", authorization.as_str()),
        ("x-test-id", "forge-1"),
    ];
    headers.extend(forged);
    let r = http::get(stack.envoy.port, "/orders", &headers).expect("request");
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = seen_headers(&stack, "forge-1");
    let folded = |n: &str| n.to_ascii_lowercase().replace('_', "-");
    for (name, value) in &seen {
        if folded(name).starts_with("x-auth-") {
            assert_eq!(name, &folded(name), "{name}: {value} reached the upstream");
            assert!(
                value != "admin" && value != "forged",
                "{name}: {value} reached the upstream"
            );
        }
    }
    let subs: Vec<&str> = seen
        .iter()
        .filter(|(n, _)| n == "x-auth-sub")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(subs, ["alice"]);

    // Without a token the forged names do not reach the upstream either (bypassed path).
    let r = http::get(
        stack.envoy.port,
        "/health",
        &[("x-test-id", "forge-2"), ("x_auth_sub", "admin")],
    )
    .expect("request");
    assert_eq!(r.status, 200);
    assert!(
        seen_headers(&stack, "forge-2")
            .iter()
            .all(|(n, _)| folded(n) != "x-auth-sub")
    );
}

#[test]
fn the_shipped_envoy_options_reject_header_names_with_underscores() {
    let stack = Stack::fetched_keys();
    let token = stack.cp.issue("alice");
    stack.envoy.wait_until_serving(&token);
    let authorization = format!("Bearer {token}");
    let r = http::get(
        stack.envoy.port,
        "/orders",
        &[
            ("authorization", &authorization),
            ("x-test-id", "underscore-1"),
            ("x_auth_sub", "admin"),
        ],
    )
    .expect("request");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(stack.upstream.request_with_id("underscore-1").is_none());
}

const ESCAPES: [&str; 9] = [
    "/public/../admin/secret",
    "/public/%2e%2e/admin/secret",
    "/public/%2E%2E/admin/secret",
    "/public/.%2e/admin/secret",
    "/public/./../admin/secret",
    "/public/x/../../admin/secret",
    "/public%2f..%2fadmin/secret",
    "/public/%2fadmin",
    "/public/%5c..%5cadmin",
];

fn bypass_stack(hcm_options: &Value) -> Stack {
    Stack::start_with(
        |filter, _| filter["bypass_paths"] = json!(["/health", "/public/*"]),
        hcm_options,
    )
}

fn status_without_token(stack: &Stack, path: &str) -> u16 {
    http::get(stack.envoy.port, path, &[])
        .map(|r| r.status)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn prefix_bypass_rules_match_the_normalised_path_without_envoy_normalisation() {
    // Envoy's defaults: no path normalisation, so the filter sees the raw path.
    let stack = bypass_stack(&json!({}));
    let token = stack.cp.issue("alice");
    stack.envoy.wait_until_serving(&token);
    for path in [
        "/public/logo.png",
        "/public/a/../b",
        "//public//logo.png",
        "/public/%61",
    ] {
        assert_eq!(status_without_token(&stack, path), 200, "{path} is public");
    }
    for path in ESCAPES {
        assert_eq!(
            status_without_token(&stack, path),
            401,
            "{path} needs a token"
        );
    }
}

#[test]
fn prefix_bypass_rules_hold_with_the_shipped_envoy_options() {
    let stack = bypass_stack(&tests::envoy::shipped_hcm_options());
    let token = stack.cp.issue("alice");
    stack.envoy.wait_until_serving(&token);
    for path in ["/public/logo.png", "/public/a/../b", "//public//logo.png"] {
        assert_eq!(status_without_token(&stack, path), 200, "{path} is public");
    }
    for path in ESCAPES {
        // Envoy itself may refuse some (400); none may reach the upstream.
        let status = status_without_token(&stack, path);
        assert!(status == 401 || status == 400, "{path}: {status}");
    }
}

#[test]
fn only_a_real_cors_preflight_bypasses_the_filter() {
    let stack = Stack::fetched_keys();
    let token = stack.cp.issue("alice");
    stack.envoy.wait_until_serving(&token);
    let options = |headers: &[(&str, &[u8])], body: &[u8]| {
        http::send(stack.envoy.port, "OPTIONS", "/orders", headers, body)
            .expect("OPTIONS")
            .status
    };
    let origin: (&str, &[u8]) = ("origin", b"https://app.example");
    let method: (&str, &[u8]) = ("access-control-request-method", b"POST");
    assert_eq!(options(&[origin, method], b""), 200, "a preflight");
    for (label, headers, body) in [
        ("no origin", vec![method], &b""[..]),
        (
            "empty method",
            vec![origin, ("access-control-request-method", &b""[..])],
            &b""[..],
        ),
        (
            "not a method",
            vec![origin, ("access-control-request-method", &b"GET, POST"[..])],
            &b""[..],
        ),
        ("no method", vec![origin], &b""[..]),
        ("a body", vec![origin, method], &b"smuggled"[..]),
    ] {
        assert_eq!(options(&headers, body), 401, "{label} is no preflight");
    }
    let chunked = "OPTIONS /orders HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\
         origin: https://app.example\r\naccess-control-request-method: POST\r\n\
         transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let r = http::raw(stack.envoy.port, chunked.as_bytes())
        .and_then(|bytes| http::parse(&bytes))
        .expect("chunked OPTIONS");
    assert_eq!(
        r.status,
        401,
        "a chunked body is no preflight: {}",
        r.text()
    );
}

#[test]
fn dpop_proofs_are_single_and_single_use() {
    use shared::dpop::{self, DpopClaims};
    use shared::keys::{Alg, SigningKey};

    let stack = Stack::with_test_key();
    let ready = mint(&claims("dave", "jti-ready", "sid-ready"));
    stack.envoy.wait_until_serving(&ready);
    let port = stack.envoy.port;
    let device = SigningKey::from_seed(Alg::EdDsa, &[9; 32]);
    let mut bound = claims("dave", "jti-replay", "sid-replay");
    bound["cnf"] = json!({ "jkt": device.kid() });
    let token = mint(&bound);
    let proof = |jti: &str| {
        let claims = DpopClaims {
            jti: jti.into(),
            htm: "GET".into(),
            htu: format!("http://127.0.0.1:{port}/orders"),
            iat: tokens::now(),
            ath: Some(dpop::ath(&token)),
            nonce: None,
        };
        dpop::sign_proof(&device, &claims).unwrap_or_default()
    };
    let authorization = format!("DPoP {token}");
    let send = |proofs: &[&str]| {
        let mut headers = vec![("authorization", authorization.as_str())];
        headers.extend(proofs.iter().map(|p| ("dpop", *p)));
        http::get(port, "/orders", &headers).expect("request")
    };
    let denied = |r: &http::Response, label: &str| {
        assert_eq!(r.status, 401, "{label}: {}", r.text());
        assert_eq!(
            r.json()["error_description"],
            "invalid_dpop_proof",
            "{label}"
        );
    };
    let first = proof("replay-1");
    assert_eq!(send(&[&first]).status, 200, "first use");
    // Fresh connections land on either worker: the cache is per Envoy, not per worker.
    for n in 0..4 {
        denied(&send(&[&first]), &format!("replay {n}"));
    }
    let second = proof("replay-2");
    denied(&send(&[&second, &second]), "two DPoP headers");
    denied(&send(&[&second, "garbage"]), "a second, unchecked proof");
    let joined = format!("{second}, {}", proof("replay-3"));
    denied(&send(&[&joined]), "comma-joined proofs");
    assert_eq!(
        send(&[&second]).status,
        200,
        "refused duplicates burn nothing"
    );
}

#[test]
fn a_token_from_a_rotated_key_passes_within_about_a_second() {
    // Long polls of 30 s: without a refetch on unknown `kid`, the new key would only be
    // learnt from the next heartbeat signed by it, up to 30 s later.
    let stack = Stack::start(|filter, _| {
        filter["control_plane"]["poll_wait_seconds"] = json!(30);
        filter["staleness_bound_seconds"] = json!(60);
    });
    let old = stack.cp.issue("erin");
    stack.envoy.wait_until_serving(&old);
    // Let the first long poll settle so no answer is in flight by chance.
    std::thread::sleep(Duration::from_millis(500));
    stack.cp.rotate_keys();
    let new = eventually(Duration::from_secs(10), || {
        let t = stack.cp.issue("erin");
        (tokens::kid(&t) != tokens::kid(&old)).then_some(t)
    })
    .expect("the control plane never signed with a new key");
    let start = Instant::now();
    let passed = eventually(Duration::from_secs(10), || {
        http::get_with_token(stack.envoy.port, "/orders", &new)
            .ok()
            .filter(|r| r.status == 200)
    });
    let elapsed = start.elapsed();
    assert!(passed.is_some(), "a token of the new key never passed");
    println!("new key accepted {elapsed:?} after its first token");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    // Learnt from the token's unknown `kid`, or before it from the feed's announcement of
    // the new JWKS (whichever came first).
    assert!(
        stack
            .envoy
            .stat("wasmcustom.edge_filter.jwks_unknown_kid_refetches")
            + stack
                .envoy
                .stat("wasmcustom.edge_filter.jwks_announced_refetches")
            >= 1
    );
}

#[test]
fn a_key_rotation_reaches_the_edge_with_the_next_feed_update_before_any_token_uses_it() {
    // Long polls of 30 s and a JWKS refresh of 300 s: only the feed's announcement of
    // the new JWKS (which wakes the parked poll) brings the key within seconds. New keys
    // sign 5 s after the rotation (production waits longer), so the announcing update is
    // still signed by the old key.
    let stack = Stack::start_with_env(&[("CP_KEY_ACTIVATION_SECONDS", "5")], |filter, _| {
        filter["control_plane"]["poll_wait_seconds"] = json!(30);
        filter["control_plane"]["jwks_refresh_seconds"] = json!(300);
        filter["staleness_bound_seconds"] = json!(60);
    });
    let old = stack.cp.issue("frank");
    stack.envoy.wait_until_serving(&old);
    std::thread::sleep(Duration::from_millis(500));
    let announced = "wasmcustom.edge_filter.jwks_announced_refetches";
    let before = stack.envoy.stat(announced);
    let start = Instant::now();
    stack.cp.rotate_keys();
    let fetched = eventually(Duration::from_secs(10), || {
        (stack.envoy.stat(announced) > before).then_some(())
    });
    let elapsed = start.elapsed();
    assert!(fetched.is_some(), "the edge never fetched the rotated JWKS");
    println!("rotated JWKS fetched by the edge {elapsed:?} after the rotation call");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    // A token of the new key (once it signs) passes without a refetch on its `kid`.
    let unknown = "wasmcustom.edge_filter.jwks_unknown_kid_refetches";
    let unknown_before = stack.envoy.stat(unknown);
    let new = eventually(Duration::from_secs(15), || {
        let t = stack.cp.issue("frank");
        (tokens::kid(&t) != tokens::kid(&old)).then_some(t)
    })
    .expect("the control plane never signed with a new key");
    let response = http::get_with_token(stack.envoy.port, "/orders", &new).expect("GET");
    assert_eq!(response.status, 200, "the first token of the new key");
    assert_eq!(
        stack.envoy.stat(unknown),
        unknown_before,
        "the key was not there before its first token"
    );
}
