//! The node's error type: every variant names the file, key, peer or job at fault.

use std::path::PathBuf;

/// What can go wrong in the node or the CLI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A configuration file or setting is wrong.
    #[error("{path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Certificates or keys are unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// A job spec is wrong.
    #[error("job spec: {0}")]
    Spec(String),
    /// The embedded store failed.
    #[error("store {path}: {reason}")]
    Store {
        /// The database file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A peer refused, failed or could not be reached.
    #[error("peer {peer}: {reason}")]
    Peer {
        /// The peer's party name.
        peer: String,
        /// What happened.
        reason: String,
    },
    /// A call to a peer failed, with the gRPC status code of the last attempt.
    #[error("peer {peer}: {reason}")]
    PeerCall {
        /// The peer's party name.
        peer: String,
        /// What happened.
        reason: String,
        /// Status code of the last attempt.
        code: tonic::Code,
    },
    /// A dataset could not be loaded.
    #[error("dataset {name}: {reason}")]
    Dataset {
        /// Dataset name in the configuration.
        name: String,
        /// What is wrong (the CSV errors name file, line and column).
        reason: String,
    },
    /// The job was closed: a peer stopped it, or it ended.
    #[error("{0}")]
    Stopped(String),
    /// The job was cancelled.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// PSI failed.
    #[error("PSI: {0}")]
    Psi(#[from] psi::PsiError),
    /// Training failed.
    #[error("training: {0}")]
    Train(#[from] fedlearn::FedError),
    /// A server could not start.
    #[error("{0}")]
    Server(String),
}

impl NodeError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        NodeError::Io {
            path: path.into(),
            source,
        }
    }
}
