//! The secret-shared core (`fedlearn::internal::simulate_shared`) on the credit data with a
//! guest and two hosts: it reaches the model the plaintext update rule converges to.

mod common;

use common::parties;
use fedlearn::internal::{simulate_shared, split, SharedParty};
use fedlearn::*;

#[test]
fn three_party_credit_job_reaches_the_plaintext_optimum() {
    let (guest, hosts) = parties("default_credit", 2);
    let prep = Prep::default();
    let config = |max_epochs| TrainConfig {
        max_epochs,
        validation_fraction: 0.3,
        early_stopping: None,
        seed: 1,
        ..TrainConfig::default()
    };
    let mut members = vec![SharedParty {
        name: "bank",
        table: &guest,
        prep: &prep,
    }];
    for (name, table) in ["tax", "power"].into_iter().zip(&hosts) {
        members.push(SharedParty {
            name,
            table,
            prep: &prep,
        });
    }
    let run = simulate_shared(&members, &config(15)).unwrap();

    // The plaintext iteration (same split, quantisation, residual and penalty), run long
    // enough to converge, scored on the same validation rows.
    let host_refs: Vec<&Table> = hosts.iter().collect();
    let plain = train_plain_vertical(
        &guest,
        &host_refs,
        &[prep.clone(), prep.clone(), prep],
        &config(400),
    )
    .unwrap();
    let mut z = plain.guest.partial_scores(&guest).unwrap();
    for (part, table) in plain.hosts.iter().zip(&hosts) {
        for (z, h) in z.iter_mut().zip(part.partial_scores(table).unwrap()) {
            *z += h;
        }
    }
    let (_, validation) = split(guest.rows(), 1, 0.3);
    let labels = guest.labels().unwrap();
    let p: Vec<f64> = validation.iter().map(|&r| sigmoid(z[r])).collect();
    let y: Vec<f64> = validation.iter().map(|&r| labels[r]).collect();
    let plain_auc = evaluate(&p, &y).unwrap().auc;
    assert!(
        (run.auc - plain_auc).abs() < 0.005,
        "shared AUC {} vs plaintext {plain_auc}",
        run.auc
    );
    // Both losses fall and the last steps barely move: the iteration has converged.
    let (first, last) = (&run.losses[0], &run.losses[14]);
    assert_eq!(first.len(), 2, "training and validation losses");
    assert!(
        last[0] < first[0] - 0.1 && last[1] < first[1] - 0.1,
        "{:?}",
        run.losses
    );
    assert!(
        (run.losses[13][0] - last[0]).abs() < 1e-4,
        "{:?}",
        run.losses
    );
    // Every step sends the same bytes: sizes follow the job's shape, never the data.
    assert!(run.step_bytes.iter().all(|&b| b == run.step_bytes[0]));
}
