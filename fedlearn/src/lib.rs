//! Vertical federated logistic regression without a third party, sans-IO.
//!
//! One guest holds the labels (the bank); one or more hosts hold features of the same aligned
//! rows (tax bureau, utility company). Every party owns an [`he`] key pair and updates only its
//! own weights. Per mini-batch (rows chosen from the guest's seed, so every party indexes the
//! same rows), with z_G = X_G·w_G + b and z_k = X_k·w_k:
//!
//! 1. guest → host 1: [[a]]_G, a = 0.25·z_G + 0.5 − y (packed, seeded ciphertexts);
//! 2. each host adds its share 0.25·z_k in plaintext along a chain; the last host sends the
//!    complete [[d]]_G (d = 0.25·z + 0.5 − y, the first-order residual) to the others;
//! 3. host k sends [[X_k^T d + r_k]]_G, re-randomised and flooded, and [[0.25·z_k]]_k;
//! 4. the guest decrypts and returns (X_k^T d + r_k) mod 2^54 — the host unmasks its gradient;
//!    the guest returns [[X_G^T (0.25·z_k) + r]]_k, masked and flooded; host k decrypts and
//!    returns it plus pairwise masks shared with the other hosts, so the guest learns only
//!    Σ_k X_G^T z_k (with one host, X_G^T z_1) and completes its gradient X_G^T d.
//! 5. after each epoch, hosts send their partial scores plus pairwise masks (secure
//!    aggregation); the guest learns only Σ_k z_k per row — with a single host that is z_1 —
//!    and computes AUC, KS, log-loss and accuracy.
//!
//! **What each party learns** (semi-honest, non-colluding). The guest: its own gradients and
//! weights, the joint score of each row (and so Σ_k z_k), Σ_k X_G^T z_k per batch (derivable
//! from its gradient), the metrics, and the summed squared weight change of the hosts. A host:
//! its own gradient and weights, the row count, the validation split and the batch order.
//! Nobody sees another party's features, labels, residuals or gradients, nor (with two or more
//! hosts) any single host's partial scores; every ciphertext a party cannot decrypt is masked
//! uniformly before its key owner decrypts it.
//!
//! **Quantisation.** Each party standardises its features on the training rows and quantises
//! them to round(x·2^f) with the finest f that keeps |x̃| < 2^15 (error ≤ 2^-(f+1) per entry);
//! residual shares use [`RESIDUAL_FORMAT`] (error ≤ 2^-17 per share). Each gradient coordinate
//! is therefore within (1/|B|)·Σ_i (|x_ij|·(k+1)·2^-17 + |d_i|·2^-(f+1) + (k+1)·2^-(f+18)) of
//! the exact first-order gradient of the same weights, for k hosts.
//!
//! **Accuracy.** The first-order residual makes every gradient linear in the scores, which is
//! what lets it pass through additive encryption; on the credit data it costs about 0.006 AUC
//! against an exact logistic regression (see the crate's tests).
//!
//! The parties talk through a [`Transport`]; [`simulate`] runs them in one process:
//!
//! ```
//! use fedlearn::{simulate, GuestJob, HostJob, Missing, Table, TrainConfig};
//!
//! // 200 aligned rows: the bank has one feature and the label, the tax bureau one feature.
//! let ids: Vec<String> = (0..200).map(|i| format!("firm{i}")).collect();
//! let tax: Vec<f64> = (0..200).map(|i| ((i * 37) % 101) as f64).collect();
//! let bank: Vec<f64> = (0..200).map(|i| ((i * 53) % 97) as f64).collect();
//! let labels: Vec<f64> = tax.iter().zip(&bank).map(|(t, b)| f64::from(t + b > 100.0)).collect();
//! let guest = GuestJob {
//!     party: "bank".into(),
//!     model_id: "demo".into(),
//!     table: Table::new(ids.clone(), vec!["balance".into()], bank, Some(labels), Missing::Reject)?,
//!     hosts: vec!["tax".into()],
//!     config: TrainConfig { max_epochs: 5, batch_size: None, learning_rate: 0.2, ..TrainConfig::default() },
//! };
//! let host = HostJob {
//!     party: "tax".into(),
//!     guest: "bank".into(),
//!     table: Table::new(ids, vec!["paid".into()], tax, None, Missing::Reject)?,
//! };
//! let run = simulate(guest, vec![host], false, &mut |_| {})?;
//! assert!(run.guest.history.last().unwrap().train.auc > 0.9);
//! println!("{}", run.hosts[0].model.to_json()); // the tax bureau's part of the model
//! # Ok::<(), fedlearn::FedError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod data;
mod error;
mod guest;
mod host;
mod masks;
mod message;
mod metrics;
mod model;
mod protocol;
mod reference;
mod simulator;

pub use config::{EarlyStopping, Optimizer, Schedule, TrainConfig, MAX_BATCH_ROWS};
pub use data::{Missing, Table};
pub use error::FedError;
pub use guest::{run_guest, GuestJob};
pub use host::{receive_proposal, run_host, HostJob};
pub use message::{Acceptance, Message, Proposal, Transport, PROTOCOL_VERSION};
pub use metrics::{evaluate, Metrics};
pub use model::{joint_probabilities, FeatureWeight, ModelPart, Role, MODEL_FORMAT};
pub use protocol::{EpochReport, Event, GuestOutcome, HostOutcome, StopReason, RESIDUAL_FORMAT};
pub use reference::{
    sigmoid, train_plain_vertical, train_reference, LinearModel, PlainOutcome, ReferenceConfig,
    Residual,
};
pub use simulator::{simulate, Simulation, WireRecord};
