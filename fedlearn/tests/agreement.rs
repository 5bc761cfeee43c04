//! The encrypted protocol and the plaintext implementation of the same update rule agree within
//! the quantisation bound of the crate documentation.

mod common;

use common::{jobs, parties};
use fedlearn::*;

#[test]
fn encrypted_and_plaintext_updates_agree_within_the_quantisation_bound() {
    const STEPS: usize = 5;
    const RATE: f64 = 0.1;
    let config = TrainConfig {
        max_epochs: STEPS,
        batch_size: None,
        optimizer: Optimizer::Sgd { momentum: 0.0 },
        learning_rate: RATE,
        schedule: Schedule::Constant,
        seed: 1,
        ..TrainConfig::default()
    };
    let (guest, hosts) = parties("default_credit", 2);
    let host_refs: Vec<&Table> = hosts.iter().collect();
    let plain = train_plain_vertical(&guest, &host_refs, &config).unwrap();
    let (guest_job, host_jobs) = jobs(guest.clone(), hosts.clone(), &config);
    let encrypted = simulate(guest_job, host_jobs, false, &mut |_| {}).unwrap();

    // Per-step gradient error bound (crate docs): with k hosts, features standardised (so
    // mean |x| ≤ 1) and |d| ≤ D, each coordinate is within
    // (k+1)·2^-17 + D·2^-(f+1) + (k+1)·2^-(f+18), f the smallest feature scale.
    let k = hosts.len() as f64;
    let f = std::iter::once(encrypted.guest.feature_frac_bits)
        .chain(encrypted.hosts.iter().map(|h| h.feature_frac_bits))
        .min()
        .unwrap() as i32;
    let rows = guest.rows();
    let mut z = plain.guest.partial_scores(&guest).unwrap();
    for (part, table) in plain.hosts.iter().zip(&hosts) {
        for (z, s) in z.iter_mut().zip(part.partial_scores(table).unwrap()) {
            *z += s;
        }
    }
    // Σ_i |d_i| / n along the run, bounded with the final scores (|d| ≤ 0.25·|z| + 0.5),
    // doubled for the intermediate steps.
    let d_mean = 2.0 * z.iter().map(|z| 0.25 * z.abs() + 0.5).sum::<f64>() / rows as f64;
    let mean_abs_x = 1.0; // standardised columns: mean |x| ≤ sqrt(mean x²) = 1
    let per_step = mean_abs_x * (k + 1.0) * 2f64.powi(-17)
        + d_mean * 2f64.powi(-f - 1)
        + (k + 1.0) * 2f64.powi(-f - 18);
    // Weight errors compound through the gradient's Lipschitz constant L = 0.25·λ_max(XᵀX/n)
    // of the joined standardised data with the intercept column: e_T ≤ η·T·B·(1 + η·L)^T.
    let lipschitz = 0.25 * largest_eigenvalue(&guest, &hosts) * 1.01;
    let bound = RATE * STEPS as f64 * per_step * (1.0 + RATE * lipschitz).powi(STEPS as i32);
    let pairs = std::iter::once((&encrypted.guest.model, &plain.guest))
        .chain(encrypted.hosts.iter().map(|h| &h.model).zip(&plain.hosts));
    let mut largest = 0.0f64;
    for (enc, plain) in pairs {
        for (a, b) in enc.features.iter().zip(&plain.features) {
            largest = largest.max((a.weight - b.weight).abs());
        }
        if let (Some(a), Some(b)) = (enc.intercept, plain.intercept) {
            largest = largest.max((a - b).abs());
        }
    }
    println!("largest weight difference {largest:.3e}, bound {bound:.3e} (f = {f}, rows {rows})");
    assert!(largest <= bound, "{largest} > {bound}");
    // The weights moved well beyond the bound, so agreement is not trivial.
    let moved = plain
        .guest
        .features
        .iter()
        .map(|f| f.weight.abs())
        .fold(0.0, f64::max);
    assert!(moved > 10.0 * bound, "{moved} vs {bound}");
}

/// λ_max(XᵀX/n) for the joined standardised columns plus a column of ones, by power iteration.
fn largest_eigenvalue(guest: &Table, hosts: &[Table]) -> f64 {
    let (rows, width) = common::joined_standardised(guest, hosts);
    let n = guest.rows();
    let columns = width + 1;
    let x = |r: usize, c: usize| if c == width { 1.0 } else { rows[r * width + c] };
    let mut v = vec![1.0; columns];
    let mut lambda = 0.0;
    for _ in 0..200 {
        let xv: Vec<f64> = (0..n)
            .map(|r| (0..columns).map(|c| x(r, c) * v[c]).sum())
            .collect();
        let w: Vec<f64> = (0..columns)
            .map(|c| (0..n).map(|r| x(r, c) * xv[r]).sum::<f64>() / n as f64)
            .collect();
        lambda = w.iter().map(|a| a * a).sum::<f64>().sqrt();
        v = w.iter().map(|a| a / lambda).collect();
    }
    lambda
}
