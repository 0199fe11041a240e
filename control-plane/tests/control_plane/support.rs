//! `TestApp`: a region on a temp data dir, driven in-process (tower `oneshot`) or over
//! TCP (served on 127.0.0.1:0), plus helpers to run the real binary.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use axum::body::Body;
use axum::http::{HeaderMap, Request};
use std::sync::Arc;

use control_plane::LocalBus;
use control_plane::config::Settings;
use control_plane::{AppState, Region};
use control_plane::{MemoryCache, RevocationCache};
use serde_json::{Value, json};
use shared::claims::TYP_ACCESS_TOKEN;
use shared::jwk::JwkSet;
use shared::{AccessClaims, Keyring};
use tempfile::TempDir;
use tower::ServiceExt as _;

/// How requests reach the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    InProcess,
    Tcp,
}

pub(crate) struct TestApp {
    dir: TempDir,
    pub(crate) state: AppState,
    pub(crate) secret: String,
    addr: Option<SocketAddr>,
    http: reqwest::Client,
}

/// A response, whichever way it came.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts the one error body shape and returns its description.
    pub(crate) fn error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert!(
            self.header("content-type").starts_with("application/json"),
            "error content-type: {}",
            self.header("content-type")
        );
        let body = self.json();
        assert_eq!(body["error"], code, "body: {body}");
        body["error_description"]
            .as_str()
            .expect("error_description")
            .to_owned()
    }
}

impl TestApp {
    pub(crate) async fn new(transport: Transport) -> TestApp {
        TestApp::with_settings(transport, |_| {}).await
    }

    pub(crate) async fn with_settings(
        transport: Transport,
        tune: impl FnOnce(&mut Settings),
    ) -> TestApp {
        TestApp::with_cache(transport, tune, Arc::new(MemoryCache::new())).await
    }

    /// An app whose region uses `cache` (e.g. one that always fails).
    pub(crate) async fn with_cache(
        transport: Transport,
        tune: impl FnOnce(&mut Settings),
        cache: Arc<dyn RevocationCache>,
    ) -> TestApp {
        let dir = TempDir::new().expect("temp dir");
        let mut settings = Settings::new(dir.path().join("data"));
        tune(&mut settings);
        let region = Region::open_with(settings, cache, Arc::new(LocalBus)).expect("region opens");
        let secret =
            control_plane::read_admin_secret(&dir.path().join("data")).expect("admin secret");
        let state = AppState::new(region);
        let addr = match transport {
            Transport::InProcess => None,
            Transport::Tcp => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let addr = listener.local_addr().expect("addr");
                let served = state.clone();
                tokio::spawn(async move {
                    control_plane::serve(listener, served, std::future::pending()).await
                });
                Some(addr)
            }
        };
        TestApp {
            dir,
            state,
            secret,
            addr,
            http: reqwest::Client::new(),
        }
    }

    /// One app of each transport.
    pub(crate) async fn both() -> Vec<TestApp> {
        vec![
            TestApp::new(Transport::InProcess).await,
            TestApp::new(Transport::Tcp).await,
        ]
    }

    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub(crate) fn is_tcp(&self) -> bool {
        self.addr.is_some()
    }

    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.addr.expect("served over TCP"))
    }

    pub(crate) async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Reply {
        match self.addr {
            None => {
                let mut builder = Request::builder().method(method).uri(path);
                for (k, v) in headers {
                    builder = builder.header(*k, *v);
                }
                let request = match body {
                    Some((ctype, bytes)) => builder
                        .header("content-type", ctype)
                        .body(Body::from(bytes)),
                    None => builder.body(Body::empty()),
                }
                .expect("request");
                let response = control_plane::app(self.state.clone())
                    .oneshot(request)
                    .await
                    .expect("infallible");
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .expect("body")
                    .to_vec();
                Reply {
                    status,
                    headers,
                    body,
                }
            }
            Some(addr) => {
                let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
                let mut builder = self.http.request(method, format!("http://{addr}{path}"));
                for (k, v) in headers {
                    builder = builder.header(*k, *v);
                }
                if let Some((ctype, bytes)) = body {
                    builder = builder.header("content-type", ctype).body(bytes);
                }
                let response = builder.send().await.expect("send");
                let status = response.status().as_u16();
                let mut headers = HeaderMap::new();
                for (k, v) in response.headers() {
                    if let (Ok(name), Ok(value)) = (
                        axum::http::HeaderName::from_bytes(k.as_str().as_bytes()),
                        axum::http::HeaderValue::from_bytes(v.as_bytes()),
                    ) {
                        headers.insert(name, value);
                    }
                }
                let body = response.bytes().await.expect("body").to_vec();
                Reply {
                    status,
                    headers,
                    body,
                }
            }
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], None).await
    }

    pub(crate) async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.request(
            "POST",
            path,
            &[],
            Some(("application/json", body.to_string().into_bytes())),
        )
        .await
    }

    pub(crate) async fn admin_json(&self, path: &str, body: &Value) -> Reply {
        let auth = format!("Bearer {}", self.secret);
        self.request(
            "POST",
            path,
            &[("authorization", &auth)],
            Some(("application/json", body.to_string().into_bytes())),
        )
        .await
    }

    pub(crate) async fn form(&self, path: &str, form: &str, admin: bool) -> Reply {
        let auth = format!("Bearer {}", self.secret);
        let headers: &[(&str, &str)] = if admin {
            &[("authorization", &auth)]
        } else {
            &[]
        };
        self.request(
            "POST",
            path,
            headers,
            Some((
                "application/x-www-form-urlencoded",
                form.as_bytes().to_vec(),
            )),
        )
        .await
    }

    /// Issues a token through the API; returns (token, jti).
    pub(crate) async fn issue(&self, subject: &str, claims: Value) -> (String, String) {
        let reply = self
            .admin_json(
                "/token",
                &json!({ "subject": subject, "additional_claims": claims }),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let body = reply.json();
        (
            body["access_token"].as_str().expect("token").to_owned(),
            body["jti"].as_str().expect("jti").to_owned(),
        )
    }

    pub(crate) async fn validate(&self, token: &str) -> Value {
        let reply = self
            .post_json("/token/validate", &json!({ "token": token }))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()
    }

    pub(crate) async fn revoke(&self, kind: &str, value: &str) -> Value {
        let reply = self
            .admin_json(
                "/revoke",
                &json!({ "type": format!("revoke_{kind}"), "value": value }),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()
    }

    /// The keyring an outsider builds from `/.well-known/jwks.json`.
    pub(crate) async fn jwks_keyring(&self) -> Keyring {
        let reply = self.get("/.well-known/jwks.json").await;
        assert_eq!(reply.status, 200);
        Keyring::from_jwks(&JwkSet::parse(&reply.body).expect("jwks")).expect("keyring")
    }

    /// Signs arbitrary claims with the region's token key (for expired, future, foreign
    /// tokens that the API would never mint).
    pub(crate) fn forge(&self, edit: impl FnOnce(&mut AccessClaims)) -> String {
        self.forge_typed(TYP_ACCESS_TOKEN, edit)
    }

    /// [`TestApp::forge`] with another header `typ`.
    pub(crate) fn forge_typed(&self, typ: &str, edit: impl FnOnce(&mut AccessClaims)) -> String {
        let keys = self.state.region.keys();
        let now = control_plane::now();
        let mut claims = AccessClaims {
            iss: self.state.region.settings().issuer.clone(),
            sub: "forged".into(),
            aud: shared::Audience::One(self.state.region.settings().audience.clone()),
            exp: now + 600,
            iat: now,
            nbf: now,
            jti: shared::random::id(),
            sid: None,
            scope: None,
            client_id: None,
            cnf: None,
            extra: Default::default(),
        };
        edit(&mut claims);
        let kid = keys.token_key.kid();
        shared::jws::sign(
            &keys.token_key,
            typ,
            Some(&kid),
            None,
            &serde_json::to_vec(&claims).expect("claims"),
        )
        .expect("sign")
    }
}

/// The real binary.
pub(crate) fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_control-plane"));
    // The CLI reads CP_* variables: keep the caller's environment out of the tests.
    for (key, _) in std::env::vars() {
        if key.starts_with("CP_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("CP_LOG", "info");
    cmd
}

/// Runs a CLI command on a data dir; returns (success, stdout, stderr).
pub(crate) fn run_cli(data_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let output = binary()
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("run the binary");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A `control-plane serve` child process on a free port.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) url: String,
}

impl Server {
    pub(crate) fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[], None)
    }

    /// Starts `serve` with extra flags and, if given, an open-files limit (soft and hard)
    /// set by the shell before it execs the binary.
    pub(crate) fn start_with(data_dir: &Path, flags: &[&str], open_files: Option<u64>) -> Server {
        let binary = binary();
        let mut command = match open_files {
            None => binary,
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(binary.get_program());
                for (key, value) in binary.get_envs() {
                    match value {
                        Some(value) => sh.env(key, value),
                        None => sh.env_remove(key),
                    };
                }
                sh
            }
        };
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the server");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on http://")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line[at + "listening on ".len()..].trim().to_owned());
                }
            }
        });
        let url = rx.recv().expect("the server logs its address");
        Server { child, url }
    }

    /// SIGKILL: no shutdown hook runs.
    pub(crate) fn kill_9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking JSON request for tests that talk to a child process.
pub(crate) fn blocking_json(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let client = reqwest::blocking::Client::new();
    let mut request = client
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
            url,
        )
        .json(body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().expect("send");
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}
