//! The edge filter's decision path run natively, so a change can be judged by instruction
//! counts (`bench/count.sh` runs each case under callgrind) instead of wrk noise.
//!
//! `edge-bench <case> <iterations>` runs one case; `edge-bench time <case> <iterations>`
//! prints nanoseconds per iteration (median of 5 rounds); `edge-bench e5` prints the
//! sizes and costs of a 1,000,000-entry revocation set (wire payload, memory, decoding by
//! the poller, loading the published set in a worker VM); `edge-bench e5-poller` times
//! each step a signed 1M snapshot goes through in the filter; `edge-bench e5-feed <dir> <n>`
//! writes what `bench/e5-feed.py` serves in place of the control plane (a JWKS, signed
//! snapshots of `n` entries, heartbeats, tokens), so Envoy can be measured with a 1M set.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

use edge_bench::{CASES, NOW, case, key};
use serde_json::json;
use shared::Alg;
use shared::edgeset::{EdgeUpdate, Entry, RevocationSet, UpdateKind};
use shared::jws::sign;

/// `n` entries with xorshift keys (uniform 64-bit hashes, as `entry_key` gives), the
/// i-th expiring at `base + i % 3600`; `seed` carries on from call to call.
fn random_entries(seed: &mut u64, n: u32, base: i64) -> Vec<Entry> {
    (0..n)
        .map(|i| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            Entry {
                key: *seed,
                expires_at: (base + i64::from(i % 3600)) as u32,
                not_before: 0,
            }
        })
        .collect()
}

fn e5() {
    let n = 1_000_000u32;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    // Revocations live as long as the tokens they match: up to an hour here.
    let entries = random_entries(&mut seed, n, NOW + 60);
    let update = EdgeUpdate {
        kind: UpdateKind::Snapshot,
        base_seq: 0,
        seq: 1,
        generated_at: NOW,
        entries,
        leeway: None,
        feed: None,
        jwks: None,
    };
    let wire = update.encode();
    let started = Instant::now();
    let mut set = RevocationSet::new();
    let decoded = EdgeUpdate::decode(&wire, u64::from(n));
    let applied = decoded.map(|u| set.apply(u));
    let apply_ms = started.elapsed().as_secs_f64() * 1e3;
    // What each worker VM does with the set the poller published in shared data.
    let blob = set.to_bytes();
    let started = Instant::now();
    let loaded = RevocationSet::from_bytes(black_box(&blob), u64::from(n));
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    // A steady stream of revocations on the 1M set: one-entry deltas, as the poller
    // applies them (`sync::accept`) and as each worker then loads what it published.
    let deltas = 200u64;
    let mut poller = set.clone();
    let mut worker = loaded.clone().unwrap_or_default();
    let (mut apply_ns, mut load_ns, mut recent_bytes) = (0u128, 0u128, 0usize);
    let mut deltas_ok = true;
    for i in 0..deltas {
        let delta = EdgeUpdate {
            kind: UpdateKind::Delta,
            base_seq: poller.seq(),
            seq: poller.seq() + 1,
            generated_at: NOW + 1 + i as i64,
            entries: random_entries(&mut seed, 1, NOW + 3_600),
            leeway: None,
            feed: None,
            jwks: None,
        };
        let started = Instant::now();
        deltas_ok &=
            edge_filter::sync::accept(&mut poller, delta, NOW, u64::from(n) + deltas).is_ok();
        apply_ns += started.elapsed().as_nanos();
        let recent = poller.recent_to_bytes();
        recent_bytes = recent.len();
        let started = Instant::now();
        deltas_ok &= worker
            .load_recent(black_box(&recent), u64::from(n) + deltas)
            .is_ok();
        load_ns += started.elapsed().as_nanos();
    }
    deltas_ok &= worker.holds_the_same_as(&poller);
    println!(
        "entries {n}\nwire_bytes {}\nwire_bytes_per_entry {:.2}\nvm_bytes_per_entry {:.2}\n\
         decode_and_apply_ms_native {apply_ms:.1}\nshared_blob_bytes {}\n\
         shared_blob_load_ms_native {load_ms:.1}\n\
         one_entry_delta_apply_us_native {:.1}\none_entry_delta_load_us_native {:.1}\n\
         recent_blob_bytes_after_{deltas}_deltas {recent_bytes}\nok {}",
        wire.len(),
        wire.len() as f64 / f64::from(n),
        set.memory_bytes() as f64 / f64::from(n),
        blob.len(),
        apply_ns as f64 / 1e3 / deltas as f64,
        load_ns as f64 / 1e3 / deltas as f64,
        matches!(applied, Ok(Ok(())))
            && loaded.as_ref().is_ok_and(|l| l.holds_the_same_as(&set))
            && deltas_ok,
    );
}

/// The steps a 1M snapshot goes through in the filter, each timed (ms, wall): the
/// poller's verification and decoding (`EdgeUpdate::open`: base64, ML-DSA-65 over the
/// signing input, the wire decode), `sync::accept` onto a held 1M set, publishing the
/// blob, and a worker VM loading it. Run it in V8 too (`bench/wasm-run.mjs`).
fn e5_poller() -> Result<(), String> {
    let n = 1_000_000u32;
    let ml = key(Alg::MlDsa65);
    let mut ring = shared::Keyring::new();
    ring.add(ml.verifying_key());
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut snapshot = |seq: u64| {
        let entries = random_entries(&mut seed, n, NOW + 3600);
        EdgeUpdate {
            kind: UpdateKind::Snapshot,
            base_seq: 0,
            seq,
            generated_at: NOW,
            entries,
            leeway: None,
            feed: None,
            jwks: None,
        }
    };
    let mut held = RevocationSet::new();
    held.apply(snapshot(1)).map_err(|e| e.to_string())?;
    let signed = snapshot(2).sign(&ml).map_err(|e| e.to_string())?;
    let ms = |started: Instant| started.elapsed().as_secs_f64() * 1e3;
    // Parts of `open`: the payload's base64, and the wire decode; the rest is the JWS
    // header and the signature (SHAKE256 over the whole signing input).
    let payload_b64 = signed.split('.').nth(1).unwrap_or_default();
    let started = Instant::now();
    let payload =
        shared::b64::decode_public(black_box(payload_b64), "payload").map_err(|e| e.to_string())?;
    let base64_ms = ms(started);
    let started = Instant::now();
    let decoded =
        EdgeUpdate::decode(black_box(&payload), u64::from(n)).map_err(|e| e.to_string())?;
    let decode_ms = ms(started);
    drop(decoded);
    let started = Instant::now();
    let update = EdgeUpdate::open(&signed, &ring, u64::from(n)).map_err(|e| e.to_string())?;
    let open_ms = ms(started);
    let started = Instant::now();
    let mut set = held.clone();
    let clone_ms = ms(started);
    let started = Instant::now();
    edge_filter::sync::accept(&mut set, update, NOW, u64::from(n)).map_err(|e| format!("{e:?}"))?;
    let accept_ms = ms(started);
    let started = Instant::now();
    let blob = edge_filter::sync::encode_set(2, &set);
    let publish_ms = ms(started);
    let started = Instant::now();
    let (_, loaded) =
        edge_filter::sync::decode_set(black_box(&blob), u64::from(n)).map_err(|e| e.to_string())?;
    let load_ms = ms(started);
    println!(
        "jws_bytes {}\nopen_ms {open_ms:.1} (of which base64 {base64_ms:.1}, decode {decode_ms:.1})\nclone_held_ms {clone_ms:.1}\naccept_ms {accept_ms:.1}\n\
         encode_blob_ms {publish_ms:.1}\nload_blob_ms {load_ms:.1}\nok {}",
        signed.len(),
        loaded.holds_the_same_as(&set)
    );
    Ok(())
}

/// Signed feed answers for `bench/e5-feed.py`: snapshots `snap-<seq>.jws` of `n` entries
/// (seq 1..=6), empty heartbeat deltas `hb-<seq>.jws`, `jwks.json` and `tokens.txt`.
fn e5_feed(dir: &str, n: u32) -> Result<(), String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs() as i64;
    let ed = key(Alg::EdDsa);
    let ml = key(Alg::MlDsa65);
    let jwks = shared::JwkSet {
        keys: vec![ed.verifying_key().to_jwk(), ml.verifying_key().to_jwk()],
    };
    let write = |name: &str, body: &[u8]| {
        std::fs::write(format!("{dir}/{name}"), body).map_err(|e| format!("{name}: {e}"))
    };
    write(
        "jwks.json",
        serde_json::to_string(&jwks)
            .map_err(|e| e.to_string())?
            .as_bytes(),
    )?;
    let mut tokens = String::new();
    for i in 0..200 {
        let claims = json!({
            "iss": "pq-control-plane", "sub": format!("user-{i}"), "aud": "pq-api",
            "exp": now + 7200, "iat": now - 10, "nbf": now - 10,
            "jti": format!("e5-{i}"), "scope": "read",
        });
        let token = sign(
            &ed,
            "at+jwt",
            Some(&ed.kid()),
            None,
            claims.to_string().as_bytes(),
        )
        .map_err(|e| e.to_string())?;
        tokens.push_str(&token);
        tokens.push('\n');
    }
    write("tokens.txt", tokens.as_bytes())?;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for seq in 1..=6u64 {
        let entries = random_entries(&mut seed, n, now + 3600);
        let snapshot = EdgeUpdate {
            kind: UpdateKind::Snapshot,
            base_seq: 0,
            seq,
            generated_at: now,
            entries,
            leeway: None,
            feed: None,
            jwks: None,
        };
        write(
            &format!("snap-{seq}.jws"),
            snapshot.sign(&ml).map_err(|e| e.to_string())?.as_bytes(),
        )?;
        let heartbeat = EdgeUpdate {
            kind: UpdateKind::Delta,
            base_seq: seq,
            seq,
            generated_at: now,
            entries: Vec::new(),
            leeway: None,
            feed: None,
            jwks: None,
        };
        write(
            &format!("hb-{seq}.jws"),
            heartbeat.sign(&ml).map_err(|e| e.to_string())?.as_bytes(),
        )?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["e5"] => e5(),
        ["e5-poller"] => {
            if let Err(e) = e5_poller() {
                eprintln!("e5-poller: {e}");
                return ExitCode::FAILURE;
            }
        }
        ["e5-feed", dir, n] => {
            let Ok(n) = n.parse() else { return usage() };
            if let Err(e) = e5_feed(dir, n) {
                eprintln!("e5-feed: {e}");
                return ExitCode::FAILURE;
            }
        }
        ["time", name, n] => {
            let (Some(mut run), Ok(n)) = (case(name), n.parse::<u32>()) else {
                return usage();
            };
            // On-CPU time of this thread where Linux reports it (a busy machine inflates
            // wall time, not this), else wall time.
            let cpu = on_cpu_ns().is_some();
            let mut rounds: Vec<f64> = (0..5)
                .map(|_| {
                    let (started, cpu_started) = (Instant::now(), on_cpu_ns());
                    for _ in 0..n {
                        black_box(run());
                    }
                    let ns = match (cpu_started, on_cpu_ns()) {
                        (Some(a), Some(b)) => (b - a) as f64,
                        _ => started.elapsed().as_nanos() as f64,
                    };
                    ns / f64::from(n)
                })
                .collect();
            rounds.sort_by(f64::total_cmp);
            let what = if cpu { "on-CPU" } else { "wall" };
            println!("{name} {:.0} ns ({what}, median of 5)", rounds[2]);
        }
        [name, n] => {
            let (Some(mut run), Ok(n)) = (case(name), n.parse::<u32>()) else {
                return usage();
            };
            let mut ok = 0u32;
            for _ in 0..n {
                ok += u32::from(run());
            }
            if ok != n {
                eprintln!("{name}: only {ok} of {n} iterations gave the expected answer");
                return ExitCode::FAILURE;
            }
        }
        _ => return usage(),
    }
    ExitCode::SUCCESS
}

/// Nanoseconds this thread has run on a CPU (`/proc/thread-self/schedstat`).
fn on_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: edge-bench <case> <n> | time <case> <n> | e5 | e5-poller | e5-feed <dir> <n>\ncases: {}",
        CASES.join(" ")
    );
    ExitCode::FAILURE
}
