//! Release: what an evaluator sends the key owner instead of X^T v. The results are packed
//! (see `pack`), masked with uniform r_j that only the evaluator keeps (its [`Masks`]),
//! re-randomised under the owner's public key and flooded; the crate docs outline the steps and
//! [`N8192_Q192`](crate::N8192_Q192) gives the flooding argument.

use rand::Rng;
use rayon::prelude::*;

use crate::entities::{
    Ciphertext, EncryptedColumns, MaskedColumns, Masks, PackedResult, PackingKey, PublicKey,
    SeededBlock,
};
use crate::error::HeError;
use crate::pack::check_key;
use crate::params::{check_params, signed_residue, Params};
use crate::random::{csprng, gaussian_noise, stream};
use crate::ring::ring_for;
use crate::wide::U192;

impl PublicKey {
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
        let count = columns.len();
        if count == 0 {
            return Err(HeError::SizeMismatch {
                what: "columns to release",
                expected: 1,
                got: 0,
            });
        }
        // Results must stay below 2^(p−1−ℓ) once packing has multiplied them by 2^ℓ.
        let result_bits = 128 - (columns.bound.max(1) as u128).leading_zeros();
        let fits = (params.message_bits - 1).saturating_sub(result_bits);
        let (base, levels) = match columns.spread {
            // A spread product fixed its layout for this owner's packing key.
            Some(spread) => {
                if spread.levels > packing.levels() || spread.levels > fits {
                    return Err(HeError::SizeMismatch {
                        what: "spread levels (the packing key's and the bound's)",
                        expected: packing.levels().min(fits) as usize,
                        got: spread.levels as usize,
                    });
                }
                (spread.base, spread.levels)
            }
            None => {
                let wanted = count.next_power_of_two().trailing_zeros();
                (0, packing.levels().min(wanted).min(fits))
            }
        };
        let n = params.poly_size;
        let ring = ring_for(params);
        // Ciphertexts per released ciphertext; each of them holds 2^base results.
        let group = 1usize << (levels - base);
        let mut items = columns.columns.into_iter().map(Some);
        let groups: Vec<(usize, Vec<Option<Ciphertext>>)> = (0..count.div_ceil(1 << levels))
            .map(|g| {
                let present = (count - (g << levels)).min(1 << levels);
                (
                    present,
                    (0..group).map(|_| items.next().flatten()).collect(),
                )
            })
            .collect();
        let (a_pk, b_pk) = SeededBlock {
            seed: self.seed,
            body: self.body.clone(),
        }
        .expand(n);
        // The public key is the same for every packed ciphertext: transform it once.
        let (a_pk, b_pk) = (ring.forward_wide(&a_pk), ring.forward_wide(&b_pk));
        let bits = params.message_bits - levels;
        let message_mask = (1u128 << bits) - 1;
        let flood_span = 1u128 << (flood_bits + levels + 1);
        let spacing = n >> levels;
        let results: Vec<(PackedResult, Vec<u128>)> = groups
            .into_par_iter()
            .map(|(present, group_items)| {
                let (a, b) = packing
                    .pack(params, &ring, group_items, base)
                    .expect("every group holds at least one column");
                let mut rng = csprng();
                let mut uniform = stream();
                let mut bits = vec![0u8; n.div_ceil(8)];
                uniform.fill_bytes(&mut bits);
                let u_small: Vec<i64> = (0..n)
                    .map(|i| i64::from(bits[i / 8] >> (i % 8) & 1))
                    .collect();
                let e1 = gaussian_noise(params, &mut rng, n);
                let u = ring.forward_small(&u_small);
                let (u_a, u_b) = (ring.product(&a_pk, &u), ring.product(&b_pk, &u));
                let fresh_a: Vec<U192> = a
                    .iter()
                    .zip(&u_a)
                    .zip(&e1)
                    .map(|((&x, &y), &z)| {
                        x.wrapping_add(y)
                            .wrapping_add(z)
                            .round_to_top(released_bits)
                    })
                    .collect();
                let e2 = gaussian_noise(params, &mut rng, present);
                let mut masks = Vec::with_capacity(present);
                let mut draw = || {
                    let mut bytes = [0u8; 16];
                    uniform.fill_bytes(&mut bytes);
                    u128::from_le_bytes(bytes)
                };
                let slots: Vec<U192> = (0..present)
                    .map(|slot| {
                        let position = slot * spacing;
                        let flood = (draw() & (flood_span - 1)) as i128 - (flood_span / 2) as i128;
                        let r = draw() & message_mask;
                        masks.push(r);
                        b[position]
                            .wrapping_add(u_b[position])
                            .wrapping_add(e2[slot])
                            .wrapping_add(U192::from_i128(flood))
                            .wrapping_add(params.scale_residue(r, levels))
                            .round_to_top(released_bits)
                    })
                    .collect();
                ((fresh_a, slots), masks)
            })
            .collect();
        let (packed, values): (Vec<_>, Vec<Vec<u128>>) = results.into_iter().unzip();
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

impl Masks {
    /// The evaluator's additive shares of the released results: −r_j modulo
    /// 2^[`modulus_bits`](Self::modulus_bits). Added to the key owner's decryption
    /// (x_j^T v + r_j) they give x_j^T v modulo that power of two; the two halves of such a
    /// pair are each uniform on their own.
    pub fn shares(&self) -> Vec<u128> {
        let modulus_mask = (1u128 << self.message_bits) - 1;
        self.values
            .iter()
            .map(|&r| r.wrapping_neg() & modulus_mask)
            .collect()
    }

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
        let modulus_mask = (1u128 << first.message_bits) - 1;
        let mut values = vec![0u128; first.values.len()];
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
    pub fn unmask(&self, decrypted: &[u128]) -> Result<Vec<i128>, HeError> {
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
    use crate::entities::{PreparedMatrix, SecretKey};
    use crate::params::N8192_Q192;

    impl SecretKey {
        /// The noise of each released value as the key owner sees it.
        fn released_noise(&self, masked: &MaskedColumns) -> Vec<i128> {
            let spacing = self.params.poly_size >> masked.levels;
            let scale_bits = self.params.delta_bits() + masked.levels;
            masked
                .packed
                .iter()
                .flat_map(|(a, b)| {
                    let a_s = self.ring.mul_wide_small(a, self.small_key());
                    b.iter()
                        .enumerate()
                        .map(|(slot, b)| {
                            let noisy = b.wrapping_sub(a_s[slot * spacing]);
                            let half = U192::from_u128(1).shl(scale_bits - 1);
                            let message = noisy.wrapping_add(half).shr(scale_bits).shl(scale_bits);
                            noisy
                                .wrapping_sub(message)
                                .to_i128()
                                .expect("noise below 2^127")
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
        let params = N8192_Q192;
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
        let (bare_small, _) = sample(&small, &unpacked, 0, 192, 1);
        let (bare_large, _) = sample(&large, &unpacked, 0, 192, 1);
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
            let (flood_small, levels) = sample(
                &small,
                packing,
                params.flood_bits,
                params.released_bits,
                calls,
            );
            let (flood_large, _) = sample(
                &large,
                packing,
                params.flood_bits,
                params.released_bits,
                calls,
            );
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
        let params = N8192_Q192;
        let (secret, public) = SecretKey::generate(&params);
        let packing = secret.packing_key(5).unwrap();
        let rows = 1000;
        let v: Vec<i64> = (0..rows as i64).map(|i| (i * 7919) % 2001 - 1000).collect();
        let encrypted = secret.encrypt(&v, 1000).unwrap();
        for (columns, entry, expected_levels) in [(37, 500, 5), (100, 500, 5), (3, 1 << 15, 1)] {
            let x: Vec<i64> = (0..rows * columns)
                .map(|i| (i as i64 * 104_729) % (2 * entry + 1) - entry)
                .collect();
            let matrix = PreparedMatrix::new(&params, rows, columns, &x).unwrap();
            let mut product = public.multiply(&params, &encrypted, &matrix).unwrap();
            if entry == 1 << 15 {
                // A declared bound of 2^115 leaves 117 − 116 = 1 level.
                product.widen_bound(1 << 115);
            }
            let (masked, masks) = public.mask_and_flood(&params, product, &packing).unwrap();
            assert_eq!(masked.levels(), expected_levels, "{columns} columns");
            let expected: Vec<i128> = x
                .chunks(rows)
                .map(|c| c.iter().zip(&v).map(|(a, b)| i128::from(a * b)).sum())
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
        let params = N8192_Q192;
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
        let params = N8192_Q192;
        let (secret, public) = SecretKey::generate(&params);
        let v = secret.encrypt(&[5, -3], 5).unwrap();
        let first = PreparedMatrix::new(&params, 2, 2, &[1, 0, 0, 1]).unwrap();
        let second = PreparedMatrix::new(&params, 2, 2, &[2, 2, -1, 1]).unwrap();
        let packing = secret.packing_key(1).unwrap();
        let (mut total, mut masks) = (vec![0u128; 2], Vec::new());
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
