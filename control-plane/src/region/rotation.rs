//! Keys: the peers' keys, the JWKS served, rotation, and retiring a revoked key of
//! this region before anything else is signed.

use super::*;

impl Region {
    /// The other regions' keys, as last fetched from `PEER_JWKS`.
    pub(crate) fn peer_keys(&self) -> Arc<(JwkSet, Keyring)> {
        self.peer_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the peers' keys (after a fetch of `PEER_JWKS`).
    pub(crate) fn set_peer_keys(&self, jwks: JwkSet, keyring: Keyring) {
        *self.peer_keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new((jwks, keyring));
        self.verified.clear();
        self.feed.publish_jwks(&self.published_jwks());
    }

    /// What `/.well-known/jwks.json` serves: this region's keys, then the peers' keys
    /// (so edges and clients of this region accept tokens of every region). Serialised
    /// once per change by the feed (`Feed::publish_jwks`).
    fn published_jwks(&self) -> JwkSet {
        let mut set = self.keys().jwks.clone();
        for jwk in &self.peer_keys().0.keys {
            if !set.keys.iter().any(|k| k.kid.is_some() && k.kid == jwk.kid) {
                set.keys.push(jwk.clone());
            }
        }
        set
    }

    /// Creates new keys, published at once and signing after the activation delay, when
    /// the current ones retire; recorded in the audit log. Goes through the writer like
    /// every other write; the audit sealer signs the row's checkpoint after the commit.
    pub(crate) fn rotate_keys(&self, via: &str) -> Result<KeyChanges, Error> {
        let owned = (
            via.to_owned(),
            self.settings.region.clone(),
            self.settings.key_activation_secs,
        );
        let changes = self.writer.run(move |tx| {
            let (via, region, activation) = owned;
            let t = now();
            let changes = keys::rotate(tx, t, activation)?;
            audit::append_row(
                tx,
                t,
                &region,
                "keys.rotated",
                json!({ "created": changes.created, "retired": changes.retired, "via": via }),
            )?;
            Ok::<_, Error>(changes)
        })?;
        self.reload_keys()?;
        Ok(changes)
    }

    pub(super) fn reload_keys(&self) -> Result<(), Error> {
        let set = keys::load(
            &*self.db.read()?,
            self.settings.signing_alg,
            now(),
            self.settings.max_token_secs,
        )?
        .ok_or(Error::NoKeys)?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        self.verified.clear();
        self.feed.publish_jwks(&self.published_jwks());
        Ok(())
    }

    /// When `kid` is one of this region's keys that still signs (or is about to), retires
    /// it now and makes a fresh key sign in its place, before the revocation is signed:
    /// nothing is signed with a revoked key, not even the revocation itself. The new key
    /// is in the JWKS at once; edges and peers fetch it when they meet its `kid`.
    pub(super) fn retire_revoked_key(&self, kid: &str, via: &str) -> Result<(), Error> {
        let owned = (kid.to_owned(), via.to_owned(), self.settings.region.clone());
        let changes = self.writer.run(move |tx| {
            let (kid, via, region) = owned;
            let t = now();
            let Some(changes) = keys::retire_now(tx, &kid, t)? else {
                return Ok::<_, Error>(None);
            };
            audit::append_row(
                tx,
                t,
                &region,
                "keys.revoked",
                json!({ "kid": kid, "created": changes.created, "retired": changes.retired, "via": via }),
            )?;
            Ok(Some(changes))
        })?;
        if let Some(changes) = changes {
            self.reload_keys()?;
            tracing::warn!(
                kid, via, created = ?changes.created.iter().map(|k| &k.kid).collect::<Vec<_>>(),
                "a revoked signing key of this region was retired and replaced"
            );
        }
        Ok(())
    }
}
