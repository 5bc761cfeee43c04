//! One batch's group operations as a self-contained unit, so that a party can hand them to its
//! own workers (`unseen worker`) and keep only the protocol state.
//!
//! A [`Work`] carries the party's blinding key for one part and either the ids of one of its
//! batches (hash to the group and blind) or a peer's points (blind again, then tag). It never
//! leaves the party: the node sends it only to workers that authenticate with this party's
//! certificates. The key in a `Work` and in its bytes is zeroised when they are dropped
//! (copies a transport makes are not). The node checks that an answer fits its work
//! ([`Work::accept`]: kind, count, one element recomputed) and otherwise runs the work itself.
#![forbid(unsafe_code)]

use curve25519_dalek::scalar::Scalar;
use zeroize::Zeroizing;

use crate::crypto::{blind_ids, reblind_to_tags, BlindingKey, JobSalt, Tag, WirePoint, POINT_LEN};
use crate::error::{PsiError, Stream};
use crate::ids::MAX_ID_LEN;
use crate::message::{PointBatch, MAX_BATCH_SIZE, PROTOCOL_VERSION};

/// Format of [`Work::to_bytes`] and [`WorkOutput::to_bytes`]; a worker of another release
/// refuses the work instead of computing something else.
const FORMAT: u8 = 1;
/// Format byte, PSI protocol version, kind (then the key).
const HEADER: usize = 4;
const BLIND: u8 = 1;
const REBLIND: u8 = 2;
const POINTS: u8 = 1;
const TAGS: u8 = 2;
const INVALID_POINT: u8 = 3;

/// The multiplications of one batch, with the key they need.
pub struct Work {
    key: BlindingKey,
    op: Op,
}

enum Op {
    /// key·H(salt, id) for each id (packed, `ends[i]` the end of id `i`).
    Blind {
        salt: JobSalt,
        ids: Vec<u8>,
        ends: Vec<u32>,
    },
    /// The tag of key·P for each of a peer's points.
    Reblind { points: Vec<WirePoint> },
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.op {
            Op::Blind { .. } => "blind",
            Op::Reblind { .. } => "reblind",
        };
        f.debug_struct("Work")
            .field("kind", &kind)
            .field("elements", &self.len())
            .finish_non_exhaustive()
    }
}

/// What a [`Work`] computes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkOutput {
    /// Blinded points, one per id, in order.
    Points(Vec<WirePoint>),
    /// Tags, one per point, in order.
    Tags(Vec<Tag>),
    /// The element at this index is not a valid point (the peer's fault).
    InvalidPoint(usize),
}

impl Work {
    pub(crate) fn blind<'a>(
        key: &BlindingKey,
        salt: JobSalt,
        ids: impl ExactSizeIterator<Item = &'a [u8]>,
    ) -> Work {
        let mut ends = Vec::with_capacity(ids.len());
        let mut packed = Vec::new();
        for id in ids {
            packed.extend_from_slice(id);
            ends.push(packed.len() as u32);
        }
        Work {
            key: key.copy(),
            op: Op::Blind {
                salt,
                ids: packed,
                ends,
            },
        }
    }

    pub(crate) fn reblind(key: &BlindingKey, points: Vec<WirePoint>) -> Work {
        Work {
            key: key.copy(),
            op: Op::Reblind { points },
        }
    }

    /// Number of elements (ids or points).
    pub fn len(&self) -> usize {
        match &self.op {
            Op::Blind { ends, .. } => ends.len(),
            Op::Reblind { points } => points.len(),
        }
    }

    /// True when there is nothing to compute.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Computes it on this process's rayon pool.
    pub fn run(&self) -> WorkOutput {
        match &self.op {
            Op::Blind { salt, ids, ends } => {
                let id = |i: usize| {
                    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
                    &ids[start..ends[i] as usize]
                };
                WorkOutput::Points(blind_ids(&self.key, salt, ends.len(), id))
            }
            Op::Reblind { points } => match reblind_to_tags(&self.key, points) {
                Ok(tags) => WorkOutput::Tags(tags),
                Err(index) => WorkOutput::InvalidPoint(index),
            },
        }
    }

    /// The length of [`Work::to_bytes`].
    pub fn wire_len(&self) -> usize {
        HEADER
            + 32
            + match &self.op {
                Op::Blind { ids, ends, .. } => 32 + 4 + 2 * ends.len() + ids.len(),
                Op::Reblind { points } => 4 + POINT_LEN * points.len(),
            }
    }

    /// The most bytes its output takes (points are the larger elements).
    pub fn output_len(&self) -> usize {
        1 + 1 + 4 + POINT_LEN * self.len()
    }

    /// The bytes a worker receives. They hold the key, and are allocated once at their exact
    /// length and zeroised on drop (copies a transport makes of them are not).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(self.wire_len()));
        out.push(FORMAT);
        out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        match &self.op {
            Op::Blind { salt, ids, ends } => {
                out.push(BLIND);
                out.extend_from_slice(self.key.half_bytes().as_slice());
                out.extend_from_slice(&salt.0);
                out.extend_from_slice(&(ends.len() as u32).to_le_bytes());
                let mut start = 0;
                for &end in ends {
                    let id = &ids[start..end as usize];
                    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
                    out.extend_from_slice(id);
                    start = end as usize;
                }
            }
            Op::Reblind { points } => {
                out.push(REBLIND);
                out.extend_from_slice(self.key.half_bytes().as_slice());
                put_elements(&mut out, points);
            }
        }
        debug_assert_eq!(out.len(), self.wire_len());
        out
    }

    /// A work from its bytes, as a worker receives it; refuses anything malformed (another
    /// format or PSI protocol version, a key that is not a canonical non-zero scalar, more
    /// than a batch of elements, ids longer than [`MAX_ID_LEN`], trailing bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Work, PsiError> {
        let bad = |reason: &str| PsiError::InvalidConfig {
            field: "work",
            reason: reason.to_owned(),
        };
        let mut reader = Reader(bytes);
        if reader.take(1) != Some(&[FORMAT][..])
            || reader.array() != Some(PROTOCOL_VERSION.to_le_bytes())
        {
            return Err(bad(
                "not work of this release's format and PSI protocol version",
            ));
        }
        let kind = reader.take(1).ok_or_else(|| bad("truncated"))?[0];
        let half: [u8; 32] = reader.array().ok_or_else(|| bad("truncated key"))?;
        let half = Zeroizing::new(half);
        let half = Option::<Scalar>::from(Scalar::from_canonical_bytes(*half))
            .filter(|s| *s != Scalar::ZERO)
            .ok_or_else(|| bad("the key is not a non-zero scalar"))?;
        let key = BlindingKey::from_half(half);
        let op = match kind {
            BLIND => {
                let salt = JobSalt(reader.array().ok_or_else(|| bad("truncated salt"))?);
                let count = reader.count().ok_or_else(|| bad("bad element count"))?;
                let mut ids = Vec::new();
                let mut ends = Vec::with_capacity(count);
                for _ in 0..count {
                    let len: [u8; 2] = reader.array().ok_or_else(|| bad("truncated id"))?;
                    let len = usize::from(u16::from_le_bytes(len));
                    if len > MAX_ID_LEN {
                        return Err(bad("an id is longer than ids may be"));
                    }
                    ids.extend_from_slice(reader.take(len).ok_or_else(|| bad("truncated id"))?);
                    ends.push(ids.len() as u32);
                }
                Op::Blind { salt, ids, ends }
            }
            REBLIND => {
                let count = reader.count().ok_or_else(|| bad("bad element count"))?;
                let points = (reader.elements(count)).ok_or_else(|| bad("truncated points"))?;
                Op::Reblind { points }
            }
            _ => return Err(bad("unknown kind of work")),
        };
        if !reader.0.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Work { key, op })
    }

    /// A worker's answer, if it is an output of this work: the right kind and count, one
    /// element chosen at random recomputed here and equal (a worker of another release, or a
    /// broken one, is caught at the cost of one element per unit), and an invalid point
    /// claimed only for a point that is invalid (a worker cannot make the node blame an honest
    /// peer). `None` otherwise, and the caller runs the work itself.
    pub fn accept(&self, bytes: &[u8]) -> Option<WorkOutput> {
        let output = WorkOutput::from_bytes(bytes)?;
        let checked = |count: usize, check: &dyn Fn(usize) -> bool| {
            count == self.len() && (count == 0 || check(rand::random_range(0..count)))
        };
        let fits = match (&self.op, &output) {
            (Op::Blind { salt, ids, ends }, WorkOutput::Points(points)) => {
                checked(points.len(), &|i| {
                    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
                    let id = &ids[start..ends[i] as usize];
                    blind_ids(&self.key, salt, 1, |_| id) == [points[i]]
                })
            }
            (Op::Reblind { points }, WorkOutput::Tags(tags)) => checked(tags.len(), &|i| {
                reblind_to_tags(&self.key, &points[i..=i]) == Ok(vec![tags[i]])
            }),
            (Op::Reblind { points }, WorkOutput::InvalidPoint(index)) => points
                .get(*index)
                .is_some_and(|point| reblind_to_tags(&self.key, &[*point]).is_err()),
            _ => false,
        };
        fits.then_some(output)
    }
}

impl WorkOutput {
    /// The bytes a worker sends back.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![FORMAT];
        match self {
            WorkOutput::Points(points) => {
                out.push(POINTS);
                put_elements(&mut out, points);
            }
            WorkOutput::Tags(tags) => {
                out.push(TAGS);
                put_elements(&mut out, tags);
            }
            WorkOutput::InvalidPoint(index) => {
                out.push(INVALID_POINT);
                out.extend_from_slice(&(*index as u32).to_le_bytes());
            }
        }
        out
    }

    /// The batch of points this output is (the output of a blinding work).
    pub fn into_points(self, batch: u32) -> Result<PointBatch, PsiError> {
        match self {
            WorkOutput::Points(points) => Ok(PointBatch {
                version: PROTOCOL_VERSION,
                batch,
                points,
            }),
            _ => Err(PsiError::InvalidConfig {
                field: "work",
                reason: "the output of another kind of work".into(),
            }),
        }
    }

    /// The tags of `peer`'s batch `batch` of `stream` (the output of a re-blinding work).
    pub(crate) fn into_tags(
        self,
        peer: &str,
        stream: Stream,
        batch: u32,
    ) -> Result<Vec<Tag>, PsiError> {
        match self {
            WorkOutput::Tags(tags) => Ok(tags),
            WorkOutput::InvalidPoint(index) => Err(PsiError::InvalidPoint {
                peer: peer.to_owned(),
                what: stream.name(),
                batch,
                index,
            }),
            WorkOutput::Points(_) => Err(PsiError::InvalidConfig {
                field: "work",
                reason: "the output of another kind of work".into(),
            }),
        }
    }

    fn from_bytes(bytes: &[u8]) -> Option<WorkOutput> {
        let mut reader = Reader(bytes);
        if reader.take(1)? != [FORMAT] {
            return None;
        }
        let output = match reader.take(1)?[0] {
            POINTS => {
                let count = reader.count()?;
                WorkOutput::Points(reader.elements(count)?)
            }
            TAGS => {
                let count = reader.count()?;
                WorkOutput::Tags(reader.elements(count)?)
            }
            INVALID_POINT => WorkOutput::InvalidPoint(u32::from_le_bytes(reader.array()?) as usize),
            _ => return None,
        };
        reader.0.is_empty().then_some(output)
    }
}

/// Writes `elements` as their count (u32, little-endian) and their bytes.
fn put_elements<const N: usize>(out: &mut Vec<u8>, elements: &[[u8; N]]) {
    out.extend_from_slice(&(elements.len() as u32).to_le_bytes());
    elements.iter().for_each(|e| out.extend_from_slice(e));
}

/// Reads fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).map(|b| b.try_into().expect("N bytes"))
    }

    /// `count` elements of `N` bytes each.
    fn elements<const N: usize>(&mut self, count: usize) -> Option<Vec<[u8; N]>> {
        (0..count).map(|_| self.array()).collect()
    }

    /// An element count of at most one batch.
    fn count(&mut self) -> Option<usize> {
        let count = u32::from_le_bytes(self.array()?);
        (count <= MAX_BATCH_SIZE).then_some(count as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_work_is_refused() {
        let key = BlindingKey::from_half(Scalar::from(7u64));
        let ids = ["a".as_bytes(), "bc".as_bytes()];
        let good = Work::blind(&key, JobSalt([1; 32]), ids.into_iter()).to_bytes();
        assert!(Work::from_bytes(&good).is_ok());
        for cut in 0..good.len() {
            assert!(Work::from_bytes(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = good.to_vec();
        trailing.push(0);
        assert!(Work::from_bytes(&trailing).is_err());
        let mut other_format = good.to_vec();
        other_format[0] = FORMAT + 1;
        assert!(Work::from_bytes(&other_format).is_err());
        let mut other_version = good.to_vec();
        other_version[1] ^= 1;
        assert!(Work::from_bytes(&other_version).is_err());
        assert_eq!(good.len(), Work::from_bytes(&good).unwrap().wire_len());
        let mut zero_key = good.to_vec();
        zero_key[4..36].fill(0);
        assert!(Work::from_bytes(&zero_key).is_err());
        let mut big_key = good.to_vec();
        big_key[4..36].fill(0xff);
        assert!(Work::from_bytes(&big_key).is_err());
        let reblind = Work::reblind(&key, vec![[9; POINT_LEN]; 3]);
        let mut too_many = reblind.to_bytes().to_vec();
        too_many[36..40].copy_from_slice(&(MAX_BATCH_SIZE + 1).to_le_bytes());
        assert!(Work::from_bytes(&too_many).is_err());
        // Points that do not decode are named by index, not a failure of the work.
        let output = Work::from_bytes(&reblind.to_bytes()).unwrap().run();
        assert_eq!(output, WorkOutput::InvalidPoint(0));
        assert_eq!(reblind.accept(&output.to_bytes()), Some(output));
    }
}
