//! The `token-events` topic: signed lifecycle events (issued, session created, rotated,
//! reused, revoked) for services that follow what happens to tokens, without any token
//! secret.
//!
//! The audit log is the outbox: every lifecycle change already commits an audit row in
//! the transaction that makes it, so this relay reads audit rows in order, turns the
//! relevant ones into events, signs each (ML-DSA-65, `typ` `token-event+jwt`, verifiable
//! with the region's JWKS) and publishes it keyed by subject or session, then records how
//! far it got. Nothing is lost across broker outages or restarts; delivery is at least
//! once (`event_id` = `<region>:<history>:<audit seq>` identifies duplicates; `history`
//! is the feed id, made when the data dir's history starts and new after a restore, so
//! two replicas of a region, or a region restored from a backup, never reuse an id).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use shared::envelope::{self, TYP_TOKEN_EVENT};

use crate::Region;
use crate::replication::bus::Topic;
use crate::store::db;

const RELAY: &str = "token-events";
const BATCH: usize = 200;

/// The lifecycle event an audit row stands for, if any: `(key, event)`.
pub(crate) fn lifecycle_event(
    region: &str,
    history: &str,
    seq: i64,
    entry: &Value,
) -> Option<(String, Value)> {
    let data = &entry["data"];
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let (kind, key) = match entry["action"].as_str()? {
        "token.issued" => ("issued", text(&data["sub"])?),
        "refresh.created" => ("session_created", text(&data["sid"])?),
        "refresh.rotated" => ("rotated", text(&data["sid"])?),
        "refresh.revoked" if data["via"] == "refresh token reuse" => {
            ("reused", text(&data["sid"])?)
        }
        "refresh.revoked" => ("session_revoked", text(&data["sid"])?),
        // A peer's revocation applied here is the peer's event: only its origin tells.
        "revocation" => ("revoked", text(&data["event"]["value"])?),
        _ => return None,
    };
    let event = json!({
        "event_id": format!("{region}:{history}:{seq}"),
        "type": kind,
        "region": region,
        "at": entry["at"],
        "data": data,
    });
    Some((key, event))
}

/// Relays until the task is dropped.
pub(crate) async fn run(region: Arc<Region>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let reader = region.clone();
        let batch = tokio::task::spawn_blocking(move || {
            let conn = reader.db().read()?;
            let from = db::relay_position(&conn, RELAY)?;
            db::audit_after(&conn, from, BATCH)
        })
        .await;
        let rows = match batch {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "token-event relay cannot read the audit log");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "token-event relay task failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(&(last, _)) = rows.last() else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let origin = region.settings().region.clone();
        let history = region.feed().id().to_owned();
        let keys = region.keys();
        let mut signed = Vec::new();
        for (seq, entry) in &rows {
            let Ok(entry) = serde_json::from_str::<Value>(entry) else {
                continue;
            };
            if let Some((key, event)) = lifecycle_event(&origin, &history, *seq, &entry) {
                match envelope::seal(
                    &keys.event_key,
                    TYP_TOKEN_EVENT,
                    event.to_string().as_bytes(),
                ) {
                    Ok(jws) => signed.push((key, jws)),
                    Err(e) => tracing::error!(error = %e, "cannot sign a token event"),
                }
            }
        }
        let bus = region.bus().clone();
        let sends: Vec<_> = signed
            .iter()
            .map(|(key, jws)| bus.publish(Topic::TokenEvents, key, jws))
            .collect();
        let mut failed = None;
        for send in sends {
            if let Err(e) = send.await {
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            tracing::warn!(error = %e, "token events not published; retrying the batch");
            let bus = region.bus().clone();
            let _ = tokio::task::spawn_blocking(move || bus.recover()).await;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        backoff = Duration::from_millis(200);
        let saved = region
            .writer()
            .run_async(move |tx| db::set_relay_position(tx, RELAY, last))
            .await;
        if saved.is_err() {
            tracing::warn!("token-event relay could not record its position");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_histories_of_a_region_never_share_an_event_id() {
        let row = json!({ "action": "token.issued", "at": 1, "data": { "sub": "alice" } });
        let id = |history: &str| {
            lifecycle_event("a", history, 17, &row)
                .map(|(_, event)| event["event_id"].clone())
                .unwrap_or_default()
        };
        // Two replicas of region a (or a region and its restore) at audit row 17.
        assert_eq!(id("feed-one"), "a:feed-one:17");
        assert_ne!(id("feed-one"), id("feed-two"));
        assert!(lifecycle_event("a", "f", 1, &json!({ "action": "keys.rotated" })).is_none());
    }
}
