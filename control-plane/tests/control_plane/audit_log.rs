//! The audit log's checkpoints: a rewritten chain, a tampered checkpoint, dropped and
//! reordered rows are each named by `audit verify`; an export verifies against the keys
//! the operator trusts, never only those it carries; and every revocation acknowledged
//! under full load survives `kill -9`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use serde_json::{Value, json};
use shared::{Alg, SigningKey, b64, sha256};

use crate::support::{Server, TestApp, Transport, binary, blocking_json, run_cli};

fn open(data: &Path) -> Connection {
    Connection::open(data.join("control-plane.db")).unwrap()
}

/// Waits until a checkpoint covers the last row (the sealer signs off the request path).
fn wait_sealed(data: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let conn = open(data);
        let (rows, sealed): (i64, i64) = conn
            .query_row(
                "SELECT (SELECT COALESCE(MAX(seq), 0) FROM audit),
                        (SELECT COALESCE(MAX(upto), 0) FROM audit_checkpoints)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        if rows > 0 && rows == sealed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "rows {rows}, sealed up to {sealed}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn sealed_app() -> TestApp {
    let app = TestApp::new(Transport::InProcess).await;
    app.issue("alice", json!({})).await;
    app.revoke("sub", "alice").await;
    app.issue("bob", json!({})).await;
    app.issue("carol", json!({})).await;
    let data = app.data_dir();
    tokio::task::spawn_blocking(move || wait_sealed(&data))
        .await
        .unwrap();
    app
}

fn verify_fails(data: &Path) -> String {
    let (ok, stdout, stderr) = run_cli(data, &["audit", "verify"]);
    assert!(!ok, "verify must fail: {stdout}");
    stderr
}

#[tokio::test]
async fn a_sealed_log_verifies_with_its_checkpoints() {
    let app = sealed_app().await;
    let (ok, stdout, stderr) = run_cli(&app.data_dir(), &["audit", "verify"]);
    assert!(ok, "{stdout} {stderr}");
    assert!(stdout.contains("audit log OK"), "{stdout}");
    assert!(!stdout.contains("0 checkpoints"), "{stdout}");
    assert!(!stdout.contains("not sealed"), "{stdout}");
    let kid = app.state.region.keys().event_key.kid();
    assert!(stdout.contains(&format!("signed by: {kid}")), "{stdout}");
    assert!(
        stdout.contains("trusted: the keys of the data dir"),
        "{stdout}"
    );
}

#[tokio::test]
async fn rewriting_a_row_and_rehashing_the_chain_is_caught_by_the_checkpoint() {
    let app = sealed_app().await;
    let data = app.data_dir();
    let conn = open(&data);
    conn.execute_batch("DROP TRIGGER audit_no_update").unwrap();
    // Row 3 onwards rewritten with a consistent chain: only the signed head can tell.
    let rows: Vec<(i64, String)> = conn
        .prepare("SELECT seq, entry FROM audit WHERE seq >= 3 ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut prev: String = conn
        .query_row("SELECT hash FROM audit WHERE seq = 2", [], |r| r.get(0))
        .unwrap();
    for (seq, entry) in rows {
        let mut value: Value = serde_json::from_str(&entry).unwrap();
        value["prev"] = Value::String(prev.clone());
        let text = serde_json::to_string(&value)
            .unwrap()
            .replace("alice", "mallory");
        let hash = b64::encode(&sha256(text.as_bytes()));
        conn.execute(
            "UPDATE audit SET entry = ?1, hash = ?2 WHERE seq = ?3",
            params![text, hash, seq],
        )
        .unwrap();
        prev = hash;
    }
    drop(conn);
    let stderr = verify_fails(&data);
    assert!(stderr.contains("audit checkpoint"), "{stderr}");
    assert!(stderr.contains("was altered"), "{stderr}");
}

#[tokio::test]
async fn a_tampered_checkpoint_is_named() {
    let app = sealed_app().await;
    let data = app.data_dir();
    let conn = open(&data);
    let (id, upto): (i64, i64) = conn
        .query_row(
            "SELECT COUNT(*), MAX(upto) FROM audit_checkpoints",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    conn.execute_batch("DROP TRIGGER audit_checkpoints_no_update")
        .unwrap();
    conn.execute(
        r#"UPDATE audit_checkpoints SET body = replace(body, '"at":', '"at":1') WHERE upto = ?1"#,
        params![upto],
    )
    .unwrap();
    drop(conn);
    let stderr = verify_fails(&data);
    assert!(
        stderr.contains(&format!("audit checkpoint {id} (row {upto}) is invalid")),
        "{stderr}"
    );
    assert!(stderr.contains("signature does not verify"), "{stderr}");
}

#[tokio::test]
async fn dropping_the_newest_rows_is_caught_by_the_checkpoint() {
    let app = sealed_app().await;
    let data = app.data_dir();
    let conn = open(&data);
    let last: i64 = conn
        .query_row("SELECT MAX(seq) FROM audit", [], |r| r.get(0))
        .unwrap();
    conn.execute_batch("DROP TRIGGER audit_no_delete").unwrap();
    conn.execute("DELETE FROM audit WHERE seq = ?1", params![last])
        .unwrap();
    drop(conn);
    let stderr = verify_fails(&data);
    assert!(
        stderr.contains(&format!(
            "it covers row {last} but the log ends at row {}: rows were dropped",
            last - 1
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn swapping_two_rows_is_named_as_a_reordering() {
    let app = sealed_app().await;
    let data = app.data_dir();
    let conn = open(&data);
    conn.execute_batch(
        "DROP TRIGGER audit_no_update;
         CREATE TEMP TABLE two AS SELECT seq, entry, hash FROM audit WHERE seq IN (2, 3);
         UPDATE audit SET entry = (SELECT entry FROM two WHERE two.seq = 5 - audit.seq),
                          hash  = (SELECT hash  FROM two WHERE two.seq = 5 - audit.seq)
         WHERE seq IN (2, 3);",
    )
    .unwrap();
    drop(conn);
    let stderr = verify_fails(&data);
    assert!(
        stderr.contains("audit row 2 is invalid: the entry says it is row 3"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_export_verifies_without_the_database_and_names_a_tampered_row() {
    let app = sealed_app().await;
    let data = app.data_dir();
    let (ok, export, stderr) = run_cli(&data, &["audit", "export"]);
    assert!(ok, "{stderr}");
    let lines: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().any(|l| l["type"] == "key"));
    assert!(lines.iter().any(|l| l["type"] == "checkpoint"));
    let file = data.join("export.jsonl");
    std::fs::write(&file, &export).unwrap();
    let (ok, stdout, stderr) = run_cli(
        &data,
        &["audit", "verify", "--file", file.to_str().unwrap()],
    );
    assert!(ok, "{stdout} {stderr}");
    assert!(stdout.contains("audit log OK"), "{stdout}");
    let kid = lines
        .iter()
        .find(|l| l["type"] == "checkpoint")
        .map(|l| l["kid"].as_str().unwrap().to_owned())
        .unwrap();
    assert!(stdout.contains(&format!("signed by: {kid}")), "{stdout}");
    assert!(
        stdout.contains("trusted: the keys of the data dir"),
        "{stdout}"
    );

    // Tamper with the first row that names bob (not a signature that happens to hold
    // the letters).
    let tampered: Vec<String> = export
        .lines()
        .scan(false, |done, line| {
            let row = !*done && line.contains("\"type\":\"row\"") && line.contains("bob");
            *done |= row;
            Some(if row {
                line.replacen("bob", "eve", 1)
            } else {
                line.to_owned()
            })
        })
        .collect();
    assert_ne!(tampered.join("\n"), export.trim_end());
    std::fs::write(&file, tampered.join("\n")).unwrap();
    let (ok, _, stderr) = run_cli(
        &data,
        &["audit", "verify", "--file", file.to_str().unwrap()],
    );
    assert!(!ok);
    assert!(
        stderr.contains("is invalid: hash does not match the entry"),
        "{stderr}"
    );
}

#[test]
fn every_revocation_acknowledged_under_full_load_survives_kill_9() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let secret = control_plane::read_admin_secret(&data).unwrap();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (url, secret, acked) = (server.url.clone(), secret.clone(), acked.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                for n in 0.. {
                    let sent = client
                        .post(format!("{url}/revoke"))
                        .bearer_auth(&secret)
                        .json(&json!({ "type": "revoke_jti", "value": format!("w{w}-{n}") }))
                        .send();
                    let Ok(response) = sent else { return };
                    if response.status() != 200 {
                        return;
                    }
                    let Ok(body) = response.json::<Value>() else {
                        return;
                    };
                    let id = body["event_id"].as_str().unwrap().to_owned();
                    acked.lock().unwrap().push(id);
                }
            })
        })
        .collect();
    // Until enough have been answered (debug builds sign slowly on a busy machine).
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 50 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Mid-load: requests in flight, groups half gathered.
    server.kill_9();
    for worker in workers {
        worker.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "only {} revocations acknowledged",
        acked.len()
    );

    let server = Server::start(&data);
    let (ok, export, stderr) = run_cli(&data, &["events", "export"]);
    assert!(ok, "{stderr}");
    let fed: std::collections::HashSet<String> = export
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let audited: std::collections::HashSet<String> = open(&data)
        .prepare("SELECT entry FROM audit WHERE entry LIKE '%\"action\":\"revocation\"%'")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|e| {
            let v: Value = serde_json::from_str(&e.unwrap()).unwrap();
            v["data"]["event"]["event_id"].as_str().unwrap().to_owned()
        })
        .collect();
    for id in &acked {
        assert!(fed.contains(id), "acknowledged {id} is not on the feed");
        assert!(
            audited.contains(id),
            "acknowledged {id} is not in the audit log"
        );
    }
    server.kill_9();
    let (ok, stdout, stderr) = run_cli(&data, &["audit", "verify"]);
    assert!(ok, "audit verify failed: {stdout} {stderr}");
    assert!(
        !stdout.contains("not sealed"),
        "the restart seals the tail: {stdout}"
    );
}

/// Runs the binary; returns (exit code, stdout, stderr).
fn verify_cli(args: &[&str]) -> (i32, String, String) {
    let output = binary()
        .args(["audit", "verify"])
        .args(args)
        .output()
        .expect("run the binary");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `export` with the first row naming bob edited, the chain rehashed from there, every
/// checkpoint re-signed by `stranger` and the key lines replaced by the stranger's key:
/// consistent in itself, written by someone else.
fn resigned_by(stranger: &SigningKey, export: &str) -> String {
    let mut prev = String::new();
    let mut hashes = std::collections::HashMap::new();
    let mut edited = false;
    let mut out = Vec::new();
    for line in export.lines() {
        let mut value: Value = serde_json::from_str(line).unwrap();
        match value["type"].as_str().unwrap() {
            "key" => {
                let mut jwk = stranger.verifying_key().to_jwk();
                jwk.kid = Some(stranger.kid());
                value = json!({ "type": "key", "jwk": jwk });
            }
            "row" => {
                let mut entry: Value =
                    serde_json::from_str(value["entry"].as_str().unwrap()).unwrap();
                entry["prev"] = Value::String(prev.clone());
                let mut text = serde_json::to_string(&entry).unwrap();
                if !edited && text.contains("bob") {
                    text = text.replacen("bob", "eve", 1);
                    edited = true;
                }
                let hash = b64::encode(&sha256(text.as_bytes()));
                hashes.insert(value["seq"].as_i64().unwrap(), hash.clone());
                value["entry"] = Value::String(text);
                value["hash"] = Value::String(hash.clone());
                prev = hash;
            }
            "checkpoint" => {
                let mut body: Value =
                    serde_json::from_str(value["body"].as_str().unwrap()).unwrap();
                body["head"] = Value::String(hashes[&body["upto"].as_i64().unwrap()].clone());
                let text = serde_json::to_string(&body).unwrap();
                let sig = stranger.sign(text.as_bytes()).unwrap();
                value["body"] = Value::String(text);
                value["sig"] = Value::String(b64::encode(&sig));
                value["kid"] = Value::String(stranger.kid());
            }
            other => panic!("unexpected line type {other}"),
        }
        out.push(serde_json::to_string(&value).unwrap());
    }
    assert!(edited, "no row names bob");
    out.join("\n")
}

#[tokio::test]
async fn an_export_edited_and_resigned_by_another_key_is_refused() {
    let app = sealed_app().await;
    let data = app.data_dir();
    let (ok, export, stderr) = run_cli(&data, &["audit", "export"]);
    assert!(ok, "{stderr}");
    let stranger = SigningKey::from_seed(Alg::MlDsa65, &[0x5a; 32]);
    let forged = data.join("forged.jsonl");
    std::fs::write(&forged, resigned_by(&stranger, &export)).unwrap();
    let genuine = data.join("genuine.jsonl");
    std::fs::write(&genuine, &export).unwrap();
    let (forged, genuine) = (forged.to_str().unwrap(), genuine.to_str().unwrap());
    let data_arg = data.to_str().unwrap();

    // Opted in, the forgery is consistent: the refusals below are about who signed it.
    let (code, stdout, stderr) = verify_cli(&["--file", forged, "--trust-file-keys"]);
    assert_eq!(code, 0, "{stdout} {stderr}");
    assert!(stdout.contains("NOT AUTHENTICATED"), "{stdout}");
    assert!(!stdout.contains("audit log OK"), "{stdout}");
    assert!(stdout.contains(&stranger.kid()), "{stdout}");

    // The data dir's own keys (what the operator of the region has at hand).
    let (code, stdout, stderr) = verify_cli(&["--data-dir", data_arg, "--file", forged]);
    assert_eq!(code, 1, "{stdout} {stderr}");
    assert!(!stdout.contains("audit log OK"), "{stdout}");
    assert!(stderr.contains("audit log NOT TRUSTED"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "is signed by key {:?}, which is not among the trusted keys",
            stranger.kid()
        )),
        "{stderr}"
    );

    // The region's published JWKS, saved to a file.
    let jwks = app.get("/.well-known/jwks.json").await;
    let jwks_file = data.join("jwks.json");
    std::fs::write(&jwks_file, jwks.text()).unwrap();
    let jwks_arg = jwks_file.to_str().unwrap();
    let elsewhere = tempfile::TempDir::new().unwrap();
    let empty = elsewhere.path().to_str().unwrap();
    let (code, stdout, stderr) =
        verify_cli(&["--data-dir", empty, "--file", forged, "--jwks", jwks_arg]);
    assert_eq!(code, 1, "{stdout} {stderr}");
    assert!(stderr.contains("audit log NOT TRUSTED"), "{stderr}");
    let (code, stdout, stderr) =
        verify_cli(&["--data-dir", empty, "--file", genuine, "--jwks", jwks_arg]);
    assert_eq!(code, 0, "{stdout} {stderr}");
    assert!(stdout.contains("audit log OK"), "{stdout}");
    assert!(stdout.contains("trusted: the JWKS"), "{stdout}");

    // No key to pin at all: said plainly, nothing verified.
    let (code, stdout, stderr) = verify_cli(&["--data-dir", empty, "--file", genuine]);
    assert_eq!(code, 2, "{stdout} {stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("no keys to check"), "{stderr}");
    assert!(stderr.contains("--jwks"), "{stderr}");
    assert!(stderr.contains("--trust-file-keys"), "{stderr}");
    // Even the genuine file is not "OK" on its own keys.
    let (code, stdout, _) =
        verify_cli(&["--data-dir", empty, "--file", genuine, "--trust-file-keys"]);
    assert_eq!(code, 0);
    assert!(!stdout.contains("audit log OK"), "{stdout}");
}

#[test]
fn the_regions_jwks_url_pins_the_keys_of_an_export() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let secret = control_plane::read_admin_secret(&data).unwrap();
    for value in ["bob", "carol"] {
        let (status, body) = blocking_json(
            "POST",
            &format!("{}/revoke", server.url),
            Some(&secret),
            &json!({ "type": "revoke_sub", "value": value }),
        );
        assert_eq!(status, 200, "{body}");
    }
    wait_sealed(&data);
    let (ok, export, stderr) = run_cli(&data, &["audit", "export"]);
    assert!(ok, "{stderr}");
    let genuine = dir.path().join("genuine.jsonl");
    std::fs::write(&genuine, &export).unwrap();
    let stranger = SigningKey::from_seed(Alg::MlDsa65, &[0x5b; 32]);
    let forged = dir.path().join("forged.jsonl");
    std::fs::write(&forged, resigned_by(&stranger, &export)).unwrap();
    let url = format!("{}/.well-known/jwks.json", server.url);
    let elsewhere = tempfile::TempDir::new().unwrap();
    let empty = elsewhere.path().to_str().unwrap();
    let (code, stdout, stderr) = verify_cli(&[
        "--data-dir",
        empty,
        "--file",
        genuine.to_str().unwrap(),
        "--jwks",
        &url,
    ]);
    assert_eq!(code, 0, "{stdout} {stderr}");
    assert!(stdout.contains("audit log OK"), "{stdout}");
    assert!(
        stdout.contains(&format!("trusted: the JWKS {url}")),
        "{stdout}"
    );
    let (code, stdout, stderr) = verify_cli(&[
        "--data-dir",
        empty,
        "--file",
        forged.to_str().unwrap(),
        "--jwks",
        &url,
    ]);
    assert_eq!(code, 1, "{stdout} {stderr}");
    assert!(stderr.contains("audit log NOT TRUSTED"), "{stderr}");
}
