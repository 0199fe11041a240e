//! The edge feed contract: signed snapshots, deltas, long-poll wake-ups and heartbeats.

use serde_json::json;
use shared::Keyring;
use shared::Kind;
use shared::edgeset::{EdgeUpdate, RevocationSet, UpdateKind, entry_key};
use shared::jwk::JwkSet;
use shared::revocation::TokenIds;

use crate::support::{Reply, TestApp, Transport};

const MAX_ENTRIES: u64 = 100_000;

async fn open(app: &TestApp, reply: &Reply) -> EdgeUpdate {
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), "application/jose");
    let update = EdgeUpdate::open(&reply.text(), &app.jwks_keyring().await, MAX_ENTRIES)
        .expect("a valid update signed by a key in the JWKS");
    assert_eq!(reply.header("x-edge-seq"), update.seq.to_string());
    update
}

fn ids<'a>(jti: &'a str, sub: &'a str, iat: i64) -> TokenIds<'a> {
    TokenIds {
        jti,
        sub,
        kid: "some-kid",
        sid: None,
        iat,
    }
}

#[tokio::test]
async fn a_poller_without_a_set_gets_a_signed_snapshot_of_every_live_revocation() {
    for app in TestApp::both().await {
        let empty = open(&app, &app.get("/v1/edge/revocations").await).await;
        assert_eq!(empty.kind, UpdateKind::Snapshot);
        assert_eq!((empty.base_seq, empty.seq), (0, 0));
        assert!(empty.entries.is_empty());

        app.revoke("jti", "j-1").await;
        app.revoke("sub", "alice").await;
        let snap = open(&app, &app.get("/v1/edge/revocations").await).await;
        assert_eq!(snap.kind, UpdateKind::Snapshot);
        assert_eq!((snap.base_seq, snap.seq), (0, 2));
        assert_eq!(snap.entries.len(), 2);

        let mut set = RevocationSet::default();
        set.apply(snap).unwrap();
        let now = control_plane::now();
        assert!(set.check(&ids("j-1", "bob", now), now).is_some());
        assert!(set.check(&ids("j-2", "alice", now - 10), now).is_some());
        assert!(set.check(&ids("j-2", "alice", now + 5), now).is_none());
        assert!(set.check(&ids("j-2", "bob", now), now).is_none());
    }
}

#[tokio::test]
async fn every_update_says_the_leeway_its_revocations_assume_and_they_cover_it() {
    for app in TestApp::both().await {
        let (token, jti) = app.issue("lee", json!({})).await;
        let exp = app.validate(&token).await["claims"]["exp"]
            .as_i64()
            .unwrap();
        // A holder revocation: the one that knows its token's `exp`, so lives the least.
        let reply = app
            .form("/oauth2/revoke", &format!("token={token}"), false)
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let snap = open(&app, &app.get("/v1/edge/revocations").await).await;
        let leeway = snap.leeway.expect("the snapshot says its leeway");
        // An edge may apply up to this: never less than the control plane itself does.
        assert!(i64::from(leeway) >= app.state.region.settings().leeway_secs);
        let entry = snap
            .entries
            .iter()
            .find(|e| e.key == entry_key(Kind::Jti, &jti))
            .expect("the revocation");
        assert!(
            i64::from(entry.expires_at) >= exp + i64::from(leeway),
            "the entry lapses at {}, before exp {exp} + {leeway}",
            entry.expires_at
        );
        // Deltas and heartbeats say it too.
        let heartbeat = open(
            &app,
            &app.get(&format!("/v1/edge/revocations?since={}&wait=0", snap.seq))
                .await,
        )
        .await;
        assert_eq!(heartbeat.kind, UpdateKind::Delta);
        assert_eq!(heartbeat.leeway, Some(leeway));
    }
}

#[tokio::test]
async fn a_poller_behind_gets_a_delta_of_the_newer_rows() {
    for app in TestApp::both().await {
        app.revoke("jti", "j-1").await;
        app.revoke("jti", "j-2").await;
        app.revoke("jti", "j-3").await;
        let delta = open(&app, &app.get("/v1/edge/revocations?since=1").await).await;
        assert_eq!(delta.kind, UpdateKind::Delta);
        assert_eq!((delta.base_seq, delta.seq), (1, 3));
        assert_eq!(delta.entries.len(), 2);

        let mut set = RevocationSet::default();
        set.apply(open(&app, &app.get("/v1/edge/revocations").await).await)
            .unwrap();
        app.revoke("sid", "s-1").await;
        let next = open(&app, &app.get("/v1/edge/revocations?since=3").await).await;
        set.apply(next).unwrap();
        let now = control_plane::now();
        let mut with_sid = ids("j-9", "zed", now);
        with_sid.sid = Some("s-1");
        assert!(set.check(&with_sid, now).is_some());
    }
}

#[tokio::test]
async fn a_long_poll_wakes_up_when_a_revocation_arrives() {
    for app in TestApp::both().await {
        app.revoke("jti", "j-1").await;
        let app = std::sync::Arc::new(app);
        let poller = {
            let app = app.clone();
            tokio::spawn(async move { app.get("/v1/edge/revocations?since=1&wait=60").await })
        };
        // Give the poll a moment to park (correctness does not depend on it).
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        app.revoke("jti", "j-2").await;
        let reply = poller.await.unwrap();
        let delta = open(&app, &reply).await;
        assert_eq!(delta.kind, UpdateKind::Delta);
        assert_eq!((delta.base_seq, delta.seq), (1, 2));
        assert_eq!(delta.entries.len(), 1);
    }
}

#[tokio::test]
async fn since_zero_on_an_empty_feed_is_held_until_the_first_revocation() {
    for app in TestApp::both().await {
        let app = std::sync::Arc::new(app);
        let poller = {
            let app = app.clone();
            tokio::spawn(async move { app.get("/v1/edge/revocations?since=0&wait=60").await })
        };
        // Give the poll a moment to park (correctness does not depend on it).
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        app.revoke("jti", "first").await;
        let delta = open(&app, &poller.await.unwrap()).await;
        assert_eq!(delta.kind, UpdateKind::Delta);
        assert_eq!((delta.base_seq, delta.seq), (0, 1));
        assert_eq!(delta.entries.len(), 1);
    }
}

#[tokio::test]
async fn a_long_poll_with_nothing_new_ends_with_a_signed_empty_delta() {
    for app in TestApp::both().await {
        app.revoke("jti", "j-1").await;
        let reply = app.get("/v1/edge/revocations?since=1&wait=1").await;
        let beat = open(&app, &reply).await;
        assert_eq!(beat.kind, UpdateKind::Delta);
        assert_eq!((beat.base_seq, beat.seq), (1, 1));
        assert!(beat.entries.is_empty());
        assert!(beat.generated_at >= control_plane::now() - 5);
        // wait=0 answers at once.
        let beat = open(&app, &app.get("/v1/edge/revocations?since=1").await).await;
        assert_eq!((beat.base_seq, beat.seq), (1, 1));
    }
}

#[tokio::test]
async fn a_poller_ahead_of_the_feed_or_too_far_behind_gets_a_snapshot() {
    let app = TestApp::with_settings(Transport::Tcp, |s| s.feed_max_delta = 1).await;
    for v in ["a", "b", "c"] {
        app.revoke("jti", v).await;
    }
    let ahead = open(&app, &app.get("/v1/edge/revocations?since=99").await).await;
    assert_eq!(ahead.kind, UpdateKind::Snapshot);
    assert_eq!((ahead.seq, ahead.entries.len()), (3, 3));
    let behind = open(&app, &app.get("/v1/edge/revocations?since=1").await).await;
    assert_eq!(behind.kind, UpdateKind::Snapshot);
    let close = open(&app, &app.get("/v1/edge/revocations?since=2").await).await;
    assert_eq!(close.kind, UpdateKind::Delta);
}

#[tokio::test]
async fn the_feed_rejects_a_malformed_query_in_json() {
    for app in TestApp::both().await {
        app.get("/v1/edge/revocations?since=abc")
            .await
            .error(400, "invalid_request");
        app.get("/v1/edge/revocations?wait=-1")
            .await
            .error(400, "invalid_request");
    }
}

#[tokio::test]
async fn revocations_expire_from_the_feed_but_stay_in_the_audit_log() {
    let app = TestApp::new(Transport::InProcess).await;
    let reply = app
        .admin_json(
            "/revoke",
            &json!({ "type": "revoke_jti", "value": "short", "ttl_seconds": 1 }),
        )
        .await;
    assert_eq!(reply.status, 200);
    app.revoke("jti", "long").await;
    // Wait until the short one has certainly expired (no timing is asserted).
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let snap = open(&app, &app.get("/v1/edge/revocations").await).await;
    assert_eq!(snap.entries.len(), 1);
    let status = app.get("/v1/revocations/short").await.json();
    assert_eq!(status["revoked"], false);
    let (ok, stdout, _) = crate::support::run_cli(&app.data_dir(), &["audit", "tail"]);
    assert!(ok && stdout.contains("short"), "{stdout}");
}

#[tokio::test]
async fn shutting_down_ends_held_long_polls_with_a_heartbeat() {
    for app in TestApp::both().await {
        let app = std::sync::Arc::new(app);
        let poller = {
            let app = app.clone();
            tokio::spawn(async move { app.get("/v1/edge/revocations?wait=60").await })
        };
        let first = open(&app, &poller.await.unwrap()).await;
        assert_eq!(first.kind, UpdateKind::Snapshot);
        app.revoke("jti", "j-1").await;
        let held = {
            let app = app.clone();
            tokio::spawn(async move { app.get("/v1/edge/revocations?since=1&wait=60").await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        app.state.close_long_polls();
        let beat = open(&app, &held.await.unwrap()).await;
        assert_eq!(
            (beat.kind, beat.base_seq, beat.seq),
            (UpdateKind::Delta, 1, 1)
        );
    }
}

#[tokio::test]
async fn every_update_names_the_feed_and_the_header_says_it_too() {
    for app in TestApp::both().await {
        let snap = app.get("/v1/edge/revocations").await;
        let id = open(&app, &snap)
            .await
            .feed
            .expect("a snapshot names its feed");
        assert!(shared::edgeset::is_feed_id(&id), "{id}");
        assert_eq!(snap.header("x-edge-feed"), id);
        app.revoke("jti", "j-1").await;
        let delta = open(&app, &app.get("/v1/edge/revocations?since=0").await).await;
        let beat = open(&app, &app.get("/v1/edge/revocations?since=1").await).await;
        assert_eq!(delta.feed.as_deref(), Some(id.as_str()));
        assert_eq!(beat.feed.as_deref(), Some(id.as_str()));
    }
}

#[tokio::test]
async fn parked_pollers_of_one_change_share_one_signed_update() {
    let app = std::sync::Arc::new(TestApp::new(Transport::Tcp).await);
    app.revoke("jti", "j-1").await;
    let pollers: Vec<_> = (0..40)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.get("/v1/edge/revocations?since=1&wait=30").await })
        })
        .collect();
    // Give the polls a moment to park (correctness does not depend on it).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    app.revoke("jti", "j-2").await;
    let mut bodies = std::collections::HashSet::new();
    for poller in pollers {
        let reply = poller.await.unwrap();
        assert_eq!(reply.status, 200);
        bodies.insert(reply.text());
    }
    // Signed once (twice at most if the reuse window ended in between), not 40 times.
    assert!(bodies.len() <= 2, "{} distinct bodies", bodies.len());
    for body in &bodies {
        let update = EdgeUpdate::open(body, &app.jwks_keyring().await, MAX_ENTRIES).unwrap();
        assert_eq!(
            (update.kind, update.base_seq, update.seq),
            (UpdateKind::Delta, 1, 2)
        );
        assert_eq!(update.entries.len(), 1);
    }
    // Heartbeats are shared as well.
    let a = app.get("/v1/edge/revocations?since=2").await.text();
    let b = app.get("/v1/edge/revocations?since=2").await.text();
    let c = app.get("/v1/edge/revocations?since=2").await.text();
    assert!(
        a == b || b == c,
        "three heartbeats in a row, each signed anew"
    );
}

#[tokio::test]
async fn a_change_written_by_another_process_reaches_the_feed() {
    let app = TestApp::new(Transport::Tcp).await;
    let (ok, _, err) = crate::support::run_cli(
        &app.data_dir(),
        &["revoke", "--type", "jti", "--value", "from-the-cli"],
    );
    assert!(ok, "{err}");
    // The server picks it up within its sync interval (1 s); the poll is held until then.
    let reply = app.get("/v1/edge/revocations?since=0&wait=10").await;
    let delta = open(&app, &reply).await;
    assert_eq!((delta.base_seq, delta.seq, delta.entries.len()), (0, 1, 1));
    // A delta from the window and a snapshot agree afterwards.
    app.revoke("jti", "from-the-server").await;
    let delta = open(&app, &app.get("/v1/edge/revocations?since=1").await).await;
    assert_eq!((delta.base_seq, delta.seq, delta.entries.len()), (1, 2, 1));
    let snap = open(&app, &app.get("/v1/edge/revocations").await).await;
    assert_eq!((snap.seq, snap.entries.len()), (2, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restored_backup_starts_a_new_feed() {
    use crate::support::{Server, run_cli};
    let app = TestApp::new(Transport::Tcp).await;
    app.revoke("jti", "before-the-backup").await;
    let first = open(&app, &app.get("/v1/edge/revocations").await).await;
    let original = first.feed.clone().expect("a feed id");
    let dir = tempfile::TempDir::new().unwrap();
    let copy = dir.path().join("backup.db");
    let (ok, _, err) = run_cli(&app.data_dir(), &["backup", "--to", copy.to_str().unwrap()]);
    assert!(ok, "{err}");
    // Restored into a new data dir, and over an existing one.
    let restored = dir.path().join("restored");
    let (ok, out, err) = run_cli(&restored, &["restore", "--from", copy.to_str().unwrap()]);
    assert!(ok, "{out} {err}");
    let said: serde_json::Value = serde_json::from_str(&out).unwrap();
    let new_id = said["feed"].as_str().unwrap().to_owned();
    assert_ne!(new_id, original);
    let (ok, _, err) = run_cli(&restored, &["restore", "--from", copy.to_str().unwrap()]);
    assert!(!ok && err.contains("--replace"), "{err}");
    let (ok, out, err) = run_cli(
        &restored,
        &["restore", "--from", copy.to_str().unwrap(), "--replace"],
    );
    assert!(ok, "{out} {err}");
    let again: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_ne!(again["feed"], said["feed"], "every restore is a new feed");

    let snapshot_of = |dir: &std::path::Path| {
        let server = Server::start(dir);
        let get = |path: &str| {
            reqwest::blocking::get(format!("{}{path}", server.url))
                .unwrap()
                .bytes()
                .unwrap()
        };
        let ring =
            Keyring::from_jwks(&JwkSet::parse(&get("/.well-known/jwks.json")).unwrap()).unwrap();
        let body = get("/v1/edge/revocations");
        EdgeUpdate::open(std::str::from_utf8(&body).unwrap(), &ring, MAX_ENTRIES).unwrap()
    };
    let snap = tokio::task::block_in_place(|| snapshot_of(&restored));
    assert_eq!(snap.feed.as_deref(), again["feed"].as_str());
    assert_eq!(
        (snap.seq, snap.entries.len()),
        (1, 1),
        "the history is back"
    );
    let snap = tokio::task::block_in_place(|| snapshot_of(&restored));
    assert_eq!(
        snap.feed.as_deref(),
        again["feed"].as_str(),
        "a restart keeps the feed"
    );
    // A copy put in place by hand (no restore command) is a new feed too: a backup
    // carries no id, so whatever opens it makes one.
    let by_hand = dir.path().join("by-hand");
    std::fs::create_dir_all(&by_hand).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&by_hand, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::fs::copy(&copy, by_hand.join("control-plane.db")).unwrap();
    let snap = tokio::task::block_in_place(|| snapshot_of(&by_hand));
    let id = snap.feed.expect("a feed id");
    assert!(id != original && Some(id.as_str()) != again["feed"].as_str());
}
