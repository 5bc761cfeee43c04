//! A keyed stream (SHA-256 in counter mode), the shared row order every party derives from the
//! guest's seed, and pairwise masks between hosts that cancel in a sum (secure aggregation).
//!
//! Pairwise seeds come from Ristretto255 Diffie–Hellman between hosts: host i sends g^(s_i),
//! host j sends g^(s_j); both hash g^(s_i·s_j) with the job nonce and the two names. The guest
//! never sees the seeds, so the masks hide every single host's value from it; the sum of all
//! hosts' masked values is exact.

use curve25519_dalek::traits::IsIdentity;
use curve25519_dalek::Scalar;
use curve25519_dalek::{constants::RISTRETTO_BASEPOINT_TABLE, ristretto::CompressedRistretto};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::FedError;

/// A deterministic stream of u64 keyed by 32 bytes and a context label.
pub(crate) struct Stream {
    prefix: Sha256,
    counter: u64,
    buffer: [u64; 4],
    used: usize,
}

impl Stream {
    pub(crate) fn new(key: &[u8; 32], context: &[u8]) -> Stream {
        let mut prefix = Sha256::new();
        prefix.update(b"unseen/fedlearn/stream/v1");
        prefix.update(key);
        prefix.update((context.len() as u64).to_le_bytes());
        prefix.update(context);
        Stream {
            prefix,
            counter: 0,
            buffer: [0; 4],
            used: 4,
        }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        if self.used == 4 {
            let mut block = self.prefix.clone();
            block.update(self.counter.to_le_bytes());
            self.counter += 1;
            let digest = block.finalize();
            for (i, word) in self.buffer.iter_mut().enumerate() {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&digest[8 * i..8 * i + 8]);
                *word = u64::from_le_bytes(bytes);
            }
            self.used = 0;
        }
        self.used += 1;
        self.buffer[self.used - 1]
    }

    /// Uniform in 0..bound (rejection sampling, no modulo bias).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % bound;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % bound;
            }
        }
    }
}

/// The seed the guest proposes, as a stream key.
pub(crate) fn seed_key(seed: u64) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key
}

/// The training and validation rows every party derives from the guest's seed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Split {
    pub(crate) train: Vec<usize>,
    pub(crate) validation: Vec<usize>,
}

impl Split {
    pub(crate) fn new(rows: usize, seed: u64, validation_fraction: f64) -> Split {
        let held_out = (rows as f64 * validation_fraction).round() as usize;
        let mut order = permutation(rows, seed, b"validation split");
        let validation = order.split_off(rows - held_out);
        let (mut train, mut validation) = (order, validation);
        train.sort_unstable();
        validation.sort_unstable();
        Split { train, validation }
    }
}

fn permutation(len: usize, seed: u64, context: &[u8]) -> Vec<usize> {
    let mut stream = Stream::new(&seed_key(seed), context);
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        let j = stream.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// Fills `bytes` from the operating system's random number generator.
pub(crate) fn random_bytes(bytes: &mut [u8]) -> Result<(), FedError> {
    use rand::TryRng;
    rand::rngs::SysRng
        .try_fill_bytes(bytes)
        .map_err(|e| FedError::Transport {
            peer: "operating system".into(),
            reason: format!("no randomness: {e}"),
        })
}

/// A host's Diffie–Hellman secret for pairwise mask seeds; zeroised on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct MaskSecret(Scalar);

impl MaskSecret {
    pub(crate) fn random() -> Result<MaskSecret, FedError> {
        let mut wide = [0u8; 64];
        random_bytes(&mut wide)?;
        let scalar = Scalar::from_bytes_mod_order_wide(&wide);
        wide.zeroize();
        Ok(MaskSecret(scalar))
    }

    pub(crate) fn public(&self) -> [u8; 32] {
        (&self.0 * RISTRETTO_BASEPOINT_TABLE).compress().to_bytes()
    }
}

/// Pairwise masks: for every pair of parties, a stream from their shared seed, added by the
/// party whose name sorts first and subtracted by the other, so that over any set of parties
/// that all apply them for the same context, the masks sum to 0.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct PairwiseMasks {
    /// (peer, shared seed, +1 or −1 as i8)
    #[zeroize(skip)]
    peers: Vec<String>,
    pairs: Vec<([u8; 32], i8)>,
}

impl PairwiseMasks {
    /// Derives the seeds with every peer from the peers' public shares.
    pub(crate) fn derive(
        job: &[u8; 16],
        me: &str,
        secret: &MaskSecret,
        peers: &[(String, [u8; 32])],
    ) -> Result<PairwiseMasks, FedError> {
        let mut pairs = Vec::with_capacity(peers.len());
        for (peer, share) in peers {
            // The identity would make the pair's seed public (the job nonce and the names).
            let point = CompressedRistretto(*share)
                .decompress()
                .filter(|p| !p.is_identity())
                .ok_or_else(|| FedError::protocol(peer, "mask key share is not a valid point"))?;
            let shared = (secret.0 * point).compress();
            let (first, second) = if me < peer.as_str() {
                (me, peer.as_str())
            } else {
                (peer.as_str(), me)
            };
            let mut hash = Sha256::new();
            hash.update(b"unseen/fedlearn/pairwise-seed/v2");
            hash.update(job);
            for name in [first, second] {
                hash.update((name.len() as u64).to_le_bytes());
                hash.update(name.as_bytes());
            }
            hash.update(shared.as_bytes());
            let seed: [u8; 32] = hash.finalize().into();
            pairs.push((seed, if me < peer.as_str() { 1 } else { -1 }));
        }
        Ok(PairwiseMasks {
            peers: peers.iter().map(|(p, _)| p.clone()).collect(),
            pairs,
        })
    }

    /// Adds this party's mask for `context` with `peer` alone to `values`: cancels with the
    /// peer's for the same context.
    pub(crate) fn apply_with<W: MaskWord>(&self, peer: &str, context: &[u8], values: &mut [W]) {
        self.apply(|name| name == peer, context, values);
    }

    /// Adds this party's masks for `context` with every peer but `absent` to `values`
    /// (wrapping, modulo 2^64 or 2^128): over all parties other than `absent`, the masks
    /// cancel.
    pub(crate) fn apply_without<W: MaskWord>(
        &self,
        absent: &str,
        context: &[u8],
        values: &mut [W],
    ) {
        self.apply(|name| name != absent, context, values);
    }

    /// Adds this party's masks for `context` with the peers `with` picks.
    fn apply<W: MaskWord>(&self, with: impl Fn(&str) -> bool, context: &[u8], values: &mut [W]) {
        for (peer, (seed, sign)) in self.peers.iter().zip(&self.pairs) {
            if !with(peer) {
                continue;
            }
            let mut stream = Stream::new(seed, context);
            for value in values.iter_mut() {
                let r = W::draw(&mut stream);
                *value = if *sign > 0 {
                    value.add(r)
                } else {
                    value.sub(r)
                };
            }
        }
    }
}

/// A word pairwise masks blind: fixed-point sums (u64) or HE shares (u128), both wrapping.
pub(crate) trait MaskWord: Copy {
    /// A uniform word from the stream.
    fn draw(stream: &mut Stream) -> Self;
    fn add(self, other: Self) -> Self;
    fn sub(self, other: Self) -> Self;
}

impl MaskWord for u64 {
    fn draw(stream: &mut Stream) -> u64 {
        stream.next_u64()
    }
    fn add(self, other: u64) -> u64 {
        self.wrapping_add(other)
    }
    fn sub(self, other: u64) -> u64 {
        self.wrapping_sub(other)
    }
}

impl MaskWord for u128 {
    fn draw(stream: &mut Stream) -> u128 {
        u128::from(stream.next_u64()) | u128::from(stream.next_u64()) << 64
    }
    fn add(self, other: u128) -> u128 {
        self.wrapping_add(other)
    }
    fn sub(self, other: u128) -> u128 {
        self.wrapping_sub(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_is_deterministic_and_complete() {
        let split = Split::new(1000, 7, 0.2);
        assert_eq!((split.train.len(), split.validation.len()), (800, 200));
        assert_eq!(split, Split::new(1000, 7, 0.2));
        assert_ne!(split, Split::new(1000, 8, 0.2));
        let mut all = [split.train.clone(), split.validation.clone()].concat();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn pairwise_masks_cancel_in_the_sum_and_hide_each_value() {
        let job = [9u8; 16];
        let names = ["tax", "utility", "water"];
        let secrets: Vec<MaskSecret> = (0..3).map(|_| MaskSecret::random().unwrap()).collect();
        let masks: Vec<PairwiseMasks> = (0..3)
            .map(|i| {
                let peers: Vec<(String, [u8; 32])> = (0..3)
                    .filter(|&j| j != i)
                    .map(|j| (names[j].to_owned(), secrets[j].public()))
                    .collect();
                PairwiseMasks::derive(&job, names[i], &secrets[i], &peers).unwrap()
            })
            .collect();
        let values = [[1u64, 2, 3], [10, 20, 30], [100, 200, 300]];
        let mut sum = [0u64; 3];
        let mut wide_sum = [0u128; 3];
        for (mask, plain) in masks.iter().zip(values) {
            let mut masked = plain;
            mask.apply_without("bank", b"epoch 1", &mut masked);
            assert!(masked.iter().zip(plain).all(|(m, p)| *m != p));
            for (s, m) in sum.iter_mut().zip(masked) {
                *s = s.wrapping_add(m);
            }
            let mut wide = plain.map(u128::from);
            mask.apply_without("bank", b"epoch 1", &mut wide);
            assert!(wide
                .iter()
                .zip(plain)
                .all(|(m, p)| *m >> 64 != 0 || *m != u128::from(p)));
            for (s, m) in wide_sum.iter_mut().zip(wide) {
                *s = s.wrapping_add(m);
            }
        }
        assert_eq!(sum, [111, 222, 333]);
        assert_eq!(wide_sum, [111, 222, 333]);
        let bad = PairwiseMasks::derive(&job, "tax", &secrets[0], &[("x".into(), [0xff; 32])]);
        assert!(matches!(bad, Err(FedError::Protocol { .. })));
    }
}
