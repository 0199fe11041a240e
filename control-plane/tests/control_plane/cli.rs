//! The operator CLI on a data directory and against a running server.

use serde_json::Value;

use crate::support::{TestApp, Transport, run_cli};

fn json_of(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[test]
fn issue_inspect_revoke_and_rotate_work_on_a_data_dir() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("data");
    let (ok, out, err) = run_cli(
        &data,
        &[
            "issue",
            "--subject",
            "alice",
            "--claims",
            r#"{"sid":"s-1"}"#,
        ],
    );
    assert!(ok, "{err}");
    let issued = json_of(&out);
    let token = issued["access_token"].as_str().unwrap().to_owned();
    let jti = issued["jti"].as_str().unwrap().to_owned();

    let (ok, out, err) = run_cli(&data, &["inspect", &token]);
    assert!(ok, "{err}");
    let check = json_of(&out);
    assert_eq!(check["valid"], true, "{check}");
    assert_eq!(check["claims"]["sid"], "s-1");

    let (ok, out, err) = run_cli(&data, &["revoke", "--type", "jti", "--value", &jti]);
    assert!(ok, "{err}");
    assert!(json_of(&out)["event_id"].is_string());
    let check = json_of(&run_cli(&data, &["inspect", &token]).1);
    assert_eq!(check["revoked"], true, "{check}");

    let (ok, out, err) = run_cli(&data, &["keys", "rotate"]);
    assert!(ok, "{err}");
    assert_eq!(json_of(&out)["created"].as_array().unwrap().len(), 2);
    let listed = json_of(&run_cli(&data, &["keys", "list"]).1);
    assert_eq!(listed.as_array().unwrap().len(), 4);

    let (ok, out, err) = run_cli(&data, &["audit", "verify"]);
    assert!(ok, "{out} {err}");

    let (ok, _, err) = run_cli(&data, &["revoke", "--type", "everything", "--value", "x"]);
    assert!(!ok && err.contains("invalid value"), "{err}");
    let (ok, _, err) = run_cli(&data, &["issue", "--subject", "a", "--claims", "[1]"]);
    assert!(
        !ok && err.contains("--claims must be a JSON object"),
        "{err}"
    );
}

#[test]
fn the_cli_signs_an_ml_dsa_token_and_revokes_its_signing_key() {
    // Both go through the region's async path on the command's own runtime: the
    // ML-DSA signature and the key's retirement run on that runtime's blocking pool.
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("data");
    let cli = |args: &[&str]| {
        let mut all = vec!["--signing-alg", "ML-DSA-65"];
        all.extend_from_slice(args);
        run_cli(&data, &all)
    };
    let (ok, out, err) = cli(&["issue", "--subject", "mila"]);
    assert!(ok, "{err}");
    let token = json_of(&out)["access_token"].as_str().unwrap().to_owned();
    let header = shared::b64::decode(token.split('.').next().unwrap(), "header").unwrap();
    let header: Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(header["alg"], "ML-DSA-65", "{header}");
    let kid = header["kid"].as_str().unwrap().to_owned();

    let (ok, out, err) = cli(&["revoke", "--type", "kid", "--value", &kid]);
    assert!(ok, "{err}");
    assert!(json_of(&out)["event_id"].is_string(), "{out}");
    let check = json_of(&cli(&["inspect", &token]).1);
    assert_eq!(check["revoked"], true, "{check}");
    let keys = json_of(&cli(&["keys", "list"]).1);
    let revoked = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap();
    assert!(revoked["retired_at"].is_i64(), "{keys}");
}

#[test]
fn audit_verify_on_a_missing_data_dir_fails_without_creating_it() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("nothing-here");
    let (ok, _, err) = run_cli(&data, &["audit", "verify"]);
    assert!(!ok);
    assert!(err.contains("no database"), "{err}");
    assert!(!data.exists());
}

#[tokio::test]
async fn the_cli_talks_to_a_running_server() {
    let app = TestApp::new(Transport::Tcp).await;
    let data = app.data_dir();
    let url = app.base_url();
    let (token, jti) = {
        let data = data.clone();
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let (ok, out, err) = run_cli(&data, &["issue", "--subject", "zoe", "--server", &url]);
            assert!(ok, "{err}");
            let issued = json_of(&out);
            (
                issued["access_token"].as_str().unwrap().to_owned(),
                issued["jti"].as_str().unwrap().to_owned(),
            )
        })
        .await
        .unwrap()
    };
    assert_eq!(app.validate(&token).await["valid"], true);
    let revoke_data = data.clone();
    let revoke_url = url.clone();
    tokio::task::spawn_blocking(move || {
        let (ok, _, err) = run_cli(
            &revoke_data,
            &[
                "revoke",
                "--type",
                "jti",
                "--value",
                &jti,
                "--server",
                &revoke_url,
            ],
        );
        assert!(ok, "{err}");
        let (ok, _, err) = run_cli(
            &revoke_data,
            &[
                "issue",
                "--subject",
                "x",
                "--server",
                &revoke_url,
                "--admin-secret",
                "wrong",
            ],
        );
        assert!(!ok && err.contains("401"), "{err}");
    })
    .await
    .unwrap();
    assert_eq!(app.validate(&token).await["revoked"], true);
}

#[test]
fn identifiers_that_begin_with_a_dash_are_values_not_flags() {
    // Random jtis are base64url: about one in 32 begins with '-'.
    let dir = tempfile::tempdir().unwrap();
    // A data dir the binary creates (tempfile makes its dirs 0755, which it refuses).
    let data = dir.path().join("data");
    let (ok, stdout, err) = run_cli(
        &data,
        &["revoke", "--type", "jti", "--value", "-NdashedJti"],
    );
    assert!(ok, "{err}");
    assert!(stdout.contains("event_id"), "{stdout}");
    let (ok, _, err) = run_cli(&data, &["issue", "--subject", "-dash-user"]);
    assert!(ok, "{err}");
}

#[tokio::test]
async fn a_revocation_written_by_the_cli_reaches_the_running_server_and_its_feed() {
    let app = TestApp::new(Transport::Tcp).await;
    let (token, jti) = app.issue("alice", serde_json::json!({})).await;
    let data = app.data_dir();
    tokio::task::spawn_blocking(move || {
        let (ok, _, err) = run_cli(&data, &["revoke", "--type", "jti", "--value", &jti]);
        assert!(ok, "{err}");
    })
    .await
    .unwrap();
    // The server picks up rows written by other processes within about a second; poll
    // the feed head until it has (bounded, nothing about the delay is asserted).
    let mut seq = 0;
    for _ in 0..300 {
        let reply = app.get("/v1/edge/revocations").await;
        seq = reply.header("x-edge-seq").parse().unwrap();
        if seq > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(seq, 1);
    assert_eq!(app.validate(&token).await["revoked"], true);
}

#[tokio::test]
async fn an_online_backup_restores_into_a_working_region() {
    let app = TestApp::new(Transport::Tcp).await;
    let (token, jti) = app.issue("bea", serde_json::json!({})).await;
    app.revoke("jti", &jti).await;
    let dir = tempfile::TempDir::new().unwrap();
    let copy = dir.path().join("backup.db");
    // While the server runs.
    let (ok, out, err) = run_cli(&app.data_dir(), &["backup", "--to", copy.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(json_of(&out)["bytes"].as_u64().unwrap() > 0);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let (ok, _, err) = run_cli(&app.data_dir(), &["backup", "--to", copy.to_str().unwrap()]);
    assert!(!ok && err.contains("exists"), "{err}");
    // Restore: the copy becomes the database of a fresh data dir (0700, like every data
    // dir; the copy keeps its 0600).
    let restored = dir.path().join("restored");
    std::fs::create_dir_all(&restored).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&restored, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::fs::copy(&copy, restored.join("control-plane.db")).unwrap();
    let (ok, out, err) = run_cli(&restored, &["audit", "verify"]);
    assert!(ok, "{out} {err}");
    let check = json_of(&run_cli(&restored, &["inspect", &token]).1);
    assert_eq!(check["revoked"], true, "{check}");
}
