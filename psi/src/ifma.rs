//! Eight Ristretto255 points at a time with AVX-512 IFMA.
//!
//! PSI multiplies every point a party handles by the same secret scalar, so eight points can walk
//! one window schedule together: each 512-bit register holds one limb of eight field elements,
//! and `vpmadd52luq`/`vpmadd52huq` multiply all eight limbs at once. Everything a lane needs —
//! RFC 9496's hash to the group, decoding, the scalar multiplication and encoding — is done here
//! eight lanes wide, so no lane ever leaves the vector unit between its id and its output bytes.
//!
//! # Representation and invariants
//!
//! A field element of GF(2^255 − 19) is five limbs in radix 2^51. Every [`Fe`] this module
//! makes is *reduced*: each limb is below 2^51 + 2^15. IFMA multiplies only the low 52 bits of
//! its inputs, so [`Fe::mul`] and [`Fe::square`] are exact exactly when their inputs are
//! reduced; every operation below therefore ends in a carry that restores the bound (the bound
//! each step relies on is written where it is used, and the tests check it on extreme inputs).
//!
//! # Constant time
//!
//! There is no branch and no memory index that depends on the scalar, the ids or any
//! intermediate value: digits of the scalar select table entries by scanning the whole table
//! with masked blends (the masks pass through an optimisation barrier so the compiler cannot
//! turn the scan back into an index), signs are applied with masked blends, and validity is a
//! lane mask computed for every lane. Bytes are converted to and from limbs with straight-line
//! integer code. The one data-dependent branch is decoding's early return on an invalid
//! encoding from a peer: the received points are public to their receiver.
//!
//! # Safety
//!
//! The arithmetic is written as safe functions with `#[target_feature(enable = "avx512f,
//! avx512ifma")]`; they may only run on a CPU with those features. The only way to reach them
//! from outside is through an [`Ifma`] value, which [`Ifma::detect`] creates only after the CPU
//! reported both features. The two other `unsafe` blocks are unaligned loads and stores of
//! eight `u64`s from and to arrays of exactly eight `u64`s.
#![allow(unsafe_code)]

use core::arch::x86_64::{
    __m512i, __mmask8, _mm512_add_epi64, _mm512_and_si512, _mm512_cmpeq_epi64_mask,
    _mm512_loadu_epi64, _mm512_madd52hi_epu64, _mm512_madd52lo_epu64, _mm512_mask_blend_epi64,
    _mm512_set1_epi64, _mm512_setzero_si512, _mm512_slli_epi64, _mm512_srli_epi64,
    _mm512_storeu_epi64, _mm512_sub_epi64, _mm512_test_epi64_mask,
};

use curve25519_dalek::scalar::Scalar;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Points per register.
pub(crate) const LANES: usize = 8;

/// Proof that the running CPU has AVX-512F and AVX-512 IFMA: the only way into this module's
/// arithmetic.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ifma(());

impl Ifma {
    /// `Some` on a CPU with AVX-512F and AVX-512 IFMA.
    pub(crate) fn detect() -> Option<Ifma> {
        (std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512ifma"))
        .then_some(Ifma(()))
    }

    /// 2·half·H(u) for each 64-byte uniform string, H being RFC 9496's `from_uniform_bytes`,
    /// encoded, in order.
    pub(crate) fn hash_and_multiply(self, uniform: &[[u8; 64]], half: &Digits) -> Vec<[u8; 32]> {
        // SAFETY: `self` exists only if `detect` found AVX-512F and AVX-512 IFMA.
        unsafe { hash_and_multiply(uniform, half) }
    }

    /// 2·half·P for each encoded point, encoded, in order; `Err(i)` for the first input that is
    /// not a valid canonical encoding.
    pub(crate) fn decode_and_multiply(
        self,
        encodings: &[[u8; 32]],
        half: &Digits,
    ) -> Result<Vec<[u8; 32]>, usize> {
        // SAFETY: `self` exists only if `detect` found AVX-512F and AVX-512 IFMA.
        unsafe { decode_and_multiply(encodings, half) }
    }

    /// The multiplications alone, for benchmarks: decodes `encodings` (which must be valid),
    /// multiplies the eight points by `key` `rounds` times over, each result the next input, and
    /// encodes the last.
    pub(crate) fn multiply_repeatedly(
        self,
        encodings: &[[u8; 32]; LANES],
        key: &Digits,
        rounds: usize,
    ) -> [[u8; 32]; LANES] {
        // SAFETY: `self` exists only if `detect` found AVX-512F and AVX-512 IFMA.
        unsafe { multiply_repeatedly(encodings, key, rounds) }
    }
}

/// A scalar in signed radix 16: 64 digits in [−8, 8], least significant first, Σ dᵢ·16ⁱ = k.
/// Secret; zeroised on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct Digits([i8; 64]);

impl Digits {
    /// The digits of a canonical scalar (below 2^253, so the top digit is at most 2).
    pub(crate) fn of(scalar: &Scalar) -> Digits {
        // Built in place, so no copy of the digits outlives the zeroising value.
        let mut digits = Digits([0i8; 64]);
        let d = &mut digits.0;
        for (i, byte) in scalar.as_bytes().iter().enumerate() {
            d[2 * i] = (byte & 15) as i8;
            d[2 * i + 1] = (byte >> 4) as i8;
        }
        // Move every digit into [−8, 8) by carrying into the next one; branch-free.
        for i in 0..63 {
            let carry = (d[i] + 8) >> 4;
            d[i] -= carry << 4;
            d[i + 1] += carry;
        }
        // A canonical scalar's top digit is at most 2; above 8 no table entry would match.
        debug_assert!(d[63] <= 8);
        digits
    }
}

impl std::fmt::Debug for Digits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Digits(<secret>)")
    }
}

const MASK51: u64 = (1 << 51) - 1;

/// Limbs of 4p, added before a subtraction so that no limb goes below zero: each exceeds
/// 2^52 > any reduced limb.
const FOUR_P: [u64; 5] = [
    4 * ((1 << 51) - 19),
    4 * MASK51,
    4 * MASK51,
    4 * MASK51,
    4 * MASK51,
];

// Curve constants (RFC 9496, section 4.1), five 51-bit limbs each.
const ONE: [u64; 5] = [1, 0, 0, 0, 0];
const D: [u64; 5] = [
    0x34dca135978a3,
    0x1a8283b156ebd,
    0x5e7a26001c029,
    0x739c663a03cbb,
    0x52036cee2b6ff,
];
const D2: [u64; 5] = [
    0x69b9426b2f159,
    0x35050762add7a,
    0x3cf44c0038052,
    0x6738cc7407977,
    0x2406d9dc56dff,
];
const SQRT_M1: [u64; 5] = [
    0x61b274a0ea0b0,
    0x0d5a5fc8f189d,
    0x7ef5e9cbd0c60,
    0x78595a6804c9e,
    0x2b8324804fc1d,
];
const ONE_MINUS_D_SQ: [u64; 5] = [
    0x409c1945fc176,
    0x719abc6a1fc4f,
    0x1c37f90b20684,
    0x06bccca55eedf,
    0x029072a8b2b3e,
];
const D_MINUS_ONE_SQ: [u64; 5] = [
    0x55aaa44ed4d20,
    0x59603c3332635,
    0x26d3baf4a7928,
    0x120a66e6997a9,
    0x5968b37af66c2,
];
const SQRT_AD_MINUS_ONE: [u64; 5] = [
    0x7f6a0497b2e1b,
    0x1836f0a97afd2,
    0x7d747f6be7638,
    0x456079e7e6498,
    0x376931bf2b834,
];
const INVSQRT_A_MINUS_D: [u64; 5] = [
    0x0fdaa805d40ea,
    0x2eb482e57d339,
    0x007610274bc58,
    0x6510b613dc8ff,
    0x786c8905cfaff,
];

/// Eight elements of GF(2^255 − 19), limb by limb; always reduced (see the module doc).
#[derive(Clone, Copy)]
struct Fe([__m512i; 5]);

/// All lanes set.
const ALL: __mmask8 = 0xff;

#[target_feature(enable = "avx512f,avx512ifma")]
fn splat(value: u64) -> __m512i {
    _mm512_set1_epi64(value as i64)
}

#[target_feature(enable = "avx512f,avx512ifma")]
fn load(words: &[u64; LANES]) -> __m512i {
    // SAFETY: `words` is eight readable u64s; the load has no alignment requirement.
    unsafe { _mm512_loadu_epi64(words.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f,avx512ifma")]
fn store(vector: __m512i) -> [u64; LANES] {
    let mut words = [0u64; LANES];
    // SAFETY: `words` is eight writable u64s; the store has no alignment requirement.
    unsafe { _mm512_storeu_epi64(words.as_mut_ptr().cast(), vector) };
    words
}

/// 19·x for limbs below 2^58, with shifts and adds.
#[target_feature(enable = "avx512f,avx512ifma")]
fn times_19(x: __m512i) -> __m512i {
    let x16 = _mm512_slli_epi64::<4>(x);
    let x2 = _mm512_slli_epi64::<1>(x);
    _mm512_add_epi64(_mm512_add_epi64(x16, x2), x)
}

impl Fe {
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn constant(limbs: [u64; 5]) -> Fe {
        Fe(limbs.map(|limb| splat(limb)))
    }

    #[target_feature(enable = "avx512f,avx512ifma")]
    fn zero() -> Fe {
        Fe([_mm512_setzero_si512(); 5])
    }

    /// Lane i's limbs from `lanes[i]` (each limb below 2^52).
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn from_lanes(lanes: &[[u64; 5]; LANES]) -> Fe {
        let mut limbs = [_mm512_setzero_si512(); 5];
        for (k, limb) in limbs.iter_mut().enumerate() {
            *limb = load(&std::array::from_fn(|lane| lanes[lane][k]));
        }
        Fe(limbs)
    }

    #[target_feature(enable = "avx512f,avx512ifma")]
    fn to_lanes(self) -> [[u64; 5]; LANES] {
        let limbs = self.0.map(|limb| store(limb));
        std::array::from_fn(|lane| std::array::from_fn(|k| limbs[k][lane]))
    }

    /// One carry step on every limb at once: limbs below 2^61 in, reduced out (a limb keeps
    /// its low 51 bits plus the carry of the limb below, below 2^11; limb 0 gains 19 times the
    /// carry out of limb 4, below 2^15).
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn carry(z: [__m512i; 5]) -> Fe {
        let mask = splat(MASK51);
        let c = z.map(|limb| _mm512_srli_epi64::<51>(limb));
        let low = z.map(|limb| _mm512_and_si512(limb, mask));
        Fe([
            _mm512_madd52lo_epu64(low[0], c[4], splat(19)),
            _mm512_add_epi64(low[1], c[0]),
            _mm512_add_epi64(low[2], c[1]),
            _mm512_add_epi64(low[3], c[2]),
            _mm512_add_epi64(low[4], c[3]),
        ])
    }

    #[target_feature(enable = "avx512f,avx512ifma")]
    fn add(self, other: Fe) -> Fe {
        // Reduced + reduced < 2^53.
        Fe::carry(std::array::from_fn(|k| {
            _mm512_add_epi64(self.0[k], other.0[k])
        }))
    }

    #[target_feature(enable = "avx512f,avx512ifma")]
    fn sub(self, other: Fe) -> Fe {
        // 4p's limbs exceed any reduced limb, so nothing wraps; the sum stays below 2^54.
        Fe::carry(std::array::from_fn(|k| {
            _mm512_sub_epi64(_mm512_add_epi64(self.0[k], splat(FOUR_P[k])), other.0[k])
        }))
    }

    #[target_feature(enable = "avx512f,avx512ifma")]
    fn neg(self) -> Fe {
        Fe::zero().sub(self)
    }

    /// Folds a product's ten positions (z_k = lo_k + 2·hi_k, each below 15·2^52) into five:
    /// 2^255 ≡ 19, so z_k + 19·z_{k+5} < 2^61, then one carry step.
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn fold(z: [__m512i; 10]) -> Fe {
        Fe::carry(std::array::from_fn(|k| {
            _mm512_add_epi64(z[k], times_19(z[k + 5]))
        }))
    }

    #[target_feature(enable = "avx512f,avx512ifma")]
    fn mul(self, other: Fe) -> Fe {
        // a_i·b_j < 2^104 is lo + hi·2^52 with both below 2^52; at weight 2^(51(i+j)) that is
        // lo at position i+j and 2·hi at position i+j+1.
        let (a, b) = (self.0, other.0);
        let mut lo = [_mm512_setzero_si512(); 10];
        let mut hi = [_mm512_setzero_si512(); 10];
        for i in 0..5 {
            for j in 0..5 {
                lo[i + j] = _mm512_madd52lo_epu64(lo[i + j], a[i], b[j]);
                hi[i + j + 1] = _mm512_madd52hi_epu64(hi[i + j + 1], a[i], b[j]);
            }
        }
        Fe::fold(std::array::from_fn(|k| {
            _mm512_add_epi64(lo[k], _mm512_slli_epi64::<1>(hi[k]))
        }))
    }

    #[target_feature(enable = "avx512f,avx512ifma")]
    fn square(self) -> Fe {
        // Cross products a_i·a_j (i < j) count twice, so their lo halves join the doubled
        // accumulator and their hi halves a quadrupled one.
        let a = self.0;
        let mut once = [_mm512_setzero_si512(); 10];
        let mut twice = [_mm512_setzero_si512(); 10];
        let mut four = [_mm512_setzero_si512(); 10];
        for i in 0..5 {
            once[2 * i] = _mm512_madd52lo_epu64(once[2 * i], a[i], a[i]);
            twice[2 * i + 1] = _mm512_madd52hi_epu64(twice[2 * i + 1], a[i], a[i]);
            for j in i + 1..5 {
                twice[i + j] = _mm512_madd52lo_epu64(twice[i + j], a[i], a[j]);
                four[i + j + 1] = _mm512_madd52hi_epu64(four[i + j + 1], a[i], a[j]);
            }
        }
        // At most one, three and two terms respectively: below 15·2^52 as in `mul`.
        Fe::fold(std::array::from_fn(|k| {
            _mm512_add_epi64(
                _mm512_add_epi64(once[k], _mm512_slli_epi64::<1>(twice[k])),
                _mm512_slli_epi64::<2>(four[k]),
            )
        }))
    }

    #[target_feature(enable = "avx512f,avx512ifma")]
    fn square_n(self, n: u32) -> Fe {
        let mut x = self;
        for _ in 0..n {
            x = x.square();
        }
        x
    }

    /// The unique representative below p, limbs below 2^51.
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn canonical(self) -> Fe {
        let mask = splat(MASK51);
        let l = self.0;
        // A reduced value is below 2^255 + 2^220 < 2p, so q = ⌊(x + 19)/2^255⌋ is 1 exactly
        // when x ≥ p; the chain computes it exactly for any non-negative limbs.
        let mut q = _mm512_srli_epi64::<51>(_mm512_add_epi64(l[0], splat(19)));
        for limb in &l[1..] {
            q = _mm512_srli_epi64::<51>(_mm512_add_epi64(*limb, q));
        }
        // x − q·p = x + 19q − q·2^255: add 19q, carry through, drop bit 255.
        let mut out = [_mm512_setzero_si512(); 5];
        let mut carry = _mm512_madd52lo_epu64(_mm512_setzero_si512(), q, splat(19));
        for k in 0..5 {
            let sum = _mm512_add_epi64(l[k], carry);
            out[k] = _mm512_and_si512(sum, mask);
            carry = _mm512_srli_epi64::<51>(sum);
        }
        Fe(out)
    }

    /// Lanes whose value is odd (RFC 9496's IS_NEGATIVE).
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn is_negative(self) -> __mmask8 {
        _mm512_test_epi64_mask(self.canonical().0[0], splat(1))
    }

    #[target_feature(enable = "avx512f,avx512ifma")]
    fn equals(self, other: Fe) -> __mmask8 {
        let (a, b) = (self.canonical().0, other.canonical().0);
        let mut mask = ALL;
        for k in 0..5 {
            mask &= _mm512_cmpeq_epi64_mask(a[k], b[k]);
        }
        mask
    }

    /// `other` in the lanes of `mask`, `self` elsewhere.
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn select(self, mask: __mmask8, other: Fe) -> Fe {
        Fe(std::array::from_fn(|k| {
            _mm512_mask_blend_epi64(mask, self.0[k], other.0[k])
        }))
    }

    #[target_feature(enable = "avx512f,avx512ifma")]
    fn negate_where(self, mask: __mmask8) -> Fe {
        self.select(mask, self.neg())
    }

    /// RFC 9496's CT_ABS: the non-negative one of ±x.
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn abs(self) -> Fe {
        self.negate_where(self.is_negative())
    }

    /// x^((p − 5)/8) = x^(2^252 − 3).
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn pow_p58(self) -> Fe {
        let (e250, _) = self.pow_2_250_minus_1();
        e250.square_n(2).mul(self)
    }

    /// 1/x = x^(p − 2) = x^(2^255 − 21); 0 for 0.
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn invert(self) -> Fe {
        let (e250, x11) = self.pow_2_250_minus_1();
        e250.square_n(5).mul(x11)
    }

    /// (x^(2^250 − 1), x^11), the common start of both exponentiations.
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn pow_2_250_minus_1(self) -> (Fe, Fe) {
        let x = self;
        let x2 = x.square();
        let x9 = x2.square_n(2).mul(x);
        let x11 = x9.mul(x2);
        let e5 = x11.square().mul(x9); // x^(2^5 − 1)
        let e10 = e5.square_n(5).mul(e5);
        let e20 = e10.square_n(10).mul(e10);
        let e40 = e20.square_n(20).mul(e20);
        let e50 = e40.square_n(10).mul(e10);
        let e100 = e50.square_n(50).mul(e50);
        let e200 = e100.square_n(100).mul(e100);
        (e200.square_n(50).mul(e50), x11)
    }

    /// RFC 9496's SQRT_RATIO_M1: the lanes where u/v is a square, and the non-negative
    /// √(u/v) there (√(i·u/v) elsewhere).
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn sqrt_ratio_m1(u: Fe, v: Fe) -> (__mmask8, Fe) {
        let sqrt_m1 = Fe::constant(SQRT_M1);
        let v3 = v.square().mul(v);
        let v7 = v3.square().mul(v);
        let r = u.mul(v3).mul(u.mul(v7).pow_p58());
        let check = v.mul(r.square());
        let minus_u = u.neg();
        let correct = check.equals(u);
        let flipped = check.equals(minus_u);
        let flipped_i = check.equals(minus_u.mul(sqrt_m1));
        let r = r.select(flipped | flipped_i, r.mul(sqrt_m1)).abs();
        (correct | flipped, r)
    }
}

/// Five 51-bit limbs of the low 255 bits of `bytes` (the value need not be below p).
fn limbs_of(bytes: &[u8; 32]) -> [u64; 5] {
    let w: [u64; 4] = std::array::from_fn(|i| {
        u64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().expect("eight bytes"))
    });
    [
        w[0] & MASK51,
        ((w[0] >> 51) | (w[1] << 13)) & MASK51,
        ((w[1] >> 38) | (w[2] << 26)) & MASK51,
        ((w[2] >> 25) | (w[3] << 39)) & MASK51,
        (w[3] >> 12) & MASK51,
    ]
}

/// The 32 bytes of canonical limbs (each below 2^51, value below p).
fn bytes_of(l: &[u64; 5]) -> [u8; 32] {
    let w = [
        l[0] | (l[1] << 51),
        (l[1] >> 13) | (l[2] << 38),
        (l[2] >> 26) | (l[3] << 25),
        (l[3] >> 39) | (l[4] << 12),
    ];
    let mut bytes = [0u8; 32];
    for (i, word) in w.iter().enumerate() {
        bytes[8 * i..8 * i + 8].copy_from_slice(&word.to_le_bytes());
    }
    bytes
}

/// Whether `bytes` is the canonical encoding of a non-negative field element: bit 255 clear,
/// value below p (adding 19 does not reach 2^255), lowest bit clear. Straight-line code.
fn canonical_non_negative(bytes: &[u8; 32]) -> bool {
    let mut carry = 19u128;
    for i in 0..4 {
        let word = u64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().expect("eight bytes"));
        carry = (word as u128 + carry) >> if i < 3 { 64 } else { 63 };
    }
    let top_bit = bytes[31] >> 7;
    let odd = bytes[0] & 1;
    (carry as u8 | top_bit | odd) == 0
}

/// Eight points in extended coordinates (X : Y : Z : T), x = X/Z, y = Y/Z, xy = T/Z, on
/// −x² + y² = 1 + d·x²·y².
#[derive(Clone, Copy)]
struct Point {
    x: Fe,
    y: Fe,
    z: Fe,
    t: Fe,
}

/// (Y + X, Y − X, 2Z, 2d·T): a point prepared as the second operand of an addition.
#[derive(Clone, Copy)]
struct Cached {
    y_plus_x: Fe,
    y_minus_x: Fe,
    z2: Fe,
    t2d: Fe,
}

/// The result of an addition or doubling before its last multiplications: x = E/G·…, with
/// X = E·F, Y = G·H, Z = F·G, T = E·H (Hisil–Wong–Carter–Dawson).
struct Completed {
    e: Fe,
    f: Fe,
    g: Fe,
    h: Fe,
}

/// 2P from [`Projective::double`], the only input [`encode_doubled`]'s identity holds for.
struct Doubled(Completed);

/// (X : Y : Z) without T, for doublings whose T no one reads.
struct Projective {
    x: Fe,
    y: Fe,
    z: Fe,
}

impl Completed {
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn extended(&self) -> Point {
        Point {
            x: self.e.mul(self.f),
            y: self.g.mul(self.h),
            z: self.f.mul(self.g),
            t: self.e.mul(self.h),
        }
    }

    #[target_feature(enable = "avx512f,avx512ifma")]
    fn projective(&self) -> Projective {
        Projective {
            x: self.e.mul(self.f),
            y: self.g.mul(self.h),
            z: self.f.mul(self.g),
        }
    }
}

impl Projective {
    /// 2P (dbl-2008-hwcd with a = −1); reads no T.
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn double(&self) -> Completed {
        let xx = self.x.square();
        let yy = self.y.square();
        let zz2 = {
            let zz = self.z.square();
            zz.add(zz)
        };
        let xx_plus_yy = xx.add(yy);
        let g = yy.sub(xx);
        Completed {
            e: self.x.add(self.y).square().sub(xx_plus_yy),
            f: g.sub(zz2),
            g,
            h: xx_plus_yy.neg(),
        }
    }

    /// 2P, for [`encode_doubled`].
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn doubled(&self) -> Doubled {
        Doubled(self.double())
    }
}

impl Point {
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn identity() -> Point {
        Point {
            x: Fe::zero(),
            y: Fe::constant(ONE),
            z: Fe::constant(ONE),
            t: Fe::zero(),
        }
    }

    #[target_feature(enable = "avx512f,avx512ifma")]
    fn cached(&self) -> Cached {
        Cached {
            y_plus_x: self.y.add(self.x),
            y_minus_x: self.y.sub(self.x),
            z2: self.z.add(self.z),
            t2d: self.t.mul(Fe::constant(D2)),
        }
    }

    /// P + Q (add-2008-hwcd-3 with a = −1); complete, so any two points, equal or not.
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn add(&self, q: &Cached) -> Completed {
        let a = self.y.sub(self.x).mul(q.y_minus_x);
        let b = self.y.add(self.x).mul(q.y_plus_x);
        let c = self.t.mul(q.t2d);
        let d = self.z.mul(q.z2);
        Completed {
            e: b.sub(a),
            f: d.sub(c),
            g: d.add(c),
            h: b.add(a),
        }
    }

    /// k·P, with k given by its signed radix-16 digits: a table of P…8P, then per digit four
    /// doublings and one addition of a table entry chosen by a full masked scan. Only the last
    /// doubling before an addition computes T; the caller finishes the last addition.
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn multiply(&self, digits: &Digits) -> Completed {
        let mut table = [self.cached(); 8];
        let mut multiple = *self;
        for j in 1..8 {
            multiple = multiple.add(&table[0]).extended();
            table[j] = multiple.cached();
        }
        let mut sum = Point::identity().add(&select(&table, digits.0[63]));
        for &digit in digits.0[..63].iter().rev() {
            let p = sum.projective().double().projective();
            let p = p.double().projective();
            let p = p.double().projective();
            sum = p.double().extended().add(&select(&table, digit));
        }
        sum
    }

    /// RFC 9496 section 4.3.2: the canonical encodings of the eight points.
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn encode(&self) -> [[u8; 32]; LANES] {
        let (u1, u2) = self.encoding_ratio();
        let (_, invsqrt) = Fe::sqrt_ratio_m1(Fe::constant(ONE), u1.mul(u2.square()));
        self.encode_with(u1, u2, invsqrt)
    }

    /// u1 = (Z + Y)(Z − Y) and u2 = X·Y of section 4.3.2: the encoding needs a square root of
    /// 1/(u1·u2²).
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn encoding_ratio(&self) -> (Fe, Fe) {
        let Point { x, y, z, .. } = *self;
        (z.add(y).mul(z.sub(y)), x.mul(y))
    }

    /// The rest of the encoding, given u1 = (Z + Y)(Z − Y), u2 = X·Y and a square root of
    /// 1/(u1·u2²), of either sign (0 where u1·u2² is 0): the sign cancels in z_inv and in the
    /// final CT_ABS.
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn encode_with(&self, u1: Fe, u2: Fe, invsqrt: Fe) -> [[u8; 32]; LANES] {
        let Point { x, y, z, t } = *self;
        let den1 = invsqrt.mul(u1);
        let den2 = invsqrt.mul(u2);
        let z_inv = den1.mul(den2).mul(t);
        let sqrt_m1 = Fe::constant(SQRT_M1);
        let rotate = t.mul(z_inv).is_negative();
        let x_rotated = x.select(rotate, y.mul(sqrt_m1));
        let y_rotated = y.select(rotate, x.mul(sqrt_m1));
        let den_inv = den2.select(rotate, den1.mul(Fe::constant(INVSQRT_A_MINUS_D)));
        let y_final = y_rotated.negate_where(x_rotated.mul(z_inv).is_negative());
        let s = den_inv.mul(z.sub(y_final)).abs().canonical();
        s.to_lanes().map(|limbs| bytes_of(&limbs))
    }

    /// RFC 9496 section 4.3.1: the points encoded by `encodings`, and the lanes whose encoding
    /// is valid.
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn decode(encodings: &[[u8; 32]; LANES]) -> (Point, __mmask8) {
        let mut canonical: __mmask8 = 0;
        for (lane, bytes) in encodings.iter().enumerate() {
            canonical |= (canonical_non_negative(bytes) as u8) << lane;
        }
        let s = Fe::from_lanes(&encodings.map(|bytes| limbs_of(&bytes)));
        let one = Fe::constant(ONE);
        let ss = s.square();
        let u1 = one.sub(ss);
        let u2 = one.add(ss);
        let u2_sqr = u2.square();
        let v = Fe::constant(D).mul(u1.square()).neg().sub(u2_sqr);
        let (was_square, invsqrt) = Fe::sqrt_ratio_m1(one, v.mul(u2_sqr));
        let den_x = invsqrt.mul(u2);
        let den_y = invsqrt.mul(den_x).mul(v);
        let x = s.add(s).mul(den_x).abs();
        let y = u1.mul(den_y);
        let t = x.mul(y);
        let valid = canonical & was_square & !t.is_negative() & !y.equals(Fe::zero());
        (Point { x, y, z: one, t }, valid)
    }

    /// RFC 9496 section 4.3.4, MAP: one Elligator image per lane.
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn elligator(t: Fe) -> Point {
        let one = Fe::constant(ONE);
        let d = Fe::constant(D);
        let r = Fe::constant(SQRT_M1).mul(t.square());
        let u = r.add(one).mul(Fe::constant(ONE_MINUS_D_SQ));
        let v = one.neg().sub(r.mul(d)).mul(r.add(d));
        let (was_square, s) = Fe::sqrt_ratio_m1(u, v);
        let s_prime = s.mul(t).abs().neg();
        let not_square = !was_square;
        let s = s.select(not_square, s_prime);
        let c = one.neg().select(not_square, r);
        let n = c.mul(r.sub(one)).mul(Fe::constant(D_MINUS_ONE_SQ)).sub(v);
        let ss = s.square();
        let w0 = s.add(s).mul(v);
        let w1 = n.mul(Fe::constant(SQRT_AD_MINUS_ONE));
        let w2 = one.sub(ss);
        let w3 = one.add(ss);
        Point {
            x: w0.mul(w3),
            y: w2.mul(w1),
            z: w1.mul(w3),
            t: w0.mul(w2),
        }
    }

    /// RFC 9496 section 4.3.4, `from_uniform_bytes`: the sum of the images of both halves.
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn from_uniform(uniform: &[[u8; 64]; LANES]) -> Point {
        let half =
            |offset: usize| {
                Fe::from_lanes(&uniform.map(|bytes| {
                    limbs_of(bytes[offset..offset + 32].try_into().expect("32 bytes"))
                }))
            };
        let first = Point::elligator(half(0));
        let second = Point::elligator(half(32));
        first.add(&second.cached()).extended()
    }
}

impl Cached {
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn identity() -> Cached {
        Cached {
            y_plus_x: Fe::constant(ONE),
            y_minus_x: Fe::constant(ONE),
            z2: Fe::constant([2, 0, 0, 0, 0]),
            t2d: Fe::zero(),
        }
    }

    #[target_feature(enable = "avx512f,avx512ifma")]
    fn select(&self, mask: __mmask8, other: &Cached) -> Cached {
        Cached {
            y_plus_x: self.y_plus_x.select(mask, other.y_plus_x),
            y_minus_x: self.y_minus_x.select(mask, other.y_minus_x),
            z2: self.z2.select(mask, other.z2),
            t2d: self.t2d.select(mask, other.t2d),
        }
    }

    /// −Q in the lanes of `mask`: swap Y + X with Y − X and negate 2d·T.
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn negate_where(&self, mask: __mmask8) -> Cached {
        Cached {
            y_plus_x: self.y_plus_x.select(mask, self.y_minus_x),
            y_minus_x: self.y_minus_x.select(mask, self.y_plus_x),
            z2: self.z2,
            t2d: self.t2d.negate_where(mask),
        }
    }
}

/// digit·P from the table of P…8P: every entry is blended in under a mask that is all ones
/// only for the entry |digit|, then negated under a mask that is all ones for a negative
/// digit. The masks come from arithmetic on the digit, never from a branch.
#[target_feature(enable = "avx512f,avx512ifma")]
fn select(table: &[Cached; 8], digit: i8) -> Cached {
    let sign = digit >> 7; // 0 or −1
    let magnitude = ((digit ^ sign) - sign) as u8;
    let mut chosen = Cached::identity();
    for (j, entry) in (1u8..).zip(table) {
        let equal = (((magnitude ^ j) as u32).wrapping_sub(1) >> 31) as u8;
        chosen = chosen.select(std::hint::black_box(0u8.wrapping_sub(equal)), entry);
    }
    chosen.negate_where(std::hint::black_box(0u8.wrapping_sub((sign as u8) & 1)))
}

/// `inputs` in groups of eight, the last one padded with `padding`.
fn groups<T: Copy>(inputs: &[T], padding: T) -> impl Iterator<Item = [T; LANES]> + '_ {
    inputs.chunks(LANES).map(move |chunk| {
        let mut lanes = [padding; LANES];
        lanes[..chunk.len()].copy_from_slice(chunk);
        lanes
    })
}

#[target_feature(enable = "avx512f,avx512ifma")]
fn hash_and_multiply(uniform: &[[u8; 64]], half: &Digits) -> Vec<[u8; 32]> {
    let doubled: Vec<Doubled> = groups(uniform, [0; 64])
        .map(|lanes| {
            Point::from_uniform(&lanes)
                .multiply(half)
                .projective()
                .doubled()
        })
        .collect();
    encode_doubled(&doubled, uniform.len())
}

#[target_feature(enable = "avx512f,avx512ifma")]
fn decode_and_multiply(encodings: &[[u8; 32]], half: &Digits) -> Result<Vec<[u8; 32]>, usize> {
    let mut doubled = Vec::with_capacity(encodings.len().div_ceil(LANES));
    // The identity's encoding pads the last group: valid, and its output is dropped.
    for (group, lanes) in groups(encodings, [0; 32]).enumerate() {
        let (point, valid) = Point::decode(&lanes);
        if valid != ALL {
            return Err(group * LANES + (!valid).trailing_zeros() as usize);
        }
        doubled.push(point.multiply(half).projective().doubled());
    }
    Ok(encode_doubled(&doubled, encodings.len()))
}

/// Encodes the doubled points (the first `count` lanes) with one field inversion for all of
/// them instead of an inverse square root per group.
///
/// `Projective::double` gives 2P as (E·F : G·H : F·G : E·H) with E = 2XY, G = Y² − X²,
/// F = −(2Z² − Y² + X²), H = −(X² + Y²). For such a point, u1·u2² (section 4.3.2) equals
/// (a − d)·E⁴·G⁴·F²·H²: the curve equation turns (Z² − Y²)(Z² + X²) into −(1 + d)·X²Y². So
/// INVSQRT_A_MINUS_D · F·H/(E·F·G·H)² is a square root of its inverse, and the products E·F·G·H
/// of every group are inverted together (Montgomery's trick). A lane where E·F·G·H is zero
/// (2P ∈ E[4], the identity's class) is skipped by the trick and gets 0, which encodes the
/// identity.
#[target_feature(enable = "avx512f,avx512ifma")]
fn encode_doubled(doubled: &[Doubled], count: usize) -> Vec<[u8; 32]> {
    let one = Fe::constant(ONE);
    let products: Vec<Fe> = doubled
        .iter()
        .map(|Doubled(c)| c.e.mul(c.f).mul(c.g.mul(c.h)))
        .collect();
    let nonzero: Vec<__mmask8> = products.iter().map(|x| !x.equals(Fe::zero())).collect();
    // prefix[i] = product of the non-zero lanes of products[..i].
    let mut prefix = Vec::with_capacity(products.len());
    let mut acc = one;
    for (x, &mask) in products.iter().zip(&nonzero) {
        prefix.push(acc);
        acc = acc.select(mask, acc.mul(*x));
    }
    let mut inverse = acc.invert();
    let mut inverses = vec![Fe::zero(); products.len()];
    for i in (0..products.len()).rev() {
        inverses[i] = Fe::zero().select(nonzero[i], inverse.mul(prefix[i]));
        inverse = inverse.select(nonzero[i], inverse.mul(products[i]));
    }
    let mut out = Vec::with_capacity(count);
    for (Doubled(c), inverse) in doubled.iter().zip(inverses) {
        let point = c.extended();
        let invsqrt = inverse
            .square()
            .mul(c.f.mul(c.h))
            .mul(Fe::constant(INVSQRT_A_MINUS_D));
        let (u1, u2) = point.encoding_ratio();
        let encoded = point.encode_with(u1, u2, invsqrt);
        let take = (count - out.len()).min(LANES);
        out.extend_from_slice(&encoded[..take]);
    }
    out
}

#[target_feature(enable = "avx512f,avx512ifma")]
fn multiply_repeatedly(
    encodings: &[[u8; 32]; LANES],
    key: &Digits,
    rounds: usize,
) -> [[u8; 32]; LANES] {
    let (mut point, _) = Point::decode(encodings);
    for _ in 0..rounds {
        point = point.multiply(key).extended();
    }
    point.encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
    use proptest::prelude::*;
    use rand::{Rng, RngExt};

    /// The IFMA unit, or `None` (and a note) on a CPU without it: `crypto`'s tests compare the
    /// paths wherever both exist, and CI machines of either kind run what they can.
    fn ifma() -> Option<Ifma> {
        let found = Ifma::detect();
        if found.is_none() {
            assert!(
                std::env::var_os("UNSEEN_REQUIRE_IFMA").is_none(),
                "UNSEEN_REQUIRE_IFMA is set but AVX-512 IFMA was not detected"
            );
            eprintln!("no AVX-512 IFMA on this CPU: the multi-buffer arithmetic is not exercised");
        }
        found
    }

    type Lanes = [[u64; 5]; LANES];

    #[derive(Clone, Copy)]
    enum Op {
        Mul,
        Square,
        Add,
        Sub,
        Canonical,
    }

    /// `op` applied to eight lanes of limbs through the vector code.
    fn vector(_: Ifma, op: Op, a: &Lanes, b: &Lanes) -> Lanes {
        #[target_feature(enable = "avx512f,avx512ifma")]
        fn run(op: Op, a: &Lanes, b: &Lanes) -> Lanes {
            let (x, y) = (Fe::from_lanes(a), Fe::from_lanes(b));
            match op {
                Op::Mul => x.mul(y),
                Op::Square => x.square(),
                Op::Add => x.add(y),
                Op::Sub => x.sub(y),
                Op::Canonical => x.canonical(),
            }
            .to_lanes()
        }
        // SAFETY: an `Ifma` exists only on a CPU with the features.
        unsafe { run(op, a, b) }
    }

    /// The canonical limbs of Σ z_k·2^(51k) mod p, with u128 arithmetic and no vectors.
    fn reference(mut z: [u128; 5]) -> [u64; 5] {
        while z.iter().any(|&limb| limb > MASK51 as u128) {
            let carries = z.map(|limb| limb >> 51);
            for k in 0..5 {
                z[k] = (z[k] & MASK51 as u128)
                    + if k == 0 {
                        19 * carries[4]
                    } else {
                        carries[k - 1]
                    };
            }
        }
        let at_least_p =
            z[1..].iter().all(|&l| l == MASK51 as u128) && z[0] >= (MASK51 - 18) as u128;
        if at_least_p {
            z = [z[0] - (MASK51 - 18) as u128, 0, 0, 0, 0];
        }
        z.map(|limb| limb as u64)
    }

    fn reference_mul(a: &[u64; 5], b: &[u64; 5]) -> [u64; 5] {
        let mut wide = [0u128; 10];
        for i in 0..5 {
            for j in 0..5 {
                wide[i + j] += a[i] as u128 * b[j] as u128;
            }
        }
        reference(std::array::from_fn(|k| wide[k] + 19 * wide[k + 5]))
    }

    fn reference_value(a: &[u64; 5]) -> [u64; 5] {
        reference(a.map(u128::from))
    }

    /// Reduced limbs up to the bound the module promises (below 2^51 + 2^15), extremes often.
    fn reduced_lanes() -> impl Strategy<Value = Lanes> {
        let limb = prop_oneof![
            0u64..(1 << 51) + (1 << 15),
            Just((1u64 << 51) + (1 << 15) - 1),
            Just(MASK51),
            Just(MASK51 - 18),
            Just(0u64),
        ];
        proptest::array::uniform8(proptest::array::uniform5(limb))
    }

    fn assert_reduced(lanes: &Lanes) -> Result<(), TestCaseError> {
        for limb in lanes.iter().flatten() {
            prop_assert!(
                *limb < (1 << 51) + (1 << 15),
                "limb {limb:#x} is not reduced"
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn field_arithmetic_matches_integer_arithmetic(a in reduced_lanes(), b in reduced_lanes()) {
            let Some(unit) = ifma() else { return Ok(()) };
            let product = vector(unit, Op::Mul, &a, &b);
            let square = vector(unit, Op::Square, &a, &b);
            let sum = vector(unit, Op::Add, &a, &b);
            let difference = vector(unit, Op::Sub, &a, &b);
            let canonical = vector(unit, Op::Canonical, &a, &b);
            for out in [&product, &square, &sum, &difference] {
                assert_reduced(out)?;
            }
            for lane in 0..LANES {
                let (x, y) = (&a[lane], &b[lane]);
                prop_assert_eq!(reference_value(&product[lane]), reference_mul(x, y));
                prop_assert_eq!(reference_value(&square[lane]), reference_mul(x, x));
                let x_plus_y: [u64; 5] = std::array::from_fn(|k| x[k] + y[k]);
                prop_assert_eq!(reference_value(&sum[lane]), reference_value(&x_plus_y));
                let x_minus_y: [u64; 5] = std::array::from_fn(|k| x[k] + FOUR_P[k] - y[k]);
                prop_assert_eq!(reference_value(&difference[lane]), reference_value(&x_minus_y));
                prop_assert_eq!(canonical[lane], reference_value(x));
                prop_assert_eq!(bytes_of(&canonical[lane]), bytes_of(&reference_value(x)));
            }
        }
    }

    #[test]
    fn byte_conversions_round_trip_and_refuse_non_canonical_encodings() {
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let mut bytes: [u8; 32] = rng.random();
            bytes[31] &= 0x7f;
            assert_eq!(bytes_of(&reference_value(&limbs_of(&bytes))) == bytes, {
                // Below p exactly when not in [p, 2^255).
                !(bytes[1..31].iter().all(|&b| b == 0xff) && bytes[31] == 0x7f && bytes[0] >= 0xed)
            });
        }
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        let mut p_minus_1 = p;
        p_minus_1[0] = 0xec;
        let mut high_bit = [0u8; 32];
        high_bit[31] = 0x80;
        assert!(!canonical_non_negative(&p));
        assert!(canonical_non_negative(&p_minus_1)); // even, below p
        assert!(!canonical_non_negative(&high_bit));
        assert!(!canonical_non_negative(&[1; 32])); // odd: negative
        assert!(canonical_non_negative(&[0; 32]));
        assert!(canonical_non_negative(&[2; 32]));
    }

    fn random_scalar(rng: &mut impl Rng) -> Scalar {
        let mut wide = [0u8; 64];
        rng.fill_bytes(&mut wide);
        Scalar::from_bytes_mod_order_wide(&wide)
    }

    fn edge_scalars(rng: &mut impl Rng) -> Vec<Scalar> {
        let mut scalars = vec![
            Scalar::ZERO,
            Scalar::ONE,
            Scalar::from(2u8),
            Scalar::from(8u8),
            Scalar::from(9u8),
            -Scalar::ONE,
            -Scalar::from(8u8),
            Scalar::from(0x7777_7777_7777_7778u64), // sixteen digits −8 after carrying
        ];
        scalars.extend((0..4).map(|_| random_scalar(rng)));
        scalars
    }

    #[test]
    fn digits_recompose_the_scalar() {
        for scalar in edge_scalars(&mut rand::rng()) {
            let digits = Digits::of(&scalar);
            let mut sum = Scalar::ZERO;
            for &digit in digits.0.iter().rev() {
                assert!((-8..=8).contains(&digit));
                let magnitude = Scalar::from(digit.unsigned_abs());
                sum = sum * Scalar::from(16u8) + if digit < 0 { -magnitude } else { magnitude };
            }
            assert_eq!(sum, scalar);
        }
    }

    #[test]
    fn hashing_and_multiplying_matches_dalek() {
        let Some(unit) = ifma() else { return };
        let mut rng = rand::rng();
        for scalar in edge_scalars(&mut rng) {
            // One short group, one full, several (a batch inversion over groups).
            for count in [3, 8, 61] {
                let mut uniform = vec![[0u8; 64]; count];
                for bytes in &mut uniform {
                    rng.fill_bytes(bytes);
                }
                // Non-canonical and high-bit halves are allowed: the map masks bit 255.
                uniform[0][..32].fill(0xff);
                uniform[1][32..].fill(0);
                let got = unit.hash_and_multiply(&uniform, &Digits::of(&scalar));
                let want: Vec<[u8; 32]> = uniform
                    .iter()
                    .map(|u| {
                        (RistrettoPoint::from_uniform_bytes(u) * (scalar + scalar))
                            .compress()
                            .to_bytes()
                    })
                    .collect();
                assert_eq!(got, want, "{count} strings");
            }
        }
    }

    #[test]
    fn decoding_and_multiplying_matches_dalek() {
        let Some(unit) = ifma() else { return };
        let mut rng = rand::rng();
        let generator = curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
        for scalar in edge_scalars(&mut rng) {
            let digits = Digits::of(&scalar);
            let mut encodings: Vec<[u8; 32]> = (0..64u8)
                .map(|i| match i % 4 {
                    // Valid points.
                    0 | 1 => RistrettoPoint::from_uniform_bytes(&rng.random())
                        .compress()
                        .to_bytes(),
                    // The identity (whose doubled multiple the batch inversion skips) and small
                    // multiples of the generator.
                    2 => (generator * Scalar::from(i % 5)).compress().to_bytes(),
                    // Random bytes, made canonical and even so that the square and sign checks
                    // decide.
                    _ => {
                        let mut bytes: [u8; 32] = rng.random();
                        bytes[31] &= 0x7f;
                        bytes[0] &= 0xfe;
                        bytes
                    }
                })
                .collect();
            let decoded: Vec<Option<RistrettoPoint>> = encodings
                .iter()
                .map(|e| CompressedRistretto(*e).decompress())
                .collect();
            // Invalid encodings are located: the first one is named.
            let first_invalid = decoded.iter().position(Option::is_none);
            assert!(
                first_invalid.is_some(),
                "random bytes decode about half the time"
            );
            assert_eq!(
                unit.decode_and_multiply(&encodings, &digits),
                Err(first_invalid.unwrap())
            );
            // The valid ones, several groups and a short last one, multiply as dalek does.
            encodings.retain(|e| CompressedRistretto(*e).decompress().is_some());
            let want: Vec<[u8; 32]> = decoded
                .iter()
                .flatten()
                .map(|p| (p * (scalar + scalar)).compress().to_bytes())
                .collect();
            assert_eq!(unit.decode_and_multiply(&encodings, &digits), Ok(want));
        }
    }

    /// RFC 9496's vectors through this module alone: with half = 1/2 the multiplication is the
    /// identity map, so decoding the small multiples of the generator and hashing the map
    /// inputs must give the RFC's encodings.
    #[test]
    fn rfc_9496_vectors_through_the_vector_code() {
        let Some(unit) = ifma() else { return };
        let half = Digits::of(&Scalar::from(2u8).invert());
        let (mut multiples, mut maps) = (Vec::new(), Vec::new());
        for line in include_str!("../vectors/rfc9496.txt").lines() {
            match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["multiple", _, encoding] => multiples.push(hex::decode(encoding).unwrap()),
                ["map", uniform, encoding] => maps.push((
                    hex::decode(uniform).unwrap(),
                    hex::decode(encoding).unwrap(),
                )),
                _ => {}
            }
        }
        assert_eq!((multiples.len(), maps.len()), (4, 11));
        let encodings: Vec<[u8; 32]> = multiples
            .iter()
            .map(|e| e.clone().try_into().unwrap())
            .collect();
        assert_eq!(
            unit.decode_and_multiply(&encodings, &half),
            Ok(encodings.clone())
        );
        let uniform: Vec<[u8; 64]> = maps
            .iter()
            .map(|(u, _)| u.clone().try_into().unwrap())
            .collect();
        let want: Vec<[u8; 32]> = maps
            .iter()
            .map(|(_, e)| e.clone().try_into().unwrap())
            .collect();
        assert_eq!(unit.hash_and_multiply(&uniform, &half), want);
    }

    /// The benchmark floor's path (plain multiplication and the unbatched encoding through
    /// SQRT_RATIO_M1) computes what dalek does.
    #[test]
    fn repeated_multiplication_matches_dalek() {
        let Some(unit) = ifma() else { return };
        let mut rng = rand::rng();
        let points: [RistrettoPoint; LANES] =
            std::array::from_fn(|_| RistrettoPoint::from_uniform_bytes(&rng.random()));
        let encodings = points.map(|p| p.compress().to_bytes());
        for scalar in edge_scalars(&mut rng) {
            for rounds in 0..3 {
                let got = unit.multiply_repeatedly(&encodings, &Digits::of(&scalar), rounds);
                for (lane, point) in points.iter().enumerate() {
                    let mut want = *point;
                    for _ in 0..rounds {
                        want *= scalar;
                    }
                    assert_eq!(
                        got[lane],
                        want.compress().to_bytes(),
                        "{rounds} rounds, lane {lane}"
                    );
                }
            }
        }
    }

    /// Encodings decoding must refuse, one of each kind RFC 9496 section 4.3.1 names, in every
    /// lane: s ≥ p, bit 255 set, s odd ("negative"), and p − 1 (y = 0). Non-square and negative
    /// xy inputs come from the random canonical even encodings above, checked against dalek.
    #[test]
    fn invalid_encodings_are_refused_in_every_lane() {
        let Some(unit) = ifma() else { return };
        let valid = RistrettoPoint::from_uniform_bytes(&[7; 64])
            .compress()
            .to_bytes();
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        let mut p_plus_2 = p;
        p_plus_2[0] = 0xef;
        let mut p_minus_1 = p;
        p_minus_1[0] = 0xec;
        let mut high_bit = valid;
        high_bit[31] |= 0x80;
        let mut odd = valid;
        odd[0] |= 1;
        let mut one = [0u8; 32];
        one[0] = 1;
        for bad in [p, p_plus_2, p_minus_1, high_bit, odd, one, [0xff; 32]] {
            assert!(CompressedRistretto(bad).decompress().is_none());
            for lane in 0..LANES {
                let mut encodings = [valid; LANES];
                encodings[lane] = bad;
                let result = unit.decode_and_multiply(&encodings, &Digits::of(&Scalar::ONE));
                assert_eq!(result, Err(lane), "{} in lane {lane}", hex::encode(bad));
            }
        }
    }
}
