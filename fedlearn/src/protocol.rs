//! What guest and host share: fixed-point formats, quantised matrices, progress events,
//! message helpers.

use he::Params;
use ndarray::{Array2, ArrayView2, ShapeBuilder};

use crate::error::FedError;
use crate::message::{Message, Transport};
use crate::metrics::{Metrics, ReliabilityBin};
use crate::model::{Calibration, ModelPart};

/// The parameter set of every ciphertext in training.
pub(crate) const PARAMS: Params = he::N8192_Q192;

/// Fraction bits of scores and sums sent through secure aggregation (wrapping u64).
pub(crate) const SCORE_FRAC_BITS: i32 = 32;

/// Largest quantised feature magnitude, 2^13 − 1: the public bound of the Gram products'
/// entries (`shared.rs`).
const MAX_QUANTISED: f64 = 8191.0;

/// A party's standardised features as integers round(x·2^frac_bits), with an optional
/// trailing column of ones (the guest's intercept): rows × columns in column-major layout, as
/// the encrypted blocks read a column at a time.
pub(crate) struct Quantised {
    pub(crate) frac_bits: u32,
    pub(crate) columns: usize,
    values: Array2<i16>,
}

impl Quantised {
    /// Chooses the finest scale at which every training value fits, so the quantisation error
    /// is at most 2^-(frac_bits+1) per entry.
    pub(crate) fn new(standardised: ArrayView2<'_, f64>, train: &[usize], ones: bool) -> Self {
        let (rows, width) = standardised.dim();
        let largest = train
            .iter()
            .flat_map(|&r| standardised.row(r))
            .fold(1.0f64, |m, x| m.max(x.abs()));
        let frac_bits = (MAX_QUANTISED / largest).log2().floor().clamp(0.0, 12.0) as u32;
        let scale = 2f64.powi(frac_bits as i32);
        let columns = width + usize::from(ones);
        let mut values = Array2::zeros((rows, columns).f());
        for ((row, column), &x) in standardised.indexed_iter() {
            let x = (x * scale).round().clamp(-MAX_QUANTISED, MAX_QUANTISED);
            values[[row, column]] = x as i16;
        }
        if ones {
            values.column_mut(width).fill(scale as i16);
        }
        Quantised {
            frac_bits,
            columns,
            values,
        }
    }

    /// The entry at (row, column).
    pub(crate) fn at(&self, row: usize, column: usize) -> i64 {
        i64::from(self.values[[row, column]])
    }

    /// The rows of `batch` in column `column`.
    pub(crate) fn column(&self, column: usize, batch: &[usize]) -> Vec<i64> {
        batch.iter().map(|&row| self.at(row, column)).collect()
    }
}

/// Packing levels that put `columns` results in one ciphertext (as far as the parameters
/// allow), at least one (the aggregate loss releases two results together).
pub(crate) fn packing_levels(columns: usize) -> u32 {
    columns
        .max(2)
        .next_power_of_two()
        .trailing_zeros()
        .min(PARAMS.max_pack_levels)
}

/// Encodes a partial score for secure aggregation.
pub(crate) fn encode_score(z: f64) -> Option<u64> {
    let scaled = (z * 2f64.powi(SCORE_FRAC_BITS)).round();
    (scaled.is_finite() && scaled.abs() < 2f64.powi(62)).then_some(scaled as i64 as u64)
}

/// Decodes a (summed) partial score.
pub(crate) fn decode_score(value: u64) -> f64 {
    value as i64 as f64 * 2f64.powi(-SCORE_FRAC_BITS)
}

/// The given rows of `values` times `weights`.
pub(crate) fn linear_scores(
    values: ArrayView2<'_, f64>,
    rows: &[usize],
    weights: &[f64],
) -> Vec<f64> {
    rows.iter()
        .map(|&r| values.row(r).iter().zip(weights).map(|(x, w)| x * w).sum())
        .collect()
}

/// Progress of a training job.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The guest finished an epoch.
    Epoch(EpochReport),
    /// A host finished an epoch (hosts do not learn the metrics).
    HostEpoch {
        /// Epoch (1-based).
        epoch: usize,
    },
    /// The party's state after an epoch: what it keeps to resume the job if interrupted.
    Checkpoint(Box<crate::Checkpoint>),
}

/// What the guest learns at the end of an epoch: aggregate scalars only.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochReport {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Mean second-order Taylor log-loss, log 2 + (½ − y)·z + z²/8, on the training rows:
    /// the loss the first-order residual minimises, computed from aggregate terms.
    pub train_loss: f64,
    /// The same on the validation rows, when there is a validation split.
    pub validation_loss: Option<f64>,
    /// ‖Δw‖₂ over the epoch, all parties' weights together.
    pub weight_change: f64,
    /// Learning rate of the epoch's last update.
    pub learning_rate: f64,
    /// Whether this epoch's weights are now the model.
    pub best: bool,
}

/// Which rows the final model's joint scores were revealed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevealedRows {
    /// The validation rows (the job has a validation split).
    Validation,
    /// The training rows (the job has no validation split).
    Training,
}

/// The one reveal of a job: the final model's joint scores on one set of rows, and the
/// metrics computed from them.
#[derive(Clone, Debug, PartialEq)]
pub struct FinalEvaluation {
    /// Which rows.
    pub rows: RevealedRows,
    /// How many.
    pub count: usize,
    /// AUC, KS, exact log-loss and accuracy of the final (calibrated) model on them.
    pub metrics: Metrics,
    /// The calibration the guest fitted on them (`None` if their labels are of one class).
    pub calibration: Option<Calibration>,
    /// Ten equal-count groups of them by calibrated probability.
    pub reliability: Vec<ReliabilityBin>,
    /// Their calibrated probabilities (the guest's one per-row reveal, kept in memory for the
    /// job's report: bands, ROC).
    pub probabilities: Vec<f64>,
    /// Their labels.
    pub labels: Vec<f64>,
}

/// Why training ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// All epochs ran.
    MaxEpochs,
    /// The early-stopping rule fired after this epoch.
    EarlyStopping {
        /// Epoch (1-based).
        epoch: usize,
    },
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::MaxEpochs => write!(f, "all epochs ran"),
            StopReason::EarlyStopping { epoch } => write!(f, "early stopping after epoch {epoch}"),
        }
    }
}

/// Whether training got where it was going, judged by the guest from the loss history
/// (validation loss when the job has a validation split).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Convergence {
    /// The loss settled below the base rate's.
    Converged,
    /// The best loss is not below that of predicting the base rate for every row: the model
    /// ranks no better than a constant (too few epochs, or a penalty far too strong).
    NoBetterThanBaseRate {
        /// The best epoch's loss.
        loss: f64,
        /// The loss of the best constant score.
        base_rate_loss: f64,
    },
    /// All epochs ran and the loss still fell by more than [`STILL_FALLING`] per epoch over
    /// the last five (counting from the starting weights' log 2): more epochs would change the
    /// model.
    StillFalling {
        /// Mean fall per epoch over the last epochs.
        per_epoch: f64,
    },
}

/// A loss falling faster than this per epoch (nats) at the end means training stopped early.
pub const STILL_FALLING: f64 = 5e-4;

impl Convergence {
    /// Judges a job from its epoch reports; `base_rate` is the share of positive labels on
    /// the rows the loss is computed on.
    pub fn judge(history: &[EpochReport], base_rate: f64, stop: StopReason) -> Convergence {
        let losses: Vec<f64> = history
            .iter()
            .map(|r| r.validation_loss.unwrap_or(r.train_loss))
            .collect();
        // The Taylor loss of a constant score b, log 2 + (½ − ȳ)·b + b²/8, is least at
        // b = 4ȳ − 2.
        let base_rate_loss = std::f64::consts::LN_2 - 2.0 * (0.5 - base_rate).powi(2);
        let best = losses.iter().copied().fold(f64::INFINITY, f64::min);
        if best >= base_rate_loss {
            return Convergence::NoBetterThanBaseRate {
                loss: best,
                base_rate_loss,
            };
        }
        // Every job starts from zero weights, whose Taylor loss is log 2 on any rows: the
        // loss before the first epoch.
        let losses: Vec<f64> = std::iter::once(std::f64::consts::LN_2)
            .chain(losses)
            .collect();
        let last = losses.len().min(6);
        if stop == StopReason::MaxEpochs && last >= 2 {
            let tail = &losses[losses.len() - last..];
            let per_epoch = (tail[0] - tail[last - 1]) / (last - 1) as f64;
            if per_epoch > STILL_FALLING {
                return Convergence::StillFalling { per_epoch };
            }
        }
        Convergence::Converged
    }
}

impl std::fmt::Display for Convergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Convergence::Converged => write!(f, "converged"),
            Convergence::NoBetterThanBaseRate {
                loss,
                base_rate_loss,
            } => write!(
                f,
                "not converged: the best loss {loss:.4} is not below the base rate's \
                 {base_rate_loss:.4}; train more epochs or lower the penalty"
            ),
            Convergence::StillFalling { per_epoch } => write!(
                f,
                "not converged: the loss still fell by {per_epoch:.4} per epoch at the end; \
                 train more epochs"
            ),
        }
    }
}

/// The guest's result.
#[derive(Clone, Debug, PartialEq)]
pub struct GuestOutcome {
    /// The guest's model part (weights of the best epoch).
    pub model: ModelPart,
    /// One report per epoch.
    pub history: Vec<EpochReport>,
    /// Epoch whose weights form the model.
    pub best_epoch: usize,
    /// Why training ended.
    pub stop: StopReason,
    /// Whether it converged.
    pub convergence: Convergence,
    /// Fraction bits of the guest's quantised features.
    pub feature_frac_bits: u32,
    /// Fraction bits of the weight shares (the same for every party).
    pub share_frac_bits: u32,
    /// The final model on the revealed rows.
    pub evaluation: FinalEvaluation,
}

/// A host's result.
#[derive(Clone, Debug, PartialEq)]
pub struct HostOutcome {
    /// The host's model part (weights of the epoch the guest chose).
    pub model: ModelPart,
    /// Epochs run.
    pub epochs: usize,
    /// Fraction bits of the host's quantised features.
    pub feature_frac_bits: u32,
    /// Rows whose partial scores of the final model reached the guest (summed with the other
    /// hosts' when there are several): the job's one per-row disclosure.
    pub revealed_rows: usize,
}

/// Receives the next message from `peer`, turning an abort into an error.
pub(crate) fn receive(transport: &mut dyn Transport, peer: &str) -> Result<Message, FedError> {
    match transport.receive(peer)? {
        Message::Abort { reason } => Err(FedError::Aborted {
            peer: peer.to_owned(),
            reason,
        }),
        message => Ok(message),
    }
}

/// The error for a message that does not belong here.
pub(crate) fn unexpected(peer: &str, expected: &str, got: &Message) -> FedError {
    FedError::protocol(peer, format!("expected {expected}, got {}", got.kind()))
}

/// Tells every peer but the one that stopped us that the job ends (with the error's
/// category), and returns the error. A party the transport lost tells nobody: the job may
/// resume without that party's loss ending it (the node interrupts it everywhere), and the
/// driver tells the others if it does not. No party knows any weights before the end, so no
/// model survives a stopped job.
pub(crate) fn finish_with_error(
    transport: &mut dyn Transport,
    peers: &[String],
    error: FedError,
) -> FedError {
    let stopped_by = match &error {
        FedError::Aborted { peer, .. } => Some(peer.clone()),
        FedError::Transport { .. } => return error,
        _ => None,
    };
    // The peers read the kind of error only; its text stays with this party.
    let reason = error.category();
    for peer in peers {
        if Some(peer) != stopped_by.as_ref() {
            // Best effort: the peer may be the one that is gone.
            let _ = transport.send(
                peer,
                Message::Abort {
                    reason: reason.clone(),
                },
            );
        }
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(losses: &[f64]) -> Vec<EpochReport> {
        losses
            .iter()
            .enumerate()
            .map(|(i, &loss)| EpochReport {
                epoch: i + 1,
                train_loss: loss,
                validation_loss: None,
                weight_change: 0.1,
                learning_rate: 0.05,
                best: true,
            })
            .collect()
    }

    #[test]
    fn convergence_is_judged_from_the_loss_history() {
        // 20% positives: the best constant score's Taylor loss is log 2 − 2·0.3² ≈ 0.513.
        let settled = history(&[
            0.6, 0.5, 0.47, 0.4652, 0.4651, 0.4650, 0.4650, 0.4649, 0.4649,
        ]);
        assert_eq!(
            Convergence::judge(&settled, 0.2, StopReason::MaxEpochs),
            Convergence::Converged
        );
        let falling = history(&[0.6, 0.55, 0.52, 0.50, 0.49, 0.48, 0.47]);
        assert!(matches!(
            Convergence::judge(&falling, 0.2, StopReason::MaxEpochs),
            Convergence::StillFalling { per_epoch } if (per_epoch - 0.016).abs() < 1e-9
        ));
        // Early stopping fired: the loss stopped improving, whatever its slope before.
        assert_eq!(
            Convergence::judge(&falling, 0.2, StopReason::EarlyStopping { epoch: 7 }),
            Convergence::Converged
        );
        let constant = history(&[0.69, 0.60, 0.55, 0.52]);
        assert!(matches!(
            Convergence::judge(&constant, 0.2, StopReason::MaxEpochs),
            Convergence::NoBetterThanBaseRate { loss, .. } if loss == 0.52
        ));
        assert!(Convergence::judge(&constant, 0.2, StopReason::MaxEpochs)
            .to_string()
            .starts_with("not converged"));
        // One epoch: the fall from the starting weights' log 2 counts.
        assert!(matches!(
            Convergence::judge(&history(&[0.47]), 0.2, StopReason::MaxEpochs),
            Convergence::StillFalling { .. }
        ));
    }
}
