//! The messages of the protocol. The caller moves them; `node` maps them to protobuf.
#![forbid(unsafe_code)]

use crate::crypto::{JobSalt, PartitionKey, Tag, WirePoint, POINT_LEN, TAG_LEN};
use crate::error::PsiError;

/// Version of the PSI protocol spoken by this crate; every message carries it.
pub const PROTOCOL_VERSION: u16 = 2;

/// Default number of elements per batch message (2 MiB of points).
pub const DEFAULT_BATCH_SIZE: u32 = 1 << 16;
/// Most parts a partitioned run may have.
pub const MAX_PARTITIONS: u32 = 1 << 16;

/// Largest batch a peer may announce (32 MiB of points), bounding each message's memory.
pub const MAX_BATCH_SIZE: u32 = 1 << 20;

/// Who learns the intersection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResultMode {
    /// Only the guest learns it; hosts learn the guest's set size and nothing else.
    ReceiverOnly,
    /// Every party learns the final intersection, as its own row indices in the guest's order
    /// (what vertical training needs).
    #[default]
    BothSides,
}

/// Guest → each host: opens a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestHello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// Per-job salt of the id hash.
    pub salt: JobSalt,
    /// Number of distinct ids the guest brings.
    pub guest_rows: u64,
    /// Elements per batch, for both directions.
    pub batch_size: u32,
    /// Who learns the result.
    pub result: ResultMode,
}

/// Guest → each host, before any session of a partitioned run: the key that assigns ids to
/// parts and the guest's number of distinct ids in each part (their count is the number of
/// parts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionPlan {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// Key of the hash from ids to parts.
    pub key: PartitionKey,
    /// Distinct guest ids per part.
    pub guest_sizes: Vec<u64>,
}

/// Host → guest: the host's number of distinct ids in each part of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionSizes {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// Distinct host ids per part.
    pub host_sizes: Vec<u64>,
    /// Parts this host finished in an earlier run under the same plan (ascending): a job
    /// that aligns again after an interruption need not run them again.
    pub finished: Vec<u32>,
}

/// Guest → each host: the parts of the intersection, ascending (those where every party holds
/// ids); one session runs on each that is not `finished`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionSchedule {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// Part numbers.
    pub partitions: Vec<u32>,
    /// The scheduled parts every party finished in an earlier run under the same plan
    /// (ascending): each party takes its kept result, no session runs on them.
    pub finished: Vec<u32>,
}

/// Host → guest: accepts a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostHello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// Number of distinct ids the host brings.
    pub host_rows: u64,
}

/// Blinded points of one batch: the guest's (to every host) or a host's (to the guest).
/// Both sides shuffle before blinding, so positions say nothing about row order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointBatch {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// Batch number, from 0.
    pub batch: u32,
    /// Compressed points, `batch_size` of them except in the last batch.
    pub points: Vec<WirePoint>,
}

/// Host → guest: tags of the guest's points of one batch after the host's blinding, in the
/// order the guest sent them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagBatch {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// Batch number the tags answer.
    pub batch: u32,
    /// One tag per point of that batch.
    pub tags: Vec<Tag>,
}

/// Guest → host (both-sides mode): the final intersection as positions in the host's sent
/// order, listed in the guest's row order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alignment {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// Position (in the host's sent order) of each aligned row.
    pub positions: Vec<u32>,
}

/// Concatenates points for a protobuf `bytes` field.
pub fn points_to_bytes(points: &[WirePoint]) -> Vec<u8> {
    points.concat()
}

/// Splits a `bytes` field into points; the length must be a multiple of 32.
pub fn points_from_bytes(peer: &str, bytes: &[u8]) -> Result<Vec<WirePoint>, PsiError> {
    split_fixed::<POINT_LEN>(peer, "points", bytes)
}

/// Concatenates tags for a protobuf `bytes` field.
pub fn tags_to_bytes(tags: &[Tag]) -> Vec<u8> {
    tags.concat()
}

/// Splits a `bytes` field into tags; the length must be a multiple of 12.
pub fn tags_from_bytes(peer: &str, bytes: &[u8]) -> Result<Vec<Tag>, PsiError> {
    split_fixed::<TAG_LEN>(peer, "tags", bytes)
}

/// An alignment's positions as bytes (u32 each, little-endian), their wire form.
pub fn alignment_to_bytes(positions: &[u32]) -> Vec<u8> {
    positions.iter().flat_map(|p| p.to_le_bytes()).collect()
}

/// Reads [`alignment_to_bytes`]; the length must be a multiple of 4.
pub fn alignment_from_bytes(peer: &str, bytes: &[u8]) -> Result<Vec<u32>, PsiError> {
    Ok(split_fixed::<4>(peer, "positions", bytes)?
        .into_iter()
        .map(u32::from_le_bytes)
        .collect())
}

/// Part sizes (a plan's or a host's) as bytes: u64 each, little-endian.
pub fn sizes_to_bytes(sizes: &[u64]) -> Vec<u8> {
    sizes.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// Part sizes from `peer`'s bytes; at most [`MAX_PARTITIONS`] of them, checked before any
/// allocation.
pub fn sizes_from_bytes(
    peer: &str,
    field: &'static str,
    bytes: &[u8],
) -> Result<Vec<u64>, PsiError> {
    check_part_count(peer, field, bytes.len() / 8)?;
    Ok(split_fixed::<8>(peer, field, bytes)?
        .into_iter()
        .map(u64::from_le_bytes)
        .collect())
}

/// Part numbers of a schedule as bytes: u32 each, little-endian.
pub fn parts_to_bytes(parts: &[u32]) -> Vec<u8> {
    parts.iter().flat_map(|p| p.to_le_bytes()).collect()
}

/// Part numbers from `peer`'s bytes; at most [`MAX_PARTITIONS`] of them, checked before any
/// allocation.
pub fn parts_from_bytes(
    peer: &str,
    field: &'static str,
    bytes: &[u8],
) -> Result<Vec<u32>, PsiError> {
    check_part_count(peer, field, bytes.len() / 4)?;
    Ok(split_fixed::<4>(peer, field, bytes)?
        .into_iter()
        .map(u32::from_le_bytes)
        .collect())
}

fn check_part_count(peer: &str, field: &'static str, count: usize) -> Result<(), PsiError> {
    if count > MAX_PARTITIONS as usize {
        return Err(PsiError::InvalidField {
            peer: peer.to_owned(),
            field,
            reason: format!("{count} parts is more than {MAX_PARTITIONS}"),
        });
    }
    Ok(())
}

fn split_fixed<const N: usize>(
    peer: &str,
    field: &'static str,
    bytes: &[u8],
) -> Result<Vec<[u8; N]>, PsiError> {
    if !bytes.len().is_multiple_of(N) {
        return Err(PsiError::InvalidField {
            peer: peer.to_owned(),
            field,
            reason: format!("{} bytes is not a multiple of {N}", bytes.len()),
        });
    }
    Ok(bytes
        .chunks_exact(N)
        .map(|chunk| {
            let mut item = [0u8; N];
            item.copy_from_slice(chunk);
            item
        })
        .collect())
}

pub(crate) fn check_version(peer: &str, got: u16) -> Result<(), PsiError> {
    if got == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(PsiError::VersionMismatch {
            peer: peer.to_owned(),
            expected: PROTOCOL_VERSION,
            got,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer's part arrays are refused by length before anything is allocated for them.
    #[test]
    fn part_arrays_round_trip_and_are_capped() {
        let sizes = vec![0, 7, u64::MAX];
        assert_eq!(
            sizes_from_bytes("tax", "host_sizes", &sizes_to_bytes(&sizes)),
            Ok(sizes)
        );
        let parts = vec![0, 3, MAX_PARTITIONS - 1];
        assert_eq!(
            parts_from_bytes("bank", "partitions", &parts_to_bytes(&parts)),
            Ok(parts)
        );
        let too_many = vec![0u8; (MAX_PARTITIONS as usize + 1) * 8];
        assert!(matches!(
            sizes_from_bytes("tax", "host_sizes", &too_many),
            Err(PsiError::InvalidField {
                field: "host_sizes",
                ..
            })
        ));
        assert!(matches!(
            parts_from_bytes(
                "bank",
                "partitions",
                &too_many[..(MAX_PARTITIONS as usize + 1) * 4]
            ),
            Err(PsiError::InvalidField {
                field: "partitions",
                ..
            })
        ));
        assert!(sizes_from_bytes("tax", "host_sizes", &[0; 9]).is_err());
    }

    #[test]
    fn flat_bytes_round_trip_and_reject_ragged_lengths() {
        let points = vec![[1u8; 32], [2u8; 32]];
        let flat = points_to_bytes(&points);
        assert_eq!(points_from_bytes("tax", &flat).unwrap(), points);
        let err = points_from_bytes("tax", &flat[..63]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "peer tax: field `points` is invalid: 63 bytes is not a multiple of 32"
        );
        let tags = vec![[9u8; 12]];
        assert_eq!(tags_from_bytes("tax", &tags_to_bytes(&tags)).unwrap(), tags);
        assert!(tags_from_bytes("tax", &[0; 13]).is_err());
    }
}
