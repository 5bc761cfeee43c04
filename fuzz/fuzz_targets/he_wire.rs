//! Every he decoder (`PublicKey`, `PackingKey`, `EncryptedVector`, `MaskedColumns`,
//! `EncryptedBlocks`) on raw bytes, or on an object shaped from its header fields (odd first
//! byte): never a panic, and whatever decodes re-encodes to the same bytes and decodes to an
//! equal object.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use unseen_fuzz::{he_round_trips, HeShape};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        he_round_trips(rest);
    } else if let Ok(shape) = HeShape::arbitrary_take_rest(Unstructured::new(rest)) {
        he_round_trips(&shape.bytes());
    }
});
