//! PSI throughput against its floor.
//!
//! `cargo bench --bench psi` reports, per element:
//! - `per-element/one-party`: everything one party does for one of its own ids and one peer id
//!   (hash to the group, blind, batch-encode; decode, blind again, encode, tag);
//! - `per-element/scalar-mult-floor`: the two variable-base scalar multiplications alone, with
//!   the arithmetic PSI uses on this CPU (AVX-512 IFMA eight points at a time, or dalek);
//! - `two-party-end-to-end/100000`: guest and host with 10^5 ids each, 80% common, one process.
//!
//! The ratio of the first two is the overhead above the unavoidable work. The arithmetic and the
//! CPU are printed first.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use psi::{run_in_memory, DuplicatePolicy, GuestConfig, HostInput, IdColumn, PsiGuest, PsiHost};

const BATCH: u32 = 4096;

fn ids(prefix: &str, n: usize, common: usize) -> IdColumn {
    IdColumn::from_ids((0..n).map(|i| {
        if i < common {
            format!("ent-{i:010}")
        } else {
            format!("{prefix}-{i:010}")
        }
    }))
    .expect("generated ids are valid")
}

fn per_element(c: &mut Criterion) {
    println!(
        "PSI arithmetic: {}; CPU: {}",
        psi::arithmetic(),
        unseen::cpu_summary()
    );
    let config = GuestConfig {
        batch_size: BATCH,
        ..GuestConfig::default()
    };
    let guest = PsiGuest::new(ids("g", BATCH as usize, 0), &["host"], config).expect("guest");
    let (host, _) = PsiHost::new(
        "guest",
        ids("h", BATCH as usize, 0),
        DuplicatePolicy::Reject,
        &guest.hello(),
    )
    .expect("host");
    let peer_points = guest.blinded_batch(0).expect("one batch");

    let mut group = c.benchmark_group("per-element");
    group.throughput(Throughput::Elements(u64::from(BATCH)));
    group.bench_function("one-party", |b| {
        b.iter(|| {
            let own = host.blinded_batch(0).expect("one batch");
            let tags = host.answer(&peer_points).expect("valid points");
            black_box((own, tags))
        })
    });
    group.bench_function("scalar-mult-floor", |b| {
        b.iter(|| psi::internal::multiplication_floor(2 * BATCH as usize))
    });
    group.finish();
}

fn two_party(c: &mut Criterion) {
    let n = 100_000;
    let mut group = c.benchmark_group("two-party-end-to-end");
    group.sample_size(10);
    group.throughput(Throughput::Elements(2 * n as u64));
    group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
        b.iter(|| {
            let hosts = vec![HostInput {
                name: "host".into(),
                ids: ids("h", n, n * 4 / 5),
                duplicates: DuplicatePolicy::Reject,
            }];
            run_in_memory(
                ids("g", n, n * 4 / 5),
                GuestConfig::default(),
                hosts,
                &mut |_| {},
            )
            .expect("psi run")
        })
    });
    group.finish();
}

criterion_group!(benches, per_element, two_party);
criterion_main!(benches);
