//! Valid tokens pass with their claims; every refusal carries its reason.

use serde_json::json;
use tests::http;
use tests::tokens::{self, claims, forge, mint, mint_with, stranger_key};

use crate::Stack;

#[test]
fn a_valid_token_passes_and_its_claims_reach_the_upstream() {
    let stack = Stack::fetched_keys();
    let token = stack.cp.issue("alice");
    stack.envoy.wait_until_serving(&token);
    let response = http::get(
        stack.envoy.port,
        "/orders?page=1",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-test-id", "valid-1"),
            // A client cannot smuggle its own identity past the filter.
            ("x-auth-sub", "mallory"),
        ],
    )
    .expect("request through envoy");
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = stack
        .upstream
        .request_with_id("valid-1")
        .expect("the upstream never saw the request");
    let values = |name: &str| -> Vec<&str> {
        seen.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(values("x-auth-sub"), ["alice"]);
    let jti = tokens::payload(&token)["jti"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert_eq!(values("x-auth-jti"), [jti.as_str()]);
    assert!(
        values("authorization").is_empty(),
        "authorization is stripped"
    );

    let health = http::get(stack.envoy.port, "/health", &[]).expect("health");
    assert_eq!(health.status, 200, "health checks bypass the filter");
    let preflight = http::send(
        stack.envoy.port,
        "OPTIONS",
        "/orders",
        &[
            ("origin", b"https://app.example"),
            ("access-control-request-method", b"POST"),
        ],
        b"",
    )
    .expect("preflight");
    assert_eq!(preflight.status, 200, "CORS preflight bypasses the filter");
    assert!(stack.envoy.stat("wasmcustom.edge_filter.allowed") >= 2);
}

#[test]
fn each_rejection_reason_is_produced_and_reported() {
    let stack = Stack::with_test_key();
    let issued = stack.cp.issue("bob");
    stack.envoy.wait_until_serving(&issued);
    let now = tokens::now();
    let with = |patch: serde_json::Value| {
        let mut c = claims("carol", "jti-reasons", "sid-reasons");
        for (k, v) in patch.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        format!("Bearer {}", mint(&c))
    };
    let cases = [
        (None, "missing"),
        (Some("Bearer not-a-jws".to_owned()), "malformed"),
        (
            Some(format!(
                "Bearer {}",
                mint_with(&stranger_key(), &claims("carol", "j", "s"))
            )),
            "unknown_key",
        ),
        (Some(format!("Bearer {}", forge(&issued))), "bad_signature"),
        (
            Some(with(
                json!({"exp": now - 300, "iat": now - 900, "nbf": now - 900}),
            )),
            "expired",
        ),
        (Some(with(json!({"nbf": now + 600}))), "not_yet_valid"),
        (
            Some(with(json!({"iss": "https://elsewhere"}))),
            "wrong_issuer",
        ),
        (
            Some(with(json!({"aud": ["another-api"]}))),
            "wrong_audience",
        ),
    ];
    for (authorization, reason) in cases {
        let headers: Vec<(&str, &str)> = authorization
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let response = http::get(stack.envoy.port, "/orders", &headers).expect("request");
        assert_eq!(response.status, 401, "{reason}: {}", response.text());
        assert_eq!(
            response.header("www-authenticate"),
            Some(
                format!("Bearer error=\"invalid_token\", error_description=\"{reason}\"").as_str()
            ),
            "{reason}"
        );
        assert_eq!(response.json()["error_description"], reason);
        assert!(
            stack
                .envoy
                .stat(&format!("wasmcustom.edge_filter.denied.{reason}"))
                >= 1,
            "metric for {reason}"
        );
    }
    assert!(
        stack.upstream.request_with_id("never").is_none(),
        "sanity: ids are per request"
    );
}

#[test]
fn a_dpop_bound_token_passes_only_with_a_proof_from_its_device_key() {
    use shared::dpop::{self, DpopClaims};
    use shared::keys::{Alg, SigningKey};

    let stack = Stack::with_test_key();
    let ready = mint(&claims("dave", "jti-ready", "sid-ready"));
    stack.envoy.wait_until_serving(&ready);
    let port = stack.envoy.port;
    for alg in [Alg::EdDsa, Alg::MlDsa65] {
        let device = SigningKey::from_seed(alg, &[7; 32]);
        let other = SigningKey::from_seed(alg, &[8; 32]);
        let mut bound = claims("dave", "jti-bound", "sid-bound");
        bound["cnf"] = json!({ "jkt": device.kid() });
        let token = mint(&bound);
        let proof = |key: &SigningKey, htm: &str, path: &str, jti: &str| {
            let claims = DpopClaims {
                jti: jti.into(),
                htm: htm.into(),
                htu: format!("http://127.0.0.1:{port}{path}"),
                iat: tokens::now(),
                ath: Some(dpop::ath(&token)),
                nonce: None,
            };
            dpop::sign_proof(key, &claims).unwrap_or_default()
        };
        let send = |proof: Option<String>| {
            let authorization = format!("DPoP {token}");
            let mut headers = vec![("authorization", authorization.as_str())];
            if let Some(p) = proof.as_deref() {
                headers.push(("dpop", p));
            }
            http::get(port, "/orders?page=2", &headers).expect("request")
        };
        let ok = send(Some(proof(&device, "GET", "/orders", "p-1")));
        assert_eq!(ok.status, 200, "{alg:?}: {}", ok.text());
        for (label, bad) in [
            ("no proof", None),
            ("another key", Some(proof(&other, "GET", "/orders", "p-2"))),
            (
                "another method",
                Some(proof(&device, "POST", "/orders", "p-3")),
            ),
            ("another path", Some(proof(&device, "GET", "/admin", "p-4"))),
        ] {
            let refused = send(bad);
            assert_eq!(refused.status, 401, "{alg:?} {label}: {}", refused.text());
            assert_eq!(
                refused.json()["error_description"],
                "invalid_dpop_proof",
                "{alg:?} {label}"
            );
        }
    }
}
