//! `POST /oauth2/token` (RFC 6749 refresh grant with RFC 9449 DPoP and server nonces)
//! and the RFC 8414 metadata, in-process and over TCP.

use serde_json::{Value, json};
use shared::dpop::{self, DpopClaims};
use shared::kem::EphemeralSecret;
use shared::keys::{Alg, SigningKey};
use shared::{b64, random, sha256};

use crate::support::{Reply, Server, TestApp, Transport, blocking_json};

/// Host the in-process requests claim (TCP requests carry the real one).
const HOST: &str = "cp.test";

fn token_url(app: &TestApp) -> String {
    if app.is_tcp() {
        format!("{}/oauth2/token", app.base_url())
    } else {
        format!("http://{HOST}/oauth2/token")
    }
}

fn proof_with(key: &SigningKey, htu: &str, nonce: Option<&str>) -> String {
    dpop::sign_proof(
        key,
        &DpopClaims {
            jti: random::id(),
            htm: "POST".into(),
            htu: htu.into(),
            iat: control_plane::now(),
            ath: None,
            nonce: nonce.map(str::to_owned),
        },
    )
    .expect("proof")
}

fn form_encode(pairs: &[(&str, &str)]) -> Vec<u8> {
    let escape = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

async fn post_token(app: &TestApp, pairs: &[(&str, &str)], dpop: Option<&str>) -> Reply {
    let mut headers = Vec::new();
    if !app.is_tcp() {
        headers.push(("host", HOST));
    }
    if let Some(p) = dpop {
        headers.push(("dpop", p));
    }
    app.request(
        "POST",
        "/oauth2/token",
        &headers,
        Some(("application/x-www-form-urlencoded", form_encode(pairs))),
    )
    .await
}

/// Any answer of the endpoint: not cacheable, and (nonces on) the current nonce.
fn nonce_of(reply: &Reply) -> String {
    assert_eq!(reply.header("cache-control"), "no-store", "{reply:?}");
    let nonce = reply.header("dpop-nonce");
    assert!(nonce.len() >= 32, "DPoP-Nonce header: {reply:?}");
    nonce.to_owned()
}

struct Session {
    key: SigningKey,
    sid: String,
    refresh_token: String,
}

async fn bound_session(app: &TestApp, alg: Alg) -> Session {
    let key = SigningKey::generate(alg);
    let jwk = serde_json::to_value(key.verifying_key().to_jwk()).expect("jwk");
    let reply = app
        .admin_json(
            "/token/refresh/create",
            &json!({ "subject": "alice", "device_jwk": jwk, "scope": "read write" }),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    Session {
        key,
        sid: body["session_id"].as_str().unwrap().to_owned(),
        refresh_token: body["refresh_token"].as_str().unwrap().to_owned(),
    }
}

/// A first request without a nonce, to learn it (as an RFC 9449 client does).
async fn learn_nonce(app: &TestApp, session: &Session) -> String {
    let proof = proof_with(&session.key, &token_url(app), None);
    let reply = post_token(
        app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &session.refresh_token),
        ],
        Some(&proof),
    )
    .await;
    let why = reply.error(400, "use_dpop_nonce");
    assert!(why.contains("nonce"), "{why}");
    nonce_of(&reply)
}

fn claims(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(&b64::decode(part, "payload").unwrap()).unwrap()
}

#[tokio::test]
async fn a_bound_session_refreshes_with_dpop_after_the_nonce_retry() {
    for app in TestApp::both().await {
        for alg in [Alg::EdDsa, Alg::Es256, Alg::MlDsa65] {
            let mut session = bound_session(&app, alg).await;
            let nonce = learn_nonce(&app, &session).await;

            // The retry with the nonce succeeds: RFC 6749 5.1, token_type DPoP, the
            // rotated token in clear (it is useless without the device key).
            let proof = proof_with(&session.key, &token_url(&app), Some(&nonce));
            let reply = post_token(
                &app,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &session.refresh_token),
                    ("client_id", "any-public-client"),
                    ("unknown_parameter", "ignored as RFC 6749 3.2 says"),
                ],
                Some(&proof),
            )
            .await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            assert!(reply.header("content-type").starts_with("application/json"));
            assert_eq!(reply.header("pragma"), "no-cache");
            nonce_of(&reply);
            let body = reply.json();
            assert_eq!(body["token_type"], "DPoP", "{body}");
            assert_eq!(body["expires_in"], 900);
            assert_eq!(body["scope"], "read write");
            assert_eq!(body["session_id"], session.sid.as_str());
            let access = body["access_token"].as_str().unwrap();
            assert_eq!(
                claims(access)["cnf"]["jkt"],
                session.key.verifying_key().thumbprint()
            );
            assert_eq!(app.validate(access).await["valid"], true);
            let next = body["refresh_token"].as_str().unwrap().to_owned();
            assert!(next.starts_with("rt_") && next != session.refresh_token);
            session.refresh_token = next;

            // The extension: a KEM key gets the rotated token sealed, never in clear.
            let (secret, public) = EphemeralSecret::generate();
            let proof = proof_with(&session.key, &token_url(&app), Some(&nonce));
            let reply = post_token(
                &app,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &session.refresh_token),
                    ("kem_public_key", &b64::encode(&public)),
                    ("scope", "write read"),
                ],
                Some(&proof),
            )
            .await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            let body = reply.json();
            assert!(body.get("refresh_token").is_none(), "{body}");
            let transcript = control_plane::refresh_transcript(
                &session.sid,
                &session.refresh_token,
                Some(&proof),
                &public,
            );
            assert_eq!(
                body["transcript_hash"],
                b64::encode(&sha256(transcript.as_bytes()))
            );
            let sealed = &body["sealed_refresh_token"];
            let opened = secret
                .open(
                    &b64::decode(sealed["kem_ciphertext"].as_str().unwrap(), "ct").unwrap(),
                    transcript.as_bytes(),
                    &b64::decode(sealed["sealed"].as_str().unwrap(), "box").unwrap(),
                )
                .expect("opens");
            assert!(String::from_utf8(opened).unwrap().starts_with("rt_"));
        }
    }
}

#[tokio::test]
async fn an_unbound_session_refreshes_as_bearer_without_dpop() {
    for app in TestApp::both().await {
        let reply = app
            .admin_json("/token/refresh/create", &json!({ "subject": "bob" }))
            .await;
        let rt = reply.json()["refresh_token"].as_str().unwrap().to_owned();
        let reply = post_token(
            &app,
            &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        nonce_of(&reply);
        let body = reply.json();
        assert_eq!(body["token_type"], "Bearer", "{body}");
        assert!(body.get("scope").is_none(), "{body}");
        assert!(
            claims(body["access_token"].as_str().unwrap())
                .get("cnf")
                .is_none()
        );
        assert!(body["refresh_token"].as_str().unwrap().starts_with("rt_"));
    }
}

#[tokio::test]
async fn reusing_a_rotated_refresh_token_at_the_token_endpoint_revokes_the_family() {
    let app = TestApp::new(Transport::Tcp).await;
    let session = bound_session(&app, Alg::EdDsa).await;
    let nonce = learn_nonce(&app, &session).await;
    let refresh = |rt: String| {
        let proof = proof_with(&session.key, &token_url(&app), Some(&nonce));
        let app = &app;
        async move {
            post_token(
                app,
                &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
                Some(&proof),
            )
            .await
        }
    };
    let first = refresh(session.refresh_token.clone()).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let first = first.json();
    let current = first["refresh_token"].as_str().unwrap().to_owned();
    let access = first["access_token"].as_str().unwrap().to_owned();

    // The rotated token again: reuse, the whole session is revoked.
    let reply = refresh(session.refresh_token.clone()).await;
    let why = reply.error(400, "invalid_grant");
    assert_eq!(why, "refresh token reuse detected; session revoked");
    nonce_of(&reply);
    let body = app.validate(&access).await;
    assert_eq!(body["valid"], false, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("session"),
        "{body}"
    );
    // The current token of the family is dead too.
    let why = refresh(current).await.error(400, "invalid_grant");
    assert!(why.contains("revoked"), "{why}");
    let rows: i64 = app
        .state
        .region
        .db()
        .lock()
        .query_row(
            "SELECT COUNT(*) FROM revocations WHERE kind = 'sid' AND value = ?1",
            [&session.sid],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn each_token_endpoint_error_has_its_status_and_oauth_json() {
    for app in TestApp::both().await {
        let session = bound_session(&app, Alg::EdDsa).await;
        let nonce = learn_nonce(&app, &session).await;
        let url = token_url(&app);
        let rt = session.refresh_token.as_str();
        let good = |nonce: &str| proof_with(&session.key, &url, Some(nonce));

        // invalid_request: missing parameters, a repeated one, a bad KEM key.
        let reply = post_token(&app, &[("refresh_token", rt)], Some(&good(&nonce))).await;
        assert!(reply.error(400, "invalid_request").contains("grant_type"));
        nonce_of(&reply);
        let reply = post_token(&app, &[("grant_type", "refresh_token")], None).await;
        assert!(
            reply
                .error(400, "invalid_request")
                .contains("refresh_token")
        );
        let reply = post_token(
            &app,
            &[
                ("grant_type", "refresh_token"),
                ("grant_type", "refresh_token"),
                ("refresh_token", rt),
            ],
            None,
        )
        .await;
        assert!(reply.error(400, "invalid_request").contains("grant_type"));
        let reply = post_token(
            &app,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", rt),
                ("kem_public_key", "AAAA"),
            ],
            Some(&good(&nonce)),
        )
        .await;
        assert!(
            reply
                .error(400, "invalid_request")
                .contains("kem_public_key")
        );

        // unsupported_grant_type.
        let reply = post_token(
            &app,
            &[("grant_type", "client_credentials"), ("refresh_token", rt)],
            None,
        )
        .await;
        assert!(
            reply
                .error(400, "unsupported_grant_type")
                .contains("client_credentials")
        );
        nonce_of(&reply);

        // invalid_grant: an unknown refresh token.
        let reply = post_token(
            &app,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", "rt_nope"),
            ],
            Some(&good(&nonce)),
        )
        .await;
        assert_eq!(
            reply.error(400, "invalid_grant"),
            "refresh token is not known"
        );

        // invalid_scope: more than the session's.
        let reply = post_token(
            &app,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", rt),
                ("scope", "read write admin"),
            ],
            Some(&good(&nonce)),
        )
        .await;
        assert!(reply.error(400, "invalid_scope").contains("admin"));

        // invalid_dpop_proof: none, another key, another URL, a replay.
        let reply = post_token(
            &app,
            &[("grant_type", "refresh_token"), ("refresh_token", rt)],
            None,
        )
        .await;
        assert!(reply.error(400, "invalid_dpop_proof").contains("DPoP"));
        assert!(reply.headers.get("www-authenticate").is_none());
        let other = SigningKey::generate(Alg::EdDsa);
        let reply = post_token(
            &app,
            &[("grant_type", "refresh_token"), ("refresh_token", rt)],
            Some(&proof_with(&other, &url, Some(&nonce))),
        )
        .await;
        assert!(reply.error(400, "invalid_dpop_proof").contains("jkt"));
        let reply = post_token(
            &app,
            &[("grant_type", "refresh_token"), ("refresh_token", rt)],
            Some(&proof_with(
                &session.key,
                "http://elsewhere.test/oauth2/token",
                Some(&nonce),
            )),
        )
        .await;
        reply.error(400, "invalid_dpop_proof");
        let proof = good(&nonce);
        let form = [("grant_type", "refresh_token"), ("refresh_token", rt)];
        let reply = post_token(&app, &form, Some(&proof)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let next = reply.json()["refresh_token"].as_str().unwrap().to_owned();
        let reply = post_token(
            &app,
            &[("grant_type", "refresh_token"), ("refresh_token", &next)],
            Some(&proof),
        )
        .await;
        assert!(reply.error(400, "invalid_dpop_proof").contains("replay"));

        // use_dpop_nonce: a made-up nonce; the answer carries the real one.
        let reply = post_token(
            &app,
            &[("grant_type", "refresh_token"), ("refresh_token", &next)],
            Some(&good("not-the-nonce")),
        )
        .await;
        assert!(reply.error(400, "use_dpop_nonce").contains("stale"));
        assert_eq!(nonce_of(&reply), nonce);

        // 415 for a JSON body, still with the nonce.
        let reply = app
            .request(
                "POST",
                "/oauth2/token",
                &[("host", HOST)],
                Some((
                    "application/json",
                    br#"{"grant_type":"refresh_token"}"#.to_vec(),
                )),
            )
            .await;
        reply.error(415, "unsupported_media_type");
        nonce_of(&reply);

        // None of the refused requests burnt the current token.
        let reply = post_token(
            &app,
            &[("grant_type", "refresh_token"), ("refresh_token", &next)],
            Some(&good(&nonce)),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
}

#[tokio::test]
async fn nonces_can_be_turned_off() {
    let app = TestApp::with_settings(Transport::InProcess, |s| s.dpop_nonce = false).await;
    let session = bound_session(&app, Alg::MlDsa65).await;
    let proof = proof_with(&session.key, &token_url(&app), None);
    let reply = post_token(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &session.refresh_token),
        ],
        Some(&proof),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.headers.get("dpop-nonce").is_none());
}

#[tokio::test]
async fn the_nonce_secret_survives_a_restart_of_the_state() {
    let app = TestApp::new(Transport::InProcess).await;
    let session = bound_session(&app, Alg::EdDsa).await;
    let nonce = learn_nonce(&app, &session).await;
    let secret =
        std::fs::read_to_string(app.data_dir().join(control_plane::DPOP_NONCE_SECRET_FILE))
            .expect("secret file");
    let again = control_plane::DpopNonces::load(&app.data_dir()).unwrap();
    assert!(again.accepted(control_plane::now()).contains(&nonce));
    assert!(!secret.trim().is_empty());
}

#[tokio::test]
async fn the_authorization_server_metadata_names_the_endpoints() {
    for app in TestApp::both().await {
        let host: &[(&str, &str)] = if app.is_tcp() { &[] } else { &[("host", HOST)] };
        let reply = app
            .request("GET", "/.well-known/oauth-authorization-server", host, None)
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let body = reply.json();
        // The issuer is a URL (here the default, `serve`'s default listen address): it
        // starts every endpoint URL.
        let base = "http://127.0.0.1:8000";
        assert_eq!(body["issuer"], base);
        assert_eq!(body["token_endpoint"], format!("{base}/oauth2/token"));
        assert_eq!(body["revocation_endpoint"], format!("{base}/oauth2/revoke"));
        assert_eq!(
            body["introspection_endpoint"],
            format!("{base}/oauth2/introspect")
        );
        assert_eq!(body["jwks_uri"], format!("{base}/.well-known/jwks.json"));
        assert_eq!(body["grant_types_supported"], json!(["refresh_token"]));
        assert_eq!(
            body["token_endpoint_auth_methods_supported"],
            json!(["none"])
        );
        assert_eq!(
            body["dpop_signing_alg_values_supported"],
            json!(["EdDSA", "Ed25519", "ES256", "ML-DSA-65"])
        );
    }
    // A legacy issuer that is no URL: the endpoints start with the URL the request reached.
    let app = TestApp::with_settings(Transport::InProcess, |s| {
        s.issuer = "pq-control-plane".into();
    })
    .await;
    let body = app
        .request(
            "GET",
            "/.well-known/oauth-authorization-server",
            &[("host", HOST)],
            None,
        )
        .await
        .json();
    assert_eq!(body["issuer"], "pq-control-plane");
    assert_eq!(
        body["token_endpoint"],
        format!("http://{HOST}/oauth2/token")
    );
    // CP_PUBLIC_URL starts the endpoints even beside another issuer.
    let app = TestApp::with_settings(Transport::InProcess, |s| {
        s.issuer = "https://auth.example".into();
        s.public_url = Some("https://cp-a.example".into());
    })
    .await;
    let body = app
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    assert_eq!(body["issuer"], "https://auth.example");
    assert_eq!(body["token_endpoint"], "https://cp-a.example/oauth2/token");
    // An issuer that is a URL is the base of every endpoint.
    let app = TestApp::with_settings(Transport::InProcess, |s| {
        s.issuer = "https://auth.example".into();
    })
    .await;
    let body = app
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    assert_eq!(body["issuer"], "https://auth.example");
    assert_eq!(body["token_endpoint"], "https://auth.example/oauth2/token");
    let spec = app.get("/openapi.json").await.json();
    for path in ["/oauth2/token", "/.well-known/oauth-authorization-server"] {
        assert!(spec["paths"].get(path).is_some(), "{path} in the spec");
    }
}

#[tokio::test]
async fn the_dpop_challenge_names_every_accepted_proof_alg_and_an_es256_proof_passes() {
    let app = TestApp::new(Transport::Tcp).await;
    let device = SigningKey::generate(Alg::Es256);
    let jkt = device.verifying_key().thumbprint();
    let (token, _) = app.issue("erin", json!({ "cnf": { "jkt": jkt } })).await;
    let url = format!("{}/revoke/token", app.base_url());
    let body = json!({ "token": token, "scopes": ["sub"] }).to_string();
    let send = |proof: Option<String>| {
        let mut headers = vec![];
        if let Some(p) = &proof {
            headers.push(("dpop", p.clone()));
        }
        let body = body.clone().into_bytes();
        let app = &app;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            app.request(
                "POST",
                "/revoke/token",
                &headers,
                Some(("application/json", body)),
            )
            .await
        }
    };
    let refused = send(None).await;
    refused.error(401, "invalid_dpop_proof");
    assert_eq!(
        refused.header("www-authenticate"),
        format!(
            r#"DPoP realm="control-plane", error="invalid_dpop_proof", algs="{}""#,
            dpop::PROOF_ALGS_CHALLENGE
        )
    );
    // The holder of the P-256 key proves it with ES256.
    let proof = dpop::sign_proof(
        &device,
        &DpopClaims {
            jti: random::id(),
            htm: "POST".into(),
            htu: url,
            iat: control_plane::now(),
            ath: Some(dpop::ath(&token)),
            nonce: None,
        },
    )
    .expect("proof");
    let header = proof.split('.').next().expect("header");
    assert!(
        b64::decode(header, "h")
            .unwrap()
            .starts_with(br#"{"alg":"ES256""#)
    );
    let done = send(Some(proof)).await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(app.validate(&token).await["valid"], false);
}

#[tokio::test]
async fn validate_and_introspection_accept_an_access_token_whose_header_names_ed25519() {
    let app = TestApp::new(Transport::InProcess).await;
    let ours = app.forge(|c| c.sub = "frank".into());
    let (header, rest) = ours.split_once('.').expect("jws");
    let mut header: Value = serde_json::from_slice(&b64::decode(header, "h").unwrap()).unwrap();
    assert_eq!(
        header["alg"], "EdDSA",
        "our tokens keep the name jwt_authn knows"
    );
    // The same token under the RFC 9864 name, signed again by the same key.
    header["alg"] = json!("Ed25519");
    let (payload, _) = rest.split_once('.').expect("jws");
    let input = format!("{}.{payload}", b64::encode(header.to_string().as_bytes()));
    let signature = app
        .state
        .region
        .keys()
        .token_key
        .sign(input.as_bytes())
        .expect("sign");
    let renamed = format!("{input}.{}", b64::encode(&signature));
    let verdict = app.validate(&renamed).await;
    assert_eq!(verdict["valid"], true, "{verdict}");
    let reply = app
        .form("/oauth2/introspect", &format!("token={renamed}"), true)
        .await;
    assert_eq!(reply.json()["active"], true, "{}", reply.text());
    assert_eq!(reply.json()["sub"], "frank");
    // Any other name for that key is refused.
    header["alg"] = json!("ES256");
    let input = format!("{}.{payload}", b64::encode(header.to_string().as_bytes()));
    let wrong = format!("{input}.{}", b64::encode(&signature));
    assert_eq!(app.validate(&wrong).await["valid"], false);
}

/// GET `url` as JSON.
fn get_json(url: &str) -> Value {
    reqwest::blocking::get(url)
        .and_then(reqwest::blocking::Response::json)
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// The claims of a compact JWS, unverified.
fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("a compact JWS");
    serde_json::from_slice(&b64::decode(part, "payload").expect("base64url")).expect("JSON")
}

/// Issues a token for `subject` from a running server.
fn issue_from(server: &Server, secret: &str, subject: &str) -> String {
    let (status, body) = blocking_json(
        "POST",
        &format!("{}/token", server.url),
        Some(secret),
        &json!({ "subject": subject }),
    );
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().expect("token").to_owned()
}

/// `/token/validate` and `/oauth2/introspect` (with the admin credential) of `token` at
/// a running server: (valid, active).
fn checked_at(server: &Server, secret: &str, token: &str) -> (bool, bool) {
    let (status, validated) = blocking_json(
        "POST",
        &format!("{}/token/validate", server.url),
        None,
        &json!({ "token": token }),
    );
    assert_eq!(status, 200, "{validated}");
    let introspected: Value = reqwest::blocking::Client::new()
        .post(format!("{}/oauth2/introspect", server.url))
        .bearer_auth(secret)
        .form(&[("token", token)])
        .send()
        .and_then(reqwest::blocking::Response::json)
        .expect("introspect");
    (validated["valid"] == true, introspected["active"] == true)
}

#[test]
fn the_metadata_issuer_is_the_url_it_is_served_under_and_the_tokens_iss() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("data");
    // No CP_ISSUER, no CP_PUBLIC_URL: derived from the concrete (loopback) listen address.
    let server = Server::start(&data);
    let secret = control_plane::read_admin_secret(&data).unwrap();
    let metadata = get_json(&format!(
        "{}/.well-known/oauth-authorization-server",
        server.url
    ));
    assert_eq!(metadata["issuer"], server.url.as_str());
    assert_eq!(
        metadata["token_endpoint"],
        format!("{}/oauth2/token", server.url)
    );
    assert_eq!(
        metadata["jwks_uri"],
        format!("{}/.well-known/jwks.json", server.url)
    );
    let token = issue_from(&server, &secret, "alice");
    assert_eq!(payload(&token)["iss"], server.url.as_str());
    let introspected: Value = reqwest::blocking::Client::new()
        .post(format!("{}/oauth2/introspect", server.url))
        .bearer_auth(&secret)
        .form(&[("token", token.as_str())])
        .send()
        .and_then(reqwest::blocking::Response::json)
        .expect("introspect");
    assert_eq!(introspected["active"], true, "{introspected}");
    assert_eq!(introspected["iss"], server.url.as_str());
}

#[test]
fn an_issuer_switch_accepts_the_old_issuer_until_it_is_dropped() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("data");
    let new = "https://cp-a.example";
    // Before: the former default, set explicitly (it keeps working).
    let before = Server::start_with(&data, &["--issuer", "pq-control-plane"], None);
    let secret = control_plane::read_admin_secret(&data).unwrap();
    let old_token = issue_from(&before, &secret, "alice");
    assert_eq!(payload(&old_token)["iss"], "pq-control-plane");
    assert_eq!(checked_at(&before, &secret, &old_token), (true, true));
    drop(before);

    // The switch: the new issuer signs, the old one is still accepted.
    let during = Server::start_with(
        &data,
        &["--issuer", new, "--accepted-issuers", "pq-control-plane"],
        None,
    );
    let new_token = issue_from(&during, &secret, "bob");
    assert_eq!(payload(&new_token)["iss"], new);
    assert_eq!(
        checked_at(&during, &secret, &old_token),
        (true, true),
        "a live token of the old issuer is not refused during the switch"
    );
    assert_eq!(checked_at(&during, &secret, &new_token), (true, true));
    let metadata = get_json(&format!(
        "{}/.well-known/oauth-authorization-server",
        during.url
    ));
    assert_eq!(metadata["issuer"], new);
    drop(during);

    // After one maximum token lifetime the old issuer is dropped.
    let after = Server::start_with(&data, &["--issuer", new], None);
    assert_eq!(checked_at(&after, &secret, &old_token), (false, false));
    assert_eq!(checked_at(&after, &secret, &new_token), (true, true));
    let (_, validated) = blocking_json(
        "POST",
        &format!("{}/token/validate", after.url),
        None,
        &json!({ "token": old_token }),
    );
    assert!(
        validated.to_string().contains("issuer"),
        "the refusal names the issuer: {validated}"
    );
}

#[test]
fn a_derived_issuer_is_kept_across_restarts_and_an_old_data_dir_keeps_the_former_default() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("data");
    // No CP_ISSUER, no CP_PUBLIC_URL: derived from the listen address at the first start.
    let first = Server::start(&data);
    let secret = control_plane::read_admin_secret(&data).unwrap();
    let issuer = first.url.clone();
    let token = issue_from(&first, &secret, "alice");
    assert_eq!(payload(&token)["iss"], issuer.as_str());
    drop(first);

    // Another port: the recorded issuer stays, so the live token and the edges' issuer
    // still hold.
    let second = Server::start(&data);
    assert_ne!(second.url, issuer, "the restart listens elsewhere");
    assert_eq!(
        payload(&issue_from(&second, &secret, "bob"))["iss"],
        issuer.as_str()
    );
    assert_eq!(checked_at(&second, &secret, &token), (true, true));
    drop(second);

    // A data dir from before issuers were recorded (it has keys, no issuer): upgrading
    // keeps the former default, which the edges are configured with.
    let conn = rusqlite::Connection::open(data.join("control-plane.db")).unwrap();
    conn.execute("DELETE FROM issuer", []).unwrap();
    drop(conn);
    let upgraded = Server::start(&data);
    assert_eq!(
        payload(&issue_from(&upgraded, &secret, "carol"))["iss"],
        "pq-control-plane"
    );
    drop(upgraded);

    // An explicit issuer is used as given: the documented switch.
    let switched = Server::start_with(
        &data,
        &[
            "--issuer",
            "https://cp-a.example",
            "--accepted-issuers",
            "pq-control-plane",
        ],
        None,
    );
    assert_eq!(
        payload(&issue_from(&switched, &secret, "dave"))["iss"],
        "https://cp-a.example"
    );
}
