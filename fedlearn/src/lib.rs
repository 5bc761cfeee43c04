//! Vertical federated logistic regression without a third party, sans-IO.
//!
//! Filled in by issue 4. So far: the metrics the guest reports per epoch ([`evaluate`]) and
//! the plaintext reference trainer the federated one is measured against
//! ([`train_reference`]), with both the exact sigmoid residual and the first-order Taylor
//! residual (0.25·z + 0.5 − y) that the encrypted protocol uses.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod metrics;
mod reference;

pub use error::FedError;
pub use metrics::{evaluate, Metrics};
pub use reference::{sigmoid, train_reference, LinearModel, ReferenceConfig, Residual};
