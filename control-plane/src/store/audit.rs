//! The append-only audit log: every row is hash-chained to the previous one, and the
//! chain head is signed with the region's ML-DSA-65 key in checkpoints, the way
//! transparency logs sign their tree heads, so any edit, deletion or reordering of a
//! row before the last checkpoint is found by `verify`.
//!
//! Format (also what `audit export` writes, one JSON object a line):
//! - a row's `entry` is the JSON text of `AuditEntry`; its `hash` is
//!   `base64url(SHA-256(entry))` (no padding); `entry.prev` is the previous row's
//!   `hash` ("" for row 1) and `entry.seq` its position, from 1 without gaps;
//! - a checkpoint's `body` is the JSON text of `CheckpointBody`
//!   (`{"type":"audit-checkpoint","region","upto","head","at"}`): `head` is the `hash`
//!   of row `upto`; `sig` is `base64url` of the ML-DSA-65 signature (FIPS 204,
//!   deterministic, empty context) of the `body` bytes by the key `kid` (the RFC 7638
//!   thumbprint of its JWK). Checkpoints cover increasing rows; rows after the last one
//!   are not sealed yet (the server seals within about 50 ms).
//! - Rows written before checkpoints existed carry their own `kid` and `sig` (the same
//!   signature over the `entry` bytes); newer rows have both empty.

use rusqlite::{Connection, OptionalExtension as _, params};
use serde::{Deserialize, Serialize};
use shared::{Keyring, SigningKey, b64, sha256};

/// The signed content of one row. `prev` is the previous row's hash ("" for the first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditEntry {
    /// Position in the log, starting at 1.
    pub(crate) seq: i64,
    /// When it happened.
    pub(crate) at: i64,
    /// What happened, e.g. `token.issued`, `revocation`, `keys.rotated`.
    pub(crate) action: String,
    /// Region that wrote the row.
    pub(crate) region: String,
    /// Details (never secrets).
    pub(crate) data: serde_json::Value,
    /// Hash of the previous row.
    pub(crate) prev: String,
}

/// Why a row fails verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuditError {
    /// A row is not what was signed or chained.
    #[error("audit row {seq} is invalid: {reason}")]
    BadRow {
        /// The first bad row.
        seq: i64,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint does not verify or does not match the rows.
    #[error("audit checkpoint {id} (row {upto}) is invalid: {reason}")]
    BadCheckpoint {
        /// The checkpoint's position among checkpoints, from 1.
        id: i64,
        /// The row it covers.
        upto: i64,
        /// What is wrong with it.
        reason: String,
    },
    /// A signature is by a key the caller did not trust: the log may be intact, but
    /// nothing says who wrote it (an export re-signed by a stranger's key lands here).
    #[error("{what} is signed by key {kid:?}, which is not among the trusted keys")]
    UntrustedKey {
        /// `audit row N` or `audit checkpoint N (row M)`.
        what: String,
        /// The signing key's id.
        kid: String,
    },
    /// The database or export could not be read.
    #[error("cannot read the audit log: {0}")]
    Storage(String),
}

impl From<rusqlite::Error> for AuditError {
    fn from(e: rusqlite::Error) -> Self {
        AuditError::Storage(e.to_string())
    }
}

/// Why a row's or checkpoint's signature does not hold.
#[derive(Debug, thiserror::Error)]
enum SignatureError {
    /// No key of the log has this id.
    #[error("signed by unknown key {0:?}")]
    UnknownKey(String),
    /// The key is not an ML-DSA-65 key.
    #[error("not signed with ML-DSA-65")]
    NotMlDsa65,
    /// The signature is not canonical base64url.
    #[error("{0}")]
    Encoding(shared::JoseError),
    /// The signature does not verify.
    #[error("signature does not verify")]
    DoesNotVerify,
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

/// The last row's `seq` and hash, if any.
pub(crate) fn head(conn: &Connection) -> rusqlite::Result<Option<(i64, String)>> {
    conn.prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
}

/// The row the newest checkpoint covers (0 when there is none).
pub(crate) fn last_checkpoint(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT COALESCE(MAX(upto), 0) FROM audit_checkpoints")?
        .query_row([], |r| r.get(0))
}

/// Appends a hash-chained row inside the caller's transaction (a writer job); returns
/// its `seq`. The row is not signed on its own: the writer's sealer signs a checkpoint
/// over it after the commit.
pub fn append_row(
    conn: &Connection,
    at: i64,
    region: &str,
    action: &str,
    data: serde_json::Value,
) -> Result<i64, AppendError> {
    let (prev_seq, prev) = head(conn)?.unwrap_or((0, String::new()));
    let entry = AuditEntry {
        seq: prev_seq + 1,
        at,
        action: action.to_owned(),
        region: region.to_owned(),
        data,
        prev,
    };
    let text = serde_json::to_string(&entry).map_err(|_| shared::JoseError::SigningFailed)?;
    conn.prepare_cached(
        "INSERT INTO audit (seq, entry, hash, kid, sig) VALUES (?1, ?2, ?3, '', '')",
    )?
    .execute(params![entry.seq, text, hash_of(&text)])?;
    Ok(entry.seq)
}

/// What a checkpoint signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckpointBody {
    /// Always `audit-checkpoint` (so the signature cannot pass for anything else).
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// Region whose log this is.
    pub(crate) region: String,
    /// The row whose hash is `head`: the checkpoint covers rows 1..=upto.
    pub(crate) upto: i64,
    /// The hash of row `upto` (the chain head).
    pub(crate) head: String,
    /// When it was signed.
    pub(crate) at: i64,
}

const CHECKPOINT_TYPE: &str = "audit-checkpoint";

/// A signed checkpoint, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The row it covers.
    pub(crate) upto: i64,
    /// The JSON text of its [`CheckpointBody`] (the signed bytes).
    pub(crate) body: String,
    /// The signing key's id.
    pub(crate) kid: String,
    /// The ML-DSA-65 signature of `body`, base64url.
    pub(crate) sig: String,
}

impl Checkpoint {
    /// Signs the chain head `head` of row `upto`.
    pub fn sign(
        key: &SigningKey,
        upto: i64,
        head: String,
        at: i64,
        region: &str,
    ) -> Result<Checkpoint, AppendError> {
        let body = CheckpointBody {
            kind: CHECKPOINT_TYPE.to_owned(),
            region: region.to_owned(),
            upto,
            head,
            at,
        };
        let text = serde_json::to_string(&body).map_err(|_| shared::JoseError::SigningFailed)?;
        let sig = b64::encode(&key.sign(text.as_bytes())?);
        Ok(Checkpoint {
            upto,
            body: text,
            kid: key.kid(),
            sig,
        })
    }
}

/// Stores a checkpoint unless a newer one is already there (another connection sealed
/// further meanwhile); true if stored. The checkpoint must cover an existing row.
pub(crate) fn store_checkpoint(conn: &Connection, cp: &Checkpoint) -> rusqlite::Result<bool> {
    if cp.upto <= last_checkpoint(conn)? {
        return Ok(false);
    }
    conn.prepare_cached(
        "INSERT INTO audit_checkpoints (upto, body, kid, sig) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![cp.upto, cp.body, cp.kid, cp.sig])?;
    Ok(true)
}

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct AuditReport {
    /// Number of rows checked.
    pub(crate) rows: i64,
    /// Hash of the last row (the head of the chain), to compare with a copy kept elsewhere.
    pub(crate) head: String,
    /// Number of checkpoints checked.
    pub(crate) checkpoints: i64,
    /// Rows after the last checkpoint (chained, not sealed by a signature yet).
    pub(crate) unsealed: i64,
    /// The `kid` of every key whose signature was checked, sorted.
    pub(crate) signers: std::collections::BTreeSet<String>,
}

/// One stored row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Row {
    /// Its position.
    pub(crate) seq: i64,
    /// The JSON text of its [`AuditEntry`].
    pub(crate) entry: String,
    /// `base64url(SHA-256(entry))`.
    pub(crate) hash: String,
    /// Rows before checkpoints: the signing key's id; empty otherwise.
    pub(crate) kid: String,
    /// Rows before checkpoints: their own ML-DSA-65 signature of `entry`; empty otherwise.
    pub(crate) sig: String,
}

/// Checks rows and checkpoints given in order (rows by `seq`, checkpoints by position).
pub(crate) struct Verifier<'k> {
    keys: &'k Keyring,
    expected_seq: i64,
    prev: String,
    checkpoints: std::collections::VecDeque<(i64, Checkpoint)>,
    checked: i64,
    sealed_upto: i64,
    signers: std::collections::BTreeSet<String>,
}

impl<'k> Verifier<'k> {
    /// A verifier with the keys that may have signed; `checkpoints` in stored order.
    pub(crate) fn new(keys: &'k Keyring, checkpoints: Vec<Checkpoint>) -> Self {
        Verifier {
            keys,
            expected_seq: 1,
            prev: String::new(),
            checkpoints: (1..).zip(checkpoints).collect(),
            checked: 0,
            sealed_upto: 0,
            signers: std::collections::BTreeSet::new(),
        }
    }

    fn verify_sig(&self, kid: &str, text: &str, sig: &str) -> Result<(), SignatureError> {
        let key = self
            .keys
            .get(kid)
            .ok_or_else(|| SignatureError::UnknownKey(kid.to_owned()))?;
        if key.alg() != shared::Alg::MlDsa65 {
            return Err(SignatureError::NotMlDsa65);
        }
        let sig = b64::decode(sig, "signature").map_err(SignatureError::Encoding)?;
        key.verify(text.as_bytes(), &sig)
            .map_err(|_| SignatureError::DoesNotVerify)
    }

    fn signed_by(&mut self, kid: &str) {
        if !self.signers.contains(kid) {
            self.signers.insert(kid.to_owned());
        }
    }

    /// Checks the next row, then the checkpoints that cover it.
    pub(crate) fn row(&mut self, row: &Row) -> Result<(), AuditError> {
        let seq = row.seq;
        let bad = |reason: &str| AuditError::BadRow {
            seq,
            reason: reason.to_owned(),
        };
        if seq != self.expected_seq {
            return Err(bad(&format!(
                "expected row {} here: rows are missing or out of order",
                self.expected_seq
            )));
        }
        let parsed: AuditEntry = serde_json::from_str(&row.entry)
            .map_err(|e| bad(&format!("entry does not parse: {e}")))?;
        if parsed.seq != seq {
            return Err(bad(&format!(
                "the entry says it is row {}: rows were reordered",
                parsed.seq
            )));
        }
        if parsed.prev != self.prev {
            return Err(bad("does not chain to the previous row's hash"));
        }
        if hash_of(&row.entry) != row.hash {
            return Err(bad("hash does not match the entry"));
        }
        if !row.sig.is_empty() {
            self.verify_sig(&row.kid, &row.entry, &row.sig)
                .map_err(|e| match e {
                    SignatureError::UnknownKey(kid) => AuditError::UntrustedKey {
                        what: format!("audit row {seq}"),
                        kid,
                    },
                    e => bad(&e.to_string()),
                })?;
            self.signed_by(&row.kid);
        }
        self.prev.clone_from(&row.hash);
        self.expected_seq += 1;
        while let Some((id, cp)) = self.checkpoints.front() {
            let (id, upto) = (*id, cp.upto);
            let bad_cp = |reason: String| AuditError::BadCheckpoint { id, upto, reason };
            if upto > seq {
                break;
            }
            if upto < seq || upto <= self.sealed_upto {
                return Err(bad_cp(format!(
                    "checkpoints are out of order (previous one covers row {})",
                    self.sealed_upto
                )));
            }
            let body: CheckpointBody = serde_json::from_str(&cp.body)
                .map_err(|e| bad_cp(format!("body does not parse: {e}")))?;
            if body.kind != CHECKPOINT_TYPE || body.upto != upto {
                return Err(bad_cp("body does not describe this checkpoint".into()));
            }
            self.verify_sig(&cp.kid, &cp.body, &cp.sig)
                .map_err(|e| match e {
                    SignatureError::UnknownKey(kid) => AuditError::UntrustedKey {
                        what: format!("audit checkpoint {id} (row {upto})"),
                        kid,
                    },
                    e => bad_cp(e.to_string()),
                })?;
            if body.head != row.hash {
                return Err(bad_cp(format!(
                    "the signed chain head differs from row {upto}'s hash: a row in {}..={upto} \
                     was altered",
                    self.sealed_upto + 1
                )));
            }
            self.sealed_upto = upto;
            self.checked += 1;
            if let Some((_, cp)) = self.checkpoints.pop_front() {
                self.signed_by(&cp.kid);
            }
        }
        Ok(())
    }

    /// After the last row: no checkpoint may cover rows that are not there.
    pub(crate) fn finish(self) -> Result<AuditReport, AuditError> {
        let rows = self.expected_seq - 1;
        if let Some((id, cp)) = self.checkpoints.front() {
            return Err(AuditError::BadCheckpoint {
                id: *id,
                upto: cp.upto,
                reason: format!(
                    "it covers row {} but the log ends at row {rows}: rows were dropped",
                    cp.upto
                ),
            });
        }
        Ok(AuditReport {
            rows,
            head: self.prev,
            checkpoints: self.checked,
            unsealed: rows - self.sealed_upto,
            signers: self.signers,
        })
    }
}

/// Every checkpoint in stored order.
pub(crate) fn checkpoints(conn: &Connection) -> rusqlite::Result<Vec<Checkpoint>> {
    let mut stmt =
        conn.prepare("SELECT upto, body, kid, sig FROM audit_checkpoints ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        Ok(Checkpoint {
            upto: r.get(0)?,
            body: r.get(1)?,
            kid: r.get(2)?,
            sig: r.get(3)?,
        })
    })?;
    rows.collect()
}

/// Reads every row in order and hands it to `each`.
pub(crate) fn for_each_row(
    conn: &Connection,
    mut each: impl FnMut(Row) -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    let mut stmt = conn.prepare("SELECT seq, entry, hash, kid, sig FROM audit ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        each(Row {
            seq: r.get(0)?,
            entry: r.get(1)?,
            hash: r.get(2)?,
            kid: r.get(3)?,
            sig: r.get(4)?,
        })?;
    }
    Ok(())
}

/// Checks every row in order (sequence, chain link, hash, and the signature of rows from
/// before checkpoints), then every checkpoint (ML-DSA-65 signature, and its head against
/// the row it covers). Reports the first bad row or checkpoint.
pub(crate) fn verify(conn: &Connection, keys: &Keyring) -> Result<AuditReport, AuditError> {
    // One read transaction: rows and checkpoints from the same snapshot.
    conn.execute_batch("BEGIN")?;
    let outcome = (|| {
        let mut verifier = Verifier::new(keys, checkpoints(conn)?);
        for_each_row(conn, |row| verifier.row(&row))?;
        verifier.finish()
    })();
    let _ = conn.execute_batch("COMMIT");
    outcome
}

/// One line of `audit export`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ExportLine {
    /// A public key that may have signed (a JWK: `kty` `AKP`, `alg` `ML-DSA-65`, `pub`).
    Key {
        /// The JWK.
        jwk: shared::Jwk,
    },
    /// A row.
    Row(Row),
    /// A checkpoint, right after the row it covers.
    Checkpoint(Checkpoint),
}

/// Writes the keys, then rows and checkpoints in verification order, as JSON lines.
pub(crate) fn export(
    conn: &Connection,
    keys: &Keyring,
    out: &mut dyn std::io::Write,
) -> Result<(), AuditError> {
    let io = |e: std::io::Error| AuditError::Storage(e.to_string());
    let line = |out: &mut dyn std::io::Write, l: &ExportLine| -> Result<(), AuditError> {
        serde_json::to_writer(&mut *out, l).map_err(|e| AuditError::Storage(e.to_string()))?;
        out.write_all(b"\n").map_err(io)
    };
    for (kid, key) in keys.iter() {
        let mut jwk = key.to_jwk();
        jwk.kid = Some(kid.to_owned());
        line(out, &ExportLine::Key { jwk })?;
    }
    conn.execute_batch("BEGIN")?;
    let outcome = (|| {
        let mut pending: std::collections::VecDeque<Checkpoint> = checkpoints(conn)?.into();
        for_each_row(conn, |row| {
            let seq = row.seq;
            line(out, &ExportLine::Row(row))?;
            while pending.front().is_some_and(|cp| cp.upto <= seq) {
                if let Some(cp) = pending.pop_front() {
                    line(out, &ExportLine::Checkpoint(cp))?;
                }
            }
            Ok(())
        })?;
        for cp in pending {
            line(out, &ExportLine::Checkpoint(cp))?;
        }
        Ok(())
    })();
    let _ = conn.execute_batch("COMMIT");
    outcome
}

/// Which keys an export's signatures must be by.
#[derive(Debug)]
pub(crate) enum Trust<'k> {
    /// Keys the operator pinned (the region's JWKS, its data dir): a signature by any
    /// other key fails with [`AuditError::UntrustedKey`], whatever keys the file carries.
    Pinned(&'k Keyring),
    /// The keys the file carries: proves the file is consistent, not who wrote it (whoever
    /// edits the file can re-sign it and replace them).
    FileKeys,
}

/// Verifies an export (as written by [`export`]); returns the report and the `kid`s of
/// the keys the file carries.
pub(crate) fn verify_export(
    input: impl std::io::BufRead,
    trust: Trust<'_>,
) -> Result<(AuditReport, Vec<String>), AuditError> {
    let mut keys = Keyring::new();
    let mut carried = Vec::new();
    let mut rows = Vec::new();
    let mut cps = Vec::new();
    for (n, text) in input.lines().enumerate() {
        let text = text.map_err(|e| AuditError::Storage(e.to_string()))?;
        if text.trim().is_empty() {
            continue;
        }
        let parsed: ExportLine = serde_json::from_str(&text)
            .map_err(|e| AuditError::Storage(format!("line {}: {e}", n + 1)))?;
        match parsed {
            ExportLine::Key { jwk } => {
                let key = jwk
                    .to_verifying_key()
                    .map_err(|e| AuditError::Storage(format!("line {}: {e}", n + 1)))?;
                carried.push(key.thumbprint());
                keys.add(key);
            }
            ExportLine::Row(row) => rows.push(row),
            ExportLine::Checkpoint(cp) => cps.push(cp),
        }
    }
    let keys = match trust {
        Trust::Pinned(pinned) => pinned,
        Trust::FileKeys => &keys,
    };
    let mut verifier = Verifier::new(keys, cps);
    for row in &rows {
        verifier.row(row)?;
    }
    Ok((verifier.finish()?, carried))
}

/// The last `limit` rows, newest first (for operators).
pub(crate) fn tail(conn: &Connection, limit: i64) -> rusqlite::Result<Vec<AuditEntry>> {
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
