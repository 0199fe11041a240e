//! The outbox relay: hands committed events to the broker in commit order, marks them
//! published, and retries with backoff while the broker is away. An event is in the
//! outbox from the commit that made it, so a broker outage or a crash delays its
//! publication and loses nothing; a restart resumes from the first unpublished row.

use std::sync::Arc;
use std::time::Duration;

use crate::Region;
use crate::metrics::Metrics;
use crate::replication::bus::Topic;
use crate::store::db;
use crate::time::now;

/// Rows read per round.
const BATCH: usize = 500;
/// Longest wait between retries while the broker refuses events.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the relay looks at the outbox with no wake-up (rows written by another
/// process, e.g. the CLI, appear this way).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Relays the outbox until the task is dropped.
pub(crate) async fn run(region: Arc<Region>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let reader = region.clone();
        let rows = match tokio::task::spawn_blocking(move || {
            db::unpublished(&*reader.db().read()?, BATCH)
        })
        .await
        {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the outbox");
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "outbox read task failed");
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            }
        };
        if rows.is_empty() {
            tokio::select! {
                () = region.outbox_woken() => {}
                () = tokio::time::sleep(IDLE_POLL) => {}
            }
            continue;
        }
        // Every send is queued before any is awaited: the producer is idempotent, so the
        // broker keeps their order, and a batch costs one round trip, not one per row.
        let bus = region.bus().clone();
        let sends: Vec<_> = rows
            .iter()
            .map(|row| bus.publish(Topic::Revocations, &row.key, &row.signed))
            .collect();
        let mut done = Vec::with_capacity(rows.len());
        let mut failure = None;
        for (row, send) in rows.iter().zip(sends) {
            match send.await {
                Ok(()) if failure.is_none() => done.push(row.id),
                // Sent after a failure: published again next round (consumers apply
                // each event_id once), so the relay never reports a gap as published.
                Ok(()) => {}
                Err(e) => {
                    if failure.is_none() {
                        failure = Some(e);
                    }
                }
            }
        }
        if let Some(&last) = done.last() {
            let ids = done.clone();
            // Through the writer: shares the next group commit with issues and revocations.
            match region
                .writer()
                .run_async(move |tx| db::mark_published(tx, &ids, now()))
                .await
            {
                Ok(()) => region.outbox_published_through(last),
                Err(e) => tracing::warn!(error = %e, "cannot mark outbox rows published"),
            }
        }
        region.set_relay_healthy(failure.is_none());
        match failure {
            None => backoff = Duration::from_millis(100),
            Some(e) => {
                Metrics::inc(&region.metrics().publish_failures);
                tracing::warn!(
                    error = %e, retry_in_ms = backoff.as_millis() as u64,
                    "the broker refused an event; it stays in the outbox"
                );
                let bus = region.bus().clone();
                let _ = tokio::task::spawn_blocking(move || bus.recover()).await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
