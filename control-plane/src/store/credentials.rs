//! Edge credentials: the bearer secrets Envoy filters present to the edge feed.
//!
//! A credential is a name and a random secret (`ec_` + 32 random bytes, base64url),
//! shown once when created; the table keeps only its SHA-256, the creation time and the
//! revocation time. Rotation is create, deploy, revoke: any number may be valid at once.

use rusqlite::{Connection, OptionalExtension as _, params};
use serde::Serialize;
use serde_json::json;
use shared::{b64, random, sha256};

use crate::store::audit;

/// Prefix of every edge credential (tells it apart from the admin secret in logs).
pub(crate) const PREFIX: &str = "ec_";

/// Longest credential name.
pub(crate) const MAX_NAME: usize = 64;

/// A credential's public facts (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct CredentialInfo {
    /// Its name (unique, also after revocation).
    pub name: String,
    /// Creation time (Unix seconds).
    pub created_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

/// A valid credential: its name and the SHA-256 of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Valid {
    /// Its name.
    pub name: String,
    /// SHA-256 of the secret.
    pub hash: [u8; 32],
}

/// What went wrong with a credential command.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The name is empty, too long or has characters other than `A-Z a-z 0-9 . _ -`.
    #[error("a credential name is 1 to {MAX_NAME} characters of A-Z a-z 0-9 . _ -: {0:?}")]
    BadName(String),
    /// A credential of that name exists (revoked ones too: names are never reused).
    #[error("an edge credential named {0:?} exists already (names are never reused)")]
    Exists(String),
    /// An imported secret is not one `edge-credential create` makes.
    #[error(
        "an edge credential is {PREFIX} followed by 32 bytes in base64url (what edge-credential create prints)"
    )]
    BadSecret,
    /// No credential has that name.
    #[error("no edge credential named {0:?}")]
    Unknown(String),
    /// SQLite failed.
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    /// The audit row could not be written.
    #[error(transparent)]
    Audit(#[from] crate::store::audit::AppendError),
}

fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::BadName(name.to_owned()))
    }
}

/// A name for a credential created without one.
pub(crate) fn default_name() -> String {
    let suffix: String = random::bytes::<4>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("edge-{suffix}")
}

/// Creates a credential; returns its secret, which is stored nowhere.
pub(crate) fn create(conn: &Connection, name: &str, at: i64) -> Result<String, Error> {
    let secret = format!("{PREFIX}{}", b64::encode(&random::bytes::<32>()));
    insert(conn, name, &secret, at)?;
    Ok(secret)
}

/// Stores `secret` under `name`: a credential made by another replica of the region
/// (`edge-credential create` there), so one secret is valid on every replica.
pub(crate) fn import(conn: &Connection, name: &str, secret: &str, at: i64) -> Result<(), Error> {
    let well_formed = secret
        .strip_prefix(PREFIX)
        .is_some_and(|rest| b64::decode_array::<32>(rest, "edge credential").is_ok());
    if !well_formed {
        return Err(Error::BadSecret);
    }
    insert(conn, name, secret, at)
}

fn insert(conn: &Connection, name: &str, secret: &str, at: i64) -> Result<(), Error> {
    check_name(name)?;
    let inserted = conn.execute(
        "INSERT OR IGNORE INTO edge_credentials (name, hash, created_at) VALUES (?1, ?2, ?3)",
        params![name, sha256(secret.as_bytes()), at],
    )?;
    if inserted == 0 {
        return Err(Error::Exists(name.to_owned()));
    }
    Ok(())
}

/// Creates a credential (`secret` `None`) or imports one, with its audit row
/// (`edge_credential.created` or `edge_credential.imported`) in one transaction, from
/// the operator CLI (another process than the server, whose next checkpoint seals the
/// row); returns the secret.
pub(crate) fn create_recorded(
    db: &crate::store::db::Db,
    name: &str,
    secret: Option<&str>,
    at: i64,
    region: &str,
) -> Result<String, Error> {
    let mut conn = db.lock();
    let tx = conn.transaction()?;
    let (secret, kind) = match secret {
        None => (create(&tx, name, at)?, "edge_credential.created"),
        Some(given) => {
            import(&tx, name, given, at)?;
            (given.to_owned(), "edge_credential.imported")
        }
    };
    audit::append_row(&tx, at, region, kind, json!({ "name": name }))?;
    tx.commit()?;
    Ok(secret)
}

/// Revokes a credential with its audit row (`edge_credential.revoked`), from the
/// operator CLI; true if it was valid until now.
pub(crate) fn revoke_recorded(
    db: &crate::store::db::Db,
    name: &str,
    at: i64,
    region: &str,
) -> Result<bool, Error> {
    let mut conn = db.lock();
    let tx = conn.transaction()?;
    let revoked = revoke(&tx, name, at)?;
    if revoked {
        audit::append_row(
            &tx,
            at,
            region,
            "edge_credential.revoked",
            json!({ "name": name }),
        )?;
    }
    tx.commit()?;
    Ok(revoked)
}

/// Revokes a credential; true if it was valid until now (revoking twice is no error).
pub(crate) fn revoke(conn: &Connection, name: &str, at: i64) -> Result<bool, Error> {
    let state: Option<Option<i64>> = conn
        .query_row(
            "SELECT revoked_at FROM edge_credentials WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .optional()?;
    match state {
        None => Err(Error::Unknown(name.to_owned())),
        Some(Some(_)) => Ok(false),
        Some(None) => {
            conn.execute(
                "UPDATE edge_credentials SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
                params![name, at],
            )?;
            Ok(true)
        }
    }
}

/// Every credential, oldest first.
pub(crate) fn list(conn: &Connection) -> Result<Vec<CredentialInfo>, Error> {
    let mut statement = conn.prepare(
        "SELECT name, created_at, revoked_at FROM edge_credentials ORDER BY created_at, name",
    )?;
    let rows = statement.query_map([], |r| {
        Ok(CredentialInfo {
            name: r.get(0)?,
            created_at: r.get(1)?,
            revoked_at: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The credentials not revoked.
pub(crate) fn valid(conn: &Connection) -> Result<Vec<Valid>, Error> {
    let mut statement =
        conn.prepare("SELECT name, hash FROM edge_credentials WHERE revoked_at IS NULL")?;
    let rows = statement.query_map([], |r| {
        let hash: Vec<u8> = r.get(1)?;
        Ok((r.get::<_, String>(0)?, hash))
    })?;
    let mut valid = Vec::new();
    for row in rows {
        let (name, hash) = row?;
        // A hash of another length cannot be one this module wrote: never matches.
        if let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) {
            valid.push(Valid { name, hash });
        }
    }
    Ok(valid)
}

/// The name of the credential whose secret is `presented`, among `valid`. Every entry
/// is compared, in constant time, so the answer's timing says nothing about which one
/// (or how much of one) matched.
pub(crate) fn find<'a>(valid: &'a [Valid], presented: &str) -> Option<&'a str> {
    use subtle::ConstantTimeEq as _;
    let digest = sha256(presented.trim().as_bytes());
    let mut found = None;
    for credential in valid {
        if bool::from(digest.ct_eq(&credential.hash)) {
            found = Some(credential.name.as_str());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real database on a temp file (the schema is `db`'s).
    fn db() -> (tempfile::TempDir, crate::store::db::Db) {
        let dir = tempfile::TempDir::new().unwrap();
        let db = crate::store::db::Db::open(&dir.path().join("test.db")).unwrap();
        (dir, db)
    }

    #[test]
    fn a_secret_is_found_until_its_credential_is_revoked() {
        let (_dir, db) = db();
        let conn = db.lock();
        let one = create(&conn, "fleet-1", 10).unwrap();
        let two = create(&conn, "fleet-2", 11).unwrap();
        assert!(one.starts_with(PREFIX) && one.len() == PREFIX.len() + 43);
        let valid_now = valid(&conn).unwrap();
        assert_eq!(find(&valid_now, &one), Some("fleet-1"));
        assert_eq!(find(&valid_now, &two), Some("fleet-2"));
        assert_eq!(find(&valid_now, "ec_wrong"), None);
        assert!(revoke(&conn, "fleet-1", 12).unwrap());
        assert!(!revoke(&conn, "fleet-1", 13).unwrap());
        let valid_now = valid(&conn).unwrap();
        assert_eq!(find(&valid_now, &one), None);
        assert_eq!(find(&valid_now, &two), Some("fleet-2"));
        let listed = list(&conn).unwrap();
        assert_eq!(listed[0].revoked_at, Some(12));
        assert_eq!(listed[1].revoked_at, None);
    }

    #[test]
    fn names_are_checked_and_never_reused() {
        let (_dir, db) = db();
        let conn = db.lock();
        create(&conn, "a", 1).unwrap();
        assert!(matches!(create(&conn, "a", 2), Err(Error::Exists(_))));
        revoke(&conn, "a", 3).unwrap();
        assert!(matches!(create(&conn, "a", 4), Err(Error::Exists(_))));
        for bad in ["", "has space", "x/y", &"n".repeat(MAX_NAME + 1)] {
            assert!(
                matches!(create(&conn, bad, 1), Err(Error::BadName(_))),
                "{bad}"
            );
        }
        assert!(matches!(revoke(&conn, "nope", 1), Err(Error::Unknown(_))));
        assert!(default_name().starts_with("edge-"));
    }
}
