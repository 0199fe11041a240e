//! Refresh sessions: device-bound rotation with sealed delivery, DPoP checks, reuse
//! detection, concurrent refreshes, client-binding mode and session revocation.

use serde_json::{Value, json};
use shared::dpop::{self, DpopClaims};
use shared::edgeset::{EdgeUpdate, RevocationSet};
use shared::kem::{EphemeralSecret, KemError};
use shared::keys::{Alg, SigningKey};
use shared::revocation::TokenIds;
use shared::{b64, random, sha256};

use crate::support::{Reply, TestApp, Transport};

/// Host the in-process requests claim (TCP requests carry the real one).
const HOST: &str = "cp.test";

fn decode_claims(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(&b64::decode(part, "payload").expect("b64")).expect("json")
}

fn jwk(key: &SigningKey) -> Value {
    serde_json::to_value(key.verifying_key().to_jwk()).expect("jwk")
}

/// The URL the client used for `/token/refresh`.
fn refresh_url(app: &TestApp) -> String {
    if app.is_tcp() {
        format!("{}/token/refresh", app.base_url())
    } else {
        format!("http://{HOST}/token/refresh")
    }
}

fn proof_for(key: &SigningKey, htm: &str, htu: &str, iat: i64) -> String {
    dpop::sign_proof(
        key,
        &DpopClaims {
            jti: random::id(),
            htm: htm.into(),
            htu: htu.into(),
            iat,
            ath: None,
            nonce: None,
        },
    )
    .expect("proof")
}

fn proof(app: &TestApp, key: &SigningKey) -> String {
    proof_for(key, "POST", &refresh_url(app), control_plane::now())
}

/// The transcript as the README defines it, rebuilt on the client side.
fn transcript(sid: &str, presented: &str, proof: Option<&str>, kem_public_key: &[u8]) -> String {
    let h = |bytes: &[u8]| b64::encode(&sha256(bytes));
    format!(
        "pq-refresh-v1\nsid={sid}\nrt={}\ndpop={}\nkem={}",
        h(presented.as_bytes()),
        proof.map_or_else(|| "-".to_owned(), |p| h(p.as_bytes())),
        h(kem_public_key)
    )
}

async fn post_refresh(app: &TestApp, body: &Value, dpop: Option<&str>) -> Reply {
    let mut headers = Vec::new();
    if !app.is_tcp() {
        headers.push(("host", HOST));
    }
    if let Some(p) = dpop {
        headers.push(("dpop", p));
    }
    app.request(
        "POST",
        "/token/refresh",
        &headers,
        Some(("application/json", body.to_string().into_bytes())),
    )
    .await
}

/// A client of a device-bound session.
struct Device {
    key: SigningKey,
    sid: String,
    refresh_token: String,
    access_token: String,
}

impl Device {
    async fn create(app: &TestApp, alg: Alg) -> Device {
        let key = SigningKey::generate(alg);
        let reply = app
            .admin_json(
                "/token/refresh/create",
                &json!({ "subject": "alice", "device_jwk": jwk(&key), "scope": "read" }),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let body = reply.json();
        assert_eq!(body["subject"], "alice");
        assert_eq!(body["token_type"], "DPoP");
        assert_eq!(body["expires_in"], 900);
        assert_eq!(body["refresh_expires_in"], 30 * 24 * 3600);
        let refresh_token = body["refresh_token"].as_str().expect("rt").to_owned();
        assert!(refresh_token.starts_with("rt_"));
        Device {
            key,
            sid: body["session_id"].as_str().expect("sid").to_owned(),
            refresh_token,
            access_token: body["access_token"].as_str().expect("at").to_owned(),
        }
    }

    /// One refresh with a fresh ephemeral KEM key; on success opens the sealed token
    /// and keeps it. Returns the reply.
    async fn refresh_with(&mut self, app: &TestApp, proof: &str) -> Reply {
        let (secret, public) = EphemeralSecret::generate();
        let reply = post_refresh(
            app,
            &json!({ "refresh_token": self.refresh_token, "kem_public_key": b64::encode(&public) }),
            Some(proof),
        )
        .await;
        if reply.status == 200 {
            let body = reply.json();
            assert!(
                body.get("refresh_token").is_none(),
                "never in clear: {body}"
            );
            let t = transcript(&self.sid, &self.refresh_token, Some(proof), &public);
            assert_eq!(body["transcript_hash"], b64::encode(&sha256(t.as_bytes())));
            let sealed = &body["sealed_refresh_token"];
            let ct = b64::decode(sealed["kem_ciphertext"].as_str().unwrap(), "ct").unwrap();
            let boxed = b64::decode(sealed["sealed"].as_str().unwrap(), "sealed").unwrap();
            let opened = secret.open(&ct, t.as_bytes(), &boxed).expect("opens");
            self.refresh_token = String::from_utf8(opened).expect("utf-8");
            self.access_token = body["access_token"].as_str().unwrap().to_owned();
        }
        reply
    }

    async fn refresh(&mut self, app: &TestApp) -> Reply {
        let p = proof(app, &self.key);
        self.refresh_with(app, &p).await
    }
}

#[tokio::test]
async fn a_device_bound_session_rotates_sealed_tokens_with_ed25519_p256_and_ml_dsa_65_keys() {
    for app in TestApp::both().await {
        for alg in [Alg::EdDsa, Alg::Es256, Alg::MlDsa65] {
            let mut device = Device::create(&app, alg).await;
            let first = decode_claims(&device.access_token);
            assert_eq!(first["sid"], device.sid.as_str());
            assert_eq!(first["cnf"]["jkt"], device.key.kid());
            assert_eq!(first["scope"], "read");
            let mut seen = vec![device.refresh_token.clone()];
            for _ in 0..2 {
                let reply = device.refresh(&app).await;
                assert_eq!(reply.status, 200, "{alg:?}: {}", reply.text());
                let body = reply.json();
                assert_eq!(body["token_type"], "DPoP");
                assert_eq!(body["session_id"], device.sid.as_str());
                assert!(!seen.contains(&device.refresh_token), "rotated");
                seen.push(device.refresh_token.clone());
                let claims = decode_claims(&device.access_token);
                assert_eq!(claims["sub"], "alice");
                assert_eq!(claims["sid"], device.sid.as_str());
                assert_eq!(claims["cnf"]["jkt"], device.key.kid());
                assert_eq!(app.validate(&device.access_token).await["valid"], true);
            }
        }
    }
}

/// A proof as RFC 9864 libraries sign it: `alg: "Ed25519"` in the header, and the JWK as
/// WebCrypto exports it (`"alg": "Ed25519"`, `key_ops`, `ext`).
fn ed25519_named_proof(key: &SigningKey, htu: &str) -> String {
    let header = json!({ "typ": "dpop+jwt", "alg": "Ed25519", "jwk": webcrypto_jwk(key) });
    let claims = json!({
        "jti": random::id(), "htm": "POST", "htu": htu, "iat": control_plane::now()
    });
    let input = format!(
        "{}.{}",
        b64::encode(header.to_string().as_bytes()),
        b64::encode(claims.to_string().as_bytes())
    );
    let signature = key.sign(input.as_bytes()).expect("sign");
    format!("{input}.{}", b64::encode(&signature))
}

fn webcrypto_jwk(key: &SigningKey) -> Value {
    let x = key.verifying_key().to_jwk().x.expect("x");
    json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "alg": "Ed25519",
            "key_ops": ["verify"], "ext": true })
}

#[tokio::test]
async fn an_ed25519_named_jwk_and_proofs_create_and_refresh_a_session() {
    for app in TestApp::both().await {
        let key = SigningKey::generate(Alg::EdDsa);
        let reply = app
            .admin_json(
                "/token/refresh/create",
                &json!({ "subject": "alice", "device_jwk": webcrypto_jwk(&key) }),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let body = reply.json();
        let mut device = Device {
            sid: body["session_id"].as_str().expect("sid").to_owned(),
            refresh_token: body["refresh_token"].as_str().expect("rt").to_owned(),
            access_token: body["access_token"].as_str().expect("at").to_owned(),
            key,
        };
        assert_eq!(
            decode_claims(&device.access_token)["cnf"]["jkt"],
            device.key.kid()
        );
        for _ in 0..2 {
            let before = device.refresh_token.clone();
            let p = ed25519_named_proof(&device.key, &refresh_url(&app));
            let reply = device.refresh_with(&app, &p).await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            assert_ne!(device.refresh_token, before, "rotated");
        }
        // Our own access tokens keep the name every verifier knows.
        let header = device.access_token.split('.').next().expect("header");
        let header: Value = serde_json::from_slice(&b64::decode(header, "h").unwrap()).unwrap();
        assert_eq!(header["alg"], "EdDSA");
    }
}

#[tokio::test]
async fn only_hashes_of_refresh_tokens_are_stored() {
    let app = TestApp::new(Transport::InProcess).await;
    let mut device = Device::create(&app, Alg::EdDsa).await;
    assert_eq!(device.refresh(&app).await.status, 200);
    let db = std::fs::read(app.data_dir().join("control-plane.db")).unwrap_or_default();
    let wal = std::fs::read(app.data_dir().join("control-plane.db-wal")).unwrap_or_default();
    let needle = device.refresh_token.as_bytes();
    for bytes in [db, wal] {
        assert!(!bytes.windows(needle.len()).any(|w| w == needle));
    }
    let rows: i64 = app
        .state
        .region
        .db()
        .lock()
        .query_row(
            "SELECT COUNT(*) FROM refresh_tokens WHERE sid = ?1 AND hash = ?2",
            rusqlite::params![device.sid, &sha256(device.refresh_token.as_bytes())[..]],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn a_bound_session_refuses_a_missing_or_wrong_dpop_proof_without_burning_the_token() {
    for app in TestApp::both().await {
        let mut device = Device::create(&app, Alg::EdDsa).await;
        let (_, public) = EphemeralSecret::generate();
        let body = json!({
            "refresh_token": device.refresh_token, "kem_public_key": b64::encode(&public),
        });
        let why = post_refresh(&app, &body, None)
            .await
            .error(400, "invalid_dpop_proof");
        assert!(why.contains("DPoP header"), "{why}");

        let now = control_plane::now();
        let url = refresh_url(&app);
        let other = SigningKey::generate(Alg::EdDsa);
        let wrong_path = url.replace("/token/refresh", "/token/other");
        let cases = [
            (proof_for(&other, "POST", &url, now), "cnf.jkt"),
            (proof_for(&device.key, "GET", &url, now), "not this request"),
            (
                proof_for(&device.key, "POST", &wrong_path, now),
                "not this request",
            ),
            (
                proof_for(
                    &device.key,
                    "POST",
                    "http://evil.example/token/refresh",
                    now,
                ),
                "not this request",
            ),
            (
                proof_for(&device.key, "POST", &url, now - 120),
                "away from now",
            ),
            (
                proof_for(&device.key, "POST", &url, now + 120),
                "away from now",
            ),
            ("not-a-jws".to_owned(), "invalid DPoP proof"),
        ];
        for (p, expected) in cases {
            let reply = post_refresh(&app, &body, Some(&p)).await;
            let why = reply.error(400, "invalid_dpop_proof");
            assert!(why.contains(expected), "{expected}: {why}");
            // A token endpoint answers 400 without a challenge (RFC 9449 5, RFC 6749
            // 5.2); a 401 with WWW-Authenticate: DPoP is for protected resources.
            assert_eq!(reply.header("www-authenticate"), "", "no challenge");
        }
        // Without a KEM key a bound session never gets its token in clear.
        let p = proof(&app, &device.key);
        let why = post_refresh(
            &app,
            &json!({ "refresh_token": device.refresh_token }),
            Some(&p),
        )
        .await
        .error(400, "invalid_request");
        assert!(why.contains("kem_public_key is required"), "{why}");
        // None of that burned the token; an https htu (TLS terminated in front) works.
        let https = proof_for(
            &device.key,
            "POST",
            &url.replace("http://", "https://"),
            control_plane::now(),
        );
        let reply = device.refresh_with(&app, &https).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
}

#[tokio::test]
async fn a_replayed_dpop_proof_is_refused() {
    for app in TestApp::both().await {
        let mut device = Device::create(&app, Alg::MlDsa65).await;
        let p = proof(&app, &device.key);
        assert_eq!(device.refresh_with(&app, &p).await.status, 200);
        // The captured proof again, even with the current refresh token.
        let why = device
            .refresh_with(&app, &p)
            .await
            .error(400, "invalid_dpop_proof");
        assert!(why.contains("replayed"), "{why}");
        // The replay neither burned the token nor revoked the session.
        assert_eq!(device.refresh(&app).await.status, 200);
        assert_eq!(app.validate(&device.access_token).await["valid"], true);
    }
}

#[tokio::test]
async fn a_sealed_token_opens_only_with_the_transcript_of_the_exchange() {
    let app = TestApp::new(Transport::Tcp).await;
    let device = Device::create(&app, Alg::EdDsa).await;
    let (secret, public) = EphemeralSecret::generate();
    let p = proof(&app, &device.key);
    let reply = post_refresh(
        &app,
        &json!({ "refresh_token": device.refresh_token, "kem_public_key": b64::encode(&public) }),
        Some(&p),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    let sealed = &body["sealed_refresh_token"];
    let ct = b64::decode(sealed["kem_ciphertext"].as_str().unwrap(), "ct").unwrap();
    let boxed = b64::decode(sealed["sealed"].as_str().unwrap(), "sealed").unwrap();
    let right = transcript(&device.sid, &device.refresh_token, Some(&p), &public);
    let wrong = [
        transcript("another-sid", &device.refresh_token, Some(&p), &public),
        transcript(&device.sid, "rt_other", Some(&p), &public),
        transcript(&device.sid, &device.refresh_token, None, &public),
        transcript(&device.sid, &device.refresh_token, Some(&p), &[0; 1216]),
        right.replace("pq-refresh-v1", "pq-refresh-v2"),
    ];
    for t in &wrong {
        assert_eq!(
            secret.open(&ct, t.as_bytes(), &boxed),
            Err(KemError::OpenFailed)
        );
    }
    let (stranger, _) = EphemeralSecret::generate();
    assert!(stranger.open(&ct, right.as_bytes(), &boxed).is_err());
    let opened = secret.open(&ct, right.as_bytes(), &boxed).expect("opens");
    assert!(opened.starts_with(b"rt_"));
}

#[tokio::test]
async fn reusing_a_rotated_refresh_token_revokes_the_whole_family() {
    for app in TestApp::both().await {
        let mut device = Device::create(&app, Alg::EdDsa).await;
        let first_access = device.access_token.clone();
        let stolen = device.refresh_token.clone();
        assert_eq!(device.refresh(&app).await.status, 200);
        let second_access = device.access_token.clone();
        let (_, unrelated_sid) = {
            let other = Device::create(&app, Alg::EdDsa).await;
            (other.access_token.clone(), other.sid)
        };

        // The rotated token again (by whoever kept it, with a valid proof).
        let mut thief = Device {
            key: SigningKey::from_seed(device.key.alg(), &device.key.seed()),
            sid: device.sid.clone(),
            refresh_token: stolen,
            access_token: String::new(),
        };
        let why = thief.refresh(&app).await.error(400, "invalid_grant");
        assert_eq!(why, "refresh token reuse detected; session revoked");

        for token in [&first_access, &second_access] {
            let body = app.validate(token).await;
            assert_eq!(body["valid"], false, "{body}");
            assert!(
                body["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("token revoked by session at "),
                "{body}"
            );
        }
        // The current token of the family is dead too.
        let why = device.refresh(&app).await.error(400, "invalid_grant");
        assert!(why.contains("revoked"), "{why}");

        // The edges learn it from the signed feed.
        let reply = app.get("/v1/edge/revocations").await;
        assert_eq!(reply.status, 200);
        let update = EdgeUpdate::open(&reply.text(), &app.jwks_keyring().await, 100_000)
            .expect("signed update");
        let mut set = RevocationSet::default();
        set.apply(update).unwrap();
        let now = control_plane::now();
        let ids = |sid| TokenIds {
            jti: "any",
            sub: "alice",
            kid: "k",
            sid: Some(sid),
            iat: now,
        };
        assert!(set.check(&ids(&device.sid), now).is_some());
        assert!(set.check(&ids(&unrelated_sid), now).is_none());

        // And the audit log says why.
        let rows: i64 = app
            .state
            .region
            .db()
            .lock()
            .query_row(
                "SELECT COUNT(*) FROM audit WHERE entry LIKE '%refresh token reuse%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(rows, 2, "the revocation row and the refresh.revoked row");
    }
}

/// Documented behaviour: the loser of a race on one refresh token is treated as reuse
/// (there is no way to tell a double submit from a thief racing the client), so the
/// session is revoked; exactly one refresh succeeds.
#[tokio::test]
async fn two_concurrent_refreshes_of_one_token_give_one_success_and_the_loser_revokes_the_family() {
    let app = TestApp::new(Transport::Tcp).await;
    let device = Device::create(&app, Alg::EdDsa).await;
    let mut a = Device {
        key: SigningKey::from_seed(device.key.alg(), &device.key.seed()),
        sid: device.sid.clone(),
        refresh_token: device.refresh_token.clone(),
        access_token: String::new(),
    };
    let mut b = Device {
        key: SigningKey::from_seed(device.key.alg(), &device.key.seed()),
        sid: device.sid.clone(),
        refresh_token: device.refresh_token.clone(),
        access_token: String::new(),
    };
    let (ra, rb) = tokio::join!(a.refresh(&app), b.refresh(&app));
    let mut statuses = [ra.status, rb.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 400], "{} / {}", ra.text(), rb.text());
    let (winner, loser) = if ra.status == 200 {
        (&mut a, rb)
    } else {
        (&mut b, ra)
    };
    assert_eq!(
        loser.error(400, "invalid_grant"),
        "refresh token reuse detected; session revoked"
    );
    let why = winner.refresh(&app).await.error(400, "invalid_grant");
    assert!(why.contains("revoked"), "{why}");
    assert_eq!(app.validate(&winner.access_token).await["revoked"], true);
}

/// A reuse signs its `sid` revocation outside any transaction: while the event signer
/// is paused with that revocation in hand, other writes commit (a token issued, another
/// session created and rotated), and once the signer resumes the reuse revokes the family.
/// Deterministic: the test waits for the signer to hold the event, never for a time.
#[tokio::test]
async fn a_refresh_reuse_waiting_for_its_signature_holds_no_write_transaction() {
    let app = TestApp::new(Transport::InProcess).await;
    let mut device = Device::create(&app, Alg::EdDsa).await;
    let first_access = device.access_token.clone();
    let mut thief = Device {
        key: SigningKey::from_seed(device.key.alg(), &device.key.seed()),
        sid: device.sid.clone(),
        refresh_token: device.refresh_token.clone(),
        access_token: String::new(),
    };
    assert_eq!(device.refresh(&app).await.status, 200);
    let mut other = Device::create(&app, Alg::EdDsa).await;

    let pause = app.state.region.pause_event_signer();
    let reuse = thief.refresh(&app);
    tokio::pin!(reuse);
    tokio::select! {
        waited = tokio::time::timeout(std::time::Duration::from_secs(10), pause.holding(1)) => {
            waited.expect("the reuse's revocation reaches the paused signer");
        }
        reply = &mut reuse => panic!("the reuse answered with the signer paused: {}", reply.text()),
    }

    // A write transaction held meanwhile would make these wait for SQLite's busy timeout
    // (10 s) and fail; the bound only turns such a hang into a failure.
    let meanwhile = async {
        let (token, _) = app.issue("bob", json!({})).await;
        assert_eq!(app.validate(&token).await["valid"], true);
        let third = Device::create(&app, Alg::EdDsa).await;
        let rotated = other.refresh(&app).await;
        assert_eq!(rotated.status, 200, "{}", rotated.text());
        third
    };
    let third = tokio::time::timeout(std::time::Duration::from_secs(5), meanwhile)
        .await
        .expect("writes commit while the reuse waits for its signature");
    assert_eq!(
        app.validate(&first_access).await["valid"],
        true,
        "not revoked before it is signed"
    );

    pause.resume();
    let why = reuse.await.error(400, "invalid_grant");
    assert_eq!(why, "refresh token reuse detected; session revoked");
    for token in [&first_access, &device.access_token] {
        let body = app.validate(token).await;
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .starts_with("token revoked by session at "),
            "{body}"
        );
    }
    let why = device.refresh(&app).await.error(400, "invalid_grant");
    assert!(why.contains("revoked"), "{why}");
    // The other sessions are untouched.
    assert_eq!(app.validate(&other.access_token).await["valid"], true);
    assert_eq!(app.validate(&third.access_token).await["valid"], true);
}

/// Revoking a session twice, the second time while the first revocation is being
/// signed, stores one event: the later writer job sees the first and answers with it.
#[tokio::test]
async fn a_session_revoked_while_its_reuse_is_signed_keeps_its_first_event() {
    let app = TestApp::new(Transport::InProcess).await;
    let mut device = Device::create(&app, Alg::EdDsa).await;
    let mut thief = Device {
        key: SigningKey::from_seed(device.key.alg(), &device.key.seed()),
        sid: device.sid.clone(),
        refresh_token: device.refresh_token.clone(),
        access_token: String::new(),
    };
    assert_eq!(device.refresh(&app).await.status, 200);

    let pause = app.state.region.pause_event_signer();
    let by_id = json!({ "session_id": device.sid });
    let both = async {
        tokio::join!(
            thief.refresh(&app),
            app.admin_json("/token/refresh/revoke", &by_id)
        )
    };
    tokio::pin!(both);
    tokio::select! {
        waited = tokio::time::timeout(std::time::Duration::from_secs(10), pause.holding(2)) => {
            waited.expect("both revocations reach the paused signer");
        }
        _ = &mut both => panic!("answered with the signer paused"),
    }
    pause.resume();
    let (reuse, revoke) = both.await;
    assert_eq!(
        reuse.error(400, "invalid_grant"),
        "refresh token reuse detected; session revoked"
    );
    assert_eq!(revoke.status, 200, "{}", revoke.text());
    let stored: i64 = app
        .state
        .region
        .db()
        .lock()
        .query_row(
            "SELECT COUNT(*) FROM revocations WHERE kind = 'sid' AND value = ?1",
            [&device.sid],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, 1, "one sid revocation for the session");
    let event_id: String = app
        .state
        .region
        .db()
        .lock()
        .query_row(
            "SELECT event_id FROM revocations WHERE kind = 'sid' AND value = ?1",
            [&device.sid],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(revoke.json()["event_id"], event_id.as_str());
}

#[tokio::test]
async fn client_binding_mode_rotates_in_clear_and_refuses_a_wrong_binding() {
    for app in TestApp::both().await {
        let reply = app
            .admin_json(
                "/token/refresh/create",
                &json!({ "subject": "bob", "client_binding": "fp-123", "expires_days": 2 }),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let body = reply.json();
        assert_eq!(body["token_type"], "bearer");
        assert_eq!(body["refresh_expires_in"], 2 * 24 * 3600);
        let sid = body["session_id"].as_str().unwrap().to_owned();
        let claims = decode_claims(body["access_token"].as_str().unwrap());
        assert_eq!(claims["sid"], sid.as_str());
        assert!(claims.get("cnf").is_none());
        let mut token = body["refresh_token"].as_str().unwrap().to_owned();

        for (binding, expected) in [
            (json!("fp-999"), "does not match"),
            (Value::Null, "needs its client_binding"),
        ] {
            let why = post_refresh(
                &app,
                &json!({ "refresh_token": token, "client_binding": binding }),
                None,
            )
            .await
            .error(400, "invalid_grant");
            assert!(why.contains(expected), "{why}");
        }
        for _ in 0..2 {
            let reply = post_refresh(
                &app,
                &json!({ "refresh_token": token, "client_binding": "fp-123" }),
                None,
            )
            .await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            let body = reply.json();
            assert_eq!(body["token_type"], "bearer");
            assert!(body.get("sealed_refresh_token").is_none());
            let next = body["refresh_token"].as_str().unwrap().to_owned();
            assert_ne!(next, token);
            token = next;
            assert_eq!(
                app.validate(body["access_token"].as_str().unwrap()).await["valid"],
                true
            );
        }
        // A binding-mode client may still ask for sealed delivery.
        let (secret, public) = EphemeralSecret::generate();
        let reply = post_refresh(
            &app,
            &json!({ "refresh_token": token, "client_binding": "fp-123",
                     "kem_public_key": b64::encode(&public) }),
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let sealed = &reply.json()["sealed_refresh_token"];
        let ct = b64::decode(sealed["kem_ciphertext"].as_str().unwrap(), "ct").unwrap();
        let boxed = b64::decode(sealed["sealed"].as_str().unwrap(), "sealed").unwrap();
        let t = transcript(&sid, &token, None, &public);
        assert!(secret.open(&ct, t.as_bytes(), &boxed).is_ok());
    }
}

async fn bearer_session(app: &TestApp) -> (String, String, String) {
    let reply = app
        .admin_json("/token/refresh/create", &json!({ "subject": "carol" }))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    (
        body["session_id"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
        body["access_token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn the_holder_or_the_admin_revokes_a_session() {
    for app in TestApp::both().await {
        // The holder, with its refresh token.
        let (sid, token, access) = bearer_session(&app).await;
        let reply = app
            .post_json("/token/refresh/revoke", &json!({ "refresh_token": token }))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let body = reply.json();
        assert_eq!(body["revoked"], true);
        assert_eq!(body["session_id"], sid.as_str());
        let event_id = body["event_id"].as_str().unwrap().to_owned();
        assert_eq!(app.validate(&access).await["revoked"], true);
        let why = post_refresh(&app, &json!({ "refresh_token": token }), None)
            .await
            .error(400, "invalid_grant");
        assert!(why.starts_with("refresh session was revoked"), "{why}");
        // Again: the same event, no new one.
        let again = app
            .post_json("/token/refresh/revoke", &json!({ "refresh_token": token }))
            .await;
        assert_eq!(again.json()["event_id"], event_id.as_str());

        // The admin, by session id.
        let (sid, token, access) = bearer_session(&app).await;
        let why = app
            .post_json("/token/refresh/revoke", &json!({ "session_id": sid }))
            .await
            .error(401, "unauthorized");
        assert!(why.contains("admin credential"), "{why}");
        let reply = app
            .admin_json("/token/refresh/revoke", &json!({ "session_id": sid }))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["session_id"], sid.as_str());
        assert_eq!(app.validate(&access).await["revoked"], true);
        post_refresh(&app, &json!({ "refresh_token": token }), None)
            .await
            .error(400, "invalid_grant");
        let why = app
            .admin_json("/token/refresh/revoke", &json!({ "session_id": "nope" }))
            .await
            .error(404, "not_found");
        assert!(why.contains("no refresh session"), "{why}");

        // A sid revoked through POST /revoke ends the refresh session too.
        let (sid, token, _) = bearer_session(&app).await;
        app.revoke("sid", &sid).await;
        let why = post_refresh(&app, &json!({ "refresh_token": token }), None)
            .await
            .error(400, "invalid_grant");
        assert!(why.contains("revoked by session"), "{why}");

        // So does a subject revocation (logout everywhere) at or after its creation.
        let (_, token, _) = bearer_session(&app).await;
        app.revoke("sub", "carol").await;
        let why = post_refresh(&app, &json!({ "refresh_token": token }), None)
            .await
            .error(400, "invalid_grant");
        assert!(why.contains("revoked by subject"), "{why}");
    }
}

#[tokio::test]
async fn oauth2_revoke_of_a_refresh_token_revokes_its_session() {
    for app in TestApp::both().await {
        let (_, token, access) = bearer_session(&app).await;
        let reply = app
            .form(
                "/oauth2/revoke",
                &format!("token={token}&token_type_hint=refresh_token"),
                false,
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(app.validate(&access).await["revoked"], true);
        let why = post_refresh(&app, &json!({ "refresh_token": token }), None)
            .await
            .error(400, "invalid_grant");
        assert!(why.starts_with("refresh session was revoked"), "{why}");
        // Again, and an unknown refresh token: 200 with nothing to do (RFC 7009 2.2).
        let again = app
            .form("/oauth2/revoke", &format!("token={token}"), false)
            .await;
        assert_eq!(again.status, 200);
        let unknown = app.form("/oauth2/revoke", "token=rt_unknown", false).await;
        assert_eq!(unknown.status, 200);
    }
}

#[tokio::test]
async fn an_expired_session_is_refused_with_its_expiry() {
    let app = TestApp::new(Transport::InProcess).await;
    let (sid, token, _) = bearer_session(&app).await;
    app.state
        .region
        .db()
        .lock()
        .execute(
            "UPDATE refresh_sessions SET expires_at = 1000 WHERE sid = ?1",
            [&sid],
        )
        .unwrap();
    let why = post_refresh(&app, &json!({ "refresh_token": token }), None)
        .await
        .error(400, "invalid_grant");
    assert_eq!(why, "refresh token expired at 1970-01-01T00:16:40Z");
}

#[tokio::test]
async fn bad_refresh_inputs_get_json_errors() {
    for app in TestApp::both().await {
        let why = app
            .post_json("/token/refresh/create", &json!({ "subject": "x" }))
            .await
            .error(401, "unauthorized");
        assert!(why.contains("admin credential"), "{why}");
        let private =
            serde_json::to_value(SigningKey::generate(Alg::EdDsa).to_private_jwk()).expect("jwk");
        let ec = SigningKey::generate(Alg::Es256);
        let ec_private = serde_json::to_value(ec.to_private_jwk()).expect("jwk");
        let (ec_x, ec_y) = (ec_private["x"].clone(), ec_private["y"].clone());
        for (body, expected) in [
            (json!({ "subject": "" }), "subject must not be empty"),
            (json!({ "subject": "x", "expires_days": 0 }), "expires_days"),
            (
                json!({ "subject": "x", "expires_days": 366 }),
                "expires_days",
            ),
            (json!({ "subject": "x", "device_jwk": "abc" }), "device_jwk"),
            (
                json!({ "subject": "x", "device_jwk": { "kty": "RSA", "n": "AQAB" } }),
                "device_jwk",
            ),
            (
                json!({ "subject": "x", "device_jwk": { "kty": "OKP", "crv": "Ed25519", "x": "AA" } }),
                "device_jwk",
            ),
            (
                json!({ "subject": "x", "device_jwk": private }),
                "private part",
            ),
            (
                json!({ "subject": "x", "device_jwk": ec_private }),
                "private part",
            ),
            (
                json!({ "subject": "x", "device_jwk": { "kty": "EC", "crv": "P-384", "x": ec_x, "y": ec_y } }),
                "curve P-256",
            ),
            (
                json!({ "subject": "x", "device_jwk": { "kty": "EC", "crv": "P-256", "x": ec_x, "y": ec_x } }),
                "not a curve point",
            ),
            (
                json!({ "subject": "x", "device_jwk": { "kty": "EC", "crv": "P-256", "x": ec_x } }),
                "needs x and y",
            ),
            (
                json!({ "subject": "x", "client_binding": "" }),
                "client_binding",
            ),
            (json!({ "subject": 5 }), "subject"),
        ] {
            let why = app
                .admin_json("/token/refresh/create", &body)
                .await
                .error(400, "invalid_request");
            assert!(why.contains(expected), "{body}: {why}");
        }

        let (_, token, _) = bearer_session(&app).await;
        let cases = [
            (
                json!({ "refresh_token": "rt_unknown" }),
                "invalid_grant",
                "refresh token is not known",
            ),
            (
                json!({ "refresh_token": "" }),
                "invalid_request",
                "must not be empty",
            ),
            (
                json!({ "refresh_token": "x".repeat(600) }),
                "invalid_request",
                "limit",
            ),
            (json!({}), "invalid_request", "refresh_token"),
            (
                json!({ "refresh_token": token, "kem_public_key": "!!" }),
                "invalid_request",
                "base64url",
            ),
            (
                json!({ "refresh_token": token, "kem_public_key": "AAAA" }),
                "invalid_request",
                "1216 bytes",
            ),
        ];
        for (body, code, expected) in cases {
            let why = post_refresh(&app, &body, None).await.error(400, code);
            assert!(why.contains(expected), "{body}: {why}");
        }
        let reply = app
            .request(
                "POST",
                "/token/refresh",
                &[],
                Some(("application/json", b"{not json".to_vec())),
            )
            .await;
        reply.error(400, "invalid_request");
        let reply = app
            .request(
                "POST",
                "/token/refresh",
                &[],
                Some(("text/plain", b"{}".to_vec())),
            )
            .await;
        reply.error(415, "unsupported_media_type");
        for body in [
            json!({}),
            json!({ "refresh_token": token, "session_id": "s" }),
        ] {
            let why = app
                .admin_json("/token/refresh/revoke", &body)
                .await
                .error(400, "invalid_request");
            assert!(why.contains("exactly one"), "{why}");
        }
        app.post_json(
            "/token/refresh/revoke",
            &json!({ "refresh_token": "rt_nope" }),
        )
        .await
        .error(400, "invalid_grant");
        // None of it burned the token.
        let reply = post_refresh(&app, &json!({ "refresh_token": token }), None).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
}

#[tokio::test]
async fn the_openapi_document_lists_the_refresh_routes() {
    let app = TestApp::new(Transport::InProcess).await;
    let spec = app.get("/openapi.json").await.json();
    for path in [
        "/token/refresh/create",
        "/token/refresh",
        "/token/refresh/revoke",
    ] {
        assert!(spec["paths"][path]["post"].is_object(), "{path}");
    }
    assert!(spec["components"]["schemas"]["RefreshResponse"].is_object());
}

#[tokio::test]
async fn the_original_services_client_public_key_gets_a_sealed_answer_never_clear_text() {
    for app in TestApp::both().await {
        let reply = app
            .admin_json(
                "/token/refresh/create",
                &json!({ "subject": "dave", "client_binding": "fp-1" }),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let created = reply.json();
        let sid = created["session_id"].as_str().unwrap().to_owned();
        let token = created["refresh_token"].as_str().unwrap().to_owned();

        // A key that is not an X-Wing public key is a 400 naming the field; the token
        // is not burned and nothing comes back in clear.
        let (_, good) = EphemeralSecret::generate();
        let mut not_a_key = good.clone();
        not_a_key.truncate(1000);
        for (bad, expected) in [
            (
                "!!".to_owned(),
                "client_public_key must be unpadded base64url",
            ),
            (
                b64::encode(&not_a_key),
                "client_public_key must be 1216 bytes",
            ),
        ] {
            let reply = post_refresh(
                &app,
                &json!({ "refresh_token": token, "client_binding": "fp-1",
                         "client_public_key": bad }),
                None,
            )
            .await;
            let why = reply.error(400, "invalid_request");
            assert!(why.contains(expected), "{why}");
        }
        let why = post_refresh(
            &app,
            &json!({ "refresh_token": token, "client_binding": "fp-1",
                     "client_public_key": b64::encode(&good),
                     "kem_public_key": b64::encode(&good) }),
            None,
        )
        .await
        .error(400, "invalid_request");
        assert!(why.contains("at most one"), "{why}");

        // The original shape: {refresh_token, client_binding, client_public_key}.
        let (secret, public) = EphemeralSecret::generate();
        let reply = post_refresh(
            &app,
            &json!({ "refresh_token": token, "client_binding": "fp-1",
                     "client_public_key": b64::encode(&public) }),
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let body = reply.json();
        assert!(
            body.get("refresh_token").is_none(),
            "never in clear: {body}"
        );
        assert!(body.get("sealed_refresh_token").is_none(), "{body}");
        let t = transcript(&sid, &token, None, &public);
        assert_eq!(body["transcript_hash"], b64::encode(&sha256(t.as_bytes())));
        let ct = b64::decode(body["kem_ciphertext"].as_str().unwrap(), "ct").unwrap();
        assert_eq!(ct.len(), 1120);
        let boxed = b64::decode(body["encrypted_session_key"].as_str().unwrap(), "esk").unwrap();
        let next = String::from_utf8(secret.open(&ct, t.as_bytes(), &boxed).expect("opens"))
            .expect("utf-8");
        assert!(next.starts_with("rt_") && next != token);

        // The opened token is the session's next refresh token.
        let reply = post_refresh(
            &app,
            &json!({ "refresh_token": next, "client_binding": "fp-1" }),
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
}

#[tokio::test]
async fn token_endpoint_errors_are_400_with_an_oauth_error_code_and_no_challenge() {
    for app in TestApp::both().await {
        // invalid_dpop_proof: missing proof on a bound session.
        let mut device = Device::create(&app, Alg::EdDsa).await;
        let (_, public) = EphemeralSecret::generate();
        let reply = post_refresh(
            &app,
            &json!({ "refresh_token": device.refresh_token, "kem_public_key": b64::encode(&public) }),
            None,
        )
        .await;
        reply.error(400, "invalid_dpop_proof");
        assert_eq!(reply.header("www-authenticate"), "");

        // invalid_grant: reuse of a rotated token.
        let rotated = device.refresh_token.clone();
        assert_eq!(device.refresh(&app).await.status, 200);
        let mut thief = Device {
            key: SigningKey::from_seed(device.key.alg(), &device.key.seed()),
            sid: device.sid.clone(),
            refresh_token: rotated,
            access_token: String::new(),
        };
        let reply = thief.refresh(&app).await;
        reply.error(400, "invalid_grant");
        assert_eq!(reply.header("www-authenticate"), "");

        // invalid_grant: binding mismatch.
        let created = app
            .admin_json(
                "/token/refresh/create",
                &json!({ "subject": "erin", "client_binding": "fp-1" }),
            )
            .await
            .json();
        let reply = post_refresh(
            &app,
            &json!({ "refresh_token": created["refresh_token"], "client_binding": "fp-2" }),
            None,
        )
        .await;
        reply.error(400, "invalid_grant");
        assert_eq!(reply.header("www-authenticate"), "");

        // invalid_request: malformed input.
        post_refresh(&app, &json!({ "refresh_token": 5 }), None)
            .await
            .error(400, "invalid_request");
    }
}

/// With other replicas configured (`CP_REPLICA_URLS`), a refresh token this replica does
/// not hold is asked of them; when one cannot be asked the answer is 503 with
/// `Retry-After` (the session may be there), not "unknown". A token held here is
/// answered here without asking anyone.
#[tokio::test]
async fn a_token_not_held_here_is_asked_of_the_other_replicas() {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("addr"))
    };
    let app = TestApp::with_settings(Transport::Tcp, |s| s.replica_urls = vec![dead]).await;
    let reply = post_refresh(&app, &json!({ "refresh_token": "rt_not-here" }), None).await;
    let why = reply.error(503, "temporarily_unavailable");
    assert!(why.contains("replica"), "{why}");
    assert_eq!(reply.header("retry-after"), "1");

    let admin = format!("Bearer {}", app.secret);
    let created = app
        .request(
            "POST",
            "/token/refresh/create",
            &[("authorization", admin.as_str())],
            Some((
                "application/json",
                json!({ "subject": "held-here" }).to_string().into_bytes(),
            )),
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.text());
    let token = created.json()["refresh_token"].clone();
    let reply = post_refresh(&app, &json!({ "refresh_token": token }), None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // The replicas' internal route is not there for anyone else.
    let reply = app
        .request(
            "POST",
            "/v1/replica/proofs",
            &[("x-cp-replica", "guess")],
            Some((
                "application/json",
                json!({ "jkt": "k", "jti": "j" }).to_string().into_bytes(),
            )),
        )
        .await;
    reply.error(404, "not_found");
}
