//! What guest and host share: fixed-point formats, quantised matrices, progress events,
//! message helpers.

use he::{FixedPoint, Params, PreparedMatrix};

use crate::error::FedError;
use crate::message::{Message, Transport};
use crate::metrics::Metrics;
use crate::model::ModelPart;

/// The parameter set of every ciphertext in training.
pub(crate) const PARAMS: Params = he::N8192_Q128;

/// Residual shares (0.25·z_G + 0.5 − y and 0.25·z_k): 16 fraction bits, |value| < 2^23.
/// Every share is rounded once, so the residual every party multiplies by is within
/// (hosts + 1)·2^-17 of the exact first-order residual.
pub const RESIDUAL_FORMAT: FixedPoint = FixedPoint {
    frac_bits: 16,
    bits: 40,
};

/// Partial scores in secure aggregation: 32 fraction bits in a wrapping u64 (|z| < 2^30).
pub(crate) const SCORE_FRAC_BITS: i32 = 32;

/// Largest quantised feature magnitude: the he layer's matrix bound, minus one so that the
/// quantised matrix also fits in i16.
const MAX_QUANTISED: f64 = 32767.0;

/// A party's standardised features as integers round(x·2^frac_bits), column-major, with an
/// optional trailing column of ones (the guest's intercept).
pub(crate) struct Quantised {
    pub(crate) frac_bits: u32,
    rows: usize,
    pub(crate) columns: usize,
    values: Vec<i16>,
}

impl Quantised {
    /// Chooses the finest scale at which every training value fits, so the quantisation error
    /// is at most 2^-(frac_bits+1) per entry.
    pub(crate) fn new(standardised: &[f64], width: usize, train: &[usize], ones: bool) -> Self {
        let rows = standardised.len().checked_div(width).unwrap_or(0);
        let largest = train
            .iter()
            .flat_map(|&r| &standardised[r * width..(r + 1) * width])
            .fold(1.0f64, |m, x| m.max(x.abs()));
        let frac_bits = (MAX_QUANTISED / largest).log2().floor().clamp(0.0, 14.0) as u32;
        let scale = 2f64.powi(frac_bits as i32);
        let columns = width + usize::from(ones);
        let mut values = vec![0i16; rows * columns];
        for row in 0..rows {
            for column in 0..width {
                let x = (standardised[row * width + column] * scale)
                    .round()
                    .clamp(-MAX_QUANTISED, MAX_QUANTISED);
                values[column * rows + row] = x as i16;
            }
            if ones {
                values[width * rows + row] = scale as i16;
            }
        }
        Quantised {
            frac_bits,
            rows,
            columns,
            values,
        }
    }

    /// The entry at (row, column).
    pub(crate) fn at(&self, row: usize, column: usize) -> i64 {
        i64::from(self.values[column * self.rows + row])
    }

    /// The batch's rows as a prepared plaintext matrix.
    pub(crate) fn prepare(&self, batch: &[usize]) -> Result<PreparedMatrix, FedError> {
        let mut column_major = Vec::with_capacity(batch.len() * self.columns);
        for column in 0..self.columns {
            column_major.extend(batch.iter().map(|&row| self.at(row, column)));
        }
        PreparedMatrix::new(&PARAMS, batch.len(), self.columns, &column_major)
            .map_err(FedError::he("preparing the batch matrix"))
    }

    /// The batch's prepared matrix; the full batch is the same rows every epoch, so it is
    /// prepared once and kept in `cache`.
    pub(crate) fn batch_matrix<'a>(
        &self,
        cache: &'a mut Option<PreparedMatrix>,
        full: bool,
        batch: &[usize],
    ) -> Result<BatchMatrix<'a>, FedError> {
        if !full {
            return Ok(BatchMatrix::Fresh(self.prepare(batch)?));
        }
        let prepared = match cache.take() {
            Some(prepared) => prepared,
            None => self.prepare(batch)?,
        };
        Ok(BatchMatrix::Cached(cache.insert(prepared)))
    }

    /// Converts an integer product X̃^T d̃ (scale 2^(frac_bits + 16)) to the mean gradient.
    pub(crate) fn gradient(&self, product: &[i64], batch_rows: usize) -> Vec<f64> {
        let scale = 2f64.powi(-((self.frac_bits + RESIDUAL_FORMAT.frac_bits) as i32));
        product
            .iter()
            .map(|&p| p as f64 * scale / batch_rows as f64)
            .collect()
    }
}

/// A batch's prepared matrix: kept across epochs (full batch) or made for this batch.
pub(crate) enum BatchMatrix<'a> {
    Cached(&'a PreparedMatrix),
    Fresh(PreparedMatrix),
}

impl std::ops::Deref for BatchMatrix<'_> {
    type Target = PreparedMatrix;

    fn deref(&self) -> &PreparedMatrix {
        match self {
            BatchMatrix::Cached(matrix) => matrix,
            BatchMatrix::Fresh(matrix) => matrix,
        }
    }
}

/// Packing levels that put `columns` results in one ciphertext (as far as the parameters allow).
pub(crate) fn packing_levels(columns: usize) -> u32 {
    columns
        .max(1)
        .next_power_of_two()
        .trailing_zeros()
        .min(PARAMS.max_pack_levels)
}

/// A party's residual share in [`RESIDUAL_FORMAT`]; out of range means training diverged.
pub(crate) fn encode_share(party: &str, epoch: usize, share: &[f64]) -> Result<Vec<i64>, FedError> {
    RESIDUAL_FORMAT
        .encode(share)
        .map_err(|_| FedError::Diverged {
            epoch,
            reason: format!("{party}'s residual share left the fixed-point range"),
            last_good: None,
        })
}

/// ‖a − b‖², the squared change of a party's weights over an epoch.
pub(crate) fn squared_distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Refuses weights that are no longer finite after an update.
pub(crate) fn check_weights(party: &str, epoch: usize, weights: &[f64]) -> Result<(), FedError> {
    match weights.iter().position(|w| !w.is_finite()) {
        Some(j) => Err(FedError::Diverged {
            epoch,
            reason: format!("{party}'s weight {j} became {}", weights[j]),
            last_good: None,
        }),
        None => Ok(()),
    }
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

/// Row-major `values` (width columns) times `weights` for the given rows.
pub(crate) fn linear_scores(
    values: &[f64],
    width: usize,
    rows: &[usize],
    weights: &[f64],
) -> Vec<f64> {
    rows.iter()
        .map(|&r| {
            values[r * width..(r + 1) * width]
                .iter()
                .zip(weights)
                .map(|(x, w)| x * w)
                .sum()
        })
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
}

/// What the guest learns at the end of an epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochReport {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Metrics on the training rows.
    pub train: Metrics,
    /// Metrics on the validation rows, when there is a validation split.
    pub validation: Option<Metrics>,
    /// ‖Δw‖₂ over the epoch, all parties' weights together.
    pub weight_change: f64,
    /// Learning rate of the epoch's last update.
    pub learning_rate: f64,
    /// Whether this epoch's weights are now the model.
    pub best: bool,
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
    /// Fraction bits of the guest's quantised features.
    pub feature_frac_bits: u32,
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
}

/// Receives the next message from `peer`, turning an abort into an error.
pub(crate) fn receive(transport: &mut dyn Transport, peer: &str) -> Result<Message, FedError> {
    match transport.receive(peer)? {
        Message::Abort { reason } => Err(FedError::Aborted {
            peer: peer.to_owned(),
            reason,
            last_good: None,
        }),
        message => Ok(message),
    }
}

/// The error for a message that does not belong here.
pub(crate) fn unexpected(peer: &str, expected: &str, got: &Message) -> FedError {
    FedError::protocol(peer, format!("expected {expected}, got {}", got.kind()))
}

/// Tells every peer but the one that stopped us that the job ends, and attaches the last good
/// model to divergence and abort errors.
pub(crate) fn finish_with_error(
    transport: &mut dyn Transport,
    peers: &[String],
    error: FedError,
    last_good: Option<ModelPart>,
) -> FedError {
    let stopped_by = match &error {
        FedError::Aborted { peer, .. } => Some(peer.clone()),
        _ => None,
    };
    let reason = error.to_string();
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
    match error {
        FedError::Diverged { epoch, reason, .. } => FedError::Diverged {
            epoch,
            reason,
            last_good: last_good.map(Box::new),
        },
        FedError::Aborted { peer, reason, .. } => FedError::Aborted {
            peer,
            reason,
            last_good: last_good.map(Box::new),
        },
        other => other,
    }
}
