//! The snapshot storm of a failover: when a replica dies, each of its edges moves to a
//! survivor and takes the survivor's whole set (a snapshot of another feed, joined with
//! what it held). This measures the survivor's side: a control plane holding ENTRIES
//! revocations answers EDGES pollers that all ask for a snapshot at once, each on its own
//! connection with the fleet's credential. Reported: the time until the last poller
//! holds the whole snapshot, the control plane's CPU and peak memory for the storm, the
//! bytes sent, and how many distinct snapshots were signed (one is reused for a second,
//! `replication::feed::REUSE_FOR`, then a fresh one is made). The first body is verified
//! (ML-DSA-65 and decoded); the others are hashed as they stream, never kept.
//!
//! ```sh
//! cargo build --release -p control-plane -p fanout
//! ulimit -n 20000; target/release/fanout --binary target/release/control-plane --storm 1000 1000000
//! ```

use std::hash::Hasher as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shared::edgeset::{EdgeUpdate, UpdateKind};
use shared::{JwkSet, Keyring};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::{Result, cpu_ns, read_answer, request, rss_kib, start};

/// Connections revoking at once while the set is filled.
const FILLERS: usize = 32;

/// One storm's figures.
pub(crate) struct StormRow {
    edges: usize,
    entries: usize,
    fill_s: f64,
    snapshot_bytes: u64,
    distinct: usize,
    last_ms: f64,
    p50_ms: f64,
    cpu_ms: f64,
    rss_before_mib: f64,
    rss_peak_mib: f64,
    failed: u64,
}

impl StormRow {
    pub(crate) fn print_table(rows: &[StormRow]) {
        println!(
            "\n| edges | entries | snapshot | storm: p50 | last poller holds it | control-plane CPU | its RSS before -> peak | snapshots signed | failed | (filling the set) |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in rows {
            println!(
                "| {} | {} | {:.1} MB | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} -> {:.0} MiB | {} | {} | {:.0} s |",
                r.edges,
                r.entries,
                r.snapshot_bytes as f64 / 1e6,
                r.p50_ms,
                r.last_ms,
                r.cpu_ms,
                r.rss_before_mib,
                r.rss_peak_mib,
                r.distinct,
                r.failed,
                r.fill_s
            );
        }
    }
}

/// Revokes `count` distinct jtis over [`FILLERS`] keep-alive connections.
async fn fill(addr: &str, admin: &str, count: usize) -> Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..FILLERS {
        let (addr, admin, next) = (addr.to_owned(), admin.to_owned(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(&addr)
                .await
                .map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count as u64 {
                    return Ok::<(), String>(());
                }
                let body = format!("{{\"type\":\"revoke_jti\",\"value\":\"storm-{i}\"}}");
                let req = format!(
                    "POST /revoke HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {admin}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream
                    .write_all(req.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                let answer = read_answer(&mut stream, &mut buf).await?;
                if answer.status != 200 {
                    return Err(format!("revoke answered {}", answer.status));
                }
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// One snapshot read to its end: its length and a hash of its bytes, and the bytes
/// themselves when `keep`.
async fn snapshot(
    addr: &str,
    credential: &str,
    id: usize,
    keep: bool,
) -> Result<(u64, u64, Option<Vec<u8>>)> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let req = format!(
        "GET /v1/edge/revocations?wait=0 HTTP/1.1\r\nhost: {addr}\r\naccept: application/jose\r\nauthorization: Bearer {credential}\r\nx-edge-instance: storm-{id}\r\nconnection: close\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or("").to_owned());
    }
    let length: u64 = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .ok_or("no content-length")?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut kept = keep.then(Vec::new);
    let mut seen = (buf.len() - head_end - 4) as u64;
    let first = &buf[head_end + 4..];
    hasher.write(first);
    if let Some(k) = kept.as_mut() {
        k.extend_from_slice(first);
    }
    let mut chunk = vec![0u8; 1 << 16];
    while seen < length {
        let read = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("connection closed in a body".into());
        }
        hasher.write(&chunk[..read]);
        if let Some(k) = kept.as_mut() {
            k.extend_from_slice(&chunk[..read]);
        }
        seen += read as u64;
    }
    Ok((length, hasher.finish(), kept))
}

pub(crate) async fn run(
    binary: &std::path::Path,
    edges: usize,
    entries: usize,
) -> Result<StormRow> {
    let server = start(binary, edges)?;
    let pid = server.child.id();
    let pid_s = pid.to_string();
    let addr = server.addr.clone();
    let filling = Instant::now();
    fill(&addr, &server.admin, entries).await?;
    let fill_s = filling.elapsed().as_secs_f64();
    eprintln!("{entries} revocations made in {fill_s:.0} s");
    let jwks = request(&addr, "GET", "/.well-known/jwks.json", None, "").await?;
    let keys = Keyring::from_jwks(&JwkSet::parse(&jwks.body).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    // The set settles (checkpoints, the last group commits) before the storm.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = rss_kib(pid);
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let cpu_before = cpu_ns(&pid_s);
    let epoch = Instant::now();
    let mut tasks = Vec::with_capacity(edges);
    for id in 0..edges {
        let (addr, credential) = (addr.clone(), server.credential.clone());
        tasks.push(tokio::spawn(async move {
            let got = snapshot(&addr, &credential, id, id == 0).await;
            (got, epoch.elapsed())
        }));
    }
    let mut times = Vec::with_capacity(edges);
    let (mut failed, mut bytes, mut first) = (0u64, 0u64, None);
    let mut hashes = std::collections::HashSet::new();
    for task in tasks {
        let (got, at) = task.await.map_err(|e| e.to_string())?;
        match got {
            Ok((length, h, body)) => {
                times.push(at.as_secs_f64() * 1e3);
                hashes.insert(h);
                bytes = bytes.max(length);
                if body.is_some() {
                    first = body;
                }
            }
            Err(e) => {
                failed += 1;
                if failed == 1 {
                    eprintln!("a snapshot failed: {e}");
                }
            }
        }
    }
    let cpu_ms = cpu_ns(&pid_s).saturating_sub(cpu_before) as f64 / 1e6;
    sampling.abort();
    let text = std::str::from_utf8(first.as_deref().ok_or("no snapshot arrived")?)
        .map_err(|_| "the snapshot is not text")?
        .to_owned();
    let update = EdgeUpdate::open(&text, &keys, (entries as u64) * 2).map_err(|e| e.to_string())?;
    if update.kind != UpdateKind::Snapshot || update.entries.len() < entries {
        return Err(format!(
            "a {:?} of {} entries, expected a snapshot of {entries}",
            update.kind,
            update.entries.len()
        ));
    }
    times.sort_by(f64::total_cmp);
    Ok(StormRow {
        edges,
        entries,
        fill_s,
        snapshot_bytes: bytes,
        distinct: hashes.len(),
        last_ms: times.last().copied().unwrap_or(0.0),
        p50_ms: times.get(times.len() / 2).copied().unwrap_or(0.0),
        cpu_ms,
        rss_before_mib: rss_before as f64 / 1024.0,
        rss_peak_mib: peak.load(Ordering::Relaxed) as f64 / 1024.0,
        failed,
    })
}
