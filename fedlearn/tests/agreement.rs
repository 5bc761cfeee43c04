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
    let plain = train_plain_vertical(
        &guest,
        &host_refs,
        &vec![Prep::default(); host_refs.len() + 1],
        &config,
    )
    .unwrap();
    let (guest_job, host_jobs) = jobs(guest.clone(), hosts.clone(), &config);
    let encrypted = simulate(guest_job, host_jobs, false, &mut |_| {}).unwrap();

    // Per-step gradient error bound (crate docs): each party's own term is exact; the k other
    // parties' residual shares are rounded to 2^-s (error ≤ 2^-(s+1) each) and multiply its
    // features rounded to 2^-f. With features standardised (mean |x| ≤ 1) and the shares'
    // mean magnitude ≤ D, each coordinate is within k·2^-(s+1) + D·2^-(f+1) + k·2^-(f+s+2).
    let k = hosts.len() as f64;
    let s = encrypted.guest.share_frac_bits as i32;
    let rows = guest.rows();
    // Each party's partial scores with the final plaintext weights bound its shares along the
    // run (|share| ≤ 0.25·|z_P| + 0.5 for the guest, 0.25·|z_k| for a host), doubled for the
    // intermediate steps; D_P sums the mean magnitudes of the *other* parties' shares, which
    // are what multiply P's rounded features.
    let mut shares: Vec<f64> = Vec::new();
    let z_guest = plain.guest.partial_scores(&guest).unwrap();
    shares.push(2.0 * z_guest.iter().map(|z| 0.25 * z.abs() + 0.5).sum::<f64>() / rows as f64);
    for (part, table) in plain.hosts.iter().zip(&hosts) {
        let z = part.partial_scores(table).unwrap();
        shares.push(2.0 * z.iter().map(|z| 0.25 * z.abs()).sum::<f64>() / rows as f64);
    }
    let bits: Vec<i32> = std::iter::once(encrypted.guest.feature_frac_bits)
        .chain(encrypted.hosts.iter().map(|h| h.feature_frac_bits))
        .map(|f| f as i32)
        .collect();
    let mean_abs_x = 1.0; // standardised columns: mean |x| ≤ sqrt(mean x²) = 1
    let per_step = (0..bits.len())
        .map(|p| {
            let others: f64 = shares
                .iter()
                .enumerate()
                .filter(|(q, _)| *q != p)
                .map(|(_, d)| d)
                .sum();
            mean_abs_x * k * 2f64.powi(-s - 1)
                + others * 2f64.powi(-bits[p] - 1)
                + k * 2f64.powi(-bits[p] - s - 2)
        })
        .fold(0.0, f64::max);
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
    println!(
        "largest weight difference {largest:.3e}, bound {bound:.3e} (f = {bits:?}, s = {s}, rows {rows})"
    );
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
    let rows = common::joined_standardised(guest, hosts);
    let (n, width) = rows.dim();
    let columns = width + 1;
    let x = |r: usize, c: usize| if c == width { 1.0 } else { rows[[r, c]] };
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
