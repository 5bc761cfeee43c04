//! Randomness: fresh seeds, the CSPRNG every random draw goes through, and the encryption
//! noise distribution.

use tfhe::core_crypto::commons::math::random::{RandomGenerator, Seed};
use tfhe::core_crypto::prelude::*;

use chacha20::ChaCha20Rng;
use rand::SeedableRng;

use crate::params::Params;
use crate::wide::U192;

/// A 128-bit seed from tfhe's seeder (RDSEED where the CPU has it) mixed with the operating
/// system's generator: unpredictable as long as either source is.
pub(crate) fn fresh_seed() -> Seed {
    use rand::Rng;
    let hardware = new_seeder().seed().0;
    let mut os = [0u8; 16];
    rand::rng().fill_bytes(&mut os);
    Seed(hardware ^ u128::from_le_bytes(os))
}

/// A CSPRNG (tfhe's) seeded with a [`fresh_seed`]: draws the Gaussian noise.
pub(crate) fn csprng() -> RandomGenerator<DefaultRandomGenerator> {
    RandomGenerator::<DefaultRandomGenerator>::new(fresh_seed())
}

/// A ChaCha20 generator keyed with two [`fresh_seed`]s (256 bits): draws the uniform
/// randomness of a release (the binary re-randomiser, the masks and the flooding) in bulk.
pub(crate) fn stream() -> ChaCha20Rng {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(&fresh_seed().0.to_le_bytes());
    key[16..].copy_from_slice(&fresh_seed().0.to_le_bytes());
    ChaCha20Rng::from_seed(key)
}

/// The encryption noise: tfhe's Gaussian of standard deviation `params.noise_std`.
fn gaussian(params: &Params) -> Gaussian<f64> {
    // tfhe expresses the standard deviation relative to the modulus of the integers it draws,
    // here 2^64.
    Gaussian::from_dispersion_parameter(StandardDev(params.noise_std * 2f64.powi(-64)), 0.0)
}

/// `count` draws of the encryption noise, as coefficients of Z/2^192.
pub(crate) fn gaussian_noise(
    params: &Params,
    rng: &mut RandomGenerator<DefaultRandomGenerator>,
    count: usize,
) -> Vec<U192> {
    let mut noise = vec![0u64; count];
    rng.fill_slice_with_random_from_distribution(&mut noise, gaussian(params));
    noise
        .into_iter()
        .map(|e| U192::from_i64(e as i64))
        .collect()
}
