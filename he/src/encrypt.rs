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
use crate::random::{csprng, fresh_seed, gaussian_noise};
use crate::wide::U192;

impl SecretKey {
    /// Seeded encryption of up to N signed messages (already range-checked), Δ·m each.
    pub(crate) fn encrypt_block<T: Copy + Into<i128>>(&self, values: &[T]) -> SeededBlock {
        let mut plain = vec![U192::ZERO; self.params.poly_size];
        for (p, &m) in plain.iter_mut().zip(values) {
            *p = self.params.scale(m.into());
        }
        self.encrypt_raw(&plain)
    }

    /// Seeded encryption of a polynomial given as raw coefficients of Z/2^192.
    pub(crate) fn encrypt_raw(&self, plain: &[U192]) -> SeededBlock {
        // The mask comes from a fresh seed through tfhe's generator (so `SeededBlock::expand`
        // regenerates it); a·s goes through our exact NTT product; the noise is tfhe's
        // Gaussian.
        let n = self.params.poly_size;
        let seed = fresh_seed().0;
        let a = SeededBlock::mask(seed, n);
        let a_s = self.ring.mul_wide_small(&a, self.small_key());
        let noise = gaussian_noise(&self.params, &mut csprng(), n);
        let body = a_s
            .iter()
            .zip(noise)
            .zip(plain)
            .map(|((x, e), &m)| x.wrapping_add(e).wrapping_add(m))
            .collect();
        SeededBlock { seed, body }
    }

    /// Encrypts integers with |m| ≤ `bound` ≤ 2^(p−1) − 1, N per ciphertext.
    ///
    /// `bound` travels with the ciphertext in the clear (evaluators use it to refuse products
    /// that could wrap), so it must be a public bound — one the format of the values fixes —
    /// not the largest value of the data, which would reveal it.
    ///
    /// Values may be any integer type that widens to `i128` (`i64` columns, `i128` residues).
    pub fn encrypt<T: Copy + Into<i128> + Sync>(
        &self,
        values: &[T],
        bound: i128,
    ) -> Result<EncryptedVector, HeError> {
        let max = self.params.max_message_abs();
        if !(0..=max).contains(&bound) {
            return Err(HeError::MessageOutOfRange {
                index: 0,
                value: bound,
                max,
            });
        }
        if let Some(index) = values.iter().position(|&v| {
            let v: i128 = v.into();
            v.checked_abs().is_none_or(|a| a > bound)
        }) {
            return Err(HeError::MessageOutOfRange {
                index,
                value: values[index].into(),
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
    pub fn decrypt(&self, vector: &EncryptedVector) -> Result<Vec<i128>, HeError> {
        check_params(&self.params, vector.params_id, "encrypted vector")?;
        if vector.key != self.id {
            return Err(HeError::WrongKey {
                what: "encrypted vector",
            });
        }
        let n = self.params.poly_size;
        let blocks: Vec<Vec<i128>> = vector
            .blocks
            .par_iter()
            .map(|block| {
                let (a, b) = block.expand(n);
                let a_s = self.ring.mul_wide_small(&a, self.small_key());
                b.iter()
                    .zip(&a_s)
                    .map(|(&b, &a_s)| {
                        let residue = self.params.round(b.wrapping_sub(a_s), 0);
                        signed_residue(residue, self.params.message_bits)
                    })
                    .collect()
            })
            .collect();
        let mut out: Vec<i128> = blocks.into_iter().flatten().collect();
        out.truncate(vector.len);
        Ok(out)
    }

    /// Decrypts masked results: each is (x_j^T v + r_j) mod 2^(p − levels), uniformly
    /// distributed.
    pub fn decrypt_masked(&self, masked: &MaskedColumns) -> Result<Vec<u128>, HeError> {
        check_params(&self.params, masked.params_id, "masked columns")?;
        if masked.key != self.id {
            return Err(HeError::WrongKey {
                what: "masked columns",
            });
        }
        let n = self.params.poly_size;
        let spacing = n >> masked.levels;
        let small_key = self.small_key();
        let packed: Vec<Vec<u128>> = masked
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
                let a_s = self.ring.mul_wide_small(a, small_key);
                Ok(b.iter()
                    .enumerate()
                    .map(|(slot, &b)| {
                        let noisy = b.wrapping_sub(a_s[slot * spacing]);
                        self.params.round(noisy, masked.levels)
                    })
                    .collect())
            })
            .collect::<Result<_, _>>()?;
        Ok(packed.into_iter().flatten().collect())
    }
}

impl EncryptedVector {
    /// Adds a plaintext vector to the encrypted one; the seeds stay valid.
    pub fn add_plain<T: Copy + Into<i128>>(
        &mut self,
        params: &Params,
        values: &[T],
    ) -> Result<(), HeError> {
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
                *b = b.wrapping_add(params.scale(m.into()));
            }
        }
        self.value_bound = bound;
        Ok(())
    }
}

/// Checks every |m| against the plaintext space and returns the largest.
fn check_messages<T: Copy + Into<i128>>(params: &Params, values: &[T]) -> Result<i128, HeError> {
    let max = params.max_message_abs();
    let mut largest = 0i128;
    for (index, &value) in values.iter().enumerate() {
        let value: i128 = value.into();
        if value.checked_abs().is_none_or(|a| a > max) {
            return Err(HeError::MessageOutOfRange { index, value, max });
        }
        largest = largest.max(value.abs());
    }
    Ok(largest)
}
