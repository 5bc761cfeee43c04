//! Keys, seeded encryption, plaintext addition, encrypted-vector × plaintext-matrix, masking
//! with re-randomisation and flooding, decryption.

use std::sync::Arc;

use rayon::prelude::*;
use tfhe::core_crypto::commons::math::random::{CompressionSeed, RandomGenerator, Seed};
use tfhe::core_crypto::prelude::*;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::HeError;
use crate::params::{signed_residue, Params};
use crate::ring::{NttPoly, Ring, MAX_PRODUCT_BITS};

/// Random identifier of a key pair, carried by every ciphertext so that objects of different
/// keys are never combined silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 16]);

fn fresh_seed() -> Seed {
    new_seeder().seed()
}

fn csprng() -> RandomGenerator<DefaultRandomGenerator> {
    RandomGenerator::<DefaultRandomGenerator>::new(fresh_seed())
}

fn gaussian(params: &Params) -> Gaussian<f64> {
    // tfhe expresses the standard deviation relative to q = 2^128.
    Gaussian::from_dispersion_parameter(StandardDev(params.noise_std * 2f64.powi(-128)), 0.0)
}

fn ring_for(params: &Params) -> Arc<Ring> {
    // Every parameter set uses a power-of-two N between 16 and 16384, for which plans exist.
    Arc::new(Ring::new(params.poly_size).expect("NTT plans exist for every parameter set"))
}

/// The key owner's secret: a binary polynomial. Zeroised on drop, never printed.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SecretKey {
    #[zeroize(skip)]
    params: Params,
    #[zeroize(skip)]
    id: KeyId,
    coefficients: Vec<u128>,
    #[zeroize(skip)]
    ring: Arc<Ring>,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({:?}, <secret>)", self.id)
    }
}

/// An RLWE public key (a, a·s + e), with `a` stored as a seed. Lets another party re-randomise
/// and flood ciphertexts under the owner's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub(crate) params_id: u8,
    pub(crate) id: KeyId,
    pub(crate) seed: u128,
    pub(crate) body: Vec<u128>,
}

/// One block of N encrypted values: the mask `a` is expanded from `seed`, only `b` is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SeededBlock {
    pub(crate) seed: u128,
    pub(crate) body: Vec<u128>,
}

/// A vector of encrypted integers, packed N per ciphertext (≈16 bytes per value on the wire).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptedVector {
    pub(crate) params_id: u8,
    pub(crate) key: KeyId,
    pub(crate) len: usize,
    /// Public bound on |value|, declared at encryption and updated by additions; the evaluator
    /// uses it to refuse products that could wrap.
    pub(crate) value_bound: i64,
    pub(crate) blocks: Vec<SeededBlock>,
}

impl EncryptedVector {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The declared bound on |value|.
    pub fn value_bound(&self) -> i64 {
        self.value_bound
    }

    /// Bytes of ciphertext payload that cross the wire: a 16-byte seed and N 16-byte body
    /// coefficients per block.
    pub fn payload_bytes(&self) -> usize {
        self.blocks.iter().map(|b| 16 + 16 * b.body.len()).sum()
    }

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

/// A host's plaintext matrix X (rows = samples, columns = features), prepared once per data
/// set: every (block, column) polynomial in NTT form.
pub struct PreparedMatrix {
    params_id: u8,
    rows: usize,
    columns: usize,
    /// Σ_i |x_ij| per column, for the overflow check.
    column_l1: Vec<u64>,
    /// `ntt[column * blocks + block]`.
    ntt: Vec<NttPoly>,
    ring: Arc<Ring>,
}

impl std::fmt::Debug for PreparedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PreparedMatrix({} × {})", self.rows, self.columns)
    }
}

impl PreparedMatrix {
    /// Prepares `columns` columns of `rows` integers each, column-major
    /// (`values[column * rows + row]`), every entry within ±`params.max_matrix_abs`.
    pub fn new(
        params: &Params,
        rows: usize,
        columns: usize,
        values: &[i64],
    ) -> Result<Self, HeError> {
        if values.len() != rows * columns {
            return Err(HeError::SizeMismatch {
                what: "matrix entries (rows × columns)",
                expected: rows * columns,
                got: values.len(),
            });
        }
        if rows == 0 || rows > params.max_rows {
            return Err(HeError::SizeMismatch {
                what: "matrix rows (1..=max_rows)",
                expected: params.max_rows,
                got: rows,
            });
        }
        if let Some(index) = values.iter().position(|x| x.abs() > params.max_matrix_abs) {
            return Err(HeError::MatrixEntryOutOfRange {
                row: index % rows,
                column: index / rows,
                value: values[index],
                max: params.max_matrix_abs,
            });
        }
        let ring = ring_for(params);
        let n = params.poly_size;
        let blocks = rows.div_ceil(n);
        let column_l1 = values
            .chunks(rows)
            .map(|col| col.iter().map(|x| x.unsigned_abs()).sum())
            .collect();
        let ntt = (0..columns * blocks)
            .into_par_iter()
            .map(|index| {
                let (column, block) = (index / blocks, index % blocks);
                let start = column * rows + block * n;
                let end = column * rows + ((block + 1) * n).min(rows);
                // P(X) = x_0 − Σ_{i≥1} x_i X^(N−i): the constant coefficient of V·P is Σ v_i x_i.
                let mut poly = vec![0i64; n];
                for (i, &x) in values[start..end].iter().enumerate() {
                    if i == 0 {
                        poly[0] = x;
                    } else {
                        poly[n - i] = -x;
                    }
                }
                ring.forward_small(&poly)
            })
            .collect();
        Ok(PreparedMatrix {
            params_id: params.id,
            rows,
            columns,
            column_l1,
            ntt,
            ring,
        })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn columns(&self) -> usize {
        self.columns
    }

    /// Bytes of precomputed NTT data.
    pub fn heap_bytes(&self) -> usize {
        self.ntt.iter().map(NttPoly::heap_bytes).sum()
    }
}

/// X^T v under the key owner's key: one ciphertext per column, the value in its constant
/// coefficient. Held by the evaluator; only [`MaskedColumns`] may leave it.
pub struct EncryptedColumns {
    params_id: u8,
    key: KeyId,
    columns: Vec<(Vec<u128>, Vec<u128>)>,
}

impl std::fmt::Debug for EncryptedColumns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncryptedColumns({} columns)", self.columns.len())
    }
}

/// Masked, re-randomised and flooded columns, safe to send to the key owner: each is an LWE
/// ciphertext (the full mask polynomial and the constant coefficient of the body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskedColumns {
    pub(crate) params_id: u8,
    pub(crate) key: KeyId,
    pub(crate) columns: Vec<(Vec<u128>, u128)>,
}

impl MaskedColumns {
    /// Number of columns.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// True when there are no columns.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// Bytes of ciphertext payload that cross the wire: N + 1 coefficients of
    /// `released_bits / 8` bytes per column.
    pub fn payload_bytes(&self) -> usize {
        let coefficient = self.coefficient_bytes();
        self.columns
            .iter()
            .map(|(a, _)| coefficient * (a.len() + 1))
            .sum()
    }

    /// Bytes per released coefficient on the wire.
    pub(crate) fn coefficient_bytes(&self) -> usize {
        Params::by_id(self.params_id).map_or(16, |p| p.released_bits as usize / 8)
    }
}

/// The evaluator's uniform masks; removing them from the key owner's decryption gives X^T v.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Masks {
    #[zeroize(skip)]
    message_bits: u32,
    values: Vec<u64>,
}

impl std::fmt::Debug for Masks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masks({} values, <secret>)", self.values.len())
    }
}

fn check_params(params: &Params, id: u8, what: &'static str) -> Result<(), HeError> {
    if params.id == id {
        Ok(())
    } else {
        Err(HeError::WrongKey { what })
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

/// Coefficient 0 of a·s for a binary s: a_0·s_0 − Σ_{i≥1} a_i·s_(N−i).
fn constant_of_product(a: &[u128], s: &[u128]) -> u128 {
    let n = a.len();
    let mut acc = a[0].wrapping_mul(s[0]);
    for i in 1..n {
        acc = acc.wrapping_sub(a[i].wrapping_mul(s[n - i]));
    }
    acc
}

impl SecretKey {
    /// A fresh key pair from the operating system's entropy (through tfhe's seeder and CSPRNG).
    pub fn generate(params: &Params) -> (SecretKey, PublicKey) {
        let n = params.poly_size;
        let mut secret_gen = SecretRandomGenerator::<DefaultRandomGenerator>::new(fresh_seed());
        let glwe: GlweSecretKey<Vec<u128>> = allocate_and_generate_new_binary_glwe_secret_key(
            GlweDimension(1),
            PolynomialSize(n),
            &mut secret_gen,
        );
        let secret = SecretKey {
            params: *params,
            id: KeyId(fresh_seed().0.to_le_bytes()),
            coefficients: glwe.into_container(),
            ring: ring_for(params),
        };
        let zeros = vec![0i64; n];
        let block = secret.encrypt_block(&zeros);
        let public = PublicKey {
            params_id: params.id,
            id: secret.id,
            seed: block.seed,
            body: block.body,
        };
        (secret, public)
    }

    /// The key pair's identifier.
    pub fn id(&self) -> KeyId {
        self.id
    }

    fn glwe(&self) -> GlweSecretKey<&[u128]> {
        GlweSecretKey::from_container(
            self.coefficients.as_slice(),
            PolynomialSize(self.params.poly_size),
        )
    }

    fn encrypt_block(&self, values: &[i64]) -> SeededBlock {
        let n = self.params.poly_size;
        let mut plain = vec![0u128; n];
        for (p, &m) in plain.iter_mut().zip(values) {
            *p = self.params.scale(m);
        }
        let mut seeder = new_seeder();
        let seed = seeder.seed();
        let compression_seed: CompressionSeed = seed.into();
        let mut ct = SeededGlweCiphertext::new(
            0u128,
            GlweSize(2),
            PolynomialSize(n),
            compression_seed,
            CiphertextModulus::new_native(),
        );
        encrypt_seeded_glwe_ciphertext(
            &self.glwe(),
            &mut ct,
            &PlaintextList::from_container(plain),
            gaussian(&self.params),
            seeder.as_mut(),
        );
        SeededBlock {
            seed: seed.0,
            body: ct.get_body().as_ref().to_vec(),
        }
    }

    /// Encrypts integers with |m| ≤ 2^(p−1) − 1, N per ciphertext.
    pub fn encrypt(&self, values: &[i64]) -> Result<EncryptedVector, HeError> {
        let value_bound = check_messages(&self.params, values)?;
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
                let (a, b) = expand_block(n, block);
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

    fn small_key(&self) -> Vec<i64> {
        self.coefficients.iter().map(|&c| c as i64).collect()
    }

    /// Decrypts masked columns: each result is (x_j^T v + r_j) mod 2^p, uniformly distributed.
    pub fn decrypt_masked(&self, masked: &MaskedColumns) -> Result<Vec<u64>, HeError> {
        check_params(&self.params, masked.params_id, "masked columns")?;
        if masked.key != self.id {
            return Err(HeError::WrongKey {
                what: "masked columns",
            });
        }
        masked
            .columns
            .par_iter()
            .map(|(a, b0)| {
                if a.len() != self.params.poly_size {
                    return Err(HeError::SizeMismatch {
                        what: "masked column mask length",
                        expected: self.params.poly_size,
                        got: a.len(),
                    });
                }
                let noisy = b0.wrapping_sub(constant_of_product(a, &self.coefficients));
                Ok(self.params.round(noisy))
            })
            .collect()
    }
}

/// (a, b) of a seeded block: a regenerated from the seed by tfhe's mask generator.
fn expand_block(n: usize, block: &SeededBlock) -> (Vec<u128>, Vec<u128>) {
    let seeded = SeededGlweCiphertext::from_container(
        block.body.clone(),
        GlweSize(2),
        CompressionSeed::from(Seed(block.seed)),
        CiphertextModulus::new_native(),
    );
    let full = seeded.decompress_into_glwe_ciphertext();
    let (mask, body) = full.get_mask_and_body();
    debug_assert_eq!(mask.as_ref().len(), n);
    (mask.as_ref().to_vec(), body.as_ref().to_vec())
}

impl PublicKey {
    /// The key pair's identifier.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Encrypted X^T v: for every column j of `matrix`, Σ_i x_ij·v_i under the owner's key.
    /// Refuses products whose worst case (declared |v| bound × Σ_i |x_ij|) could wrap.
    pub fn multiply(
        &self,
        params: &Params,
        vector: &EncryptedVector,
        matrix: &PreparedMatrix,
    ) -> Result<EncryptedColumns, HeError> {
        check_params(params, self.params_id, "public key")?;
        check_params(params, vector.params_id, "encrypted vector")?;
        check_params(params, matrix.params_id, "prepared matrix")?;
        if vector.key != self.id {
            return Err(HeError::WrongKey {
                what: "encrypted vector",
            });
        }
        if vector.len != matrix.rows {
            return Err(HeError::SizeMismatch {
                what: "encrypted vector length vs matrix rows",
                expected: matrix.rows,
                got: vector.len,
            });
        }
        let worst =
            matrix.column_l1.iter().copied().max().unwrap_or(0) as f64 * vector.value_bound as f64;
        if worst >= params.max_message_abs() as f64 {
            return Err(HeError::ProductTooLarge {
                bits: worst.log2(),
                message_bits: params.message_bits,
            });
        }
        let n = params.poly_size;
        let blocks = matrix.rows.div_ceil(n);
        // The exact integer accumulation must stay below the CRT range.
        debug_assert!(((blocks * n) as f64).log2() + 127.0 + 15.0 < f64::from(MAX_PRODUCT_BITS));
        let ring = &matrix.ring;
        let transformed: Vec<(NttPoly, NttPoly)> = vector
            .blocks
            .par_iter()
            .map(|block| {
                let (a, b) = expand_block(n, block);
                (ring.forward_wide(&a), ring.forward_wide(&b))
            })
            .collect();
        let columns = (0..matrix.columns)
            .into_par_iter()
            .map(|column| {
                let mut acc_a = NttPoly::zero(n);
                let mut acc_b = NttPoly::zero(n);
                for (block, (a, b)) in transformed.iter().enumerate() {
                    let x = &matrix.ntt[column * blocks + block];
                    ring.mul_accumulate(&mut acc_a, a, x);
                    ring.mul_accumulate(&mut acc_b, b, x);
                }
                (ring.inverse(acc_a), ring.inverse(acc_b))
            })
            .collect();
        Ok(EncryptedColumns {
            params_id: params.id,
            key: self.id,
            columns,
        })
    }

    /// Masks every column with a fresh uniform r_j mod 2^p, adds a fresh encryption of zero
    /// under this key (so the mask polynomial no longer reveals the matrix) and floods the
    /// released coefficient with uniform noise on [−2^F, 2^F] (so its noise no longer does).
    pub fn mask_and_flood(
        &self,
        params: &Params,
        columns: EncryptedColumns,
    ) -> Result<(MaskedColumns, Masks), HeError> {
        self.mask_and_flood_bits(params, columns, params.flood_bits, params.released_bits)
    }

    /// [`mask_and_flood`](Self::mask_and_flood) with a chosen flooding width and released
    /// precision; tests use a width of 0 and full precision to show that the flooding test can
    /// fail.
    pub(crate) fn mask_and_flood_bits(
        &self,
        params: &Params,
        columns: EncryptedColumns,
        flood_bits: u32,
        released_bits: u32,
    ) -> Result<(MaskedColumns, Masks), HeError> {
        check_params(params, self.params_id, "public key")?;
        check_params(params, columns.params_id, "encrypted columns")?;
        if columns.key != self.id {
            return Err(HeError::WrongKey {
                what: "encrypted columns",
            });
        }
        let n = params.poly_size;
        let ring = ring_for(params);
        let (a_pk, b_pk) = expand_block(
            n,
            &SeededBlock {
                seed: self.seed,
                body: self.body.clone(),
            },
        );
        let message_mask = (1u64 << params.message_bits) - 1;
        let flood_span = 1u128 << (flood_bits + 1);
        let results: Vec<((Vec<u128>, u128), u64)> = columns
            .columns
            .into_par_iter()
            .map(|(a, b)| {
                let mut rng = csprng();
                let mut u = vec![0u128; n];
                rng.fill_slice_with_random_uniform_binary(&mut u);
                let u_small: Vec<i64> = u.iter().map(|&c| c as i64).collect();
                let mut e1 = vec![0u128; n];
                rng.fill_slice_with_random_from_distribution(&mut e1, gaussian(params));
                let e2: u128 = rng.random_from_distribution(gaussian(params));
                let flood =
                    (rng.random_uniform::<u128>() % flood_span).wrapping_sub(flood_span / 2);
                let r = rng.random_uniform::<u64>() & message_mask;
                let u_a = ring.mul_wide_small(&a_pk, &u_small);
                let fresh_a: Vec<u128> = a
                    .iter()
                    .zip(&u_a)
                    .zip(&e1)
                    .map(|((&x, &y), &z)| {
                        Params::round_to_top(x.wrapping_add(y).wrapping_add(z), released_bits)
                    })
                    .collect();
                let u_b0 = constant_of_product(&b_pk, &u);
                let b0 = b[0]
                    .wrapping_add(u_b0)
                    .wrapping_add(e2)
                    .wrapping_add(flood)
                    .wrapping_add(params.scale(r as i64));
                ((fresh_a, Params::round_to_top(b0, released_bits)), r)
            })
            .collect();
        let (columns, values): (Vec<_>, Vec<_>) = results.into_iter().unzip();
        Ok((
            MaskedColumns {
                params_id: params.id,
                key: self.id,
                columns,
            },
            Masks {
                message_bits: params.message_bits,
                values,
            },
        ))
    }
}

impl Masks {
    /// The masks of several evaluators added together, for a key owner who returns the sum of
    /// their decryptions: unmasking the summed decryptions with the summed masks gives the sum
    /// of the products.
    pub fn sum(parts: &[Masks]) -> Result<Masks, HeError> {
        let Some(first) = parts.first() else {
            return Err(HeError::SizeMismatch {
                what: "mask sets to sum",
                expected: 1,
                got: 0,
            });
        };
        let modulus_mask = (1u64 << first.message_bits) - 1;
        let mut values = vec![0u64; first.values.len()];
        for part in parts {
            if part.values.len() != values.len() || part.message_bits != first.message_bits {
                return Err(HeError::SizeMismatch {
                    what: "masks to sum",
                    expected: values.len(),
                    got: part.values.len(),
                });
            }
            for (total, &r) in values.iter_mut().zip(&part.values) {
                *total = total.wrapping_add(r) & modulus_mask;
            }
        }
        Ok(Masks {
            message_bits: first.message_bits,
            values,
        })
    }

    /// Removes the masks from the key owner's decryption: x_j^T v as signed integers.
    pub fn unmask(&self, decrypted: &[u64]) -> Result<Vec<i64>, HeError> {
        if decrypted.len() != self.values.len() {
            return Err(HeError::SizeMismatch {
                what: "decrypted masked columns",
                expected: self.values.len(),
                got: decrypted.len(),
            });
        }
        Ok(decrypted
            .iter()
            .zip(&self.values)
            .map(|(&w, &r)| signed_residue(w.wrapping_sub(r), self.message_bits))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::N8192_Q128;

    impl SecretKey {
        /// The noise of each released value as the key owner sees it.
        fn released_noise(&self, masked: &MaskedColumns) -> Vec<i128> {
            masked
                .columns
                .iter()
                .map(|(a, b0)| {
                    let noisy = b0.wrapping_sub(constant_of_product(a, &self.coefficients));
                    let message = u128::from(self.params.round(noisy)) << self.params.delta_bits();
                    noisy.wrapping_sub(message) as i128
                })
                .collect()
        }
    }

    fn mean_abs_log2(noise: &[i128]) -> f64 {
        let mean = noise.iter().map(|e| (*e as f64).abs()).sum::<f64>() / noise.len() as f64;
        mean.log2()
    }

    /// Two matrices with the same X^T v but very different noise Σ e_i x_i: the released noise
    /// must not tell them apart with flooding, and must without (so the test can fail).
    #[test]
    fn flooding_hides_the_matrix_dependent_noise() {
        let params = N8192_Q128;
        let n = params.poly_size;
        let (secret, public) = SecretKey::generate(&params);
        let mut v = vec![0i64; n];
        v[0] = 1;
        let v = secret.encrypt(&v).unwrap();
        // Every column is the same; each release draws fresh masks, re-randomisation and flooding
        // per column, so one call yields `COLUMNS` independent samples.
        const COLUMNS: usize = 50;
        let prepare = |rest: i64| {
            let mut column = vec![rest; n];
            column[0] = 7;
            let x: Vec<i64> = (0..COLUMNS).flat_map(|_| column.clone()).collect();
            PreparedMatrix::new(&params, n, COLUMNS, &x).unwrap()
        };
        let (small, large) = (prepare(0), prepare(1 << 14));
        let sample = |matrix: &PreparedMatrix,
                      flood_bits: u32,
                      released_bits: u32,
                      calls: usize|
         -> Vec<i128> {
            (0..calls)
                .flat_map(|_| {
                    let product = public.multiply(&params, &v, matrix).unwrap();
                    let (masked, masks) = public
                        .mask_and_flood_bits(&params, product, flood_bits, released_bits)
                        .unwrap();
                    let decrypted = secret.decrypt_masked(&masked).unwrap();
                    assert_eq!(masks.unmask(&decrypted).unwrap(), vec![7; COLUMNS]);
                    secret.released_noise(&masked)
                })
                .collect()
        };
        // Without flooding: the noise magnitude reveals the matrix (about 2^8 against 2^20).
        let (bare_small, bare_large) = (sample(&small, 0, 128, 1), sample(&large, 0, 128, 1));
        assert!(
            mean_abs_log2(&bare_large) - mean_abs_log2(&bare_small) > 6.0,
            "test cannot detect the leak: {} vs {}",
            mean_abs_log2(&bare_small),
            mean_abs_log2(&bare_large)
        );
        // With flooding: both look like uniform noise on ±2^72 (mean |e| ≈ 2^71). Over 400
        // samples log2 of the mean has a standard deviation of about 0.04, so the bounds below
        // are more than 5 standard deviations wide.
        let (flood_small, flood_large) = (
            sample(&small, params.flood_bits, params.released_bits, 8),
            sample(&large, params.flood_bits, params.released_bits, 8),
        );
        for noise in [&flood_small, &flood_large] {
            assert!(
                (mean_abs_log2(noise) - 71.0).abs() < 0.3,
                "{}",
                mean_abs_log2(noise)
            );
        }
        assert!((mean_abs_log2(&flood_small) - mean_abs_log2(&flood_large)).abs() < 0.3);
    }

    #[test]
    fn objects_of_another_key_are_refused() {
        let params = N8192_Q128;
        let (secret, public) = SecretKey::generate(&params);
        let (other_secret, other_public) = SecretKey::generate(&params);
        let v = secret.encrypt(&[1, 2, 3]).unwrap();
        assert_eq!(
            other_secret.decrypt(&v),
            Err(HeError::WrongKey {
                what: "encrypted vector"
            })
        );
        let x = PreparedMatrix::new(&params, 3, 1, &[1, 1, 1]).unwrap();
        assert!(matches!(
            other_public.multiply(&params, &v, &x),
            Err(HeError::WrongKey { .. })
        ));
        let product = public.multiply(&params, &v, &x).unwrap();
        let (masked, _) = public.mask_and_flood(&params, product).unwrap();
        assert!(matches!(
            other_secret.decrypt_masked(&masked),
            Err(HeError::WrongKey { .. })
        ));
    }

    /// Two evaluators mask their products; the key owner returns only the sum of the
    /// decryptions, and the summed masks remove exactly the summed masks.
    #[test]
    fn summed_masks_unmask_summed_decryptions() {
        let params = N8192_Q128;
        let (secret, public) = SecretKey::generate(&params);
        let v = secret.encrypt(&[5, -3]).unwrap();
        let first = PreparedMatrix::new(&params, 2, 2, &[1, 0, 0, 1]).unwrap();
        let second = PreparedMatrix::new(&params, 2, 2, &[2, 2, -1, 1]).unwrap();
        let (mut total, mut masks) = (vec![0u64; 2], Vec::new());
        for matrix in [&first, &second] {
            let product = public.multiply(&params, &v, matrix).unwrap();
            let (masked, mask) = public.mask_and_flood(&params, product).unwrap();
            for (t, d) in total
                .iter_mut()
                .zip(secret.decrypt_masked(&masked).unwrap())
            {
                *t = t.wrapping_add(d);
            }
            masks.push(mask);
        }
        let summed = Masks::sum(&masks).unwrap();
        // [5, −3] + [4, −8] from the two column-major matrices.
        assert_eq!(summed.unmask(&total).unwrap(), vec![9, -11]);
        assert!(Masks::sum(&[]).is_err());
    }
}
