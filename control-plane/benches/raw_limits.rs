//! The raw limits under the control plane's write path, on one core: SQLite commits
//! (`synchronous = FULL`, WAL) one row at a time and grouped, ML-DSA-65 and Ed25519
//! signatures, and what a revocation event and an audit checkpoint cost. Prints one
//! `name<TAB>ops/s<TAB>note` line each (parsed by `bench/control-plane.sh`).
//!
//! `cargo bench -p control-plane --bench raw_limits` (`RAW_SECONDS`, default 2, per item).

use std::hint::black_box;
use std::time::{Duration, Instant};

use control_plane::Db;
use control_plane::store::audit;
use serde_json::json;
use shared::{Alg, Kind, RevocationEvent, SigningKey};

fn seconds() -> Duration {
    let s: f64 = std::env::var("RAW_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(s)
}

/// Runs `op` (which does `per_call` operations) for the configured time; ops per second.
fn rate(per_call: u64, mut op: impl FnMut()) -> f64 {
    let limit = seconds();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < limit {
        op();
        n += per_call;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn report(name: &str, ops: f64, note: &str) {
    println!("{name}\t{ops:.0}\t{note}");
}

fn audit_row(i: u64) -> serde_json::Value {
    json!({
        "jti": format!("jti-{i:020}"), "sub": "user-1", "aud": "api", "iat": 1_700_000_000,
        "exp": 1_700_003_600, "kid": "k".repeat(43), "alg": "EdDSA", "sid": null,
        "scope": null, "client_id": null, "via": "api",
    })
}

#[expect(
    clippy::disallowed_methods,
    reason = "measures raw SQLite commits on a connection of its own, without the writer"
)]
fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(&dir.path().join("raw.db")).expect("open db");
    let mut conn = db.open_connection().expect("connection");
    let mut i = 0u64;
    let single = rate(1, || {
        let tx = conn.transaction().expect("begin");
        i += 1;
        audit::append_row(&tx, 0, "bench", "token.issued", audit_row(i)).expect("append");
        tx.commit().expect("commit");
    });
    report(
        "sqlite_commit_1_row",
        single,
        "commits/s, one audit row each (WAL, synchronous=FULL)",
    );
    let grouped = rate(100, || {
        let tx = conn.transaction().expect("begin");
        for _ in 0..100 {
            i += 1;
            audit::append_row(&tx, 0, "bench", "token.issued", audit_row(i)).expect("append");
        }
        tx.commit().expect("commit");
    });
    report(
        "sqlite_commit_100_rows",
        grouped,
        "rows/s in 100-row group commits",
    );

    // ML-DSA signing loops a message-dependent number of times (rejection sampling), so
    // every signature is over a different message, as in production.
    let mut n = 0u64;
    let mut next = move || {
        n += 1;
        serde_json::to_vec(&audit_row(n)).expect("json")
    };
    let message = next();
    let ml = SigningKey::generate(Alg::MlDsa65);
    report(
        "mldsa65_sign",
        rate(1, || {
            let message = next();
            black_box(ml.sign(black_box(&message)).expect("sign"));
        }),
        "signs/s, expanded key kept in memory (ml-dsa 0.1 SigningKey)",
    );
    let seed = ml.seed();
    report(
        "mldsa65_expand_and_sign",
        rate(1, || {
            let message = next();
            let key = SigningKey::from_seed(Alg::MlDsa65, black_box(&seed));
            black_box(key.sign(black_box(&message)).expect("sign"));
        }),
        "signs/s when the key is expanded from its seed every time",
    );
    let sig = ml.sign(&message).expect("sign");
    let vk = ml.verifying_key();
    report(
        "mldsa65_verify",
        rate(1, || {
            black_box(vk.verify(black_box(&message), &sig)).expect("verify");
        }),
        "verifies/s",
    );
    let ed = SigningKey::generate(Alg::EdDsa);
    report(
        "ed25519_sign",
        rate(1, || {
            let message = next();
            black_box(ed.sign(black_box(&message)).expect("sign"));
        }),
        "signs/s",
    );
    let ed_sig = ed.sign(&message).expect("sign");
    let ed_vk = ed.verifying_key();
    report(
        "ed25519_verify",
        rate(1, || {
            black_box(ed_vk.verify(black_box(&message), &ed_sig)).expect("verify");
        }),
        "verifies/s",
    );
    let kid = ml.kid();
    let event = || RevocationEvent {
        event_id: shared::random::id(),
        kind: Kind::Jti,
        value: "jti-1".into(),
        not_before: None,
        expires_at: 1_700_003_600,
        issued_at: 1_700_000_000,
        origin: "bench".into(),
        nonce: "00".repeat(16),
        kid: kid.clone(),
    };
    report(
        "revocation_event_sign",
        rate(1, || {
            black_box(event().sign(&ml).expect("sign"));
        }),
        "events/s, each signed alone (compact JWS, ML-DSA-65)",
    );
    report(
        "revocation_event_sign_batch16",
        rate(16, || {
            let batch: Vec<RevocationEvent> = (0..16).map(|_| event()).collect();
            black_box(shared::revocation::sign_batch(&batch, &ml).expect("sign"));
        }),
        "events/s in batches of 16 under one signature (Merkle root + proofs)",
    );
    let mut upto = 0;
    report(
        "audit_checkpoint_sign",
        rate(1, || {
            upto += 1;
            black_box(
                audit::Checkpoint::sign(&ml, upto, "h".repeat(43), 1_700_000_000, "bench")
                    .expect("sign"),
            );
        }),
        "checkpoints/s",
    );
}
