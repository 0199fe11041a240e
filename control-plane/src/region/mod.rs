//! One region's control plane without any HTTP: it issues, checks and revokes tokens,
//! writes the audit log and keeps the revocation cache and edge feed head current.
//!
//! Every method is blocking (SQLite commits wait for the disk); the HTTP layer calls the
//! writing ones on the blocking thread pool, the CLI calls them directly. Issuing,
//! revoking and ingesting go through the group-committing [`Writer`]: signatures are
//! made by the caller's thread before, cache and feed updates after the commit.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::{Map, Value, json};
use shared::claims::{Audience, Confirmation, TYP_ACCESS_TOKEN};
use shared::jws::{self, Limits};
use shared::revocation::TokenIds;
use shared::{
    AccessClaims, JoseError, JwkSet, Keyring, Kind, RevocationEvent, b64, random, sha256,
};
use tokio::sync::watch;

use crate::cache::{self, MemoryCache, RevocationCache};
use crate::config::{REVOCATION_LEEWAY_SECS, Settings};
use crate::metrics::Metrics;
use crate::replication::bus::{EventBus, LocalBus};
use crate::replication::feed::Feed;
use crate::replication::signer::EventSigner;
use crate::store::audit::{self, AppendError};
use crate::store::db::{self, Db};
use crate::store::keys::{self, KeyChanges, KeySet};
use crate::store::writer::Writer;
use crate::time::{now, rfc3339};

/// File name of the admin credential inside the data directory.
pub(crate) const ADMIN_FILE: &str = "admin.secret";

/// Claims a request may not set: the issuer owns them.
pub(crate) const REGISTERED_CLAIMS: [&str; 7] = ["iss", "sub", "aud", "exp", "iat", "nbf", "jti"];

/// Longest identifier accepted as a subject or revocation value.
pub(crate) const MAX_VALUE_LEN: usize = 1024;

/// What went wrong in a domain operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong; the message says how.
    #[error("{0}")]
    InvalidRequest(String),
    /// SQLite failed.
    #[error("storage failed: {0}")]
    Storage(#[from] rusqlite::Error),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(JoseError),
    /// Appending to the audit log failed.
    #[error("audit log append failed: {0}")]
    Audit(#[from] AppendError),
    /// No usable signing key is stored.
    #[error("no active signing key is stored")]
    NoKeys,
    /// A task on the blocking pool panicked or was cancelled (an internal failure: a
    /// 500 whose body stays generic; the cause is logged).
    #[error("internal task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A token request (the `POST /token` body).
#[derive(Debug, Clone, Default)]
pub(crate) struct IssueRequest {
    /// `sub`.
    pub(crate) subject: String,
    /// Lifetime; the configured default when `None`.
    pub(crate) expires_minutes: Option<i64>,
    /// Extra claims; `sid`, `scope`, `client_id` and `cnf` are recognised.
    pub(crate) additional_claims: Option<Map<String, Value>>,
}

/// Who and what an access token is for; [`Region::access_claims`] adds the rest.
#[derive(Debug, Clone, Default)]
pub(crate) struct Grant {
    /// `sub`.
    pub(crate) sub: String,
    /// `sid`, for a session's tokens.
    pub(crate) sid: Option<String>,
    /// `scope`.
    pub(crate) scope: Option<String>,
    /// `client_id`.
    pub(crate) client_id: Option<String>,
    /// `cnf`, for a token bound to a device key.
    pub(crate) cnf: Option<Confirmation>,
    /// Other claims.
    pub(crate) extra: Map<String, Value>,
}

/// An issued token.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    /// The compact JWS.
    pub(crate) token: String,
    /// Its claims.
    pub(crate) claims: AccessClaims,
    /// Seconds until it expires.
    pub(crate) expires_in: i64,
}

/// The result of checking a token.
#[derive(Debug, Clone)]
pub(crate) struct TokenCheck {
    /// True when the signature, times, issuer, audience and revocation state all pass.
    pub(crate) valid: bool,
    /// The claims, once the signature verified.
    pub(crate) claims: Option<AccessClaims>,
    /// The revocation that covers the token, if one does.
    pub(crate) revocation: Option<RevocationEvent>,
    /// Why it is (in)valid, in words.
    pub(crate) message: String,
}

/// A committed revocation.
#[derive(Debug, Clone)]
pub(crate) struct Revoked {
    /// The signed event.
    pub(crate) event: RevocationEvent,
    /// True when the event bus has accepted it (at once with no broker; with Kafka when
    /// the outbox relay has handed it over, see [`Region::wait_published`]).
    pub(crate) published: bool,
    /// Its outbox row, relayed in this order.
    pub(crate) outbox_id: Option<i64>,
}

/// Describes a revocation in a sentence fragment: "revoked by subject at ...".
pub(crate) fn describe(event: &RevocationEvent) -> String {
    let by = match event.kind {
        Kind::Jti => "revoked (jti)",
        Kind::Sub => "revoked by subject",
        Kind::Kid => "revoked by signing key",
        Kind::Sid => "revoked by session",
    };
    format!("{by} at {}", rfc3339(event.issued_at))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks an identifier given by a client.
pub(crate) fn check_value(what: &str, value: &str) -> Result<(), Error> {
    if value.trim().is_empty() {
        return Err(Error::InvalidRequest(format!("{what} must not be empty")));
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(Error::InvalidRequest(format!(
            "{what} is {} bytes, over the {MAX_VALUE_LEN}-byte limit",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::InvalidRequest(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

/// Checks a claim string a client chose: no control characters (CR, LF, NUL, ...).
pub(crate) fn check_text(what: &str, value: &str) -> Result<(), Error> {
    if value.chars().any(char::is_control) {
        return Err(Error::InvalidRequest(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

/// [`check_text`] on every string inside a JSON value.
fn check_strings(what: &str, value: &Value) -> Result<(), Error> {
    match value {
        Value::String(s) => check_text(what, s),
        Value::Array(items) => items.iter().try_for_each(|v| check_strings(what, v)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            check_text(what, k)?;
            check_strings(what, v)
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// Creates the data directory (mode 0700) if missing; refuses one that group or others
/// can enter or whose key files they can read (see [`crate::store::data_dir`]).
pub(crate) fn create_data_dir(dir: &Path) -> Result<(), crate::store::data_dir::DataDirError> {
    crate::store::data_dir::prepare(dir)
}

/// Reads the admin secret stored in a data directory.
pub fn read_admin_secret(data_dir: &Path) -> std::io::Result<String> {
    Ok(fs::read_to_string(data_dir.join(ADMIN_FILE))?
        .trim()
        .to_owned())
}

/// Creates the admin credential file (mode 0600) unless it exists; true if created.
fn ensure_admin_secret(path: &Path) -> std::io::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    let secret = format!("cpadmin_{}", b64::encode(&random::bytes::<32>()));
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    Ok(true)
}

/// A region's state.
pub struct Region {
    settings: Settings,
    db: Db,
    writer: Writer,
    /// Signs revocation events in batches.
    signer: EventSigner,
    keys: Arc<RwLock<Arc<KeySet>>>,
    /// The other regions' keys (`PEER_JWKS`): their tokens are valid here too.
    peer_keys: RwLock<Arc<(JwkSet, Keyring)>>,
    /// Every live revocation this process verified or wrote: the only set its decisions
    /// read (Redis is never asked whether something is revoked).
    revoked: MemoryCache,
    /// The region's shared cache (Redis), written for other services; never read back.
    shared_cache: Option<Arc<dyn RevocationCache>>,
    /// A time past every `exp` this region may have issued (durable, see
    /// [`db::reserve_horizon`]); revocations last at least until it.
    issued_until: AtomicI64,
    /// Signatures already checked, by token digest (cleared when keys change).
    verified: cache::VerifiedTokens,
    bus: Arc<dyn EventBus>,
    /// The edge feed: its id, head, recent entries and prepared updates.
    feed: Feed,
    /// Wakes the outbox relay after a commit.
    outbox_wake: tokio::sync::Notify,
    /// The highest outbox row the relay has handed to the broker.
    outbox_published: watch::Sender<i64>,
    /// False while the broker refuses events.
    relay_healthy: std::sync::atomic::AtomicBool,
    admin_hash: [u8; 32],
    admin_path: PathBuf,
    metrics: Metrics,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("region", &self.settings.region)
            .field("data_dir", &self.settings.data_dir)
            .finish()
    }
}

impl Region {
    /// Opens a region on its data directory with the embedded defaults (in-memory cache,
    /// no broker), creating the database, keys and admin credential on first run.
    pub(crate) fn open(settings: Settings) -> anyhow::Result<Region> {
        Region::open_with(settings, Arc::new(MemoryCache::new()), Arc::new(LocalBus))
    }

    /// Opens a region with the given cache and event bus. A cache other than the in-memory
    /// one (Redis) is kept current for other services and never read for a decision.
    pub fn open_with(
        settings: Settings,
        cache: Arc<dyn RevocationCache>,
        bus: Arc<dyn EventBus>,
    ) -> anyhow::Result<Region> {
        use anyhow::Context as _;
        let dir = settings.data_dir.clone();
        create_data_dir(&dir)?;
        let db_path = dir.join(db::DB_FILE);
        let db = Db::open(&db_path)
            .with_context(|| format!("cannot open database {}", db_path.display()))?;
        let t = now();
        let admin_path = dir.join(ADMIN_FILE);
        let created = ensure_admin_secret(&admin_path)
            .with_context(|| format!("cannot create {}", admin_path.display()))?;
        // The one write before the writer runs; its rows (and any a crash left unsealed)
        // are sealed by the writer's first checkpoint.
        let keyset = keys::prepare(
            &db,
            &keys::Prepare {
                token_alg: settings.signing_alg,
                now: t,
                max_token_secs: settings.max_token_secs,
                region: &settings.region,
                admin_created: created.then(|| admin_path.display().to_string()),
            },
        )?
        .context("no signing keys after creating them")?;
        let secret = read_admin_secret(&dir)
            .with_context(|| format!("cannot read {}", admin_path.display()))?;
        anyhow::ensure!(
            secret.len() >= 16,
            "{} holds no usable secret",
            admin_path.display()
        );
        let shared_cache = (!cache.is_local()).then_some(cache);
        let revoked = MemoryCache::new();
        let (feed, issued_until) = {
            let conn = db.read()?;
            let live = db::feed_range(&conn, 0, u64::MAX, Some(t))?;
            for (_, event) in &live {
                revoked.insert(event).ok();
                if let Some(Err(e)) = shared_cache.as_ref().map(|c| c.insert(event)) {
                    tracing::warn!(error = %e, "could not load a revocation into Redis");
                }
            }
            let feed = Feed::new(
                db::feed_id(&conn)?,
                db::feed_head(&conn)?,
                &live,
                settings.feed_max_delta,
            );
            feed.publish_jwks(&keyset.jwks);
            (feed, db::horizon(&conn, db::ISSUED_UNTIL)?)
        };
        let keys = Arc::new(RwLock::new(Arc::new(keyset)));
        let source = keys.clone();
        let key_source: crate::store::writer::KeySource =
            Arc::new(move || source.read().unwrap_or_else(|e| e.into_inner()).clone());
        let writer = Writer::start(&db, key_source.clone(), settings.region.clone())?;
        Ok(Region {
            settings,
            db,
            writer,
            signer: EventSigner::start(key_source),
            keys,
            peer_keys: RwLock::new(Arc::new((JwkSet::default(), Keyring::new()))),
            revoked,
            shared_cache,
            issued_until: AtomicI64::new(issued_until),
            verified: cache::VerifiedTokens::default(),
            bus,
            feed,
            outbox_wake: tokio::sync::Notify::new(),
            outbox_published: watch::Sender::new(0),
            relay_healthy: std::sync::atomic::AtomicBool::new(true),
            admin_hash: sha256(secret.as_bytes()),
            admin_path,
            metrics: Metrics::default(),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The group-committing writer.
    pub(crate) fn writer(&self) -> &Writer {
        &self.writer
    }

    /// The counters.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What the event signer has done (events and signatures).
    pub(crate) fn signer_stats(&self) -> &crate::replication::signer::SignerStats {
        self.signer.stats()
    }

    /// Test hook: pauses the event signer until the guard is dropped, so a test can
    /// watch what the region does while a revocation waits for its signature.
    #[doc(hidden)]
    pub fn pause_event_signer(&self) -> crate::replication::signer::SignerPause {
        self.signer.pause()
    }

    /// The live revocations this process decides with.
    pub(crate) fn revocations(&self) -> &MemoryCache {
        &self.revoked
    }

    /// The region's shared cache (Redis), if any: an output for other services.
    pub(crate) fn shared_cache(&self) -> Option<&dyn RevocationCache> {
        self.shared_cache.as_deref()
    }

    /// The event bus name.
    pub fn bus_name(&self) -> &'static str {
        self.bus.name()
    }

    /// The event bus.
    pub(crate) fn bus(&self) -> &Arc<dyn EventBus> {
        &self.bus
    }

    /// With a broker configured every event waits in the outbox for the relay (also when
    /// written by the CLI, which has no relay: the server's relay sends it).
    fn outbox_mode(&self) -> db::Outbox {
        if self.settings.kafka.is_some() {
            db::Outbox::Queue
        } else {
            db::Outbox::Local
        }
    }

    /// Resolves when the relay should look at the outbox again.
    pub(crate) async fn outbox_woken(&self) {
        self.outbox_wake.notified().await;
    }

    /// Called by the relay after each round: false while the broker refuses events, so
    /// answers stop waiting for it.
    pub(crate) fn set_relay_healthy(&self, healthy: bool) {
        self.relay_healthy
            .store(healthy, std::sync::atomic::Ordering::Relaxed);
    }

    /// Called by the relay: rows up to `id` are with the broker.
    pub(crate) fn outbox_published_through(&self, id: i64) {
        self.outbox_published.send_if_modified(|through| {
            let moved = id > *through;
            *through = (*through).max(id);
            moved
        });
    }

    /// Waits up to `limit` for the relay to hand the outbox row `id` to the broker;
    /// true if it did.
    pub(crate) async fn wait_published(&self, id: i64, limit: std::time::Duration) -> bool {
        let mut through = self.outbox_published.subscribe();
        if !self
            .relay_healthy
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return *through.borrow_and_update() >= id;
        }
        tokio::time::timeout(limit, through.wait_for(|t| *t >= id))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Where the admin credential is stored.
    pub fn admin_path(&self) -> &Path {
        &self.admin_path
    }

    /// The keys in use now.
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The edge feed: its id, its head (and a way to wait for the next), its prepared
    /// updates.
    pub(crate) fn feed(&self) -> &Feed {
        &self.feed
    }

    /// True when `presented` is the admin secret (compared in constant time).
    pub(crate) fn is_admin(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        let digest = sha256(presented.trim().as_bytes());
        digest.ct_eq(&self.admin_hash).into()
    }

    /// Issues an access token and records it in the audit log.
    pub(crate) fn issue(&self, request: IssueRequest, via: &str) -> Result<Issued, Error> {
        let (claims, ttl) = self.issue_claims(request)?;
        let (token, row) = self.sign_issued(&self.keys(), &claims, via)?;
        self.writer.run(move |tx| row.write(tx))?;
        Ok(Issued {
            token,
            claims,
            expires_in: ttl,
        })
    }

    /// [`Region::issue`] for async callers: an EdDSA token is signed on the calling
    /// thread (tens of microseconds), an ML-DSA-65 one on the blocking pool; the audit
    /// row waits for the next group commit without holding a thread.
    pub(crate) async fn issue_async(
        self: &Arc<Self>,
        request: IssueRequest,
        via: &'static str,
    ) -> Result<Issued, Error> {
        let (claims, ttl) = self.issue_claims(request)?;
        // Reserved here, awaited: signing on this thread must not block on a commit.
        if claims.exp > self.issued_until.load(Ordering::Acquire) {
            let until = self.issued_until_step(claims.exp);
            let stored = self
                .writer
                .run_async(move |tx| db::reserve_horizon(tx, db::ISSUED_UNTIL, until))
                .await?;
            self.issued_until.fetch_max(stored, Ordering::AcqRel);
        }
        // One key snapshot decides where to sign and signs.
        let keys = self.keys();
        let (claims, token, row) = if keys.token_key.alg() == shared::Alg::EdDsa {
            let (token, row) = self.sign_issued(&keys, &claims, via)?;
            (claims, token, row)
        } else {
            let region = self.clone();
            tokio::task::spawn_blocking(move || {
                region
                    .sign_issued(&keys, &claims, via)
                    .map(|(token, row)| (claims, token, row))
            })
            .await??
        };
        self.writer.run_async(move |tx| row.write(tx)).await?;
        Ok(Issued {
            token,
            claims,
            expires_in: ttl,
        })
    }

    /// Signs issued claims with `keys`; returns the token and the writer job of its audit
    /// row.
    fn sign_issued(
        &self,
        keys: &KeySet,
        claims: &AccessClaims,
        via: &str,
    ) -> Result<(String, IssuedRow), Error> {
        let (token, kid, alg) = self.sign_access_with(keys, claims)?;
        let row = json!({
            "jti": claims.jti, "sub": claims.sub, "aud": claims.aud, "iat": claims.iat,
            "exp": claims.exp, "kid": kid, "alg": alg.as_str(),
            "sid": claims.sid, "scope": claims.scope, "client_id": claims.client_id,
            "via": via,
        });
        Ok((
            token,
            IssuedRow {
                region: self.settings.region.clone(),
                at: claims.iat,
                row,
            },
        ))
    }

    /// Checks a token request and builds its claims; returns them with the lifetime.
    fn issue_claims(&self, request: IssueRequest) -> Result<(AccessClaims, i64), Error> {
        check_value("subject", &request.subject)?;
        let max_minutes = self.settings.max_token_secs / 60;
        let ttl = match request.expires_minutes {
            None => self.settings.default_token_secs,
            Some(m) if (1..=max_minutes).contains(&m) => m * 60,
            Some(m) => {
                return Err(Error::InvalidRequest(format!(
                    "expires_minutes must be between 1 and {max_minutes}, got {m}"
                )));
            }
        };
        let mut extra = request.additional_claims.unwrap_or_default();
        if let Some(name) = REGISTERED_CLAIMS.iter().find(|c| extra.contains_key(**c)) {
            return Err(Error::InvalidRequest(format!(
                "additional_claims may not set the registered claim \"{name}\""
            )));
        }
        let sid = take_string(&mut extra, "sid")?;
        let scope = take_string(&mut extra, "scope")?;
        let client_id = take_string(&mut extra, "client_id")?;
        if let Some(sid) = &sid {
            check_value("sid", sid)?;
        }
        // The edge may copy any of these into a request header upstream: a control
        // character there would split or smuggle headers.
        for (name, value) in [("scope", &scope), ("client_id", &client_id)] {
            if let Some(value) = value {
                check_text(&format!("additional_claims.{name}"), value)?;
            }
        }
        for (name, value) in &extra {
            // The name too: the edge may copy a claim into a header named after it.
            check_text("an additional_claims name", name)?;
            check_strings(&format!("additional_claims.{name}"), value)?;
        }
        let cnf = match extra.remove("cnf") {
            None => None,
            Some(v) => Some(serde_json::from_value::<Confirmation>(v).map_err(|_| {
                Error::InvalidRequest(r#"cnf must be an object {"jkt": "<thumbprint>"}"#.into())
            })?),
        };
        let claims = self.access_claims(
            Grant {
                sub: request.subject,
                sid,
                scope,
                client_id,
                cnf,
                extra,
            },
            now(),
            ttl,
        );
        Ok((claims, ttl))
    }

    /// The claims of an access token this region issues at `t` for `ttl` seconds: the
    /// one place that sets `iss`, `aud`, the times and a fresh `jti` (tokens from
    /// `POST /token` and from refresh sessions alike).
    pub(crate) fn access_claims(&self, grant: Grant, t: i64, ttl: i64) -> AccessClaims {
        AccessClaims {
            iss: self.settings.issuer.clone(),
            sub: grant.sub,
            aud: Audience::One(self.settings.audience.clone()),
            exp: t + ttl,
            iat: t,
            nbf: t,
            jti: random::id(),
            sid: grant.sid,
            scope: grant.scope,
            client_id: grant.client_id,
            cnf: grant.cnf,
            extra: grant.extra,
        }
    }

    /// The live revocation that covers a token, from the in-process set (everything
    /// this process committed or verified and applied; never Redis).
    pub(crate) fn revocation_of(
        &self,
        ids: &TokenIds<'_>,
    ) -> Result<Option<RevocationEvent>, Error> {
        Ok(cache::check(&self.revoked, ids, now()).unwrap_or_default())
    }

    /// The live revocation of one identifier (any not-before for `sub`).
    pub(crate) fn find(&self, kind: Kind, value: &str) -> Result<Option<RevocationEvent>, Error> {
        Ok(self
            .revoked
            .find(kind, value, None, now())
            .unwrap_or_default())
    }

    /// Verifies a token's signature against the region's keys, then the peers'. A token
    /// that verified before (same bytes, keys unchanged since) is not verified again.
    pub(crate) fn verify(&self, token: &str) -> Result<(AccessClaims, String), JoseError> {
        let digest = sha256(token.as_bytes());
        if let Some(hit) = self.verified.get(&digest) {
            return Ok(hit);
        }
        let verified = self.verify_signature(token)?;
        self.verified.insert(digest, verified.clone());
        Ok(verified)
    }

    fn verify_signature(&self, token: &str) -> Result<(AccessClaims, String), JoseError> {
        match AccessClaims::verify(token, &self.keys().keyring, &Limits::default()) {
            Err(JoseError::UnknownKey(kid)) => {
                let peers = self.peer_keys();
                if peers.1.get(&kid).is_none() {
                    return Err(JoseError::UnknownKey(kid));
                }
                AccessClaims::verify(token, &peers.1, &Limits::default())
            }
            other => other,
        }
    }

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

    /// Checks a token completely: signature, claims and (if asked) revocation.
    pub(crate) fn check(&self, token: &str, check_revocation: bool) -> Result<TokenCheck, Error> {
        let (claims, kid) = match self.verify(token) {
            Ok(ok) => ok,
            Err(e) => {
                Metrics::inc(&self.metrics.validations_invalid);
                return Ok(TokenCheck {
                    valid: false,
                    claims: None,
                    revocation: None,
                    message: e.to_string(),
                });
            }
        };
        let claims_error = claims
            .validate(&self.settings.validation(), now())
            .err()
            .map(|e| e.to_string())
            .or_else(|| self.lifetime_error(&claims));
        let revocation = if check_revocation {
            self.revocation_of(&TokenIds {
                jti: &claims.jti,
                sub: &claims.sub,
                kid: &kid,
                sid: claims.sid.as_deref(),
                iat: claims.iat,
            })?
        } else {
            None
        };
        let message = match (&claims_error, &revocation) {
            (Some(e), _) => e.clone(),
            (None, Some(r)) => format!("token {}", describe(r)),
            (None, None) => "token is valid".to_owned(),
        };
        let valid = claims_error.is_none() && revocation.is_none();
        Metrics::inc(if valid {
            &self.metrics.validations_valid
        } else {
            &self.metrics.validations_invalid
        });
        Ok(TokenCheck {
            valid,
            claims: Some(claims),
            revocation,
            message,
        })
    }

    /// Why a token outlives what a revocation made after its issue is sure to cover (it
    /// lives longer than any region may issue, and this region did not issue it), if it
    /// does: such a token could be accepted after its revocation lapsed.
    pub(crate) fn lifetime_error(&self, claims: &AccessClaims) -> Option<String> {
        let issued = claims.iat.min(claims.nbf);
        let covered = issued
            .saturating_add(self.settings.fleet_max_token_secs)
            .max(self.issued_until.load(Ordering::Acquire));
        (claims.exp > covered).then(|| {
            format!(
                "token lifetime {} s exceeds the fleet's longest, {} s (CP_FLEET_MAX_TOKEN_MINUTES): a revocation could lapse before it",
                claims.exp.saturating_sub(issued),
                self.settings.fleet_max_token_secs
            )
        })
    }

    /// The clock leeway every revocation of this region covers (the edge feed carries it,
    /// and edges clamp their own leeway to it).
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
    /// SQLite transaction has committed.
    pub(crate) fn revoke(
        &self,
        kind: Kind,
        value: &str,
        expires_at: Option<i64>,
        via: &str,
    ) -> Result<Revoked, Error> {
        if kind == Kind::Kid {
            self.retire_revoked_key(value, via)?;
        }
        let (event, signed) = self.sign_revocation(kind, value, expires_at)?;
        let record = self.recorder(via);
        let job_event = event.clone();
        let inserted = self
            .writer
            .run(move |tx| record.write(tx, &job_event, &signed))?;
        Ok(self.announce_revocation(event, inserted, via))
    }

    /// [`Region::revoke`] for async callers: the signature (shared with the other events
    /// of its batch) and the commit are awaited without holding a thread.
    pub(crate) async fn revoke_async(
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
        let (event, signed) = self.sign_revocation_async(kind, &value, expires_at).await?;
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
    /// signer's batch holding it is signed.
    pub(crate) fn sign_revocation(
        &self,
        kind: Kind,
        value: &str,
        expires_at: Option<i64>,
    ) -> Result<(RevocationEvent, String), Error> {
        let event = self.new_revocation(kind, value, expires_at)?;
        self.signer.sign(event).map_err(Error::Signing)
    }

    /// [`Region::sign_revocation`] for async callers.
    async fn sign_revocation_async(
        &self,
        kind: Kind,
        value: &str,
        expires_at: Option<i64>,
    ) -> Result<(RevocationEvent, String), Error> {
        let event = self.new_revocation(kind, value, expires_at)?;
        self.signer.sign_async(event).await.map_err(Error::Signing)
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

    /// Signs access-token claims with the current token key (one snapshot of the keys);
    /// the caller writes the audit row. Returns the compact JWS, the key id and its
    /// algorithm. The token's `exp` is durably within [`db::ISSUED_UNTIL`] before it is
    /// signed, so revocations made later, even after a restart with shorter lifetimes,
    /// cover it.
    pub(crate) fn sign_access(
        &self,
        claims: &AccessClaims,
    ) -> Result<(String, String, shared::Alg), Error> {
        self.sign_access_with(&self.keys(), claims)
    }

    /// [`Region::sign_access`] with a key snapshot the caller already took.
    fn sign_access_with(
        &self,
        keys: &KeySet,
        claims: &AccessClaims,
    ) -> Result<(String, String, shared::Alg), Error> {
        let payload = serde_json::to_vec(claims)
            .map_err(|e| Error::InvalidRequest(format!("claims do not serialize: {e}")))?;
        self.reserve_issued_until(claims.exp)?;
        let kid = keys.token_key.kid();
        let token = jws::sign(
            &keys.token_key,
            TYP_ACCESS_TOKEN,
            Some(&kid),
            None,
            &payload,
        )
        .map_err(Error::Signing)?;
        // Edges refuse longer tokens: never hand one out.
        let limit = Limits::default().max_token_len;
        if token.len() > limit {
            return Err(Error::InvalidRequest(format!(
                "additional_claims make the token {} bytes, over the {limit}-byte limit",
                token.len()
            )));
        }
        Metrics::inc(&self.metrics.tokens_issued);
        Ok((token, kid, keys.token_key.alg()))
    }

    /// Makes sure [`db::ISSUED_UNTIL`] is at or past `exp`. Moving it takes a commit, so
    /// it moves ahead by a step (up to an hour) and most tokens need no write.
    fn reserve_issued_until(&self, exp: i64) -> Result<(), Error> {
        if exp <= self.issued_until.load(Ordering::Acquire) {
            return Ok(());
        }
        let until = self.issued_until_step(exp);
        let stored = self
            .writer
            .run(move |tx| db::reserve_horizon(tx, db::ISSUED_UNTIL, until))?;
        self.issued_until.fetch_max(stored, Ordering::AcqRel);
        Ok(())
    }

    /// Where [`db::ISSUED_UNTIL`] moves to for a token expiring at `exp`.
    fn issued_until_step(&self, exp: i64) -> i64 {
        exp.saturating_add(self.settings.max_token_secs.clamp(60, 3600))
    }

    fn apply_local(&self, event: &RevocationEvent) {
        self.revoked.insert(event).ok();
        if let Some(Err(e)) = self.shared_cache.as_ref().map(|c| c.insert(event)) {
            tracing::warn!(error = %e, "revocation committed but not written to Redis");
        }
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

    fn reload_keys(&self) -> Result<(), Error> {
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
    fn retire_revoked_key(&self, kid: &str, via: &str) -> Result<(), Error> {
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

    /// Picks up what other writers of the same database did (the operator CLI, later
    /// the event consumer): new feed rows, rotated keys. Also prunes the cache.
    pub fn sync(&self) -> Result<(), Error> {
        let head = self.feed.head();
        let t = now();
        let (rows, new_head, version) = {
            let conn = self.db.read()?;
            (
                db::feed_range(&conn, head, u64::MAX, Some(t))?,
                db::feed_head(&conn)?,
                keys::version(&conn)?,
            )
        };
        for (_, event) in &rows {
            self.apply_local(event);
        }
        self.feed.caught_up(&rows, new_head);
        let current = self.keys();
        if version != current.version || current.refresh_at.is_some_and(|at| t >= at) {
            tracing::info!("signing keys changed; reloading");
            self.reload_keys()?;
        }
        self.revoked.prune(t);
        // Rows appended by other processes (the CLI) get sealed.
        self.writer.poke();
        Ok(())
    }
}

/// The audit row of an issued token, written in the writer thread.
struct IssuedRow {
    region: String,
    at: i64,
    row: Value,
}

impl IssuedRow {
    /// One row in the next group commit; sealed by a checkpoint after the answer.
    fn write(self, tx: &rusqlite::Transaction<'_>) -> Result<i64, Error> {
        Ok(audit::append_row(
            tx,
            self.at,
            &self.region,
            "token.issued",
            self.row,
        )?)
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

fn take_string(extra: &mut Map<String, Value>, name: &str) -> Result<Option<String>, Error> {
    match extra.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::InvalidRequest(format!(
            "additional_claims.{name} must be a string"
        ))),
    }
}
