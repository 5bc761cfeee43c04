//! Keys, seeded encryption, plaintext addition, encrypted-vector × plaintext-matrix, masking
//! with re-randomisation and flooding, decryption.

use std::sync::Arc;

use rayon::prelude::*;
use tfhe::core_crypto::commons::math::random::{CompressionSeed, RandomGenerator, Seed};
use tfhe::core_crypto::prelude::*;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::HeError;
use crate::pack::{check_key, digit_weight, Ciphertext, PackingKey};
use crate::params::{signed_residue, Params};
use crate::ring::{NttPoly, Ring, MAX_PRODUCT_BITS};

/// A packed result: the full mask polynomial and the body coefficients at the slots.
type PackedResult = (Vec<u128>, Vec<u128>);

/// Random identifier of a key pair, carried by every ciphertext so that objects of different
/// keys are never combined silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 16]);

/// A 128-bit seed from tfhe's seeder (RDSEED where the CPU has it) mixed with the operating
/// system's generator: unpredictable as long as either source is.
fn fresh_seed() -> Seed {
    use rand::Rng;
    let hardware = new_seeder().seed().0;
    let mut os = [0u8; 16];
    rand::rng().fill_bytes(&mut os);
    Seed(hardware ^ u128::from_le_bytes(os))
}

fn csprng() -> RandomGenerator<DefaultRandomGenerator> {
    RandomGenerator::<DefaultRandomGenerator>::new(fresh_seed())
}

fn gaussian(params: &Params) -> Gaussian<f64> {
    // tfhe expresses the standard deviation relative to q = 2^128.
    Gaussian::from_dispersion_parameter(StandardDev(params.noise_std * 2f64.powi(-128)), 0.0)
}

/// The NTT plans of a parameter set's ring, built once per process (planning costs far more
/// than a transform).
pub(crate) fn ring_for(params: &Params) -> Arc<Ring> {
    static RINGS: std::sync::Mutex<Vec<(usize, Arc<Ring>)>> = std::sync::Mutex::new(Vec::new());
    let mut rings = RINGS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, ring)) = rings.iter().find(|(n, _)| *n == params.poly_size) {
        return Arc::clone(ring);
    }
    // Every parameter set uses a power-of-two N between 16 and 16384, for which plans exist.
    let ring =
        Arc::new(Ring::new(params.poly_size).expect("NTT plans exist for every parameter set"));
    rings.push((params.poly_size, Arc::clone(&ring)));
    ring
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
    /// Public bound on every |x_j^T v|.
    bound: i64,
    columns: Vec<(Vec<u128>, Vec<u128>)>,
}

impl EncryptedColumns {
    /// Number of columns.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// True when there are no columns.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The public bound on every |result|: the vector's declared bound × the largest column
    /// l1 norm. It decides how many results [`PublicKey::mask_and_flood`] packs together.
    pub fn bound(&self) -> i64 {
        self.bound
    }

    /// Declares a larger bound, e.g. when the key owner will add these results to other
    /// evaluators' (see [`Masks::sum`]): every evaluator then packs alike and the sum fits.
    pub fn widen_bound(&mut self, bound: i64) {
        self.bound = self.bound.max(bound);
    }
}

impl std::fmt::Debug for EncryptedColumns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncryptedColumns({} columns)", self.columns.len())
    }
}

/// Masked, re-randomised and flooded results, safe to send to the key owner: up to 2^levels
/// results per ciphertext, each sent as its full mask polynomial and the body coefficients at
/// the slots j·N/2^levels (the other coefficients are never released).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskedColumns {
    pub(crate) params_id: u8,
    pub(crate) key: KeyId,
    pub(crate) levels: u32,
    pub(crate) columns: usize,
    pub(crate) packed: Vec<PackedResult>,
}

impl MaskedColumns {
    /// Number of results (columns).
    pub fn len(&self) -> usize {
        self.columns
    }

    /// True when there are no results.
    pub fn is_empty(&self) -> bool {
        self.columns == 0
    }

    /// Results per ciphertext: 2^levels.
    pub fn levels(&self) -> u32 {
        self.levels
    }

    /// Bytes of ciphertext payload that cross the wire: per ciphertext, N mask coefficients
    /// and one body coefficient per result, `released_bits / 8` bytes each.
    pub fn payload_bytes(&self) -> usize {
        let coefficient = self.coefficient_bytes();
        self.packed
            .iter()
            .map(|(a, b)| coefficient * (a.len() + b.len()))
            .sum()
    }

    /// Bits of the modulus the decrypted results live in: p − ℓ for ℓ packing levels.
    pub fn modulus_bits(&self) -> u32 {
        Params::by_id(self.params_id).map_or(0, |p| p.message_bits.saturating_sub(self.levels))
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

    /// Packing keys for up to 2^`levels` results per ciphertext (levels ≤
    /// `params.max_pack_levels`); evaluators need them to pack (see [`PackingKey`]).
    pub fn packing_key(&self, levels: u32) -> Result<PackingKey, HeError> {
        if levels > self.params.max_pack_levels {
            return Err(HeError::SizeMismatch {
                what: "packing levels",
                expected: self.params.max_pack_levels as usize,
                got: levels as usize,
            });
        }
        let blocks = (1..=levels)
            .into_par_iter()
            .map(|level| {
                let rotated = crate::pack::automorphism(&self.coefficients, (1 << level) + 1);
                (0..self.params.ks_digits as usize)
                    .map(|digit| {
                        let weight = digit_weight(&self.params, digit);
                        self.encrypt_raw(rotated.iter().map(|c| c.wrapping_mul(weight)).collect())
                    })
                    .collect()
            })
            .collect();
        Ok(PackingKey::new(&self.params, &self.ring, self.id, blocks))
    }

    fn encrypt_block(&self, values: &[i64]) -> SeededBlock {
        let mut plain = vec![0u128; self.params.poly_size];
        for (p, &m) in plain.iter_mut().zip(values) {
            *p = self.params.scale(m);
        }
        self.encrypt_raw(plain)
    }

    /// Seeded encryption of a polynomial given as raw coefficients of Z/2^128.
    fn encrypt_raw(&self, plain: Vec<u128>) -> SeededBlock {
        // The mask comes from a fresh seed through tfhe's generator (so `expand_block`
        // regenerates it); a·s goes through our exact NTT product, which is much faster than
        // tfhe's schoolbook/Karatsuba product at N = 8192; the noise is tfhe's Gaussian.
        let n = self.params.poly_size;
        let seed = fresh_seed().0;
        let (a, _) = expand_block(
            n,
            &SeededBlock {
                seed,
                body: vec![0; n],
            },
        );
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

/// (a, b) of a seeded block: a regenerated from the seed by tfhe's mask generator.
pub(crate) fn expand_block(n: usize, block: &SeededBlock) -> (Vec<u128>, Vec<u128>) {
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
        if worst > params.max_message_abs() as f64 {
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
            bound: worst as i64,
            columns,
        })
    }

    /// Packs the results 2^ℓ per ciphertext, masks each with a fresh uniform r_j modulo
    /// 2^(p − ℓ), adds a fresh encryption of zero under this key (so the mask polynomial no
    /// longer reveals the matrix) and floods every released coefficient with uniform noise on
    /// [−2^(F+ℓ), 2^(F+ℓ)] (so its noise no longer does).
    ///
    /// ℓ is the largest level that the packing key allows, that the column count can use, and
    /// at which the results still fit: packing multiplies them by 2^ℓ, so they must satisfy
    /// |x_j^T v| ≤ [`EncryptedColumns::bound`] < 2^(p − 1 − ℓ).
    pub fn mask_and_flood(
        &self,
        params: &Params,
        columns: EncryptedColumns,
        packing: &PackingKey,
    ) -> Result<(MaskedColumns, Masks), HeError> {
        self.mask_and_flood_bits(
            params,
            columns,
            packing,
            params.flood_bits,
            params.released_bits,
        )
    }

    /// [`mask_and_flood`](Self::mask_and_flood) with a chosen flooding width and released
    /// precision; tests use a width of 0 and full precision to show that the flooding test can
    /// fail.
    pub(crate) fn mask_and_flood_bits(
        &self,
        params: &Params,
        columns: EncryptedColumns,
        packing: &PackingKey,
        flood_bits: u32,
        released_bits: u32,
    ) -> Result<(MaskedColumns, Masks), HeError> {
        check_params(params, self.params_id, "public key")?;
        check_params(params, columns.params_id, "encrypted columns")?;
        check_key(params, self.id, packing)?;
        if columns.key != self.id {
            return Err(HeError::WrongKey {
                what: "encrypted columns",
            });
        }
        let count = columns.columns.len();
        if count == 0 {
            return Err(HeError::SizeMismatch {
                what: "columns to release",
                expected: 1,
                got: 0,
            });
        }
        // Results must stay below 2^(p−1−ℓ) once packing has multiplied them by 2^ℓ.
        let result_bits = 64 - (columns.bound.max(1) as u64).leading_zeros();
        let fits = (params.message_bits - 1).saturating_sub(result_bits);
        let wanted = count.next_power_of_two().trailing_zeros();
        let levels = packing.levels().min(wanted).min(fits);
        let n = params.poly_size;
        let ring = ring_for(params);
        let group = 1usize << levels;
        let mut items = columns.columns.into_iter().map(Some);
        let groups: Vec<Vec<Option<Ciphertext>>> = (0..count.div_ceil(group))
            .map(|_| (0..group).map(|_| items.next().flatten()).collect())
            .collect();
        let (a_pk, b_pk) = expand_block(
            n,
            &SeededBlock {
                seed: self.seed,
                body: self.body.clone(),
            },
        );
        // The public key is the same for every packed ciphertext: transform it once.
        let (a_pk, b_pk) = (ring.forward_wide(&a_pk), ring.forward_wide(&b_pk));
        let bits = params.message_bits - levels;
        let message_mask = (1u64 << bits) - 1;
        let scale_bits = params.delta_bits() + levels;
        let flood_span = 1u128 << (flood_bits + levels + 1);
        let spacing = n >> levels;
        let results: Vec<(PackedResult, Vec<u64>)> = groups
            .into_par_iter()
            .map(|group_items| {
                let present = group_items.iter().filter(|c| c.is_some()).count();
                let (a, b) = packing
                    .pack(params, &ring, group_items)
                    .expect("every group holds at least one column");
                let mut rng = csprng();
                let mut u = vec![0u128; n];
                rng.fill_slice_with_random_uniform_binary(&mut u);
                let u_small: Vec<i64> = u.iter().map(|&c| c as i64).collect();
                let mut e1 = vec![0u128; n];
                rng.fill_slice_with_random_from_distribution(&mut e1, gaussian(params));
                let u = ring.forward_small(&u_small);
                let (u_a, u_b) = (ring.product(&a_pk, &u), ring.product(&b_pk, &u));
                let fresh_a: Vec<u128> = a
                    .iter()
                    .zip(&u_a)
                    .zip(&e1)
                    .map(|((&x, &y), &z)| {
                        Params::round_to_top(x.wrapping_add(y).wrapping_add(z), released_bits)
                    })
                    .collect();
                let mut masks = Vec::with_capacity(present);
                let slots: Vec<u128> = (0..present)
                    .map(|slot| {
                        let position = slot * spacing;
                        let e2: u128 = rng.random_from_distribution(gaussian(params));
                        let flood = (rng.random_uniform::<u128>() % flood_span)
                            .wrapping_sub(flood_span / 2);
                        let r = rng.random_uniform::<u64>() & message_mask;
                        masks.push(r);
                        let value = b[position]
                            .wrapping_add(u_b[position])
                            .wrapping_add(e2)
                            .wrapping_add(flood)
                            .wrapping_add(u128::from(r) << scale_bits);
                        Params::round_to_top(value, released_bits)
                    })
                    .collect();
                ((fresh_a, slots), masks)
            })
            .collect();
        let (packed, values): (Vec<_>, Vec<Vec<u64>>) = results.into_iter().unzip();
        Ok((
            MaskedColumns {
                params_id: params.id,
                key: self.id,
                levels,
                columns: count,
                packed,
            },
            Masks {
                message_bits: bits,
                values: values.into_iter().flatten().collect(),
            },
        ))
    }
}

/// Another party's encrypted columns (one [`EncryptedVector`] per column, all of one length and
/// under one key), transformed once by the evaluator: every later product with a plaintext
/// vector ([`PublicKey::multiply_columns`]) then costs no transform of the ciphertexts.
pub struct PreparedColumns {
    params_id: u8,
    key: KeyId,
    rows: usize,
    blocks: usize,
    /// `ntt[column * blocks + block]`: the block's (a, b) in NTT form.
    ntt: Vec<(NttPoly, NttPoly)>,
    ring: Arc<Ring>,
}

impl std::fmt::Debug for PreparedColumns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PreparedColumns({} × {})",
            self.rows,
            self.ntt.len() / self.blocks.max(1)
        )
    }
}

impl PreparedColumns {
    /// Number of rows (values per column).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn columns(&self) -> usize {
        self.ntt.len() / self.blocks.max(1)
    }

    /// Bytes of precomputed NTT data.
    pub fn heap_bytes(&self) -> usize {
        self.ntt
            .iter()
            .map(|(a, b)| a.heap_bytes() + b.heap_bytes())
            .sum()
    }
}

impl PublicKey {
    /// Transforms the key owner's encrypted columns for repeated products (see
    /// [`PreparedColumns`]). Every column must be under this key and of the same length.
    pub fn prepare_columns(
        &self,
        params: &Params,
        columns: &[EncryptedVector],
    ) -> Result<PreparedColumns, HeError> {
        check_params(params, self.params_id, "public key")?;
        let rows = columns.first().map_or(0, EncryptedVector::len);
        if rows == 0 || rows > params.max_rows {
            return Err(HeError::SizeMismatch {
                what: "encrypted column rows (1..=max_rows)",
                expected: params.max_rows,
                got: rows,
            });
        }
        for column in columns {
            check_params(params, column.params_id, "encrypted vector")?;
            if column.key != self.id {
                return Err(HeError::WrongKey {
                    what: "encrypted column",
                });
            }
            if column.len != rows {
                return Err(HeError::SizeMismatch {
                    what: "encrypted column length",
                    expected: rows,
                    got: column.len,
                });
            }
        }
        let n = params.poly_size;
        let blocks = rows.div_ceil(n);
        let ring = ring_for(params);
        let ntt = columns
            .par_iter()
            .flat_map_iter(|column| column.blocks.iter())
            .map(|block| {
                let (a, b) = expand_block(n, block);
                (ring.forward_wide(&a), ring.forward_wide(&b))
            })
            .collect();
        Ok(PreparedColumns {
            params_id: params.id,
            key: self.id,
            rows,
            blocks,
            ntt,
            ring,
        })
    }

    /// Encrypted C^T v for the key owner's encrypted columns C and the evaluator's plaintext
    /// vector v (a one-column [`PreparedMatrix`]): for every column j, Σ_i c_ij·v_i under the
    /// owner's key, exact modulo 2^p.
    ///
    /// Unlike [`multiply`](Self::multiply) nothing is refused: the results may wrap modulo 2^p
    /// on purpose (a key owner may encrypt uniform residues, e.g. integrity-check columns).
    /// `bound` is the public bound the evaluator declares on the results it vouches for; it
    /// decides the packing level of [`mask_and_flood`](Self::mask_and_flood), so evaluators
    /// that declare the same bound release alike. The key owner, who knows its columns,
    /// checks what it decrypts.
    pub fn multiply_columns(
        &self,
        params: &Params,
        columns: &PreparedColumns,
        vector: &PreparedMatrix,
        bound: i64,
    ) -> Result<EncryptedColumns, HeError> {
        check_params(params, self.params_id, "public key")?;
        check_params(params, columns.params_id, "prepared columns")?;
        check_params(params, vector.params_id, "prepared vector")?;
        if columns.key != self.id {
            return Err(HeError::WrongKey {
                what: "prepared columns",
            });
        }
        if vector.columns != 1 || vector.rows != columns.rows {
            return Err(HeError::SizeMismatch {
                what: "plaintext vector rows vs encrypted column rows",
                expected: columns.rows,
                got: vector.rows * vector.columns,
            });
        }
        if !(0..=params.max_message_abs()).contains(&bound) {
            return Err(HeError::MessageOutOfRange {
                index: 0,
                value: bound,
                max: params.max_message_abs(),
            });
        }
        let n = params.poly_size;
        let blocks = columns.blocks;
        let ring = &columns.ring;
        let results = (0..columns.columns())
            .into_par_iter()
            .map(|column| {
                let mut acc_a = NttPoly::zero(n);
                let mut acc_b = NttPoly::zero(n);
                for block in 0..blocks {
                    let (a, b) = &columns.ntt[column * blocks + block];
                    let v = &vector.ntt[block];
                    ring.mul_accumulate(&mut acc_a, a, v);
                    ring.mul_accumulate(&mut acc_b, b, v);
                }
                (ring.inverse(acc_a), ring.inverse(acc_b))
            })
            .collect();
        Ok(EncryptedColumns {
            params_id: params.id,
            key: self.id,
            bound,
            columns: results,
        })
    }
}

impl Masks {
    /// The evaluator's additive shares of the released results: −r_j modulo
    /// 2^[`modulus_bits`](Self::modulus_bits). Added to the key owner's decryption
    /// (x_j^T v + r_j) they give x_j^T v modulo that power of two; the two halves of such a
    /// pair are each uniform on their own.
    pub fn shares(&self) -> Vec<u64> {
        let modulus_mask = (1u64 << self.message_bits) - 1;
        self.values
            .iter()
            .map(|&r| r.wrapping_neg() & modulus_mask)
            .collect()
    }

    /// Bits of the modulus the masks live in: p − ℓ for ℓ packing levels.
    pub fn modulus_bits(&self) -> u32 {
        self.message_bits
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
            let spacing = self.params.poly_size >> masked.levels;
            let scale_bits = self.params.delta_bits() + masked.levels;
            masked
                .packed
                .iter()
                .flat_map(|(a, b)| {
                    let a_s = self.ring.mul_wide_small(a, &self.small_key());
                    b.iter()
                        .enumerate()
                        .map(|(slot, b)| {
                            let noisy = b.wrapping_sub(a_s[slot * spacing]);
                            let half = 1u128 << (scale_bits - 1);
                            let message = (noisy.wrapping_add(half) >> scale_bits) << scale_bits;
                            noisy.wrapping_sub(message) as i128
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        }
    }

    fn mean_abs_log2(noise: &[i128]) -> f64 {
        let mean = noise.iter().map(|e| (*e as f64).abs()).sum::<f64>() / noise.len() as f64;
        mean.log2()
    }

    /// Two matrices with the same X^T v but very different noise Σ e_i x_i: the released noise
    /// must not tell them apart with flooding, and must without (so the test can fail). Checked
    /// without packing and with 64 results per ciphertext (flooding then scales by 2^6).
    #[test]
    fn flooding_hides_the_matrix_dependent_noise() {
        let params = N8192_Q128;
        let n = params.poly_size;
        let (secret, public) = SecretKey::generate(&params);
        let (unpacked, packed) = (
            secret.packing_key(0).unwrap(),
            secret.packing_key(6).unwrap(),
        );
        let mut v = vec![0i64; n];
        v[0] = 1;
        let v = secret.encrypt(&v, 1).unwrap();
        // Every column is the same; each ciphertext draws fresh masks, re-randomisation and
        // flooding, so one call yields `COLUMNS` independent samples.
        const COLUMNS: usize = 64;
        let prepare = |rest: i64| {
            let mut column = vec![rest; n];
            column[0] = 7;
            let x: Vec<i64> = (0..COLUMNS).flat_map(|_| column.clone()).collect();
            PreparedMatrix::new(&params, n, COLUMNS, &x).unwrap()
        };
        let (small, large) = (prepare(0), prepare(1 << 14));
        let sample = |matrix: &PreparedMatrix,
                      packing: &PackingKey,
                      flood_bits: u32,
                      released_bits: u32,
                      calls: usize|
         -> (Vec<i128>, u32) {
            let mut levels = 0;
            let noise = (0..calls)
                .flat_map(|_| {
                    let product = public.multiply(&params, &v, matrix).unwrap();
                    let (masked, masks) = public
                        .mask_and_flood_bits(&params, product, packing, flood_bits, released_bits)
                        .unwrap();
                    levels = masked.levels();
                    let decrypted = secret.decrypt_masked(&masked).unwrap();
                    assert_eq!(masks.unmask(&decrypted).unwrap(), vec![7; COLUMNS]);
                    secret.released_noise(&masked)
                })
                .collect();
            (noise, levels)
        };
        // Without flooding: the noise magnitude reveals the matrix (about 2^8 against 2^20).
        let (bare_small, _) = sample(&small, &unpacked, 0, 128, 1);
        let (bare_large, _) = sample(&large, &unpacked, 0, 128, 1);
        assert!(
            mean_abs_log2(&bare_large) - mean_abs_log2(&bare_small) > 6.0,
            "test cannot detect the leak: {} vs {}",
            mean_abs_log2(&bare_small),
            mean_abs_log2(&bare_large)
        );
        // With flooding: both look like uniform noise on ±2^(72+ℓ) (mean |e| ≈ 2^(71+ℓ)). Over
        // 384 samples log2 of the mean has a standard deviation of about 0.04; with packing only
        // 6 calls × 1 ciphertext × 64 slots share six draws of re-randomisation, still far
        // below the flooding. The bounds are more than 5 standard deviations wide.
        for (packing, calls, expected_levels) in [(&unpacked, 6, 0), (&packed, 6, 6)] {
            let (flood_small, levels) = sample(&small, packing, params.flood_bits, 72, calls);
            let (flood_large, _) = sample(&large, packing, params.flood_bits, 72, calls);
            assert_eq!(levels, expected_levels);
            let expected = f64::from(71 + levels);
            for noise in [&flood_small, &flood_large] {
                assert!(
                    (mean_abs_log2(noise) - expected).abs() < 0.3,
                    "{} vs {expected}",
                    mean_abs_log2(noise)
                );
            }
            assert!((mean_abs_log2(&flood_small) - mean_abs_log2(&flood_large)).abs() < 0.3);
        }
    }

    /// Results that are not a power of two in number, several ciphertexts, and a bound that
    /// forces fewer levels: always exact.
    #[test]
    fn packing_is_exact_and_respects_the_result_bound() {
        let params = N8192_Q128;
        let (secret, public) = SecretKey::generate(&params);
        let packing = secret.packing_key(5).unwrap();
        let rows = 1000;
        let v: Vec<i64> = (0..rows as i64).map(|i| (i * 7919) % 2001 - 1000).collect();
        let encrypted = secret.encrypt(&v, 1000).unwrap();
        for (columns, entry, expected_levels) in [(37, 500, 5), (100, 500, 5), (3, 1 << 15, 2)] {
            let x: Vec<i64> = (0..rows * columns)
                .map(|i| (i as i64 * 104_729) % (2 * entry + 1) - entry)
                .collect();
            let matrix = PreparedMatrix::new(&params, rows, columns, &x).unwrap();
            let mut product = public.multiply(&params, &encrypted, &matrix).unwrap();
            if entry == 1 << 15 {
                // A declared bound of 2^50 leaves 53 − 51 = 2 levels.
                product.widen_bound(1 << 50);
            }
            let (masked, masks) = public.mask_and_flood(&params, product, &packing).unwrap();
            assert_eq!(masked.levels(), expected_levels, "{columns} columns");
            let expected: Vec<i64> = x
                .chunks(rows)
                .map(|c| c.iter().zip(&v).map(|(a, b)| a * b).sum())
                .collect();
            let got = masks
                .unmask(&secret.decrypt_masked(&masked).unwrap())
                .unwrap();
            assert_eq!(got, expected, "{columns} columns");
        }
        assert!(secret.packing_key(params.max_pack_levels + 1).is_err());
    }

    #[test]
    fn objects_of_another_key_are_refused() {
        let params = N8192_Q128;
        let (secret, public) = SecretKey::generate(&params);
        let (other_secret, other_public) = SecretKey::generate(&params);
        let v = secret.encrypt(&[1, 2, 3], 3).unwrap();
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
        let packing = secret.packing_key(1).unwrap();
        let product = public.multiply(&params, &v, &x).unwrap();
        let (masked, _) = public.mask_and_flood(&params, product, &packing).unwrap();
        assert!(matches!(
            other_secret.decrypt_masked(&masked),
            Err(HeError::WrongKey { .. })
        ));
        let product = public.multiply(&params, &v, &x).unwrap();
        let other_packing = other_secret.packing_key(1).unwrap();
        assert!(matches!(
            public.mask_and_flood(&params, product, &other_packing),
            Err(HeError::WrongKey {
                what: "packing key"
            })
        ));
    }

    /// Two evaluators mask their products; the key owner returns only the sum of the
    /// decryptions, and the summed masks remove exactly the summed masks.
    #[test]
    fn summed_masks_unmask_summed_decryptions() {
        let params = N8192_Q128;
        let (secret, public) = SecretKey::generate(&params);
        let v = secret.encrypt(&[5, -3], 5).unwrap();
        let first = PreparedMatrix::new(&params, 2, 2, &[1, 0, 0, 1]).unwrap();
        let second = PreparedMatrix::new(&params, 2, 2, &[2, 2, -1, 1]).unwrap();
        let packing = secret.packing_key(1).unwrap();
        let (mut total, mut masks) = (vec![0u64; 2], Vec::new());
        for matrix in [&first, &second] {
            let product = public.multiply(&params, &v, matrix).unwrap();
            let (masked, mask) = public.mask_and_flood(&params, product, &packing).unwrap();
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
