//! Plaintext logistic regression on joined data: the accuracy reference of the federated
//! trainer and the speed floor of its benchmark. Never used on the product path.

use crate::error::FedError;

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
    /// z for each row of a row-major matrix with `weights.len()` columns.
    pub fn scores(&self, rows: &[f64]) -> Vec<f64> {
        rows.chunks(self.weights.len())
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
    pub fn probabilities(&self, rows: &[f64]) -> Vec<f64> {
        self.scores(rows).into_iter().map(sigmoid).collect()
    }
}

/// The logistic function.
pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Trains on a row-major matrix of `features` columns and 0/1 labels.
pub fn train_reference(
    rows: &[f64],
    features: usize,
    labels: &[f64],
    config: &ReferenceConfig,
) -> Result<LinearModel, FedError> {
    let n = labels.len();
    if rows.len() != n * features {
        return Err(FedError::LengthMismatch {
            what: "matrix entries (rows × features)",
            expected: n * features,
            got: rows.len(),
        });
    }
    if let Some(row) = labels.iter().position(|&y| y != 0.0 && y != 1.0) {
        return Err(FedError::BadLabel {
            row,
            value: labels[row],
        });
    }
    let mut model = LinearModel {
        weights: vec![0.0; features],
        intercept: 0.0,
    };
    // Adam state for the weights and, last, the intercept.
    let (beta1, beta2, eps): (f64, f64, f64) = (0.9, 0.999, 1e-8);
    let mut m = vec![0.0; features + 1];
    let mut v = vec![0.0; features + 1];
    for epoch in 1..=config.epochs {
        let z = model.scores(rows);
        let mut gradient = vec![0.0; features + 1];
        for (i, row) in rows.chunks(features).enumerate() {
            let d = match config.residual {
                Residual::Sigmoid => sigmoid(z[i]) - labels[i],
                Residual::Taylor => 0.25 * z[i] + 0.5 - labels[i],
            };
            for (g, x) in gradient.iter_mut().zip(row) {
                *g += d * x;
            }
            gradient[features] += d;
        }
        for (j, g) in gradient.iter_mut().enumerate() {
            *g /= n as f64;
            if j < features {
                *g += config.l2 * model.weights[j];
            }
        }
        let (c1, c2) = (
            1.0 - beta1.powi(epoch as i32),
            1.0 - beta2.powi(epoch as i32),
        );
        for j in 0..=features {
            m[j] = beta1 * m[j] + (1.0 - beta1) * gradient[j];
            v[j] = beta2 * v[j] + (1.0 - beta2) * gradient[j] * gradient[j];
            let step = config.learning_rate * (m[j] / c1) / ((v[j] / c2).sqrt() + eps);
            if j < features {
                model.weights[j] -= step;
            } else {
                model.intercept -= step;
            }
        }
    }
    Ok(model)
}
