//! Plaintext logistic regression on joined data: the accuracy reference of the federated
//! trainer and the speed floor of its benchmark. Never used on the product path.

use crate::config::{Optimizer, OptimizerState, TrainConfig};
use crate::data::Table;
use crate::error::FedError;
use crate::masks::Split;
use crate::math::sigmoid;
use crate::metrics::{evaluate, Metrics};
use crate::model::{ModelPart, Standardised};
use crate::prep::{Fitted, Prep};
use crate::protocol::linear_scores;
use ndarray::ArrayView2;

/// How the residual d = p − y is formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residual {
    /// Exact: σ(z) − y.
    Sigmoid,
    /// First-order Taylor expansion around 0, linear in z (what the encrypted protocol uses):
    /// 0.25·z + 0.5 − y.
    Taylor,
}

/// Settings of the reference trainer (full batch, Adam).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReferenceConfig {
    /// Passes over the data.
    pub epochs: usize,
    /// Adam step size.
    pub learning_rate: f64,
    /// L2 penalty λ (the loss gains λ/2·‖w‖², the intercept is not penalised).
    pub l2: f64,
    /// Residual form.
    pub residual: Residual,
}

/// Weights and intercept of a linear score z = x·w + b.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearModel {
    /// One weight per feature.
    pub weights: Vec<f64>,
    /// Intercept.
    pub intercept: f64,
}

impl LinearModel {
    /// z for each row of `rows` (rows × `weights.len()` features).
    pub fn scores(&self, rows: ArrayView2<'_, f64>) -> Vec<f64> {
        rows.rows()
            .into_iter()
            .map(|row| {
                self.intercept
                    + row
                        .iter()
                        .zip(&self.weights)
                        .map(|(x, w)| x * w)
                        .sum::<f64>()
            })
            .collect()
    }

    /// σ(z) for each row.
    pub fn probabilities(&self, rows: ArrayView2<'_, f64>) -> Vec<f64> {
        self.scores(rows).into_iter().map(sigmoid).collect()
    }
}

/// Trains on `rows` (rows × features) and their 0/1 labels.
pub fn train_reference(
    rows: ArrayView2<'_, f64>,
    labels: &[f64],
    config: &ReferenceConfig,
) -> Result<LinearModel, FedError> {
    let (n, features) = rows.dim();
    if labels.len() != n {
        return Err(FedError::LengthMismatch {
            what: "labels vs matrix rows",
            expected: n,
            got: labels.len(),
        });
    }
    if let Some(row) = labels.iter().position(|&y| y != 0.0 && y != 1.0) {
        return Err(FedError::BadLabel {
            row,
            value: labels[row],
        });
    }
    // The federated parties' Adam (bias-corrected, ε = 1e-8) over the weights and, last, the
    // unpenalised intercept.
    let settings = TrainConfig {
        optimizer: Optimizer::Adam {
            beta1: 0.9,
            beta2: 0.999,
        },
        l1: 0.0,
        l2: config.l2,
        ..TrainConfig::default()
    };
    let mut weights = vec![0.0; features + 1];
    let mut adam = OptimizerState::new(features + 1);
    for _ in 0..config.epochs {
        let mut gradient = vec![0.0; features + 1];
        for (row, &y) in rows.rows().into_iter().zip(labels) {
            let z = weights[features] + row.iter().zip(&weights).map(|(x, w)| x * w).sum::<f64>();
            let d = match config.residual {
                Residual::Sigmoid => sigmoid(z) - y,
                Residual::Taylor => 0.25 * z + 0.5 - y,
            };
            for (g, x) in gradient.iter_mut().zip(row) {
                *g += d * x;
            }
            gradient[features] += d;
        }
        for g in &mut gradient {
            *g /= n as f64;
        }
        adam.step(&settings, config.learning_rate, &mut weights, &gradient, 1);
    }
    let intercept = weights.pop().unwrap_or(0.0);
    Ok(LinearModel { weights, intercept })
}

/// Result of [`train_plain_vertical`].
#[derive(Clone, Debug, PartialEq)]
pub struct PlainOutcome {
    /// The guest's part.
    pub guest: ModelPart,
    /// Each host's part.
    pub hosts: Vec<ModelPart>,
    /// Training metrics after each epoch.
    pub history: Vec<Metrics>,
}

/// The federated update rule computed in the clear on the parties' tables together: the same
/// split, standardisation, batches, first-order residual, optimiser and penalties as the
/// encrypted protocol, in f64 and without quantisation, for `max_epochs` epochs (no early
/// stopping). The encrypted path must agree with it within the quantisation bound. `preps`
/// holds each party's preparation, the guest's first.
pub fn train_plain_vertical(
    guest: &Table,
    hosts: &[&Table],
    preps: &[Prep],
    config: &TrainConfig,
) -> Result<PlainOutcome, FedError> {
    config.validate()?;
    if preps.len() != hosts.len() + 1 {
        return Err(FedError::LengthMismatch {
            what: "preparations (the guest's, then one per host)",
            expected: hosts.len() + 1,
            got: preps.len(),
        });
    }
    let labels = guest
        .labels()
        .ok_or_else(|| FedError::config("labels", "the guest's table has no label column"))?;
    let rows = guest.rows();
    if let Some(host) = hosts.iter().find(|h| h.rows() != rows) {
        return Err(FedError::RowCount {
            party: "host".into(),
            expected: rows,
            got: host.rows(),
        });
    }
    let split = Split::new(rows, config.seed, config.validation_fraction);
    let fitted = std::iter::once(guest)
        .chain(hosts.iter().copied())
        .zip(preps)
        .map(|(t, prep)| Fitted::fit("party", prep, t, &split.train))
        .collect::<Result<Vec<_>, _>>()?;
    let designs = std::iter::once(guest)
        .chain(hosts.iter().copied())
        .zip(&fitted)
        .map(|(t, f)| f.design(t))
        .collect::<Result<Vec<_>, _>>()?;
    let tables: Vec<&Table> = designs.iter().collect();
    let standardised = tables
        .iter()
        .map(|t| Standardised::fit("party", t, &split.train))
        .collect::<Result<Vec<_>, _>>()?;
    // Weights per party; the guest's intercept is its last weight.
    let mut weights: Vec<Vec<f64>> = tables
        .iter()
        .enumerate()
        .map(|(p, t)| vec![0.0; t.features() + usize::from(p == 0)])
        .collect();
    let mut optimizers: Vec<OptimizerState> = weights
        .iter()
        .map(|w| OptimizerState::new(w.len()))
        .collect();
    let scores = |weights: &[Vec<f64>], rows: &[usize]| -> Vec<f64> {
        let mut z = vec![weights[0][tables[0].features()]; rows.len()];
        for (p, table) in tables.iter().enumerate() {
            let width = table.features();
            let partial = linear_scores(standardised[p].values.view(), rows, &weights[p][..width]);
            for (z, s) in z.iter_mut().zip(partial) {
                *z += s;
            }
        }
        z
    };
    let mut history = Vec::new();
    let mut step = 0u64;
    let batches = split.partition(config.seed, config.batch_size);
    for epoch in 1..=config.max_epochs {
        for index in Split::epoch_order(config.seed, epoch, batches.len()) {
            let batch = &batches[index];
            let rate = config.rate(step, epoch);
            let z = scores(&weights, batch);
            let d: Vec<f64> = z
                .iter()
                .zip(batch)
                .map(|(z, &r)| 0.25 * z + 0.5 - labels[r])
                .collect();
            for (p, table) in tables.iter().enumerate() {
                let width = table.features();
                let mut gradient = vec![0.0; weights[p].len()];
                for (&r, &d) in batch.iter().zip(&d) {
                    for (g, x) in gradient.iter_mut().zip(standardised[p].values.row(r)) {
                        *g += x * d;
                    }
                    if p == 0 {
                        gradient[width] += d;
                    }
                }
                for g in &mut gradient {
                    *g /= batch.len() as f64;
                }
                optimizers[p].step(
                    config,
                    rate,
                    &mut weights[p],
                    &gradient,
                    usize::from(p == 0),
                );
            }
            step += 1;
        }
        let probabilities: Vec<f64> = scores(&weights, &split.train)
            .into_iter()
            .map(sigmoid)
            .collect();
        let train_labels: Vec<f64> = split.train.iter().map(|&r| labels[r]).collect();
        history.push(evaluate(&probabilities, &train_labels)?);
    }
    let parts: Vec<ModelPart> = tables
        .iter()
        .enumerate()
        .map(|(p, t)| {
            let width = t.features();
            let intercept = (p == 0).then(|| weights[0][width]);
            standardised[p].model(
                &fitted[p],
                "plain",
                if p == 0 { "guest" } else { "host" },
                t.missing(),
                &weights[p][..width],
                intercept,
            )
        })
        .collect();
    let mut parts = parts.into_iter();
    let guest = parts.next().expect("the guest's part");
    Ok(PlainOutcome {
        guest,
        hosts: parts.collect(),
        history,
    })
}
