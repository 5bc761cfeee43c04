//! Vertical federated logistic regression without a third party, sans-IO.
//!
//! One guest holds the labels (the bank); one or more hosts hold features of the same aligned
//! rows (tax bureau, utility company). Every party owns an [`he`] key pair and updates only its
//! own weights. This is protocol version 6 ([`PROTOCOL_VERSION`]): training as in version 2,
//! the binning job of [`BinningGuest`] (since 4: each host column's bin sizes say whether it is
//! categorical and whether its last bin is the missing bin), resuming (since 5), and HE
//! objects over q = 2^192 with shares modulo 2^128 on the wire (new in 6).
//!
//! **Set-up, once per job.** Every party P quantises its standardised features X̃_P (the
//! guest's with a column of ones for the intercept), encrypts them under its own key, batch by
//! batch of the job's fixed partition, and sends them to every other party, together with
//! eight integrity-check columns X̃_P·ρ_c (mod 2^117, ρ_c secret and uniform) at secret
//! positions among its columns.
//!
//! **Per mini-batch.** With z_G = X_G·w_G + b and z_k = X_k·w_k, the first-order residual
//! d = 0.25·z + 0.5 − y is the sum of shares every party computes in plaintext: the guest's
//! 0.25·z_G + 0.5 − y and each host's 0.25·z_k. Every party Q computes, for every other party
//! P, [[X̃_P]]^T·ṽ_Q under P's key, masks it with uniform r, re-randomises and floods it, and
//! releases it to P together with −r blinded by pairwise masks among the parties other than P.
//! P decrypts, adds the corrections (the pairwise masks cancel) and obtains Σ_{Q≠P} X̃_P^T ṽ_Q;
//! with its exact local term X_P^T·v_P that is its gradient X_P^T·d, and it updates its own
//! weights. P checks the check columns and the range of every result before using them.
//!
//! **Per epoch.** Only aggregate scalars: the second-order Taylor log-loss
//! log 2 + (½ − y)·z + z²/8 on the training and validation rows (its cross terms come from
//! one encrypted inner product per host and per pair of hosts, released to the owner of the
//! encrypted vector, and from sums under pairwise masks), and the hosts' summed squared weight
//! change. They drive early stopping and the training curve.
//!
//! **Once, at the end.** The final model's joint scores of the validation rows (the training
//! rows when there is no validation split) reach the guest, summed over the hosts under
//! pairwise masks, for AUC, KS, the report and the guest's calibration ([`Calibration`]:
//! Platt scaling fitted on these scores, kept in its model part; it discloses nothing more).
//!
//! **What each party learns** (semi-honest, non-colluding parties):
//! - *the guest*: its own gradient and weights; per batch X_G^T·Σ_k z_k (an aggregate over at
//!   least the batch size, which it can also derive from its gradient); per epoch the two
//!   Taylor losses and the hosts' summed squared weight change; once, Σ_k z_k of the final
//!   model on the revealed rows — **one linear view of the hosts' data per job**;
//! - *a host*: its own gradient X_k^T·d per batch (as in FATE's hetero-LR: an aggregate that
//!   depends on the labels), its own weights, the row count, the split and the batch order;
//!   with other hosts, X_k^T of the other parties' shares summed;
//! - *nobody*: another party's features, labels, residual shares, per-row scores during
//!   training, gradient or keys. Every value a party decrypts is its own product (of its own
//!   columns), kept by it: no decryption is ever returned to the party that made the
//!   ciphertext, so there is no decryption oracle.
//!
//! **A deviating party.** What the integrity checks give: every product a party decrypts is
//! its own columns times *some* vector. A party that adds offsets to the products it releases,
//! or sends crafted ciphertexts that would make the owner decrypt its own key bits, fails the
//! owner's check with probability ≥ 1 − 2^-40, and the job stops with a text that depends on
//! neither key nor labels. What stays semi-honest — a party that substitutes its *own* inputs is
//! not caught, exactly as in v1 and in FATE's hetero-LR:
//! - a guest that encrypts crafted columns (e.g. one-hot rows) reads Σ_k z_k of the rows it
//!   picks through its own gradient, up to (features + 9) rows per step, and through crafted
//!   loss vectors two rows per epoch; hosts' `max_guest_features` bounds the first, nothing
//!   yet bounds the steps;
//! - a host that encrypts crafted columns reads the guest's residual shares of the rows it picks
//!   through its gradient — at the first step 0.5 − y, the labels — many rows per step;
//! - in the loss round a host decrypts another host's product unchecked and forwards it,
//!   blinded, to the guest: a host colluding with the guest could route decryptions that way.
//!
//! Secret-shared gradients (SSHE-LR, HESS-LR) remove the first two: the crate's shared core
//! (`shared.rs`; `docs/training.md`, "Secret-shared weights") trains in additive shares for
//! the guest and any number of hosts — each party ends with its own weights, the guest learns
//! two Taylor losses per step, and everything a party decrypts is a uniform residue — but it
//! runs in one process only ([`internal::simulate_shared`]); jobs do not use it yet. Checked
//! loss products would remove the last. A guest that sends different hosts different columns or loss vectors (to
//! isolate one host in the sums) is caught: the hosts compare digests of what the guest
//! broadcast, before the first product and before each loss round.
//!
//! **Resuming.** After every epoch each session emits a [`Checkpoint`] (its weights, optimiser
//! state and update count; the guest's also its early-stopping state and training curve). An
//! interrupted job resumes in fresh sessions: the guest's [`GuestJob::resume`] names the
//! checkpoint of the last epoch every party holds, its proposal carries that epoch, and each
//! host finds its checkpoint of it among [`HostJob::checkpoints`]. Keys, checks and masks are
//! drawn afresh; what each party decrypts is exact, so the resumed job ends with the model of an
//! uninterrupted run. A checkpoint that does not fit (another epoch, other settings, another
//! column count) is refused by name ([`FedError::Resume`]). A party that loses its transport
//! sends no abort: whether the job resumes or ends is its driver's call.
//!
//! **Quantisation.** Each party standardises its features on the training rows and quantises
//! them to round(x·2^f) with the finest f ≤ 12 that keeps |x̃| < 2^13. Residual shares are sent
//! with s fraction bits, the largest s ≤ 12 for which the honest products stay 2^6 below the
//! release modulus ([`GuestOutcome::share_frac_bits`]); with the 118-bit plaintext that is
//! s = 12 for any batch the HE accepts (the rule would lower s only for products within 2^66
//! of the plaintext's size). Each gradient coordinate is within
//! k·2^-(s+1) + D·2^-(f+1) + k·2^-(f+s+2) of the exact first-order gradient of the same
//! weights, for k other parties and mean share magnitude D (each party's own term is exact).
//!
//! **Accuracy.** The first-order residual makes every gradient linear in the scores, which is
//! what lets it pass through additive encryption; on the credit data it costs about 0.007 AUC
//! against an exact logistic regression (see the crate's tests).
//!
//! Each party is a sans-IO state machine ([`GuestSession`], [`HostSession`]: messages in,
//! messages and events out, see [`Session`] for the call order); [`run_guest`] and [`run_host`]
//! [`drive`] one over a blocking [`Transport`], and [`simulate`] runs them in one process:
//!
//! ```
//! use fedlearn::ndarray::Array2;
//! use fedlearn::{simulate, GuestJob, HostJob, Missing, Table, TrainConfig};
//!
//! // 200 aligned rows: the bank has one feature and the label, the tax bureau one feature.
//! let ids: Vec<String> = (0..200).map(|i| format!("firm{i}")).collect();
//! let tax = Array2::from_shape_fn((200, 1), |(i, _)| ((i * 37) % 101) as f64);
//! let bank = Array2::from_shape_fn((200, 1), |(i, _)| ((i * 53) % 97) as f64);
//! let labels: Vec<f64> = tax.iter().zip(&bank).map(|(t, b)| f64::from(t + b > 100.0)).collect();
//! let guest = GuestJob {
//!     party: "bank".into(),
//!     model_id: "demo".into(),
//!     table: Table::new(ids.clone(), vec!["balance".into()], bank, Some(labels), Missing::Reject)?,
//!     hosts: vec!["tax".into()],
//!     config: TrainConfig { max_epochs: 5, batch_size: None, learning_rate: 0.2, ..TrainConfig::default() },
//!     prep: Default::default(),
//!     resume: None,
//! };
//! let host = HostJob {
//!     party: "tax".into(),
//!     guest: "bank".into(),
//!     table: Table::new(ids, vec!["paid".into()], tax, None, Missing::Reject)?,
//!     prep: Default::default(),
//!     checkpoints: Vec::new(),
//! };
//! let run = simulate(guest, vec![host], false, &mut |_| {})?;
//! assert!(run.guest.evaluation.metrics.auc > 0.9); // the one reveal: here the training rows
//! println!("{}", run.hosts[0].model.to_json()); // the tax bureau's part of the model
//! # Ok::<(), fedlearn::FedError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod binning;
mod checkpoint;
mod config;
mod data;
mod error;
mod guest;
mod host;
mod job;
mod masks;
mod math;
mod message;
mod metrics;
mod model;
mod party;
mod prep;
mod protocol;
mod reference;
mod select;
mod session;
mod shared;
mod shares;
mod simulator;
mod woe;

pub use binning::{answer_binning, BinningDisclosure, BinningGuest, BinningLimits, BinningReport};
pub use checkpoint::Checkpoint;
pub use config::{EarlyStopping, TrainConfig};
pub use data::{
    Cell, Chunk, CsvFormat, Ids, IdsIter, Missing, Reading, Table, TableBuilder, CHUNK_ROWS,
};
pub use error::FedError;
pub use guest::{run_guest, GuestJob, GuestSession};
pub use host::{receive_proposal, run_host, HostJob, HostSession};
pub use math::sigmoid;
pub use message::{ColumnSizes, Message, PartyKeys, Proposal, Transport, PROTOCOL_VERSION};
pub use metrics::{bands, evaluate, reliability, roc_curve, BandStats, Metrics, ReliabilityBin};
pub use model::{
    joint_probabilities, BinnedWeight, Calibration, FeatureWeight, ModelPart, Role, ScorecardBin,
    ScorecardColumn, MODEL_FORMAT,
};
/// The array crate tables are built from (`Table::new` takes an `ndarray::Array2`).
pub use ndarray;
pub use prep::{Binning, Bins, ColumnPrep, KeptBins, Prep, Transform, MAX_BINS};
pub use protocol::{
    Convergence, EpochReport, Event, FinalEvaluation, GuestOutcome, HostOutcome, RevealedRows,
    StopReason, STILL_FALLING,
};
pub use reference::{
    train_plain_vertical, train_reference, LinearModel, PlainOutcome, ReferenceConfig, Residual,
};
pub use select::{ChosenColumn, Merge, Selection};
pub use session::{drive, Session};
pub use simulator::{simulate, Simulation, WireRecord};
pub use woe::{BinStats, ColumnStats};

/// Test hooks: deviating parties in the simulator, and the rows every party derives from a
/// job's seed. Not part of the supported interface.
#[doc(hidden)]
pub mod internal {
    pub use crate::shared::{simulate_shared, SharedParty, SharedRun};
    pub use crate::simulator::{replacing, simulate_altered, Alter, AlteredRun};

    /// The (training, validation) rows of a job of `rows` rows with this seed and fraction.
    pub fn split(rows: usize, seed: u64, validation_fraction: f64) -> (Vec<usize>, Vec<usize>) {
        let split = crate::masks::Split::new(rows, seed, validation_fraction);
        (split.train, split.validation)
    }
}
