//! Encoding: round trips, and malformed input gives typed errors, never a panic.

use he::*;
use proptest::prelude::*;

fn objects() -> (
    SecretKey,
    PublicKey,
    EncryptedVector,
    MaskedColumns,
    PackingKey,
) {
    let params = N8192_Q192;
    let (secret, public) = SecretKey::generate(&params);
    let packing = secret.packing_key(2).unwrap();
    let v = secret.encrypt(&[5, -3, 2], 5).unwrap();
    let x = PreparedMatrix::new(&params, 3, 2, &[1, 2, 3, -1, 0, 4]).unwrap();
    let (masked, _) = public
        .mask_and_flood(&params, public.multiply(&params, &v, &x).unwrap(), &packing)
        .unwrap();
    (secret, public, v, masked, packing)
}

#[test]
fn everything_round_trips_bytes_and_serde() {
    let (secret, public, v, masked, packing) = objects();
    assert_eq!(PublicKey::from_bytes(&public.to_bytes()).unwrap(), public);
    assert_eq!(
        PackingKey::from_bytes(&packing.to_bytes()).unwrap(),
        packing
    );
    // Two levels: two digit-sets of seeded encryptions (24 bytes per coefficient plus a
    // 16-byte seed).
    assert_eq!(packing.to_bytes().len(), 23 + 1 + 2 * 11 * (16 + 24 * 8192));
    assert_eq!(EncryptedVector::from_bytes(&v.to_bytes()).unwrap(), v);
    assert_eq!(
        MaskedColumns::from_bytes(&masked.to_bytes()).unwrap(),
        masked
    );
    let json = serde_json::to_string(&v).unwrap();
    let back: EncryptedVector = serde_json::from_str(&json).unwrap();
    assert_eq!(secret.decrypt(&back).unwrap(), vec![5, -3, 2]);
    // 24 bytes per value plus a 16-byte seed per block, a 23-byte header, the length (8 bytes)
    // and the bound (16 bytes).
    assert_eq!(v.to_bytes().len(), 23 + 24 + 16 + 24 * 8192);
    // Both results share one ciphertext: N mask coefficients and two body coefficients of
    // 136 bits (17 bytes).
    assert_eq!(masked.levels(), 1);
    assert_eq!(masked.to_bytes().len(), 23 + 5 + 17 * (8192 + 2));
}

#[test]
fn truncated_or_extended_bytes_are_errors() {
    let (_, public, v, masked, packing) = objects();
    for bytes in [
        public.to_bytes(),
        v.to_bytes(),
        masked.to_bytes(),
        packing.to_bytes(),
    ] {
        for cut in [0, 3, 22, 23, 30, 39, 40, bytes.len() / 2, bytes.len() - 1] {
            let short = &bytes[..cut];
            assert!(PublicKey::from_bytes(short).is_err());
            assert!(EncryptedVector::from_bytes(short).is_err());
            assert!(MaskedColumns::from_bytes(short).is_err());
            assert!(PackingKey::from_bytes(short).is_err());
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(PublicKey::from_bytes(&long).is_err());
        assert!(EncryptedVector::from_bytes(&long).is_err());
        assert!(MaskedColumns::from_bytes(&long).is_err());
        assert!(PackingKey::from_bytes(&long).is_err());
    }
}

#[test]
fn header_fields_are_checked() {
    let (_, _, v, _, _) = objects();
    let bytes = v.to_bytes();
    let corrupt = |at: usize, value: u8| {
        let mut b = bytes.clone();
        b[at] = value;
        EncryptedVector::from_bytes(&b).unwrap_err().to_string()
    };
    assert_eq!(
        corrupt(0, b'X'),
        "malformed encrypted vector: not an unseen HE object (bad magic)"
    );
    assert_eq!(
        corrupt(4, 9),
        "malformed encrypted vector: format version 9, this build reads 3"
    );
    assert_eq!(
        corrupt(5, 3),
        "malformed encrypted vector: object kind 3 instead of 2"
    );
    assert_eq!(
        corrupt(6, 77),
        "malformed encrypted vector: unknown parameter set 77"
    );
    // Length field claims 2^40 values: refused before any allocation.
    assert_eq!(
        corrupt(23 + 5, 1),
        "malformed encrypted vector: length 1099511627779 is not in 1..=1048576"
    );
    // Value bound beyond the plaintext space.
    assert!(corrupt(23 + 8 + 15, 0x7f).contains("value bound"));
    // Another key id still decodes, but decryption and products refuse it.
    let params = N8192_Q192;
    let (other, _) = SecretKey::generate(&params);
    let mut b = bytes.clone();
    b[10] ^= 1;
    let wrong = EncryptedVector::from_bytes(&b).unwrap();
    assert!(matches!(
        other.decrypt(&wrong),
        Err(HeError::WrongKey { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), kind in 1u8..6) {
        let mut b = b"UNHE".to_vec();
        b.push(FORMAT_VERSION);
        b.push(kind);
        b.push(1);
        b.extend(bytes);
        let _ = PublicKey::from_bytes(&b);
        let _ = EncryptedVector::from_bytes(&b);
        let _ = MaskedColumns::from_bytes(&b);
        let _ = PackingKey::from_bytes(&b);
        let _ = EncryptedBlocks::from_bytes(&b);
    }
}

#[test]
fn encrypted_blocks_round_trip_and_refuse_bad_shapes() {
    let params = N8192_Q192;
    let (secret, public) = SecretKey::generate(&params);
    // 3 rows × 5 columns, packed 4 columns per ciphertext (a chunk of 2048 rows).
    let values: Vec<i64> = (0..15).map(|v| v - 7).collect();
    let blocks = secret.encrypt_blocks(&values, 3, 5, 8, 2).unwrap();
    let bytes = blocks.to_bytes();
    let back = EncryptedBlocks::from_bytes(&bytes).unwrap();
    assert_eq!(back, blocks);
    assert_eq!(back.shape(), (3, 5));
    public.prepare_blocks(&params, &back).unwrap();
    // Header, rows, columns, chunk, bound; then per block a seed and N coefficients.
    let count = (bytes.len() - 23 - 32) / (16 + 24 * 8192);
    assert_eq!(bytes.len(), 23 + 32 + count * (16 + 24 * 8192));
    for cut in [0, 22, 23, 40, 54, 55, bytes.len() / 2, bytes.len() - 1] {
        assert!(EncryptedBlocks::from_bytes(&bytes[..cut]).is_err(), "{cut}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(EncryptedBlocks::from_bytes(&long).is_err());
    let corrupt = |at: usize, value: &[u8]| {
        let mut b = bytes.clone();
        b[at..at + value.len()].copy_from_slice(value);
        EncryptedBlocks::from_bytes(&b).unwrap_err().to_string()
    };
    // Rows beyond the parameters, no columns, a chunk that is no layout, a bound too large:
    // each refused by name before any allocation.
    assert!(corrupt(23, &(1u64 << 40).to_le_bytes()).contains("rows"));
    assert!(corrupt(31, &0u32.to_le_bytes()).contains("columns"));
    assert!(corrupt(35, &3000u32.to_le_bytes()).contains("row chunk"));
    assert!(corrupt(35, &16384u32.to_le_bytes()).contains("row chunk"));
    assert!(corrupt(39 + 15, &[0x7f]).contains("value bound"));
    // A chunk that is a layout, but not the one the bytes hold: the length no longer fits.
    assert!(corrupt(35, &8192u32.to_le_bytes()).contains("expected"));
}
