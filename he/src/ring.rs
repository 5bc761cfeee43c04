//! Polynomials of Z/2^128[X]/(X^N + 1) and their exact products.
//!
//! A product of a ciphertext polynomial (128-bit coefficients) and a plaintext polynomial (16-bit
//! coefficients), accumulated over many blocks, is an integer polynomial whose coefficients stay
//! below 2^170 in absolute value. We compute it exactly modulo three 62-bit NTT primes
//! (product ≈ 2^186) with `tfhe-ntt`, accumulate in the NTT domain, and reconstruct with the
//! Chinese remainder theorem, centred, reduced modulo 2^128. No floating point, no rounding.

use std::sync::Arc;

use tfhe_ntt::prime64::Plan;

use crate::params::Params;

/// Three primes ≡ 1 mod 2^15 below 2^62 (so `tfhe-ntt` uses its fast reduction code) whose
/// product is just under 2^186.
pub(crate) const PRIMES: [u64; 3] = [
    0x3fff_ffff_ffff_0001,
    0x3fff_ffff_fffe_8001,
    0x3fff_ffff_ffe8_0001,
];

/// Largest accumulated |coefficient| the reconstruction supports, as a power of two: the centred
/// CRT is exact below P/2 ≈ 2^185, with a margin of 2^10.
pub(crate) const MAX_PRODUCT_BITS: u32 = 175;

fn mul_mod(a: u64, b: u64, p: u64) -> u64 {
    ((u128::from(a) * u128::from(b)) % u128::from(p)) as u64
}

fn pow_mod(mut base: u64, mut exp: u64, p: u64) -> u64 {
    let mut acc = 1u64;
    while exp > 0 {
        if exp & 1 == 1 {
            acc = mul_mod(acc, base, p);
        }
        base = mul_mod(base, base, p);
        exp >>= 1;
    }
    acc
}

fn inv_mod(a: u64, p: u64) -> u64 {
    pow_mod(a % p, p - 2, p)
}

/// Multiplication by a fixed constant modulo a fixed p < 2^63 with Shoup's precomputed
/// quotient: no division on the hot path of the CRT.
#[derive(Clone, Copy)]
struct ShoupConstant {
    value: u64,
    quotient: u64,
    p: u64,
}

impl ShoupConstant {
    fn new(value: u64, p: u64) -> Self {
        ShoupConstant {
            value,
            quotient: ((u128::from(value) << 64) / u128::from(p)) as u64,
            p,
        }
    }

    /// x·value mod p for x < p.
    fn mul(self, x: u64) -> u64 {
        let q = ((u128::from(x) * u128::from(self.quotient)) >> 64) as u64;
        let r = x
            .wrapping_mul(self.value)
            .wrapping_sub(q.wrapping_mul(self.p));
        if r >= self.p {
            r - self.p
        } else {
            r
        }
    }
}

/// NTT plans for one polynomial size and the CRT constants.
pub(crate) struct Ring {
    n: usize,
    plans: [Plan; 3],
    /// p0^-1 mod p1, p0^-1 mod p2, p1^-1 mod p2.
    inv_p0_mod_p1: ShoupConstant,
    inv_p0_mod_p2: ShoupConstant,
    inv_p1_mod_p2: ShoupConstant,
}

/// A polynomial in NTT form: its residues modulo each prime, transformed, limb after limb.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NttPoly {
    limbs: Vec<u64>,
}

impl NttPoly {
    pub(crate) fn zero(n: usize) -> Self {
        NttPoly {
            limbs: vec![0; 3 * n],
        }
    }

    /// Bytes held, for memory accounting.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.limbs.len() * 8
    }
}

impl Ring {
    /// Plans for polynomials of `n` coefficients (a power of two, 16 ≤ n ≤ 16384).
    pub(crate) fn new(n: usize) -> Option<Self> {
        let plans = [
            Plan::try_new(n, PRIMES[0])?,
            Plan::try_new(n, PRIMES[1])?,
            Plan::try_new(n, PRIMES[2])?,
        ];
        Some(Ring {
            n,
            plans,
            inv_p0_mod_p1: ShoupConstant::new(inv_mod(PRIMES[0], PRIMES[1]), PRIMES[1]),
            inv_p0_mod_p2: ShoupConstant::new(inv_mod(PRIMES[0], PRIMES[2]), PRIMES[2]),
            inv_p1_mod_p2: ShoupConstant::new(inv_mod(PRIMES[1], PRIMES[2]), PRIMES[2]),
        })
    }

    /// NTT form of a polynomial with coefficients in Z/2^128, read as signed (centred) integers.
    pub(crate) fn forward_wide(&self, poly: &[u128]) -> NttPoly {
        debug_assert_eq!(poly.len(), self.n);
        let mut out = NttPoly::zero(self.n);
        for (k, plan) in self.plans.iter().enumerate() {
            let p = i128::from(PRIMES[k]);
            let limb = &mut out.limbs[k * self.n..(k + 1) * self.n];
            for (r, &c) in limb.iter_mut().zip(poly) {
                *r = (c as i128).rem_euclid(p) as u64;
            }
            plan.fwd(limb);
        }
        out
    }

    /// NTT form of a polynomial with small signed coefficients (|c| < 2^61).
    pub(crate) fn forward_small(&self, poly: &[i64]) -> NttPoly {
        debug_assert_eq!(poly.len(), self.n);
        debug_assert!(poly.iter().all(|c| c.unsigned_abs() < 1 << 61));
        let mut out = NttPoly::zero(self.n);
        for (k, plan) in self.plans.iter().enumerate() {
            let p = PRIMES[k];
            let limb = &mut out.limbs[k * self.n..(k + 1) * self.n];
            for (r, &c) in limb.iter_mut().zip(poly) {
                // |c| < p: a negative value is p − |c|, no division needed.
                *r = if c < 0 {
                    p - c.unsigned_abs()
                } else {
                    c as u64
                };
            }
            plan.fwd(limb);
        }
        out
    }

    /// [`forward_small`](Self::forward_small) of x_0 − Σ_{i≥1} x_i X^(n−i) for 0/1 values x_i,
    /// given the positions i of the ones (each below n).
    pub(crate) fn forward_reversed_ones(&self, ones: &[usize]) -> NttPoly {
        let mut out = NttPoly::zero(self.n);
        for (k, plan) in self.plans.iter().enumerate() {
            let limb = &mut out.limbs[k * self.n..(k + 1) * self.n];
            for &i in ones {
                debug_assert!(i < self.n);
                limb[(self.n - i) % self.n] = if i == 0 { 1 } else { PRIMES[k] - 1 };
            }
            plan.fwd(limb);
        }
        out
    }

    /// acc += a ⊙ b (pointwise, in the NTT domain).
    pub(crate) fn mul_accumulate(&self, acc: &mut NttPoly, a: &NttPoly, b: &NttPoly) {
        for (k, plan) in self.plans.iter().enumerate() {
            let range = k * self.n..(k + 1) * self.n;
            plan.mul_accumulate(
                &mut acc.limbs[range.clone()],
                &a.limbs[range.clone()],
                &b.limbs[range],
            );
        }
    }

    /// Back to coefficients: exact integers (|c| < 2^[`MAX_PRODUCT_BITS`]) reduced modulo 2^128.
    pub(crate) fn inverse(&self, mut poly: NttPoly) -> Vec<u128> {
        for (k, plan) in self.plans.iter().enumerate() {
            let limb = &mut poly.limbs[k * self.n..(k + 1) * self.n];
            plan.inv(limb);
            plan.normalize(limb);
        }
        let (l0, rest) = poly.limbs.split_at(self.n);
        let (l1, l2) = rest.split_at(self.n);
        let [p0, p1, p2] = PRIMES;
        let p0p1 = u128::from(p0) * u128::from(p1);
        // P mod 2^128, subtracted from values in the upper half to centre them.
        let big_p = p0p1.wrapping_mul(u128::from(p2));
        l0.iter()
            .zip(l1)
            .zip(l2)
            .map(|((&r0, &r1), &r2)| {
                // Garner: x = r0 + p0·t1 + p0·p1·t2 with t1 < p1, t2 < p2. Residues are
                // below p0 < 2·p2 < 2·p1, so one conditional subtraction reduces them.
                let reduce = |x: u64, p: u64| if x >= p { x - p } else { x };
                let sub = |a: u64, b: u64, p: u64| reduce(a + p - b, p);
                let t1 = self.inv_p0_mod_p1.mul(sub(r1, reduce(r0, p1), p1));
                let u = self.inv_p0_mod_p2.mul(sub(r2, reduce(r0, p2), p2));
                let t2 = self.inv_p1_mod_p2.mul(sub(u, reduce(t1, p2), p2));
                let x = u128::from(r0)
                    .wrapping_add(u128::from(p0) * u128::from(t1))
                    .wrapping_add(p0p1.wrapping_mul(u128::from(t2)));
                // Values are far from P/2, so the top digit alone decides the sign.
                if t2 > p2 / 2 {
                    x.wrapping_sub(big_p)
                } else {
                    x
                }
            })
            .collect()
    }

    /// Exact product of two polynomials modulo (X^N + 1, 2^128), the second one small.
    pub(crate) fn mul_wide_small(&self, wide: &[u128], small: &[i64]) -> Vec<u128> {
        self.product(&self.forward_wide(wide), &self.forward_small(small))
    }

    /// The coefficients of the product of two transformed polynomials (modulo 2^128).
    pub(crate) fn product(&self, a: &NttPoly, b: &NttPoly) -> Vec<u128> {
        let mut acc = NttPoly::zero(self.n);
        self.mul_accumulate(&mut acc, a, b);
        self.inverse(acc)
    }
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

/// Schoolbook negacyclic product modulo 2^128, the reference the NTT path is tested against.
#[cfg(test)]
pub(crate) fn schoolbook(wide: &[u128], small: &[i64]) -> Vec<u128> {
    let n = wide.len();
    let mut out = vec![0u128; n];
    for (i, &a) in wide.iter().enumerate() {
        for (j, &b) in small.iter().enumerate() {
            let term = a.wrapping_mul(b as i128 as u128);
            let k = i + j;
            if k < n {
                out[k] = out[k].wrapping_add(term);
            } else {
                out[k - n] = out[k - n].wrapping_sub(term);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngExt};

    #[test]
    fn primes_are_ntt_friendly_and_large_enough() {
        for p in PRIMES {
            assert_eq!(p % (1 << 15), 1);
            assert!(
                p < 6_148_914_691_236_517_206,
                "fast reduction needs p < 2^62.4"
            );
        }
        let bits: f64 = PRIMES.iter().map(|&p| (p as f64).log2()).sum();
        assert!(bits > f64::from(MAX_PRODUCT_BITS) + 10.0);
    }

    #[test]
    fn ntt_product_equals_schoolbook_modulo_2_128() {
        let mut rng = rand::rng();
        for n in [16usize, 64, 256] {
            let ring = Ring::new(n).unwrap();
            let wide: Vec<u128> = (0..n).map(|_| rng.random()).collect();
            let small: Vec<i64> = (0..n).map(|_| rng.random_range(-32768..32768)).collect();
            assert_eq!(
                ring.mul_wide_small(&wide, &small),
                schoolbook(&wide, &small)
            );
        }
    }

    #[test]
    fn accumulating_many_products_stays_exact() {
        let mut rng = rand::rng();
        let n = 32;
        let ring = Ring::new(n).unwrap();
        let mut acc = NttPoly::zero(n);
        let mut expected = vec![0u128; n];
        for _ in 0..300 {
            let wide: Vec<u128> = (0..n).map(|_| rng.random()).collect();
            let small: Vec<i64> = (0..n).map(|_| rng.random_range(-32768..32768)).collect();
            ring.mul_accumulate(
                &mut acc,
                &ring.forward_wide(&wide),
                &ring.forward_small(&small),
            );
            for (e, s) in expected.iter_mut().zip(schoolbook(&wide, &small)) {
                *e = e.wrapping_add(s);
            }
        }
        assert_eq!(ring.inverse(acc), expected);
        let _ = rng.next_u64();
    }
}
