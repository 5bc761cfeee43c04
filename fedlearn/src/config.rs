//! Training settings (the guest proposes them; every party applies them to its own weights)
//! and the optimisers.

use serde::{Deserialize, Serialize};

use crate::error::FedError;

/// The optimiser each party runs on its own weights.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Optimizer {
    /// Gradient descent with heavy-ball momentum (0 for plain SGD).
    Sgd {
        /// Momentum factor in [0, 1).
        momentum: f64,
    },
    /// Adam (Kingma and Ba) with bias correction, ε = 1e-8.
    Adam {
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
    },
}

/// How the learning rate changes with the update count t (0-based).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// The same rate throughout.
    Constant,
    /// rate / (1 + decay·t).
    InverseTime {
        /// Decay per update.
        decay: f64,
    },
    /// rate·factor^⌊epoch / every⌋.
    StepDecay {
        /// Factor applied every `every` epochs.
        factor: f64,
        /// Epochs between decays.
        every: usize,
    },
}

/// When to stop before `max_epochs`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum EarlyStopping {
    /// Stop when the validation log-loss (training log-loss without a validation split) has not
    /// improved by `min_delta` for `patience` epochs; the model of the best epoch is kept.
    Loss {
        /// Epochs without improvement before stopping.
        patience: usize,
        /// Smallest improvement that counts.
        min_delta: f64,
    },
    /// Stop when the norm of the change of all weights over an epoch falls below `tolerance`.
    WeightChange {
        /// Threshold on ‖Δw‖₂ (all parties together, through secure aggregation).
        tolerance: f64,
    },
}

/// Everything the guest proposes for a training job. Omitted fields take their defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Largest number of passes over the training rows.
    pub max_epochs: usize,
    /// Rows per mini-batch; `None` trains on the full batch.
    pub batch_size: Option<usize>,
    /// Optimiser.
    pub optimizer: Optimizer,
    /// Initial learning rate.
    pub learning_rate: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// L1 penalty λ₁ (loss gains λ₁·‖w‖₁; the intercept is not penalised).
    pub l1: f64,
    /// L2 penalty λ₂ (loss gains λ₂/2·‖w‖²; the intercept is not penalised).
    pub l2: f64,
    /// Share of the aligned rows held out for validation metrics (0 for none).
    pub validation_fraction: f64,
    /// Early stopping rule, if any.
    pub early_stopping: Option<EarlyStopping>,
    /// Seed of the validation split and the batch order (not of any key or mask).
    pub seed: u64,
}

/// The defaults come from `cargo run --release --example defaults`: on eight books (the two
/// FATE data sets and synthetic ones with 3% and 7% defaults, raw, winsorised and binned),
/// full batches with Adam at 0.1, decaying as 1/(1 + 0.02·step), reach within 100 epochs the
/// test AUC of the first-order residual's optimum; early stopping ends a job once the loss
/// stops improving and keeps the best epoch's model. Full batches also disclose least: every
/// step's products project onto the same rows.
impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            max_epochs: 100,
            batch_size: None,
            optimizer: Optimizer::Adam {
                beta1: 0.9,
                beta2: 0.999,
            },
            learning_rate: 0.05,
            schedule: Schedule::InverseTime { decay: 0.02 },
            l1: 0.0,
            l2: 0.0,
            validation_fraction: 0.0,
            early_stopping: Some(EarlyStopping::Loss {
                patience: 5,
                min_delta: 1e-4,
            }),
            seed: 0,
        }
    }
}

/// Rows a batch may hold (the HE layer combines at most this many values per product).
pub const MAX_BATCH_ROWS: usize = 1 << 20;

impl TrainConfig {
    /// Refuses settings that cannot train.
    pub fn validate(&self) -> Result<(), FedError> {
        let positive = |field, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(FedError::config(field, format!("{value} must be positive")))
            }
        };
        let non_negative = |field, value: f64| {
            if value.is_finite() && value >= 0.0 {
                Ok(())
            } else {
                Err(FedError::config(field, format!("{value} must be ≥ 0")))
            }
        };
        if self.max_epochs == 0 {
            return Err(FedError::config("max_epochs", "must be at least 1"));
        }
        if let Some(batch) = self.batch_size {
            if batch == 0 || batch > MAX_BATCH_ROWS {
                return Err(FedError::config(
                    "batch_size",
                    format!("{batch} is outside 1..={MAX_BATCH_ROWS}"),
                ));
            }
        }
        positive("learning_rate", self.learning_rate)?;
        non_negative("l1", self.l1)?;
        non_negative("l2", self.l2)?;
        if !(0.0..0.9).contains(&self.validation_fraction) {
            return Err(FedError::config(
                "validation_fraction",
                format!("{} is outside [0, 0.9)", self.validation_fraction),
            ));
        }
        match self.optimizer {
            Optimizer::Sgd { momentum } if !(0.0..1.0).contains(&momentum) => {
                return Err(FedError::config("optimizer.momentum", "must be in [0, 1)"))
            }
            Optimizer::Adam { beta1, beta2 }
                if !(0.0..1.0).contains(&beta1) || !(0.0..1.0).contains(&beta2) =>
            {
                return Err(FedError::config("optimizer.beta", "must be in [0, 1)"))
            }
            _ => {}
        }
        match self.schedule {
            Schedule::InverseTime { decay } => non_negative("schedule.decay", decay)?,
            Schedule::StepDecay { factor, every } => {
                positive("schedule.factor", factor)?;
                if every == 0 {
                    return Err(FedError::config("schedule.every", "must be at least 1"));
                }
            }
            Schedule::Constant => {}
        }
        match self.early_stopping {
            Some(EarlyStopping::Loss { min_delta, .. }) => {
                non_negative("early_stopping.min_delta", min_delta)?
            }
            Some(EarlyStopping::WeightChange { tolerance }) => {
                positive("early_stopping.tolerance", tolerance)?
            }
            None => {}
        }
        Ok(())
    }

    /// The learning rate of update `step` (0-based) in `epoch` (1-based).
    pub(crate) fn rate(&self, step: u64, epoch: usize) -> f64 {
        match self.schedule {
            Schedule::Constant => self.learning_rate,
            Schedule::InverseTime { decay } => self.learning_rate / (1.0 + decay * step as f64),
            Schedule::StepDecay { factor, every } => {
                self.learning_rate * factor.powi(((epoch - 1) / every) as i32)
            }
        }
    }
}

/// One party's optimiser state over its own weights.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct OptimizerState {
    pub(crate) first: Vec<f64>,
    pub(crate) second: Vec<f64>,
    pub(crate) updates: i32,
}

impl OptimizerState {
    pub(crate) fn new(len: usize) -> Self {
        OptimizerState {
            first: vec![0.0; len],
            second: vec![0.0; len],
            updates: 0,
        }
    }

    /// Applies the penalties (to all but the `unpenalised` trailing weights) and one update.
    pub(crate) fn step(
        &mut self,
        config: &TrainConfig,
        rate: f64,
        weights: &mut [f64],
        gradient: &[f64],
        unpenalised: usize,
    ) {
        self.updates += 1;
        let penalised = weights.len() - unpenalised;
        for j in 0..weights.len() {
            let mut g = gradient[j];
            if j < penalised {
                g += config.l2 * weights[j]
                    + config.l1 * weights[j].signum() * f64::from(weights[j] != 0.0);
            }
            match config.optimizer {
                Optimizer::Sgd { momentum } => {
                    self.first[j] = momentum * self.first[j] + g;
                    weights[j] -= rate * self.first[j];
                }
                Optimizer::Adam { beta1, beta2 } => {
                    self.first[j] = beta1 * self.first[j] + (1.0 - beta1) * g;
                    self.second[j] = beta2 * self.second[j] + (1.0 - beta2) * g * g;
                    let m = self.first[j] / (1.0 - beta1.powi(self.updates));
                    let v = self.second[j] / (1.0 - beta2.powi(self.updates));
                    weights[j] -= rate * m / (v.sqrt() + 1e-8);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_settings_by_name() {
        let field = |config: TrainConfig| match config.validate() {
            Err(FedError::Config { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let base = TrainConfig::default();
        assert!(base.validate().is_ok());
        assert_eq!(
            field(TrainConfig {
                learning_rate: -1.0,
                ..base.clone()
            }),
            "learning_rate"
        );
        assert_eq!(
            field(TrainConfig {
                batch_size: Some(0),
                ..base.clone()
            }),
            "batch_size"
        );
        assert_eq!(
            field(TrainConfig {
                max_epochs: 0,
                ..base.clone()
            }),
            "max_epochs"
        );
        assert_eq!(
            field(TrainConfig {
                l2: f64::NAN,
                ..base.clone()
            }),
            "l2"
        );
        assert_eq!(
            field(TrainConfig {
                validation_fraction: 1.0,
                ..base.clone()
            }),
            "validation_fraction"
        );
        assert_eq!(
            field(TrainConfig {
                optimizer: Optimizer::Sgd { momentum: 1.0 },
                ..base
            }),
            "optimizer.momentum"
        );
    }

    #[test]
    fn sgd_and_adam_steps() {
        let config = TrainConfig {
            optimizer: Optimizer::Sgd { momentum: 0.5 },
            l2: 1.0,
            ..TrainConfig::default()
        };
        let mut state = OptimizerState::new(2);
        let mut w = vec![1.0, 1.0];
        // The last weight is the unpenalised intercept.
        state.step(&config, 0.1, &mut w, &[1.0, 1.0], 1);
        assert_eq!(w, vec![1.0 - 0.1 * 2.0, 0.9]);
        state.step(&config, 0.1, &mut w, &[0.0, 0.0], 1);
        assert!((w[1] - (0.9 - 0.1 * 0.5)).abs() < 1e-12);

        let adam = TrainConfig::default();
        let mut state = OptimizerState::new(1);
        let mut w = vec![0.0];
        state.step(&adam, 0.05, &mut w, &[3.0], 0);
        // Adam's first bias-corrected step has size ≈ rate whatever the gradient's scale.
        assert!((w[0] + 0.05).abs() < 1e-6);
    }
}
