//! The one error type of the crate.

/// What can go wrong in training, scoring or evaluation, with the context to fix it.
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
        /// Row index (0-based, in the aligned data).
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
    /// A CSV that cannot be read as a table of numbers.
    #[error("{source_name}, line {line}, column {column:?}: {reason}")]
    Csv {
        /// File (or other source) name.
        source_name: String,
        /// 1-based line in the file (the header is line 1).
        line: usize,
        /// Column name (or the header position when the header is at fault).
        column: String,
        /// What is wrong.
        reason: String,
    },
    /// A typed source (a Parquet file) whose columns do not fit the table: a configured
    /// column it lacks or holds twice.
    #[error("{source_name}, column {column:?}: {reason}")]
    Columns {
        /// File (or other source) name.
        source_name: String,
        /// Column name.
        column: String,
        /// What is wrong.
        reason: String,
    },
    /// A row of a typed source (a Parquet file) that cannot be read as a table row.
    #[error("{source_name}, row {row}, column {column:?}: {reason}")]
    Row {
        /// File (or other source) name.
        source_name: String,
        /// 1-based data row (the first row after the header is row 1).
        row: usize,
        /// Column name.
        column: String,
        /// What is wrong.
        reason: String,
    },
    /// A feature with a single value on the training rows carries no information and cannot
    /// be standardised.
    #[error("{party}: feature {column:?} is constant ({value}) on the training rows; drop it")]
    ConstantColumn {
        /// Party holding the column.
        party: String,
        /// Column name.
        column: String,
        /// Its only value.
        value: f64,
    },
    /// A party whose data does not have the agreed number of rows.
    #[error("party {party} has {got} rows, but the agreed intersection has {expected}")]
    RowCount {
        /// The party.
        party: String,
        /// Rows agreed (the guest's).
        expected: usize,
        /// Rows the party has.
        got: usize,
    },
    /// A training setting that cannot work.
    #[error("training setting {field}: {reason}")]
    Config {
        /// The setting.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// An encryption-layer error.
    #[error("{context}: {source}")]
    He {
        /// What the party was doing.
        context: &'static str,
        /// The cause.
        source: he::HeError,
    },
    /// A peer sent something the protocol does not allow at this point.
    #[error("protocol error with {peer}: {reason}")]
    Protocol {
        /// The peer.
        peer: String,
        /// What was wrong.
        reason: String,
    },
    /// Products that fail the receiving party's integrity check: a party deviated from the
    /// protocol (or the bytes were altered in transit). Nothing derived from them is used.
    /// The text is the same whichever check failed: it travels to the other parties, and
    /// which check fails depends on the owner's secrets and on what it decrypted.
    #[error(
        "the products received for step {step} from {senders} fail the integrity check \
         (check columns and bounds); a party deviated from the protocol, so the job stops"
    )]
    Integrity {
        /// The update index.
        step: u64,
        /// The parties whose products were summed (one of them deviated).
        senders: String,
    },
    /// Bytes that do not decode as a protocol message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The transport could not deliver or receive.
    #[error("transport to {peer}: {reason}")]
    Transport {
        /// The peer.
        peer: String,
        /// What failed.
        reason: String,
    },
    /// Training produced a non-finite or out-of-range value.
    #[error("training diverged at epoch {epoch}: {reason}")]
    Diverged {
        /// The epoch that failed (1-based).
        epoch: usize,
        /// What went wrong.
        reason: String,
    },
    /// Another party stopped the job.
    #[error("{peer} stopped the job: {reason}")]
    Aborted {
        /// The party that stopped.
        peer: String,
        /// Its reason.
        reason: String,
    },
    /// An interrupted job that cannot resume from the checkpoint asked for.
    #[error("{party} cannot resume the job: {reason}")]
    Resume {
        /// The party that cannot.
        party: String,
        /// Why (its checkpoint's epoch, changed settings or data).
        reason: String,
    },
    /// A model file or a table that does not fit the model.
    #[error("model {source_name}: {reason}")]
    Model {
        /// The model's source (file name or model id).
        source_name: String,
        /// What is wrong.
        reason: String,
    },
}

impl FedError {
    /// What another party may read of this error: its kind and the party it concerns, never
    /// its text (which can name this party's columns, rows or values).
    pub fn category(&self) -> String {
        match self {
            FedError::Protocol { peer, .. } => format!("{peer} broke the protocol"),
            // A send that failed after its retries, or a receive that did.
            FedError::Transport { peer, .. } => format!("lost contact with {peer}"),
            FedError::Integrity { .. } | FedError::Malformed(_) => {
                "a protocol message failed its checks".into()
            }
            FedError::Diverged { .. } => "training diverged".into(),
            FedError::He { .. } => "internal error".into(),
            FedError::Aborted { peer, .. } => format!("{peer} stopped the job"),
            FedError::Resume { party, .. } => format!("{party} cannot resume the job"),
            _ => "bad data or settings".into(),
        }
    }

    pub(crate) fn he(context: &'static str) -> impl FnOnce(he::HeError) -> FedError {
        move |source| FedError::He { context, source }
    }

    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> FedError {
        FedError::Config {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn protocol(peer: &str, reason: impl Into<String>) -> FedError {
        FedError::Protocol {
            peer: peer.to_owned(),
            reason: reason.into(),
        }
    }
}
