//! Applying a verified event of another region: stored once, never published again,
//! then cached and fed to the edges.

use super::*;

impl Region {
    /// Applies a verified event of another region: stored once (by origin and
    /// `event_id`) with an audit row, never queued for publication again, then cached and
    /// fed to the edges. False when it was already applied.
    pub(crate) fn ingest(&self, event: &RevocationEvent, signed: &str) -> Result<bool, Error> {
        let job_event = event.clone();
        let signed = signed.to_owned();
        let region = self.settings.region.clone();
        let inserted = self.writer.run(move |tx| {
            let event = &job_event;
            let Some(inserted) = db::insert_revocation(tx, event, &signed, db::Outbox::Skip)?
            else {
                return Ok(None);
            };
            db::end_sessions(tx, event)?;
            audit::append_row(
                tx,
                now(),
                &region,
                "revocation.applied",
                json!({ "event": event, "feed_seq": inserted.feed_seq }),
            )?;
            Ok::<_, Error>(Some(inserted))
        })?;
        let Some(inserted) = inserted else {
            return Ok(false);
        };
        self.apply_local(event);
        self.feed.committed(inserted.feed_seq, event);
        if event.kind == Kind::Kid {
            self.retire_revoked_key(&event.value, &format!("revocation from {}", event.origin))?;
        }
        tracing::info!(
            event_id = %event.event_id, origin = %event.origin, kind = event.kind.as_str(),
            feed_seq = inserted.feed_seq, "peer revocation applied"
        );
        Ok(true)
    }
}
