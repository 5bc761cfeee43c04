//! Additive secret shares modulo 2^108 and the share × share product through HE.
//!
//! A value x is split as x = a + b mod 2^[`SHARE_BITS`] between two parties; each half on
//! its own is uniform. Fixed-point values carry a public number of fraction bits; a product
//! of two fixed-point shares is brought back to scale by [`truncate`], which each party
//! applies to its own share (SecureML, Mohassel and Zhang 2017): the result is the truncated
//! value up to one unit, except with probability 2^(v + 1 − 108) for a v-bit value.
//!
//! **Share × share.** M·v for a matrix M held (as a share or in the clear) by party A and a
//! vector share v held by party B. v is a uniform residue, so it cannot be a plaintext
//! multiplier of a ciphertext (HE noise grows with the multiplier), and M cannot either. B
//! encrypts the gadget copies 2^(16i)·v, i = 0 … 6, under its own key ([`encrypt_vector`]);
//! A multiplies them by the balanced 16-bit digits of M ([`prepare_matrix`]), so every
//! plaintext multiplier lies within ±2^15 and the flooding argument of the `he` crate holds;
//! A masks and releases the result to B ([`release_product`]), keeping −r as its share, and B
//! decrypts M·v + r as its share ([`receive_product`]). B learns nothing (uniform masks under
//! flooding); A sees only ciphertexts under B's key.
//!
//! What this does not give: a B that encrypts something other than gadget copies of its
//! share (unit vectors, say) reads digits of M through its share. Detecting that needs
//! authenticated shares (MACs); the protocol assumes semi-honest parties here and says so.

use he::{
    signed_residue, EncryptedVector, MaskedColumns, PackingKey, Params, PublicKey, SecretKey,
    SpreadMatrix,
};

use crate::error::FedError;

/// Shares live modulo 2^SHARE_BITS: the release modulus 2^(118 − ℓ) at the largest packing
/// level ℓ = 10 (share products, whose declared bound is 2^107, pack at most 9 levels), so
/// that every release reduces to it.
pub(crate) const SHARE_BITS: u32 = 108;

const MODULUS_MASK: u128 = (1u128 << SHARE_BITS) - 1;

/// Digit width and count of the gadget decomposition: 7 digits of 16 bits cover 112 ≥ 108.
const DIGIT_BITS: u32 = 16;
const DIGITS: usize = 7;

/// The bound an evaluator declares on share products: they are uniform residues, so the
/// whole (signed) share range.
const PRODUCT_BOUND: i128 = 1i128 << (SHARE_BITS - 1);

/// A residue modulo 2^SHARE_BITS.
pub(crate) fn residue(x: i128) -> u128 {
    (x as u128) & MODULUS_MASK
}

/// A share read as a signed integer in [−2^107, 2^107).
pub(crate) fn signed(x: u128) -> i128 {
    signed_residue(x & MODULUS_MASK, SHARE_BITS)
}

/// a + b.
pub(crate) fn add(a: u128, b: u128) -> u128 {
    a.wrapping_add(b) & MODULUS_MASK
}

/// a − b.
pub(crate) fn sub(a: u128, b: u128) -> u128 {
    a.wrapping_sub(b) & MODULUS_MASK
}

/// c·a for a public integer c.
pub(crate) fn scale(a: u128, c: i128) -> u128 {
    a.wrapping_mul(c as u128) & MODULUS_MASK
}

/// Splits values into two uniform shares (the first drawn from `random`).
#[cfg(test)]
pub(crate) fn split(values: &[i128], random: &mut impl FnMut() -> u128) -> (Vec<u128>, Vec<u128>) {
    values
        .iter()
        .map(|&x| {
            let a = random() & MODULUS_MASK;
            (a, sub(residue(x), a))
        })
        .unzip()
}

/// The values two shares stand for.
#[cfg(test)]
pub(crate) fn join(a: &[u128], b: &[u128]) -> Vec<i128> {
    a.iter().zip(b).map(|(&a, &b)| signed(add(a, b))).collect()
}

/// One party's half of a local truncation by 2^bits. The party with `first` shifts its
/// share; the other shifts the negation of its share and negates back. The two results add
/// up to ⌊x / 2^bits⌋ or one more, except with probability 2^(v + 1 − 108) when |x| < 2^v.
pub(crate) fn truncate(share: u128, bits: u32, first: bool) -> u128 {
    if first {
        (share & MODULUS_MASK) >> bits
    } else {
        sub(0, sub(0, share) >> bits)
    }
}

/// Multiplies a share by 2^shift (shift > 0, exact) or truncates it by 2^−shift.
pub(crate) fn rescale(share: u128, shift: i32, first: bool) -> u128 {
    if shift >= 0 {
        (share << shift) & MODULUS_MASK
    } else {
        truncate(share, shift.unsigned_abs(), first)
    }
}

/// The gadget copies 2^(16i)·v, digit-major (index i·len + k), as signed residues.
fn gadget(v: &[u128]) -> Vec<i128> {
    (0..DIGITS)
        .flat_map(|i| v.iter().map(move |&x| signed(x << (DIGIT_BITS * i as u32))))
        .collect()
}

/// The balanced base-2^16 digits of a share read as a signed integer: each in
/// [−2^15, 2^15), Σ d_i·2^(16i) = x exactly.
fn digits(x: u128) -> [i64; DIGITS] {
    let mut rest = signed(x);
    let mut out = [0i64; DIGITS];
    for digit in &mut out {
        let half = 1i128 << (DIGIT_BITS - 1);
        let d = ((rest + half) & ((1i128 << DIGIT_BITS) - 1)) - half;
        *digit = d as i64;
        rest = (rest - d) >> DIGIT_BITS;
    }
    debug_assert_eq!(rest, 0);
    out
}

/// Values per encrypted chunk for a product of `outputs` results with a vector of `inputs`
/// shares, released to a key owner whose packing key packs `levels` levels: the power of two
/// that minimises the ciphertexts to pack (outputs·chunk/N) plus four times the chunks to
/// encrypt and send (a chunk costs about four packing steps).
fn chunk_for(params: &Params, levels: u32, inputs: usize, outputs: usize) -> usize {
    let n = params.poly_size;
    let length = DIGITS * inputs;
    // Results of up to 2^108 fit 2^k per ciphertext while 108 + k < p.
    let fits = params.message_bits - 1 - SHARE_BITS;
    (0..=levels.min(fits))
        .map(|k| n >> k)
        .min_by_key(|&chunk| 4 * length.div_ceil(chunk) + (outputs * chunk).div_ceil(n))
        .expect("at least one chunk size")
}

/// The vector holder's half of a share × share product with `outputs` results: its gadget
/// copies, encrypted under its own key (whose packing key packs `levels` levels) in the
/// chunks the product needs.
pub(crate) fn encrypt_vector(
    secret: &SecretKey,
    params: &Params,
    levels: u32,
    v: &[u128],
    outputs: usize,
) -> Result<Vec<EncryptedVector>, FedError> {
    let chunk = chunk_for(params, levels, v.len(), outputs);
    gadget(v)
        .chunks(chunk)
        .map(|values| secret.encrypt(values, PRODUCT_BOUND))
        .collect::<Result<_, _>>()
        .map_err(|source| FedError::He {
            context: "encrypting a share vector",
            source,
        })
}

/// The matrix holder's half: the digits of M (`rows` × `columns`, row-major residues) laid
/// out to multiply gadget copies, prepared once for any number of products released to a key
/// owner whose packing key packs `owner_levels` levels.
pub(crate) fn prepare_matrix(
    params: &Params,
    matrix: &[u128],
    rows: usize,
    columns: usize,
    owner_levels: u32,
) -> Result<SpreadMatrix, FedError> {
    if matrix.len() != rows * columns {
        return Err(FedError::LengthMismatch {
            what: "share matrix entries",
            expected: rows * columns,
            got: matrix.len(),
        });
    }
    // Column-major with one column per result: result j reads row j of M.
    let height = DIGITS * columns;
    let mut values = vec![0i64; rows * height];
    for (j, row) in matrix.chunks(columns.max(1)).enumerate() {
        for (k, &x) in row.iter().enumerate() {
            for (i, d) in digits(x).into_iter().enumerate() {
                values[j * height + i * columns + k] = d;
            }
        }
    }
    let chunk = chunk_for(params, owner_levels, columns, rows);
    SpreadMatrix::new(
        params,
        height,
        rows,
        &values,
        chunk,
        owner_levels,
        PRODUCT_BOUND,
    )
    .map_err(|source| FedError::He {
        context: "preparing a share matrix",
        source,
    })
}

/// The matrix holder's product with the encrypted gadget copies of `peer`, the vector holder,
/// masked and flooded for release to it; returns the release and the holder's shares. A
/// vector that does not fit the product (another count of ciphertexts, another key, a larger
/// bound) is the peer's protocol error.
pub(crate) fn release_product(
    params: &Params,
    owner_public: &PublicKey,
    owner_packing: &PackingKey,
    vector: &[EncryptedVector],
    matrix: &SpreadMatrix,
    peer: &str,
) -> Result<(MaskedColumns, Vec<u128>), FedError> {
    let product = owner_public
        .multiply_spread(params, vector, matrix)
        .map_err(|source| FedError::Protocol {
            peer: peer.into(),
            reason: format!("its encrypted vector does not fit the product: {source}"),
        })?;
    let (masked, masks) = owner_public
        .mask_and_flood(params, product, owner_packing)
        .map_err(|source| FedError::He {
            context: "releasing a share product",
            source,
        })?;
    let shares = masks
        .shares()
        .into_iter()
        .map(|s| s & MODULUS_MASK)
        .collect();
    Ok((masked, shares))
}

/// The vector holder's shares of M·v from the matrix holder's release of `expected` results.
pub(crate) fn receive_product(
    secret: &SecretKey,
    masked: &MaskedColumns,
    expected: usize,
    peer: &str,
) -> Result<Vec<u128>, FedError> {
    if masked.len() != expected || masked.modulus_bits() < SHARE_BITS {
        return Err(FedError::Protocol {
            peer: peer.into(),
            reason: format!(
                "a share product must hold {expected} results modulo at least 2^{SHARE_BITS}"
            ),
        });
    }
    let decrypted = secret
        .decrypt_masked(masked)
        .map_err(|source| FedError::He {
            context: "decrypting a share product",
            source,
        })?;
    Ok(decrypted.into_iter().map(|x| x & MODULUS_MASK).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use he::N8192_Q192;
    use rand::RngExt;

    fn random() -> u128 {
        rand::rng().random()
    }

    #[test]
    fn digits_and_gadget_rebuild_the_product() {
        let draw = random;
        for _ in 0..1000 {
            let x = draw() & MODULUS_MASK;
            let d = digits(x);
            assert!(d.iter().all(|d| (-(1 << 15)..(1 << 15)).contains(d)));
            let rebuilt = d
                .iter()
                .enumerate()
                .fold(0i128, |acc, (i, &d)| acc + (i128::from(d) << (16 * i)));
            assert_eq!(residue(rebuilt), x);
            let v = draw() & MODULUS_MASK;
            let g = gadget(&[v]);
            let product = d
                .iter()
                .zip(&g)
                .fold(0u128, |acc, (&d, &g)| add(acc, residue(i128::from(d) * g)));
            assert_eq!(product, residue(signed(x).wrapping_mul(signed(v))));
        }
    }

    #[test]
    fn truncation_is_off_by_at_most_one() {
        let mut draw = random;
        let mut off = 0;
        for _ in 0..10_000 {
            let x = (draw() % (1 << 70)) as i128 - (1 << 69);
            let (a, b) = split(&[x], &mut draw);
            let t = join(&[truncate(a[0], 20, true)], &[truncate(b[0], 20, false)])[0];
            let want = x >> 20;
            assert!((t - want).abs() <= 1, "{x}: {t} vs {want}");
            off += usize::from(t != want);
        }
        // The rounding error is a carry: it happens, but not always.
        assert!(off > 0 && off < 10_000);
        let (a, b) = split(&[-5 << 30], &mut draw);
        let up = join(&[rescale(a[0], 3, true)], &[rescale(b[0], 3, false)])[0];
        assert_eq!(up, -5 << 33);
    }

    #[test]
    fn share_products_through_he() {
        let params = N8192_Q192;
        let (secret, public) = SecretKey::generate(&params);
        // Fewer levels than the results need: the product packs what the key allows.
        let packing = secret.packing_key(2).unwrap();
        let draw = random;
        let (rows, columns) = (5, 9);
        let m: Vec<u128> = (0..rows * columns).map(|_| draw() & MODULUS_MASK).collect();
        let v: Vec<u128> = (0..columns).map(|_| draw() & MODULUS_MASK).collect();
        let prepared = prepare_matrix(&params, &m, rows, columns, packing.levels()).unwrap();
        let encrypted = encrypt_vector(&secret, &params, packing.levels(), &v, rows).unwrap();
        let (masked, mine) =
            release_product(&params, &public, &packing, &encrypted, &prepared, "peer").unwrap();
        let theirs = receive_product(&secret, &masked, rows, "peer").unwrap();
        for (j, row) in m.chunks(columns).enumerate() {
            let want = row
                .iter()
                .zip(&v)
                .fold(0u128, |acc, (&a, &b)| add(acc, a.wrapping_mul(b)));
            assert_eq!(add(mine[j], theirs[j]), want, "row {j}");
        }
        assert!(matches!(
            receive_product(&secret, &masked, rows + 1, "peer"),
            Err(FedError::Protocol { .. })
        ));
    }
}
