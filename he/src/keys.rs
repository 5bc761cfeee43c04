//! Key generation: the key owner's secret and public key, and the packing keys evaluators
//! need to pack results before release.

use rayon::prelude::*;
use tfhe::core_crypto::prelude::*;
use zeroize::Zeroize;

use crate::entities::{KeyId, PackingKey, PublicKey, SecretKey};
use crate::error::HeError;
use crate::pack::{automorphism, digit_weight_bits};
use crate::params::Params;
use crate::random::fresh_seed;
use crate::ring::ring_for;
use crate::wide::U192;

impl SecretKey {
    /// A fresh key pair from the operating system's entropy (through tfhe's seeder and CSPRNG).
    pub fn generate(params: &Params) -> (SecretKey, PublicKey) {
        let n = params.poly_size;
        let mut secret_gen = SecretRandomGenerator::<DefaultRandomGenerator>::new(fresh_seed());
        let glwe: GlweSecretKey<Vec<u64>> = allocate_and_generate_new_binary_glwe_secret_key(
            GlweDimension(1),
            PolynomialSize(n),
            &mut secret_gen,
        );
        let mut bits = glwe.into_container();
        let coefficients = bits.iter().map(|&b| b as i64).collect();
        bits.zeroize();
        let secret = SecretKey {
            params: *params,
            id: KeyId(fresh_seed().0.to_le_bytes()),
            coefficients,
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
                let mut wide: Vec<U192> = self
                    .coefficients
                    .iter()
                    .map(|&c| U192::from_i64(c))
                    .collect();
                let mut rotated = automorphism(&wide, (1 << level) + 1);
                let blocks = (0..self.params.ks_digits as usize)
                    .map(|digit| {
                        let weight = digit_weight_bits(&self.params, digit);
                        let mut scaled: Vec<U192> = rotated.iter().map(|c| c.shl(weight)).collect();
                        let block = self.encrypt_raw(&scaled);
                        scaled.zeroize();
                        block
                    })
                    .collect();
                // Copies of the secret are wiped like the key itself.
                wide.zeroize();
                rotated.zeroize();
                blocks
            })
            .collect();
        Ok(PackingKey::new(&self.params, &self.ring, self.id, blocks))
    }
}
