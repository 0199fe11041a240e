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
    for alg in [Alg::EdDsa, Alg::Es256, Alg::MlDsa65] {
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
        if alg == Alg::EdDsa {
            // The RFC 9864 name, as current libraries sign: the same key, `alg: Ed25519`.
            let header = json!({ "typ": "dpop+jwt", "alg": "Ed25519",
                                 "jwk": device.verifying_key().to_jwk() });
            let claims = json!({ "jti": "p-named", "htm": "GET", "iat": tokens::now(),
                                 "htu": format!("http://127.0.0.1:{port}/orders"),
                                 "ath": dpop::ath(&token) });
            let input = format!(
                "{}.{}",
                shared::b64::encode(header.to_string().as_bytes()),
                shared::b64::encode(claims.to_string().as_bytes())
            );
            let signature = device.sign(input.as_bytes()).expect("sign");
            let named = format!("{input}.{}", shared::b64::encode(&signature));
            let ok = send(Some(named));
            assert_eq!(ok.status, 200, "Ed25519-named proof: {}", ok.text());
        }
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

#[test]
fn every_refusal_of_a_dpop_request_carries_the_dpop_challenge() {
    use shared::dpop::{self, DpopClaims};
    use shared::keys::{Alg, SigningKey};
    use std::time::Duration;

    let stack = Stack::with_test_key();
    let ready = mint(&claims("erin", "jti-ready", "sid-ready"));
    stack.envoy.wait_until_serving(&ready);
    let port = stack.envoy.port;
    let device = SigningKey::from_seed(Alg::EdDsa, &[11; 32]);
    let other = SigningKey::from_seed(Alg::EdDsa, &[12; 32]);
    let now = tokens::now();
    let bound = |jti: &str, exp: i64| {
        let mut c = claims("erin", jti, "sid-challenge");
        c["cnf"] = json!({ "jkt": device.kid() });
        c["exp"] = json!(exp);
        c["iat"] = json!(exp - 900);
        c["nbf"] = json!(exp - 900);
        mint(&c)
    };
    let proof = |key: &SigningKey, token: &str, jti: &str| {
        let claims = DpopClaims {
            jti: jti.into(),
            htm: "GET".into(),
            htu: format!("http://127.0.0.1:{port}/orders"),
            iat: tokens::now(),
            ath: Some(dpop::ath(token)),
            nonce: None,
        };
        dpop::sign_proof(key, &claims).unwrap_or_default()
    };
    let send = |scheme: &str, token: &str, proof: Option<&str>| {
        let authorization = format!("{scheme} {token}");
        let mut headers = vec![("authorization", authorization.as_str())];
        if let Some(p) = proof {
            headers.push(("dpop", p));
        }
        http::get(port, "/orders", &headers).expect("request")
    };
    let expect = |r: &http::Response, error: &str, reason: &str, label: &str| {
        assert_eq!(r.status, 401, "{label}: {}", r.text());
        let challenge = r.header("www-authenticate").unwrap_or_default();
        let expected = format!("DPoP error=\"{error}\", error_description=\"{reason}\", algs=\"");
        let algs = challenge
            .strip_prefix(expected.as_str())
            .and_then(|rest| rest.strip_suffix('"'))
            .unwrap_or_else(|| panic!("{label}: {challenge}"));
        assert_eq!(algs, dpop::PROOF_ALGS_CHALLENGE, "{label}: {challenge}");
        assert_eq!(r.json()["error"], error, "{label}");
        assert_eq!(r.json()["error_description"], reason, "{label}");
    };
    let live = bound("jti-challenge", now + 600);
    let first = proof(&device, &live, "c-1");
    assert_eq!(send("DPoP", &live, Some(&first)).status, 200);
    let bad_proof = |r: &http::Response, label: &str| {
        expect(r, "invalid_dpop_proof", "invalid_dpop_proof", label)
    };
    bad_proof(&send("DPoP", &live, Some(&first)), "replayed proof");
    bad_proof(&send("DPoP", &live, None), "no proof");
    bad_proof(
        &send("DPoP", &live, Some(&proof(&other, &live, "c-2"))),
        "another key's proof",
    );
    bad_proof(&send("Bearer", &live, None), "a bound token sent as bearer");
    let old = bound("jti-challenge-old", now - 300);
    expect(
        &send("DPoP", &old, Some(&proof(&device, &old, "c-3"))),
        "invalid_token",
        "expired",
        "expired",
    );
    stack.cp.revoke("jti", "jti-challenge");
    let mut attempt = 0;
    let revoked = tests::eventually(Duration::from_secs(10), || {
        // A fresh proof each time: a reused one would be refused as replayed.
        attempt += 1;
        let jti = format!("c-4-{attempt}");
        let r = send("DPoP", &live, Some(&proof(&device, &live, &jti)));
        (r.status == 401).then_some(r)
    })
    .expect("the revocation reaches the edge");
    expect(&revoked, "invalid_token", "revoked", "revoked");
    // A bearer request with an unbound token keeps the bearer challenge.
    let plain = send(
        "Bearer",
        &mint(&claims("erin", "jti-plain", "sid-plain")),
        None,
    );
    assert_eq!(plain.status, 200, "{}", plain.text());
    let forged = send("Bearer", &forge(&ready), None);
    assert_eq!(
        forged.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\", error_description=\"bad_signature\"")
    );
}

#[test]
fn an_edge_accepts_the_old_issuer_during_a_switch_and_refuses_it_once_dropped() {
    let old = |jti: &str| {
        let mut c = claims("frank", jti, "sid-switch");
        c["iss"] = json!(tokens::LEGACY_ISSUER);
        format!("Bearer {}", mint(&c))
    };
    let new = |jti: &str| format!("Bearer {}", mint(&claims("frank", jti, "sid-switch")));
    let get = |stack: &Stack, authorization: &str| {
        http::get(
            stack.envoy.port,
            "/orders",
            &[("authorization", authorization)],
        )
        .expect("request")
    };
    {
        // During the switch the filter config lists both issuers.
        let stack = Stack::start(|filter, jwks| {
            let mut keys = jwks["keys"].as_array().cloned().unwrap_or_default();
            keys.push(tokens::test_jwk());
            filter["jwks"] = json!({ "keys": keys });
            filter["issuer"] = json!([tokens::ISSUER, tokens::LEGACY_ISSUER]);
        });
        let issued = stack.cp.issue("frank");
        assert_eq!(tokens::payload(&issued)["iss"], tokens::ISSUER);
        stack.envoy.wait_until_serving(&issued);
        for (label, authorization) in [
            ("the old issuer's token", old("jti-old-1")),
            ("the new issuer's token", new("jti-new-1")),
            ("the control plane's token", format!("Bearer {issued}")),
        ] {
            let r = get(&stack, &authorization);
            assert_eq!(r.status, 200, "{label}: {}", r.text());
        }
    }
    // Once the old issuer is dropped (one string again, as before lists existed).
    let stack = Stack::with_test_key();
    let issued = stack.cp.issue("frank");
    stack.envoy.wait_until_serving(&issued);
    let refused = get(&stack, &old("jti-old-2"));
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert_eq!(refused.json()["error_description"], "wrong_issuer");
    assert_eq!(get(&stack, &new("jti-new-2")).status, 200);
}
