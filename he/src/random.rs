//! Randomness: fresh seeds, the CSPRNG every random draw goes through, and the encryption
//! noise distribution.

use tfhe::core_crypto::commons::math::random::{RandomGenerator, Seed};
use tfhe::core_crypto::prelude::*;

use crate::params::Params;

/// A 128-bit seed from tfhe's seeder (RDSEED where the CPU has it) mixed with the operating
/// system's generator: unpredictable as long as either source is.
pub(crate) fn fresh_seed() -> Seed {
    use rand::Rng;
    let hardware = new_seeder().seed().0;
    let mut os = [0u8; 16];
    rand::rng().fill_bytes(&mut os);
    Seed(hardware ^ u128::from_le_bytes(os))
}

/// A CSPRNG (tfhe's) seeded with a [`fresh_seed`].
pub(crate) fn csprng() -> RandomGenerator<DefaultRandomGenerator> {
    RandomGenerator::<DefaultRandomGenerator>::new(fresh_seed())
}

/// The encryption noise: tfhe's Gaussian of standard deviation `params.noise_std`.
pub(crate) fn gaussian(params: &Params) -> Gaussian<f64> {
    // tfhe expresses the standard deviation relative to q = 2^128.
    Gaussian::from_dispersion_parameter(StandardDev(params.noise_std * 2f64.powi(-128)), 0.0)
}
