//! The data directory holds the signing keys: the real binary keeps it 0700 with its
//! files 0600 whatever umask it is started with, and refuses to start on one that group
//! or others can read, naming the `chmod` that fixes it.
#![cfg(unix)]

use std::io::{BufRead as _, BufReader, Read as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::binary;

/// The binary started by `sh` under the usual umask 022, with `args`.
fn under_umask_022(args: &[&str], data_dir: &Path) -> Command {
    let cp = binary();
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("umask 022 && exec \"$0\" \"$@\"")
        .arg(cp.get_program())
        .args(args)
        .arg("--data-dir")
        .arg(data_dir);
    for (key, value) in cp.get_envs() {
        match value {
            Some(value) => sh.env(key, value),
            None => sh.env_remove(key),
        };
    }
    sh
}

/// Runs `command` to its end; a process still running after 20 s (a server that
/// started when it should have refused) is killed and fails the test.
fn run_to_end(mut command: Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the binary");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("reap");
            panic!(
                "still running after 20 s instead of refusing the data dir; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A data dir made by a first `issue`, so it holds a database, keys and the secret.
fn initialised_data_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let output = run_to_end(under_umask_022(&["issue", "--subject", "alice"], &data));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (tmp, data)
}

/// Asserts that every command that opens the data dir fails with `expected` in its
/// error output and exits non-zero.
fn every_entry_point_refuses(data: &Path, expected: &str) {
    let commands: &[&[&str]] = &[
        &["serve", "--listen", "127.0.0.1:0"],
        &["issue", "--subject", "bob"],
        &["keys", "list"],
        &["audit", "verify"],
        &["audit", "tail"],
        &["audit", "export"],
        &["events", "export"],
    ];
    for args in commands {
        let output = run_to_end(under_umask_022(args, data));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{args:?} succeeded on a data dir others can read"
        );
        assert!(
            stderr.contains(expected),
            "{args:?}: the error names the fix `{expected}`:\n{stderr}"
        );
    }
    let backup = data.parent().unwrap().join("backup.db");
    let output = run_to_end({
        let mut c = under_umask_022(&["backup"], data);
        c.arg("--to").arg(&backup);
        c
    });
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(expected),
        "backup: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!backup.exists(), "no copy of the keys is made");
}

#[test]
fn a_server_started_under_umask_022_keeps_its_data_dir_0700_and_its_files_0600() {
    let tmp = tempfile::TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let mut child = under_umask_022(&["serve", "--listen", "127.0.0.1:0"], &data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the server");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut log = String::new();
    let listening = loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            break false;
        }
        log.push_str(&line);
        if line.contains("listening on http://") {
            break true;
        }
    };
    // While it runs, so the WAL and shared-memory files exist.
    let files: Vec<(String, u32)> = std::fs::read_dir(&data)
        .map(|entries| {
            entries
                .map(|entry| {
                    let entry = entry.unwrap();
                    (
                        entry.file_name().to_string_lossy().into_owned(),
                        mode(&entry.path()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let dir_mode = std::fs::metadata(&data).map(|m| m.permissions().mode() & 0o777);
    let _ = child.kill();
    let _ = child.wait();
    if !listening {
        let _ = stderr.read_to_string(&mut log);
        panic!("the server did not start:\n{log}");
    }
    assert_eq!(format!("{:o}", dir_mode.unwrap()), "700", "the data dir");
    for name in [
        "control-plane.db",
        "control-plane.db-wal",
        "control-plane.db-shm",
        "admin.secret",
    ] {
        assert!(
            files.iter().any(|(file, _)| file == name),
            "{name} is missing: {files:?}"
        );
    }
    for (name, mode) in &files {
        assert_eq!(
            mode & 0o077,
            0,
            "{name} has group or other access (mode {mode:04o})"
        );
    }
}

#[test]
fn a_cli_command_started_under_umask_022_creates_its_files_0600() {
    let (_tmp, data) = initialised_data_dir();
    assert_eq!(format!("{:o}", mode(&data)), "700");
    for name in ["control-plane.db", "admin.secret"] {
        assert_eq!(format!("{:o}", mode(&data.join(name))), "600", "{name}");
    }
}

#[test]
fn a_data_dir_others_can_enter_stops_every_entry_point_with_the_chmod_that_fixes_it() {
    let (_tmp, data) = initialised_data_dir();
    chmod(&data, 0o755);
    let fix = format!("chmod 0700 {}", data.display());
    every_entry_point_refuses(&data, &fix);
    let output = run_to_end(under_umask_022(&["keys", "list"], &data));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("data directory \"{}\"", data.display()))
            && stderr.contains("(mode 0755)"),
        "{stderr}"
    );
    // Following the advice is enough.
    chmod(&data, 0o700);
    let output = run_to_end(under_umask_022(&["keys", "list"], &data));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_fresh_data_dir_others_can_enter_is_refused_before_anything_is_written_in_it() {
    let tmp = tempfile::TempDir::new().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    chmod(&data, 0o755);
    let output = run_to_end(under_umask_022(
        &["serve", "--listen", "127.0.0.1:0"],
        &data,
    ));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("chmod 0700 {}", data.display())),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(&data).unwrap().count(),
        0,
        "no keys were written"
    );
}

#[test]
fn a_database_others_can_read_stops_every_entry_point_with_the_chmod_that_fixes_it() {
    let (_tmp, data) = initialised_data_dir();
    let db = data.join("control-plane.db");
    chmod(&db, 0o644);
    every_entry_point_refuses(&data, &format!("chmod 0600 {}", db.display()));
    chmod(&db, 0o600);
    let output = run_to_end(under_umask_022(&["audit", "verify"], &data));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn an_admin_secret_others_can_read_is_refused_with_the_chmod_that_fixes_it() {
    let (_tmp, data) = initialised_data_dir();
    let secret = data.join("admin.secret");
    chmod(&secret, 0o640);
    let output = run_to_end(under_umask_022(
        &["serve", "--listen", "127.0.0.1:0"],
        &data,
    ));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("chmod 0600 {}", secret.display())),
        "{stderr}"
    );
}
