//! The node's errors: every variant names the file, key, peer or job at fault. Policy and
//! authorisation refusals are a [`Refusal`], a peer's misbehaviour a [`PeerFault`], and
//! `From<&NodeError> for tonic::Status` is the one table from an error to a gRPC code.

use std::path::PathBuf;

use tonic::{Code, Status};

use crate::wire::FEDERATION_VERSION;

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
    /// A peer refused, misbehaved or went silent.
    #[error("peer {peer}: {fault}")]
    Peer {
        /// The peer's party name.
        peer: String,
        /// What it did.
        fault: PeerFault,
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
    /// The policy or the caller's identity does not allow the request.
    #[error(transparent)]
    Refused(Box<Refusal>),
    /// A job or model the request names does not exist here.
    #[error("{0}")]
    NotFound(String),
    /// A request is malformed (the text says which field).
    #[error("{0}")]
    BadRequest(String),
    /// A model cannot be used now (its part or its dataset cannot be loaded).
    #[error("model {model} on {party}: {reason}")]
    Unusable {
        /// The model id.
        model: String,
        /// This node's party name.
        party: String,
        /// Why.
        reason: String,
    },
}

/// What a peer did wrong, as the code tells the cases apart.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerFault {
    /// Its configured address is not a valid endpoint.
    #[error("address {address:?}: {reason}")]
    BadAddress {
        /// The configured address.
        address: String,
        /// Why it is not valid.
        reason: String,
    },
    /// It is not in this node's configuration.
    #[error("not a configured peer of this node")]
    NotConfigured,
    /// It refused a job proposal (the text is the peer's own reason).
    #[error("refused the job: {0}")]
    RefusedJob(String),
    /// It sent nothing within the receive timeout.
    #[error("sent nothing for {seconds} s")]
    Silent {
        /// The timeout.
        seconds: u64,
    },
    /// It answered no liveness probe for `seconds` while a job waited for it.
    #[error("could not be reached for {seconds} s (it crashed, stopped or was cut off)")]
    Unreachable {
        /// How long it had not answered.
        seconds: u64,
    },
    /// It answers, but no longer runs the job (it restarted, or ended the job without a
    /// word that reached this node).
    #[error("no longer runs the job (it restarted or ended it)")]
    Gone,
    /// It answers that it interrupted the attempt this node waits in, and resumes the job.
    #[error("interrupted the job to resume it")]
    Resuming,
    /// It sent a delivery of another kind than the phase expects.
    #[error("sent a {got:?} message during {phase}")]
    WrongKind {
        /// The kind it sent.
        got: String,
        /// The job's phase.
        phase: &'static str,
    },
    /// It sent a message out of turn.
    #[error("sent {got} where {expected} was due")]
    OutOfTurn {
        /// What it sent.
        got: String,
        /// What the protocol expected.
        expected: &'static str,
    },
    /// It announced more ids than `federation.max_peer_rows` allows.
    #[error("announced {announced} ids; federation.max_peer_rows is {cap}")]
    TooManyRows {
        /// Ids announced.
        announced: u64,
        /// The configured cap.
        cap: u64,
    },
    /// An interrupted job waited `seconds` for it to be back, in vain.
    #[error("was not back within {seconds} s to resume the job")]
    NotBack {
        /// The wait (`federation.resume_secs`).
        seconds: u64,
    },
    /// It asked for PSI whose result only one side learns; training needs both.
    #[error("training needs both-sides PSI")]
    OneSidedPsi,
    /// This node refused what the peer offered once the job had started.
    #[error("{0}")]
    Offer(Box<Refusal>),
}

/// Why this node's policy or identity checks refuse a request. The text (`Display`) is the
/// reply the requester reads.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The requester speaks another federation version.
    #[error("federation version {got} is not supported (this node speaks {FEDERATION_VERSION})")]
    Version {
        /// The version it sent.
        got: u32,
    },
    /// A job id that is not 32 hex digits.
    #[error("the job id must be 32 hex digits")]
    BadJobId,
    /// A name that is not 1–64 of [A-Za-z0-9._-].
    #[error("{key}: {name:?} must be 1 to 64 letters, digits, '.', '_' or '-'")]
    BadName {
        /// The field.
        key: &'static str,
        /// The name, truncated to 64 characters.
        name: String,
    },
    /// A job kind a guest cannot propose.
    #[error("{kind:?} is not a job kind a guest can propose")]
    JobKind {
        /// The kind.
        kind: String,
    },
    /// The dataset is not configured here.
    #[error("{party} has no dataset {dataset:?}")]
    NoDataset {
        /// This node.
        party: String,
        /// The dataset named.
        dataset: String,
    },
    /// No policy rule lets the peer run this kind of job on the dataset.
    #[error("the policy of {party} does not let {peer} run {kind} jobs on dataset {dataset:?}")]
    Policy {
        /// This node.
        party: String,
        /// The requesting peer.
        peer: String,
        /// The job kind ("train", "score").
        kind: String,
        /// The dataset.
        dataset: String,
    },
    /// The guest brings more features than the policy allows.
    #[error(
        "the job brings {got} guest feature columns (each bin counts as one); the policy of \
         {party} allows {guest} at most {max} on dataset {dataset:?} (policy key \
         max_guest_features)"
    )]
    GuestFeatures {
        /// This node.
        party: String,
        /// The guest.
        guest: String,
        /// The dataset.
        dataset: String,
        /// Features announced.
        got: u32,
        /// The policy's maximum.
        max: u32,
    },
    /// Fewer training rows than the policy's minimum (every step uses all of them).
    #[error(
        "steps over {rows} training rows are below the {min} rows the policy of {party} \
         requires of {guest} on dataset {dataset:?} (policy key min_batch_rows)"
    )]
    BatchRows {
        /// This node.
        party: String,
        /// The guest.
        guest: String,
        /// The dataset.
        dataset: String,
        /// Training rows per step.
        rows: u64,
        /// The policy's minimum.
        min: u64,
    },
    /// The hosts are not distinct parties other than the guest.
    #[error("the hosts must be distinct parties other than the guest")]
    HostsNotDistinct,
    /// This node is not among the job's hosts.
    #[error("{party} is not among the job's hosts")]
    NotAHost {
        /// This node.
        party: String,
    },
    /// A co-host this node has no channel to.
    #[error("{host} is not a peer of {party}; hosts exchange masks directly")]
    UnknownHost {
        /// The host.
        host: String,
        /// This node.
        party: String,
    },
    /// A retried proposal for a job that has ended here.
    #[error("job {job} has already ended here ({state})")]
    JobEnded {
        /// The job id.
        job: String,
        /// Its final state.
        state: String,
    },
    /// A proposal reusing the id of another job.
    #[error("job {job} is already known here")]
    JobKnown {
        /// The job id.
        job: String,
    },
    /// The model id is taken here.
    #[error("model {model:?} already exists on {party}")]
    ModelInUse {
        /// The model id.
        model: String,
        /// This node.
        party: String,
    },
    /// The guest has used its disclosure budget on the dataset.
    #[error(
        "{guest} already has {disclosed} models trained on dataset {dataset:?} of {party}; the \
         policy allows {max} (policy key max_models)"
    )]
    Budget {
        /// The guest.
        guest: String,
        /// The dataset.
        dataset: String,
        /// This node.
        party: String,
        /// Models counted against the budget.
        disclosed: usize,
        /// The policy's maximum.
        max: u32,
    },
    /// The node is shutting down.
    #[error("{party} is shutting down")]
    ShuttingDown {
        /// This node.
        party: String,
    },
    /// Too many jobs run already (all of them, or a peer's).
    #[error("{party} is busy: {live} jobs run{of} (federation.{key} is {max}); try again later")]
    Busy {
        /// This node.
        party: String,
        /// Live jobs counted.
        live: usize,
        /// " for <peer>", or nothing for all jobs.
        of: String,
        /// The configuration key.
        key: &'static str,
        /// Its value.
        max: usize,
    },
    /// The guest has used its budget of binning jobs on the dataset.
    #[error(
        "{guest} already ran {done} binning jobs on dataset {dataset:?} of {party}; the policy \
         allows {max} (policy key max_binning_jobs)"
    )]
    BinningBudget {
        /// The guest.
        guest: String,
        /// The dataset.
        dataset: String,
        /// This node.
        party: String,
        /// Binning jobs counted against the budget.
        done: usize,
        /// The policy's maximum.
        max: u32,
    },
    /// The proposal's column preparation cannot be read or fitted.
    #[error("the job's preparation of {party}'s columns is not valid: {reason}")]
    BadPrep {
        /// This node.
        party: String,
        /// What is wrong.
        reason: String,
    },
    /// The guest's training proposal differs from the job it proposed.
    #[error("the training proposal differs from the accepted job")]
    OfferDiffers,
    /// A proposal to resume a job this node cannot resume.
    #[error("{party} cannot resume job {job}: {reason}")]
    NotResumable {
        /// This node.
        party: String,
        /// The job id.
        job: String,
        /// Why not.
        reason: String,
    },
    /// A federation call from a name that is not a peer.
    #[error("{call} from {claimed}: {claimed:?} is not a peer of {party}")]
    NotAPeer {
        /// The call.
        call: &'static str,
        /// The name it claimed (at most 64 characters).
        claimed: String,
        /// This node.
        party: String,
    },
    /// A federation call whose certificate is not the claimed peer's.
    #[error(
        "{call} from {claimed}: the caller's certificate is not valid for {certificate:?} or \
         not from the CA that vouches for {claimed}"
    )]
    PeerCertificate {
        /// The call.
        call: &'static str,
        /// The name it claimed.
        claimed: String,
        /// The certificate name the configuration gives that peer.
        certificate: String,
    },
    /// A call whose certificate is on a revocation list of its CA.
    #[error("{call}: the caller's certificate is revoked")]
    Revoked {
        /// The call.
        call: &'static str,
    },
    /// A delivery from a peer that is not part of the job.
    #[error("{sender} is not part of job {job}")]
    NotInJob {
        /// The sender.
        sender: String,
        /// The job.
        job: String,
    },
    /// A jobs call whose certificate names no operator.
    #[error("the caller's certificate is not valid for any operator of {party}")]
    NotAnOperator {
        /// This node.
        party: String,
    },
    /// A workers call whose certificate names no worker of this party.
    #[error("the caller's certificate is not valid for any worker of {party}")]
    NotAWorker {
        /// This node.
        party: String,
    },
    /// A scoring call whose certificate names no scoring client.
    #[error("the caller's certificate names no scoring client")]
    NotAScoringClient,
    /// A scoring client asking for a model it may not use.
    #[error("{client} may not score with model {model:?}")]
    ModelNotAllowed {
        /// The client.
        client: String,
        /// The model.
        model: String,
    },
    /// A scoring client over its call rate.
    #[error("{client}: over {per_second} calls per second")]
    CallRate {
        /// The client.
        client: String,
        /// Its configured rate.
        per_second: f64,
    },
    /// Scores of a model beyond the guest's `max_models` on the dataset.
    #[error(
        "model {model:?} is beyond the {max} models the policy of {party} lets {guest} score on \
         dataset {dataset:?} (policy key max_models)"
    )]
    ScoreModels {
        /// The model.
        model: String,
        /// The policy's maximum.
        max: u32,
        /// This node.
        party: String,
        /// The guest.
        guest: String,
        /// The dataset.
        dataset: String,
    },
    /// Partial scores beyond the guest's `scores_per_minute`.
    #[error(
        "{guest} asked for {ids} scores; the policy of {party} allows {per_minute} per minute \
         (policy key scores_per_minute)"
    )]
    ScoreRate {
        /// The guest.
        guest: String,
        /// Ids asked for.
        ids: usize,
        /// This node.
        party: String,
        /// The policy's rate.
        per_minute: u32,
    },
}

impl Refusal {
    /// The gRPC code of this refusal.
    pub fn code(&self) -> Code {
        match self {
            Refusal::Version { .. } => Code::FailedPrecondition,
            Refusal::CallRate { .. } | Refusal::ScoreRate { .. } | Refusal::Busy { .. } => {
                Code::ResourceExhausted
            }
            Refusal::ShuttingDown { .. } => Code::Unavailable,
            _ => Code::PermissionDenied,
        }
    }

    /// The label of `unseen_refused_total` this refusal counts under.
    pub fn metric(&self) -> &'static str {
        match self {
            Refusal::NotAPeer { .. } | Refusal::PeerCertificate { .. } => "peer identity",
            Refusal::NotAnOperator { .. } => "operator identity",
            Refusal::NotAWorker { .. } => "worker identity",
            Refusal::NotAScoringClient | Refusal::ModelNotAllowed { .. } => "scoring client",
            Refusal::Revoked { .. } => "revoked certificate",
            Refusal::CallRate { .. } => "rate limit",
            Refusal::Busy { .. } | Refusal::ShuttingDown { .. } => "busy",
            _ => "policy",
        }
    }
}

impl NodeError {
    /// The gRPC code this error answers with.
    pub fn code(&self) -> Code {
        match self {
            NodeError::Spec(_) | NodeError::BadRequest(_) => Code::InvalidArgument,
            NodeError::Refused(refusal) => refusal.code(),
            NodeError::NotFound(_) => Code::NotFound,
            NodeError::Unusable { .. } => Code::FailedPrecondition,
            // Tell a platform whether to retry: only an unreachable peer is transient.
            NodeError::PeerCall { code, .. } => match code {
                Code::PermissionDenied => Code::PermissionDenied,
                Code::NotFound | Code::FailedPrecondition => Code::FailedPrecondition,
                Code::InvalidArgument => Code::Internal,
                _ => Code::Unavailable,
            },
            NodeError::Peer { .. } => Code::Unavailable,
            NodeError::Stopped(_) => Code::Aborted,
            NodeError::Cancelled(_) => Code::Cancelled,
            NodeError::Config { .. }
            | NodeError::Io { .. }
            | NodeError::Tls(_)
            | NodeError::Store { .. }
            | NodeError::Dataset { .. }
            | NodeError::Psi(_)
            | NodeError::Train(_)
            | NodeError::Server(_) => Code::Internal,
        }
    }
}

impl From<Refusal> for NodeError {
    fn from(refusal: Refusal) -> NodeError {
        NodeError::Refused(Box::new(refusal))
    }
}

impl From<&NodeError> for Status {
    fn from(error: &NodeError) -> Status {
        Status::new(error.code(), error.to_string())
    }
}

impl From<NodeError> for Status {
    fn from(error: NodeError) -> Status {
        Status::from(&error)
    }
}

/// A new error id (12 hex digits): a failure's details are found under it in the log and
/// the job's record of the node where it happened.
pub(crate) fn error_id() -> String {
    let mut id = [0u8; 6];
    rand::fill(&mut id);
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Most characters of an error text a node stores, logs or sends.
pub(crate) const MAX_ERROR_CHARS: usize = 2000;

/// `text`, cut to [`MAX_ERROR_CHARS`] characters (a cut text ends with "…").
pub(crate) fn capped(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

impl NodeError {
    /// What a peer may read of this error when it stops a job: a category that names no file,
    /// line, column, value or id of this node's data (the operator finds the details under
    /// the error id in the job's record and the log). A peer's own stop reason passes on as
    /// it came (it is already of this form).
    pub fn public_reason(&self, error_id: &str) -> String {
        let category = match self {
            NodeError::Stopped(reason) => return capped(reason),
            // About the request, not this node's data: the requester reads them whole.
            NodeError::Refused(refusal) => return capped(&refusal.to_string()),
            NodeError::NotFound(text) | NodeError::BadRequest(text) => return capped(text),
            NodeError::Cancelled(_) => "cancelled by the operator".into(),
            NodeError::Peer { peer, fault } => match fault {
                PeerFault::Silent { .. } => format!("{peer} went silent"),
                PeerFault::Unreachable { .. } => format!("lost contact with {peer}"),
                PeerFault::Gone => format!("{peer} no longer runs the job"),
                PeerFault::Resuming => format!("{peer} interrupted the job"),
                PeerFault::RefusedJob(_) => format!("{peer} refused the job"),
                PeerFault::NotBack { .. } => format!("{peer} was not back to resume the job"),
                // About the peer's own offer (its settings, its counts): it reads it whole.
                PeerFault::Offer(refusal) => return capped(&refusal.to_string()),
                _ => format!("{peer} broke the protocol"),
            },
            NodeError::PeerCall { peer, .. } => format!("{peer} could not be reached"),
            NodeError::Dataset { .. } | NodeError::Unusable { .. } => "bad data".into(),
            NodeError::Spec(_) => "bad job spec".into(),
            NodeError::Psi(_) => "PSI failed".into(),
            NodeError::Train(error) => error.category(),
            NodeError::Config { .. }
            | NodeError::Io { .. }
            | NodeError::Tls(_)
            | NodeError::Store { .. }
            | NodeError::Server(_) => "internal error".into(),
        };
        format!("{category} (error {error_id}; its operator has the details)")
    }

    /// The status a peer or a platform reads of this error: [`NodeError::public_reason`]
    /// under a new error id; the whole text goes to this node's log under that id.
    pub fn public_status(&self, what: &str) -> Status {
        let id = error_id();
        tracing::warn!(error = %capped(&self.to_string()), error_id = %id, "{what} failed");
        Status::new(self.code(), self.public_reason(&id))
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        NodeError::Io {
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal_code(refusal: Refusal) -> Code {
        Status::from(NodeError::from(refusal)).code()
    }

    #[test]
    fn every_refusal_has_its_grpc_code() {
        let s = String::new;
        assert_eq!(
            refusal_code(Refusal::Version { got: 2 }),
            Code::FailedPrecondition
        );
        assert_eq!(
            refusal_code(Refusal::ShuttingDown { party: s() }),
            Code::Unavailable
        );
        for rate in [
            Refusal::CallRate {
                client: s(),
                per_second: 1.0,
            },
            Refusal::ScoreRate {
                guest: s(),
                ids: 1,
                party: s(),
                per_minute: 1,
            },
            Refusal::Busy {
                party: s(),
                live: 8,
                of: String::new(),
                key: "max_jobs",
                max: 8,
            },
        ] {
            assert_eq!(refusal_code(rate), Code::ResourceExhausted);
        }
        for denied in [
            Refusal::BadJobId,
            Refusal::BadName {
                key: "model_id",
                name: s(),
            },
            Refusal::JobKind { kind: s() },
            Refusal::NoDataset {
                party: s(),
                dataset: s(),
            },
            Refusal::Policy {
                party: s(),
                peer: s(),
                kind: s(),
                dataset: s(),
            },
            Refusal::GuestFeatures {
                party: s(),
                guest: s(),
                dataset: s(),
                got: 65,
                max: 64,
            },
            Refusal::BatchRows {
                party: s(),
                guest: s(),
                dataset: s(),
                rows: 1,
                min: 2,
            },
            Refusal::HostsNotDistinct,
            Refusal::NotAHost { party: s() },
            Refusal::UnknownHost {
                host: s(),
                party: s(),
            },
            Refusal::JobEnded {
                job: s(),
                state: s(),
            },
            Refusal::JobKnown { job: s() },
            Refusal::ModelInUse {
                model: s(),
                party: s(),
            },
            Refusal::Budget {
                guest: s(),
                dataset: s(),
                party: s(),
                disclosed: 2,
                max: 2,
            },
            Refusal::NotAPeer {
                call: "proposal",
                claimed: s(),
                party: s(),
            },
            Refusal::PeerCertificate {
                call: "delivery",
                claimed: s(),
                certificate: s(),
            },
            Refusal::Revoked { call: "delivery" },
            Refusal::OfferDiffers,
            Refusal::NotResumable {
                party: s(),
                job: s(),
                reason: s(),
            },
            Refusal::BadPrep {
                party: s(),
                reason: s(),
            },
            Refusal::BinningBudget {
                guest: s(),
                dataset: s(),
                party: s(),
                done: 2,
                max: 2,
            },
            Refusal::NotInJob {
                sender: s(),
                job: s(),
            },
            Refusal::NotAnOperator { party: s() },
            Refusal::NotAWorker { party: s() },
            Refusal::NotAScoringClient,
            Refusal::ModelNotAllowed {
                client: s(),
                model: s(),
            },
            Refusal::ScoreModels {
                model: s(),
                max: 2,
                party: s(),
                guest: s(),
                dataset: s(),
            },
        ] {
            assert_eq!(
                refusal_code(denied.clone()),
                Code::PermissionDenied,
                "{denied:?}"
            );
        }
    }

    #[test]
    fn what_crosses_to_a_peer_is_a_category_and_an_id() {
        let cell = NodeError::Dataset {
            name: "tax".into(),
            reason: "tax.csv, line 9, column \"x1\": \"4711\" is not a finite number".into(),
        };
        let public = cell.public_reason("0123456789ab");
        assert_eq!(
            public,
            "bad data (error 0123456789ab; its operator has the details)"
        );
        let status = cell.public_status("scoring");
        assert!(status.message().starts_with("bad data (error "));
        assert!(!status.message().contains("4711") && !status.message().contains("tax.csv"));
        // A peer's stop passes on as it came; refusals are the requester's to read.
        let stopped = NodeError::Stopped("tax stopped the job: bad data (error 1)".into());
        assert_eq!(
            stopped.public_reason("x"),
            "tax stopped the job: bad data (error 1)"
        );
        let long = capped(&"é".repeat(MAX_ERROR_CHARS + 5));
        assert_eq!(long.chars().count(), MAX_ERROR_CHARS + 1);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn every_error_kind_has_its_grpc_code() {
        let code = |e: NodeError| Status::from(&e).code();
        assert_eq!(code(NodeError::Spec("x".into())), Code::InvalidArgument);
        assert_eq!(
            code(NodeError::BadRequest("x".into())),
            Code::InvalidArgument
        );
        assert_eq!(code(NodeError::NotFound("x".into())), Code::NotFound);
        let unusable = NodeError::Unusable {
            model: "m".into(),
            party: "tax".into(),
            reason: "r".into(),
        };
        assert_eq!(code(unusable), Code::FailedPrecondition);
        assert_eq!(code(NodeError::Stopped("x".into())), Code::Aborted);
        assert_eq!(code(NodeError::Cancelled("x".into())), Code::Cancelled);
        let io = std::io::Error::other("x");
        for internal in [
            NodeError::Server("x".into()),
            NodeError::Tls("x".into()),
            NodeError::io("f", io),
            NodeError::Config {
                path: "f".into(),
                reason: "r".into(),
            },
            NodeError::Store {
                path: "f".into(),
                reason: "r".into(),
            },
            NodeError::Dataset {
                name: "d".into(),
                reason: "r".into(),
            },
            NodeError::Train(fedlearn::FedError::Protocol {
                peer: "tax".into(),
                reason: "r".into(),
            }),
        ] {
            assert_eq!(code(internal), Code::Internal);
        }
        let silent = NodeError::Peer {
            peer: "tax".into(),
            fault: PeerFault::Silent { seconds: 1 },
        };
        assert_eq!(code(silent), Code::Unavailable);
        // A host's answer decides whether a platform should retry.
        for (theirs, ours) in [
            (Code::PermissionDenied, Code::PermissionDenied),
            (Code::NotFound, Code::FailedPrecondition),
            (Code::FailedPrecondition, Code::FailedPrecondition),
            (Code::InvalidArgument, Code::Internal),
            (Code::Unavailable, Code::Unavailable),
            (Code::DeadlineExceeded, Code::Unavailable),
        ] {
            let call = NodeError::PeerCall {
                peer: "tax".into(),
                reason: "r".into(),
                code: theirs,
            };
            assert_eq!(code(call), ours, "{theirs:?}");
        }
        // The text is the error's own, so the CLI's messages stay as they were.
        let refusal = Refusal::NotAHost {
            party: "tax".into(),
        };
        assert_eq!(
            Status::from(NodeError::from(refusal)).message(),
            "tax is not among the job's hosts"
        );
    }
}
