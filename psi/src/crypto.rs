//! The group operations: hashing ids to Ristretto255, blinding, re-blinding and tags.
//!
//! Every blinding multiplies by `k/2` and then uses `double_and_compress_batch`, which encodes
//! `2·(k/2)·P = k·P` for a whole batch with one field inversion instead of one inverse square
//! root per point. That keeps the cost per element close to the bare scalar multiplication.

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use rayon::prelude::*;
use sha2::{Digest, Sha256, Sha512};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::PsiError;

/// Domain separator of the hash from ids to group elements.
const HASH_TO_POINT_DOMAIN: &[u8] = b"unseen/psi/v1/hash-to-ristretto255";
/// Domain separator of the hash from double-blinded points to tags.
const TAG_DOMAIN: &[u8] = b"unseen/psi/v1/tag";

/// Bytes of a compressed Ristretto255 point.
pub const POINT_LEN: usize = 32;
/// Bytes of a truncated final value. 96 bits keep the chance of any false match below 2^-40 while
/// `guest_rows · host_rows ≤ 2^56` (e.g. 2.6·10^8 × 2.6·10^8); larger sets are refused.
pub const TAG_LEN: usize = 12;

/// Points processed per parallel task; each task pays one batched field inversion.
const CHUNK: usize = 256;

/// A compressed point as it crosses the wire.
pub type WirePoint = [u8; POINT_LEN];
/// A truncated double-blinded value as it crosses the wire.
pub type Tag = [u8; TAG_LEN];

/// A per-job random salt mixed into the id hash, so that tags of one job cannot be linked to
/// tags of another. The guest draws it and sends it in its hello.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct JobSalt(pub [u8; 32]);

impl JobSalt {
    /// A fresh salt from the operating system's random number generator.
    pub fn random() -> Result<Self, PsiError> {
        let mut salt = [0u8; 32];
        getrandom_fill(&mut salt)?;
        Ok(JobSalt(salt))
    }
}

impl std::fmt::Debug for JobSalt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JobSalt(")?;
        for byte in &self.0[..4] {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "…)")
    }
}

fn getrandom_fill(bytes: &mut [u8]) -> Result<(), PsiError> {
    use rand::TryRng;
    rand::rngs::SysRng
        .try_fill_bytes(bytes)
        .map_err(|e| PsiError::Randomness(e.to_string()))
}

/// A party's secret exponent for one job. Only `k/2` is kept (see the module doc); it is
/// zeroised on drop and never printed.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct BlindingKey {
    half: Scalar,
}

impl std::fmt::Debug for BlindingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlindingKey(<secret>)")
    }
}

impl BlindingKey {
    /// A fresh uniformly random non-zero key from the operating system.
    pub(crate) fn random() -> Result<Self, PsiError> {
        loop {
            let mut wide = [0u8; 64];
            getrandom_fill(&mut wide)?;
            let mut key = Scalar::from_bytes_mod_order_wide(&wide);
            wide.zeroize();
            if key != Scalar::ZERO {
                let blinding = BlindingKey::from_scalar(&key);
                key.zeroize();
                return Ok(blinding);
            }
        }
    }

    pub(crate) fn from_scalar(key: &Scalar) -> Self {
        BlindingKey {
            half: key.div_by_2(),
        }
    }
}

/// The hash-to-group map of RFC 9496 (section 4.3.4, two Elligator images added), tested
/// against the RFC's vectors in `vectors/rfc9496.txt`.
fn map_to_group(uniform: &[u8; 64]) -> RistrettoPoint {
    RistrettoPoint::from_uniform_bytes(uniform)
}

/// H(salt, id): SHA-512 over a length-prefixed, domain-separated encoding, mapped to the group
/// with [`map_to_group`].
pub(crate) fn hash_to_point(salt: &JobSalt, id: &[u8]) -> RistrettoPoint {
    let digest = Sha512::new()
        .chain_update(HASH_TO_POINT_DOMAIN)
        .chain_update(salt.0)
        .chain_update((id.len() as u64).to_le_bytes())
        .chain_update(id)
        .finalize();
    let mut uniform = [0u8; 64];
    uniform.copy_from_slice(&digest);
    map_to_group(&uniform)
}

/// The tag of a compressed double-blinded point: SHA-256 (hardware-accelerated where the CPU
/// has SHA extensions) truncated to [`TAG_LEN`] bytes.
pub(crate) fn tag_of(point: &CompressedRistretto) -> Tag {
    let digest = Sha256::new()
        .chain_update(TAG_DOMAIN)
        .chain_update(point.as_bytes())
        .finalize();
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&digest[..TAG_LEN]);
    tag
}

/// key·H(salt, id) for each id yielded by `id_at(0..count)`, compressed, in order.
pub(crate) fn blind_ids<'a, F>(
    key: &BlindingKey,
    salt: &JobSalt,
    count: usize,
    id_at: F,
) -> Vec<WirePoint>
where
    F: Fn(usize) -> &'a [u8] + Sync,
{
    let starts: Vec<usize> = (0..count).step_by(CHUNK).collect();
    starts
        .into_par_iter()
        .flat_map_iter(|start| {
            let end = (start + CHUNK).min(count);
            let halves: Vec<RistrettoPoint> = (start..end)
                .map(|i| hash_to_point(salt, id_at(i)) * key.half)
                .collect();
            RistrettoPoint::double_and_compress_batch(&halves)
                .into_iter()
                .map(|c| c.to_bytes())
        })
        .collect()
}

/// key·P for each received point, compressed, in order; `Err(index)` names the first element
/// that is not a valid encoding.
pub(crate) fn reblind_points(
    key: &BlindingKey,
    points: &[WirePoint],
) -> Result<Vec<CompressedRistretto>, usize> {
    let chunks: Vec<Result<Vec<CompressedRistretto>, usize>> = points
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(chunk, encoded)| {
            let mut halves = Vec::with_capacity(encoded.len());
            for (i, bytes) in encoded.iter().enumerate() {
                let point = CompressedRistretto(*bytes)
                    .decompress()
                    .ok_or(chunk * CHUNK + i)?;
                halves.push(point * key.half);
            }
            Ok(RistrettoPoint::double_and_compress_batch(&halves))
        })
        .collect();
    let mut out = Vec::with_capacity(points.len());
    for chunk in chunks {
        out.extend(chunk?);
    }
    Ok(out)
}

/// Tags of key·P for each received point, in order.
pub(crate) fn reblind_to_tags(key: &BlindingKey, points: &[WirePoint]) -> Result<Vec<Tag>, usize> {
    let compressed = reblind_points(key, points)?;
    Ok(compressed.par_iter().map(tag_of).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(label: &str) -> BlindingKey {
        BlindingKey::from_scalar(&Scalar::hash_from_bytes::<Sha512>(label.as_bytes()))
    }

    #[test]
    fn double_blinding_commutes_and_matches_the_product_key() {
        let salt = JobSalt([7; 32]);
        let (a, b) = (
            Scalar::hash_from_bytes::<Sha512>(b"a"),
            Scalar::hash_from_bytes::<Sha512>(b"b"),
        );
        let (ka, kb) = (BlindingKey::from_scalar(&a), BlindingKey::from_scalar(&b));
        let ids: Vec<String> = (0..1500).map(|i| format!("customer-{i}")).collect();
        let blinded_a = blind_ids(&ka, &salt, ids.len(), |i| ids[i].as_bytes());
        let blinded_b = blind_ids(&kb, &salt, ids.len(), |i| ids[i].as_bytes());
        let ab = reblind_to_tags(&kb, &blinded_a).unwrap();
        let ba = reblind_to_tags(&ka, &blinded_b).unwrap();
        assert_eq!(ab, ba);
        // Independent path: one multiplication by a·b, plain compression, no batching tricks.
        for (i, id) in ids.iter().enumerate().step_by(97) {
            let direct = (hash_to_point(&salt, id.as_bytes()) * (a * b)).compress();
            assert_eq!(ab[i], tag_of(&direct));
            let single = (hash_to_point(&salt, id.as_bytes()) * a).compress();
            assert_eq!(blinded_a[i], single.to_bytes());
        }
    }

    #[test]
    fn the_salt_and_the_length_prefix_separate_inputs() {
        let (s1, s2) = (JobSalt([1; 32]), JobSalt([2; 32]));
        assert_ne!(hash_to_point(&s1, b"x"), hash_to_point(&s2, b"x"));
        assert_ne!(hash_to_point(&s1, b"x"), hash_to_point(&s1, b"x\0"));
    }

    #[test]
    fn invalid_points_are_located() {
        let salt = JobSalt([3; 32]);
        let k = key("k");
        let mut points = blind_ids(&k, &salt, 1200, |_| b"same".as_slice());
        // Not a canonical field element (all bits set): fails to decompress.
        points[700] = [0xff; 32];
        assert_eq!(reblind_to_tags(&k, &points), Err(700));
    }

    #[test]
    fn keys_are_not_printed() {
        assert_eq!(format!("{:?}", key("k")), "BlindingKey(<secret>)");
    }

    /// RFC 9496's vectors: small multiples of the generator and the hash-to-group map
    /// (including non-canonical and high-bit inputs).
    #[test]
    fn rfc_9496_vectors() {
        let (mut multiples, mut maps) = (0, 0);
        let mut multiple = RistrettoPoint::default();
        for line in include_str!("../vectors/rfc9496.txt").lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                ["multiple", _, encoding] => {
                    assert_eq!(hex::encode(multiple.compress().as_bytes()), *encoding);
                    multiple += curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
                    multiples += 1;
                }
                ["map", uniform, encoding] => {
                    let uniform: [u8; 64] = hex::decode(uniform).unwrap().try_into().unwrap();
                    let point = map_to_group(&uniform).compress();
                    assert_eq!(hex::encode(point.as_bytes()), *encoding);
                    maps += 1;
                }
                _ => assert!(line.starts_with('#'), "{line}"),
            }
        }
        assert_eq!((multiples, maps), (4, 11));
    }

    /// Known answers: fixed salt, secrets and ids → fixed outputs, recomputed independently by
    /// `vectors/known_answers.py` (pure Python ristretto255). A change here breaks
    /// interoperability between nodes of different versions and must bump the protocol version.
    #[test]
    fn known_answers() {
        let salt = JobSalt(*b"unseen known-answer test salt 01");
        let (ka, kb) = (key("known-answer guest"), key("known-answer host"));
        let ids = ["91350100MA2XNAB43K", "customer-0001", "é"];
        let single = blind_ids(&ka, &salt, ids.len(), |i| ids[i].as_bytes());
        let tags = reblind_to_tags(&kb, &single).unwrap();
        let single_hex: Vec<String> = single.iter().map(hex::encode).collect();
        let tags_hex: Vec<String> = tags.iter().map(hex::encode).collect();
        assert_eq!(single_hex, KNOWN_SINGLE);
        assert_eq!(tags_hex, KNOWN_TAGS);
    }

    const KNOWN_SINGLE: [&str; 3] = [
        "6a46ed1adc1cd779b677f69d526730b3719397443f8de9491ded0f50ee7a8344",
        "68cd71cd8d5e94fa902504788fc9077a74c3a5b434ff10e8dddc34bdb1293061",
        "b80a0a252ea94a9d4ed2e4504647e60dfe36fdfb1b132bfdc8db83aaca73ac1f",
    ];
    const KNOWN_TAGS: [&str; 3] = [
        "104ad2ed575c37509a4a8278",
        "b3c9cb2e75eeb38413b537fe",
        "b5f726c2f988ef8804652efe",
    ];
}
