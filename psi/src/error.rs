//! The one error type of the crate.
#![forbid(unsafe_code)]

use std::fmt;

/// One id that occurs more than once in a party's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuplicateId {
    /// The id itself (shown only to the party that owns it; never sent to a peer).
    pub id: String,
    /// Row index (0-based) of the first occurrence, which a dedupe keeps.
    pub first_row: u64,
    /// Row index (0-based) of a later occurrence.
    pub repeated_row: u64,
}

/// Everything that can go wrong in a PSI run, with the context a user needs to fix it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PsiError {
    /// The party's id set has no rows.
    #[error("the id set is empty: a party must bring at least one id")]
    EmptyInput,
    /// An id is the empty string.
    #[error("row {row}: the id is empty")]
    IdEmpty {
        /// 0-based row index.
        row: u64,
    },
    /// An id is not valid UTF-8.
    #[error("row {row}: the id is not valid UTF-8")]
    IdNotUtf8 {
        /// 0-based row index.
        row: u64,
    },
    /// An id is longer than [`crate::MAX_ID_LEN`].
    #[error("row {row}: the id is {len} bytes long; the limit is {max} bytes")]
    IdTooLong {
        /// 0-based row index.
        row: u64,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input repeats ids and the duplicate policy is to reject.
    #[error("{}", describe_duplicates(*.count, .examples))]
    DuplicateIds {
        /// How many rows repeat an id that occurred on an earlier row.
        count: u64,
        /// The first few such rows, by row index.
        examples: Vec<DuplicateId>,
    },
    /// More rows (or id bytes) than one session supports.
    #[error("the input is too large: {what} is {got}, the limit is {max}")]
    InputTooLarge {
        /// Which quantity overflowed.
        what: &'static str,
        /// Its value.
        got: u64,
        /// The limit.
        max: u64,
    },
    /// A local setting is out of range.
    #[error("invalid PSI setting `{field}`: {reason}")]
    InvalidConfig {
        /// Setting name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The two set sizes are too large for the truncated tag length to keep false matches negligible.
    #[error(
        "sets of {guest_rows} and {host_rows} ids are too large for {tag_bits}-bit tags \
         (need 40 + log2 of their product ≤ {tag_bits})"
    )]
    SetsTooLarge {
        /// Guest set size.
        guest_rows: u64,
        /// Host set size.
        host_rows: u64,
        /// Tag length in bits.
        tag_bits: u32,
    },
    /// The parts of a partitioned run are too large for the tag length over the whole job.
    #[error(
        "host {host}: the parts compare {compared} pairs of ids, more than the {max} that \
         96-bit tags allow (false matches must stay below 2^-40); use smaller parts"
    )]
    PartitionsTooCoarse {
        /// The host whose sets are too large.
        host: String,
        /// Σ over parts of guest ids × host ids.
        compared: u128,
        /// The bound.
        max: u128,
    },
    /// The peer speaks another protocol version.
    #[error("peer {peer}: PSI protocol version {got}, this node speaks version {expected}")]
    VersionMismatch {
        /// Peer name.
        peer: String,
        /// Our version.
        expected: u16,
        /// Theirs.
        got: u16,
    },
    /// A point from the peer does not decode to a Ristretto255 group element.
    #[error(
        "peer {peer}: {what} batch {batch}, element {index} is not a valid Ristretto255 point"
    )]
    InvalidPoint {
        /// Peer name.
        peer: String,
        /// Which stream.
        what: &'static str,
        /// Batch number.
        batch: u32,
        /// Element index within the batch.
        index: usize,
    },
    /// A batch with the wrong number of elements.
    #[error("peer {peer}: {what} batch {batch} has {got} elements, expected {expected}")]
    WrongCount {
        /// Peer name.
        peer: String,
        /// Which stream.
        what: &'static str,
        /// Batch number.
        batch: u32,
        /// Expected element count.
        expected: u64,
        /// Received element count.
        got: u64,
    },
    /// A batch number past the end of the stream.
    #[error("peer {peer}: {what} batch {batch} does not exist (the stream has {batches} batches)")]
    BatchOutOfRange {
        /// Peer name.
        peer: String,
        /// Which stream.
        what: &'static str,
        /// Batch number received.
        batch: u32,
        /// Number of batches in the stream.
        batches: u32,
    },
    /// A field of a peer message has an impossible value.
    #[error("peer {peer}: field `{field}` is invalid: {reason}")]
    InvalidField {
        /// Peer name.
        peer: String,
        /// Field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A message that the protocol does not allow at this point.
    #[error("peer {peer}: unexpected {what}")]
    UnexpectedMessage {
        /// Peer name.
        peer: String,
        /// What arrived.
        what: &'static str,
    },
    /// The run ended before every message arrived: `finish` was called before every batch
    /// from every host, or (in the in-memory driver) a host got no alignment.
    #[error("the PSI run is incomplete: {missing}")]
    Incomplete {
        /// What is still missing.
        missing: String,
    },
    /// No id is common to all parties.
    #[error("the intersection is empty: no id is held by every party")]
    EmptyIntersection,
    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed: {0}")]
    Randomness(String),
    /// A [`crate::PartSource`] could not give a part of the party's own ids (the parts a
    /// node keeps on disk), with why.
    #[error("part {part} of this party's ids cannot be read: {reason}")]
    PartUnreadable {
        /// The part.
        part: u32,
        /// Why.
        reason: String,
    },
}

fn describe_duplicates(count: u64, examples: &[DuplicateId]) -> String {
    let mut text = format!(
        "{count} row{} repeat an id of an earlier row",
        if count == 1 { "" } else { "s" }
    );
    if !examples.is_empty() {
        text.push_str(" (first: ");
        for (i, dup) in examples.iter().enumerate() {
            if i > 0 {
                text.push_str("; ");
            }
            text.push_str(&format!(
                "{:?} at rows {} and {}",
                dup.id, dup.first_row, dup.repeated_row
            ));
        }
        text.push(')');
    }
    text.push_str("; remove them, or choose the policy that keeps the first row of each id");
    text
}

/// Peer-facing name of a stream, for error messages.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stream {
    GuestPoints,
    HostPoints,
    GuestTags,
}

impl Stream {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Stream::GuestPoints => "guest-points",
            Stream::HostPoints => "host-points",
            Stream::GuestTags => "guest-tags",
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
