//! The README's run command and walk-through, headless: `scripts/run.sh` starts the system
//! (one region, then two), the walk-through block of the README runs verbatim against it
//! with `bash`, and SIGTERM stops everything. Also: a port in use is a clear error.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use tests::services::redis_command;
use tests::{TempDir, paths};

/// The shell block between the README's walk-through markers.
fn walkthrough() -> String {
    let readme = std::fs::read_to_string(paths::workspace().join("README.md")).expect("README");
    let start = readme
        .find("<!-- walkthrough -->")
        .expect("walk-through start marker");
    let end = readme
        .find("<!-- /walkthrough -->")
        .expect("walk-through end marker");
    let block = &readme[start..end];
    let code = block
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(code, _)| code)
        .expect("a sh block between the markers");
    code.to_owned()
}

struct Launched {
    child: Child,
    output: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Launched {
    fn start(args: &[String]) -> Launched {
        let mut child = Command::new("bash")
            .arg(paths::workspace().join("scripts/run.sh"))
            .args(args)
            .env("CARGO_TARGET_DIR", paths::target_dir())
            .env("ENVOY_BIN", paths::envoy_bin())
            .current_dir(paths::workspace())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run scripts/run.sh");
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Launched {
            child,
            output: rx,
            log: Vec::new(),
        }
    }

    /// Waits for the line `ready` alone (a line such as "error: ... did not answer at
    /// http://.../ready" also holds the word); false at the first `error:` line or when
    /// `limit` passes.
    fn wait_for_ready(&mut self, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.output.recv_timeout(left) {
                Ok(line) => {
                    let (ready, error) = (line == "ready", line.starts_with("error"));
                    self.log.push(line);
                    if ready || error {
                        return ready;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// SIGTERM, as Ctrl-C would; true if it exited within 20 s.
    fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..200 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        // TERM first, so the launcher stops what it started (a failed test killing it
        // at once left its Envoys and control planes running).
        if !self.terminate() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn closed(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
}

/// `n` free base ports for the launcher, each with its `+ offsets` free too and no two
/// of all those the same (the launcher takes a base port + 1 for region b, + 10 for
/// replica 2). They are taken below the kernel's ephemeral range (32768 and up): a port
/// from that range that is free now can become the local port of any outgoing
/// connection (the control planes', the broker's, curl's) before the launcher's Envoy
/// binds it, which then fails to start.
fn launcher_ports(n: usize, offsets: &[u16]) -> Vec<u16> {
    let bindable = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    let mut taken = std::collections::HashSet::new();
    let mut ports = Vec::with_capacity(n);
    // A start that differs per run (process id and time), then a walk through the range.
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let mut candidate = 20_000 + (seed % 12_000) as u16;
    while ports.len() < n {
        candidate = if candidate >= 32_000 {
            20_000
        } else {
            candidate + 7
        };
        let all: Vec<u16> = std::iter::once(0)
            .chain(offsets.iter().copied())
            .map(|o| candidate + o)
            .collect();
        if all.iter().all(|p| !taken.contains(p) && bindable(*p)) {
            taken.extend(all);
            ports.push(candidate);
        }
    }
    ports
}

/// One launcher at a time: each starts a whole system on a small machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run_walkthrough(regions: u8) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let data = TempDir::new("launcher-data");
    let ports = launcher_ports(7, &[1]);
    // Region b takes each base port + 1: keep those free too.
    let base = |i: usize| ports[i];
    let mut args: Vec<String> = vec![
        "--no-build".into(),
        "--profile".into(),
        "debug".into(),
        "--regions".into(),
        regions.to_string(),
        "--data-dir".into(),
        data.0.display().to_string(),
        "--cp-port".into(),
        base(0).to_string(),
        "--envoy-port".into(),
        base(1).to_string(),
        "--envoy-admin-port".into(),
        base(2).to_string(),
        "--upstream-port".into(),
        base(3).to_string(),
        "--cp-admin-port".into(),
        base(6).to_string(),
    ];
    if regions == 2 {
        args.extend([
            "--redis-port".into(),
            base(4).to_string(),
            "--kafka-port".into(),
            base(5).to_string(),
        ]);
    }
    let mut launched = Launched::start(&args);
    assert!(
        launched.wait_for_ready(Duration::from_secs(180)),
        "the launcher never said ready:\n{}",
        launched.log.join("\n")
    );
    let admin_file = if regions == 1 {
        data.0.join("admin.secret")
    } else {
        data.0.join("a/admin.secret")
    };
    // The control plane refuses a data dir others can enter: the launcher makes the one
    // it is given private (TempDir made it 0755).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &std::path::Path| {
            let mode = std::fs::metadata(p).expect("stat").permissions().mode();
            format!("{:o}", mode & 0o777)
        };
        assert_eq!(mode(&data.0), "700", "the data dir");
        assert_eq!(
            mode(admin_file.parent().unwrap()),
            "700",
            "the region's dir"
        );
        assert_eq!(mode(&admin_file), "600", "the admin credential");
    }
    // Each control plane also serves its admin listener (its own connection cap).
    for i in 0..u16::from(regions) {
        let health = tests::http::get(base(6) + i, "/health", &[]).expect("admin listener");
        assert_eq!(health.status, 200, "admin listener of region {i}");
    }
    let edge = base(1) + u16::from(regions) - 1;
    let out = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(walkthrough())
        .env("CP", format!("http://127.0.0.1:{}", base(0)))
        .env("EDGE", format!("http://127.0.0.1:{edge}"))
        .env("ADMIN_FILE", &admin_file)
        .current_dir(paths::workspace())
        .output()
        .expect("run the walk-through");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("walk-through ({regions} region(s)):\n{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(r#""x-auth-sub": "alice""#), "{stdout}");
    assert!(stdout.contains(r#""published":true"#), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("401"), "{stdout}");
    if regions == 2 {
        redis_needs_each_regions_password(&data.0, base(4));
    }
    assert!(launched.terminate(), "the launcher did not stop on SIGTERM");
    for port in [base(0), base(1), base(3)] {
        assert!(
            closed(port),
            "port {port} still open after the launcher stopped"
        );
    }
    assert!(admin_file.exists(), "the data dir is kept");
}

/// The launcher's Redis lets nobody in without a password; each region logs in as its
/// own user with the password in its data dir, and wrote the walk-through's revocation.
fn redis_needs_each_regions_password(data: &std::path::Path, port: u16) {
    let anonymous = redis_command(port, None, 0, &["EXISTS", "revoked:sub:alice"]);
    assert!(anonymous.starts_with("-NOAUTH"), "{anonymous}");
    for (db, region) in [(0, "a"), (1, "b")] {
        let secret = data.join(region).join("redis.secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&secret)
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{}", secret.display());
        }
        let password = std::fs::read_to_string(&secret).expect("the region's Redis password");
        let user = format!("cp-{region}");
        let login = Some((user.as_str(), password.trim()));
        // Region b applies the revocation from the broker a moment later.
        let written = tests::eventually(Duration::from_secs(10), || {
            redis_command(port, login, db, &["EXISTS", "revoked:sub:alice"])
                .starts_with(":1")
                .then_some(())
        });
        assert!(written.is_some(), "region {region} never wrote to Redis");
        let wrong = redis_command(port, Some((user.as_str(), "guess")), db, &["PING"]);
        assert!(wrong.starts_with("-WRONGPASS"), "{wrong}");
    }
}

#[test]
fn the_readme_walkthrough_works_against_the_launcher_with_one_region() {
    run_walkthrough(1);
}

#[test]
fn the_readme_walkthrough_works_across_two_regions() {
    run_walkthrough(2);
}

/// `--replicas 2`: two control planes for the region, the Envoy failing over between them.
/// Killing replica 1 (its pid file, as the launcher prints) leaves the edge serving, and
/// a revocation made at replica 2 then reaches it.
#[test]
fn the_launcher_runs_two_replicas_and_its_edge_survives_killing_one() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let data = TempDir::new("launcher-replicas");
    // Replica 2 listens on the base ports + 10.
    let ports = launcher_ports(7, &[10]);
    let (cp, cp_admin, envoy, envoy_admin) = (ports[0], ports[1], ports[2], ports[3]);
    let mut args: Vec<String> = ["--no-build", "--profile", "debug", "--replicas", "2"]
        .map(String::from)
        .to_vec();
    for (flag, port) in [
        ("--cp-port", cp),
        ("--cp-admin-port", cp_admin),
        ("--envoy-port", envoy),
        ("--envoy-admin-port", envoy_admin),
        ("--upstream-port", ports[4]),
        ("--redis-port", ports[5]),
        ("--kafka-port", ports[6]),
    ] {
        args.extend([flag.to_owned(), port.to_string()]);
    }
    args.extend(["--data-dir".to_owned(), data.0.display().to_string()]);
    let mut launched = Launched::start(&args);
    assert!(
        launched.wait_for_ready(Duration::from_secs(180)),
        "the launcher never said ready:\n{}",
        launched.log.join("\n")
    );
    let secret = |dir: &std::path::Path| {
        std::fs::read_to_string(dir.join("admin.secret"))
            .expect("admin.secret")
            .trim()
            .to_owned()
    };
    let (one, two) = (secret(&data.0), secret(&data.0.join("replica-2")));
    assert_eq!(one, two, "the replicas share the admin credential");
    let issue = |port: u16, admin: &str, subject: &str| {
        let reply = tests::http::post_json(
            port,
            "/token",
            &[("authorization", &format!("Bearer {admin}"))],
            &serde_json::json!({ "subject": subject }),
        )
        .expect("POST /token");
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()["access_token"]
            .as_str()
            .expect("token")
            .to_owned()
    };
    let status =
        |token: &str| tests::http::get_with_token(envoy, "/", token).map_or(0, |r| r.status);
    let (first, second) = (issue(cp, &one, "one"), issue(cp + 10, &two, "two"));
    let served = tests::eventually(Duration::from_secs(30), || {
        (status(&first) == 200 && status(&second) == 200).then_some(())
    });
    assert!(
        served.is_some(),
        "the edge does not accept both replicas' tokens"
    );
    // A refresh session made at replica 1 refreshes at replica 2 (passed to replica 1).
    let created = tests::http::post_json(
        cp,
        "/token/refresh/create",
        &[("authorization", &format!("Bearer {one}"))],
        &serde_json::json!({ "subject": "roaming" }),
    )
    .expect("POST /token/refresh/create");
    assert_eq!(created.status, 200, "{}", created.text());
    let refreshed = tests::http::post_json(
        cp + 10,
        "/token/refresh",
        &[],
        &serde_json::json!({ "refresh_token": created.json()["refresh_token"] }),
    )
    .expect("POST /token/refresh at replica 2");
    assert_eq!(refreshed.status, 200, "{}", refreshed.text());
    let nonce_secret = |dir: &std::path::Path| std::fs::read(dir.join("dpop-nonce.secret"));
    assert_eq!(
        nonce_secret(&data.0).expect("dpop-nonce.secret"),
        nonce_secret(&data.0.join("replica-2")).expect("dpop-nonce.secret of replica 2"),
        "the replicas share the DPoP nonce secret"
    );

    let pid = std::fs::read_to_string(data.0.join("run/control-plane-a.pid")).expect("pid file");
    let killed = Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let jti = tests::tokens::payload(&first)["jti"]
        .as_str()
        .expect("jti")
        .to_owned();
    let revoked = tests::http::post_json(
        cp + 10,
        "/revoke",
        &[("authorization", &format!("Bearer {two}"))],
        &serde_json::json!({ "type": "revoke_jti", "value": jti }),
    )
    .expect("POST /revoke at replica 2");
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    let refused = tests::eventually(Duration::from_secs(30), || {
        assert_eq!(
            status(&second),
            200,
            "a valid token refused during the failover"
        );
        (status(&first) == 401).then_some(())
    });
    assert!(
        refused.is_some(),
        "the revocation at replica 2 never reached the edge:\n{}",
        launched.log.join("\n")
    );
    assert!(
        launched.child.try_wait().expect("wait").is_none(),
        "the launcher stopped"
    );
    assert!(launched.terminate(), "the launcher did not stop on SIGTERM");
}

#[test]
fn a_port_in_use_is_a_clear_error_naming_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let data = TempDir::new("launcher-busy");
    let out = Command::new("bash")
        .arg(paths::workspace().join("scripts/run.sh"))
        .args(["--no-build", "--profile", "debug", "--data-dir"])
        .arg(&data.0)
        .args(["--upstream-port", &port.to_string()])
        .env("CARGO_TARGET_DIR", paths::target_dir())
        .output()
        .expect("run scripts/run.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("port {port} is already in use"))
            && stderr.contains("--upstream-port"),
        "{stderr}"
    );
}

fn read(path: &str) -> String {
    std::fs::read_to_string(paths::workspace().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn docker_compose_uses_the_names_ports_and_paths_of_the_code_and_the_launcher() {
    let compose = read("docker-compose.yml");
    let launcher = read("scripts/run.sh");
    let env_example = read("control-plane/.env.example");
    let config = read("control-plane/src/config.rs");
    let dockerfile = read("Dockerfile");
    let envoy = read("envoy/compose.yaml");
    let routes = read("control-plane/src/http/mod.rs");
    // Every variable compose sets is one the code reads, the launcher sets, and
    // .env.example documents.
    for var in [
        "REGION",
        "KAFKA_BOOTSTRAP",
        "REDIS_URL",
        "PEER_JWKS",
        "CP_KAFKA_FETCH_WAIT_MS",
        "CP_KAFKA_GROUP",
        "CP_REPLICA_URLS",
        "CP_EDGE_CREDENTIALS",
    ] {
        assert!(
            compose.contains(&format!("{var}: ")),
            "compose does not set {var}"
        );
        assert!(
            launcher.contains(&format!("{var}=")),
            "the launcher does not set {var}"
        );
        assert!(
            env_example.contains(var),
            ".env.example does not document {var}"
        );
        assert!(
            config.contains(&format!("\"{var}\"")),
            "the code does not read {var}"
        );
    }
    // Redis: the launcher's ACL rules for each region's user, the default user off, and
    // each region logs in as its own user.
    let rules = tests::services::launcher_redis_rules();
    let redis_command = compose
        .split_once("  redis:\n")
        .and_then(|(_, rest)| rest.split_once("\n  cp-a:"))
        .map(|(redis, _)| redis)
        .expect("a redis service before cp-a");
    assert!(redis_command.contains(r#"--user, default, "off""#));
    for region in ["a", "b"] {
        let quoted = |t: &str| {
            if t.starts_with(['~', '>']) || t.contains('|') {
                format!("\"{t}\"")
            } else {
                t.to_owned()
            }
        };
        let user = [
            "--user".to_owned(),
            format!("cp-{region}"),
            "\"on\"".to_owned(),
            format!(
                "\">${{REDIS_PASSWORD_{}:-change-me-redis-{region}}}\"",
                region.to_uppercase()
            ),
        ]
        .into_iter()
        .chain(rules.split_whitespace().map(quoted))
        .collect::<Vec<_>>()
        .join(", ");
        assert!(
            redis_command.contains(&user),
            "compose's redis lacks {user}"
        );
        assert!(
            compose.contains(&format!(
                "REDIS_URL: redis://cp-{region}:${{REDIS_PASSWORD_"
            )),
            "region {region} logs in to Redis"
        );
    }
    // The launcher's default ports are compose's host ports.
    for (default, published) in [
        ("CP_PORT=8000", "127.0.0.1:8000:8000"),
        ("CP_PORT=8000", "127.0.0.1:8001:8000"),
        ("ENVOY_PORT=10000", "127.0.0.1:10000:10000"),
        ("ENVOY_PORT=10000", "127.0.0.1:10001:10000"),
        ("ADMIN_PORT=9901", "127.0.0.1:9901:9901"),
        ("ADMIN_PORT=9901", "127.0.0.1:9902:9901"),
        ("UPSTREAM_PORT=8081", "127.0.0.1:8081:8081"),
        ("CP_ADMIN_PORT=8100", "127.0.0.1:8100:8100"),
        ("CP_ADMIN_PORT=8100", "127.0.0.1:8101:8100"),
    ] {
        assert!(launcher.contains(default), "launcher default {default}");
        assert!(compose.contains(published), "compose publishes {published}");
    }
    // Paths: the peers' key route exists, the data volume is where the image keeps its
    // data, the Envoy config loads the wasm where the image puts it.
    assert!(compose.contains("/v1/region/jwks") && routes.contains("\"/v1/region/jwks\""));
    assert!(compose.contains(":/data]") && dockerfile.contains("\"--data-dir\", \"/data\""));
    assert!(
        dockerfile.contains("/etc/envoy/edge_filter.wasm")
            && envoy.contains("filename: /etc/envoy/edge_filter.wasm")
    );
    assert!(compose.contains("http://127.0.0.1:8000/ready") && routes.contains("\"/ready\""));
    for target in ["control-plane", "envoy", "demo-upstream"] {
        assert!(
            dockerfile.contains(&format!("AS {target}")),
            "Dockerfile target {target}"
        );
        assert!(
            compose.contains(&format!("target: {target}")),
            "compose builds {target}"
        );
    }
}
