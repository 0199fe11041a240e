//! One region's control plane without any HTTP: it issues, checks and revokes tokens,
//! writes the audit log and keeps the revocation cache and edge feed head current.
//!
//! Every method is blocking (SQLite commits wait for the disk); the HTTP layer calls the
//! writing ones on the blocking thread pool, the CLI calls them directly. Issuing,
//! revoking and ingesting go through the group-committing [`Writer`]: signatures are
//! made by the caller's thread before, cache and feed updates after the commit.
//!
//! This file holds the region's state, its start-up, the outbox relay's state and the
//! catch-up with rows other processes wrote; one file per use case holds the rest:
//! [`issue`] (token requests and signing), [`check`] (verifying a token), [`revoke`]
//! (revocation events and what follows their commit), [`ingest`] (other regions'
//! events) and [`rotation`] (the peers' keys, the JWKS, rotating and retiring keys).

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

mod check;
mod ingest;
mod issue;
mod revoke;
mod rotation;

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
    /// The token names a key neither this region nor its peers are known to hold (yet:
    /// a peer or a sibling replica may just have made it).
    pub(crate) unknown_key: bool,
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
        mut settings: Settings,
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
        let issuer = db::settle_issuer(&db, &settings.issuer, settings.issuer_from_listen, t)
            .context("cannot record the issuer")?;
        if issuer != settings.issuer {
            tracing::warn!(
                issuer,
                from_listen_address = %settings.issuer,
                "the data dir keeps the issuer it recorded (a derived issuer never changes \
                 iss under live tokens; {} is what data dirs from before issuer URLs \
                 issued): set CP_ISSUER or CP_PUBLIC_URL to switch, as docs/operations.md \
                 says under 'The issuer'",
                db::LEGACY_ISSUER
            );
            settings.accepted_issuers.retain(|i| *i != issuer);
            settings.issuer = issuer;
        }
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

    /// The key a replica of this region puts on a request it passes to another replica
    /// (`x-cp-replica`): derived from the admin credential, which replicas share, so no
    /// client can make it and the credential itself never travels.
    pub(crate) fn replica_key(&self) -> [u8; 32] {
        crate::http::nonce::hmac_sha256(&self.admin_hash, b"replica-forward/v1")
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

fn take_string(extra: &mut Map<String, Value>, name: &str) -> Result<Option<String>, Error> {
    match extra.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::InvalidRequest(format!(
            "additional_claims.{name} must be a string"
        ))),
    }
}
