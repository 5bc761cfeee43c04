//! Coefficient-packed RLWE additively homomorphic encryption over Z/2^192, sans-IO.
//!
//! Built for one job: a host holding a plaintext matrix X computes X^T v for a vector v that
//! another party (the key owner) encrypted, and lets the key owner learn X^T v + r for a
//! uniform mask r that only the host knows — nothing about X, nothing about v beyond that.
//!
//! - Ciphertexts are RLWE pairs (a, b = a·s + e + Δ·m) in Z_q[X]/(X^N + 1), q = 2^192,
//!   Δ = 2^(192−p); N values per ciphertext; `a` is expanded from a seed, so a fresh ciphertext
//!   costs 24 bytes per value on the wire. Keys, noise and seeds come from `tfhe::core_crypto`.
//!   The plaintext space, 2^118, is wide enough to carry additive secret shares of fixed-point
//!   values (see [`N8192_Q192`]).
//! - X^T v: for feature j and block b, P_bj(X) = x_0 − Σ_{i≥1} x_i X^(N−i) puts the block's
//!   inner product in the constant coefficient of V_b·P_bj. Products are exact: four 62-bit
//!   NTT primes and the CRT (see `ring`), accumulated over blocks in the NTT domain with
//!   X's transforms precomputed once per data set.
//! - Release: the host packs up to 2^ℓ results into one ciphertext (automorphisms and key
//!   switching with the owner's [`PackingKey`], see `pack`), adds Δ·2^ℓ·r_j, a fresh
//!   encryption of zero under the owner's public key (the mask polynomial no longer depends on
//!   X) and uniform flooding noise (the decrypted noise no longer depends on X), and sends the
//!   mask polynomial with the body's slot coefficients, rounded to their top 136 bits.
//!
//! Parameters, the security estimate and the flooding argument: [`N8192_Q192`]. Public and
//! packing keys, encrypted vectors and masked columns encode to versioned, length-checked bytes
//! (`to_bytes` / `from_bytes`, also through serde).
//!
//! ```
//! use he::{SecretKey, PreparedMatrix, N8192_Q192};
//!
//! let params = N8192_Q192;
//! let (secret, public) = SecretKey::generate(&params);          // key owner
//! let v = secret.encrypt(&[3, -1, 4], 4)?;  // key owner → host; 4 is the public bound
//! let x = PreparedMatrix::new(&params, 3, 2, &[1, 1, 1, 2, 0, -5])?; // host: 2 columns
//! let packing = secret.packing_key(1)?;                          // key owner → host, once
//! let product = public.multiply(&params, &v, &x)?;              // host
//! let (masked, masks) = public.mask_and_flood(&params, product, &packing)?;
//! let decrypted = secret.decrypt_masked(&masked)?;              // key owner sees x^T v + r
//! assert_eq!(masks.unmask(&decrypted)?, vec![6, -14]);          // host removes r
//! # Ok::<(), he::HeError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

// Modules in layers, each using only modules of lower layers (no cycle):
//   0 error, wide
//   1 params, encoding
//   2 ring, random
//   3 entities: the data types and their accessors
//   4 pack, encrypt, product: operations on them
//   5 keys, release, wire: operations that build on layer 4
mod encoding;
mod encrypt;
mod entities;
mod error;
mod keys;
mod pack;
mod params;
mod product;
mod random;
mod release;
mod ring;
mod wide;
mod wire;

pub use encoding::FixedPoint;
pub use entities::{
    EncryptedBlocks, EncryptedColumns, EncryptedVector, KeyId, MaskedColumns, Masks, PackingKey,
    PreparedBlocks, PreparedColumns, PreparedMatrix, PublicKey, SecretKey, SpreadMatrix,
};
pub use error::HeError;
pub use params::{signed_residue, Params, N8192_Q192};
pub use wire::{FORMAT_VERSION, MAX_COLUMNS};
