//! Plaintext logistic regression on joined data: the accuracy reference of the federated
//! trainer and the speed floor of its benchmark. Never used on the product path.

use crate::config::TrainConfig;
use crate::data::Table;
use crate::error::FedError;
use crate::masks::Split;
use crate::math::sigmoid;
use crate::metrics::{evaluate, Metrics};
use crate::model::{ModelPart, Standardised};
use crate::prep::{Fitted, Prep};
use crate::protocol::Quantised;
use crate::shared::{invert, rate, MIN_DAMPING, MOMENTUM};
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
    let mut weights = vec![0.0; features + 1];
    // Adam (β = 0.9, 0.999, bias-corrected, ε = 1e-8) over the weights and, last, the
    // unpenalised intercept.
    let (mut first, mut second) = (vec![0.0; features + 1], vec![0.0; features + 1]);
    for epoch in 0..config.epochs {
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
        for (j, g) in gradient.iter_mut().enumerate() {
            *g /= n as f64;
            if j < features {
                *g += config.l2 * weights[j];
            }
        }
        let t = epoch as i32 + 1;
        for j in 0..=features {
            first[j] = 0.9 * first[j] + 0.1 * gradient[j];
            second[j] = 0.999 * second[j] + 0.001 * gradient[j] * gradient[j];
            let m = first[j] / (1.0 - 0.9f64.powi(t));
            let v = second[j] / (1.0 - 0.999f64.powi(t));
            weights[j] -= config.learning_rate * m / (v.sqrt() + 1e-8);
        }
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
    /// Training metrics after each step.
    pub history: Vec<Metrics>,
}

/// The federated update rule computed in the clear on the parties' tables together: the same
/// split, preparation, standardisation, quantisation, first-order residual, penalty and
/// block-Jacobi iteration as the secret-shared job, in f64, for `max_epochs` steps (no early
/// stopping: the weights after the last update). The shared job computes it in fixed point
/// (weights and couplings to 2^-20) and must agree with it to about 10^-5. `preps` holds
/// each party's preparation, the guest's first.
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
    // Each party's block of the Taylor objective's Hessian, preconditioned by its damped
    // inverse, as the shared job does (`shared.rs`), in f64 on the standardised values.
    let train = &split.train;
    let n = train.len() as f64;
    // The job's quantised values x̃/2^f (the guest's with its column of ones).
    let quantised: Vec<Quantised> = standardised
        .iter()
        .enumerate()
        .map(|(p, s)| Quantised::new(s.values.view(), train, p == 0))
        .collect();
    let design = |p: usize, r: usize| -> Vec<f64> {
        let q = &quantised[p];
        let unit = 2f64.powi(q.frac_bits as i32);
        (0..q.columns).map(|j| q.at(r, j) as f64 / unit).collect()
    };
    let widths: Vec<usize> = (0..tables.len())
        .map(|p| tables[p].features() + usize::from(p == 0))
        .collect();
    let rows: Vec<Vec<f64>> = train
        .iter()
        .map(|&r| (0..tables.len()).flat_map(|p| design(p, r)).collect())
        .collect();
    let m: usize = widths.iter().sum();
    let intercept = widths[0] - 1;
    let mut hessian = vec![0.0; m * m];
    let mut offset = vec![0.0; m];
    for (row, &r) in rows.iter().zip(train) {
        for i in 0..m {
            offset[i] += row[i] * (0.5 - labels[r]) / n;
            for j in 0..m {
                hessian[i * m + j] += row[i] * row[j] / (4.0 * n);
            }
        }
    }
    for i in (0..m).filter(|&i| i != intercept) {
        hessian[i * m + i] += config.l2;
    }
    let damping = (MIN_DAMPING - config.l2).max(0.0);
    let mut blocks = Vec::new();
    let mut start = 0;
    for &width in &widths {
        let range = start..start + width;
        let block: Vec<f64> = range
            .clone()
            .flat_map(|i| range.clone().map(move |j| (i, j)))
            .map(|(i, j)| hessian[i * m + j] + if i == j { damping } else { 0.0 })
            .collect();
        let inverse = invert(&block, width).ok_or_else(|| {
            FedError::config(
                "l2",
                "a party's columns are numerically collinear on the training rows",
            )
        })?;
        blocks.push((range, inverse));
        start += width;
    }
    let (mut w, mut v) = (vec![0.0; m], vec![0.0; m]);
    let rate = rate(tables.len());
    let mut history = Vec::new();
    let train_labels: Vec<f64> = train.iter().map(|&r| labels[r]).collect();
    for _ in 0..config.max_epochs {
        let gradient: Vec<f64> = (0..m)
            .map(|i| offset[i] + (0..m).map(|j| hessian[i * m + j] * w[j]).sum::<f64>())
            .collect();
        for (range, inverse) in &blocks {
            let k = range.len();
            for (a, i) in range.clone().enumerate() {
                let step: f64 = (0..k)
                    .map(|l| inverse[a * k + l] * gradient[range.start + l])
                    .sum();
                v[i] = MOMENTUM * v[i] - rate * step;
            }
        }
        for (w, v) in w.iter_mut().zip(&v) {
            *w += v;
        }
        let probabilities: Vec<f64> = rows
            .iter()
            .map(|row| sigmoid(row.iter().zip(&w).map(|(x, w)| x * w).sum()))
            .collect();
        history.push(evaluate(&probabilities, &train_labels)?);
    }
    let mut weights = Vec::new();
    let mut start = 0;
    for &width in &widths {
        weights.push(w[start..start + width].to_vec());
        start += width;
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
