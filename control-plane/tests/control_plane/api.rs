//! Every route and its error paths, each run in-process and over TCP.

use serde_json::{Value, json};
use shared::b64;

use crate::support::{TestApp, Transport};

fn decode_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("part");
    serde_json::from_slice(&b64::decode(part, "part").expect("b64")).expect("json")
}

#[tokio::test]
async fn issuing_a_token_needs_the_admin_credential() {
    for app in TestApp::both().await {
        let body = json!({ "subject": "alice" });
        let reply = app.post_json("/token", &body).await;
        let why = reply.error(401, "unauthorized");
        assert!(why.contains("admin credential"), "{why}");
        assert!(reply.header("www-authenticate").starts_with("Bearer"));

        let reply = app
            .request(
                "POST",
                "/token",
                &[("authorization", "Bearer not-the-secret")],
                Some(("application/json", body.to_string().into_bytes())),
            )
            .await;
        assert!(reply.error(401, "unauthorized").contains("not valid"));

        let reply = app.admin_json("/token", &body).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let body = reply.json();
        assert_eq!(body["token_type"], "bearer");
        assert_eq!(body["expires_in"], 900);
        assert_eq!(body["subject"], "alice");
        assert!(body["jti"].as_str().is_some_and(|j| j.len() >= 16));
    }
}

#[tokio::test]
async fn issued_tokens_are_at_jwt_with_a_thumbprint_kid_and_merged_extra_claims() {
    for app in TestApp::both().await {
        let reply = app
            .admin_json(
                "/token",
                &json!({
                    "subject": "alice", "expires_minutes": 5,
                    "additional_claims": { "sid": "s-1", "scope": "read write", "role": "ops" },
                }),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let body = reply.json();
        let token = body["access_token"].as_str().expect("token");
        let header = decode_part(token, 0);
        assert_eq!(header["typ"], "at+jwt");
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["kid"], app.state.region.keys().token_key.kid());
        let claims = decode_part(token, 1);
        // The default issuer: `serve`'s default listen address as a URL (RFC 8414).
        assert_eq!(claims["iss"], "http://127.0.0.1:8000");
        assert_eq!(claims["aud"], "pq-api");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["jti"], body["jti"]);
        assert_eq!(claims["sid"], "s-1");
        assert_eq!(claims["scope"], "read write");
        assert_eq!(claims["role"], "ops");
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            300
        );
        assert_eq!(claims["nbf"], claims["iat"]);
    }
}

#[tokio::test]
async fn additional_claims_never_override_registered_claims() {
    for app in TestApp::both().await {
        for name in ["iss", "sub", "aud", "exp", "iat", "nbf", "jti"] {
            let reply = app
                .admin_json(
                    "/token",
                    &json!({ "subject": "alice", "additional_claims": { name: "x" } }),
                )
                .await;
            let why = reply.error(400, "invalid_request");
            assert!(why.contains(&format!("\"{name}\"")), "{why}");
        }
    }
}

#[tokio::test]
async fn issuing_rejects_malformed_input_with_a_precise_reason() {
    for app in TestApp::both().await {
        let why = app
            .admin_json("/token", &json!({}))
            .await
            .error(400, "invalid_request");
        assert!(why.contains("subject"), "{why}");
        let why = app
            .admin_json("/token", &json!({ "subject": " " }))
            .await
            .error(400, "invalid_request");
        assert!(why.contains("subject must not be empty"), "{why}");
        let why = app
            .admin_json("/token", &json!({ "subject": "a", "expires_minutes": 0 }))
            .await
            .error(400, "invalid_request");
        assert!(
            why.contains("expires_minutes must be between 1 and 1440"),
            "{why}"
        );
        let why = app
            .admin_json(
                "/token",
                &json!({ "subject": "a", "additional_claims": { "sid": 5 } }),
            )
            .await
            .error(400, "invalid_request");
        assert!(why.contains("sid must be a string"), "{why}");
        let why = app
            .admin_json("/token", &json!({ "subject": 7 }))
            .await
            .error(400, "invalid_request");
        assert!(why.contains("invalid type"), "{why}");
        let auth = format!("Bearer {}", app.secret);
        let reply = app
            .request(
                "POST",
                "/token",
                &[("authorization", &auth)],
                Some(("application/json", b"{\"subject\":".to_vec())),
            )
            .await;
        reply.error(400, "invalid_request");
        let reply = app
            .request(
                "POST",
                "/token",
                &[("authorization", &auth)],
                Some(("text/plain", b"{\"subject\":\"a\"}".to_vec())),
            )
            .await;
        reply.error(415, "unsupported_media_type");
    }
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    for app in TestApp::both().await {
        let huge = json!({ "token": "x".repeat(200 * 1024) });
        let reply = app.post_json("/token/validate", &huge).await;
        reply.error(413, "payload_too_large");
    }
}

#[tokio::test]
async fn validation_explains_exactly_why_a_token_is_refused() {
    for app in TestApp::both().await {
        let (token, _) = app.issue("alice", json!({})).await;
        let ok = app.validate(&token).await;
        assert_eq!(ok["valid"], true);
        assert_eq!(ok["revoked"], false);
        assert_eq!(ok["message"], "token is valid");
        assert_eq!(ok["claims"]["sub"], "alice");

        let mut tampered = token.clone();
        let last = tampered.pop().expect("char");
        tampered.push(if last == 'A' { 'Q' } else { 'A' });
        let bad = app.validate(&tampered).await;
        assert_eq!(bad["valid"], false);
        assert!(bad["claims"].is_null());
        let msg = bad["message"].as_str().unwrap();
        assert!(
            msg.contains("signature verification failed") || msg.contains("base64url"),
            "{msg}"
        );

        let bad = app.validate("not.a.token").await;
        assert_eq!(bad["valid"], false);
        assert!(bad["message"].as_str().unwrap().contains("base64url"));
        let bad = app.validate("").await;
        assert!(bad["message"].as_str().unwrap().contains("malformed"));

        let expired = app.forge(|c| {
            c.iat -= 4000;
            c.nbf -= 4000;
            c.exp = c.iat + 100;
        });
        let bad = app.validate(&expired).await;
        assert_eq!(bad["valid"], false);
        assert_eq!(bad["claims"]["sub"], "forged");
        let msg = bad["message"].as_str().unwrap();
        assert!(
            msg.starts_with("token expired ") && msg.ends_with(" s ago"),
            "{msg}"
        );

        let future = app.forge(|c| c.nbf += 3600);
        let msg = app.validate(&future).await["message"].to_string();
        assert!(msg.contains("not valid for another"), "{msg}");
        let foreign = app.forge(|c| c.iss = "someone-else".into());
        let msg = app.validate(&foreign).await["message"].to_string();
        assert!(msg.contains("issuer"), "{msg}");
        let other_aud = app.forge(|c| c.aud = shared::Audience::One("other".into()));
        let msg = app.validate(&other_aud).await["message"].to_string();
        assert!(msg.contains("audience"), "{msg}");

        let stranger = shared::SigningKey::generate(shared::Alg::EdDsa);
        let unknown = shared::jws::sign(
            &stranger,
            "at+jwt",
            Some(&stranger.kid()),
            None,
            &b64::decode(token.split('.').nth(1).unwrap(), "p").unwrap(),
        )
        .unwrap();
        let msg = app.validate(&unknown).await["message"].to_string();
        assert!(msg.contains("no trusted key"), "{msg}");

        let why = app
            .post_json("/token/validate", &json!({ "check_revocation": true }))
            .await
            .error(400, "invalid_request");
        assert!(why.contains("token"), "{why}");
    }
}

#[tokio::test]
async fn validation_can_skip_the_revocation_check() {
    for app in TestApp::both().await {
        let (token, jti) = app.issue("alice", json!({})).await;
        app.revoke("jti", &jti).await;
        let reply = app
            .post_json(
                "/token/validate",
                &json!({ "token": token, "check_revocation": false }),
            )
            .await;
        let body = reply.json();
        assert_eq!(body["valid"], true);
        assert_eq!(body["revoked"], false);
        assert_eq!(app.validate(&token).await["revoked"], true);
    }
}

#[tokio::test]
async fn inspect_decodes_without_verifying_and_reports_revocation() {
    for app in TestApp::both().await {
        let (token, jti) = app.issue("alice", json!({})).await;
        let reply = app.get(&format!("/token/inspect?token={token}")).await;
        assert_eq!(reply.status, 200);
        let body = reply.json();
        assert_eq!(body["claims"]["jti"], jti.as_str());
        assert_eq!(body["revoked"], false);
        assert!(body["revocation_reason"].is_null());
        assert!(body["note"].as_str().unwrap().contains("without verifying"));

        app.revoke("sub", "alice").await;
        let body = app
            .get(&format!("/token/inspect?token={token}"))
            .await
            .json();
        assert_eq!(body["revoked"], true);
        assert!(
            body["revocation_reason"]
                .as_str()
                .unwrap()
                .starts_with("revoked by subject at ")
        );

        let why = app
            .get("/token/inspect?token=garbage")
            .await
            .error(400, "invalid_request");
        assert!(why.contains("cannot be decoded"), "{why}");
        app.get("/token/inspect")
            .await
            .error(400, "invalid_request");
    }
}

#[tokio::test]
async fn revoking_needs_the_admin_credential_and_a_valid_request() {
    for app in TestApp::both().await {
        let body = json!({ "type": "revoke_jti", "value": "j" });
        app.post_json("/revoke", &body)
            .await
            .error(401, "unauthorized");
        let why = app
            .admin_json("/revoke", &json!({ "type": "revoke_all", "value": "j" }))
            .await
            .error(400, "invalid_request");
        assert!(
            why.contains("revoke_jti, revoke_sub, revoke_kid, revoke_sid"),
            "{why}"
        );
        let why = app
            .admin_json("/revoke", &json!({ "type": "revoke_jti", "value": "" }))
            .await
            .error(400, "invalid_request");
        assert!(why.contains("must not be empty"), "{why}");
        let why = app
            .admin_json(
                "/revoke",
                &json!({ "type": "revoke_jti", "value": "j", "ttl_seconds": 0 }),
            )
            .await
            .error(400, "invalid_request");
        assert!(why.contains("ttl_seconds"), "{why}");
        app.admin_json("/revoke", &json!({ "value": "j" }))
            .await
            .error(400, "invalid_request");

        let reply = app
            .admin_json(
                "/revoke",
                &json!({ "type": "revoke_jti", "value": "j", "ttl_seconds": 60 }),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let body = reply.json();
        assert_eq!(body["published"], true);
        assert!(body["event_id"].as_str().is_some());
    }
}

#[tokio::test]
async fn revocation_status_routes_report_what_is_revoked() {
    for app in TestApp::both().await {
        let body = app.get("/v1/revocations/abc").await.json();
        assert_eq!(
            body,
            json!({ "jti": "abc", "revoked": false, "revokedAt": null })
        );
        app.revoke("jti", "abc").await;
        let body = app.get("/v1/revocations/abc").await.json();
        assert_eq!(body["revoked"], true);
        assert!(body["revokedAt"].as_str().unwrap().ends_with('Z'));

        let why = app
            .post_json("/v1/revocations/check", &json!({}))
            .await
            .error(400, "invalid_request");
        assert!(why.contains("at least one"), "{why}");
        let body = app
            .post_json(
                "/v1/revocations/check",
                &json!({ "sub": "bob", "kid": "k" }),
            )
            .await
            .json();
        assert_eq!(body, json!({ "revoked": false }));
        app.revoke("sub", "bob").await;
        let body = app
            .post_json(
                "/v1/revocations/check",
                &json!({ "sub": "bob", "kid": "k" }),
            )
            .await
            .json();
        assert_eq!(body["revoked"], true);
        assert_eq!(body["reason"], "revoke_sub");
        assert!(body["revokedAt"].is_string());
    }
}

#[tokio::test]
async fn a_holder_can_revoke_its_own_token_but_not_its_signing_key() {
    for app in TestApp::both().await {
        let (token, jti) = app.issue("alice", json!({ "sid": "s-9" })).await;
        let why = app
            .post_json(
                "/revoke/token",
                &json!({ "token": token, "scopes": ["kid"] }),
            )
            .await
            .error(403, "forbidden");
        assert!(why.contains("admin"), "{why}");
        let why = app
            .post_json(
                "/revoke/token",
                &json!({ "token": token, "scopes": ["all"] }),
            )
            .await
            .error(400, "invalid_request");
        assert!(why.contains("scope"), "{why}");
        let why = app
            .post_json("/revoke/token", &json!({ "token": "x.y.z" }))
            .await
            .error(401, "unauthorized");
        assert!(why.contains("token is not valid"), "{why}");
        let expired = app.forge(|c| {
            c.iat -= 4000;
            c.exp = c.iat + 10;
        });
        app.post_json("/revoke/token", &json!({ "token": expired }))
            .await
            .error(401, "unauthorized");

        let reply = app
            .post_json(
                "/revoke/token",
                &json!({ "token": token, "scopes": ["jti", "sid"] }),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["event_ids"].as_array().unwrap().len(), 2);
        assert_eq!(
            app.get(&format!("/v1/revocations/{jti}")).await.json()["revoked"],
            true
        );
        let body = app
            .post_json("/v1/revocations/check", &json!({ "sid": "s-9" }))
            .await
            .json();
        assert_eq!(body["revoked"], true);

        let (plain, _) = app.issue("bob", json!({})).await;
        let why = app
            .post_json(
                "/revoke/token",
                &json!({ "token": plain, "scopes": ["sid"] }),
            )
            .await
            .error(400, "invalid_request");
        assert!(why.contains("no sid"), "{why}");
        let reply = app
            .admin_json(
                "/revoke/token",
                &json!({ "token": plain, "scopes": ["kid"] }),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(app.validate(&plain).await["revoked"], true);
    }
}

#[tokio::test]
async fn oauth2_revoke_takes_a_form_and_answers_200_even_for_bad_tokens() {
    for app in TestApp::both().await {
        let (token, jti) = app.issue("alice", json!({})).await;
        let reply = app
            .form(
                "/oauth2/revoke",
                &format!("token={token}&token_type_hint=access_token"),
                false,
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(
            app.get(&format!("/v1/revocations/{jti}")).await.json()["revoked"],
            true
        );
        let again = app
            .form("/oauth2/revoke", &format!("token={token}"), false)
            .await;
        assert_eq!(again.status, 200);
        let garbage = app.form("/oauth2/revoke", "token=garbage", false).await;
        assert_eq!(garbage.status, 200);
        let why = app
            .form("/oauth2/revoke", "token_type_hint=access_token", false)
            .await
            .error(400, "invalid_request");
        assert!(why.contains("token parameter is required"), "{why}");
        app.post_json("/oauth2/revoke", &json!({ "token": token }))
            .await
            .error(415, "unsupported_media_type");
    }
}

#[tokio::test]
async fn oauth2_introspect_needs_a_credential_and_reports_activity() {
    for app in TestApp::both().await {
        let (token, jti) = app.issue("alice", json!({ "scope": "read" })).await;
        app.form("/oauth2/introspect", &format!("token={token}"), false)
            .await
            .error(401, "unauthorized");
        let body = app
            .form("/oauth2/introspect", &format!("token={token}"), true)
            .await
            .json();
        assert_eq!(body["active"], true);
        assert_eq!(body["sub"], "alice");
        assert_eq!(body["scope"], "read");
        assert_eq!(body["token_type"], "Bearer");
        app.revoke("jti", &jti).await;
        let body = app
            .form("/oauth2/introspect", &format!("token={token}"), true)
            .await
            .json();
        assert_eq!(body, json!({ "active": false }));
        let body = app
            .form("/oauth2/introspect", "token=junk", true)
            .await
            .json();
        assert_eq!(body, json!({ "active": false }));
        app.form("/oauth2/introspect", "", true)
            .await
            .error(400, "invalid_request");
    }
}

#[tokio::test]
async fn jwks_publishes_the_ed25519_and_ml_dsa_65_keys_under_their_thumbprints() {
    for app in TestApp::both().await {
        let body = app.get("/.well-known/jwks.json").await.json();
        let keys = body["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        let okp = keys.iter().find(|k| k["kty"] == "OKP").expect("OKP key");
        assert_eq!(okp["crv"], "Ed25519");
        assert_eq!(okp["alg"], "EdDSA");
        let akp = keys.iter().find(|k| k["kty"] == "AKP").expect("AKP key");
        assert_eq!(akp["alg"], "ML-DSA-65");
        let region_keys = app.state.region.keys();
        assert_eq!(okp["kid"], region_keys.token_key.kid());
        assert_eq!(akp["kid"], region_keys.event_key.kid());
        assert!(akp.get("priv").is_none() && okp.get("d").is_none());
        let ring = app.jwks_keyring().await;
        assert_eq!(ring.len(), 2);
    }
}

#[tokio::test]
async fn rotating_keys_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_key() {
    for transport in [Transport::InProcess, Transport::Tcp] {
        // No activation delay: the new keys sign at once (the delay has its own test).
        let app = TestApp::with_settings(transport, |s| s.key_activation_secs = 0).await;
        let (old, _) = app.issue("alice", json!({})).await;
        let old_kid = app.state.region.keys().token_key.kid();
        app.request("POST", "/admin/keys/rotate", &[], None)
            .await
            .error(401, "unauthorized");
        let reply = app.admin_json("/admin/keys/rotate", &json!({})).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let body = reply.json();
        assert_eq!(body["created"].as_array().unwrap().len(), 2);
        assert_eq!(body["retired"].as_array().unwrap().len(), 2);
        let (new, _) = app.issue("alice", json!({})).await;
        assert_ne!(decode_part(&new, 0)["kid"], old_kid.as_str());
        assert_eq!(app.validate(&old).await["valid"], true);
        assert_eq!(app.validate(&new).await["valid"], true);
        let jwks = app.get("/.well-known/jwks.json").await.json();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 4);
    }
}

#[tokio::test]
async fn probes_metrics_openapi_and_docs_answer() {
    for app in TestApp::both().await {
        assert_eq!(app.get("/health").await.json()["status"], "ok");
        assert_eq!(app.get("/ready").await.json()["status"], "ready");
        app.issue("alice", json!({})).await;
        let metrics = app.get("/metrics").await;
        assert!(metrics.header("content-type").starts_with("text/plain"));
        let text = metrics.text();
        assert!(text.contains("cp_tokens_issued_total 1"), "{text}");
        assert!(text.contains("cp_edge_feed_seq 0"), "{text}");
        let spec = app.get("/openapi.json").await.json();
        assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
        for path in [
            "/token",
            "/token/validate",
            "/token/inspect",
            "/revoke",
            "/revoke/token",
            "/v1/revocations/{jti}",
            "/v1/revocations/check",
            "/oauth2/revoke",
            "/oauth2/introspect",
            "/v1/edge/revocations",
            "/v1/events",
            "/.well-known/jwks.json",
            "/health",
            "/ready",
            "/metrics",
        ] {
            assert!(
                spec["paths"].get(path).is_some(),
                "{path} missing from the spec"
            );
        }
        let docs = app.get("/docs").await;
        assert!(docs.header("content-type").starts_with("text/html"));
        let html = docs.text();
        assert!(html.contains("/openapi.json") && !html.contains("https://"));
    }
}

#[tokio::test]
async fn a_service_that_is_not_ready_answers_503_except_on_probes() {
    for app in TestApp::both().await {
        app.state.set_ready(false);
        app.post_json("/token/validate", &json!({ "token": "x" }))
            .await
            .error(503, "temporarily_unavailable");
        app.get("/ready")
            .await
            .error(503, "temporarily_unavailable");
        assert_eq!(app.get("/health").await.status, 200);
        assert!(app.get("/metrics").await.text().contains("cp_ready 0"));
        app.state.set_ready(true);
        assert_eq!(app.get("/ready").await.status, 200);
    }
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_in_the_same_json_shape() {
    for app in TestApp::both().await {
        let why = app.get("/nope").await.error(404, "not_found");
        assert!(why.contains("/nope"));
        app.request("DELETE", "/token", &[], None)
            .await
            .error(405, "method_not_allowed");
        app.get("/token").await.error(405, "method_not_allowed");
    }
}

#[tokio::test]
async fn introspection_answers_the_rfc_6749_token_type_bearer_or_dpop() {
    for app in TestApp::both().await {
        let (token, _) = app.issue("alice", json!({})).await;
        let body = app
            .form("/oauth2/introspect", &format!("token={token}"), true)
            .await
            .json();
        assert_eq!(body["token_type"], "Bearer", "{body}");
        let device = shared::SigningKey::generate(shared::Alg::EdDsa);
        let created = app
            .admin_json(
                "/token/refresh/create",
                &json!({ "subject": "alice",
                         "device_jwk": serde_json::to_value(device.verifying_key().to_jwk()).unwrap() }),
            )
            .await
            .json();
        let bound = created["access_token"].as_str().expect("bound token");
        let body = app
            .form("/oauth2/introspect", &format!("token={bound}"), true)
            .await
            .json();
        assert_eq!(body["active"], true, "{body}");
        assert_eq!(body["cnf"]["jkt"], device.kid());
        assert_eq!(body["token_type"], "DPoP", "{body}");
    }
}

#[tokio::test]
async fn a_token_issued_in_the_future_is_refused_so_it_cannot_escape_revoke_sub() {
    for app in TestApp::both().await {
        let now = control_plane::now();
        // A valid nbf and exp, but iat ten years ahead: a subject revocation (a
        // not-before compared with iat) would never cover it.
        let ahead = app.forge(|c| {
            c.sub = "mallory".into();
            c.iat = now + 10 * 365 * 86_400;
        });
        let body = app.validate(&ahead).await;
        assert_eq!(body["valid"], false, "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("future"),
            "{body}"
        );
        app.revoke("sub", "mallory").await;
        assert_eq!(app.validate(&ahead).await["valid"], false);
        let body = app
            .form("/oauth2/introspect", &format!("token={ahead}"), true)
            .await
            .json();
        assert_eq!(body, json!({ "active": false }));
        // A few seconds of clock difference between regions stay within the leeway.
        let skewed = app.forge(|c| c.iat = now + 5);
        assert_eq!(app.validate(&skewed).await["valid"], true);
    }
}

#[tokio::test]
async fn the_application_at_jwt_media_type_is_accepted_as_at_jwt() {
    for app in TestApp::both().await {
        for typ in ["application/at+jwt", "Application/AT+JWT", "AT+JWT"] {
            let token = app.forge_typed(typ, |_| {});
            let body = app.validate(&token).await;
            assert_eq!(body["valid"], true, "{typ}: {body}");
        }
        let body = app
            .validate(&app.forge_typed("application/jwt", |_| {}))
            .await;
        assert_eq!(body["valid"], false, "{body}");
    }
}

#[tokio::test]
async fn an_unknown_json_field_is_a_400_naming_it_on_every_json_route() {
    for app in TestApp::both().await {
        let (token, _) = app.issue("alice", json!({})).await;
        let routes = [
            (
                "/token",
                json!({ "subject": "a", "expires_minute": 5 }),
                "expires_minute",
            ),
            (
                "/token/validate",
                json!({ "token": token, "check_revocations": false }),
                "check_revocations",
            ),
            (
                "/token/refresh/create",
                json!({ "subject": "a", "device_jkw": {} }),
                "device_jkw",
            ),
            (
                "/token/refresh",
                json!({ "refresh_token": "rt_x", "kem_publickey": "AAAA" }),
                "kem_publickey",
            ),
            (
                "/token/refresh/revoke",
                json!({ "refresh_token": "rt_x", "sid": "s" }),
                "sid",
            ),
            (
                "/revoke",
                json!({ "type": "revoke_jti", "value": "j", "ttl": 5 }),
                "ttl",
            ),
            (
                "/revoke/token",
                json!({ "token": token, "scope": ["sub"] }),
                "scope",
            ),
            (
                "/v1/revocations/check",
                json!({ "subject": "alice" }),
                "subject",
            ),
        ];
        for (path, body, unknown) in routes {
            let why = app
                .admin_json(path, &body)
                .await
                .error(400, "invalid_request");
            assert!(
                why.contains(&format!("unknown field `{unknown}`")),
                "{path}: {why}"
            );
        }
        // Nothing was done on the way: the token is still valid.
        assert_eq!(app.validate(&token).await["valid"], true);
    }
}
