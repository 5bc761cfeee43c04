//! Exactness at the largest supported sizes and the error paths.

use he::*;
use rand::RngExt;

fn random_values(n: usize, bound: i64) -> Vec<i64> {
    let mut rng = rand::rng();
    (0..n).map(|_| rng.random_range(-bound..=bound)).collect()
}

/// Uniform values in [−bound, bound] of the whole plaintext width.
fn random_wide(n: usize, bound: i128) -> Vec<i128> {
    let mut rng = rand::rng();
    (0..n).map(|_| rng.random_range(-bound..=bound)).collect()
}

fn max_abs(v: &[i64]) -> i128 {
    v.iter().map(|x| i128::from(x.abs())).max().unwrap_or(0)
}

fn widen(v: &[i64]) -> Vec<i128> {
    v.iter().map(|&x| i128::from(x)).collect()
}

fn plain_product(v: &[i64], x: &[i64], rows: usize) -> Vec<i128> {
    x.chunks(rows)
        .map(|column| {
            column
                .iter()
                .zip(v)
                .map(|(a, b)| i128::from(*a) * i128::from(*b))
                .sum()
        })
        .collect()
}

fn round_trip(
    secret: &SecretKey,
    public: &PublicKey,
    v: &EncryptedVector,
    x: &PreparedMatrix,
) -> Vec<i128> {
    let params = N8192_Q192;
    let product = public.multiply(&params, v, x).unwrap();
    let packing = secret.packing_key(params.max_pack_levels).unwrap();
    open(secret, public, product, &packing).0
}

/// n = 2^20 samples with 16-bit values on both sides: results up to 2^50, exact.
#[test]
fn largest_sizes_are_exact() {
    let params = N8192_Q192;
    let rows = params.max_rows;
    let (secret, public) = SecretKey::generate(&params);
    let v = random_values(rows, 1 << 15);
    let mut x = random_values(rows * 2, params.max_matrix_abs);
    // One column at the extreme: every product at its largest magnitude, all the same sign.
    for (xi, vi) in x[..rows].iter_mut().zip(&v) {
        *xi = if *vi >= 0 {
            params.max_matrix_abs
        } else {
            -params.max_matrix_abs
        };
    }
    let encrypted = secret.encrypt(&v, max_abs(&v)).unwrap();
    let matrix = PreparedMatrix::new(&params, rows, 2, &x).unwrap();
    let got = round_trip(&secret, &public, &encrypted, &matrix);
    let expected = plain_product(&v, &x, rows);
    assert!(
        expected[0] > 1 << 47,
        "the extreme column reaches {}",
        expected[0]
    );
    assert_eq!(got, expected);
}

/// Results of the plaintext's full width: values near 2^100 times small columns give products
/// near 2^114, whose declared bound leaves one packing level; they come back exact, and one
/// more bit of bound is refused.
#[test]
fn products_near_the_top_of_the_plaintext_are_exact() {
    let params = N8192_Q192;
    let (secret, public) = SecretKey::generate(&params);
    let rows = 40;
    let big = 1i128 << 100;
    let v: Vec<i128> = (0..rows as i128)
        .map(|i| big - 977 * i * (i % 3 - 1))
        .collect();
    let columns = 3;
    let x: Vec<i64> = (0..rows * columns)
        .map(|i| [1023, -1023, 511][i / rows] - (i % 7) as i64)
        .collect();
    let encrypted = secret.encrypt(&v, big + 977 * 40).unwrap();
    let matrix = PreparedMatrix::new(&params, rows, columns, &x).unwrap();
    let product = public.multiply(&params, &encrypted, &matrix).unwrap();
    // Bound ≈ 2^100 · 40 · 1023 ≈ 2^115.3: 117 − 116 = 1 packing level is what still fits.
    assert!(product.bound() > 1 << 115);
    let packing = secret.packing_key(params.max_pack_levels).unwrap();
    let (masked, masks) = public.mask_and_flood(&params, product, &packing).unwrap();
    assert_eq!(masked.levels(), 1);
    let got = masks
        .unmask(&secret.decrypt_masked(&masked).unwrap())
        .unwrap();
    let expected: Vec<i128> = x
        .chunks(rows)
        .map(|column| {
            column
                .iter()
                .zip(&v)
                .map(|(&a, &b)| i128::from(a) * b)
                .sum()
        })
        .collect();
    assert!(
        expected.iter().all(|e| e.unsigned_abs() > 1 << 112),
        "{expected:?}"
    );
    assert_eq!(got, expected);
    // Twice the bound could wrap the 118-bit plaintext: refused.
    let doubled = secret.encrypt(&v, 2 * (big + 977 * 40)).unwrap();
    let wider: Vec<i64> = x.iter().map(|&a| a * 2).collect();
    let wider = PreparedMatrix::new(&params, rows, columns, &wider).unwrap();
    assert!(matches!(
        public.multiply(&params, &doubled, &wider),
        Err(HeError::ProductTooLarge { .. })
    ));
}

#[test]
fn encrypt_add_decrypt_across_block_boundaries() {
    let params = N8192_Q192;
    let (secret, public) = SecretKey::generate(&params);
    let n = params.poly_size * 2 + 17;
    let v = random_values(n, 1 << 20);
    let mut encrypted = secret.encrypt(&v, 1 << 20).unwrap();
    assert_eq!(secret.decrypt(&encrypted).unwrap(), widen(&v));
    let w = random_values(n, 1 << 20);
    encrypted.add_plain(&params, &w).unwrap();
    let sum: Vec<i64> = v.iter().zip(&w).map(|(a, b)| a + b).collect();
    assert_eq!(secret.decrypt(&encrypted).unwrap(), widen(&sum));
    // Values of the whole plaintext width round-trip too.
    let wide = random_wide(n, params.max_message_abs());
    let encrypted_wide = secret.encrypt(&wide, params.max_message_abs()).unwrap();
    assert_eq!(secret.decrypt(&encrypted_wide).unwrap(), wide);
    let x = random_values(n * 3, 1000);
    let matrix = PreparedMatrix::new(&params, n, 3, &x).unwrap();
    assert_eq!(
        round_trip(&secret, &public, &encrypted, &matrix),
        plain_product(&sum, &x, n)
    );
}

#[test]
fn out_of_range_inputs_are_errors() {
    let params = N8192_Q192;
    let (secret, public) = SecretKey::generate(&params);
    let too_big = params.max_message_abs() + 1;
    assert_eq!(
        secret
            .encrypt(&[0, too_big], params.max_message_abs())
            .unwrap_err(),
        HeError::MessageOutOfRange {
            index: 1,
            value: too_big,
            max: params.max_message_abs()
        }
    );
    assert!(secret.encrypt(&[i64::MIN], 1).is_err());
    assert!(secret
        .encrypt(&[i128::MIN], params.max_message_abs())
        .is_err());
    // A declared bound beyond the plaintext space, or a value beyond the declared bound.
    assert!(secret.encrypt(&[1], too_big).is_err());
    assert_eq!(
        secret.encrypt(&[1, -9], 8).unwrap_err(),
        HeError::MessageOutOfRange {
            index: 1,
            value: -9,
            max: 8
        }
    );
    assert_eq!(
        PreparedMatrix::new(&params, 2, 2, &[0, 1, 2, 1 << 16]).unwrap_err(),
        HeError::MatrixEntryOutOfRange {
            row: 1,
            column: 1,
            value: 1 << 16,
            max: 1 << 15
        }
    );
    assert!(matches!(
        PreparedMatrix::new(&params, 2, 2, &[0, 1, 2]),
        Err(HeError::SizeMismatch { .. })
    ));
    let v = secret.encrypt(&[1, 2, 3], 3).unwrap();
    let wrong_rows = PreparedMatrix::new(&params, 2, 1, &[1, 1]).unwrap();
    assert!(matches!(
        public.multiply(&params, &v, &wrong_rows),
        Err(HeError::SizeMismatch { .. })
    ));
    // |v| ≤ 2^103 and Σ|x| = 3·2^15: the worst case 2^119.6 could wrap a 118-bit space.
    let big = secret.encrypt(&[1i128 << 103, 0, 0], 1 << 103).unwrap();
    let wide = PreparedMatrix::new(&params, 3, 1, &[1 << 15, 1 << 15, 1 << 15]).unwrap();
    assert!(matches!(
        public.multiply(&params, &big, &wide),
        Err(HeError::ProductTooLarge { .. })
    ));
    let mut sum = secret.encrypt(&[1], 1).unwrap();
    assert!(sum.add_plain(&params, &[1, 2]).is_err());
    assert!(sum.add_plain(&params, &[params.max_message_abs()]).is_err());
}

#[test]
fn encrypted_columns_times_a_plain_vector_give_additive_shares() {
    let params = N8192_Q192;
    let (secret, public) = SecretKey::generate(&params);
    let packing = secret.packing_key(3).unwrap();
    // Two blocks and a remainder; four bounded columns and one of uniform residues that wraps.
    let rows = params.poly_size + 1234;
    let columns: Vec<Vec<i64>> = (0..4).map(|_| random_values(rows, 1 << 15)).collect();
    let modulus = 1i128 << params.message_bits;
    let wrapping: Vec<i128> = random_wide(rows, params.max_message_abs());
    let v = random_values(rows, 1 << 12);
    let mut encrypted: Vec<EncryptedVector> = columns
        .iter()
        .map(|c| secret.encrypt(c, 1 << 15).unwrap())
        .collect();
    encrypted.push(secret.encrypt(&wrapping, params.max_message_abs()).unwrap());
    let prepared = public.prepare_columns(&params, &encrypted).unwrap();
    assert_eq!((prepared.rows(), prepared.columns()), (rows, 5));
    let vector = PreparedMatrix::new(&params, rows, 1, &v).unwrap();
    let bound = (rows as i128) << 27;
    let product = public
        .multiply_columns(&params, &prepared, &vector, bound)
        .unwrap();
    let (masked, masks) = public.mask_and_flood(&params, product, &packing).unwrap();
    let bits = masked.modulus_bits();
    assert_eq!(bits, masks.modulus_bits());
    let decrypted = secret.decrypt_masked(&masked).unwrap();
    let modulus_mask = (1u128 << bits) - 1;
    let got: Vec<u128> = decrypted
        .iter()
        .zip(masks.shares())
        .map(|(d, s)| d.wrapping_add(s) & modulus_mask)
        .collect();
    let exact = |c: Vec<i128>| -> u128 {
        // Σ x·y modulo 2^p, with wrapping products of wide residues.
        let sum = c.iter().zip(&v).fold(0i128, |acc, (x, y)| {
            acc.wrapping_add(x.wrapping_mul(i128::from(*y)))
        });
        (sum.rem_euclid(modulus) as u128) & modulus_mask
    };
    let expected: Vec<u128> = columns
        .iter()
        .map(|c| widen(c))
        .chain(std::iter::once(wrapping.clone()))
        .map(exact)
        .collect();
    assert_eq!(got, expected);
    // Each share alone is not the product.
    assert!(decrypted.iter().zip(&expected).all(|(d, e)| d != e));
    // Columns of another key, rows that differ and an out-of-range bound are refused.
    let (other, _) = SecretKey::generate(&params);
    assert!(matches!(
        public.prepare_columns(&params, &[other.encrypt(&[1], 1).unwrap()]),
        Err(HeError::WrongKey { .. })
    ));
    assert!(matches!(
        public.prepare_columns(
            &params,
            &[encrypted[0].clone(), secret.encrypt(&[1], 1).unwrap()]
        ),
        Err(HeError::SizeMismatch { .. })
    ));
    let short = PreparedMatrix::new(&params, 3, 1, &[1, 2, 3]).unwrap();
    assert!(matches!(
        public.multiply_columns(&params, &prepared, &short, bound),
        Err(HeError::SizeMismatch { .. })
    ));
    assert!(public
        .multiply_columns(&params, &prepared, &vector, -1)
        .is_err());
}

/// A vector transformed once and multiplied by several matrices gives what `multiply` gives,
/// and is refused as `multiply` would refuse it.
#[test]
fn a_prepared_vector_multiplies_like_an_encrypted_one() {
    let params = N8192_Q192;
    let rows = 3 * params.poly_size / 2;
    let (secret, public) = SecretKey::generate(&params);
    let v = random_values(rows, 1);
    let encrypted = secret.encrypt(&v, 1).unwrap();
    let prepared = public
        .prepare_columns(&params, std::slice::from_ref(&encrypted))
        .unwrap();
    let packing = secret.packing_key(3).unwrap();
    for columns in [1, 5] {
        let x = random_values(rows * columns, 1);
        let matrix = PreparedMatrix::new(&params, rows, columns, &x).unwrap();
        let product = public
            .multiply_prepared(&params, &prepared, 1, &matrix)
            .unwrap();
        let (masked, masks) = public.mask_and_flood(&params, product, &packing).unwrap();
        let got = masks
            .unmask(&secret.decrypt_masked(&masked).unwrap())
            .unwrap();
        assert_eq!(got, plain_product(&v, &x, rows));
        assert_eq!(got, round_trip(&secret, &public, &encrypted, &matrix));
    }
    let wide = PreparedMatrix::new(&params, rows, 1, &vec![params.max_matrix_abs; rows]).unwrap();
    assert!(matches!(
        public.multiply_prepared(&params, &prepared, 1 << 100, &wide),
        Err(HeError::ProductTooLarge { .. })
    ));
    let short = PreparedMatrix::new(&params, rows - 1, 1, &vec![1; rows - 1]).unwrap();
    assert!(public
        .multiply_prepared(&params, &prepared, 1, &short)
        .is_err());
}

/// A matrix of bin indicators multiplies like the same 0/1 values given one by one, across
/// blocks, and rows out of order or beyond the matrix are refused.
#[test]
fn bin_indicators_multiply_like_their_zero_one_values() {
    let params = N8192_Q192;
    let rows = 3 * params.poly_size / 2 + 7;
    let (secret, public) = SecretKey::generate(&params);
    let v = random_values(rows, 1);
    let encrypted = secret.encrypt(&v, 1).unwrap();
    let packing = secret.packing_key(3).unwrap();
    let mut rng = rand::rng();
    let first: Vec<u32> = (0..rows).map(|_| rng.random_range(0..4)).collect();
    let second: Vec<u32> = (0..rows).map(|_| rng.random_range(0..2)).collect();
    let columns = [(&first, 0), (&first, 3), (&second, 1), (&first, 9)];
    let x: Vec<i64> = columns
        .iter()
        .flat_map(|&(bins, bin)| bins.iter().map(move |&b| i64::from(b == bin)))
        .collect();
    let ones: Vec<Vec<u32>> = columns
        .iter()
        .map(|&(bins, bin)| {
            (0..rows as u32)
                .filter(|&r| bins[r as usize] == bin)
                .collect()
        })
        .collect();
    let slices: Vec<&[u32]> = ones.iter().map(Vec::as_slice).collect();
    let matrix = PreparedMatrix::indicators(&params, rows, &slices).unwrap();
    let product = public.multiply(&params, &encrypted, &matrix).unwrap();
    let (masked, masks) = public.mask_and_flood(&params, product, &packing).unwrap();
    let got = masks
        .unmask(&secret.decrypt_masked(&masked).unwrap())
        .unwrap();
    assert_eq!(got, plain_product(&v, &x, rows));
    assert_eq!(got[3], 0, "a bin no row is in counts nothing");
    for wrong in [&[3, 2][..], &[rows as u32][..]] {
        assert!(matches!(
            PreparedMatrix::indicators(&params, rows, &[wrong]),
            Err(HeError::SizeMismatch { .. })
        ));
    }
}

/// Releases a product to the key owner and opens it: the results and their modulus bits.
fn open(
    secret: &SecretKey,
    public: &PublicKey,
    product: EncryptedColumns,
    packing: &PackingKey,
) -> (Vec<i128>, u32) {
    let (masked, masks) = public
        .mask_and_flood(&N8192_Q192, product, packing)
        .unwrap();
    let got = masks
        .unmask(&secret.decrypt_masked(&masked).unwrap())
        .unwrap();
    (got, masks.modulus_bits())
}

/// Spread products (many results per ciphertext product) give every result exactly, in
/// order, for single and multiple chunks, one or several released ciphertexts, and packing
/// keys that pack less far than the layout would like.
#[test]
fn spread_products_are_exact() {
    let params = N8192_Q192;
    let (secret, public) = SecretKey::generate(&params);
    let share_bound = (1i128 << 107) - 1;
    for (rows, columns, chunk, pack_levels) in [
        (147, 63, 256, 10),
        (700, 45, 256, 10),
        (300, 1500, 512, 10),
        (40, 37, 64, 8),
        (5, 3, 8192, 10),
    ] {
        let packing = secret.packing_key(pack_levels).unwrap();
        let v = random_wide(rows, share_bound);
        let x = random_values(rows * columns, params.max_matrix_abs);
        let matrix =
            SpreadMatrix::new(&params, rows, columns, &x, chunk, pack_levels, share_bound).unwrap();
        let chunks: Vec<EncryptedVector> = v
            .chunks(matrix.chunk())
            .map(|c| secret.encrypt(c, share_bound).unwrap())
            .collect();
        let product = public.multiply_spread(&params, &chunks, &matrix).unwrap();
        assert_eq!(product.len(), columns);
        let (got, bits) = open(&secret, &public, product, &packing);
        assert!(bits >= 108, "released modulus 2^{bits}");
        assert_eq!(got.len(), columns);
        let modulus_mask = (1u128 << bits) - 1;
        for (column, &got) in got.iter().enumerate() {
            let want = x[column * rows..(column + 1) * rows]
                .iter()
                .zip(&v)
                .fold(0u128, |acc, (&x, &v)| {
                    acc.wrapping_add((x as i128).wrapping_mul(v) as u128)
                });
            assert_eq!(
                got as u128 & modulus_mask,
                want & modulus_mask,
                "{rows}×{columns} in chunks of {chunk}: result {column}"
            );
        }
    }
}

/// Column products in the block layout equal plain integer products, in column order, for
/// shapes that fill groups and chunks exactly and ones that do not.
#[test]
fn block_products_are_exact() {
    let params = N8192_Q192;
    let (secret, public) = SecretKey::generate(&params);
    let packing = secret.packing_key(params.max_pack_levels).unwrap();
    for (rows, columns) in [(3000, 11), (20_000, 31), (700, 300), (9000, 1)] {
        let c = random_values(rows * columns, 1 << 13);
        let v = random_values(rows, params.max_matrix_abs);
        let blocks = secret
            .encrypt_blocks(&c, rows, columns, 1 << 13, params.max_pack_levels)
            .unwrap();
        let prepared = public.prepare_blocks(&params, &blocks).unwrap();
        let bound = (1i128 << 28) * rows as i128;
        let product = public
            .multiply_blocks(&params, &prepared, &v, bound)
            .unwrap();
        assert_eq!(product.len(), columns);
        let (got, _) = open(&secret, &public, product, &packing);
        assert_eq!(got, plain_product(&v, &c, rows), "{rows} × {columns}");
    }
}
