//! The data directory's permission rule: it holds the signing keys and the admin
//! credential, so it is mode 0700 and every file with key material in it is 0600. A
//! missing directory is created that way; an existing one that group or others can
//! enter, or a key file they can read or write, stops the control plane at start-up
//! with the `chmod` that fixes it (the way PostgreSQL treats its data directory).
//!
//! Unix only: elsewhere the directory is created and nothing is checked.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The files of a data directory that hold keys or credentials: the database (signing
/// seeds in its `keys` table) with its WAL, shared-memory and rollback-journal files, the
/// admin credential and the DPoP nonce secret.
pub(crate) const SECRET_FILES: &[&str] = &[
    "control-plane.db",
    "control-plane.db-wal",
    "control-plane.db-shm",
    "control-plane.db-journal",
    "admin.secret",
    "dpop-nonce.secret",
];

/// Why a data directory was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DataDirError {
    /// The directory (or a parent) could not be created.
    #[error("cannot create data directory \"{}\"", .path.display())]
    Create {
        /// The data directory.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: io::Error,
    },
    /// The database file could not be created with its restricted mode.
    #[error("cannot create \"{}\"", .path.display())]
    CreateFile {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: io::Error,
    },
    /// The mode of a path could not be read.
    #[error("cannot read the permissions of \"{}\"", .path.display())]
    Inspect {
        /// The path.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: io::Error,
    },
    /// The data directory path names something else than a directory.
    #[error("data directory \"{}\" is not a directory", .path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// Group or others can enter or list the data directory.
    #[error(
        "data directory \"{}\" has group or other access (mode {mode:04o}); \
         it holds the signing keys; fix it with: chmod 0700 {}",
        .path.display(),
        shell_quote(.path)
    )]
    DirectoryOpen {
        /// The data directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Group or others can read or write a file holding keys or credentials.
    #[error(
        "\"{}\" holds keys or credentials but has group or other access (mode {mode:04o}); \
         fix it with: chmod 0600 {}",
        .path.display(),
        shell_quote(.path)
    )]
    FileOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Creates `dir` (mode 0700) if it is missing and the database file in it (mode 0600)
/// if that is missing, then [`check`]s the directory.
///
/// SQLite gives the `-wal` and `-shm` files the mode of the database file, so creating
/// the (empty) database file first keeps all three private whatever the umask of the
/// process that embeds the control plane.
pub(crate) fn prepare(dir: &Path) -> Result<(), DataDirError> {
    if !dir.exists() {
        create_dir(dir).map_err(|source| DataDirError::Create {
            path: dir.to_owned(),
            source,
        })?;
    }
    check(dir)?;
    let db = dir.join(crate::store::db::DB_FILE);
    match create_private_file(&db) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(DataDirError::CreateFile { path: db, source }),
    }
}

/// Refuses a data directory that group or others can enter or list, or in which they
/// can read or write one of the [`SECRET_FILES`]. Missing files are fine.
#[cfg(unix)]
pub(crate) fn check(dir: &Path) -> Result<(), DataDirError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = fs::metadata(dir).map_err(inspect(dir))?;
    if !meta.is_dir() {
        return Err(DataDirError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(DataDirError::DirectoryOpen {
            path: dir.to_owned(),
            mode,
        });
    }
    for name in SECRET_FILES {
        let path = dir.join(name);
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(inspect(&path)(e)),
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(DataDirError::FileOpen { path, mode });
        }
    }
    Ok(())
}

#[cfg(unix)]
fn inspect(path: &Path) -> impl FnOnce(io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Inspect {
        path: path.to_owned(),
        source,
    }
}

/// Nothing to check where there are no Unix permission bits.
#[cfg(not(unix))]
pub(crate) fn check(_dir: &Path) -> Result<(), DataDirError> {
    Ok(())
}

fn create_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Creates an empty file, mode 0600; fails if it exists.
fn create_private_file(path: &Path) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path).map(drop)
}

/// `path` as one shell word, so the suggested command can be pasted as is.
fn shell_quote(path: &Path) -> String {
    let text = path.to_string_lossy();
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@%=".contains(c));
    if plain {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_list_names_every_file_that_holds_keys_or_credentials() {
        let db = crate::store::db::DB_FILE;
        for name in [
            db.to_owned(),
            format!("{db}-wal"),
            format!("{db}-shm"),
            crate::region::ADMIN_FILE.to_owned(),
            crate::http::nonce::SECRET_FILE.to_owned(),
        ] {
            assert!(SECRET_FILES.contains(&name.as_str()), "{name}");
        }
    }

    #[test]
    fn a_missing_directory_is_created_private_with_a_private_database_file() {
        let tmp = tempfile::TempDir::new().unwrap();
        let dir = tmp.path().join("a").join("data");
        prepare(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(crate::store::db::DB_FILE)), 0o600);
        // Idempotent on what it made.
        prepare(&dir).unwrap();
    }

    #[test]
    fn a_directory_others_can_enter_is_refused_with_the_fix() {
        let tmp = tempfile::TempDir::new().unwrap();
        let dir = tmp.path().join("data");
        fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o711);
        let message = prepare(&dir).unwrap_err().to_string();
        assert!(message.contains("(mode 0711)"), "{message}");
        assert!(
            message.ends_with(&format!("fix it with: chmod 0700 {}", dir.display())),
            "{message}"
        );
        assert!(
            !dir.join(crate::store::db::DB_FILE).exists(),
            "nothing is written into a refused directory"
        );
    }

    #[test]
    fn a_key_file_others_can_read_is_refused_with_the_fix() {
        let tmp = tempfile::TempDir::new().unwrap();
        let dir = tmp.path().join("data");
        prepare(&dir).unwrap();
        let secret = dir.join(crate::region::ADMIN_FILE);
        fs::write(&secret, "x").unwrap();
        chmod(&secret, 0o640);
        let message = check(&dir).unwrap_err().to_string();
        assert!(
            message.ends_with(&format!("fix it with: chmod 0600 {}", secret.display())),
            "{message}"
        );
        chmod(&secret, 0o400);
        check(&dir).unwrap();
    }

    #[test]
    fn a_file_in_place_of_the_directory_is_refused() {
        let tmp = tempfile::TempDir::new().unwrap();
        let file = tmp.path().join("data");
        fs::write(&file, "").unwrap();
        let message = prepare(&file).unwrap_err().to_string();
        assert!(message.contains("is not a directory"), "{message}");
    }

    #[test]
    fn the_suggested_command_quotes_paths_the_shell_would_split() {
        assert_eq!(shell_quote(Path::new("./data")), "./data");
        assert_eq!(shell_quote(Path::new("/srv/my data")), "'/srv/my data'");
        assert_eq!(shell_quote(Path::new("it's")), r"'it'\''s'");
    }
}
