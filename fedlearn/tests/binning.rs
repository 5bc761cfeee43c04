//! Models on bins: every party cuts its own columns into 10 training-quantile bins and trains
//! on their indicators. On the credit data with a fixed 70/30 stratified split, the federated
//! model's test AUC must reach 0.76 and come within 0.01 of a plaintext logistic regression
//! fitted to convergence on the same bins of the joined table.

mod common;

use common::{jobs, parties};
use fedlearn::*;

/// 70% of each class for training, by a fixed shuffle; the rest for testing.
fn stratified_split(labels: &[f64], seed: u64) -> (Vec<usize>, Vec<usize>) {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for class in [0.0, 1.0] {
        let mut rows: Vec<usize> = (0..labels.len()).filter(|&r| labels[r] == class).collect();
        // A multiplicative hash orders the rows; the order is fixed by `seed`.
        rows.sort_by_key(|&r| (r as u64 ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let cut = rows.len() * 7 / 10;
        train.extend_from_slice(&rows[..cut]);
        test.extend_from_slice(&rows[cut..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

fn quantile_bins(count: usize) -> Prep {
    Prep {
        default: ColumnPrep {
            bins: Some(Binning::Quantile { count }),
            ..ColumnPrep::default()
        },
        ..Prep::default()
    }
}

fn auc(scores: &[f64], labels: &[f64]) -> f64 {
    let probabilities: Vec<f64> = scores.iter().map(|&z| sigmoid(z)).collect();
    evaluate(&probabilities, labels).unwrap().auc
}

#[test]
fn federated_model_on_bins_matches_plaintext_logistic_regression_on_the_same_bins() {
    let (guest, hosts) = parties("default_credit", 2);
    let labels = guest.labels().unwrap().to_vec();
    let (train, test) = stratified_split(&labels, 7);
    let prep = quantile_bins(10);
    let select = |table: &Table, rows: &[usize]| table.select_rows(rows).unwrap();

    // The defaults: they must be good enough as they come.
    let config = TrainConfig {
        seed: 11,
        ..TrainConfig::default()
    };
    let (mut guest_job, mut host_jobs) = jobs(
        select(&guest, &train),
        hosts.iter().map(|h| select(h, &train)).collect(),
        &config,
    );
    guest_job.prep = prep.clone();
    for job in &mut host_jobs {
        job.prep = prep.clone();
    }
    let run = simulate(guest_job, host_jobs, false, &mut |_| {}).unwrap();
    assert_eq!(run.guest.convergence, Convergence::Converged);
    assert!(run.guest.model.features.is_empty());
    assert_eq!(run.guest.model.binned.len(), guest.features());
    let mut z = run
        .guest
        .model
        .partial_scores(&select(&guest, &test))
        .unwrap();
    for (part, host) in run.hosts.iter().zip(&hosts) {
        for (z, s) in z
            .iter_mut()
            .zip(part.model.partial_scores(&select(host, &test)).unwrap())
        {
            *z += s;
        }
    }
    let test_labels: Vec<f64> = test.iter().map(|&r| labels[r]).collect();
    let federated = auc(&z, &test_labels);

    // The same bins (fitted on the training rows) on the joined table, in the clear.
    let designs: Vec<Table> = std::iter::once(&guest)
        .chain(&hosts)
        .map(|t| prep.design("party", t, &train).unwrap())
        .collect();
    let width: usize = designs.iter().map(Table::features).sum();
    let joined = |rows: &[usize]| -> Vec<f64> {
        rows.iter()
            .flat_map(|&r| {
                designs.iter().flat_map(move |d| {
                    d.values()[r * d.features()..(r + 1) * d.features()].to_vec()
                })
            })
            .collect()
    };
    let train_labels: Vec<f64> = train.iter().map(|&r| labels[r]).collect();
    let plain = train_reference(
        &joined(&train),
        width,
        &train_labels,
        &ReferenceConfig {
            epochs: 400,
            learning_rate: 0.05,
            l2: 0.0,
            residual: Residual::Sigmoid,
        },
    )
    .unwrap();
    let plaintext = auc(&plain.scores(&joined(&test)), &test_labels);
    eprintln!("test AUC: federated {federated:.4}, plaintext on the same bins {plaintext:.4}");
    assert!(federated >= 0.76, "federated test AUC {federated:.4}");
    assert!(
        (federated - plaintext).abs() <= 0.01,
        "federated {federated:.4} vs plaintext {plaintext:.4}"
    );
}
