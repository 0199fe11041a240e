//! `GET /v1/events` and `events export`: the signed revocation events, readable and
//! verifiable by any party holding the admin credential (or the database).

use serde_json::Value;
use shared::RevocationEvent;

use crate::support::{Reply, TestApp, run_cli};

async fn events(app: &TestApp, query: &str, admin: bool) -> Reply {
    let auth = format!("Bearer {}", app.secret);
    let headers: &[(&str, &str)] = if admin {
        &[("authorization", &auth)]
    } else {
        &[]
    };
    app.request("GET", &format!("/v1/events{query}"), headers, None)
        .await
}

#[tokio::test]
async fn the_admin_reads_signed_events_in_feed_order_and_each_verifies_with_the_jwks() {
    for app in TestApp::both().await {
        events(&app, "", false).await.error(401, "unauthorized");
        let mut ids = Vec::new();
        for (kind, value) in [("jti", "j-1"), ("sub", "alice"), ("sid", "s-1")] {
            let done = app.revoke(kind, value).await;
            ids.push(done["event_id"].as_str().unwrap().to_owned());
        }

        let reply = events(&app, "", true).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let page = reply.json();
        let listed = page["events"].as_array().unwrap();
        assert_eq!(listed.len(), 3, "{page}");
        assert_eq!(page["head"], page["next"]);
        let keys = app.jwks_keyring().await;
        let mut last = 0;
        for (row, (id, (kind, value))) in
            listed.iter().zip(
                ids.iter()
                    .zip([("jti", "j-1"), ("sub", "alice"), ("sid", "s-1")]),
            )
        {
            let seq = row["seq"].as_u64().unwrap();
            assert!(seq > last, "feed order");
            last = seq;
            assert_eq!(row["event_id"], id.as_str());
            // What an outside party does: verify the compact JWS with the JWKS.
            let event = RevocationEvent::verify(row["jws"].as_str().unwrap(), &keys)
                .expect("verifies with the published keys");
            assert_eq!(&event.event_id, id);
            assert_eq!(event.kind.as_str(), kind);
            assert_eq!(event.value, value);
        }

        // Paging: since and limit.
        let first = listed[0]["seq"].as_u64().unwrap();
        let page = events(&app, &format!("?since={first}&limit=1"), true)
            .await
            .json();
        let rows = page["events"].as_array().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["event_id"], ids[1].as_str());
        assert_eq!(page["next"], rows[0]["seq"]);
        let page = events(&app, &format!("?since={last}"), true).await.json();
        assert_eq!(page["events"], Value::Array(Vec::new()));
        assert_eq!(page["next"], last);

        for bad in ["?limit=0", "?limit=1001", "?since=-1", "?sinse=1"] {
            events(&app, bad, true).await.error(400, "invalid_request");
        }
    }
}

#[test]
fn events_export_prints_json_lines_of_the_signed_events() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("data");
    let mut ids = Vec::new();
    for value in ["j-1", "j-2"] {
        let (ok, out, err) = run_cli(&data, &["revoke", "--type", "jti", "--value", value]);
        assert!(ok, "{err}");
        let done: Value = serde_json::from_str(&out).unwrap();
        ids.push(done["event_id"].as_str().unwrap().to_owned());
    }
    let (ok, out, err) = run_cli(&data, &["events", "export"]);
    assert!(ok, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (line, id) in lines.iter().zip(&ids) {
        assert_eq!(line["event_id"], id.as_str());
        // A flattened JWS over the root of the batch the event was signed in; the event
        // and its inclusion proof ride in the unprotected header.
        let jws: Value = serde_json::from_str(line["jws"].as_str().unwrap()).unwrap();
        let protected = jws["protected"].as_str().unwrap();
        let header: Value =
            serde_json::from_slice(&shared::b64::decode(protected, "header").unwrap()).unwrap();
        assert_eq!(header["typ"], "revocation-batch+jws");
        assert_eq!(header["alg"], "ML-DSA-65");
        let event: Value = serde_json::from_slice(
            &shared::b64::decode(jws["header"]["event"].as_str().unwrap(), "event").unwrap(),
        )
        .unwrap();
        assert_eq!(event["event_id"], id.as_str());
    }
    let since = lines[0]["seq"].as_u64().unwrap().to_string();
    let (ok, out, err) = run_cli(&data, &["events", "export", "--since", &since]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1);
    assert!(out.contains(&ids[1]));
}
