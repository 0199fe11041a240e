//! Issue -> validate -> revoke -> validate, for each kind of revocation.

use serde_json::json;

use crate::support::{TestApp, Transport};

#[tokio::test]
async fn issue_validate_revoke_validate_says_revoked_for_each_kind() {
    for transport in [Transport::InProcess, Transport::Tcp] {
        for kind in ["jti", "sub", "kid", "sid"] {
            let app = TestApp::new(transport).await;
            let (token, jti) = app.issue("alice", json!({ "sid": "session-1" })).await;
            let (other, _) = app.issue("bob", json!({ "sid": "session-2" })).await;
            assert_eq!(app.validate(&token).await["valid"], true);

            let value = match kind {
                "jti" => jti.clone(),
                "sub" => "alice".to_owned(),
                "kid" => app.state.region.keys().token_key.kid(),
                _ => "session-1".to_owned(),
            };
            app.revoke(kind, &value).await;

            let body = app.validate(&token).await;
            assert_eq!(body["valid"], false, "{kind}: {body}");
            assert_eq!(body["revoked"], true, "{kind}: {body}");
            let expected = match kind {
                "jti" => "token revoked (jti) at ",
                "sub" => "token revoked by subject at ",
                "kid" => "token revoked by signing key at ",
                _ => "token revoked by session at ",
            };
            assert!(
                body["message"].as_str().unwrap().starts_with(expected),
                "{kind}: {body}"
            );
            // Only a key revocation reaches bob's token.
            let other_body = app.validate(&other).await;
            assert_eq!(other_body["revoked"], kind == "kid", "{kind}: {other_body}");
        }
    }
}

#[tokio::test]
async fn a_subject_revocation_spares_tokens_issued_after_it() {
    let app = TestApp::new(Transport::InProcess).await;
    let (before, _) = app.issue("alice", json!({})).await;
    app.revoke("sub", "alice").await;
    // A login one second after the revocation (iat is whole seconds; the same second is
    // covered on purpose).
    let later = app.forge(|c| {
        c.sub = "alice".into();
        c.iat += 1;
    });
    assert_eq!(app.validate(&before).await["revoked"], true);
    let body = app.validate(&later).await;
    assert_eq!(body["valid"], true, "{body}");
}

#[tokio::test]
async fn tokens_signed_with_ml_dsa_65_are_issued_and_revoked_too() {
    let app = TestApp::with_settings(Transport::Tcp, |s| {
        s.signing_alg = shared::Alg::MlDsa65;
    })
    .await;
    let (token, jti) = app.issue("carol", json!({})).await;
    let header = token.split('.').next().unwrap();
    let header: serde_json::Value =
        serde_json::from_slice(&shared::b64::decode(header, "h").unwrap()).unwrap();
    assert_eq!(header["alg"], "ML-DSA-65");
    assert_eq!(app.validate(&token).await["valid"], true);
    app.revoke("jti", &jti).await;
    assert_eq!(app.validate(&token).await["revoked"], true);
}
