//! Acknowledged revocations survive `kill -9`; the audit log detects tampering.

use serde_json::json;

use crate::support::{Server, TestApp, Transport, blocking_json, run_cli};

#[test]
fn a_revocation_survives_kill_9_and_the_audit_log_still_verifies() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let secret = control_plane::read_admin_secret(&data).unwrap();
    let (status, issued) = blocking_json(
        "POST",
        &format!("{}/token", server.url),
        Some(&secret),
        &json!({ "subject": "alice" }),
    );
    assert_eq!(status, 200, "{issued}");
    let token = issued["access_token"].as_str().unwrap().to_owned();
    let jti = issued["jti"].as_str().unwrap().to_owned();
    let (status, revoked) = blocking_json(
        "POST",
        &format!("{}/revoke", server.url),
        Some(&secret),
        &json!({ "type": "revoke_jti", "value": jti }),
    );
    assert_eq!(status, 200, "{revoked}");
    // Straight after the answer: no shutdown, no flush, nothing.
    server.kill_9();

    let server = Server::start(&data);
    let (status, body) = blocking_json(
        "POST",
        &format!("{}/token/validate", server.url),
        None,
        &json!({ "token": token }),
    );
    assert_eq!(status, 200);
    assert_eq!(body["valid"], false, "{body}");
    assert_eq!(body["revoked"], true, "{body}");
    server.kill_9();

    let (ok, stdout, stderr) = run_cli(&data, &["audit", "verify"]);
    assert!(ok, "audit verify failed: {stdout} {stderr}");
    assert!(stdout.contains("audit log OK"), "{stdout}");
}

#[tokio::test]
async fn editing_one_audit_row_makes_audit_verify_name_it() {
    let app = TestApp::new(Transport::InProcess).await;
    app.issue("alice", json!({})).await;
    app.revoke("sub", "alice").await;
    app.issue("bob", json!({})).await;
    let data = app.data_dir();
    let (ok, stdout, _) = run_cli(&data, &["audit", "verify"]);
    assert!(ok, "{stdout}");

    let conn = rusqlite::Connection::open(data.join("control-plane.db")).unwrap();
    let refused = conn.execute(
        "UPDATE audit SET entry = replace(entry, 'alice', 'mallory') WHERE seq = 3",
        [],
    );
    assert!(
        refused.is_err(),
        "the append-only trigger refuses edits through SQL"
    );
    // An attacker with file access drops the trigger first; the chain still tells.
    conn.execute_batch("DROP TRIGGER audit_no_update").unwrap();
    let changed = conn
        .execute(
            "UPDATE audit SET entry = replace(entry, 'alice', 'mallory') WHERE seq = 3",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);

    let (ok, _, stderr) = run_cli(&data, &["audit", "verify"]);
    assert!(!ok, "verify must fail");
    assert!(stderr.contains("audit row 3 is invalid"), "{stderr}");
}

#[tokio::test]
async fn deleting_an_audit_row_is_found_too() {
    let app = TestApp::new(Transport::InProcess).await;
    app.issue("alice", json!({})).await;
    app.issue("bob", json!({})).await;
    let data = app.data_dir();
    let conn = rusqlite::Connection::open(data.join("control-plane.db")).unwrap();
    conn.execute_batch("DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq = 2;")
        .unwrap();
    drop(conn);
    let (ok, _, stderr) = run_cli(&data, &["audit", "verify"]);
    assert!(!ok);
    assert!(stderr.contains("audit row 3 is invalid"), "{stderr}");
}

#[tokio::test]
async fn the_audit_log_records_issuance_and_revocations_but_never_secrets() {
    let app = TestApp::new(Transport::InProcess).await;
    let (token, jti) = app.issue("alice", json!({})).await;
    app.revoke("jti", &jti).await;
    let conn = rusqlite::Connection::open(app.data_dir().join("control-plane.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT entry FROM audit ORDER BY seq")
        .unwrap();
    let entries: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let all = entries.join("\n");
    assert!(all.contains("\"token.issued\"") && all.contains(&jti));
    assert!(all.contains("\"revocation\""));
    assert!(!all.contains(&token), "tokens are not logged");
    assert!(!all.contains(&app.secret), "the admin secret is not logged");
    let seeds: Vec<Vec<u8>> = conn
        .prepare("SELECT seed FROM keys")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for seed in seeds {
        assert!(
            !all.contains(&shared::b64::encode(&seed)),
            "no key seed logged"
        );
    }
}

#[cfg(unix)]
#[tokio::test]
async fn the_admin_credential_file_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let app = TestApp::new(Transport::InProcess).await;
    let mode = std::fs::metadata(app.data_dir().join("admin.secret"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
