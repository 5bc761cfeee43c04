//! Stored bytes of every message kind, per protocol version, decode and re-encode byte for
//! byte (`tests/data/wire/README.md`; bless with `UNSEEN_BLESS_WIRE=1`).

#[path = "../../tests/support/wire_golden.rs"]
mod wire_golden;

use fedlearn::{
    ColumnSizes, EarlyStopping, Message, PartyKeys, Proposal, TrainConfig, PROTOCOL_VERSION,
};
use he::{HeError, PreparedMatrix, SecretKey, N8192_Q192};
use wire_golden::Family;

/// One message of every kind, small. The he objects inside are single ciphertexts (their own
/// layout is pinned by he's stored objects); the packing key in `packing` has no level, which
/// encodes the same framing as a real one without 2.1 MiB per level.
fn samples() -> Result<Vec<Message>, HeError> {
    let params = N8192_Q192;
    let (secret, public) = SecretKey::generate(&params);
    let release = |values: &[i64], levels: u32| -> Result<_, HeError> {
        let vector = secret.encrypt(&[3], 3)?;
        let matrix = PreparedMatrix::new(&params, 1, values.len(), values)?;
        let product = public.multiply(&params, &vector, &matrix)?;
        let packing = secret.packing_key(levels)?;
        Ok(public.mask_and_flood(&params, product, &packing)?.0)
    };
    let config = TrainConfig {
        max_epochs: 4,
        l2: 0.01,
        validation_fraction: 0.25,
        early_stopping: Some(EarlyStopping::Loss {
            patience: 2,
            min_delta: 1e-4,
        }),
        seed: 11,
    };
    let messages = vec![
        Message::Propose(Box::new(Proposal {
            job: [0xa5; 16],
            model_id: "golden-model".into(),
            config,
            rows: 2048,
            hosts: vec!["tax".into(), "utility".into()],
            features: 5,
            resume: Some(7),
        })),
        Message::Keys(Box::new(PartyKeys {
            rows: 2048,
            columns: 6,
            key: public.clone(),
            mask_share: [0x5a; 32],
            frac_bits: 11,
        })),
        Message::Packing(Box::new(secret.packing_key(0)?)),
        Message::EpochEnd {
            epoch: 2,
            best: false,
            stop: true,
        },
        Message::FinalScores {
            masked: vec![7, 1 << 63, 0],
        },
        Message::Digest { hash: [0x3c; 32] },
        Message::Abort {
            reason: "policy: too many guest features".into(),
        },
        Message::BinningLabels {
            job: [0x77; 16],
            key: Box::new(public.clone()),
            packing: Box::new(secret.packing_key(1)?),
            labels: secret.encrypt(&[1, 0, 0, 1], 1)?,
        },
        Message::BinningCounts {
            columns: vec![
                ColumnSizes {
                    name: "tax:1".into(),
                    sizes: vec![700, 1048, 300],
                    categorical: false,
                    missing_last: true,
                },
                ColumnSizes {
                    name: "sector".into(),
                    sizes: vec![2048],
                    categorical: true,
                    missing_last: false,
                },
            ],
            products: vec![release(&[1, 1, 1], 1)?],
            shares: vec![vec![5, 1 << 100, 0]],
        },
        Message::SharedColumns {
            blocks: vec![secret.encrypt_blocks(&[1, -2, 3, -4], 2, 2, 1 << 13, 1)?],
        },
        Message::SharedGram {
            releases: vec![release(&[6, -6], 1)?],
        },
        Message::CouplingVectors {
            vectors: vec![vec![secret.encrypt(&[9], 1 << 15)?], Vec::new()],
        },
        Message::CouplingReleases {
            releases: vec![release(&[2], 0)?, release(&[3, 4], 1)?],
        },
        Message::StepVector {
            step: 5,
            vector: vec![secret.encrypt(&[-1, 1], 1 << 15)?],
        },
        Message::StepRelease {
            step: 5,
            release: release(&[7, 8, 9], 2)?,
        },
        Message::HandOver {
            step: 5,
            shares: vec![(1 << 108) - 1, 3],
        },
        Message::StepLossVector {
            step: 5,
            vector: vec![secret.encrypt(&[4], 1 << 15)?],
        },
        Message::StepLossRelease {
            step: 5,
            release: release(&[1, 2], 1)?,
        },
        Message::LossShares {
            step: 5,
            shares: vec![1 << 107, 12],
        },
        Message::WeightShares {
            shares: vec![0, 1, (1 << 108) - 2],
        },
    ];
    // A new variant stops this from compiling: it needs a sample, a kind and a file.
    for message in &messages {
        match message {
            Message::Propose(_)
            | Message::Keys(_)
            | Message::Packing(_)
            | Message::EpochEnd { .. }
            | Message::FinalScores { .. }
            | Message::Digest { .. }
            | Message::Abort { .. }
            | Message::BinningLabels { .. }
            | Message::BinningCounts { .. }
            | Message::SharedColumns { .. }
            | Message::SharedGram { .. }
            | Message::CouplingVectors { .. }
            | Message::CouplingReleases { .. }
            | Message::StepVector { .. }
            | Message::StepRelease { .. }
            | Message::HandOver { .. }
            | Message::StepLossVector { .. }
            | Message::StepLossRelease { .. }
            | Message::LossShares { .. }
            | Message::WeightShares { .. } => {}
        }
    }
    Ok(messages)
}

#[test]
fn stored_messages_of_every_version_decode_and_reencode_byte_for_byte() {
    let family = Family {
        name: "fedlearn",
        current: u32::from(PROTOCOL_VERSION),
        kinds: &Message::KINDS,
    };
    let make = || {
        samples()
            .expect("sample messages")
            .into_iter()
            .map(|m| (m.kind(), m.to_bytes()))
            .collect()
    };
    family.check(make, |_, kind, bytes| {
        let message = Message::from_bytes(bytes).map_err(|e| e.to_string())?;
        assert_eq!(message.kind(), kind, "a {kind} file holds another kind");
        Ok(message.to_bytes())
    });
}
