//! Revoking: how long a revocation lives, the signed event, its commit through the
//! writer, and what follows the commit (cache, feed, outbox wake-up).

use super::*;

impl Region {
    /// The clock leeway every revocation of this region covers (the edge feed carries it,
    /// and edges clamp their own leeway to it).
    #[expect(
        clippy::unused_self,
        reason = "callers ask the region for its leeway; today every region uses the same constant"
    )]
    pub(crate) fn revocation_leeway(&self) -> i64 {
        REVOCATION_LEEWAY_SECS
    }

    /// Until when a revocation made at `at` must live when it cannot see the tokens it
    /// matches: past the last `exp` any region may have issued by then (the fleet's
    /// longest lifetime, and every `exp` this region ever handed out, whatever its
    /// settings were), plus the leeway any checker may apply.
    pub(crate) fn revocation_bound(&self, at: i64) -> i64 {
        at.saturating_add(self.settings.fleet_max_token_secs)
            .max(self.issued_until.load(Ordering::Acquire))
            .saturating_add(self.revocation_leeway())
    }

    /// When a token that expires at `exp` can no longer be accepted anywhere.
    pub(crate) fn token_end(&self, exp: i64) -> i64 {
        exp.saturating_add(self.revocation_leeway())
    }

    /// When a revocation made at `at` expires. Unasked, at [`Region::revocation_bound`]:
    /// a `jti`, `sub` or `sid` revocation matches tokens issued at or before `at` (sessions
    /// it ends are marked in SQLite, so they need no entry), which all end by then. Asked
    /// (`requested`, e.g. a holder revocation that knows its token's `exp`, or an admin's
    /// `ttl_seconds`), never later than that bound; a `kid` revocation never ends before
    /// it, since tokens that key signed live until then.
    pub(crate) fn revocation_expiry(&self, kind: Kind, requested: Option<i64>, at: i64) -> i64 {
        let bound = self.revocation_bound(at);
        match (kind, requested) {
            (_, None) => bound,
            (Kind::Kid, Some(requested)) => requested.max(bound),
            (_, Some(requested)) => requested.min(bound),
        }
    }

    /// Revokes one identifier of a token unless a live revocation already covers the
    /// token; then it answers with that one and writes nothing (holder revocations are
    /// idempotent, so repeating them cannot grow the set or the log).
    pub(crate) fn revoke_once(
        &self,
        kind: Kind,
        ids: &TokenIds<'_>,
        expires_at: Option<i64>,
        via: &str,
    ) -> Result<Revoked, Error> {
        let value = ids.value(kind).ok_or_else(|| {
            Error::InvalidRequest(format!("the token has no {} claim", kind.as_str()))
        })?;
        // The cheap check first: a repeat must not cost an ML-DSA signature.
        if let Some(existing) = self.find(kind, value)?.filter(|e| e.matches(ids)) {
            return self.existing(existing);
        }
        if kind == Kind::Kid {
            self.retire_revoked_key(value, via)?;
        }
        let (event, signed) = self.sign_revocation(kind, value, expires_at)?;
        let record = self.recorder(via);
        let owned = (
            value.to_owned(),
            ids.jti.to_owned(),
            ids.sub.to_owned(),
            ids.kid.to_owned(),
            ids.sid.map(str::to_owned),
            ids.iat,
        );
        let job_event = event.clone();
        let outcome = self.writer.run(move |tx| {
            let (value, jti, sub, kid, sid, iat) = owned;
            let ids = TokenIds {
                jti: &jti,
                sub: &sub,
                kid: &kid,
                sid: sid.as_deref(),
                iat,
            };
            // Decided inside the write transaction: two concurrent repeats write one event.
            if let Some(existing) =
                db::find_revocation(tx, kind, &value, now())?.filter(|e| e.matches(&ids))
            {
                return Ok(Err(existing));
            }
            record.write(tx, &job_event, &signed).map(Ok)
        })?;
        match outcome {
            Ok(inserted) => Ok(self.announce_revocation(event, inserted, via)),
            Err(existing) => self.existing(existing),
        }
    }

    /// What [`Recorder::write`] needs, owned, for a writer job: it writes a signed event
    /// with its feed, outbox and audit rows, so other state can change in the same
    /// commit. Call [`Region::announce_revocation`] after the commit.
    pub(crate) fn recorder(&self, via: &str) -> Recorder {
        Recorder {
            outbox: self.outbox_mode(),
            region: self.settings.region.clone(),
            via: via.to_owned(),
        }
    }

    fn existing(&self, event: RevocationEvent) -> Result<Revoked, Error> {
        let published = db::outbox_published(&*self.db.read()?, &event.event_id)?;
        Ok(Revoked {
            event,
            published,
            outbox_id: None,
        })
    }

    /// Signs, commits, caches and publishes a revocation. Answers only after the
    /// SQLite transaction has committed. The signature (shared with the other events of
    /// its batch) and the commit are awaited without holding a thread; a caller with no
    /// runtime (the CLI) blocks on it.
    pub(crate) async fn revoke(
        self: &Arc<Self>,
        kind: Kind,
        value: String,
        expires_at: Option<i64>,
        via: &'static str,
    ) -> Result<Revoked, Error> {
        if kind == Kind::Kid {
            let region = self.clone();
            let kid = value.clone();
            tokio::task::spawn_blocking(move || region.retire_revoked_key(&kid, via)).await??;
        }
        let event = self.new_revocation(kind, &value, expires_at)?;
        let (event, signed) = self
            .signer
            .sign_async(event)
            .await
            .map_err(Error::Signing)?;
        let record = self.recorder(via);
        let job_event = event.clone();
        let inserted = self
            .writer
            .run_async(move |tx| record.write(tx, &job_event, &signed))
            .await?;
        Ok(self.announce_revocation(event, inserted, via))
    }

    /// Builds a revocation event (nothing signed or stored yet; the signer sets `kid`).
    fn new_revocation(
        &self,
        kind: Kind,
        value: &str,
        expires_at: Option<i64>,
    ) -> Result<RevocationEvent, Error> {
        check_value(kind.as_str(), value)?;
        let t = now();
        Ok(RevocationEvent {
            event_id: random::id(),
            kind,
            value: value.to_owned(),
            // A subject revocation spares tokens issued after it, so new logins work.
            not_before: (kind == Kind::Sub).then_some(t),
            expires_at: self.revocation_expiry(kind, expires_at, t),
            issued_at: t,
            origin: self.settings.region.clone(),
            nonce: hex(&random::bytes::<16>()),
            kid: String::new(),
        })
    }

    /// Builds and signs a revocation event (nothing stored yet). Blocks until the event
    /// signer's batch holding it is signed: for work on the blocking pool; the async
    /// [`Region::revoke`] awaits the signer instead.
    pub(crate) fn sign_revocation(
        &self,
        kind: Kind,
        value: &str,
        expires_at: Option<i64>,
    ) -> Result<(RevocationEvent, String), Error> {
        let event = self.new_revocation(kind, value, expires_at)?;
        self.signer.sign(event).map_err(Error::Signing)
    }

    /// After the commit: caches the event, advances the edge feed and wakes the outbox
    /// relay (with no broker the event counts as published at once).
    pub(crate) fn announce_revocation(
        &self,
        event: RevocationEvent,
        inserted: db::Inserted,
        via: &str,
    ) -> Revoked {
        self.apply_local(&event);
        self.feed.committed(inserted.feed_seq, &event);
        self.metrics.revoked(event.kind);
        let published = self.outbox_mode() == db::Outbox::Local;
        if !published {
            self.outbox_wake.notify_one();
        }
        tracing::info!(
            event_id = %event.event_id, kind = event.kind.as_str(), feed_seq = inserted.feed_seq,
            via, "revocation committed"
        );
        Revoked {
            event,
            published,
            outbox_id: inserted.outbox_id,
        }
    }

    pub(super) fn apply_local(&self, event: &RevocationEvent) {
        self.revoked.insert(event).ok();
        if let Some(Err(e)) = self.shared_cache.as_ref().map(|c| c.insert(event)) {
            tracing::warn!(error = %e, "revocation committed but not written to Redis");
        }
    }
}

/// Writes a signed revocation with its feed, outbox and audit rows, in the writer thread.
pub(crate) struct Recorder {
    outbox: db::Outbox,
    region: String,
    via: String,
}

impl Recorder {
    pub(crate) fn write(
        &self,
        tx: &rusqlite::Transaction<'_>,
        event: &RevocationEvent,
        signed: &str,
    ) -> Result<db::Inserted, Error> {
        let inserted =
            db::insert_revocation(tx, event, signed, self.outbox)?.unwrap_or(db::Inserted {
                feed_seq: 0,
                outbox_id: None,
            });
        // Sessions end in SQLite too: the event only has to outlive the access tokens.
        db::end_sessions(tx, event)?;
        audit::append_row(
            tx,
            event.issued_at,
            &self.region,
            "revocation",
            json!({ "event": event, "feed_seq": inserted.feed_seq, "via": self.via }),
        )?;
        Ok(inserted)
    }
}
