//! Simulated federated training on the FATE example data against a plaintext logistic
//! regression on the joined data.

mod common;

use common::{jobs, joined_standardised, parties};
use fedlearn::*;

/// Plaintext logistic regression (exact sigmoid) on the joined, standardised data.
fn plaintext_auc(dataset: &str) -> f64 {
    let (guest, hosts) = parties(dataset, 1);
    let rows = joined_standardised(&guest, &hosts);
    let labels = guest.labels().unwrap();
    let model = train_reference(
        rows.view(),
        labels,
        &ReferenceConfig {
            epochs: 300,
            learning_rate: 0.05,
            l2: 0.0,
            residual: Residual::Sigmoid,
        },
    )
    .unwrap();
    evaluate(&model.probabilities(rows.view()), labels)
        .unwrap()
        .auc
}

fn federated(dataset: &str, hosts: usize, config: &TrainConfig) -> Simulation {
    let (guest, host_tables) = parties(dataset, hosts);
    let (guest_job, host_jobs) = jobs(guest, host_tables, config);
    let mut epochs = 0;
    let simulation = simulate(guest_job, host_jobs, false, &mut |event| {
        if let Event::Epoch(report) = event {
            epochs = report.epoch;
        }
    })
    .unwrap();
    assert_eq!(epochs, simulation.guest.history.len());
    simulation
}

fn credit_config() -> TrainConfig {
    TrainConfig {
        max_epochs: 10,
        seed: 11,
        ..TrainConfig::default()
    }
}

/// AUC of the joint model the parties' parts form, on every row (the test may join them).
fn joint_auc(simulation: &Simulation, guest: &Table, hosts: &[Table]) -> f64 {
    let mut host_sum = vec![0.0; guest.rows()];
    for (outcome, table) in simulation.hosts.iter().zip(hosts) {
        for (s, z) in host_sum
            .iter_mut()
            .zip(outcome.model.partial_scores(table).unwrap())
        {
            *s += z;
        }
    }
    let own = simulation.guest.model.partial_scores(guest).unwrap();
    let probabilities = joint_probabilities(&own, &host_sum).unwrap();
    evaluate(&probabilities, guest.labels().unwrap())
        .unwrap()
        .auc
}

#[test]
fn two_and_three_party_credit_training_reaches_the_plaintext_auc() {
    let plain = plaintext_auc("default_credit");
    for hosts in [1, 2] {
        let simulation = federated("default_credit", hosts, &credit_config());
        let evaluation = &simulation.guest.evaluation;
        println!(
            "{} parties: {evaluation:?} (plaintext AUC {plain:.4})",
            hosts + 1,
        );
        // Without a validation split the one reveal is on the training rows: all of them.
        assert_eq!(evaluation.rows, RevealedRows::Training);
        assert_eq!(evaluation.count, 30_000);
        assert!(
            plain - evaluation.metrics.auc < 0.01,
            "{} vs {plain}",
            evaluation.metrics.auc
        );
        assert_eq!(simulation.hosts.len(), hosts);
        assert!(simulation.hosts.iter().all(|h| h.revealed_rows == 30_000));
        // Every party's model part scores the rows; together they give the revealed metrics.
        let (guest, host_tables) = parties("default_credit", hosts);
        let auc = joint_auc(&simulation, &guest, &host_tables);
        assert!(
            (auc - evaluation.metrics.auc).abs() < 1e-9,
            "{auc} vs {evaluation:?}"
        );
        // The Taylor loss falls over the epochs.
        let history = &simulation.guest.history;
        assert!(history.last().unwrap().train_loss < history[0].train_loss);
    }
}

#[test]
fn breast_cancer_training_with_validation_and_early_stopping() {
    let plain = plaintext_auc("breast");
    for hosts in [1, 2] {
        let config = TrainConfig {
            max_epochs: 30,
            validation_fraction: 0.2,
            early_stopping: Some(EarlyStopping::Loss {
                patience: 3,
                min_delta: 1e-4,
            }),
            l2: 0.01,
            seed: 3,
        };
        let simulation = federated("breast", hosts, &config);
        let guest = &simulation.guest;
        println!(
            "{} parties: best epoch {} of {}, {:?}",
            hosts + 1,
            guest.best_epoch,
            guest.history.len(),
            guest.evaluation
        );
        assert_eq!(guest.evaluation.rows, RevealedRows::Validation);
        assert_eq!(guest.evaluation.count, 114);
        assert!(guest.evaluation.metrics.auc > 0.97);
        let (guest_table, host_tables) = parties("breast", hosts);
        let auc = joint_auc(&simulation, &guest_table, &host_tables);
        assert!(plain - auc < 0.01, "{auc} vs {plain}");
        // Every epoch reports a validation loss; the kept model is the best epoch's.
        assert!(guest.history.iter().all(|r| r.validation_loss.is_some()));
        let best = guest.history[guest.best_epoch - 1].validation_loss.unwrap();
        assert!(guest
            .history
            .iter()
            .all(|r| r.validation_loss.unwrap() >= best - 1e-4 || !r.best));
        for host in &simulation.hosts {
            assert_eq!(host.epochs, guest.history.len());
            assert_eq!(host.revealed_rows, 114);
        }
    }
}
