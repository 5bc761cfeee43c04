//! The one error type of the crate.

/// Everything that can go wrong, with the context needed to fix it.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum HeError {
    /// A value does not fit the fixed-point format.
    #[error("value {index} ({value}) does not fit {bits}-bit fixed point with {frac_bits} fraction bits")]
    EncodingOverflow {
        /// Position in the input.
        index: usize,
        /// The value.
        value: f64,
        /// Total signed bits.
        bits: u32,
        /// Fraction bits.
        frac_bits: u32,
    },
    /// An integer message outside the plaintext space.
    #[error("message {index} is {value}; messages must satisfy |m| ≤ {max}")]
    MessageOutOfRange {
        /// Position in the input.
        index: usize,
        /// The value.
        value: i128,
        /// The bound.
        max: i128,
    },
    /// A matrix entry outside the supported range.
    #[error(
        "matrix entry at row {row}, column {column} is {value}; entries must satisfy |x| ≤ {max}"
    )]
    MatrixEntryOutOfRange {
        /// Row.
        row: usize,
        /// Column.
        column: usize,
        /// The value.
        value: i64,
        /// The bound.
        max: i64,
    },
    /// Sizes that do not agree.
    #[error("{what}: expected {expected}, got {got}")]
    SizeMismatch {
        /// Which size.
        what: &'static str,
        /// Expected.
        expected: usize,
        /// Actual.
        got: usize,
    },
    /// Objects made under different keys or parameter sets.
    #[error("{what} belongs to another key or parameter set")]
    WrongKey {
        /// Which object.
        what: &'static str,
    },
    /// A product whose exact value could exceed the plaintext space, so the result would wrap.
    #[error("the product could reach 2^{bits:.1}, beyond the {message_bits}-bit plaintext space")]
    ProductTooLarge {
        /// log2 of the worst-case |result|.
        bits: f64,
        /// Plaintext bits.
        message_bits: u32,
    },
    /// Bytes that do not decode.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
}
