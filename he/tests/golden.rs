//! Stored bytes of every he wire object, per format version, decode and re-encode byte for
//! byte (`tests/data/wire/README.md`; bless with `UNSEEN_BLESS_WIRE=1`).

#[path = "../../tests/support/wire_golden.rs"]
mod wire_golden;

use he::{
    EncryptedBlocks, EncryptedVector, HeError, MaskedColumns, PackingKey, PreparedMatrix,
    PublicKey, SecretKey, FORMAT_VERSION, N8192_Q192,
};
use wire_golden::Family;

/// The kinds of he wire objects: every type with `to_bytes` and `from_bytes`.
const KINDS: [&str; 5] = [
    "public_key",
    "packing_key",
    "encrypted_vector",
    "masked_columns",
    "encrypted_blocks",
];

/// The smallest legitimate instance of each kind. The public key and a one-value encrypted
/// vector are one ciphertext of N = 8192 coefficients (192 KiB). The packing key has one level
/// (11 digits, 2.1 MiB), the fewest that carries key-switching material. The masked columns
/// hold three results at one packing level: a full ciphertext and a partial one. The encrypted
/// blocks hold two rows of three columns side by side in one ciphertext.
fn samples() -> Result<Vec<(&'static str, Vec<u8>)>, HeError> {
    let params = N8192_Q192;
    let (secret, public) = SecretKey::generate(&params);
    let packing = secret.packing_key(1)?;
    let vector = secret.encrypt(&[-7], 7)?;
    let matrix = PreparedMatrix::new(&params, 1, 3, &[1, -2, 3])?;
    let product = public.multiply(&params, &vector, &matrix)?;
    let (masked, _) = public.mask_and_flood(&params, product, &packing)?;
    assert_eq!((masked.len(), masked.levels()), (3, 1));
    let blocks = secret.encrypt_blocks(&[1, -2, 3, -4, 5, -6], 2, 3, 6, 2)?;
    Ok(vec![
        ("public_key", public.to_bytes()),
        ("packing_key", packing.to_bytes()),
        ("encrypted_vector", vector.to_bytes()),
        ("masked_columns", masked.to_bytes()),
        ("encrypted_blocks", blocks.to_bytes()),
    ])
}

fn round_trip(kind: &str, bytes: &[u8]) -> Result<Vec<u8>, HeError> {
    Ok(match kind {
        "public_key" => PublicKey::from_bytes(bytes)?.to_bytes(),
        "packing_key" => PackingKey::from_bytes(bytes)?.to_bytes(),
        "encrypted_vector" => EncryptedVector::from_bytes(bytes)?.to_bytes(),
        "masked_columns" => MaskedColumns::from_bytes(bytes)?.to_bytes(),
        "encrypted_blocks" => EncryptedBlocks::from_bytes(bytes)?.to_bytes(),
        other => unreachable!("unknown kind {other}"),
    })
}

#[test]
fn stored_objects_of_every_version_decode_and_reencode_byte_for_byte() {
    let family = Family {
        name: "he",
        current: u32::from(FORMAT_VERSION),
        kinds: &KINDS,
    };
    family.check(
        || samples().expect("sample objects"),
        |_, kind, bytes| round_trip(kind, bytes).map_err(|e| e.to_string()),
    );
}
