//! ECDH private set intersection over Ristretto255, sans-IO.
//!
//! A guest (the bank, which holds labels) and one or more hosts (tax bureau, utility company)
//! find the customer ids they all hold, so that later training reads row-aligned data, without
//! showing each other the ids outside the intersection.
//!
//! # Protocol
//!
//! Every party draws a fresh secret scalar per job (zeroised on drop). With H a hash from ids
//! to the group (SHA-512 over a domain tag, the job's random salt and the length-prefixed id,
//! then RFC 9496's `from_uniform_bytes`):
//!
//! 1. the guest sends its salt and set size; each host answers with its set size;
//! 2. the guest shuffles its rows and sends a·H(x) for every id, in batches, to every host;
//!    each host answers every batch with T(b·a·H(x)), in the same order, where T truncates a
//!    hash of the encoding to 12 bytes;
//! 3. each host shuffles its rows and sends b·H(y); the guest computes T(a·b·H(y));
//! 4. the guest matches tags: x is in the intersection with host k when T(ab_k·H(x)) equals
//!    some T(a·b_k·H(y)). It keeps the guest rows matched by every host, in the order of its
//!    shuffled stream — a fresh uniformly random order, not the order of its file;
//! 5. in [`ResultMode::BothSides`] the guest tells each host the positions (in that host's
//!    shuffled stream) of the final intersection in that order; the host maps them back to
//!    rows. Every party now holds its own row indices in one common order.
//!
//! [`PartitionedGuest`] and [`PartitionedHost`] run the same protocol once per part of a
//! keyed split of the ids (see [`PartitionedGuest`] for the flow and what the part sizes
//! disclose); the node always does.
//!
//! # What each party learns (semi-honest, non-colluding parties)
//!
//! - **Guest**: the final intersection; for every host k, which of its own rows host k holds
//!   (the pairwise intersections, inherent to running the pairwise protocol with each host);
//!   each host's set size.
//! - **Host**: the guest's set size, and in both-sides mode the final intersection (as its own
//!   rows, in a random order) — not the pairwise intersection with the guest. In
//!   receiver-only mode nothing else.
//! - Nobody learns anything about ids outside the intersection: under the decisional
//!   Diffie–Hellman assumption in Ristretto255 with H a random oracle, blinded values of
//!   non-matching ids are indistinguishable from random group elements.
//! - In a partitioned run (the node's), in addition: every party's number of ids per part, a
//!   histogram of its set under the run's key, and to each host which parts some other host
//!   lacks; the guest learns the pairwise intersections only within the parts that run (see
//!   [`PartitionedGuest`]).
//!
//! Tags are 96 bits; the probability of any false match is at most nA·nB·2^-96, which this
//! crate keeps below 2^-40 by refusing sets with nA·nB > 2^56 (in a partitioned run, with
//! Σ over parts of nA·nB > 2^56: ids are compared within their part only).
//!
//! # Cost and memory
//!
//! Each party performs one variable-base scalar multiplication per own id and one per peer
//! id. Blinding multiplies by k/2 and encodes k·P = 2·(k/2)·P with one batched inversion per
//! chunk instead of an inverse square root per point. On a CPU with AVX-512 IFMA (detected at
//! run time) eight ids or points go through hashing or decoding, the multiplication and the
//! encoding together, one limb of eight field elements per 512-bit register; elsewhere
//! curve25519-dalek computes one point at a time. Both give the same bytes ([`arithmetic`]
//! names the one in use). Work is parallel with rayon. No state holds points: the guest keeps 12 bytes per own id per host and 12 bytes
//! per host id; a host keeps 4 bytes per id beyond its id column; a message holds at most one
//! batch (2^16 elements by default).
//!
//! # Example
//!
//! ```
//! use psi::{run_in_memory, GuestConfig, HostInput, IdColumn, DuplicatePolicy};
//!
//! let bank = IdColumn::from_ids(["ent-1", "ent-2", "ent-3", "ent-4"])?;
//! let tax = IdColumn::from_ids(["ent-4", "ent-9", "ent-2"])?;
//! let hosts = vec![HostInput { name: "tax".into(), ids: tax, duplicates: DuplicatePolicy::Reject }];
//! let outcome = run_in_memory(bank, GuestConfig::default(), hosts, &mut |_| {})?;
//! // ent-2 and ent-4, in a random order that the bank and the tax bureau share:
//! let (bank_rows, tax_rows) = (&outcome.guest.aligned_rows, &outcome.hosts[0].as_ref().unwrap().aligned_rows);
//! let mut pairs: Vec<(u32, u32)> = bank_rows.iter().copied().zip(tax_rows.iter().copied()).collect();
//! pairs.sort_unstable();
//! assert_eq!(pairs, vec![(1, 2), (3, 0)]);
//! # Ok::<(), psi::PsiError>(())
//! ```
// Unsafe code lives in `ifma` alone (CPU-feature-gated arithmetic); every other module forbids it.
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod crypto;
mod driver;
mod error;
mod ids;
#[cfg(target_arch = "x86_64")]
mod ifma;
mod message;
mod partition;
mod session;
mod work;

pub use crypto::{arithmetic, JobSalt, PartitionKey, Tag, WirePoint, POINT_LEN, TAG_LEN};
pub use driver::{
    run_in_memory, run_in_memory_partitioned, HostInput, InMemoryOutcome, WireMessage, GUEST,
};
pub use error::{DuplicateId, PsiError};
pub use ids::{DuplicatePolicy, IdColumn, IdSource, MAX_ID_LEN, MAX_ROWS};
pub use message::{
    alignment_from_bytes, alignment_to_bytes, parts_from_bytes, parts_to_bytes, points_from_bytes,
    points_to_bytes, sizes_from_bytes, sizes_to_bytes, tags_from_bytes, tags_to_bytes, Alignment,
    GuestHello, HostHello, PartitionPlan, PartitionSchedule, PartitionSizes, PointBatch,
    ResultMode, TagBatch, DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE, MAX_PARTITIONS, PROTOCOL_VERSION,
};
pub use partition::{
    part_count, FinishedPart, PartIds, PartSource, PartitionedGuest, PartitionedHost, Split,
    DEFAULT_PARTITION_ROWS, MIN_PART_ROWS,
};
pub use session::{GuestConfig, GuestOutput, GuestResult, HostOutput, PsiGuest, PsiHost};
pub use work::{Work, WorkOutput};

/// Test hooks: the in-memory driver with messages altered, dropped or replayed in flight.
/// Not part of the supported interface.
#[doc(hidden)]
pub mod internal {
    pub use crate::crypto::{force_portable, multiplication_floor};
    pub use crate::driver::{run_in_memory_altered, Altered, InFlight};
}
