//! The SQL of refresh sessions: their rows, the DPoP replay window and the rotation write.

use rusqlite::{OptionalExtension as _, Transaction, params};

use super::Error;
use super::proof::PROOF_MAX_AGE;
use crate::store::audit;

/// The stored session a token belongs to.
#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) sid: String,
    pub(super) subject: String,
    pub(super) scope: Option<String>,
    pub(super) device_jkt: Option<String>,
    pub(super) binding_hash: Option<Vec<u8>>,
    pub(super) created_at: i64,
    pub(super) expires_at: i64,
    pub(super) revoked_at: Option<i64>,
    pub(super) revocation_event: Option<String>,
}

/// A stored refresh token and its session.
#[derive(Debug, Clone)]
pub(super) struct TokenRow {
    pub(super) generation: i64,
    pub(super) state: String,
    pub(super) session: Session,
}

const SESSION_COLUMNS: &str = "s.sid, s.subject, s.scope, s.device_jkt, s.binding_hash, \
    s.created_at, s.expires_at, s.revoked_at, s.revocation_event";

fn session_from(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Session> {
    Ok(Session {
        sid: row.get(at)?,
        subject: row.get(at + 1)?,
        scope: row.get(at + 2)?,
        device_jkt: row.get(at + 3)?,
        binding_hash: row.get(at + 4)?,
        created_at: row.get(at + 5)?,
        expires_at: row.get(at + 6)?,
        revoked_at: row.get(at + 7)?,
        revocation_event: row.get(at + 8)?,
    })
}

pub(super) fn find_token(
    conn: &rusqlite::Connection,
    hash: &[u8],
) -> rusqlite::Result<Option<TokenRow>> {
    conn.query_row(
        &format!(
            "SELECT t.generation, t.state, {SESSION_COLUMNS} FROM refresh_tokens t
             JOIN refresh_sessions s USING (sid) WHERE t.hash = ?1"
        ),
        params![hash],
        |r| {
            Ok(TokenRow {
                generation: r.get(0)?,
                state: r.get(1)?,
                session: session_from(r, 2)?,
            })
        },
    )
    .optional()
}

pub(super) fn find_session(
    conn: &rusqlite::Connection,
    sid: &str,
) -> rusqlite::Result<Option<Session>> {
    conn.query_row(
        &format!("SELECT {SESSION_COLUMNS} FROM refresh_sessions s WHERE s.sid = ?1"),
        params![sid],
        |r| session_from(r, 0),
    )
    .optional()
}

/// Records a proof's jti; false when it was already seen within the window.
pub(super) fn remember_proof(
    tx: &Transaction<'_>,
    jkt: &str,
    jti: &str,
    t: i64,
) -> rusqlite::Result<bool> {
    tx.execute("DELETE FROM dpop_jtis WHERE expires_at < ?1", params![t])?;
    // iat may lie PROOF_MAX_AGE in either direction: keep the jti for both halves.
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO dpop_jtis (jkt, jti, expires_at) VALUES (?1, ?2, ?3)",
        params![jkt, jti, t + 2 * PROOF_MAX_AGE + 1],
    )?;
    Ok(inserted == 1)
}

/// A new session's writer job: the session, its first refresh token (generation 0) and
/// the `refresh.created` audit row, all at the session's creation time.
pub(super) struct Creation {
    pub(super) session: Session,
    pub(super) first_hash: Vec<u8>,
    pub(super) region: String,
    pub(super) audit_row: serde_json::Value,
}

impl Creation {
    pub(super) fn write(self, tx: &Transaction<'_>) -> Result<(), Error> {
        let session = self.session;
        let t = session.created_at;
        tx.execute(
            "INSERT INTO refresh_sessions
             (sid, subject, scope, device_jkt, binding_hash, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                session.sid,
                session.subject,
                session.scope,
                session.device_jkt,
                session.binding_hash,
                session.created_at,
                session.expires_at
            ],
        )?;
        tx.execute(
            "INSERT INTO refresh_tokens (hash, sid, generation, state, issued_at, expires_at)
             VALUES (?1, ?2, 0, 'active', ?3, ?4)",
            params![self.first_hash, session.sid, t, session.expires_at],
        )?;
        audit::append_row(tx, t, &self.region, "refresh.created", self.audit_row)?;
        Ok(())
    }
}

/// A refresh's writer job: records the proof's `jti`, re-reads the presented token
/// (a concurrent refresh may have rotated it since it was checked) and rotates it when
/// it is still active. It never signs: a reuse is only reported here and revoked by
/// [`revoke_session`](super::revoke_session).
pub(super) struct Rotation {
    pub(super) hash: Vec<u8>,
    pub(super) next_hash: Vec<u8>,
    pub(super) proof: Option<(String, String)>,
    pub(super) t: i64,
    pub(super) region: String,
    /// The `refresh.rotated` audit row, without its generation.
    pub(super) audit_row: serde_json::Value,
}

/// What the writer found and did for a [`Rotation`]. Every outcome commits, so the
/// proof's `jti` is kept whatever the answer; only an active token is rotated.
pub(super) enum Rotated {
    /// Rotated: the new token has this generation.
    Done { generation: i64, session: Session },
    /// The token was rotated before: the session must be revoked.
    Reused(Session),
    /// The session was revoked at this time.
    SessionRevoked(i64),
    /// The token was revoked with its session.
    TokenRevoked,
    /// The session expired at this time.
    Expired(i64),
}

impl Rotation {
    pub(super) fn write(self, tx: &Transaction<'_>) -> Result<Rotated, Error> {
        let t = self.t;
        if let Some((jkt, jti)) = &self.proof
            && !remember_proof(tx, jkt, jti, t)?
        {
            return Err(Error::InvalidProof(
                "DPoP proof replayed: its jti was already used".into(),
            ));
        }
        let row = find_token(tx, &self.hash)?.ok_or(Error::UnknownToken)?;
        if let Some(at) = row.session.revoked_at {
            return Ok(Rotated::SessionRevoked(at));
        }
        match row.state.as_str() {
            "active" => {}
            "rotated" => return Ok(Rotated::Reused(row.session)),
            _ => return Ok(Rotated::TokenRevoked),
        }
        if row.session.expires_at <= t {
            return Ok(Rotated::Expired(row.session.expires_at));
        }
        let generation = row.generation + 1;
        tx.execute(
            "UPDATE refresh_tokens SET state = 'rotated', used_at = ?2 WHERE hash = ?1",
            params![self.hash, t],
        )?;
        tx.execute(
            "INSERT INTO refresh_tokens (hash, sid, generation, state, issued_at, expires_at)
             VALUES (?1, ?2, ?3, 'active', ?4, ?5)",
            params![
                self.next_hash,
                row.session.sid,
                generation,
                t,
                row.session.expires_at
            ],
        )?;
        let mut audit_row = self.audit_row;
        audit_row["generation"] = generation.into();
        audit::append_row(tx, t, &self.region, "refresh.rotated", audit_row)?;
        Ok(Rotated::Done {
            generation,
            session: row.session,
        })
    }
}

/// Marks a session and its active tokens revoked at `at` by the event `event_id`, unless
/// a revocation got there first: then nothing is written and the answer is the first
/// revocation's event id.
pub(super) fn mark_revoked(
    tx: &Transaction<'_>,
    sid: &str,
    at: i64,
    event_id: &str,
) -> Result<Option<String>, Error> {
    let current = find_session(tx, sid)?.ok_or_else(|| Error::UnknownSession(sid.to_owned()))?;
    if let Some(first) = current.revocation_event {
        return Ok(Some(first));
    }
    tx.execute(
        "UPDATE refresh_sessions SET revoked_at = ?2, revocation_event = ?3 WHERE sid = ?1",
        params![sid, at, event_id],
    )?;
    tx.execute(
        "UPDATE refresh_tokens SET state = 'revoked' WHERE sid = ?1 AND state = 'active'",
        params![sid],
    )?;
    Ok(None)
}
