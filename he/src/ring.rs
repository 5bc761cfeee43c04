//! Polynomials of Z/2^192[X]/(X^N + 1) and their exact products.
//!
//! A product of a ciphertext polynomial (192-bit coefficients, read centred) and a plaintext
//! polynomial (coefficients below 2^15), accumulated over up to 2^20 coefficients' worth of
//! blocks, is an integer polynomial whose coefficients stay below 2^227 in absolute value. We
//! compute it exactly modulo four 62-bit NTT primes (product ≈ 2^248) with `tfhe-ntt`,
//! accumulate in the NTT domain, and reconstruct with the Chinese remainder theorem (Garner),
//! centred, reduced modulo 2^192. No floating point, no rounding.

use std::sync::Arc;

use tfhe_ntt::prime64::Plan;

use crate::params::Params;
use crate::wide::U192;

/// Four primes ≡ 1 mod 2^15 below 2^62 (so `tfhe-ntt` uses its fast reduction code) whose
/// product is just under 2^248.
pub(crate) const PRIMES: [u64; 4] = [
    0x3fff_ffff_ffff_0001,
    0x3fff_ffff_fffe_8001,
    0x3fff_ffff_ffe8_0001,
    0x3fff_ffff_ffd7_8001,
];

const LIMBS: usize = PRIMES.len();

/// Largest accumulated |coefficient| the reconstruction supports, as a power of two: the centred
/// CRT is exact below P/2 ≈ 2^247, with a margin of 2^10.
pub(crate) const MAX_PRODUCT_BITS: u32 = 237;

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
    plans: [Plan; LIMBS],
    /// inv[k][j] = p_j^-1 mod p_k for j < k (Garner's constants).
    inv: [[ShoupConstant; LIMBS]; LIMBS],
    /// 2^64 and 2^128 modulo each prime, for reducing a 192-bit coefficient.
    pow64: [u64; LIMBS],
    pow128: [u64; LIMBS],
    /// −2^192 modulo each prime, added for negative coefficients.
    neg192: [u64; LIMBS],
    /// p0, p0·p1, p0·p1·p2 and P = p0·p1·p2·p3, modulo 2^192.
    partial: [U192; LIMBS],
    big_p: U192,
}

/// A polynomial in NTT form: its residues modulo each prime, transformed, limb after limb.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NttPoly {
    limbs: Vec<u64>,
}

impl NttPoly {
    pub(crate) fn zero(n: usize) -> Self {
        NttPoly {
            limbs: vec![0; LIMBS * n],
        }
    }

    /// Bytes held, for memory accounting.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.limbs.len() * 8
    }
}

/// 2^62 − p for each prime: below 2^22, so 2^62 ≡ δ (mod p) reduces by multiplication.
const DELTA: [u64; LIMBS] = [
    (1 << 62) - PRIMES[0],
    (1 << 62) - PRIMES[1],
    (1 << 62) - PRIMES[2],
    (1 << 62) - PRIMES[3],
];

const LOW_62: u128 = (1 << 62) - 1;

/// x mod p_k for any x < 2^128, with 2^62 ≡ δ_k folded in twice (δ_k < 2^22).
fn reduce_wide(x: u128, k: usize) -> u64 {
    let delta = u128::from(DELTA[k]);
    let y = (x >> 62) * delta + (x & LOW_62); // < 2^88 + 2^62
    let z = ((y >> 62) * delta + (y & LOW_62)) as u64; // < 2^62 + 2^48 < 2·p_k
    let p = PRIMES[k];
    if z >= p {
        z - p
    } else {
        z
    }
}

impl Ring {
    /// Plans for polynomials of `n` coefficients (a power of two, 16 ≤ n ≤ 16384).
    pub(crate) fn new(n: usize) -> Option<Self> {
        let plans = [
            Plan::try_new(n, PRIMES[0])?,
            Plan::try_new(n, PRIMES[1])?,
            Plan::try_new(n, PRIMES[2])?,
            Plan::try_new(n, PRIMES[3])?,
        ];
        let inv = std::array::from_fn(|k| {
            std::array::from_fn(|j| {
                let value = if j < k {
                    inv_mod(PRIMES[j], PRIMES[k])
                } else {
                    0
                };
                ShoupConstant::new(value, PRIMES[k])
            })
        });
        let pow = |bits: u32, p: u64| {
            // 2^bits mod p by repeated doubling of 2^64 mod p.
            let two64 = ((1u128 << 64) % u128::from(p)) as u64;
            (0..bits / 64 - 1).fold(two64, |acc, _| mul_mod(acc, two64, p))
        };
        let mut partial = [U192::ZERO; LIMBS];
        let mut product = U192::from_u128(1);
        for (k, &p) in PRIMES.iter().enumerate() {
            product = product.wrapping_mul_u64(p);
            partial[k] = product;
        }
        let big_p = partial[LIMBS - 1];
        Some(Ring {
            n,
            plans,
            inv,
            pow64: PRIMES.map(|p| pow(64, p)),
            pow128: PRIMES.map(|p| pow(128, p)),
            neg192: PRIMES.map(|p| (p - pow(192, p)) % p),
            partial,
            big_p,
        })
    }

    /// A coefficient of Z/2^192, read as a centred signed integer, modulo prime `k`.
    fn residue(&self, k: usize, c: U192) -> u64 {
        let [c0, c1, c2] = c.0;
        // c0 + c1·(2^64 mod p) + c2·(2^128 mod p) [− 2^192 mod p]: below 2^64 + 2^127 + 2^62.
        let negative = u128::from(c.is_negative()) * u128::from(self.neg192[k]);
        let acc = u128::from(c0)
            + u128::from(c1) * u128::from(self.pow64[k])
            + u128::from(c2) * u128::from(self.pow128[k])
            + negative;
        reduce_wide(acc, k)
    }

    /// NTT form of a polynomial with coefficients in Z/2^192, read as signed (centred) integers.
    pub(crate) fn forward_wide(&self, poly: &[U192]) -> NttPoly {
        debug_assert_eq!(poly.len(), self.n);
        let mut out = NttPoly::zero(self.n);
        for (k, plan) in self.plans.iter().enumerate() {
            let limb = &mut out.limbs[k * self.n..(k + 1) * self.n];
            for (r, &c) in limb.iter_mut().zip(poly) {
                *r = self.residue(k, c);
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

    /// Back to coefficients: exact integers (|c| < 2^[`MAX_PRODUCT_BITS`]) reduced modulo 2^192.
    pub(crate) fn inverse(&self, mut poly: NttPoly) -> Vec<U192> {
        for (k, plan) in self.plans.iter().enumerate() {
            let limb = &mut poly.limbs[k * self.n..(k + 1) * self.n];
            plan.inv(limb);
            plan.normalize(limb);
        }
        let n = self.n;
        let limbs = &poly.limbs;
        let half_last = PRIMES[LIMBS - 1] / 2;
        (0..n)
            .map(|i| {
                // Garner: x = r0 + p0·t1 + p0·p1·t2 + p0·p1·p2·t3 with t_k < p_k. Every
                // residue is below p0 < 2·p_k, so one conditional subtraction reduces it.
                let below = |x: u64, p: u64| if x >= p { x - p } else { x };
                let mut t = [0u64; LIMBS];
                for k in 0..LIMBS {
                    let p = PRIMES[k];
                    // Normalised residues are below p_k; earlier digits below p0 < 2·p_k.
                    let mut u = limbs[k * n + i];
                    for (&t_j, inv) in t[..k].iter().zip(&self.inv[k]) {
                        u = inv.mul(below(u + p - below(t_j, p), p));
                    }
                    t[k] = u;
                }
                // x = t0 + p0·t1 + (p0·p1)·t2 + (p0·p1·p2)·t3: the partial products have one,
                // two and three limbs.
                let low = u128::from(t[0]) + u128::from(PRIMES[0]) * u128::from(t[1]);
                let x = U192::from_u128(low)
                    .wrapping_add(self.partial[1].wrapping_mul_u64(t[2]))
                    .wrapping_add(self.partial[2].wrapping_mul_u64(t[3]));
                // Values are far from P/2, so the top digit alone decides the sign.
                if t[LIMBS - 1] > half_last {
                    x.wrapping_sub(self.big_p)
                } else {
                    x
                }
            })
            .collect()
    }

    /// Exact product of two polynomials modulo (X^N + 1, 2^192), the second one small.
    pub(crate) fn mul_wide_small(&self, wide: &[U192], small: &[i64]) -> Vec<U192> {
        self.product(&self.forward_wide(wide), &self.forward_small(small))
    }

    /// The coefficients of the product of two transformed polynomials (modulo 2^192).
    pub(crate) fn product(&self, a: &NttPoly, b: &NttPoly) -> Vec<U192> {
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

/// Schoolbook negacyclic product modulo 2^192, the reference the NTT path is tested against.
#[cfg(test)]
pub(crate) fn schoolbook(wide: &[U192], small: &[i64]) -> Vec<U192> {
    let n = wide.len();
    let mut out = vec![U192::ZERO; n];
    for (i, &a) in wide.iter().enumerate() {
        for (j, &b) in small.iter().enumerate() {
            let term = a.wrapping_mul_i64(b);
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
    use crate::wide::U192;
    use rand::{Rng, RngExt};

    #[test]
    fn special_form_reductions_match_the_remainder() {
        let mut rng = rand::rng();
        for k in 0..LIMBS {
            let p = PRIMES[k];
            assert!(DELTA[k] < 1 << 22);
            let edges = [
                0u128,
                1,
                u128::from(p) - 1,
                u128::from(p),
                1 << 62,
                u128::MAX,
            ];
            let random = (0..10_000).map(|_| rng.random::<u128>() >> rng.random_range(0..128));
            for x in edges.into_iter().chain(random) {
                assert_eq!(u128::from(reduce_wide(x, k)), x % u128::from(p), "{x}");
            }
        }
    }

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

    fn random_wide(rng: &mut impl RngExt, n: usize) -> Vec<U192> {
        (0..n)
            .map(|_| U192([rng.random(), rng.random(), rng.random()]))
            .collect()
    }

    #[test]
    fn ntt_product_equals_schoolbook_modulo_2_192() {
        let mut rng = rand::rng();
        for n in [16usize, 64, 256] {
            let ring = Ring::new(n).unwrap();
            let wide = random_wide(&mut rng, n);
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
        let mut expected = vec![U192::ZERO; n];
        for _ in 0..300 {
            let wide = random_wide(&mut rng, n);
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
