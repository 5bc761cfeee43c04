//! The crate's data: keys, ciphertexts, prepared operands, released results and masks, with
//! their size and bound accessors. The operations live one per module: key generation in
//! `keys`, encryption and decryption in `encrypt`, products in `product`, packing in `pack`,
//! release in `release`, bytes in `wire`.

use std::sync::Arc;

use chacha20::ChaCha20Rng;
use rand::{Rng, SeedableRng};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::params::Params;
use crate::ring::{NttPoly, Ring};
use crate::wide::U192;

/// One ciphertext (a, b) with full coefficients.
pub(crate) type Ciphertext = (Vec<U192>, Vec<U192>);

/// A packed result: the full mask polynomial and the body coefficients at the slots.
pub(crate) type PackedResult = (Vec<U192>, Vec<U192>);

/// Random identifier of a key pair, carried by every ciphertext so that objects of different
/// keys are never combined silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 16]);

/// One block of N encrypted values: the mask `a` is expanded from `seed`, only `b` is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SeededBlock {
    pub(crate) seed: u128,
    pub(crate) body: Vec<U192>,
}

impl SeededBlock {
    /// The uniform mask a of a seeded block, regenerated from its seed: the ChaCha20 keystream
    /// under the key (seed ‖ "unseen/he/mask/3"), 24 bytes per coefficient.
    pub(crate) fn mask(seed: u128, n: usize) -> Vec<U192> {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(&seed.to_le_bytes());
        key[16..].copy_from_slice(b"unseen/he/mask/3");
        let mut bytes = vec![0u8; 24 * n];
        ChaCha20Rng::from_seed(key).fill_bytes(&mut bytes);
        bytes
            .chunks_exact(24)
            .map(|c| U192::from_le_bytes(c.try_into().expect("24-byte chunks")))
            .collect()
    }

    /// (a, b) of a seeded block.
    pub(crate) fn expand(&self, n: usize) -> Ciphertext {
        debug_assert_eq!(self.body.len(), n);
        (Self::mask(self.seed, n), self.body.clone())
    }
}

/// The key owner's secret: a binary polynomial. Zeroised on drop, never printed.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SecretKey {
    #[zeroize(skip)]
    pub(crate) params: Params,
    #[zeroize(skip)]
    pub(crate) id: KeyId,
    /// Binary coefficients (0 or 1).
    pub(crate) coefficients: Vec<i64>,
    #[zeroize(skip)]
    pub(crate) ring: Arc<Ring>,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({:?}, <secret>)", self.id)
    }
}

impl SecretKey {
    /// The key pair's identifier.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The secret's binary coefficients as small signed integers, for the NTT product.
    pub(crate) fn small_key(&self) -> &[i64] {
        &self.coefficients
    }
}

/// An RLWE public key (a, a·s + e), with `a` stored as a seed. Lets another party re-randomise
/// and flood ciphertexts under the owner's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub(crate) params_id: u8,
    pub(crate) id: KeyId,
    pub(crate) seed: u128,
    pub(crate) body: Vec<U192>,
}

impl PublicKey {
    /// The key pair's identifier.
    pub fn id(&self) -> KeyId {
        self.id
    }
}

/// Key-switching keys from τ_t(s) to s for t = 2^j + 1, j = 1..=levels; lets the evaluator pack
/// up to 2^levels results per ciphertext. Public: made by the key owner, sent to evaluators.
#[derive(Clone, PartialEq, Eq)]
pub struct PackingKey {
    pub(crate) params_id: u8,
    pub(crate) key: KeyId,
    /// `levels` × `ks_digits` seeded encryptions of digit_weight·τ_t(s).
    pub(crate) blocks: Vec<Vec<SeededBlock>>,
    /// The same in NTT form, (a, b) per level and digit, for the evaluator.
    pub(crate) prepared: Vec<Vec<(NttPoly, NttPoly)>>,
}

impl std::fmt::Debug for PackingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackingKey({} levels, {:?})", self.levels(), self.key)
    }
}

impl PackingKey {
    /// How many levels (2^levels results per ciphertext at most).
    pub fn levels(&self) -> u32 {
        self.blocks.len() as u32
    }

    /// The key pair's identifier.
    pub fn key_id(&self) -> KeyId {
        self.key
    }
}

/// A vector of encrypted integers, packed N per ciphertext (≈24 bytes per value on the wire).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptedVector {
    pub(crate) params_id: u8,
    pub(crate) key: KeyId,
    pub(crate) len: usize,
    /// Public bound on |value|, declared at encryption and updated by additions; the evaluator
    /// uses it to refuse products that could wrap.
    pub(crate) value_bound: i128,
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
    pub fn value_bound(&self) -> i128 {
        self.value_bound
    }

    /// Bytes of ciphertext payload that cross the wire: a 16-byte seed and N 24-byte body
    /// coefficients per block.
    pub fn payload_bytes(&self) -> usize {
        self.blocks.iter().map(|b| 16 + 24 * b.body.len()).sum()
    }
}

/// A host's plaintext matrix X (rows = samples, columns = features), prepared once per data
/// set: every (block, column) polynomial in NTT form.
pub struct PreparedMatrix {
    pub(crate) params_id: u8,
    pub(crate) rows: usize,
    pub(crate) columns: usize,
    /// Σ_i |x_ij| per column, for the overflow check.
    pub(crate) column_l1: Vec<u64>,
    /// `ntt[column * blocks + block]`.
    pub(crate) ntt: Vec<NttPoly>,
    pub(crate) ring: Arc<Ring>,
}

/// A plaintext matrix M (`columns` results of `rows` inputs each) laid out for
/// [`PublicKey::multiply_spread`]: many results per ciphertext product, for short encrypted
/// vectors such as additive shares. Prepared once per matrix and per key owner (the layout
/// depends on how far the owner's packing key packs).
pub struct SpreadMatrix {
    pub(crate) params_id: u8,
    pub(crate) rows: usize,
    pub(crate) columns: usize,
    /// Inputs per encrypted chunk: N / 2^spread.base.
    pub(crate) chunk: usize,
    pub(crate) spread: Spread,
    /// The bound the evaluator declared on the results.
    pub(crate) bound: i128,
    /// `ntt[item * chunks + chunk]`.
    pub(crate) ntt: Vec<NttPoly>,
    pub(crate) ring: Arc<Ring>,
}

impl SpreadMatrix {
    /// How many values each encrypted chunk of the vector must hold (the last one the rest).
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// Number of inputs.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of results.
    pub fn columns(&self) -> usize {
        self.columns
    }
}

impl std::fmt::Debug for SpreadMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SpreadMatrix({} × {})", self.columns, self.rows)
    }
}

impl std::fmt::Debug for PreparedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PreparedMatrix({} × {})", self.rows, self.columns)
    }
}

impl PreparedMatrix {
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

/// A key owner's columns laid out for [`PublicKey::multiply_blocks`]: ciphertext
/// (group, chunk) holds the `chunk` rows of the chunk for 2^k = N/chunk columns of the group
/// side by side (coefficient i·chunk + t: row t of the chunk, column i of the group).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptedBlocks {
    pub(crate) rows: usize,
    pub(crate) columns: usize,
    pub(crate) chunk: usize,
    /// `blocks[group * chunks + chunk]`, one block each.
    pub(crate) blocks: Vec<EncryptedVector>,
}

impl EncryptedBlocks {
    /// Bytes of ciphertext payload that cross the wire.
    pub fn payload_bytes(&self) -> usize {
        self.blocks.iter().map(EncryptedVector::payload_bytes).sum()
    }

    /// Rows and columns.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.columns)
    }

    /// Rows per ciphertext block: N / chunk columns share a ciphertext, so a Gram product
    /// packs log2(N / chunk) levels.
    pub fn chunk(&self) -> usize {
        self.chunk
    }
}

/// [`EncryptedBlocks`] transformed once by the evaluator for repeated products.
pub struct PreparedBlocks {
    pub(crate) params_id: u8,
    pub(crate) key: KeyId,
    pub(crate) rows: usize,
    pub(crate) columns: usize,
    pub(crate) chunk: usize,
    /// `ntt[group * chunks + chunk]`: the block's (a, b) in NTT form.
    pub(crate) ntt: Vec<(NttPoly, NttPoly)>,
    pub(crate) ring: Arc<Ring>,
}

impl std::fmt::Debug for PreparedBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PreparedBlocks({} × {})", self.rows, self.columns)
    }
}

/// Another party's encrypted columns (one [`EncryptedVector`] per column, all of one length and
/// under one key), transformed once by the evaluator: every later product with a plaintext
/// vector ([`PublicKey::multiply_columns`]) then costs no transform of the ciphertexts.
pub struct PreparedColumns {
    pub(crate) params_id: u8,
    pub(crate) key: KeyId,
    pub(crate) rows: usize,
    pub(crate) blocks: usize,
    /// `ntt[column * blocks + block]`: the block's (a, b) in NTT form.
    pub(crate) ntt: Vec<(NttPoly, NttPoly)>,
    pub(crate) ring: Arc<Ring>,
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

/// X^T v under the key owner's key: one ciphertext per column, the value in its constant
/// coefficient, or (from [`PublicKey::multiply_spread`]) several results per ciphertext,
/// already in packed positions. Held by the evaluator; only [`MaskedColumns`] may leave it.
pub struct EncryptedColumns {
    pub(crate) params_id: u8,
    pub(crate) key: KeyId,
    /// Public bound on every |x_j^T v|.
    pub(crate) bound: i128,
    pub(crate) columns: Vec<Ciphertext>,
    /// For spread products, where the results sit.
    pub(crate) spread: Option<Spread>,
}

/// The layout of a spread product: each ciphertext holds 2^`base` results at positions
/// j·N/2^base, scaled by 2^base (as if packed `base` levels), and the release packs them on
/// to 2^`levels` per ciphertext; result r sits in group r / 2^levels, ciphertext
/// (r mod 2^(levels − base)) of that group's 2^(levels − base), position r mod 2^levels once
/// packed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Spread {
    pub(crate) base: u32,
    pub(crate) levels: u32,
    pub(crate) results: usize,
}

impl EncryptedColumns {
    /// Number of results.
    pub fn len(&self) -> usize {
        self.spread.map_or(self.columns.len(), |s| s.results)
    }

    /// True when there are no results.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The public bound on every |result|: the vector's declared bound × the largest column
    /// l1 norm. It decides how many results [`PublicKey::mask_and_flood`] packs together.
    pub fn bound(&self) -> i128 {
        self.bound
    }

    /// Declares a larger bound, e.g. when the key owner will add these results to other
    /// evaluators' (see [`Masks::sum`]): every evaluator then packs alike and the sum fits.
    pub fn widen_bound(&mut self, bound: i128) {
        self.bound = self.bound.max(bound);
    }
}

impl std::fmt::Debug for EncryptedColumns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncryptedColumns({} results)", self.len())
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
        Params::by_id(self.params_id).map_or(24, |p| p.released_bits as usize / 8)
    }
}

/// The evaluator's uniform masks; removing them from the key owner's decryption gives X^T v.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Masks {
    #[zeroize(skip)]
    pub(crate) message_bits: u32,
    pub(crate) values: Vec<u128>,
}

impl std::fmt::Debug for Masks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masks({} values, <secret>)", self.values.len())
    }
}

impl Masks {
    /// Bits of the modulus the masks live in: p − ℓ for ℓ packing levels.
    pub fn modulus_bits(&self) -> u32 {
        self.message_bits
    }
}
