//! Simulated federated training on the FATE example data against a plaintext logistic
//! regression on the joined data.

mod common;

use common::{jobs, joined_standardised, parties};
use fedlearn::*;

/// Plaintext logistic regression (exact sigmoid) on the joined, standardised data.
fn plaintext_auc(dataset: &str) -> f64 {
    let (guest, hosts) = parties(dataset, 1);
    let (rows, width) = joined_standardised(&guest, &hosts);
    let labels = guest.labels().unwrap();
    let model = train_reference(
        &rows,
        width,
        labels,
        &ReferenceConfig {
            epochs: 300,
            learning_rate: 0.05,
            l2: 0.0,
            residual: Residual::Sigmoid,
        },
    )
    .unwrap();
    evaluate(&model.probabilities(&rows), labels).unwrap().auc
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
        batch_size: Some(4096),
        learning_rate: 0.05,
        schedule: Schedule::InverseTime { decay: 0.05 },
        seed: 11,
        ..TrainConfig::default()
    }
}

#[test]
fn two_and_three_party_credit_training_reaches_the_plaintext_auc() {
    let plain = plaintext_auc("default_credit");
    for hosts in [1, 2] {
        let simulation = federated("default_credit", hosts, &credit_config());
        let last = simulation.guest.history.last().unwrap();
        println!(
            "{} parties: {:?} (plaintext AUC {plain:.4})",
            hosts + 1,
            last.train
        );
        assert!(
            plain - last.train.auc < 0.01,
            "{} vs {plain}",
            last.train.auc
        );
        assert_eq!(simulation.hosts.len(), hosts);
        // Every party's model part scores the rows; together they give the guest's metrics.
        let (guest, host_tables) = parties("default_credit", hosts);
        let mut host_sum = vec![0.0; guest.rows()];
        for (outcome, table) in simulation.hosts.iter().zip(&host_tables) {
            for (s, z) in host_sum
                .iter_mut()
                .zip(outcome.model.partial_scores(table).unwrap())
            {
                *s += z;
            }
        }
        let own = simulation.guest.model.partial_scores(&guest).unwrap();
        let probabilities = joint_probabilities(&own, &host_sum).unwrap();
        let metrics = evaluate(&probabilities, guest.labels().unwrap()).unwrap();
        assert!(
            (metrics.auc - last.train.auc).abs() < 1e-9,
            "{metrics:?} vs {last:?}"
        );
    }
}

#[test]
fn breast_cancer_training_with_validation_and_early_stopping() {
    let plain = plaintext_auc("breast");
    for hosts in [1, 2] {
        let config = TrainConfig {
            max_epochs: 30,
            batch_size: None,
            learning_rate: 0.1,
            validation_fraction: 0.2,
            early_stopping: Some(EarlyStopping::Loss {
                patience: 3,
                min_delta: 1e-4,
            }),
            l2: 0.01,
            seed: 3,
            ..TrainConfig::default()
        };
        let simulation = federated("breast", hosts, &config);
        let guest = &simulation.guest;
        let best = &guest.history[guest.best_epoch - 1];
        println!(
            "{} parties: best epoch {} {:?}",
            hosts + 1,
            guest.best_epoch,
            best.validation
        );
        assert!(
            plain - best.train.auc < 0.01,
            "{} vs {plain}",
            best.train.auc
        );
        assert!(best.validation.unwrap().auc > 0.97);
        // The kept model is the best epoch's, on every party.
        for host in &simulation.hosts {
            assert_eq!(host.epochs, guest.history.len());
        }
    }
}
