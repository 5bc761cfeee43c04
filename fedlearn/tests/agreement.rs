//! The secret-shared job and the plaintext implementation of the same iteration on the same
//! quantised values agree within the fixed point of the shares.

mod common;

use common::{jobs, parties};
use fedlearn::*;

#[test]
fn shared_and_plaintext_iterations_agree_within_the_fixed_point() {
    const STEPS: usize = 8;
    let config = TrainConfig {
        max_epochs: STEPS,
        early_stopping: None,
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
    let shared = simulate(guest_job, host_jobs, false, &mut |_| {}).unwrap();
    // Without early stopping the model is the last epoch's: the weights after T updates.
    assert_eq!(shared.guest.best_epoch, STEPS);

    let pairs = std::iter::once((&shared.guest.model, &plain.guest))
        .chain(shared.hosts.iter().map(|h| &h.model).zip(&plain.hosts));
    let (mut largest, mut moved) = (0.0f64, 0.0f64);
    for (enc, plain) in pairs {
        for (a, b) in enc.features.iter().zip(&plain.features) {
            largest = largest.max((a.weight - b.weight).abs());
            moved = moved.max(b.weight.abs());
        }
        if let (Some(a), Some(b)) = (enc.intercept, plain.intercept) {
            largest = largest.max((a - b).abs());
        }
    }
    let bits = std::iter::once(shared.guest.feature_frac_bits)
        .chain(shared.hosts.iter().map(|h| h.feature_frac_bits))
        .min()
        .unwrap();
    println!("largest weight difference {largest:.3e}, largest weight {moved:.3e}, f ≥ {bits}");
    // Weights, velocities and couplings carry 20 fraction bits; the truncations of a step add
    // a few units of 2^-20 per weight, and block Jacobi with momentum damps them.
    assert!(largest < 2e-5, "{largest}");
    assert!(moved > 0.1, "{moved}");
}
