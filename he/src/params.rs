//! Named parameter sets.

use crate::error::HeError;

/// A parameter set: ring, plaintext space, noise and flooding.
///
/// Ciphertexts live in R_q = Z_q[X]/(X^N + 1) with q = 2^128. Messages are integers modulo
/// 2^`message_bits`, scaled by Δ = 2^(128 − `message_bits`): because Δ·2^p = q exactly, sums
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

/// N = 8192, q = 2^128, 54-bit messages, 72-bit flooding.
///
/// **Security.** The secret key is binary, noise is a rounded Gaussian with σ = 3.19. For
/// RLWE with N = 8192 the Homomorphic Encryption Standard (Albrecht et al., 2018, table for
/// ternary secrets and σ ≈ 3.2, classical and quantum estimates from the lattice estimator)
/// allows log2 q ≤ 218 at 128-bit security; log2 q = 128 is far below that bound (security
/// grows as q shrinks at fixed N). The estimate comes from that published table, not from a
/// run of the estimator here. A binary rather than ternary secret costs a few bits at most,
/// which a 90-bit margin in log2 q absorbs.
///
/// **Flooding.** The noise that depends on a host's matrix after X^T v is
/// Σ_i e_i·x_i with e_i Gaussian (σ), a Gaussian of standard deviation σ·‖x‖₂ ≤ 3.19·2^15·2^10
/// (|x| ≤ 2^15, n ≤ 2^20) < 2^26.7; beyond 13 standard deviations (probability < 2^-120) it
/// exceeds 2^30.4. Uniform flooding on [−2^72, 2^72] hides it with statistical distance
/// ≤ 2^30.4 / 2^72 = 2^-41.6 per released value at the largest sizes, and 2^-46 at a typical
/// mini-batch (n = 4096).
///
/// **Packing.** Results are packed 2^ℓ per ciphertext (ℓ ≤ 10) before release; packing
/// doubles message and noise at each level and adds key-switching noise (digits |d| ≤ 2^15,
/// 7 digits, top 112 bits: Σ d_i·e_i has σ ≈ 2^21 and the dropped low bits add σ ≈ 2^20; 13σ
/// < 2^25), so the noise before flooding is below 2^ℓ·2^30.5. Flooding scales with the
/// packing: uniform on [−2^(72+ℓ), 2^(72+ℓ)], so the per-value statistical distance stays
/// ≤ 2^-41.5. Messages become 2^ℓ·Δ·m: results must satisfy |m| < 2^(53−ℓ) and are released
/// modulo 2^(54−ℓ); the evaluator chooses ℓ from the public bound on its results.
///
/// **Correctness.** Δ·2^ℓ = 2^(74+ℓ), so decryption is exact while total noise < 2^(73+ℓ):
/// flooding 2^(72+ℓ), plus the noise before flooding (< 2^(30.5+ℓ)), the re-randomisation
/// noise (< 2^20) and, because released results keep only the top 72 bits of each coefficient
/// (9 bytes instead of 16), the rounding error ≤ (N + 1)·2^55 < 2^68.1 even in the worst case.
pub const N8192_Q128: Params = Params {
    id: 1,
    poly_size: 8192,
    message_bits: 54,
    noise_std: 3.19,
    flood_bits: 72,
    released_bits: 72,
    max_rows: 1 << 20,
    max_matrix_abs: 1 << 15,
    ks_digit_bits: 16,
    ks_digits: 7,
    max_pack_levels: 10,
};

impl Params {
    /// The parameter set with wire identifier `id`.
    pub fn by_id(id: u8) -> Option<Params> {
        match id {
            1 => Some(N8192_Q128),
            _ => None,
        }
    }

    /// log2 Δ: where messages start.
    pub(crate) fn delta_bits(&self) -> u32 {
        128 - self.message_bits
    }

    /// Δ·m for a signed message (already range-checked).
    pub(crate) fn scale(&self, m: i64) -> u128 {
        (m as i128 as u128).wrapping_shl(self.delta_bits())
    }

    /// The message nearest to a noisy scaled value, modulo 2^p (as an unsigned residue).
    pub(crate) fn round(&self, noisy: u128) -> u64 {
        let half = 1u128 << (self.delta_bits() - 1);
        (noisy.wrapping_add(half) >> self.delta_bits()) as u64
    }

    /// Rounds a coefficient to the nearest multiple of 2^(128 − bits).
    pub(crate) fn round_to_top(value: u128, bits: u32) -> u128 {
        if bits >= 128 {
            return value;
        }
        let drop = 128 - bits;
        (value.wrapping_add(1u128 << (drop - 1)) >> drop) << drop
    }

    /// Largest |m| a message may have.
    pub fn max_message_abs(&self) -> i64 {
        (1i64 << (self.message_bits - 1)) - 1
    }
}

/// A residue modulo 2^`bits` read as a signed integer in [−2^(bits−1), 2^(bits−1)).
pub(crate) fn signed_residue(residue: u64, bits: u32) -> i64 {
    let shift = 64 - bits;
    ((residue << shift) as i64) >> shift
}

/// Refuses an object made under another parameter set than `params`.
pub(crate) fn check_params(params: &Params, id: u8, what: &'static str) -> Result<(), HeError> {
    if params.id == id {
        Ok(())
    } else {
        Err(HeError::WrongKey { what })
    }
}
