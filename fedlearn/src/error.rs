//! The one error type of the crate.

/// What can go wrong in training or evaluation, with the context to fix it.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum FedError {
    /// Two inputs that must have the same length do not.
    #[error("{what}: expected {expected} values, got {got}")]
    LengthMismatch {
        /// Which input.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// A label that is not 0 or 1.
    #[error("row {row}: label {value} is not 0 or 1")]
    BadLabel {
        /// Row index.
        row: usize,
        /// The value found.
        value: f64,
    },
    /// A score that is NaN or infinite, or a probability outside [0, 1].
    #[error("row {row}: score {value} is not a probability")]
    BadScore {
        /// Row index.
        row: usize,
        /// The value found.
        value: f64,
    },
    /// A metric that needs both classes got one.
    #[error("the labels hold only class {class}; AUC and KS need both classes")]
    SingleClass {
        /// The only class present.
        class: u8,
    },
}
