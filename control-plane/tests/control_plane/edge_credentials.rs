//! Edge credentials: made, listed and revoked by the CLI while the server runs; the
//! feed's `off`/`warn`/`required` modes; long-poll slots per credential.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use control_plane::config::{EdgeCredentials, Settings};
use serde_json::Value;

use crate::support::{Reply, TestApp, Transport, run_cli};

/// Runs `edge-credential ...` on a data dir (off the async threads).
async fn cli(data: &Path, args: &[&str]) -> (bool, String, String) {
    let data = data.to_owned();
    let mut full = vec!["edge-credential".to_owned()];
    full.extend(args.iter().map(|a| (*a).to_owned()));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = full.iter().map(String::as_str).collect();
        run_cli(&data, &args)
    })
    .await
    .unwrap()
}

/// A new credential's secret.
async fn create(data: &Path, name: &str) -> String {
    let (ok, out, err) = cli(data, &["--name", name]).await;
    assert!(ok, "{err}");
    out.trim().to_owned()
}

async fn revoke(data: &Path, name: &str) {
    let (ok, _, err) = cli(data, &["revoke", name]).await;
    assert!(ok, "{err}");
}

async fn poll(app: &TestApp, query: &str, credential: Option<&str>) -> Reply {
    let auth = credential.map(|c| format!("Bearer {c}"));
    let mut headers = vec![("x-edge-instance", "envoy-test-1")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth.as_str()));
    }
    app.request(
        "GET",
        &format!("/v1/edge/revocations{query}"),
        &headers,
        None,
    )
    .await
}

fn assert_refused(reply: &Reply) {
    reply.error(401, "unauthorized");
    assert!(
        reply.header("www-authenticate").starts_with("Bearer"),
        "{:?}",
        reply.headers
    );
}

/// Polls until `credential` gets `status` (the server re-reads the table within about a
/// second of a change; nothing about the delay is asserted beyond a bound).
async fn until_status(app: &TestApp, credential: &str, status: u16) {
    for _ in 0..100 {
        if poll(app, "", Some(credential)).await.status == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the feed never answered {status}");
}

fn required(settings: &mut Settings) {
    settings.edge_credentials = EdgeCredentials::Required;
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test]
async fn the_cli_creates_lists_and_revokes_edge_credentials_showing_each_secret_once() {
    let dir = tempfile::TempDir::new().unwrap();
    // Before the first start: the data dir and database are created, private.
    let data = dir.path().join("data");
    let (ok, out, err) = cli(&data, &["--name", "fleet-2025"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "only the secret on stdout: {out}");
    assert!(out.trim().starts_with("ec_"), "{out}");
    assert!(err.contains("fleet-2025"), "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
    let (ok, out, err) = cli(&data, &["create"]).await;
    assert!(ok && out.trim().starts_with("ec_"), "{err}");
    let (ok, _, err) = cli(&data, &["--name", "fleet-2025"]).await;
    assert!(!ok && err.contains("exists already"), "{err}");
    let (ok, _, err) = cli(&data, &["--name", "bad name"]).await;
    assert!(!ok && err.contains("credential name"), "{err}");

    let (ok, out, err) = cli(&data, &["list"]).await;
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|c| c["revoked_at"].is_null()));
    assert!(!out.contains("ec_"), "list never shows a secret: {out}");
    assert!(listed.iter().any(|c| c["name"] == "fleet-2025"));

    let (ok, out, err) = cli(&data, &["revoke", "fleet-2025"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("\"was_valid\": true"), "{out}");
    let (ok, _, err) = cli(&data, &["revoke", "no-such"]).await;
    assert!(!ok && err.contains("no edge credential"), "{err}");
    let listed: Value = serde_json::from_str(&cli(&data, &["list"]).await.1).unwrap();
    let revoked = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "fleet-2025")
        .unwrap();
    assert!(revoked["revoked_at"].is_i64(), "{revoked}");

    // Both are in the audit log.
    let (ok, out, err) = tokio::task::spawn_blocking(move || run_cli(&data, &["audit", "tail"]))
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("edge_credential.created") && out.contains("edge_credential.revoked"));
}

#[tokio::test]
async fn a_credential_imported_on_a_replica_is_valid_there_too() {
    let made = TestApp::with_settings(Transport::InProcess, required).await;
    let replica = TestApp::with_settings(Transport::InProcess, required).await;
    let secret = create(&made.data_dir(), "fleet").await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{secret}\n")).unwrap();
    let path = file.path().to_str().unwrap();
    assert_refused(&poll(&replica, "", Some(&secret)).await);
    let (ok, _, err) = cli(
        &replica.data_dir(),
        &["import", "--name", "fleet", "--secret-file", path],
    )
    .await;
    assert!(ok && err.contains("imported"), "{err}");
    until_status(&replica, &secret, 200).await;
    assert_eq!(poll(&made, "", Some(&secret)).await.status, 200);
    // Only what create makes is accepted, and a name once.
    std::fs::write(file.path(), "ec_short").unwrap();
    let (ok, _, err) = cli(
        &replica.data_dir(),
        &["import", "--name", "other", "--secret-file", path],
    )
    .await;
    assert!(!ok && err.contains("32 bytes in base64url"), "{err}");
    std::fs::write(file.path(), &secret).unwrap();
    let (ok, _, err) = cli(
        &replica.data_dir(),
        &["import", "--name", "fleet", "--secret-file", path],
    )
    .await;
    assert!(!ok && err.contains("exists already"), "{err}");
    let (ok, out, err) = tokio::task::spawn_blocking({
        let data = replica.data_dir();
        move || run_cli(&data, &["audit", "tail"])
    })
    .await
    .unwrap();
    assert!(ok && out.contains("edge_credential.imported"), "{err}");
}

#[tokio::test]
async fn required_mode_serves_only_valid_credentials_two_at_once_while_rotating() {
    for transport in [Transport::InProcess, Transport::Tcp] {
        let app = TestApp::with_settings(transport, required).await;
        let data = app.data_dir();
        // Created while the server runs: no restart needed.
        let old = create(&data, "fleet-old").await;
        assert_eq!(poll(&app, "", Some(&old)).await.status, 200);

        assert_refused(&poll(&app, "", None).await);
        assert_refused(&poll(&app, "", Some("ec_not-a-credential")).await);
        // The admin secret is no edge credential.
        assert_refused(&poll(&app, "", Some(&app.secret.clone())).await);
        let basic = app
            .request(
                "GET",
                "/v1/edge/revocations",
                &[("authorization", "Basic dXNlcjpwYXNz")],
                None,
            )
            .await;
        assert_refused(&basic);

        // Rotation: the new one is deployed while the old one still works.
        let new = create(&data, "fleet-new").await;
        assert_eq!(poll(&app, "", Some(&new)).await.status, 200);
        assert_eq!(poll(&app, "", Some(&old)).await.status, 200);
        revoke(&data, "fleet-old").await;
        until_status(&app, &old, 401).await;
        assert_refused(&poll(&app, "", Some(&old)).await);
        assert_eq!(poll(&app, "", Some(&new)).await.status, 200);

        // The JWKS stays public.
        assert_eq!(app.get("/.well-known/jwks.json").await.status, 200);
        let metrics = app.get("/metrics").await.text();
        assert!(
            metric(
                &metrics,
                "cp_edge_polls_refused_total{reason=\"missing_credential\"}"
            ) >= 1
        );
        assert!(
            metric(
                &metrics,
                "cp_edge_polls_refused_total{reason=\"invalid_credential\"}"
            ) >= 4
        );
    }
}

#[tokio::test]
async fn a_refused_poll_holds_no_long_poll_slot() {
    let app = Arc::new(
        TestApp::with_settings(Transport::Tcp, |s| {
            required(s);
            s.max_long_polls = 1;
            s.max_long_polls_per_credential = 1;
        })
        .await,
    );
    let secret = create(&app.data_dir(), "edge").await;
    let started = Instant::now();
    let mut intruders = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let app = app.clone();
        intruders.spawn(async move { poll(&app, "?since=0&wait=30", None).await });
    }
    // The only slot is still free for the real edge: held, then a heartbeat.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let real = poll(&app, "?since=0&wait=1", Some(&secret)).await;
    assert_eq!(real.status, 200, "{}", real.text());
    while let Some(reply) = intruders.join_next().await {
        assert_refused(&reply.unwrap());
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refusals came at once"
    );
}

#[tokio::test]
async fn warn_mode_serves_a_poll_without_a_credential_and_counts_it() {
    let app = TestApp::new(Transport::InProcess).await;
    let reply = poll(&app, "", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(app.get("/v1/edge/revocations").await.status, 200);
    let metrics = app.get("/metrics").await.text();
    assert_eq!(metric(&metrics, "cp_edge_polls_unauthenticated_total"), 2);

    // Only a MISSING credential passes: a wrong one is refused in warn mode too.
    assert_refused(&poll(&app, "", Some("ec_wrong")).await);
    let secret = create(&app.data_dir(), "edge").await;
    assert_eq!(poll(&app, "", Some(&secret)).await.status, 200);
    let metrics = app.get("/metrics").await.text();
    assert_eq!(metric(&metrics, "cp_edge_polls_unauthenticated_total"), 2);

    // The instance name is bounded.
    let long = "n".repeat(129);
    for bad in ["has space", long.as_str()] {
        let reply = app
            .request(
                "GET",
                "/v1/edge/revocations",
                &[("x-edge-instance", bad)],
                None,
            )
            .await;
        reply.error(400, "invalid_request");
    }
}

#[tokio::test]
async fn off_mode_checks_nothing() {
    let app = TestApp::with_settings(Transport::InProcess, |s| {
        s.edge_credentials = EdgeCredentials::Off;
    })
    .await;
    assert_eq!(poll(&app, "", Some("ec_wrong")).await.status, 200);
    assert_eq!(poll(&app, "", None).await.status, 200);
    let metrics = app.get("/metrics").await.text();
    assert_eq!(metric(&metrics, "cp_edge_polls_unauthenticated_total"), 0);
}

#[tokio::test]
async fn one_credential_cannot_take_every_long_poll_slot() {
    let app = Arc::new(
        TestApp::with_settings(Transport::Tcp, |s| {
            // Room for everyone below: only the shares refuse.
            s.max_long_polls = 5;
            s.max_long_polls_per_credential = 2;
        })
        .await,
    );
    let greedy = create(&app.data_dir(), "greedy").await;
    let fair = create(&app.data_dir(), "fair").await;
    let mut held = tokio::task::JoinSet::new();
    for credential in [Some(greedy.clone()), Some(greedy.clone()), None, None] {
        let app = app.clone();
        held.spawn(async move { poll(&app, "?since=0&wait=4", credential.as_deref()).await });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Over their share: answered at once, as at the total cap.
    for credential in [Some(greedy.as_str()), None] {
        let started = Instant::now();
        let over = poll(&app, "?since=0&wait=4", credential).await;
        over.error(503, "temporarily_unavailable");
        assert_eq!(over.header("retry-after"), "1");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // Another credential still gets a slot.
    let other = poll(&app, "?since=0&wait=1", Some(&fair)).await;
    assert_eq!(other.status, 200, "{}", other.text());
    while let Some(reply) = held.join_next().await {
        assert_eq!(reply.unwrap().status, 200);
    }
    // Slots are given back.
    assert_eq!(
        poll(&app, "?since=0&wait=1", Some(&greedy)).await.status,
        200
    );
    let metrics = app.get("/metrics").await.text();
    assert_eq!(
        metric(
            &metrics,
            "cp_edge_polls_refused_total{reason=\"credential_share\"}"
        ),
        2
    );
}
