//! Seeded encryption and decryption under the key owner's secret, and plaintext addition to
//! an encrypted vector.
//!
//! A fresh block is (a, a·s + e + Δ·m) with `a` expanded from a fresh seed, so only the seed
//! and the body b cross the wire; the key owner also decrypts here what evaluators release
//! (see `release`).

use rayon::prelude::*;

use crate::entities::{EncryptedVector, MaskedColumns, SecretKey, SeededBlock};
use crate::error::HeError;
use crate::params::{check_params, signed_residue, Params};
use crate::random::{csprng, fresh_seed, gaussian};

impl SecretKey {
    /// Seeded encryption of up to N signed messages (already range-checked), Δ·m each.
    pub(crate) fn encrypt_block(&self, values: &[i64]) -> SeededBlock {
        let mut plain = vec![0u128; self.params.poly_size];
        for (p, &m) in plain.iter_mut().zip(values) {
            *p = self.params.scale(m);
        }
        self.encrypt_raw(plain)
    }

    /// Seeded encryption of a polynomial given as raw coefficients of Z/2^128.
    pub(crate) fn encrypt_raw(&self, plain: Vec<u128>) -> SeededBlock {
        // The mask comes from a fresh seed through tfhe's generator (so `SeededBlock::expand`
        // regenerates it); a·s goes through our exact NTT product, which is much faster than
        // tfhe's schoolbook/Karatsuba product at N = 8192; the noise is tfhe's Gaussian.
        let n = self.params.poly_size;
        let seed = fresh_seed().0;
        let (a, _) = SeededBlock {
            seed,
            body: vec![0; n],
        }
        .expand(n);
        let a_s = self.ring.mul_wide_small(&a, &self.small_key());
        let mut noise = vec![0u128; n];
        csprng().fill_slice_with_random_from_distribution(&mut noise, gaussian(&self.params));
        let body = a_s
            .iter()
            .zip(noise)
            .zip(plain)
            .map(|((x, e), m)| x.wrapping_add(e).wrapping_add(m))
            .collect();
        SeededBlock { seed, body }
    }

    /// Encrypts integers with |m| ≤ `bound` ≤ 2^(p−1) − 1, N per ciphertext.
    ///
    /// `bound` travels with the ciphertext in the clear (evaluators use it to refuse products
    /// that could wrap), so it must be a public bound — one the format of the values fixes —
    /// not the largest value of the data, which would reveal it.
    pub fn encrypt(&self, values: &[i64], bound: i64) -> Result<EncryptedVector, HeError> {
        let max = self.params.max_message_abs();
        if !(0..=max).contains(&bound) {
            return Err(HeError::MessageOutOfRange {
                index: 0,
                value: bound,
                max,
            });
        }
        if let Some(index) = values
            .iter()
            .position(|v| v.checked_abs().is_none_or(|a| a > bound))
        {
            return Err(HeError::MessageOutOfRange {
                index,
                value: values[index],
                max: bound,
            });
        }
        let value_bound = bound;
        let blocks = values
            .par_chunks(self.params.poly_size)
            .map(|chunk| self.encrypt_block(chunk))
            .collect();
        Ok(EncryptedVector {
            params_id: self.params.id,
            key: self.id,
            len: values.len(),
            value_bound,
            blocks,
        })
    }

    /// Decrypts a vector encrypted under this key.
    pub fn decrypt(&self, vector: &EncryptedVector) -> Result<Vec<i64>, HeError> {
        check_params(&self.params, vector.params_id, "encrypted vector")?;
        if vector.key != self.id {
            return Err(HeError::WrongKey {
                what: "encrypted vector",
            });
        }
        let n = self.params.poly_size;
        let blocks: Vec<Vec<i64>> = vector
            .blocks
            .par_iter()
            .map(|block| {
                let (a, b) = block.expand(n);
                let a_s = self.ring.mul_wide_small(&a, &self.small_key());
                b.iter()
                    .zip(&a_s)
                    .map(|(&b, &a_s)| {
                        let residue = self.params.round(b.wrapping_sub(a_s));
                        signed_residue(residue, self.params.message_bits)
                    })
                    .collect()
            })
            .collect();
        let mut out: Vec<i64> = blocks.into_iter().flatten().collect();
        out.truncate(vector.len);
        Ok(out)
    }

    /// Decrypts masked results: each is (x_j^T v + r_j) mod 2^(p − levels), uniformly
    /// distributed.
    pub fn decrypt_masked(&self, masked: &MaskedColumns) -> Result<Vec<u64>, HeError> {
        check_params(&self.params, masked.params_id, "masked columns")?;
        if masked.key != self.id {
            return Err(HeError::WrongKey {
                what: "masked columns",
            });
        }
        let n = self.params.poly_size;
        let spacing = n >> masked.levels;
        let scale_bits = self.params.delta_bits() + masked.levels;
        let bits = self.params.message_bits - masked.levels;
        let small_key = self.small_key();
        let packed: Vec<Vec<u64>> = masked
            .packed
            .par_iter()
            .map(|(a, b)| {
                if a.len() != n || b.len() > 1 << masked.levels {
                    return Err(HeError::SizeMismatch {
                        what: "masked ciphertext coefficients",
                        expected: n,
                        got: a.len(),
                    });
                }
                let a_s = self.ring.mul_wide_small(a, &small_key);
                Ok(b.iter()
                    .enumerate()
                    .map(|(slot, &b)| {
                        let noisy = b.wrapping_sub(a_s[slot * spacing]);
                        let rounded = noisy.wrapping_add(1u128 << (scale_bits - 1)) >> scale_bits;
                        (rounded as u64) & ((1u64 << bits) - 1)
                    })
                    .collect())
            })
            .collect::<Result<_, _>>()?;
        Ok(packed.into_iter().flatten().collect())
    }
}

impl EncryptedVector {
    /// Adds a plaintext vector to the encrypted one; the seeds stay valid.
    pub fn add_plain(&mut self, params: &Params, values: &[i64]) -> Result<(), HeError> {
        check_params(params, self.params_id, "encrypted vector")?;
        if values.len() != self.len {
            return Err(HeError::SizeMismatch {
                what: "plaintext length",
                expected: self.len,
                got: values.len(),
            });
        }
        let plain_bound = check_messages(params, values)?;
        let bound = self.value_bound.saturating_add(plain_bound);
        if bound > params.max_message_abs() {
            return Err(HeError::MessageOutOfRange {
                index: 0,
                value: bound,
                max: params.max_message_abs(),
            });
        }
        let n = params.poly_size;
        for (block, chunk) in self.blocks.iter_mut().zip(values.chunks(n)) {
            for (b, &m) in block.body.iter_mut().zip(chunk) {
                *b = b.wrapping_add(params.scale(m));
            }
        }
        self.value_bound = bound;
        Ok(())
    }
}

/// Checks every |m| against the plaintext space and returns the largest.
fn check_messages(params: &Params, values: &[i64]) -> Result<i64, HeError> {
    let max = params.max_message_abs();
    let mut largest = 0i64;
    for (index, &value) in values.iter().enumerate() {
        if value.checked_abs().is_none_or(|a| a > max) {
            return Err(HeError::MessageOutOfRange { index, value, max });
        }
        largest = largest.max(value.abs());
    }
    Ok(largest)
}
