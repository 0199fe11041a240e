//! The region's SQLite database: schema, connection settings and the queries on
//! revocations and the edge feed.
//!
//! Every commit waits for the disk (`synchronous = FULL`), so an answered request is
//! never lost. Every write of the serving process (issuing, revoking, ingesting, refresh
//! sessions, DPoP replay records, key rotation) goes through the group-committing writer
//! thread ([`crate::store::writer`]) on a connection of its own; reads take a read-only
//! connection from a small pool ([`Db::read`]: WAL readers never wait for the writer).
//! The connection behind [`Db::lock`] serves only start-up, before the writer runs
//! ([`crate::store::keys::prepare`]); clippy refuses it outside `store/`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension as _, params};
use shared::RevocationEvent;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS keys (
    kid        TEXT PRIMARY KEY,
    alg        TEXT NOT NULL,
    seed       BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER,
    active_from INTEGER
);
CREATE TABLE IF NOT EXISTS horizons (
    name  TEXT PRIMARY KEY,
    until INTEGER NOT NULL
);
-- An event is one per (origin, event_id): each region picks its own ids, so one region
-- cannot shadow another's event by reusing its id. (Databases from before origin was a
-- column are rebuilt by `migrate`.)
CREATE TABLE IF NOT EXISTS revocations (
    event_id   TEXT NOT NULL,
    origin     TEXT NOT NULL,
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL,
    not_before INTEGER,
    expires_at INTEGER NOT NULL,
    issued_at  INTEGER NOT NULL,
    event      TEXT NOT NULL,
    signed     TEXT NOT NULL,
    batch_id   INTEGER REFERENCES event_batches (id),
    PRIMARY KEY (origin, event_id)
);
CREATE INDEX IF NOT EXISTS revocations_by_value ON revocations (kind, value);
-- The signed root a batch of events shares (compact JWS), kept once per batch; an event
-- with a batch_id holds only its own part (event, index, proof) in `signed`.
CREATE TABLE IF NOT EXISTS event_batches (
    id   INTEGER PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    root TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS feed (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    origin   TEXT NOT NULL,
    UNIQUE (origin, event_id),
    FOREIGN KEY (origin, event_id) REFERENCES revocations (origin, event_id)
);
-- This region's own events only (a peer's are never published again).
CREATE TABLE IF NOT EXISTS outbox (
    event_id     TEXT PRIMARY KEY,
    origin       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    published_at INTEGER,
    FOREIGN KEY (origin, event_id) REFERENCES revocations (origin, event_id)
);
CREATE TABLE IF NOT EXISTS audit (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    entry TEXT NOT NULL,
    hash  TEXT NOT NULL,
    kid   TEXT NOT NULL,
    sig   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS refresh_sessions (
    sid              TEXT PRIMARY KEY,
    subject          TEXT NOT NULL,
    scope            TEXT,
    device_jkt       TEXT,
    binding_hash     BLOB,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    revoked_at       INTEGER,
    revocation_event TEXT
);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    hash       BLOB PRIMARY KEY,
    sid        TEXT NOT NULL REFERENCES refresh_sessions (sid),
    generation INTEGER NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('active', 'rotated', 'revoked')),
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE INDEX IF NOT EXISTS refresh_tokens_by_sid ON refresh_tokens (sid);
CREATE TABLE IF NOT EXISTS dpop_jtis (
    jkt        TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (jkt, jti)
);
CREATE INDEX IF NOT EXISTS dpop_jtis_by_expiry ON dpop_jtis (expires_at);
CREATE TABLE IF NOT EXISTS relay_state (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
-- Edge credentials (see crate::store::credentials): only the SHA-256 of each secret.
CREATE TABLE IF NOT EXISTS edge_credentials (
    name       TEXT PRIMARY KEY,
    hash       BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
-- The edge feed's identity: one row, made when the feed's history starts and replaced
-- on restore (see feed_id); sequence numbers count in this id alone.
-- The issuer this region's tokens carry, recorded at its first start (see
-- `settle_issuer`).
CREATE TABLE IF NOT EXISTS issuer (
    one        INTEGER PRIMARY KEY CHECK (one = 1),
    issuer     TEXT NOT NULL,
    set_at     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS feed_identity (
    one        INTEGER PRIMARY KEY CHECK (one = 1),
    id         TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    upto INTEGER NOT NULL UNIQUE,
    body TEXT NOT NULL,
    kid  TEXT NOT NULL,
    sig  TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"#;

/// File name of the database inside the data directory.
pub(crate) const DB_FILE: &str = "control-plane.db";

/// Read-only connections kept open.
const READERS: usize = 4;

/// The shared connection and the reader pool.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: PathBuf,
}

/// A pooled read-only connection, returned to the pool on drop.
pub(crate) struct Reader {
    conn: Option<Connection>,
    pool: Arc<Mutex<Vec<Connection>>>,
}

impl std::ops::Deref for Reader {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("a reader holds its connection until dropped")
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < READERS {
                pool.push(conn);
            }
        }
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Db")
    }
}

impl Db {
    /// Opens (creating if needed) the database at `path`, in WAL mode with full sync.
    pub fn open(path: &Path) -> rusqlite::Result<Db> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        ensure_feed_id(&conn)?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
            readers: Arc::new(Mutex::new(Vec::new())),
            path: path.to_owned(),
        })
    }

    /// A new read-write connection with the same settings (for the writer thread).
    pub fn open_connection(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open(&self.path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.set_prepared_statement_cache_capacity(64);
        // The writer touches index pages all over the file (event ids are random): keep
        // 64 MiB of them in memory instead of SQLite's default 2 MiB.
        conn.pragma_update(None, "cache_size", -65_536)?;
        Ok(conn)
    }

    /// A read-only connection from the pool (opened when the pool is empty). Reads see
    /// the last committed state and never wait for the writer (WAL).
    pub(crate) fn read(&self) -> rusqlite::Result<Reader> {
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.busy_timeout(std::time::Duration::from_secs(10))?;
                conn
            }
        };
        Ok(Reader {
            conn: Some(conn),
            pool: self.readers.clone(),
        })
    }

    /// Gives a restored database a new feed id ([`new_feed_id`]): the `restore` command's
    /// one write, made with no server running.
    pub(crate) fn renew_feed_id(&self) -> rusqlite::Result<String> {
        new_feed_id(&self.lock())
    }

    /// The start-up connection (see the module doc: nothing else may write through it);
    /// a panic while holding it cannot leave a half-done transaction (rusqlite rolls back
    /// on drop), so a poisoned lock is still usable.
    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Brings a database made by an earlier version up to the current schema.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_active_from: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('keys') WHERE name = 'active_from'",
        [],
        |r| r.get(0),
    )?;
    if !has_active_from {
        conn.execute_batch("ALTER TABLE keys ADD COLUMN active_from INTEGER")?;
    }
    let has_batch_id: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('revocations') WHERE name = 'batch_id'",
        [],
        |r| r.get(0),
    )?;
    if !has_batch_id {
        conn.execute_batch(
            "ALTER TABLE revocations ADD COLUMN batch_id INTEGER REFERENCES event_batches (id)",
        )?;
    }
    let has_origin: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('revocations') WHERE name = 'origin'",
        [],
        |r| r.get(0),
    )?;
    if !has_origin {
        key_events_by_origin(conn)?;
    }
    Ok(())
}

/// Rebuilds `revocations`, `feed` and `outbox` of a database from before events were
/// keyed by `(origin, event_id)`, keeping every row: feed sequence numbers, outbox
/// order and the AUTOINCREMENT counter are carried over, the origin is read from each
/// stored event. One transaction; foreign keys are checked at its end.
fn key_events_by_origin(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "PRAGMA foreign_keys = OFF;
         BEGIN IMMEDIATE;
         CREATE TABLE revocations_v2 (
             event_id   TEXT NOT NULL,
             origin     TEXT NOT NULL,
             kind       TEXT NOT NULL,
             value      TEXT NOT NULL,
             not_before INTEGER,
             expires_at INTEGER NOT NULL,
             issued_at  INTEGER NOT NULL,
             event      TEXT NOT NULL,
             signed     TEXT NOT NULL,
             batch_id   INTEGER REFERENCES event_batches (id),
             PRIMARY KEY (origin, event_id)
         );
         INSERT INTO revocations_v2
             (event_id, origin, kind, value, not_before, expires_at, issued_at, event, signed,
              batch_id)
             SELECT event_id, json_extract(event, '$.origin'), kind, value, not_before,
                    expires_at, issued_at, event, signed, batch_id
             FROM revocations ORDER BY rowid;
         CREATE TABLE feed_v2 (
             seq      INTEGER PRIMARY KEY AUTOINCREMENT,
             event_id TEXT NOT NULL,
             origin   TEXT NOT NULL,
             UNIQUE (origin, event_id),
             FOREIGN KEY (origin, event_id) REFERENCES revocations (origin, event_id)
         );
         INSERT INTO feed_v2 (seq, event_id, origin)
             SELECT f.seq, f.event_id, json_extract(r.event, '$.origin')
             FROM feed f JOIN revocations r USING (event_id) ORDER BY f.seq;
         CREATE TABLE outbox_v2 (
             event_id     TEXT PRIMARY KEY,
             origin       TEXT NOT NULL,
             created_at   INTEGER NOT NULL,
             published_at INTEGER,
             FOREIGN KEY (origin, event_id) REFERENCES revocations (origin, event_id)
         );
         INSERT INTO outbox_v2 (rowid, event_id, origin, created_at, published_at)
             SELECT o.rowid, o.event_id, json_extract(r.event, '$.origin'), o.created_at,
                    o.published_at
             FROM outbox o JOIN revocations r USING (event_id) ORDER BY o.rowid;
         CREATE TEMP TABLE feed_counter AS
             SELECT seq FROM sqlite_sequence WHERE name = 'feed';
         DROP TABLE outbox;
         DROP TABLE feed;
         DROP TABLE revocations;
         ALTER TABLE revocations_v2 RENAME TO revocations;
         ALTER TABLE feed_v2 RENAME TO feed;
         ALTER TABLE outbox_v2 RENAME TO outbox;
         CREATE INDEX revocations_by_value ON revocations (kind, value);
         DELETE FROM sqlite_sequence WHERE name IN ('feed', 'feed_v2');
         INSERT INTO sqlite_sequence (name, seq)
             SELECT 'feed', MAX(COALESCE((SELECT seq FROM feed_counter), 0),
                                 COALESCE((SELECT MAX(seq) FROM feed), 0));
         DROP TABLE feed_counter;
         COMMIT;
         PRAGMA foreign_keys = ON;",
    )?;
    let problems: i64 =
        conn.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })?;
    if problems > 0 {
        tracing::error!(
            problems,
            "rows without their event after keying events by origin"
        );
    }
    Ok(())
}

/// What happens to a stored event on the way to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outbox {
    /// A peer's event: never published again by this region.
    Skip,
    /// Queued for the outbox relay.
    Queue,
    /// No broker (the embedded default): recorded as published at once.
    Local,
}

/// Where a new event went: its feed sequence number and its outbox row id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Inserted {
    /// Edge feed sequence number.
    pub(crate) feed_seq: u64,
    /// `rowid` of its outbox row (rows are relayed in this order), if it has one.
    pub(crate) outbox_id: Option<i64>,
}

/// Stores a signed event, its feed row and (unless it is a peer's) its outbox row,
/// unless an event with this id from its origin is already stored: then `None`. (The
/// same id from two origins is two events.)
pub(crate) fn insert_revocation(
    tx: &rusqlite::Transaction<'_>,
    event: &RevocationEvent,
    signed: &str,
    outbox: Outbox,
) -> rusqlite::Result<Option<Inserted>> {
    let json = String::from_utf8_lossy(&event.canonical_bytes()).into_owned();
    // A batch's signed root (4.4 KB of ML-DSA-65 signature) is stored once, not per event.
    let (batch_id, signed) = match shared::revocation::split_batch_member(signed) {
        Some((root, member)) => (Some(batch_id(tx, &root)?), std::borrow::Cow::Owned(member)),
        None => (None, std::borrow::Cow::Borrowed(signed)),
    };
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO revocations
         (event_id, kind, value, not_before, expires_at, issued_at, event, signed, batch_id,
          origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            event.event_id,
            event.kind.as_str(),
            event.value,
            event.not_before,
            event.expires_at,
            event.issued_at,
            json,
            signed,
            batch_id,
            event.origin
        ])?;
    if inserted == 0 {
        return Ok(None);
    }
    tx.prepare_cached("INSERT INTO feed (event_id, origin) VALUES (?1, ?2)")?
        .execute(params![event.event_id, event.origin])?;
    let feed_seq = u64::try_from(tx.last_insert_rowid()).unwrap_or(0);
    let outbox_id = match outbox {
        Outbox::Skip => None,
        Outbox::Queue | Outbox::Local => {
            let published = (outbox == Outbox::Local).then_some(event.issued_at);
            tx.prepare_cached(
                "INSERT INTO outbox (event_id, origin, created_at, published_at)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                event.event_id,
                event.origin,
                event.issued_at,
                published
            ])?;
            Some(tx.last_insert_rowid())
        }
    };
    Ok(Some(Inserted {
        feed_seq,
        outbox_id,
    }))
}

/// The row of a batch's signed root, stored now if it is new.
fn batch_id(tx: &rusqlite::Transaction<'_>, root: &str) -> rusqlite::Result<i64> {
    let hash = shared::merkle::leaf_hash(root.as_bytes());
    tx.prepare_cached("INSERT OR IGNORE INTO event_batches (hash, root) VALUES (?1, ?2)")?
        .execute(params![hash, root])?;
    tx.prepare_cached("SELECT id FROM event_batches WHERE hash = ?1")?
        .query_row(params![hash], |r| r.get(0))
}

/// An event's signed form from its stored parts: the `signed` column, and the batch
/// root when it has one.
fn signed_form(member: String, root: Option<String>) -> String {
    match root {
        Some(root) => shared::revocation::join_batch_member(&root, &member).unwrap_or(member),
        None => member,
    }
}

/// A committed event the relay has not handed to the broker yet.
#[derive(Debug, Clone)]
pub(crate) struct Unpublished {
    /// Outbox `rowid`: the relay order.
    pub(crate) id: i64,
    /// The revoked value (the message key).
    pub(crate) key: String,
    /// The signed event.
    pub(crate) signed: String,
}

/// The oldest unpublished outbox rows, at most `limit`, in commit order.
pub(crate) fn unpublished(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<Unpublished>> {
    let mut stmt = conn.prepare_cached(
        "SELECT o.rowid, r.value, r.signed, b.root FROM outbox o
         JOIN revocations r USING (origin, event_id) LEFT JOIN event_batches b ON b.id = r.batch_id
         WHERE o.published_at IS NULL ORDER BY o.rowid LIMIT ?1",
    )?;
    let rows = stmt.query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
        Ok(Unpublished {
            id: r.get(0)?,
            key: r.get(1)?,
            signed: signed_form(r.get(2)?, r.get(3)?),
        })
    })?;
    rows.collect()
}

/// Number of outbox rows not yet handed to the broker.
pub(crate) fn outbox_depth(conn: &Connection) -> rusqlite::Result<u64> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL",
        [],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Marks outbox rows (by `rowid`) as handed to the broker.
/// Marks outbox rows (by `rowid`) as handed to the broker, inside the caller's
/// transaction (the writer's group commit).
pub(crate) fn mark_published(conn: &Connection, ids: &[i64], at: i64) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached("UPDATE outbox SET published_at = ?2 WHERE rowid = ?1")?;
    for id in ids {
        stmt.execute(params![id, at])?;
    }
    Ok(())
}

/// The highest feed sequence number (0 when empty).
pub(crate) fn feed_head(conn: &Connection) -> rusqlite::Result<u64> {
    let seq: i64 = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM feed", [], |r| r.get(0))?;
    Ok(u64::try_from(seq).unwrap_or(0))
}

/// The issuer before issuers were URLs: what a data dir made by such a version issued.
pub(crate) const LEGACY_ISSUER: &str = "pq-control-plane";

/// The issuer to use, and whether it is not the one asked for. `asked` is the issuer the
/// settings give; `derived` tells that it only came from the listen address (no
/// `CP_ISSUER`, no `CP_PUBLIC_URL`). An explicit issuer is used and recorded. A derived
/// one gives way to the recorded one, so a restart on another address does not change
/// `iss` under live tokens and edges; and a data dir made before issuers were recorded
/// (it has keys, no issuer) keeps [`LEGACY_ISSUER`], so upgrading the control plane does
/// not make every edge configured with it refuse new tokens.
pub(crate) fn settle_issuer(
    db: &Db,
    asked: &str,
    derived: bool,
    now: i64,
) -> rusqlite::Result<String> {
    let mut conn = db.lock();
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let recorded: Option<String> = tx
        .query_row("SELECT issuer FROM issuer WHERE one = 1", [], |r| r.get(0))
        .optional()?;
    let issuer = match (derived, recorded) {
        (true, Some(recorded)) => recorded,
        (true, None) => {
            let made_before: i64 = tx.query_row("SELECT COUNT(*) FROM keys", [], |r| r.get(0))?;
            if made_before > 0 {
                LEGACY_ISSUER.to_owned()
            } else {
                asked.to_owned()
            }
        }
        (false, _) => asked.to_owned(),
    };
    tx.execute(
        "INSERT INTO issuer (one, issuer, set_at) VALUES (1, ?1, ?2)
         ON CONFLICT (one) DO UPDATE SET issuer = excluded.issuer, set_at = excluded.set_at
         WHERE issuer.issuer <> excluded.issuer",
        params![issuer, now],
    )?;
    tx.commit()?;
    Ok(issuer)
}

/// The feed position of revocation event `event_id` (the highest, should two origins
/// have used the id), if this feed has it.
pub(crate) fn feed_seq_of(conn: &Connection, event_id: &str) -> rusqlite::Result<Option<u64>> {
    let seq: Option<i64> = conn.query_row(
        "SELECT MAX(seq) FROM feed WHERE event_id = ?1",
        [event_id],
        |r| r.get(0),
    )?;
    Ok(seq.and_then(|s| u64::try_from(s).ok()))
}

fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// Events of feed rows in `(after, upto]` that are still live at `now` (all if `now` is
/// `None`), in feed order, with their sequence numbers.
pub(crate) fn feed_range(
    conn: &Connection,
    after: u64,
    upto: u64,
    now: Option<i64>,
) -> rusqlite::Result<Vec<(u64, RevocationEvent)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT f.seq, r.event FROM feed f JOIN revocations r USING (origin, event_id)
         WHERE f.seq > ?1 AND f.seq <= ?2 AND r.expires_at > ?3 ORDER BY f.seq",
    )?;
    let rows = stmt.query_map(
        params![seq_param(after), seq_param(upto), now.unwrap_or(i64::MIN)],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, json) = row?;
        match serde_json::from_str::<RevocationEvent>(&json) {
            Ok(event) => out.push((u64::try_from(seq).unwrap_or(0), event)),
            Err(e) => tracing::error!(seq, error = %e, "stored revocation event does not parse"),
        }
    }
    Ok(out)
}

/// The strongest live revocation of `(kind, value)` at `now`
/// ([`shared::revocation::strongest`]), if any.
pub(crate) fn find_revocation(
    conn: &Connection,
    kind: shared::Kind,
    value: &str,
    now: i64,
) -> rusqlite::Result<Option<RevocationEvent>> {
    let mut stmt = conn.prepare_cached(
        "SELECT event FROM revocations WHERE kind = ?1 AND value = ?2 AND expires_at > ?3",
    )?;
    let rows = stmt.query_map(params![kind.as_str(), value, now], |r| {
        r.get::<_, String>(0)
    })?;
    let mut live = Vec::new();
    for json in rows {
        match serde_json::from_str::<RevocationEvent>(&json?) {
            Ok(event) => live.push(event),
            Err(e) => tracing::error!(error = %e, "stored revocation event does not parse"),
        }
    }
    Ok(shared::revocation::strongest(&live).cloned())
}

/// Whether an event's outbox row was handed to the event bus.
pub(crate) fn outbox_published(conn: &Connection, event_id: &str) -> rusqlite::Result<bool> {
    let published: Option<bool> = conn
        .query_row(
            "SELECT published_at IS NOT NULL FROM outbox WHERE event_id = ?1",
            params![event_id],
            |r| r.get(0),
        )
        .optional()?;
    Ok(published.unwrap_or(false))
}

/// Marks the refresh sessions a `sid` or `sub` revocation ends as revoked, so they stay
/// refused after the event itself has expired from the live set.
pub(crate) fn end_sessions(
    tx: &rusqlite::Transaction<'_>,
    event: &RevocationEvent,
) -> rusqlite::Result<()> {
    match event.kind {
        shared::Kind::Sid => {
            tx.execute(
                "UPDATE refresh_sessions SET revoked_at = ?2, revocation_event = ?3
                 WHERE sid = ?1 AND revoked_at IS NULL",
                params![event.value, event.issued_at, event.event_id],
            )?;
        }
        shared::Kind::Sub => {
            tx.execute(
                "UPDATE refresh_sessions SET revoked_at = ?2, revocation_event = ?3
                 WHERE subject = ?1 AND revoked_at IS NULL AND created_at <= ?4",
                params![
                    event.value,
                    event.issued_at,
                    event.event_id,
                    event.not_before.unwrap_or(i64::MAX)
                ],
            )?;
        }
        shared::Kind::Jti | shared::Kind::Kid => {}
    }
    Ok(())
}

/// Whether the event `event_id` of `origin` is stored.
pub(crate) fn has_revocation(
    conn: &Connection,
    origin: &str,
    event_id: &str,
) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM revocations WHERE origin = ?1 AND event_id = ?2")?
        .exists(params![origin, event_id])
}

/// The stored event with this id, if any (the first stored, should two origins have
/// used the id; this region's own events, which sessions name, are unique).
pub(crate) fn revocation_by_id(
    conn: &Connection,
    event_id: &str,
) -> rusqlite::Result<Option<RevocationEvent>> {
    let json: Option<String> = conn
        .query_row(
            "SELECT event FROM revocations WHERE event_id = ?1 ORDER BY rowid LIMIT 1",
            params![event_id],
            |r| r.get(0),
        )
        .optional()?;
    Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
}

/// Every live revocation with its signed form, for rebuilding a cache.
pub(crate) fn live_signed(
    conn: &Connection,
    now: i64,
) -> rusqlite::Result<Vec<(RevocationEvent, Option<String>)>> {
    let mut stmt = conn.prepare(
        "SELECT r.event, r.signed, b.root FROM revocations r
         LEFT JOIN event_batches b ON b.id = r.batch_id WHERE r.expires_at > ?1",
    )?;
    let rows = stmt.query_map(params![now], |r| {
        Ok((r.get::<_, String>(0)?, signed_form(r.get(1)?, r.get(2)?)))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (json, signed) = row?;
        if let Ok(event) = serde_json::from_str::<RevocationEvent>(&json) {
            out.push((event, Some(signed)));
        }
    }
    Ok(out)
}

/// One signed event as stored: its feed sequence number, id and signed form.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub(crate) struct SignedEvent {
    /// Feed sequence number (this region's order; remote events get one when applied).
    pub(crate) seq: u64,
    /// The event's id.
    pub(crate) event_id: String,
    /// The event as signed by its origin region (a member of a signed batch, see
    /// `shared::revocation::sign_batch`, or a compact JWS of its own); verify it with
    /// that region's JWKS.
    pub(crate) jws: String,
}

/// Up to `limit` signed events of feed rows after `after`, in feed order, expired ones
/// included (they are history).
pub(crate) fn signed_events(
    conn: &Connection,
    after: u64,
    limit: u32,
) -> rusqlite::Result<Vec<SignedEvent>> {
    let mut stmt = conn.prepare_cached(
        "SELECT f.seq, r.event_id, r.signed, b.root FROM feed f
         JOIN revocations r USING (origin, event_id) LEFT JOIN event_batches b ON b.id = r.batch_id
         WHERE f.seq > ?1 ORDER BY f.seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![seq_param(after), limit], |r| {
        Ok(SignedEvent {
            seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
            event_id: r.get(1)?,
            jws: signed_form(r.get(2)?, r.get(3)?),
        })
    })?;
    rows.collect()
}

/// Audit rows after `seq` (at most `limit`), as `(seq, entry JSON)`: what the token-event
/// relay turns into lifecycle events.
pub(crate) fn audit_after(
    conn: &Connection,
    seq: i64,
    limit: usize,
) -> rusqlite::Result<Vec<(i64, String)>> {
    let mut stmt =
        conn.prepare_cached("SELECT seq, entry FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
    let rows = stmt.query_map(
        params![seq, i64::try_from(limit).unwrap_or(i64::MAX)],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    rows.collect()
}

/// The horizon `name` (0 when never set): see [`reserve_horizon`].
pub(crate) fn horizon(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row(
            "SELECT until FROM horizons WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// Moves the horizon `name` to `until` unless it is already later; answers the stored
/// value. Used for [`ISSUED_UNTIL`]: the latest `exp` this region may have handed out,
/// recorded before a token carrying it is, so a restart under shorter settings still
/// knows how long its revocations must last.
pub(crate) fn reserve_horizon(conn: &Connection, name: &str, until: i64) -> rusqlite::Result<i64> {
    conn.query_row(
        "INSERT INTO horizons (name, until) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET until = MAX(until, excluded.until)
         RETURNING until",
        params![name, until],
        |r| r.get(0),
    )
}

/// The horizon past every `exp` of a token this region issued.
pub(crate) const ISSUED_UNTIL: &str = "issued_until";

/// The id of this database's edge feed (see [`shared::edgeset`], "The feed an update
/// belongs to"); made by [`Db::open`] when missing.
pub(crate) fn feed_id(conn: &Connection) -> rusqlite::Result<String> {
    conn.query_row("SELECT id FROM feed_identity WHERE one = 1", [], |r| {
        r.get(0)
    })
}

/// Gives the feed an id unless it has one: a database made before ids existed, or a
/// backup (whose copy has none, so whatever opens it counts in a new feed).
fn ensure_feed_id(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO feed_identity (one, id, created_at) VALUES (1, ?1, ?2)",
        params![shared::random::id(), crate::time::now()],
    )?;
    Ok(())
}

/// Replaces the feed id with a new random one and answers it: after a restore the
/// database's sequence numbers may again reach values an edge already holds from the
/// lost history, so edges must see a new feed and take a snapshot.
pub(crate) fn new_feed_id(conn: &Connection) -> rusqlite::Result<String> {
    let id = shared::random::id();
    conn.execute(
        "INSERT INTO feed_identity (one, id, created_at) VALUES (1, ?1, ?2)
         ON CONFLICT (one) DO UPDATE SET id = excluded.id, created_at = excluded.created_at",
        params![id, crate::time::now()],
    )?;
    Ok(id)
}

/// Forgets the feed id (in a backup copy): whatever opens the copy makes a new one.
pub(crate) fn clear_feed_id(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM feed_identity", [])?;
    Ok(())
}

/// Where a relay of this database stopped (0 before its first run).
pub(crate) fn relay_position(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row(
            "SELECT seq FROM relay_state WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// Records where a relay got to.
pub(crate) fn set_relay_position(conn: &Connection, name: &str, seq: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO relay_state (name, seq) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
        params![name, seq],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use shared::revocation::{TokenIds, strongest};
    use shared::{Kind, random};

    use super::*;
    use crate::cache::{MemoryCache, RevocationCache as _};

    fn sub_event(not_before: i64) -> RevocationEvent {
        RevocationEvent {
            event_id: random::id(),
            kind: Kind::Sub,
            value: "sam".into(),
            not_before: Some(not_before),
            expires_at: i64::MAX / 2,
            issued_at: not_before,
            origin: "test".into(),
            nonce: "00".into(),
            kid: "k".into(),
        }
    }

    fn ids(iat: i64) -> TokenIds<'static> {
        TokenIds {
            jti: "j",
            sub: "sam",
            kid: "k",
            sid: None,
            iat,
        }
    }

    #[test]
    fn the_memory_cache_and_sqlite_both_pick_the_latest_subject_revocation() {
        let (t1, t2, t3) = (1_000, 2_000, 3_000);
        // Both orders of arrival: the rule must not depend on which event came first.
        for events in [
            [sub_event(t1), sub_event(t3)],
            [sub_event(t3), sub_event(t1)],
        ] {
            assert_eq!(strongest(&events).unwrap().not_before, Some(t3));

            let cache = MemoryCache::new();
            for e in &events {
                cache.insert(e).unwrap();
            }
            let any = cache.find(Kind::Sub, "sam", None, 0).unwrap().unwrap();
            assert_eq!(any.not_before, Some(t3), "the lookup for sessions sees T3");
            assert!(cache.find(Kind::Sub, "sam", Some(t2), 0).unwrap().is_some());
            assert!(
                cache
                    .find(Kind::Sub, "sam", Some(t3 + 1), 0)
                    .unwrap()
                    .is_none()
            );

            let dir = tempfile::TempDir::new().unwrap();
            let store = Db::open(&dir.path().join("cp.db")).unwrap();
            {
                let mut conn = store.lock();
                let tx = conn.transaction().unwrap();
                for e in &events {
                    insert_revocation(&tx, e, "signed", Outbox::Local).unwrap();
                }
                tx.commit().unwrap();
            }
            let found = find_revocation(&store.lock(), Kind::Sub, "sam", 0)
                .unwrap()
                .unwrap();
            assert_eq!(found.not_before, Some(t3));
            assert!(found.matches(&ids(t2)));
        }
    }

    #[test]
    fn a_batch_root_is_stored_once_and_every_read_gives_the_signed_form_back() {
        use shared::keys::{Alg, Keyring, SigningKey};
        let key = SigningKey::from_seed(Alg::MlDsa65, &[9; 32]);
        let mut ring = Keyring::new();
        ring.add(key.verifying_key());
        let events: Vec<RevocationEvent> = (0..3)
            .map(|i| RevocationEvent {
                kind: Kind::Jti,
                value: format!("j{i}"),
                not_before: None,
                kid: key.kid(),
                ..sub_event(1_000)
            })
            .collect();
        let signed = shared::revocation::sign_batch(&events, &key).unwrap();
        // An event signed on its own (older versions, or another implementation).
        let alone = RevocationEvent {
            event_id: random::id(),
            value: "alone".into(),
            ..events[0].clone()
        };
        let lone = (alone.clone(), alone.sign(&key).unwrap());

        let dir = tempfile::TempDir::new().unwrap();
        let store = Db::open(&dir.path().join("cp.db")).unwrap();
        {
            let mut conn = store.lock();
            let tx = conn.transaction().unwrap();
            for (e, s) in events.iter().zip(&signed) {
                insert_revocation(&tx, e, s, Outbox::Queue).unwrap();
            }
            insert_revocation(&tx, &lone.0, &lone.1, Outbox::Queue).unwrap();
            tx.commit().unwrap();
        }
        let conn = store.lock();
        let batches: i64 = conn
            .query_row("SELECT COUNT(*) FROM event_batches", [], |r| r.get(0))
            .unwrap();
        assert_eq!(batches, 1);
        let longest: i64 = conn
            .query_row(
                "SELECT MAX(LENGTH(signed)) FROM revocations WHERE batch_id IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(longest < 1_000, "a member row holds {longest} bytes");

        let mut expected = signed.clone();
        expected.push(lone.1.clone());
        let exported: Vec<String> = signed_events(&conn, 0, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.jws)
            .collect();
        assert_eq!(exported, expected);
        let queued: Vec<String> = unpublished(&conn, 10)
            .unwrap()
            .into_iter()
            .map(|u| u.signed)
            .collect();
        assert_eq!(queued, expected);
        let mut live: Vec<String> = live_signed(&conn, 0)
            .unwrap()
            .into_iter()
            .filter_map(|(_, s)| s)
            .collect();
        live.sort();
        let mut sorted = expected.clone();
        sorted.sort();
        assert_eq!(live, sorted);
        for s in &expected {
            RevocationEvent::verify(s, &ring).unwrap();
        }
    }

    fn event_of(origin: &str, id: &str, value: &str) -> RevocationEvent {
        RevocationEvent {
            event_id: id.into(),
            kind: Kind::Jti,
            value: value.into(),
            not_before: None,
            expires_at: i64::MAX / 2,
            issued_at: 1_000,
            origin: origin.into(),
            nonce: "00".into(),
            kid: "k".into(),
        }
    }

    #[test]
    fn the_same_event_id_from_two_origins_is_two_events() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Db::open(&dir.path().join("cp.db")).unwrap();
        let mut conn = store.lock();
        let tx = conn.transaction().unwrap();
        let a = event_of("a", "same-id", "from-a");
        let b = event_of("b", "same-id", "from-b");
        assert!(
            insert_revocation(&tx, &a, "sig-a", Outbox::Queue)
                .unwrap()
                .is_some()
        );
        assert!(
            insert_revocation(&tx, &b, "sig-b", Outbox::Skip)
                .unwrap()
                .is_some()
        );
        // The same origin and id again is a duplicate.
        assert!(
            insert_revocation(&tx, &b, "sig-b", Outbox::Skip)
                .unwrap()
                .is_none()
        );
        tx.commit().unwrap();
        assert_eq!(feed_range(&conn, 0, 10, None).unwrap().len(), 2);
        assert!(
            find_revocation(&conn, Kind::Jti, "from-b", 0)
                .unwrap()
                .is_some()
        );
        let queued: Vec<String> = unpublished(&conn, 10)
            .unwrap()
            .into_iter()
            .map(|u| u.signed)
            .collect();
        assert_eq!(queued, ["sig-a"]);
    }

    #[test]
    fn a_database_from_before_origins_keeps_every_row_when_opened() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("cp.db");
        {
            // The tables as the previous version made them, with rows in them.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE event_batches (id INTEGER PRIMARY KEY, hash BLOB NOT NULL UNIQUE,
                     root TEXT NOT NULL);
                 CREATE TABLE revocations (event_id TEXT PRIMARY KEY, kind TEXT NOT NULL,
                     value TEXT NOT NULL, not_before INTEGER, expires_at INTEGER NOT NULL,
                     issued_at INTEGER NOT NULL, event TEXT NOT NULL, signed TEXT NOT NULL,
                     batch_id INTEGER REFERENCES event_batches (id));
                 CREATE INDEX revocations_by_value ON revocations (kind, value);
                 CREATE TABLE feed (seq INTEGER PRIMARY KEY AUTOINCREMENT,
                     event_id TEXT NOT NULL UNIQUE REFERENCES revocations (event_id));
                 CREATE TABLE outbox (event_id TEXT PRIMARY KEY REFERENCES revocations (event_id),
                     created_at INTEGER NOT NULL, published_at INTEGER);",
            )
            .unwrap();
            for (i, e) in [
                event_of("a", "e1", "one"),
                event_of("b", "e2", "two"),
                event_of("a", "e3", "three"),
            ]
            .iter()
            .enumerate()
            {
                let json = String::from_utf8(e.canonical_bytes()).unwrap();
                conn.execute(
                    "INSERT INTO revocations (event_id, kind, value, expires_at, issued_at,
                         event, signed) VALUES (?1, 'jti', ?2, ?3, 1000, ?4, ?5)",
                    params![e.event_id, e.value, e.expires_at, json, format!("sig-{i}")],
                )
                .unwrap();
                conn.execute(
                    "INSERT INTO feed (event_id) VALUES (?1)",
                    params![e.event_id],
                )
                .unwrap();
            }
            // Feed numbers went further once (e.g. a row of a rolled-back write).
            conn.execute("UPDATE sqlite_sequence SET seq = 7 WHERE name = 'feed'", [])
                .unwrap();
            conn.execute_batch(
                "INSERT INTO outbox (event_id, created_at, published_at) VALUES ('e3', 1, NULL);
                 INSERT INTO outbox (event_id, created_at, published_at) VALUES ('e1', 1, 5);",
            )
            .unwrap();
        }
        let store = Db::open(&path).unwrap();
        let mut conn = store.lock();
        let feed: Vec<(u64, String, String)> = feed_range(&conn, 0, 100, None)
            .unwrap()
            .into_iter()
            .map(|(seq, e)| (seq, e.event_id, e.origin))
            .collect();
        assert_eq!(
            feed,
            [
                (1, "e1".into(), "a".into()),
                (2, "e2".into(), "b".into()),
                (3, "e3".into(), "a".into())
            ]
        );
        let queued: Vec<(String, String)> = unpublished(&conn, 10)
            .unwrap()
            .into_iter()
            .map(|u| (u.key, u.signed))
            .collect();
        assert_eq!(queued, [("three".to_owned(), "sig-2".to_owned())]);
        assert!(outbox_published(&conn, "e1").unwrap());
        let broken: i64 = conn
            .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(broken, 0);
        // New rows: numbered after the old counter, the same id from another origin too.
        let tx = conn.transaction().unwrap();
        let again = event_of("c", "e1", "four");
        let inserted = insert_revocation(&tx, &again, "sig-c", Outbox::Skip)
            .unwrap()
            .expect("another origin's e1 is a new event");
        assert_eq!(inserted.feed_seq, 8);
        assert!(
            insert_revocation(&tx, &event_of("a", "e1", "one"), "x", Outbox::Skip)
                .unwrap()
                .is_none()
        );
        tx.commit().unwrap();
        drop(conn);
        drop(store);
        // Opening it again changes nothing.
        let store = Db::open(&path).unwrap();
        assert_eq!(feed_range(&store.lock(), 0, 100, None).unwrap().len(), 4);
    }
}
