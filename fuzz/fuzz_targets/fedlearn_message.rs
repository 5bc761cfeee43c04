//! `fedlearn::Message::from_bytes` on raw bytes, or on a message built from fuzzed parts and
//! then edited (odd first byte): never a panic, and whatever decodes round-trips.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use fedlearn::Message;
use libfuzzer_sys::fuzz_target;
use unseen_fuzz::{apply_edits, message_round_trips, ArbMessage, Edit};

#[derive(Arbitrary, Debug)]
struct Built {
    message: ArbMessage,
    edits: Vec<Edit>,
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        return message_round_trips(rest);
    }
    let Ok(built) = Built::arbitrary_take_rest(Unstructured::new(rest)) else {
        return;
    };
    let Some(message) = built.message.build() else {
        return;
    };
    let mut bytes = message.to_bytes();
    // Settings that are not numbers (NaN) do not survive JSON; everything else does.
    if let Ok(decoded) = Message::from_bytes(&bytes) {
        assert_eq!(decoded, message, "an encoded message decodes to another");
    }
    apply_edits(&mut bytes, &built.edits);
    message_round_trips(&bytes);
});
