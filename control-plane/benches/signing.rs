//! Criterion micro-benchmarks of the write path's signing code: one ML-DSA-65 and one
//! Ed25519 signature, a revocation event signed alone, batches of events signed under
//! one signature (per batch; divide by the size for the cost per event), checking one
//! batch member, the Merkle tree alone, and an audit checkpoint.
//!
//! ML-DSA-65 signing time depends on the message (rejection sampling repeats a random
//! number of rounds, and signing is deterministic), so every iteration signs different
//! bytes: a fixed message would measure its own round count, off by 4x either way.
//!
//! `cargo bench -p control-plane --bench signing` (`-- <filter>` for a subset).

use std::hint::black_box;

use control_plane::store::audit::Checkpoint;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use shared::merkle::{Tree, leaf_hash};
use shared::revocation::sign_batch;
use shared::{Alg, Keyring, Kind, RevocationEvent, SigningKey};

fn event(i: usize, kid: &str) -> RevocationEvent {
    RevocationEvent {
        event_id: format!("{i:032x}"),
        kind: Kind::Jti,
        value: format!("token-{i}"),
        not_before: None,
        expires_at: 1_700_003_600,
        issued_at: 1_700_000_000,
        origin: "bench".into(),
        nonce: "00".repeat(16),
        kid: kid.to_owned(),
    }
}

fn signatures(c: &mut Criterion) {
    let ml = SigningKey::from_seed(Alg::MlDsa65, &[7; 32]);
    let ed = SigningKey::from_seed(Alg::EdDsa, &[7; 32]);
    let mut message = [0x5a_u8; 256];
    let mut n = 0_u64;
    let mut next = move || {
        n += 1;
        message[..8].copy_from_slice(&n.to_be_bytes());
        message
    };
    c.bench_function("mldsa65_sign_256B", |b| {
        b.iter_batched(
            &mut next,
            |m| ml.sign(&m).expect("sign"),
            BatchSize::SmallInput,
        )
    });
    c.bench_function("ed25519_sign_256B", |b| {
        b.iter_batched(
            &mut next,
            |m| ed.sign(&m).expect("sign"),
            BatchSize::SmallInput,
        )
    });
}

fn events(c: &mut Criterion) {
    let ml = SigningKey::from_seed(Alg::MlDsa65, &[7; 32]);
    let kid = ml.kid();
    let mut ring = Keyring::new();
    ring.add(ml.verifying_key());
    let one = event(0, &kid);
    let mut n = 0_u64;
    let mut fresh = |size: usize| {
        n += 1;
        (0..size)
            .map(|i| RevocationEvent {
                nonce: format!("{n:016x}{i:016x}"),
                ..one.clone()
            })
            .collect::<Vec<_>>()
    };
    c.bench_function("event_sign_alone", |b| {
        b.iter_batched(
            || fresh(1),
            |e| e[0].sign(&ml).expect("sign"),
            BatchSize::SmallInput,
        )
    });
    let mut group = c.benchmark_group("event_sign_batch");
    for size in [1_usize, 16, 256] {
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(size.to_string(), |b| {
            b.iter_batched(
                || fresh(size),
                |batch| sign_batch(&batch, &ml).expect("sign"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
    let batch: Vec<RevocationEvent> = (0..256).map(|i| event(i, &kid)).collect();
    let signed = sign_batch(&batch, &ml).expect("sign");
    c.bench_function("event_verify_batch_member_of_256", |b| {
        b.iter(|| RevocationEvent::verify(black_box(&signed[100]), &ring).expect("verify"))
    });
    let single = one.sign(&ml).expect("sign");
    c.bench_function("event_verify_alone", |b| {
        b.iter(|| RevocationEvent::verify(black_box(&single), &ring).expect("verify"))
    });
    let leaves: Vec<[u8; 32]> = batch
        .iter()
        .map(|e| leaf_hash(&e.canonical_bytes()))
        .collect();
    c.bench_function("merkle_tree_and_proofs_256", |b| {
        b.iter_batched(
            || leaves.clone(),
            |leaves| {
                let tree = Tree::new(leaves).expect("leaves");
                (0..256).map(|i| tree.proof(i)).collect::<Vec<_>>()
            },
            BatchSize::SmallInput,
        )
    });
}

fn checkpoints(c: &mut Criterion) {
    let ml = SigningKey::from_seed(Alg::MlDsa65, &[7; 32]);
    let head = "h".repeat(43);
    let mut upto = 0;
    c.bench_function("audit_checkpoint_sign", |b| {
        b.iter_batched(
            || {
                upto += 1;
                upto
            },
            |upto| Checkpoint::sign(&ml, upto, head.clone(), 1_700_000_000, "bench").expect("sign"),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, signatures, events, checkpoints);
criterion_main!(benches);
