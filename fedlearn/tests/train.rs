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

/// Five parties (guest and four hosts, two columns each) whose columns all load on one
/// factor (correlation 0.8 between any two columns of different parties), labels from that
/// factor; rows as CSV tables of ids r0, r1, ….
fn one_factor_book(rows: usize) -> (Table, Vec<Table>) {
    // xorshift64* and Box–Muller: a fixed book, no dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut uniform = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut normal = move || {
        let (u, v) = (uniform(), uniform());
        (-2.0 * (1.0 - u).ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    };
    let mut texts: Vec<String> = (0..5)
        .map(|p| {
            let label = if p == 0 { ",y" } else { "" };
            format!("id,a{p},b{p}{label}")
        })
        .collect();
    for r in 0..rows {
        let factor = normal();
        let y = u8::from(factor + 0.5 * normal() > 0.8);
        for (p, text) in texts.iter_mut().enumerate() {
            let mut column = || 0.8f64.sqrt() * factor + 0.2f64.sqrt() * normal();
            text.push_str(&format!("\nr{r},{:.6},{:.6}", column(), column()));
            if p == 0 {
                text.push_str(&format!(",{y}"));
            }
        }
    }
    let mut tables = texts.iter().enumerate().map(|(p, text)| {
        let label = (p == 0).then_some("y");
        Table::parse_csv("one factor", text, "id", label, Missing::Reject, &|_| {
            Reading::Number
        })
        .unwrap()
    });
    let guest = tables.next().unwrap();
    (guest, tables.collect())
}

#[test]
fn five_parties_whose_columns_share_one_factor_converge() {
    // Preconditioned by its diagonal blocks, this book's Hessian has an eigenvalue near
    // 1 + 4·0.89: at the step size of two or three parties (0.7, with momentum 0.3) the
    // iteration diverges; at five parties' it converges.
    let (guest, hosts) = one_factor_book(3000);
    let host_refs: Vec<&Table> = hosts.iter().collect();
    let preps = vec![Prep::default(); 5];
    let config = TrainConfig {
        max_epochs: 60,
        early_stopping: None,
        ..TrainConfig::default()
    };
    let plain = train_plain_vertical(&guest, &host_refs, &preps, &config).unwrap();
    let losses: Vec<f64> = plain.history.iter().map(|m| m.log_loss).collect();
    let weights: Vec<f64> = std::iter::once(&plain.guest)
        .chain(&plain.hosts)
        .flat_map(|part| part.features.iter().map(|f| f.weight))
        .collect();
    println!(
        "log-loss {:.5} after 60 steps; weights {weights:.3?}",
        losses[59]
    );
    assert!(weights.iter().all(|w| w.abs() < 5.0), "{weights:?}");
    assert!((losses[59] - losses[58]).abs() < 1e-6, "{losses:?}");
    assert!(plain.history[59].auc > 0.85, "{:?}", plain.history[59]);
}
