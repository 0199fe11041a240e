//! Wall time (criterion) of the native verifications and of the decision path, so the
//! filter's per-request cost in Envoy can be set against the native verify of the same
//! token: `cargo bench -p edge-bench`.

use criterion::{Criterion, criterion_group, criterion_main};

fn cases(c: &mut Criterion) {
    for name in edge_bench::CASES {
        if name.starts_with("lookup") {
            continue;
        }
        let Some(mut run) = edge_bench::case(name) else {
            continue;
        };
        c.bench_function(name, |b| b.iter(&mut run));
    }
}

criterion_group!(benches, cases);
criterion_main!(benches);
