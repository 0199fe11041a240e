//! Revocations outlive every token they match: whatever the settings were when the token
//! was issued, whatever leeway a checker applies (security round 3, HIGH 1).

use serde_json::{Value, json};
use shared::jws::{Jws, Limits};
use tempfile::TempDir;

use crate::support::{Server, TestApp, Transport, blocking_json};

/// The leeway every revocation covers (`control_plane::config::REVOCATION_LEEWAY_SECS`).
const LEEWAY: i64 = control_plane::config::REVOCATION_LEEWAY_SECS;

/// `(kid, claims)` of a compact JWS, unverified.
fn parts(token: &str) -> (String, Value) {
    let jws = Jws::parse(token, &Limits::default()).expect("a compact JWS");
    (
        jws.header.kid.clone().expect("kid"),
        jws.claims().expect("claims"),
    )
}

fn issue(server: &Server, admin: &str, subject: &str, minutes: Option<i64>) -> String {
    let (status, body) = blocking_json(
        "POST",
        &format!("{}/token", server.url),
        Some(admin),
        &json!({ "subject": subject, "expires_minutes": minutes }),
    );
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().expect("token").to_owned()
}

fn revoke(server: &Server, admin: &str, kind: &str, value: &str) {
    let (status, body) = blocking_json(
        "POST",
        &format!("{}/revoke", server.url),
        Some(admin),
        &json!({ "type": format!("revoke_{kind}"), "value": value }),
    );
    assert_eq!(status, 200, "{body}");
}

fn validate(server: &Server, token: &str) -> Value {
    let (status, body) = blocking_json(
        "POST",
        &format!("{}/token/validate", server.url),
        None,
        &json!({ "token": token }),
    );
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn revocations_cover_tokens_issued_before_a_restart_with_shorter_lifetimes() {
    let dir = TempDir::new().expect("temp dir");
    let data = dir.path().join("data");
    // One issuer across the restart (derived from a port-0 listen address, it would not
    // be).
    let long = [
        "--issuer",
        "https://cp.test",
        "--max-token-minutes",
        "5",
        "--fleet-max-token-minutes",
        "5",
        "--default-token-minutes",
        "5",
    ];
    let server = Server::start_with(&data, &long, None);
    let admin = control_plane::read_admin_secret(&data).expect("admin secret");
    let token = issue(&server, &admin, "ivy", Some(5));
    let (kid, claims) = parts(&token);
    let (jti, exp) = (
        claims["jti"].as_str().unwrap().to_owned(),
        claims["exp"].as_i64().unwrap(),
    );
    server.kill_9();

    // Restarted with one minute as the longest lifetime anywhere, then revoked with no ttl.
    let short = [
        "--issuer",
        "https://cp.test",
        "--max-token-minutes",
        "1",
        "--fleet-max-token-minutes",
        "1",
        "--default-token-minutes",
        "1",
    ];
    let server = Server::start_with(&data, &short, None);
    assert_eq!(
        validate(&server, &token)["valid"],
        true,
        "a live token stays valid"
    );
    revoke(&server, &admin, "sub", "ivy");
    revoke(&server, &admin, "jti", &jti);
    revoke(&server, &admin, "kid", &kid);

    let conn = rusqlite::Connection::open(data.join("control-plane.db")).expect("open db");
    let mut stmt = conn
        .prepare("SELECT kind, value, expires_at FROM revocations")
        .unwrap();
    let rows: Vec<(String, String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (kind, value, expires_at) in &rows {
        assert!(
            *expires_at >= exp + LEEWAY,
            "the {kind} revocation of {value} lapses at {expires_at}, before the token it \
             covers stops being accepted ({exp} + {LEEWAY} s of leeway)"
        );
    }
    let checked = validate(&server, &token);
    assert_eq!(checked["valid"], false, "{checked}");
    assert_eq!(checked["revoked"], true, "{checked}");

    // The revoked key was this region's own: it signs nothing more, a fresh key does.
    let fresh = issue(&server, &admin, "ivy-2", None);
    let (fresh_kid, _) = parts(&fresh);
    assert_ne!(fresh_kid, kid, "a token was signed with a revoked key");
    assert_eq!(validate(&server, &fresh)["valid"], true);
}

#[tokio::test]
async fn a_token_living_longer_than_any_region_may_issue_is_refused() {
    let app = TestApp::with_settings(Transport::InProcess, |s| {
        s.fleet_max_token_secs = 3600;
        s.max_token_secs = 3600;
    })
    .await;
    // Signed with the region's own key, but not issued by it: a peer configured with
    // longer lifetimes than the fleet's, whose revocations here would lapse too early.
    let forged = app.forge(|c| c.exp = c.iat + 7200);
    let checked = app.validate(&forged).await;
    assert_eq!(checked["valid"], false, "{checked}");
    assert!(
        checked["message"]
            .as_str()
            .unwrap()
            .contains("CP_FLEET_MAX_TOKEN_MINUTES"),
        "{checked}"
    );
    let (token, _) = app.issue("una", json!({})).await;
    assert_eq!(app.validate(&token).await["valid"], true);
}

#[tokio::test]
async fn holder_and_admin_revocations_cover_the_revocation_leeway() {
    let app = TestApp::new(Transport::InProcess).await;
    let (token, jti) = app.issue("hana", json!({})).await;
    let exp = app.validate(&token).await["claims"]["exp"]
        .as_i64()
        .unwrap();
    let reply = app
        .post_json("/revoke/token", &json!({ "token": token }))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    app.revoke("sub", "hana").await;
    let conn = app.state.region.db().lock();
    let expiries: Vec<(String, i64)> = conn
        .prepare("SELECT kind, expires_at FROM revocations")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(expiries.len(), 2);
    for (kind, expires_at) in expiries {
        assert!(
            expires_at >= exp + LEEWAY,
            "{kind} of {jti}: {expires_at} < {exp} + {LEEWAY}"
        );
    }
}

#[test]
fn a_fleet_maximum_below_the_region_maximum_is_refused_at_start() {
    let dir = TempDir::new().expect("temp dir");
    let output = crate::support::binary()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--max-token-minutes",
            "120",
            "--fleet-max-token-minutes",
            "60",
        ])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CP_FLEET_MAX_TOKEN_MINUTES"), "{stderr}");
}

#[test]
fn kafka_client_properties_that_would_weaken_delivery_are_refused_at_start() {
    let dir = TempDir::new().expect("temp dir");
    let output = crate::support::binary()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("KAFKA_BOOTSTRAP", "127.0.0.1:1")
        .env(
            "CP_KAFKA_CLIENT_CONFIG",
            "security.protocol=SASL_SSL,acks=1,sasl.password",
        )
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("may not set acks"), "{stderr}");
    assert!(stderr.contains("sasl.password"), "{stderr}");
}
