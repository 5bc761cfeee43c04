//! A three-party job on the credit data (a guest and two hosts) run long enough to converge:
//! it reaches the model the plaintext iteration converges to, and every step sends the same
//! bytes.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{jobs, parties};
use fedlearn::internal::split;
use fedlearn::*;

#[test]
fn three_party_credit_job_reaches_the_plaintext_optimum() {
    const EPOCHS: usize = 15;
    let (guest, hosts) = parties("default_credit", 2);
    let config = |max_epochs| TrainConfig {
        max_epochs,
        validation_fraction: 0.3,
        early_stopping: None,
        seed: 1,
        ..TrainConfig::default()
    };
    let (guest_job, host_jobs) = jobs(guest.clone(), hosts.clone(), &config(EPOCHS));
    let run = simulate(guest_job, host_jobs, true, &mut |_| {}).unwrap();

    // The plaintext iteration (same split, quantisation, residual and penalty), run long
    // enough to converge, scored on the same validation rows.
    let host_refs: Vec<&Table> = hosts.iter().collect();
    let plain = train_plain_vertical(
        &guest,
        &host_refs,
        &vec![Prep::default(); hosts.len() + 1],
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
    let evaluation = &run.guest.evaluation;
    assert_eq!(evaluation.count, validation.len());
    let auc = evaluation.metrics.auc;
    assert!(
        (auc - plain_auc).abs() < 0.005,
        "shared AUC {auc} vs plaintext {plain_auc}"
    );

    // Both losses fall after the first epoch and the last epochs barely move: the iteration
    // has converged.
    let history = &run.guest.history;
    let epochs: Vec<usize> = history.iter().map(|r| r.epoch).collect();
    assert_eq!(epochs, (1..=EPOCHS).collect::<Vec<_>>());
    let (first, last) = (&history[0], &history[EPOCHS - 1]);
    let validation_loss = |r: &EpochReport| r.validation_loss.expect("a validation split");
    assert!(
        last.train_loss < first.train_loss - 0.01
            && validation_loss(last) < validation_loss(first) - 0.01,
        "{history:?}"
    );
    assert!(
        (history[EPOCHS - 2].train_loss - last.train_loss).abs() < 1e-4,
        "{history:?}"
    );

    // Every step sends the same bytes: each sender sends each receiver the same bytes of each
    // step kind at every step 0 ..= EPOCHS, whatever the data.
    let mut sizes: BTreeMap<(&str, &str, &str), BTreeMap<u64, usize>> = BTreeMap::new();
    for record in run
        .wire
        .iter()
        .filter(|r| Message::STEP_KINDS.contains(&r.kind))
    {
        let message = Message::from_bytes(&record.bytes).unwrap();
        let step = step_of(&message).expect("a step kind names its step");
        *sizes
            .entry((&record.from, &record.to, record.kind))
            .or_default()
            .entry(step)
            .or_default() += record.len;
    }
    let kinds: BTreeSet<&str> = sizes.keys().map(|k| k.2).collect();
    assert_eq!(kinds, Message::STEP_KINDS.into_iter().collect());
    for (key, per_step) in &sizes {
        let steps: Vec<u64> = per_step.keys().copied().collect();
        assert_eq!(steps, (0..=EPOCHS as u64).collect::<Vec<_>>(), "{key:?}");
        let first = per_step[&0];
        assert!(
            per_step.values().all(|&b| b == first),
            "{key:?}: {per_step:?}"
        );
    }
}

/// The step a per-step message belongs to.
fn step_of(message: &Message) -> Option<u64> {
    match message {
        Message::StepVector { step, .. }
        | Message::StepRelease { step, .. }
        | Message::HandOver { step, .. }
        | Message::StepLossVector { step, .. }
        | Message::StepLossRelease { step, .. }
        | Message::LossShares { step, .. } => Some(*step),
        Message::EpochEnd { epoch, .. } => Some(*epoch),
        _ => None,
    }
}
