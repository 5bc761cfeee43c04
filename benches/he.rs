//! Encrypted X^T v, the hot loop of training.
//!
//! `cargo bench --bench he` times, for the credit data's shape (30000 × 23) and for
//! 10^5 × 300: the product on one thread and on all threads (time per sample·feature is the
//! time divided by the reported element count), packing + masking + flooding, and encryption
//! per value; and prints payload bytes per value and of the result.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use he::{PreparedMatrix, SecretKey, N8192_Q192};

fn values(n: usize, bound: i64, salt: i64) -> Vec<i64> {
    // Deterministic spread of values; the bench measures speed, not correctness.
    (0..n as i64)
        .map(|i| (i * 7919 + salt * 104_729) % (2 * bound + 1) - bound)
        .collect()
}

fn product(c: &mut Criterion) {
    let params = N8192_Q192;
    let (secret, public) = SecretKey::generate(&params);
    let packing = secret
        .packing_key(params.max_pack_levels)
        .expect("packing key");
    println!(
        "packing key: {} levels, {:.1} MB",
        packing.levels(),
        packing.to_bytes().len() as f64 / 1e6
    );
    let single = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("thread pool");
    for (rows, columns) in [(30_000usize, 23usize), (100_000, 300)] {
        let v = secret
            .encrypt(&values(rows, 1 << 15, 1), 1 << 15)
            .expect("encrypt");
        let x = PreparedMatrix::new(&params, rows, columns, &values(rows * columns, 1 << 12, 2))
            .expect("matrix");
        let (masked, _) = public
            .mask_and_flood(
                &params,
                public.multiply(&params, &v, &x).expect("multiply"),
                &packing,
            )
            .expect("mask");
        println!(
            "{rows} × {columns}: input {:.1} B per value, result {} B in {} ciphertext(s) of {} slots ({:.1} B per sample), prepared X {} MiB",
            v.payload_bytes() as f64 / rows as f64,
            masked.payload_bytes(),
            masked.len().div_ceil(1 << masked.levels()),
            1 << masked.levels(),
            masked.payload_bytes() as f64 / rows as f64,
            x.heap_bytes() >> 20
        );
        let mut group = c.benchmark_group(format!("xtv/{rows}x{columns}"));
        group.sample_size(10);
        group.throughput(Throughput::Elements((rows * columns) as u64));
        group.bench_function(BenchmarkId::new("multiply", "1-thread"), |b| {
            b.iter(|| {
                single.install(|| black_box(public.multiply(&params, &v, &x).expect("multiply")))
            })
        });
        group.bench_function(BenchmarkId::new("multiply", "all-threads"), |b| {
            b.iter(|| black_box(public.multiply(&params, &v, &x).expect("multiply")))
        });
        group.throughput(Throughput::Elements(columns as u64));
        group.bench_function("pack-mask-and-flood", |b| {
            b.iter_batched(
                || public.multiply(&params, &v, &x).expect("multiply"),
                |columns| {
                    public
                        .mask_and_flood(&params, columns, &packing)
                        .expect("mask")
                },
                criterion::BatchSize::LargeInput,
            )
        });
        group.finish();
    }
    let mut group = c.benchmark_group("encrypt");
    let n = 4 * params.poly_size;
    let plain = values(n, 1 << 15, 3);
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("per-value", |b| {
        b.iter(|| secret.encrypt(&plain, 1 << 15).expect("encrypt"))
    });
    group.finish();
}

criterion_group!(benches, product);
criterion_main!(benches);
