//! The append-only audit log: every row is hash-chained to the previous one and signed
//! with the region's ML-DSA-65 key, so any edit, deletion or reordering is found by
//! [`verify`].

use rusqlite::{Connection, OptionalExtension as _, params};
use serde::{Deserialize, Serialize};
use shared::{Keyring, SigningKey, b64, sha256};

/// The signed content of one row. `prev` is the previous row's hash ("" for the first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Position in the log, starting at 1.
    pub seq: i64,
    /// When it happened.
    pub at: i64,
    /// What happened, e.g. `token.issued`, `revocation`, `keys.rotated`.
    pub action: String,
    /// Region that wrote the row.
    pub region: String,
    /// Details (never secrets).
    pub data: serde_json::Value,
    /// Hash of the previous row.
    pub prev: String,
}

/// Why a row fails verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// A row is not what was signed or chained.
    #[error("audit row {seq} is invalid: {reason}")]
    BadRow {
        /// The first bad row.
        seq: i64,
        /// What is wrong with it.
        reason: String,
    },
    /// The database could not be read.
    #[error("cannot read the audit log: {0}")]
    Storage(String),
}

impl From<rusqlite::Error> for AuditError {
    fn from(e: rusqlite::Error) -> Self {
        AuditError::Storage(e.to_string())
    }
}

/// Errors while appending.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// SQLite failed.
    #[error(transparent)]
    Storage(#[from] rusqlite::Error),
    /// Signing failed.
    #[error("signing the audit row failed: {0}")]
    Signing(#[from] shared::JoseError),
}

fn hash_of(entry: &str) -> String {
    b64::encode(&sha256(entry.as_bytes()))
}

/// Appends a row inside the caller's transaction; returns its `seq`.
pub fn append(
    conn: &Connection,
    key: &SigningKey,
    at: i64,
    region: &str,
    action: &str,
    data: serde_json::Value,
) -> Result<i64, AppendError> {
    let last: Option<(i64, String)> = conn
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (prev_seq, prev) = last.unwrap_or((0, String::new()));
    let entry = AuditEntry {
        seq: prev_seq + 1,
        at,
        action: action.to_owned(),
        region: region.to_owned(),
        data,
        prev,
    };
    let text = serde_json::to_string(&entry).map_err(|_| shared::JoseError::SigningFailed)?;
    let sig = b64::encode(&key.sign(text.as_bytes())?);
    conn.execute(
        "INSERT INTO audit (seq, entry, hash, kid, sig) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![entry.seq, text, hash_of(&text), key.kid(), sig],
    )?;
    Ok(entry.seq)
}

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// Number of rows checked.
    pub rows: i64,
    /// Hash of the last row (the head of the chain), to compare with a copy kept elsewhere.
    pub head: String,
}

/// Checks every row in order: sequence, chain link, hash and ML-DSA-65 signature.
/// Reports the first bad row.
pub fn verify(conn: &Connection, keys: &Keyring) -> Result<AuditReport, AuditError> {
    let mut stmt = conn.prepare("SELECT seq, entry, hash, kid, sig FROM audit ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    let mut expected_seq = 1;
    let mut prev = String::new();
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let bad = |reason: &str| AuditError::BadRow {
            seq,
            reason: reason.to_owned(),
        };
        let entry: String = row.get(1)?;
        let hash: String = row.get(2)?;
        let kid: String = row.get(3)?;
        let sig: String = row.get(4)?;
        if seq != expected_seq {
            return Err(AuditError::BadRow {
                seq,
                reason: format!("expected row {expected_seq} here: rows are missing"),
            });
        }
        let parsed: AuditEntry =
            serde_json::from_str(&entry).map_err(|e| bad(&format!("entry does not parse: {e}")))?;
        if parsed.seq != seq {
            return Err(bad("the entry's seq differs from the row's"));
        }
        if parsed.prev != prev {
            return Err(bad("does not chain to the previous row's hash"));
        }
        if hash_of(&entry) != hash {
            return Err(bad("hash does not match the entry"));
        }
        let key = keys
            .get(&kid)
            .ok_or_else(|| bad(&format!("signed by unknown key {kid:?}")))?;
        if key.alg() != shared::Alg::MlDsa65 {
            return Err(bad("not signed with ML-DSA-65"));
        }
        let sig = b64::decode(&sig, "signature").map_err(|e| bad(&e.to_string()))?;
        key.verify(entry.as_bytes(), &sig)
            .map_err(|_| bad("signature does not verify"))?;
        prev = hash;
        expected_seq += 1;
    }
    Ok(AuditReport {
        rows: expected_seq - 1,
        head: prev,
    })
}

/// The last `limit` rows, newest first (for operators).
pub fn tail(conn: &Connection, limit: i64) -> rusqlite::Result<Vec<AuditEntry>> {
    let mut stmt = conn.prepare("SELECT entry FROM audit ORDER BY seq DESC LIMIT ?1")?;
    let rows = stmt.query_map(params![limit], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        if let Ok(entry) = serde_json::from_str(&row?) {
            out.push(entry);
        }
    }
    Ok(out)
}
