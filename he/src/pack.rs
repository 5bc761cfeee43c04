//! Ring packing: 2^ℓ column results, each in the constant coefficient of its own ciphertext,
//! into one ciphertext whose coefficient j·N/2^ℓ holds 2^ℓ times result j.
//!
//! The recursion is the one of Chen, Dai, Kim and Song ("Efficient homomorphic conversion from
//! ring learning with errors to ring learning with errors", 2020): with E and O the packings of
//! the even- and odd-indexed halves and t = 2^ℓ + 1,
//!
//! ```text
//! pack = (E + X^(N/2^ℓ)·O) + τ_t(E − X^(N/2^ℓ)·O)
//! ```
//!
//! where τ_t: X ↦ X^t fixes the slot positions j·N/2^ℓ up to the sign (−1)^j, so each slot
//! keeps twice its own value and the other half's garbage cancels. τ_t(ct) decrypts under
//! τ_t(s); a key-switching key brings it back to s. A missing half needs no automorphism: the
//! garbage outside the slots is never released, so `2·E` (or `2·X^(N/2^ℓ)·O`) is enough.
//!
//! With q = 2^192 the factor 2^ℓ cannot be divided out, so the scale grows from Δ to 2^ℓ·Δ and
//! results live modulo 2^(p−ℓ): the evaluator picks ℓ so that they still fit (see
//! `PublicKey::mask_and_flood`). Key switching decomposes the top `ks_digits·ks_digit_bits` bits
//! of the mask in balanced base 2^`ks_digit_bits`.

use rayon::prelude::*;

use crate::entities::{Ciphertext, KeyId, PackingKey, SeededBlock};
use crate::error::HeError;
use crate::params::Params;
use crate::ring::{NttPoly, Ring};
use crate::wide::U192;

impl PackingKey {
    pub(crate) fn new(
        params: &Params,
        ring: &Ring,
        key: KeyId,
        blocks: Vec<Vec<SeededBlock>>,
    ) -> PackingKey {
        let prepared = blocks
            .par_iter()
            .map(|level| {
                level
                    .iter()
                    .map(|block| {
                        let (a, b) = block.expand(params.poly_size);
                        (ring.forward_wide(&a), ring.forward_wide(&b))
                    })
                    .collect()
            })
            .collect();
        PackingKey {
            params_id: params.id,
            key,
            blocks,
            prepared,
        }
    }

    /// Packs `items` (a power of two of them, `None` for absent columns), each already packed
    /// `base` levels (0: one result in its constant coefficient), so that result j of item i
    /// lands at position (j·len + i)·N/(len·2^base); every present slot ends multiplied by
    /// len·2^base.
    pub(crate) fn pack(
        &self,
        params: &Params,
        ring: &Ring,
        items: Vec<Option<Ciphertext>>,
        base: u32,
    ) -> Option<Ciphertext> {
        let len = items.len();
        debug_assert!(len.is_power_of_two());
        if len == 1 {
            return items.into_iter().next().flatten();
        }
        let level = (base + len.trailing_zeros()) as usize;
        let (mut even, mut odd) = (Vec::with_capacity(len / 2), Vec::with_capacity(len / 2));
        for (i, item) in items.into_iter().enumerate() {
            if i % 2 == 0 {
                even.push(item);
            } else {
                odd.push(item);
            }
        }
        let (even, odd) = rayon::join(
            || self.pack(params, ring, even, base),
            || self.pack(params, ring, odd, base),
        );
        let shift = params.poly_size >> level;
        let double = |(a, b): Ciphertext| (twice(&a), twice(&b));
        match (even, odd) {
            (None, None) => None,
            (Some(e), None) => Some(double(e)),
            (None, Some((a, b))) => Some(double((monomial(&a, shift), monomial(&b, shift)))),
            (Some((ea, eb)), Some((oa, ob))) => {
                let (xa, xb) = (monomial(&oa, shift), monomial(&ob, shift));
                let t = (1usize << level) + 1;
                let diff_a: Vec<U192> = ea
                    .iter()
                    .zip(&xa)
                    .map(|(e, x)| e.wrapping_sub(*x))
                    .collect();
                let diff_b: Vec<U192> = eb
                    .iter()
                    .zip(&xb)
                    .map(|(e, x)| e.wrapping_sub(*x))
                    .collect();
                let (sa, sb) = self.switch(
                    params,
                    ring,
                    level - 1,
                    &automorphism(&diff_a, t),
                    automorphism(&diff_b, t),
                );
                let sum = |e: &[U192], x: &[U192], s: &[U192]| -> Vec<U192> {
                    e.iter()
                        .zip(x)
                        .zip(s)
                        .map(|((e, x), s)| e.wrapping_add(*x).wrapping_add(*s))
                        .collect()
                };
                Some((sum(&ea, &xa, &sa), sum(&eb, &xb, &sb)))
            }
        }
    }

    /// Key switching of (a, b) from τ_t(s) to s with the key of `level` (0-based).
    fn switch(
        &self,
        params: &Params,
        ring: &Ring,
        level: usize,
        a: &[U192],
        mut b: Vec<U192>,
    ) -> Ciphertext {
        let n = params.poly_size;
        let digits = decompose(params, a);
        let (mut acc_a, mut acc_b) = (NttPoly::zero(n), NttPoly::zero(n));
        for (digit, (key_a, key_b)) in digits.iter().zip(&self.prepared[level]) {
            let digit = ring.forward_small(digit);
            ring.mul_accumulate(&mut acc_a, &digit, key_a);
            ring.mul_accumulate(&mut acc_b, &digit, key_b);
        }
        // Σ d_i·(b_i − a_i·s) = τ(a)·τ(s) + small, so b − Σ d_i·b_i and −Σ d_i·a_i decrypt
        // under s to the phase τ(b) − τ(a)·τ(s).
        let a_out: Vec<U192> = ring
            .inverse(acc_a)
            .iter()
            .map(|x| x.wrapping_neg())
            .collect();
        for (b, s) in b.iter_mut().zip(ring.inverse(acc_b)) {
            *b = b.wrapping_sub(s);
        }
        (a_out, b)
    }
}

fn twice(poly: &[U192]) -> Vec<U192> {
    poly.iter().map(|c| c.wrapping_add(*c)).collect()
}

/// X^shift · poly in Z_q[X]/(X^N + 1), 0 ≤ shift < N.
pub(crate) fn monomial(poly: &[U192], shift: usize) -> Vec<U192> {
    let n = poly.len();
    let mut out = vec![U192::ZERO; n];
    for (k, &c) in poly.iter().enumerate() {
        let e = k + shift;
        if e < n {
            out[e] = c;
        } else {
            out[e - n] = c.wrapping_neg();
        }
    }
    out
}

/// τ_t(poly): X ↦ X^t for odd t.
pub(crate) fn automorphism(poly: &[U192], t: usize) -> Vec<U192> {
    let n = poly.len();
    let mut out = vec![U192::ZERO; n];
    for (k, &c) in poly.iter().enumerate() {
        let e = (k * t) % (2 * n);
        if e < n {
            out[e] = c;
        } else {
            out[e - n] = c.wrapping_neg();
        }
    }
    out
}

/// log2 of the weight of key-switching digit i (least significant first):
/// 192 − digits·bits + i·bits.
pub(crate) fn digit_weight_bits(params: &Params, i: usize) -> u32 {
    U192::BITS - params.ks_digits * params.ks_digit_bits + i as u32 * params.ks_digit_bits
}

/// Balanced base-2^bits digits of the top digits·bits bits of every coefficient (rounded).
/// The digit width divides 64 and so does the dropped width, so no digit straddles two limbs.
fn decompose(params: &Params, a: &[U192]) -> Vec<Vec<i64>> {
    let bits = params.ks_digit_bits;
    let drop = U192::BITS - params.ks_digits * bits;
    debug_assert!(64u32.is_multiple_of(bits) && drop.is_multiple_of(bits));
    let base = 1i64 << bits;
    let mask = (1u64 << bits) - 1;
    let half = U192::from_u128(1).shl(drop - 1);
    let mut digits = vec![vec![0i64; a.len()]; params.ks_digits as usize];
    for (k, &c) in a.iter().enumerate() {
        let v = c.wrapping_add(half);
        let mut carry = 0i64;
        for (i, digit) in digits.iter_mut().enumerate() {
            let position = drop + i as u32 * bits;
            let raw = (v.0[(position / 64) as usize] >> (position % 64)) & mask;
            let mut d = raw as i64 + carry;
            carry = 0;
            if d >= base / 2 {
                d -= base;
                carry = 1;
            }
            digit[k] = d;
        }
    }
    digits
}

/// Checks that a packing key belongs to this key pair and parameter set.
pub(crate) fn check_key(params: &Params, key: KeyId, packing: &PackingKey) -> Result<(), HeError> {
    if packing.params_id != params.id || packing.key != key {
        return Err(HeError::WrongKey {
            what: "packing key",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::N8192_Q192;

    #[test]
    fn decomposition_recomposes_the_top_bits() {
        let params = N8192_Q192;
        let a: Vec<U192> = (0..64u64)
            .map(|i| {
                U192([
                    i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    i.wrapping_mul(0xf39c_c060_5ced_c835),
                    (i << 40) ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d),
                ])
            })
            .chain([U192([u64::MAX; 3]), U192::ZERO, U192([0, 0, 1 << 63])])
            .collect();
        let digits = decompose(&params, &a);
        let drop = U192::BITS - params.ks_digits * params.ks_digit_bits;
        for (k, &c) in a.iter().enumerate() {
            let recomposed = digits.iter().enumerate().fold(U192::ZERO, |acc, (i, d)| {
                acc.wrapping_add(U192::from_i64(d[k]).shl(digit_weight_bits(&params, i)))
            });
            let error = c.wrapping_sub(recomposed).to_i128().expect("a small error");
            assert!(error.unsigned_abs() <= 1u128 << (drop - 1), "{k}: {error}");
            assert!(digits
                .iter()
                .all(|d| d[k].abs() <= 1 << (params.ks_digit_bits - 1)));
        }
    }

    #[test]
    fn automorphisms_compose_and_fix_the_slots() {
        let n = 16;
        let poly: Vec<U192> = (1..=n as u128).map(U192::from_u128).collect();
        // τ_3 then its inverse τ_11 (3·11 = 33 ≡ 1 mod 32) is the identity.
        assert_eq!(automorphism(&automorphism(&poly, 3), 11), poly);
        // τ_(2^ℓ+1) maps slot j·N/2^ℓ to itself with sign (−1)^j.
        let t = automorphism(&poly, 5);
        assert_eq!(t[0], poly[0]);
        assert_eq!(t[4], poly[4].wrapping_neg());
        assert_eq!(t[8], poly[8]);
        // X^(N/2)·X^(N/2) = X^N = −1.
        assert_eq!(
            monomial(&monomial(&poly, 8), 8),
            poly.iter().map(|c| c.wrapping_neg()).collect::<Vec<_>>()
        );
    }
}
