//! The control-plane findings of the outside attack: a session that survived a second
//! subject revocation, holder revocations that grew the set without bound, control
//! characters in claims, bound tokens used without their key, keys that signed before
//! edges knew them, and connection exhaustion.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use control_plane::{CacheError, MemoryCache, RevocationCache};
use serde_json::{Value, json};
use shared::dpop::{self, DpopClaims};
use shared::keys::{Alg, SigningKey};
use shared::{Kind, RevocationEvent, b64, random};

use crate::support::{Server, TestApp, Transport, blocking_json, run_cli};

/// A cache that always fails, so every check falls back to SQLite.
#[derive(Debug)]
struct BrokenCache;

impl RevocationCache for BrokenCache {
    fn insert(&self, _: &RevocationEvent) -> Result<(), CacheError> {
        Err(CacheError::Unavailable)
    }
    fn find(
        &self,
        _: Kind,
        _: &str,
        _: Option<i64>,
        _: i64,
    ) -> Result<Option<RevocationEvent>, CacheError> {
        Err(CacheError::Unavailable)
    }
    fn prune(&self, _: i64) {}
    fn len(&self) -> usize {
        0
    }
}

/// Waits until the wall clock has moved to a later second.
async fn next_second() {
    let start = control_plane::now();
    while control_plane::now() == start {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_session_and_a_token_created_between_two_subject_revocations_are_revoked() {
    // Once with the in-memory cache, once with a cache that fails (SQLite fallback).
    let caches: [Arc<dyn RevocationCache>; 2] =
        [Arc::new(MemoryCache::new()), Arc::new(BrokenCache)];
    for cache in caches {
        let app = TestApp::with_cache(Transport::InProcess, |_| {}, cache).await;
        app.revoke("sub", "sam").await; // T1
        next_second().await;
        let created = app
            .admin_json("/token/refresh/create", &json!({ "subject": "sam" }))
            .await; // T2
        assert_eq!(created.status, 200, "{}", created.text());
        let refresh_token = created.json()["refresh_token"].as_str().unwrap().to_owned();
        let (token, _) = app.issue("sam", json!({})).await;
        assert_eq!(app.validate(&token).await["valid"], true);
        next_second().await;
        app.revoke("sub", "sam").await; // T3

        let check = app.validate(&token).await;
        assert_eq!(check["valid"], false, "{check}");
        let why = app
            .post_json("/token/refresh", &json!({ "refresh_token": refresh_token }))
            .await
            .error(400, "invalid_grant");
        assert!(why.contains("revoked by subject"), "{why}");
        let status = app
            .post_json("/v1/revocations/check", &json!({ "sub": "sam" }))
            .await
            .json();
        assert_eq!(status["revoked"], true);
    }
}

fn audit_rows(app: &TestApp) -> i64 {
    app.state
        .region
        .db()
        .lock()
        .query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn holder_revocations_are_idempotent_and_never_outlive_the_token() {
    let app = TestApp::with_settings(Transport::InProcess, |s| {
        s.holder_revokes_per_minute_per_client = 0;
        s.holder_revokes_per_minute_per_subject = 0;
    })
    .await;
    let (token, jti) = app.issue("hal", json!({ "sid": "hal-session" })).await;
    let body = json!({
        "token": token, "scopes": ["jti", "sid", "sub"], "ttl_seconds": 315_360_000
    });
    let first = app.post_json("/revoke/token", &body).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let first = first.json();
    let rows = audit_rows(&app);
    for _ in 0..50 {
        let again = app.post_json("/revoke/token", &body).await;
        assert_eq!(again.status, 200, "{}", again.text());
        assert_eq!(again.json()["event_ids"], first["event_ids"]);
    }
    assert_eq!(audit_rows(&app), rows, "repeats wrote nothing");
    let stored: i64 = app
        .state
        .region
        .db()
        .lock()
        .query_row("SELECT COUNT(*) FROM revocations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, 3);

    // Ten years were asked; each entry lives only as long as a token it covers could.
    let settings = app.state.region.settings().clone();
    let exp = app.validate(&token).await["claims"]["exp"]
        .as_i64()
        .unwrap();
    let conn = app.state.region.db().lock();
    let mut stmt = conn
        .prepare("SELECT kind, value, expires_at, issued_at FROM revocations")
        .unwrap();
    let rows: Vec<(String, String, i64, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (kind, value, expires_at, issued_at) in rows {
        let leeway = control_plane::config::REVOCATION_LEEWAY_SECS;
        let bound = if kind == "jti" {
            assert_eq!(value, jti);
            exp + leeway
        } else {
            // The fleet's longest lifetime, or this region's latest exp (reserved up to
            // an hour ahead), plus the leeway every revocation covers.
            (issued_at + settings.fleet_max_token_secs).max(exp + 3600) + leeway
        };
        assert!(
            expires_at <= bound,
            "{kind} lives until {expires_at}, over {bound}"
        );
    }
}

#[tokio::test]
async fn holder_revocations_are_rate_limited_per_client_and_per_subject() {
    let app = TestApp::with_settings(Transport::Tcp, |s| {
        s.holder_revokes_per_minute_per_client = 5;
        s.holder_revokes_per_minute_per_subject = 3;
    })
    .await;
    // Per subject: the fourth call with tokens of one subject is refused.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (token, _) = app.issue("rita", json!({})).await;
        statuses.push(
            app.post_json("/revoke/token", &json!({ "token": token }))
                .await,
        );
    }
    assert!(statuses[..3].iter().all(|r| r.status == 200));
    let limited = &statuses[3];
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert_eq!(limited.json()["error"], "rate_limited");
    let wait: u64 = limited.header("retry-after").parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Per client address: other subjects, same client, two more pass, then 429.
    let (a, _) = app.issue("sue", json!({})).await;
    let (b, _) = app.issue("tom", json!({})).await;
    let (c, _) = app.issue("uma", json!({})).await;
    assert_eq!(
        app.post_json("/revoke/token", &json!({ "token": a }))
            .await
            .status,
        200
    );
    let over = app.post_json("/revoke/token", &json!({ "token": b })).await;
    assert_eq!(over.status, 429, "{}", over.text());
    // The admin is not limited.
    let admin = app
        .admin_json("/revoke/token", &json!({ "token": c }))
        .await;
    assert_eq!(admin.status, 200, "{}", admin.text());
    assert!(
        app.get("/metrics")
            .await
            .text()
            .contains("cp_rate_limited_total 2")
    );
}

#[tokio::test]
async fn control_characters_in_claims_are_refused_at_issue_time() {
    let app = TestApp::new(Transport::InProcess).await;
    for claims in [
        json!({ "scope": "read\r\nx-auth-sub: admin" }),
        json!({ "client_id": "app\u{0}" }),
        json!({ "role": ["ok", "bad\n"] }),
        json!({ "nested": { "k\t": "v" } }),
        json!({ "x-role\r\nx-auth-sub": "admin" }),
    ] {
        let why = app
            .admin_json(
                "/token",
                &json!({ "subject": "x", "additional_claims": claims }),
            )
            .await
            .error(400, "invalid_request");
        assert!(why.contains("control characters"), "{why}");
    }
    let fine = app
        .admin_json(
            "/token",
            &json!({ "subject": "x", "additional_claims": { "scope": "read write", "client_id": "app" } }),
        )
        .await;
    assert_eq!(fine.status, 200, "{}", fine.text());
}

fn proof(key: &SigningKey, url: &str, token: &str) -> String {
    dpop::sign_proof(
        key,
        &DpopClaims {
            jti: random::id(),
            htm: "POST".into(),
            htu: url.into(),
            iat: control_plane::now(),
            ath: Some(dpop::ath(token)),
            nonce: None,
        },
    )
    .unwrap()
}

/// POSTs `body` (of `content_type`) to `path`, with a `DPoP` header when `proof` is set.
async fn post_with_proof(
    app: &TestApp,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
    proof: Option<String>,
) -> crate::support::Reply {
    let mut headers = vec![];
    if let Some(p) = &proof {
        headers.push(("dpop", p.as_str()));
    }
    app.request("POST", path, &headers, Some((content_type, body)))
        .await
}

#[tokio::test]
async fn a_bound_token_revokes_only_with_a_proof_of_its_key() {
    let app = TestApp::new(Transport::Tcp).await;
    let device = SigningKey::generate(Alg::EdDsa);
    let jkt = device.verifying_key().to_jwk().thumbprint();
    let (token, _) = app.issue("vic", json!({ "cnf": { "jkt": jkt } })).await;
    let url = format!("{}/revoke/token", app.base_url());
    let body = json!({ "token": token, "scopes": ["sub"] });
    let send = |proof: Option<String>| {
        post_with_proof(
            &app,
            "/revoke/token",
            "application/json",
            body.to_string().into_bytes(),
            proof,
        )
    };
    // A thief with the token only.
    let why = send(None).await.error(401, "invalid_dpop_proof");
    assert!(why.contains("bound to a device key"), "{why}");
    // A proof by another key, or for another token.
    let other = SigningKey::generate(Alg::EdDsa);
    send(Some(proof(&other, &url, &token)))
        .await
        .error(401, "invalid_dpop_proof");
    send(Some(proof(&device, &url, "another-token")))
        .await
        .error(401, "invalid_dpop_proof");
    assert_eq!(
        app.validate(&token).await["valid"],
        true,
        "nothing was revoked"
    );
    // The owner.
    let good = proof(&device, &url, &token);
    let done = send(Some(good.clone())).await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(app.validate(&token).await["valid"], false);
    // The same proof again is a replay.
    send(Some(good)).await.error(401, "invalid_dpop_proof");
}

#[tokio::test]
async fn rotated_keys_are_published_before_they_sign() {
    let app = TestApp::with_settings(Transport::InProcess, |s| s.key_activation_secs = 2).await;
    let old_kid = app.state.region.keys().token_key.kid();
    let reply = app.admin_json("/admin/keys/rotate", &json!({})).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let created = reply.json()["created"].as_array().unwrap().clone();
    let new_kids: Vec<&str> = created.iter().map(|k| k["kid"].as_str().unwrap()).collect();
    // Published at once...
    let jwks = app.get("/.well-known/jwks.json").await.json();
    let published: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    for kid in &new_kids {
        assert!(published.contains(kid), "{kid} not in {published:?}");
    }
    // ...but the old key still signs until the activation time.
    let (token, _) = app.issue("wes", json!({})).await;
    assert_eq!(header_kid(&token), old_kid);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        app.state.region.sync().unwrap();
        let (token, _) = app.issue("wes", json!({})).await;
        if new_kids.contains(&header_kid(&token).as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new key never started signing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn header_kid(token: &str) -> String {
    let header: Value =
        serde_json::from_slice(&b64::decode(token.split('.').next().unwrap(), "h").unwrap())
            .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

#[test]
fn idle_and_half_open_connections_cannot_lock_out_a_revocation() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("data");
    // 256 open files for the server; the attacker opens 400 connections and sends nothing
    // (or half a request line).
    let server = Server::start_with(
        &data,
        &[
            "--header-timeout-seconds",
            "2",
            "--idle-timeout-seconds",
            "5",
        ],
        Some(256),
    );
    let secret = control_plane::read_admin_secret(&data).unwrap();
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for i in 0..400 {
        match TcpStream::connect(&addr) {
            Ok(mut s) => {
                if i % 2 == 0 {
                    let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n");
                }
                idle.push(s);
            }
            Err(e) => panic!("connect {i}: {e}"),
        }
    }
    // The service still answers and still takes revocations, promptly.
    let started = Instant::now();
    let (status, body) =
        blocking_json("GET", &format!("{}/health", server.url), None, &Value::Null);
    assert_eq!(status, 200, "{body}");
    let (status, body) = blocking_json(
        "POST",
        &format!("{}/revoke", server.url),
        Some(&secret),
        &json!({ "type": "revoke_jti", "value": "under-siege" }),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let metrics = reqwest::blocking::get(format!("{}/metrics", server.url))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("cp_connections_closed_total{reason=\"evicted_idle\"}"),
        "{metrics}"
    );

    // A half-sent request is cut off by the header timeout, long before 70 s.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let cut = Instant::now();
    let mut buf = [0u8; 512];
    let _ = slow.read(&mut buf);
    assert!(
        cut.elapsed() < Duration::from_secs(8),
        "open for {:?}",
        cut.elapsed()
    );
    drop(idle);
}

#[tokio::test]
async fn strangers_cannot_burn_the_holder_revocation_budget_of_a_subject() {
    let app = TestApp::with_settings(Transport::Tcp, |s| {
        s.holder_revokes_per_minute_per_client = 100;
        s.holder_revokes_per_minute_per_subject = 3;
    })
    .await;
    // Ten tries with an expired token of the subject, and ten with a stolen bound token
    // and no key: all refused, none counted.
    let expired = app.forge(|c| {
        c.sub = "wendy".into();
        c.iat -= 3600;
        c.nbf -= 3600;
        c.exp = c.iat + 60;
    });
    let device = SigningKey::generate(Alg::EdDsa);
    let jkt = device.verifying_key().to_jwk().thumbprint();
    let (stolen, _) = app.issue("wendy", json!({ "cnf": { "jkt": jkt } })).await;
    for _ in 0..10 {
        app.post_json("/revoke/token", &json!({ "token": expired }))
            .await
            .error(401, "unauthorized");
        app.post_json("/revoke/token", &json!({ "token": stolen }))
            .await
            .error(401, "invalid_dpop_proof");
    }
    // The real holder logs out.
    let (own, _) = app.issue("wendy", json!({})).await;
    let done = app
        .post_json("/revoke/token", &json!({ "token": own }))
        .await;
    assert_eq!(done.status, 200, "{}", done.text());
}

#[tokio::test]
async fn oauth2_revoke_needs_a_proof_of_the_key_a_token_is_bound_to() {
    let app = TestApp::new(Transport::Tcp).await;
    let device = SigningKey::generate(Alg::EdDsa);
    let jkt = device.verifying_key().to_jwk().thumbprint();
    let (token, _) = app.issue("xena", json!({ "cnf": { "jkt": jkt } })).await;
    let url = format!("{}/oauth2/revoke", app.base_url());
    let send = |proof: Option<String>| {
        post_with_proof(
            &app,
            "/oauth2/revoke",
            "application/x-www-form-urlencoded",
            format!("token={token}").into_bytes(),
            proof,
        )
    };
    // A copy of the token alone revokes nothing.
    send(None).await.error(401, "invalid_dpop_proof");
    let other = SigningKey::generate(Alg::EdDsa);
    send(Some(proof(&other, &url, &token)))
        .await
        .error(401, "invalid_dpop_proof");
    assert_eq!(
        app.validate(&token).await["valid"],
        true,
        "nothing was revoked"
    );
    // The holder, with its key.
    let done = send(Some(proof(&device, &url, &token))).await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(app.validate(&token).await["valid"], false);
    // A token bound to no key still revokes with the token alone (RFC 7009).
    let (plain, _) = app.issue("yara", json!({})).await;
    let done = app
        .form("/oauth2/revoke", &format!("token={plain}"), false)
        .await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(app.validate(&plain).await["valid"], false);
}

#[tokio::test]
async fn oauth2_revoke_ends_a_bound_session_only_with_a_proof_of_its_key() {
    let app = TestApp::new(Transport::Tcp).await;
    let device = SigningKey::generate(Alg::EdDsa);
    let create = |device_jwk: Value| {
        let app = &app;
        async move {
            let mut body = json!({ "subject": "zoe" });
            if !device_jwk.is_null() {
                body["device_jwk"] = device_jwk;
            }
            let reply = app.admin_json("/token/refresh/create", &body).await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            let body = reply.json();
            (
                body["refresh_token"].as_str().unwrap().to_owned(),
                body["access_token"].as_str().unwrap().to_owned(),
            )
        }
    };
    let (refresh_token, access_token) =
        create(serde_json::to_value(device.verifying_key().to_jwk()).unwrap()).await;
    let url = format!("{}/oauth2/revoke", app.base_url());
    // A proof of a refresh token's session names no access token (no `ath`).
    let session_proof = |key: &SigningKey| {
        dpop::sign_proof(
            key,
            &DpopClaims {
                jti: random::id(),
                htm: "POST".into(),
                htu: url.clone(),
                iat: control_plane::now(),
                ath: None,
                nonce: None,
            },
        )
        .unwrap()
    };
    let send = |token: &str, proof: Option<String>| {
        post_with_proof(
            &app,
            "/oauth2/revoke",
            "application/x-www-form-urlencoded",
            format!("token={token}&token_type_hint=refresh_token").into_bytes(),
            proof,
        )
    };
    // A copy of the refresh token alone, or with another key's proof, ends nothing.
    let refused = send(&refresh_token, None).await;
    refused.error(401, "invalid_dpop_proof");
    assert!(
        refused.header("www-authenticate").starts_with("DPoP"),
        "{}",
        refused.header("www-authenticate")
    );
    let other = SigningKey::generate(Alg::EdDsa);
    send(&refresh_token, Some(session_proof(&other)))
        .await
        .error(401, "invalid_dpop_proof");
    // Nor at the original service's route.
    let reply = post_with_proof(
        &app,
        "/token/refresh/revoke",
        "application/json",
        json!({ "refresh_token": refresh_token })
            .to_string()
            .into_bytes(),
        None,
    )
    .await;
    reply.error(401, "invalid_dpop_proof");
    assert_eq!(
        app.validate(&access_token).await["valid"],
        true,
        "the session was not revoked"
    );
    // The holder, with its key: the session and its access tokens end.
    let own = session_proof(&device);
    let done = send(&refresh_token, Some(own.clone())).await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(app.validate(&access_token).await["valid"], false);
    // Its proof cannot be used again.
    send(&refresh_token, Some(own))
        .await
        .error(401, "invalid_dpop_proof");
    // A session bound to no key still ends with its refresh token alone (RFC 7009), and
    // an unknown refresh token gets 200.
    let (plain, plain_access) = create(Value::Null).await;
    let done = send(&plain, None).await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(app.validate(&plain_access).await["valid"], false);
    let done = send("rt_unknownunknownunknownunknownunknownunknown", None).await;
    assert_eq!(done.status, 200, "{}", done.text());
}

#[test]
fn new_keys_sign_only_after_every_edge_refreshed_its_jwks_by_default() {
    // The edge filter's default `jwks_refresh_seconds` (edge-filter/src/config.rs).
    const EDGE_JWKS_REFRESH_SECONDS: i64 = 300;
    let settings = control_plane::config::Settings::new("unused");
    assert!(
        settings.key_activation_secs > EDGE_JWKS_REFRESH_SECONDS,
        "new keys would sign {} s after publication, before edges refetch every {EDGE_JWKS_REFRESH_SECONDS} s",
        settings.key_activation_secs
    );
}

#[test]
fn slow_bodies_cannot_lock_out_a_revocation() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("data");
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin_at = format!("127.0.0.1:{admin_port}");
    let server = Server::start_with(
        &data,
        &[
            "--max-connections",
            "64",
            "--max-long-polls",
            "16",
            "--body-timeout-seconds",
            "2",
            "--admin-listen",
            &admin_at,
        ],
        None,
    );
    let secret = control_plane::read_admin_secret(&data).unwrap();
    let addr = server.url.trim_start_matches("http://").to_owned();
    // Every slot of the public listener: complete headers, then one body byte.
    let mut slow = Vec::new();
    for i in 0..64 {
        let mut s = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connect {i}: {e}"));
        s.write_all(
            b"POST /revoke/token HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
              content-length: 1000\r\n\r\n{",
        )
        .unwrap();
        slow.push(s);
    }
    // The admin listener has its own cap: a revocation there is answered at once.
    let started = Instant::now();
    let (status, body) = blocking_json(
        "POST",
        &format!("http://{admin_at}/revoke"),
        Some(&secret),
        &json!({ "type": "revoke_jti", "value": "under-slow-siege" }),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The slow bodies are cut off at their deadline, freeing the public listener.
    let first = &mut slow[0];
    first
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let cut = Instant::now();
    let mut buf = [0u8; 512];
    let _ = first.read(&mut buf);
    assert!(
        cut.elapsed() < Duration::from_secs(6),
        "open for {:?}",
        cut.elapsed()
    );
    let (status, body) = blocking_json(
        "POST",
        &format!("{}/revoke", server.url),
        Some(&secret),
        &json!({ "type": "revoke_jti", "value": "after-slow-siege" }),
    );
    assert_eq!(status, 200, "{body}");
    drop(slow);
}

#[test]
fn one_address_without_a_credential_gets_only_its_share_while_credentials_pass() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with(
        &data,
        &[
            "--max-unauthenticated-per-address",
            "8",
            "--body-timeout-seconds",
            "20",
        ],
        None,
    );
    let secret = control_plane::read_admin_secret(&data).unwrap();
    let (ok, out, err) = run_cli(&data, &["edge-credential", "--name", "edge-behind-nat"]);
    assert!(ok, "{err}");
    let edge = out.trim().to_owned();
    let addr = server.url.trim_start_matches("http://").to_owned();

    // Twenty slow bodies from 127.0.0.1: complete headers, then one byte.
    let started = Instant::now();
    let mut slow = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connect {i}: {e}"));
        s.write_all(
            b"POST /revoke/token HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
              content-length: 1000\r\n\r\n{",
        )
        .unwrap();
        slow.push(s);
    }
    // Eight hold their permit; the twelve others are answered 429 at once and closed.
    std::thread::sleep(Duration::from_millis(500));
    let (mut held, mut refused) = (0, 0);
    for s in &mut slow {
        s.set_nonblocking(true).unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(e) => panic!("read: {e}"),
            }
        };
        let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        if answer.is_empty() && !closed {
            held += 1;
        } else {
            assert!(closed, "a refused connection is closed: {text}");
            assert!(text.starts_with("http/1.1 429"), "{text}");
            assert!(text.contains("connection: close"), "{text}");
            assert!(text.contains("\"error\":\"rate_limited\""), "{text}");
            refused += 1;
        }
    }
    assert_eq!((held, refused), (8, 12));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refusals took {:?}",
        started.elapsed()
    );

    // Meanwhile, from the same address: a request without a credential is refused...
    let (status, body) =
        blocking_json("GET", &format!("{}/health", server.url), None, &Value::Null);
    assert_eq!(status, 429, "{body}");
    let (status, body) = blocking_json(
        "GET",
        &format!("{}/health", server.url),
        Some("not-a-credential"),
        &Value::Null,
    );
    assert_eq!(status, 429, "a wrong bearer is no credential: {body}");
    // ...while the admin credential revokes and an edge credential polls the feed.
    let (status, body) = blocking_json(
        "POST",
        &format!("{}/revoke", server.url),
        Some(&secret),
        &json!({ "type": "revoke_jti", "value": "behind-the-nat" }),
    );
    assert_eq!(status, 200, "{body}");
    let poll = reqwest::blocking::Client::new()
        .get(format!("{}/v1/edge/revocations?since=0&wait=1", server.url))
        .bearer_auth(&edge)
        .header("x-edge-instance", "envoy-behind-nat")
        .send()
        .unwrap();
    assert_eq!(poll.status().as_u16(), 200);

    // Permits come back when their requests end.
    drop(slow);
    let freed = Instant::now();
    loop {
        let (status, _) =
            blocking_json("GET", &format!("{}/health", server.url), None, &Value::Null);
        if status == 200 {
            break;
        }
        assert!(freed.elapsed() < Duration::from_secs(5), "still {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = reqwest::blocking::get(format!("{}/metrics", server.url))
        .unwrap()
        .text()
        .unwrap();
    let refusals: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cp_unauthenticated_over_address_cap_total "))
        .expect("the counter")
        .trim()
        .parse()
        .unwrap();
    assert!(refusals >= 14, "{metrics}");
}
