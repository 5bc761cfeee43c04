//! Message decoding as a peer's input: what decodes is what was sent, and random bytes are
//! typed errors, never a panic (the stable-toolchain companions of `fuzz/`).

use fedlearn::{EarlyStopping, Message, Proposal, TrainConfig, PROTOCOL_VERSION};
use proptest::prelude::*;

fn proposal(config: TrainConfig) -> Message {
    Message::Propose(Box::new(Proposal {
        job: [1; 16],
        model_id: "m".into(),
        config,
        rows: 100,
        hosts: vec!["tax".into()],
        features: 2,
        resume: None,
    }))
}

fn assert_crosses_exactly(config: TrainConfig) {
    let sent = proposal(config);
    let received = Message::from_bytes(&sent.to_bytes()).unwrap();
    assert_eq!(received, sent);
}

/// Found by `fuzz/fuzz_targets/fedlearn_message.rs` (then in a β₁): serde_json's default float
/// parser read this value back one ulp off (…4999e-275 became …5e-275), so the hosts trained
/// with other settings than the guest proposed.
#[test]
fn proposal_settings_cross_the_wire_bit_for_bit() {
    assert_crosses_exactly(TrainConfig {
        l2: 8.313810343994999e-275,
        ..TrainConfig::default()
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_finite_settings_cross_the_wire_bit_for_bit(
        values in prop::array::uniform3(any::<f64>().prop_filter("finite", |v| v.is_finite())),
    ) {
        let [l2, fraction, min_delta] = values;
        assert_crosses_exactly(TrainConfig {
            l2,
            validation_fraction: fraction,
            early_stopping: Some(EarlyStopping::Loss { patience: 3, min_delta }),
            ..TrainConfig::default()
        });
    }

    #[test]
    fn random_bytes_never_panic(kind in 0u8..25, bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut b = b"UNFL".to_vec();
        b.extend(PROTOCOL_VERSION.to_le_bytes());
        b.push(kind);
        b.extend(bytes);
        let _ = Message::from_bytes(&b);
    }
}
