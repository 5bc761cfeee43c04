//! Integers modulo 2^192, the ring of ciphertext coefficients: three 64-bit limbs, least
//! significant first, with wrapping arithmetic. Only what the scheme needs: addition,
//! subtraction, negation, products with 64-bit integers, shifts, and residues modulo the NTT
//! primes.

/// An integer modulo 2^192. Read as signed (centred) where the scheme says so: bit 191 is the
/// sign.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct U192(pub(crate) [u64; 3]);

/// Copies of secret coefficients (a rotated key) are wiped like the key itself.
impl zeroize::DefaultIsZeroes for U192 {}

impl U192 {
    pub(crate) const ZERO: U192 = U192([0; 3]);

    /// Bits of the modulus.
    pub(crate) const BITS: u32 = 192;

    /// A signed 128-bit integer, sign-extended.
    pub(crate) fn from_i128(value: i128) -> Self {
        let high = if value < 0 { u64::MAX } else { 0 };
        U192([value as u64, (value >> 64) as u64, high])
    }

    /// A signed 64-bit integer, sign-extended.
    pub(crate) fn from_i64(value: i64) -> Self {
        Self::from_i128(i128::from(value))
    }

    /// An unsigned 128-bit integer.
    pub(crate) fn from_u128(value: u128) -> Self {
        U192([value as u64, (value >> 64) as u64, 0])
    }

    /// The low 128 bits.
    pub(crate) fn low_u128(self) -> u128 {
        u128::from(self.0[0]) | (u128::from(self.0[1]) << 64)
    }

    /// True when bit 191 is set: the value is negative when read as signed.
    pub(crate) fn is_negative(self) -> bool {
        self.0[2] >> 63 == 1
    }

    pub(crate) fn wrapping_add(self, other: U192) -> U192 {
        let (l0, c0) = self.0[0].overflowing_add(other.0[0]);
        let (l1, c1a) = self.0[1].overflowing_add(other.0[1]);
        let (l1, c1b) = l1.overflowing_add(u64::from(c0));
        let l2 = self.0[2]
            .wrapping_add(other.0[2])
            .wrapping_add(u64::from(c1a | c1b));
        U192([l0, l1, l2])
    }

    pub(crate) fn wrapping_neg(self) -> U192 {
        U192([!self.0[0], !self.0[1], !self.0[2]]).wrapping_add(U192([1, 0, 0]))
    }

    pub(crate) fn wrapping_sub(self, other: U192) -> U192 {
        self.wrapping_add(other.wrapping_neg())
    }

    /// self·m modulo 2^192.
    pub(crate) fn wrapping_mul_u64(self, m: u64) -> U192 {
        let p0 = u128::from(self.0[0]) * u128::from(m);
        let p1 = u128::from(self.0[1]) * u128::from(m) + (p0 >> 64);
        let l2 = self.0[2].wrapping_mul(m).wrapping_add((p1 >> 64) as u64);
        U192([p0 as u64, p1 as u64, l2])
    }

    /// self·m modulo 2^192 for a signed m.
    #[cfg(test)]
    pub(crate) fn wrapping_mul_i64(self, m: i64) -> U192 {
        let product = self.wrapping_mul_u64(m.unsigned_abs());
        if m < 0 {
            product.wrapping_neg()
        } else {
            product
        }
    }

    /// self·2^k modulo 2^192 (0 for k ≥ 192).
    pub(crate) fn shl(self, k: u32) -> U192 {
        if k >= Self::BITS {
            return U192::ZERO;
        }
        let (words, bits) = ((k / 64) as usize, k % 64);
        let mut out = [0u64; 3];
        for (i, word) in out.iter_mut().enumerate().skip(words) {
            let source = i - words;
            *word = self.0[source] << bits;
            if bits > 0 && source > 0 {
                *word |= self.0[source - 1] >> (64 - bits);
            }
        }
        U192(out)
    }

    /// ⌊self / 2^k⌋, read as unsigned (0 for k ≥ 192).
    pub(crate) fn shr(self, k: u32) -> U192 {
        if k >= Self::BITS {
            return U192::ZERO;
        }
        let (words, bits) = ((k / 64) as usize, k % 64);
        let mut out = [0u64; 3];
        for (i, word) in out.iter_mut().enumerate().take(3 - words) {
            let source = i + words;
            *word = self.0[source] >> bits;
            if bits > 0 && source + 1 < 3 {
                *word |= self.0[source + 1] << (64 - bits);
            }
        }
        U192(out)
    }

    /// The residue modulo 2^bits (bits ≤ 128), as an unsigned integer.
    pub(crate) fn low_bits(self, bits: u32) -> u128 {
        debug_assert!(bits <= 128);
        let low = self.low_u128();
        if bits == 128 {
            low
        } else {
            low & ((1u128 << bits) - 1)
        }
    }

    /// Rounds to the nearest multiple of 2^(192 − bits), modulo 2^192: the top `bits` bits
    /// are kept (all of them for bits ≥ 192, none for 0).
    pub(crate) fn round_to_top(self, bits: u32) -> U192 {
        if bits >= Self::BITS {
            return self;
        }
        if bits == 0 {
            return U192::ZERO;
        }
        let drop = Self::BITS - bits;
        self.wrapping_add(U192::from_u128(1).shl(drop - 1))
            .shr(drop)
            .shl(drop)
    }

    /// The value read as a signed integer, when it fits in 128 bits.
    #[cfg(test)]
    pub(crate) fn to_i128(self) -> Option<i128> {
        let low = self.low_u128() as i128;
        let extension = if low < 0 { u64::MAX } else { 0 };
        (self.0[2] == extension).then_some(low)
    }

    pub(crate) fn to_le_bytes(self) -> [u8; 24] {
        let mut out = [0u8; 24];
        for (chunk, word) in out.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        out
    }

    pub(crate) fn from_le_bytes(bytes: [u8; 24]) -> U192 {
        let mut words = [0u64; 3];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            *word = u64::from_le_bytes(chunk.try_into().expect("8-byte chunks"));
        }
        U192(words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    /// The reference: the same value as a 256-bit pair (high, low) of u128, reduced mod 2^192.
    fn to_pair(v: U192) -> (u128, u128) {
        (u128::from(v.0[2]), v.low_u128())
    }

    fn from_pair((high, low): (u128, u128)) -> U192 {
        U192([low as u64, (low >> 64) as u64, high as u64])
    }

    fn add_pair(a: (u128, u128), b: (u128, u128)) -> (u128, u128) {
        let (low, carry) = a.1.overflowing_add(b.1);
        (a.0.wrapping_add(b.0).wrapping_add(u128::from(carry)), low)
    }

    /// Bit by bit: the independent reference for the shifts.
    fn bit(v: U192, i: u32) -> bool {
        v.0[(i / 64) as usize] >> (i % 64) & 1 == 1
    }

    fn from_bits(f: impl Fn(u32) -> bool) -> U192 {
        let mut out = [0u64; 3];
        for i in 0..192 {
            if f(i) {
                out[(i / 64) as usize] |= 1 << (i % 64);
            }
        }
        U192(out)
    }

    fn reference_shl(v: U192, k: u32) -> U192 {
        from_bits(|i| i >= k && bit(v, i - k))
    }

    fn reference_shr(v: U192, k: u32) -> U192 {
        from_bits(|i| i + k < 192 && bit(v, i + k))
    }

    fn random(rng: &mut impl RngExt) -> U192 {
        U192([rng.random(), rng.random(), rng.random()])
    }

    #[test]
    fn arithmetic_matches_a_reference() {
        let mut rng = rand::rng();
        for _ in 0..2000 {
            let (a, b) = (random(&mut rng), random(&mut rng));
            assert_eq!(
                a.wrapping_add(b),
                from_pair(add_pair(to_pair(a), to_pair(b)))
            );
            assert_eq!(a.wrapping_sub(b).wrapping_add(b), a);
            assert_eq!(a.wrapping_add(a.wrapping_neg()), U192::ZERO);
            // a·m as a sum of shifted copies of a, for the set bits of m.
            let m: u64 = rng.random();
            let mut expected = U192::ZERO;
            for bit in 0..64 {
                if m >> bit & 1 == 1 {
                    expected = expected.wrapping_add(a.shl(bit));
                }
            }
            assert_eq!(a.wrapping_mul_u64(m), expected);
            // A negative multiplier is the negation of the positive product.
            let s = rng.random_range(1..(1i64 << 40));
            assert_eq!(
                a.wrapping_mul_i64(-s)
                    .wrapping_add(a.wrapping_mul_u64(s as u64)),
                U192::ZERO
            );
            for k in [
                0,
                1,
                15,
                63,
                64,
                65,
                127,
                128,
                129,
                190,
                191,
                rng.random_range(0..192),
            ] {
                assert_eq!(a.shl(k), reference_shl(a, k), "shl {k}");
                assert_eq!(a.shr(k), reference_shr(a, k), "shr {k}");
            }
            assert_eq!(a.shl(192), U192::ZERO);
            assert_eq!(a.shr(300), U192::ZERO);
            assert_eq!(U192::from_le_bytes(a.to_le_bytes()), a);
        }
        assert_eq!(U192::from_i64(-1), U192([u64::MAX; 3]));
        assert_eq!(U192::from_i64(-5).to_i128(), Some(-5));
        assert_eq!(U192::from_i128(i128::MIN).to_i128(), Some(i128::MIN));
        assert_eq!(U192([0, 0, 1]).to_i128(), None);
        assert!(U192::from_i64(-1).is_negative());
        assert_eq!(U192::from_u128(7).shl(190).shr(190), U192::from_u128(3));
        // Rounding to the top 8 bits: 2^183 rounds up to 2^184, 2^183 − 1 down to 0.
        assert_eq!(
            U192::from_u128(1).shl(183).round_to_top(8),
            U192::from_u128(1).shl(184)
        );
        assert_eq!(
            U192::from_u128(1)
                .shl(183)
                .wrapping_sub(U192::from_u128(1))
                .round_to_top(8),
            U192::ZERO
        );
        assert_eq!(U192([u64::MAX; 3]).round_to_top(0), U192::ZERO);
        assert_eq!(U192([5, 6, 7]).round_to_top(192), U192([5, 6, 7]));
    }
}
