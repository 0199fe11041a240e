//! Edge feed fan-out: parks N simulated edge pollers on one control plane (the release
//! binary, on a temp data dir), revokes M times, and reports per revocation the time from
//! the revoke call to the LAST poller holding an update that contains it, the control
//! plane's CPU per revocation (apart from this simulator's), its memory per parked poll,
//! and refused polls; then rotates the keys once and reports the time until the LAST
//! poller holds the new JWKS, and the control plane's CPU for that.
//!
//! Each poller speaks the filter's protocol over its own keep-alive HTTP/1.1 connection,
//! with the fleet's edge credential (the feed requires one) and its own instance name:
//! `GET /v1/edge/revocations?since=S&wait=30`, then again from the `x-edge-seq` it got;
//! when an update names another JWKS digest than the one it holds, it fetches
//! `/.well-known/jwks.json` first, as the filter does. Every distinct answer body is
//! verified once (ML-DSA-65 against the JWKS) and must bring a set to the sequence number
//! its header says.
//!
//! ```sh
//! cargo build --release -p control-plane -p fanout
//! ulimit -n 20000; target/release/fanout --binary target/release/control-plane 100 1000 10000
//! ```
//!
//! `--storm EDGES ENTRIES` measures instead the snapshot storm a failover brings to the
//! surviving replica (see `storm`).

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::edgeset::EdgeUpdate;
use shared::{JwkSet, Keyring};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Revocations per run.
const REVOCATIONS: usize = 20;
/// Seconds a poll is held (the filter's default).
const WAIT: u64 = 30;
/// Open files the control plane gets (the hard limit of this machine).
const OPEN_FILES: u64 = 20_000;

type Result<T> = std::result::Result<T, String>;

mod storm;

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let mut binary = std::env::var("FANOUT_CP_BIN").ok().map(PathBuf::from);
    let mut counts = Vec::new();
    let mut storms = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--binary" => binary = args.next().map(PathBuf::from),
            "--storm" => {
                let edges = args.next().and_then(|n| n.parse::<usize>().ok());
                let entries = args.next().and_then(|n| n.parse::<usize>().ok());
                let (Some(edges), Some(entries)) = (edges, entries) else {
                    eprintln!("usage: fanout --binary PATH --storm EDGES ENTRIES");
                    return std::process::ExitCode::FAILURE;
                };
                storms.push((edges, entries));
            }
            n => match n.parse::<usize>() {
                Ok(n) => counts.push(n),
                Err(_) => {
                    eprintln!("usage: fanout --binary PATH [N ...]");
                    return std::process::ExitCode::FAILURE;
                }
            },
        }
    }
    if counts.is_empty() && storms.is_empty() {
        counts = vec![100, 1000, 10_000];
    }
    let Some(binary) = binary else {
        eprintln!("give the control-plane binary: --binary PATH or FANOUT_CP_BIN");
        return std::process::ExitCode::FAILURE;
    };
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => eprintln!("open-files limit of the simulator: {n}"),
        Err(e) => eprintln!("cannot raise the open-files limit: {e}"),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if !storms.is_empty() {
        let mut rows = Vec::new();
        for (edges, entries) in storms {
            match runtime.block_on(storm::run(&binary, edges, entries)) {
                Ok(row) => rows.push(row),
                Err(e) => {
                    eprintln!("storm of {edges} edges, {entries} entries: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
        storm::StormRow::print_table(&rows);
        return std::process::ExitCode::SUCCESS;
    }
    let mut rows = Vec::new();
    for n in counts {
        match runtime.block_on(run(&binary, n)) {
            Ok(row) => rows.push(row),
            Err(e) => {
                eprintln!("N = {n}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    println!(
        "\n| parked pollers | revoke -> last poller p50 | p99 | max | control-plane CPU per revocation | simulator CPU per revocation | RSS per parked poll | refused polls | distinct bodies verified | key rotation -> last poller holds the new JWKS | control-plane CPU for it |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.2} ms | {:.1} ms | {:.1} KiB | {} | {} | {:.1} ms | {:.1} ms |",
            r.n,
            r.p50,
            r.p99,
            r.max,
            r.cpu_ms,
            r.sim_cpu_ms,
            r.rss_kib,
            r.refused,
            r.bodies,
            r.rotation_ms,
            r.rotation_cpu_ms
        );
    }
    std::process::ExitCode::SUCCESS
}

struct Row {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
    cpu_ms: f64,
    sim_cpu_ms: f64,
    rss_kib: f64,
    refused: u64,
    bodies: usize,
    /// Key rotation -> last poller holding the new JWKS, and control-plane CPU for it.
    rotation_ms: f64,
    rotation_cpu_ms: f64,
}

/// The control plane under test.
struct Server {
    child: Child,
    addr: String,
    admin: String,
    /// The edge credential every simulated edge presents.
    credential: String,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start(binary: &Path, n: usize) -> Result<Server> {
    use std::io::BufRead as _;
    let dir = std::env::temp_dir().join(format!(
        "fanout-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ (n as u128)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let dir = TempDir(dir);
    let data = dir.0.join("data");
    // One credential for the whole simulated fleet, as a fleet may share one; the feed
    // requires it, as in production after the upgrade.
    let made = Command::new(binary)
        .args(["edge-credential", "--name", "fanout", "--data-dir"])
        .arg(&data)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    if !made.status.success() {
        return Err(format!(
            "edge-credential: {}",
            String::from_utf8_lossy(&made.stderr)
        ));
    }
    let credential = String::from_utf8_lossy(&made.stdout).trim().to_owned();
    // Two connections a parked poll at most (one held, one arriving), and room for the
    // admin calls: the caps sized to N, within the open-files limit.
    let polls = (n + 64).max(1024);
    let connections = (2 * polls).max(4096);
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {OPEN_FILES} && exec \"$0\" \"$@\""))
        .arg(binary)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("CP_MAX_CONNECTIONS", connections.to_string())
        .env("CP_MAX_LONG_POLLS", polls.to_string())
        .env("CP_MAX_LONG_POLLS_PER_CREDENTIAL", polls.to_string())
        .env("CP_EDGE_CREDENTIALS", "required")
        .env("CP_LOG", "warn,control_plane=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(std::result::Result::ok)
        {
            if let Some(at) = line.find("listening on http://")
                && let Some(tx) = tx.take()
            {
                let addr = line[at + "listening on http://".len()..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .trim_end_matches('/')
                    .to_owned();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| "the control plane did not say where it listens")?;
    let admin = std::fs::read_to_string(data.join("admin.secret"))
        .map_err(|e| format!("admin.secret: {e}"))?
        .trim()
        .to_owned();
    Ok(Server {
        child,
        addr,
        admin,
        credential,
        _dir: dir,
    })
}

/// CPU time (ns) of every thread of `pid`, from `/proc/<pid>/task/*/schedstat`.
fn cpu_ns(pid: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(std::result::Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// One HTTP/1.1 answer: status, `x-edge-seq`, body.
struct Answer {
    status: u16,
    seq: Option<u64>,
    body: Vec<u8>,
}

async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Answer> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 8192];
        let read = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let mut length = 0usize;
    let mut seq = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().map_err(|_| "bad content-length")?;
        } else if name.eq_ignore_ascii_case("x-edge-seq") {
            seq = value.parse().ok();
        }
    }
    let start = head_end + 4;
    while buf.len() < start + length {
        let mut chunk = vec![0u8; (start + length - buf.len()).min(1 << 16)];
        let read = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("connection closed in a body".into());
        }
        buf.extend_from_slice(&chunk[..read]);
    }
    let body = buf[start..start + length].to_vec();
    buf.drain(..start + length);
    Ok(Answer { status, seq, body })
}

/// A one-off request on its own connection.
async fn request(
    addr: &str,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> Result<Answer> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let auth = auth.map_or(String::new(), |a| format!("authorization: Bearer {a}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    read_answer(&mut stream, &mut Vec::new()).await
}

/// What the pollers share.
struct Shared {
    /// `arrived[k][p]`: ns since `epoch` at which poller `p` held revocation `k` (0: not yet).
    arrived: Vec<Vec<AtomicU64>>,
    /// Pollers holding revocation `k`.
    holders: Vec<AtomicUsize>,
    /// Feed seq of revocation `k` (set before it is made).
    seq_of: Vec<AtomicU64>,
    epoch: Instant,
    refused: AtomicU64,
    errors: AtomicU64,
    parked: AtomicUsize,
    keys: Keyring,
    /// Distinct bodies seen (by hash): the seq each verified as, and the JWKS digest it
    /// names.
    verified: Mutex<HashMap<u64, (u64, Option<String>)>>,
    /// The edge credential.
    credential: String,
    /// The JWKS digest at the start; `rotated[p]`: ns since `epoch` at which poller `p`
    /// held a JWKS with another digest (0: not yet), `rotated_count` how many do.
    first_jwks: String,
    rotated: Vec<AtomicU64>,
    rotated_count: AtomicUsize,
}

impl Shared {
    /// Verifies a body the first time it is seen; its seq must be the header's. Returns
    /// the JWKS digest the update names.
    fn check(&self, body: &[u8], seq: u64) -> Result<Option<String>> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        body.hash(&mut h);
        let digest = h.finish();
        if let Some(known) = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
        {
            return if known.0 == seq {
                Ok(known.1.clone())
            } else {
                Err("one body, two seqs".into())
            };
        }
        let text = std::str::from_utf8(body).map_err(|_| "body is not text")?;
        let update = EdgeUpdate::open(text, &self.keys, 1_000_000).map_err(|e| e.to_string())?;
        if update.seq != seq {
            return Err(format!("header says {seq}, update says {}", update.seq));
        }
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest, (seq, update.jwks.clone()));
        Ok(update.jwks)
    }
}

async fn poller(addr: String, id: usize, shared: Arc<Shared>) {
    let mut since = 0u64;
    let mut held_jwks = shared.first_jwks.clone();
    loop {
        let Ok(mut stream) = TcpStream::connect(&addr).await else {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let mut buf = Vec::with_capacity(256);
        loop {
            let req = format!(
                "GET /v1/edge/revocations?since={since}&wait={WAIT} HTTP/1.1\r\nhost: {addr}\r\naccept: application/jose\r\nauthorization: Bearer {}\r\nx-edge-instance: edge-{id}\r\n\r\n",
                shared.credential
            );
            if stream.write_all(req.as_bytes()).await.is_err() {
                break;
            }
            shared.parked.fetch_add(1, Ordering::Relaxed);
            let answer = read_answer(&mut stream, &mut buf).await;
            shared.parked.fetch_sub(1, Ordering::Relaxed);
            let at = shared.epoch.elapsed().as_nanos() as u64;
            let Ok(answer) = answer else {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                break;
            };
            if answer.status != 200 {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let Some(seq) = answer.seq else {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                break;
            };
            let announced = match shared.check(&answer.body, seq) {
                Ok(announced) => announced,
                Err(e) => {
                    eprintln!("poller {id}: {e}");
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    None
                }
            };
            // Another JWKS announced: fetch it on this connection, as the filter does.
            if let Some(announced) = announced
                && announced != held_jwks
            {
                let req = format!(
                    "GET /.well-known/jwks.json HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\r\n",
                    shared.credential
                );
                if stream.write_all(req.as_bytes()).await.is_err() {
                    break;
                }
                let Ok(jwks) = read_answer(&mut stream, &mut buf).await else {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                };
                held_jwks = shared::edgeset::jwks_digest(&jwks.body);
                if held_jwks != shared.first_jwks {
                    let at = shared.epoch.elapsed().as_nanos() as u64;
                    if shared.rotated[id]
                        .compare_exchange(0, at.max(1), Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                    {
                        shared.rotated_count.fetch_add(1, Ordering::AcqRel);
                    }
                }
            }
            for (k, of) in shared.seq_of.iter().enumerate() {
                let s = of.load(Ordering::Acquire);
                if s != 0
                    && s > since
                    && s <= seq
                    && shared.arrived[k][id]
                        .compare_exchange(0, at.max(1), Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                {
                    shared.holders[k].fetch_add(1, Ordering::AcqRel);
                }
            }
            since = seq;
        }
    }
}

async fn run(binary: &Path, n: usize) -> Result<Row> {
    let server = start(binary, n)?;
    let pid = server.child.id();
    let pid_s = pid.to_string();
    let addr = server.addr.clone();
    let jwks = request(&addr, "GET", "/.well-known/jwks.json", None, "").await?;
    let keys = Keyring::from_jwks(&JwkSet::parse(&jwks.body).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let first_jwks = shared::edgeset::jwks_digest(&jwks.body);
    // Warm up: one revocation before measuring (first signature, SQLite pages).
    let warm = format!("{{\"type\":\"revoke_jti\",\"value\":\"warm-{n}\"}}");
    let answer = request(&addr, "POST", "/revoke", Some(&server.admin), &warm).await?;
    if answer.status != 200 {
        return Err(format!("revoke answered {}", answer.status));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_kib(pid);
    let shared = Arc::new(Shared {
        arrived: (0..REVOCATIONS)
            .map(|_| (0..n).map(|_| AtomicU64::new(0)).collect())
            .collect(),
        holders: (0..REVOCATIONS).map(|_| AtomicUsize::new(0)).collect(),
        seq_of: (0..REVOCATIONS).map(|_| AtomicU64::new(0)).collect(),
        epoch: Instant::now(),
        refused: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        parked: AtomicUsize::new(0),
        keys,
        verified: Mutex::new(HashMap::new()),
        credential: server.credential.clone(),
        first_jwks,
        rotated: (0..n).map(|_| AtomicU64::new(0)).collect(),
        rotated_count: AtomicUsize::new(0),
    });
    // Connect in batches: a burst of 10,000 SYNs overflows the listen backlog.
    let mut tasks = Vec::with_capacity(n);
    for batch in (0..n).collect::<Vec<_>>().chunks(500) {
        for &id in batch {
            tasks.push(tokio::spawn(poller(addr.clone(), id, shared.clone())));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every poller has its first answer (the snapshot-less since=0 gets a delta to 1) and
    // is parked again.
    let deadline = Instant::now() + Duration::from_secs(120);
    while shared.parked.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {n} pollers parked",
                shared.parked.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000 + n as u64 / 10)).await;
    let rss_parked = rss_kib(pid);
    let mut latencies = Vec::new();
    let cpu_start = cpu_ns(&pid_s);
    let sim_start = cpu_ns("self");
    for k in 0..REVOCATIONS {
        // Feed seqs: 1 is the warm-up, then one per revocation.
        shared.seq_of[k].store(k as u64 + 2, Ordering::Release);
        let body = format!("{{\"type\":\"revoke_jti\",\"value\":\"fanout-{n}-{k}\"}}");
        let t0 = shared.epoch.elapsed().as_nanos() as u64;
        let answer = request(&addr, "POST", "/revoke", Some(&server.admin), &body).await?;
        if answer.status != 200 {
            return Err(format!("revoke answered {}", answer.status));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while shared.holders[k].load(Ordering::Acquire) < n {
            if Instant::now() > deadline {
                return Err(format!(
                    "revocation {k}: {} of {n} pollers got it",
                    shared.holders[k].load(Ordering::Acquire)
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let last = shared.arrived[k]
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .max()
            .unwrap_or(t0);
        latencies.push((last.saturating_sub(t0)) as f64 / 1e6);
        // Let every poller park again before the next one.
        let deadline = Instant::now() + Duration::from_secs(30);
        while shared.parked.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu = cpu_ns(&pid_s).saturating_sub(cpu_start);
    let sim = cpu_ns("self").saturating_sub(sim_start);
    // A key rotation: every poller must hold the new JWKS (announced by the feed).
    let rotation_cpu_start = cpu_ns(&pid_s);
    let t0 = shared.epoch.elapsed().as_nanos() as u64;
    let answer = request(&addr, "POST", "/admin/keys/rotate", Some(&server.admin), "").await?;
    if answer.status != 200 {
        return Err(format!("rotate answered {}", answer.status));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while shared.rotated_count.load(Ordering::Acquire) < n {
        if Instant::now() > deadline {
            return Err(format!(
                "key rotation: {} of {n} pollers hold the new JWKS",
                shared.rotated_count.load(Ordering::Acquire)
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rotation_cpu = cpu_ns(&pid_s).saturating_sub(rotation_cpu_start);
    let rotated_last = shared
        .rotated
        .iter()
        .map(|a| a.load(Ordering::Acquire))
        .max()
        .unwrap_or(t0);
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    let bodies = shared
        .verified
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len();
    let errors = shared.errors.load(Ordering::Relaxed);
    if errors > 0 {
        eprintln!("N = {n}: {errors} poller errors");
    }
    let row = Row {
        n,
        p50: pick(0.5),
        p99: pick(0.99),
        max: pick(1.0),
        cpu_ms: cpu as f64 / 1e6 / REVOCATIONS as f64,
        sim_cpu_ms: sim as f64 / 1e6 / REVOCATIONS as f64,
        rss_kib: rss_parked.saturating_sub(rss_before) as f64 / n as f64,
        refused: shared.refused.load(Ordering::Relaxed),
        bodies,
        rotation_ms: rotated_last.saturating_sub(t0) as f64 / 1e6,
        rotation_cpu_ms: rotation_cpu as f64 / 1e6,
    };
    eprintln!(
        "N = {n}: p50 {:.1} ms, p99 {:.1} ms, CPU {:.2} ms/revocation, RSS {} -> {} KiB, refused {}",
        row.p50, row.p99, row.cpu_ms, rss_before, rss_parked, row.refused
    );
    for task in tasks {
        task.abort();
    }
    drop(server);
    Ok(row)
}
