//! The real control plane, run as a child process on a free port with its own data dir.

use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::{TempDir, eventually, free_port, http, paths};

/// A running (or stopped) control plane.
#[derive(Debug)]
pub struct ControlPlane {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its data directory.
    pub dir: TempDir,
    admin: String,
    edge_credential: String,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

impl ControlPlane {
    /// Starts a control plane on a fresh data dir and waits until it answers. Its feed
    /// requires an edge credential ([`edge_credential`](ControlPlane::edge_credential)).
    pub fn start() -> ControlPlane {
        // New keys sign at once after a rotation: the edge tests meet a key the filter
        // has not fetched yet (production publishes keys before they sign).
        ControlPlane::start_with(
            free_port(),
            vec![
                ("CP_KEY_ACTIVATION_SECONDS".into(), "0".into()),
                ("CP_EDGE_CREDENTIALS".into(), "required".into()),
            ],
        )
    }

    /// Starts a control plane on `port` with extra environment (e.g. `REDIS_URL`). Unless
    /// `env` names them, its issuer is [`tokens::ISSUER`](crate::tokens::ISSUER) (what the
    /// tests' filter config accepts and their own tokens say) and its public URL is
    /// `http://127.0.0.1:PORT`, where the metadata's endpoints then point.
    pub fn start_with(port: u16, env: Vec<(String, String)>) -> ControlPlane {
        ControlPlane::start_seeded(port, env, |_| {})
    }

    /// Like [`start_with`](ControlPlane::start_with), with `seed` writing into the data
    /// dir before the first start (e.g. a replica's copy of its sibling's `admin.secret`).
    pub fn start_seeded(
        port: u16,
        mut env: Vec<(String, String)>,
        seed: impl FnOnce(&std::path::Path),
    ) -> ControlPlane {
        let named = |env: &[(String, String)], key: &str| env.iter().any(|(k, _)| k == key);
        if !named(&env, "CP_ISSUER") {
            env.push(("CP_ISSUER".into(), crate::tokens::ISSUER.into()));
        }
        if !named(&env, "CP_PUBLIC_URL") {
            env.push(("CP_PUBLIC_URL".into(), format!("http://127.0.0.1:{port}")));
        }
        let mut cp = ControlPlane {
            port,
            dir: TempDir::new("control-plane"),
            admin: String::new(),
            edge_credential: String::new(),
            child: None,
            env,
        };
        // Made before the first start, as the launcher does.
        cp.edge_credential = cp.edge_credential_command(&["--name", "e2e"]);
        seed(&cp.dir.0.join("data"));
        cp.resume();
        cp
    }

    /// The edge credential `e2e` made at the first start.
    pub fn edge_credential(&self) -> &str {
        &self.edge_credential
    }

    /// Runs `control-plane edge-credential ARGS` on its data dir; returns its stdout,
    /// trimmed (for a new credential: the secret).
    pub fn edge_credential_command(&self, args: &[&str]) -> String {
        let output = Command::new(paths::control_plane_bin())
            .arg("edge-credential")
            .arg("--data-dir")
            .arg(self.dir.0.join("data"))
            .args(args)
            .output()
            .expect("cannot run control-plane edge-credential");
        assert!(
            output.status.success(),
            "edge-credential {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The admin credential.
    pub fn admin_secret(&self) -> &str {
        &self.admin
    }

    /// The last `lines` lines of the process's log (stderr), for a failure message.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.0.join("stderr.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts the process again on the same port and data dir.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "control plane already running");
        let log = |name: &str| {
            File::options()
                .create(true)
                .append(true)
                .open(self.dir.0.join(name))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null())
        };
        let data = self.dir.0.join("data");
        let child = Command::new(paths::control_plane_bin())
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&data)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"))
            .spawn()
            .expect("cannot start the control plane");
        self.child = Some(child);
        let port = self.port;
        let up = eventually(Duration::from_secs(60), || {
            http::get(port, "/health", &[])
                .ok()
                .filter(|r| r.status == 200)
        });
        assert!(
            up.is_some(),
            "control plane did not become healthy; logs in {}",
            self.dir.0.display()
        );
        self.admin = std::fs::read_to_string(data.join("admin.secret"))
            .map(|s| s.trim().to_owned())
            .expect("no admin.secret in the control plane's data dir");
    }

    /// Stops the process the way an operator's restart does: SIGTERM, then it finishes
    /// the requests in progress and exits (SIGKILL after 30 s).
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let exited = eventually(Duration::from_secs(30), || child.try_wait().ok().flatten());
            if exited.is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// Kills the process (a real outage: no graceful shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn admin_header(&self) -> String {
        format!("Bearer {}", self.admin)
    }

    /// The JWKS it publishes.
    pub fn jwks(&self) -> Value {
        let r = http::get(self.port, "/.well-known/jwks.json", &[]).expect("GET jwks");
        assert_eq!(r.status, 200, "jwks: {}", r.text());
        r.json()
    }

    /// Issues an access token for `subject`.
    pub fn issue(&self, subject: &str) -> String {
        let r = http::post_json(
            self.port,
            "/token",
            &[("authorization", &self.admin_header())],
            &json!({"subject": subject}),
        )
        .expect("POST /token");
        assert!(
            r.status == 200 || r.status == 201,
            "token: {} {}",
            r.status,
            r.text()
        );
        r.json()["access_token"]
            .as_str()
            .map(str::to_owned)
            .expect("no access_token in the /token answer")
    }

    /// Rotates the signing keys (`POST /admin/keys/rotate`).
    pub fn rotate_keys(&self) {
        let r = http::post_json(
            self.port,
            "/admin/keys/rotate",
            &[("authorization", &self.admin_header())],
            &json!({}),
        )
        .expect("POST /admin/keys/rotate");
        assert_eq!(r.status, 200, "rotate: {}", r.text());
    }

    /// Revokes `value` of `kind` (`jti`, `sub`, `kid`, `sid`).
    pub fn revoke(&self, kind: &str, value: &str) {
        let r = http::post_json(
            self.port,
            "/revoke",
            &[("authorization", &self.admin_header())],
            &json!({"type": format!("revoke_{kind}"), "value": value}),
        )
        .expect("POST /revoke");
        assert!(
            (200..300).contains(&r.status),
            "revoke: {} {}",
            r.status,
            r.text()
        );
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}
