//! Named parameter sets.

use crate::error::HeError;
use crate::wide::U192;

/// A parameter set: ring, plaintext space, noise and flooding.
///
/// Ciphertexts live in R_q = Z_q[X]/(X^N + 1) with q = 2^192. Messages are integers modulo
/// 2^`message_bits`, scaled by Δ = 2^(192 − `message_bits`): because Δ·2^p = q exactly, sums
/// and plaintext products wrap modulo 2^p with no rounding, and a uniform mask modulo 2^p is a
/// perfect one-time pad.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    /// Wire identifier of the set; a ciphertext made under another set is refused.
    pub id: u8,
    /// N, the number of coefficients (values) per ciphertext.
    pub poly_size: usize,
    /// p: messages are integers modulo 2^p (signed: |m| < 2^(p−1)).
    pub message_bits: u32,
    /// Standard deviation of fresh encryption noise, in units of 1 (not of q).
    pub noise_std: f64,
    /// Flooding noise is uniform on [−2^F, 2^F].
    pub flood_bits: u32,
    /// Released results keep the top bits of each coefficient (modulus switching to 2^bits).
    pub released_bits: u32,
    /// Largest number of encrypted values one matrix product may combine.
    pub max_rows: usize,
    /// Largest |x| of a plaintext matrix entry.
    pub max_matrix_abs: i64,
    /// Key switching (for packing) decomposes in base 2^`ks_digit_bits`…
    pub ks_digit_bits: u32,
    /// …into this many digits, covering the top `ks_digits·ks_digit_bits` bits.
    pub ks_digits: u32,
    /// Most packing levels: up to 2^levels results per released ciphertext.
    pub max_pack_levels: u32,
}

/// N = 8192, q = 2^192, 118-bit messages, 72-bit flooding.
///
/// The plaintext is wide on purpose: additive secret shares of fixed-point values (uniform
/// modulo 2^(p − ℓ)) pass through these ciphertexts, and sharing a value of v bits so that a
/// local truncation fails with probability at most 2^-40 needs a modulus of about v + 41 bits.
///
/// **Security.** The secret key is binary, noise is a rounded Gaussian with σ = 3.19. For
/// RLWE with N = 8192 the Homomorphic Encryption Standard (Albrecht et al., 2018, tables for
/// ternary secrets and σ ≈ 3.2 from the lattice estimator) allows log2 q ≤ 218 for 128-bit
/// classical security and log2 q ≤ 202 for 128-bit quantum security; log2 q = 192 is below
/// both (security grows as q shrinks at fixed N), by 26 and 10 bits. The estimate comes from
/// that published table, not from a run of the estimator here. A binary rather than ternary
/// secret costs a few bits, which the margins have to absorb; running the estimator for this
/// exact set (binary secret) is an open item.
///
/// **Flooding.** The noise that depends on a host's matrix after X^T v is
/// Σ_i e_i·x_i with e_i Gaussian (σ), a Gaussian of standard deviation σ·‖x‖₂ ≤ 3.19·2^15·2^10
/// (|x| ≤ 2^15, n ≤ 2^20) < 2^26.7; beyond 13 standard deviations (probability < 2^-120) it
/// exceeds 2^30.4 (2^26.4 at a mini-batch of n = 4096).
///
/// **Packing.** Results are packed 2^ℓ per ciphertext (ℓ ≤ 10) before release; packing
/// doubles message and noise at each level and adds key-switching noise (digits |d| ≤ 2^15,
/// 11 digits, top 176 bits: Σ d_i·e_i over 11·N terms has σ ≈ 2^24.1 and the dropped low bits
/// add σ ≈ 2^20.2; 13σ < 2^27.9), so the noise before flooding is below
/// 2^ℓ·(2^30.4 + 2^27.9) < 2^ℓ·2^30.7 (2^ℓ·2^28.3 at n = 4096). Flooding scales with the
/// packing: uniform on [−2^(72+ℓ), 2^(72+ℓ)), so a shift t of the noise changes the
/// distribution by at most t/2^(72+ℓ): ≤ 2^-41.3 per released value at the largest sizes,
/// ≤ 2^-43.7 at n = 4096. Messages become 2^ℓ·Δ·m: results must satisfy |m| < 2^(117−ℓ) and
/// are released modulo 2^(118−ℓ); the evaluator chooses ℓ from the public bound on its results.
///
/// **Correctness.** Δ·2^ℓ = 2^(74+ℓ), so decryption is exact while total noise < 2^(73+ℓ):
/// flooding 2^(72+ℓ), plus the noise before flooding (< 2^(30.7+ℓ)), the re-randomisation
/// noise (< 2^20) and, because released results keep only the top 136 bits of each coefficient
/// (17 bytes instead of 24), the rounding error ≤ (N + 1)·2^55 < 2^68.1 even in the worst case.
pub const N8192_Q192: Params = Params {
    id: 2,
    poly_size: 8192,
    message_bits: 118,
    noise_std: 3.19,
    flood_bits: 72,
    released_bits: 136,
    max_rows: 1 << 20,
    max_matrix_abs: 1 << 15,
    ks_digit_bits: 16,
    ks_digits: 11,
    max_pack_levels: 10,
};

impl Params {
    /// The parameter set with wire identifier `id`.
    pub fn by_id(id: u8) -> Option<Params> {
        match id {
            2 => Some(N8192_Q192),
            _ => None,
        }
    }

    /// log2 Δ: where messages start.
    pub(crate) fn delta_bits(&self) -> u32 {
        U192::BITS - self.message_bits
    }

    /// Δ·m for a signed message (already range-checked).
    pub(crate) fn scale(&self, m: i128) -> U192 {
        U192::from_i128(m).shl(self.delta_bits())
    }

    /// Δ·2^levels·r for a residue r modulo 2^(p − levels).
    pub(crate) fn scale_residue(&self, r: u128, levels: u32) -> U192 {
        U192::from_u128(r).shl(self.delta_bits() + levels)
    }

    /// The message nearest to a noisy value scaled by Δ·2^levels, modulo 2^(p − levels) (as
    /// an unsigned residue).
    pub(crate) fn round(&self, noisy: U192, levels: u32) -> u128 {
        let scale_bits = self.delta_bits() + levels;
        let half = U192::from_u128(1).shl(scale_bits - 1);
        noisy
            .wrapping_add(half)
            .shr(scale_bits)
            .low_bits(self.message_bits - levels)
    }

    /// Largest |m| a message may have.
    pub fn max_message_abs(&self) -> i128 {
        (1i128 << (self.message_bits - 1)) - 1
    }
}

/// A residue modulo 2^`bits` (bits ≤ 128) read as a signed integer in
/// [−2^(bits−1), 2^(bits−1)).
pub fn signed_residue(residue: u128, bits: u32) -> i128 {
    debug_assert!((1..=128).contains(&bits));
    let shift = 128 - bits;
    ((residue << shift) as i128) >> shift
}

/// Refuses an object made under another parameter set than `params`, and parameters that are
/// not exactly a named set (the fields are public; the code relies on the named sets' shape,
/// e.g. digit widths that divide 64).
pub(crate) fn check_params(params: &Params, id: u8, what: &'static str) -> Result<(), HeError> {
    if params.id == id && Params::by_id(id).is_some_and(|named| named == *params) {
        Ok(())
    } else {
        Err(HeError::WrongKey { what })
    }
}
