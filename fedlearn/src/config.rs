//! Training settings: the guest proposes them, every party checks and applies them.

use serde::{Deserialize, Serialize};

use crate::error::FedError;

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
///
/// There is no batch size, learning rate or optimiser to choose: secret-shared training runs
/// full-batch block-Jacobi steps with momentum (step 0.7, lower from four parties on; momentum
/// 0.3; `docs/training.md`), whose cost per step does not depend on the rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Largest number of steps (epochs: every step uses every training row).
    pub max_epochs: usize,
    /// L2 penalty λ₂ (loss gains λ₂/2·‖w‖²; the intercept is not penalised).
    pub l2: f64,
    /// Share of the aligned rows held out for validation metrics (0 for none).
    pub validation_fraction: f64,
    /// Early stopping rule, if any.
    pub early_stopping: Option<EarlyStopping>,
    /// Seed of the validation split (not of any key or mask).
    pub seed: u64,
}

/// Early stopping ends a job once the loss stops improving and keeps the best epoch's model;
/// block Jacobi reaches the optimum of the first-order residual in 5 to 23 steps on four of
/// the five books of `examples/shared_optimiser.rs` (81 on the nearly collinear breast-cancer
/// columns), so 100 steps is a bound, not a budget.
impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            max_epochs: 100,
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
        non_negative("l2", self.l2)?;
        if !(0.0..0.9).contains(&self.validation_fraction) {
            return Err(FedError::config(
                "validation_fraction",
                format!("{} is outside [0, 0.9)", self.validation_fraction),
            ));
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
                early_stopping: Some(EarlyStopping::WeightChange { tolerance: 0.0 }),
                ..base
            }),
            "early_stopping.tolerance"
        );
    }

    #[test]
    fn settings_of_the_removed_optimisers_are_refused_by_name() {
        let error = serde_json::from_str::<TrainConfig>(r#"{"batch_size": 512}"#).unwrap_err();
        assert!(error.to_string().contains("batch_size"), "{error}");
    }
}
