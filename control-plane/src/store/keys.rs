//! The region's signing keys: created on first run, stored in SQLite, rotated on demand.
//!
//! Both an Ed25519 and an ML-DSA-65 key are always active and published; the ML-DSA-65
//! key always signs events, edge updates and audit rows. A rotation publishes the new
//! keys first and lets them sign only after an activation delay, so every edge holds a
//! key before the first token or update it signs arrives; until then the old keys sign.
//! Retired keys keep verifying (and stay in the JWKS) until every token they signed has
//! expired.

use std::sync::Arc;

use rusqlite::{Connection, TransactionBehavior, params};
use serde_json::json;
use shared::jwk::JwkSet;
use shared::{Alg, Keyring, SigningKey, VerifyingKey};

use crate::store::audit::{self, AppendError};
use crate::store::db::Db;

/// A stored key's public facts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct KeyInfo {
    /// RFC 7638 thumbprint.
    pub kid: String,
    /// `EdDSA` or `ML-DSA-65`.
    pub alg: &'static str,
    /// Creation time.
    pub created_at: i64,
    /// When it stops (or stopped) signing, if it does.
    pub retired_at: Option<i64>,
    /// When it starts (or started) signing; published in the JWKS before that.
    pub active_from: Option<i64>,
}

/// The keys in use at one moment.
pub struct KeySet {
    /// Signs access tokens (the configured algorithm).
    pub token_key: Arc<SigningKey>,
    /// Signs events, edge updates and audit rows (always ML-DSA-65).
    pub event_key: Arc<SigningKey>,
    /// Every key that may still verify a live token.
    pub keyring: Keyring,
    /// The public keys as served at `/.well-known/jwks.json`.
    pub jwks: JwkSet,
    /// A fingerprint of the key table, to notice rotations made by another process.
    pub version: String,
    /// When the next retired key stops verifying (the set must be reloaded then).
    pub refresh_at: Option<i64>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("token_kid", &self.token_key.kid())
            .field("event_kid", &self.event_key.kid())
            .field("keyring", &self.keyring)
            .finish()
    }
}

fn alg_of(name: &str) -> Option<Alg> {
    Alg::parse(name).ok()
}

/// What changed when keys were created or rotated.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct KeyChanges {
    /// Newly created keys.
    pub created: Vec<KeyInfo>,
    /// Keys retired by this change.
    pub retired: Vec<KeyInfo>,
}

/// What [`prepare`] needs to know.
#[derive(Debug)]
pub(crate) struct Prepare<'a> {
    /// The algorithm that signs access tokens.
    pub(crate) token_alg: Alg,
    /// Now.
    pub(crate) now: i64,
    /// The longest token lifetime (retired keys verify that long).
    pub(crate) max_token_secs: i64,
    /// The region named in the audit rows.
    pub(crate) region: &'a str,
    /// Where the admin credential was just created, if it was.
    pub(crate) admin_created: Option<String>,
}

/// Start-up, before the region's writer runs (the only write that does not go through
/// it): creates a key for each algorithm that has none, records new keys and a new admin
/// credential in the audit log, and loads the key set, in one transaction. Nothing is
/// signed here: the writer seals these rows as it starts, before the region serves.
pub(crate) fn prepare(db: &Db, with: &Prepare<'_>) -> Result<Option<KeySet>, AppendError> {
    let mut conn = db.lock();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let created = ensure_active(&tx, with.now)?;
    if !created.created.is_empty() {
        audit::append_row(
            &tx,
            with.now,
            with.region,
            "keys.created",
            json!({ "keys": created.created }),
        )?;
    }
    if let Some(path) = &with.admin_created {
        audit::append_row(
            &tx,
            with.now,
            with.region,
            "admin.created",
            json!({ "path": path }),
        )?;
    }
    let keyset = load(&tx, with.token_alg, with.now, with.max_token_secs)?;
    tx.commit()?;
    Ok(keyset)
}

/// Creates an active key for each algorithm that has none.
pub(crate) fn ensure_active(conn: &Connection, now: i64) -> rusqlite::Result<KeyChanges> {
    let mut changes = KeyChanges::default();
    for alg in [Alg::EdDsa, Alg::MlDsa65] {
        let active: i64 = conn.query_row(
            "SELECT COUNT(*) FROM keys WHERE alg = ?1 AND retired_at IS NULL",
            params![alg.as_str()],
            |r| r.get(0),
        )?;
        if active == 0 {
            changes.created.push(create(conn, alg, now, None)?);
        }
    }
    Ok(changes)
}

fn create(
    conn: &Connection,
    alg: Alg,
    now: i64,
    active_from: Option<i64>,
) -> rusqlite::Result<KeyInfo> {
    let key = SigningKey::generate(alg);
    let kid = key.kid();
    conn.execute(
        "INSERT INTO keys (kid, alg, seed, created_at, active_from) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![kid, alg.as_str(), key.seed().to_vec(), now, active_from],
    )?;
    Ok(KeyInfo {
        kid,
        alg: alg.as_str(),
        created_at: now,
        retired_at: None,
        active_from,
    })
}

/// Creates a fresh key per algorithm that signs from `now + activation_delay`, when the
/// keys signing now retire. Both are published at once.
pub(crate) fn rotate(
    conn: &Connection,
    now: i64,
    activation_delay: i64,
) -> rusqlite::Result<KeyChanges> {
    let switch = now.saturating_add(activation_delay.max(0));
    let retired: Vec<KeyInfo> = list(conn)?
        .into_iter()
        .filter(|k| k.retired_at.is_none())
        .map(|k| KeyInfo {
            retired_at: Some(switch),
            ..k
        })
        .collect();
    conn.execute(
        "UPDATE keys SET retired_at = ?1 WHERE retired_at IS NULL",
        params![switch],
    )?;
    let mut changes = KeyChanges::default();
    for alg in [Alg::EdDsa, Alg::MlDsa65] {
        changes.created.push(create(conn, alg, now, Some(switch))?);
    }
    changes.retired = retired;
    Ok(changes)
}

/// Retires `kid` at once if it is one of this region's keys that has not retired yet
/// (it was revoked: nothing may be signed with it again), and creates a key that signs
/// at once for an algorithm left without one. `None` when `kid` is not such a key.
pub(crate) fn retire_now(
    conn: &Connection,
    kid: &str,
    now: i64,
) -> rusqlite::Result<Option<KeyChanges>> {
    let Some(mut key) = list(conn)?
        .into_iter()
        .find(|k| k.kid == kid && k.retired_at.is_none_or(|t| t > now))
    else {
        return Ok(None);
    };
    // Every other key of its algorithm that has not retired retires too (a key waiting
    // to sign, or the one it was to replace), and one fresh key signs from now: one
    // signing key per algorithm, none revoked.
    let mut changes = KeyChanges::default();
    for other in list(conn)?
        .into_iter()
        .filter(|k| k.alg == key.alg && k.kid != kid && k.retired_at.is_none_or(|t| t > now))
    {
        changes.retired.push(KeyInfo {
            retired_at: Some(now),
            ..other
        });
    }
    conn.execute(
        "UPDATE keys SET retired_at = ?1 WHERE alg = ?2 AND (retired_at IS NULL OR retired_at > ?1)",
        params![now, key.alg],
    )?;
    key.retired_at = Some(now);
    changes.retired.insert(0, key);
    changes.created = ensure_active(conn, now)?.created;
    Ok(Some(changes))
}

/// Every stored key, oldest first.
pub(crate) fn list(conn: &Connection) -> rusqlite::Result<Vec<KeyInfo>> {
    let mut stmt = conn
        .prepare("SELECT kid, alg, created_at, retired_at, active_from FROM keys ORDER BY rowid")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Option<i64>>(3)?,
            r.get::<_, Option<i64>>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (kid, alg, created_at, retired_at, active_from) = row?;
        if let Some(alg) = alg_of(&alg) {
            out.push(KeyInfo {
                kid,
                alg: alg.as_str(),
                created_at,
                retired_at,
                active_from,
            });
        }
    }
    Ok(out)
}

/// Every ML-DSA-65 public key ever stored (audit rows stay verifiable after rotation).
pub(crate) fn audit_keyring(conn: &Connection) -> rusqlite::Result<Keyring> {
    let mut ring = Keyring::new();
    for (alg, seed, _, _, _) in load_rows(conn)? {
        if alg == Alg::MlDsa65 {
            ring.add(SigningKey::from_seed(alg, &seed).verifying_key());
        }
    }
    Ok(ring)
}

type KeyRow = (Alg, [u8; 32], i64, Option<i64>, Option<i64>);

fn load_rows(conn: &Connection) -> rusqlite::Result<Vec<KeyRow>> {
    let mut stmt = conn.prepare(
        "SELECT alg, seed, created_at, retired_at, active_from FROM keys ORDER BY rowid",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Option<i64>>(3)?,
            r.get::<_, Option<i64>>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (alg, seed, created, retired, active_from) = row?;
        let (Some(alg), Ok(seed)) = (alg_of(&alg), <[u8; 32]>::try_from(seed.as_slice())) else {
            tracing::error!("skipping a stored key with an unknown algorithm or bad seed");
            continue;
        };
        out.push((alg, seed, created, retired, active_from));
    }
    Ok(out)
}

/// Loads the active keys and every key that may still verify a token at `now`.
pub(crate) fn load(
    conn: &Connection,
    token_alg: Alg,
    now: i64,
    max_token_secs: i64,
) -> rusqlite::Result<Option<KeySet>> {
    let rows = load_rows(conn)?;
    let mut keyring = Keyring::new();
    let mut jwks = JwkSet::default();
    let mut token_key = None;
    let mut event_key = None;
    let mut version = String::new();
    let mut refresh_at: Option<i64> = None;
    let mut reload_at = |t: i64| {
        if t > now {
            refresh_at = Some(refresh_at.map_or(t, |r: i64| r.min(t)));
        }
    };
    for (alg, seed, created, retired, active_from) in rows {
        version.push_str(&format!(
            "{}:{created}:{retired:?}:{active_from:?};",
            alg.as_str()
        ));
        let key = SigningKey::from_seed(alg, &seed);
        let public: VerifyingKey = key.verifying_key();
        let until = retired.map(|t| t.saturating_add(max_token_secs));
        let live = until.is_none_or(|t| t > now);
        // The set changes when a key starts signing, stops signing, stops verifying.
        for t in [until, retired, active_from].into_iter().flatten() {
            reload_at(t);
        }
        if live {
            jwks.keys.push(public.to_jwk());
            keyring.add(public);
        }
        let signing = retired.is_none_or(|t| t > now) && active_from.is_none_or(|t| t <= now);
        if signing {
            let key = Arc::new(key);
            if alg == token_alg {
                token_key = Some(key.clone());
            }
            if alg == Alg::MlDsa65 {
                event_key = Some(key);
            }
        }
    }
    Ok(match (token_key, event_key) {
        (Some(token_key), Some(event_key)) => Some(KeySet {
            token_key,
            event_key,
            keyring,
            jwks,
            version,
            refresh_at,
        }),
        _ => None,
    })
}

/// The key table's fingerprint, compared with [`KeySet::version`].
pub(crate) fn version(conn: &Connection) -> rusqlite::Result<String> {
    let mut stmt =
        conn.prepare("SELECT alg, created_at, retired_at, active_from FROM keys ORDER BY rowid")?;
    let rows = stmt.query_map([], |r| {
        Ok(format!(
            "{}:{}:{:?}:{:?};",
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<i64>>(2)?,
            r.get::<_, Option<i64>>(3)?
        ))
    })?;
    rows.collect()
}
