//! Vertical federated logistic regression without a third party, sans-IO.
//!
//! One guest holds the labels (the bank); one or more hosts hold features of the same aligned
//! rows (tax bureau, utility company). This is protocol version 9 ([`PROTOCOL_VERSION`]):
//! training in additive secret shares, the binning job of [`BinningGuest`], resuming.
//!
//! **What is computed.** With the first-order residual d = ¼·z + ½ − y the training objective
//! is the quadratic L(w) = log 2 + c·w/n + ½·wᵀHw, H = XᵀX/(4n) + λI′ (the intercept
//! unpenalised), c = Xᵀ(½ − y): the second-order Taylor expansion of the log-loss. Each party P
//! preconditions its block of the gradient with the inverse of its own diagonal block and all
//! take block-Jacobi steps with momentum (step 0.7, 2.34/parties from four parties on; momentum
//! 0.3; `docs/training.md`):
//! M_P·∇_P L = w_P + k_P + Σ_{Q≠P} K_PQ·w_Q with K_PQ = M_P·X_PᵀX_Q/(4n). Every step uses every
//! training row, and costs the same whatever their number.
//!
//! **Set-up, once per job** (`shared.rs`). Every party sends every other its packing key, of
//! as many levels as the job's widest release needs (known to all once the widths are), and
//! encrypts its quantised columns under its own key for every other. Within every pair the
//! cross Gram X_PᵀX_Q — and for a host its label term X_Hᵀ(1 − 2y) with the guest — is
//! computed under HE and split into additive shares modulo 2^108 (the evaluator keeps its
//! mask, the key owner its decryption); then both directions of K and the hosts' k through
//! share × share products with each party's own preconditioner. A party's weights, velocity and k are shared between it and its partner
//! (every host's partner is the guest; the guest's is the first host).
//!
//! **A step.** Every party sends every other its weight shares, gadget-encrypted under its own
//! key; the other multiplies them by its shares of the couplings and releases the product back,
//! keeping its mask. Shares of a party's sums that land with a third party are handed to that
//! party, masked by a stream the third party shares with the owner's partner. Owner and partner
//! truncate and update their shares. In the same products each party's shares of its Taylor
//! loss terms are computed; one more product per vector (the guest sends each host its shares
//! of the vectors they hold together, the host releases the inner products back: only the
//! guest decrypts), and the hosts' shares summed through the first host, give the guest the
//! two Taylor losses of the weights the step started from and the squared change of all
//! weights — scalars that drive early stopping and the training curve (the rounds of a job:
//! `job.rs`).
//!
//! **Once, at the end**, each party receives its partner's share of its own kept weights (of
//! the epoch the guest last named best: under loss early stopping the best epoch's, otherwise
//! the last evaluated), and the final model's joint scores of the validation rows (the training rows
//! when there is no validation split) reach the guest, summed over the hosts under pairwise
//! masks, for AUC, KS, the report and the guest's calibration ([`Calibration`]).
//!
//! **What each party learns** (semi-honest, non-colluding parties):
//! - *the guest*: per epoch two Taylor losses and ‖Δw‖² of all weights; at the end its own
//!   weights and, once, Σ_k z_k of the final model on the revealed rows — **one linear view of
//!   the hosts' data per job**; the hosts' column counts and quantisation scales;
//! - *a host*: its own weights at the end; the row count and the split; the guest's verdict on
//!   every epoch (best? stop?); the other parties' column counts and quantisation scales;
//! - *nobody*: another party's features, labels, gradients, weights during training, per-row
//!   scores during training, or keys. Every value a party decrypts or is handed during the
//!   set-up and the steps is a uniform residue modulo 2^108 (tested: `shared.rs`,
//!   `tests/privacy.rs`); what is not uniform is the outputs above.
//!
//! **A deviating party.** Shares carry no MACs, so the protocol is secure against
//! semi-honest parties only, like SecretFlow's HESS-LR and FATE's SSHE-LR. What a deviating
//! party can do:
//! - alter what it releases or hands over, or its own inputs: the model moves, unnoticed
//!   (`tests/tamper.rs` shows it);
//! - release crafted ciphertexts: their decryption enters the decryptor's shares. It never
//!   comes back to the crafter in a hand-over (masked, tested) or in the loss sums (only the
//!   guest decrypts in the loss round, and a host that crafts its loss releases moves only the
//!   guest's verdicts: two bits per epoch back to it), but it reaches the crafter folded into
//!   the weight shares it receives at the end: a crafting party can learn a function of
//!   another party's key (version 6's integrity check columns caught this; authenticated
//!   shares would, and are not built);
//! - a guest that sends hosts different settings (to isolate one host) is caught: the hosts
//!   compare digests of the proposal and the guest's keys before encrypting anything.
//!
//! **Resuming.** After every epoch each session emits a [`Checkpoint`] with its shares of the
//! weight vectors it holds; an interrupted job resumes in fresh sessions (fresh keys, masks
//! and set-up products) from the last epoch every party holds, and ends with the model of an
//! uninterrupted run up to the shares' fixed point (2^-20). A checkpoint that does not fit is
//! refused by name ([`FedError::Resume`]).
//!
//! **Quantisation and fixed point.** Each party standardises its features on the training
//! rows and quantises them to round(x·2^f) with the finest f ≤ 12 that keeps |x̃| < 2^13.
//! Grams carry 24 fraction bits, preconditioners 24, couplings and weights 20; SecureML's
//! local truncation keeps shares exact to one unit of the last place per truncation. The
//! shared job follows [`train_plain_vertical`], the same iteration in f64 on the same
//! quantised values, to about 10^-5 in the weights (`tests/agreement.rs`).
//!
//! **Accuracy.** The first-order residual makes every gradient linear in the scores, which is
//! what lets it be computed on shares; on the credit data it costs about 0.007 AUC against an
//! exact logistic regression (see the crate's tests).
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
//!     config: TrainConfig { max_epochs: 5, ..TrainConfig::default() },
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
    pub use crate::simulator::{replacing, simulate_altered, simulate_bounded, Alter, AlteredRun};

    /// The (training, validation) rows of a job of `rows` rows with this seed and fraction.
    pub fn split(rows: usize, seed: u64, validation_fraction: f64) -> (Vec<usize>, Vec<usize>) {
        let split = crate::masks::Split::new(rows, seed, validation_fraction);
        (split.train, split.validation)
    }
}
