//! Pieces shared by the fuzz targets: he objects of the right length from a few fuzzed fields
//! ([`HeShape`]), fedlearn messages from fuzzed parts ([`ArbMessage`]), byte edits ([`Edit`]),
//! the round-trip properties of the two decoders, and [`play`], which moves the messages of
//! parties in memory as the fuzzer says.
//!
//! A real he object is at least 192 KiB (N = 8192 coefficients of 24 bytes), far beyond what a
//! fuzzer mutates well, so the targets also describe objects by their header fields and a
//! filler that is repeated to the length the header implies, then perturbed.

use std::collections::VecDeque;

use arbitrary::Arbitrary;
use fedlearn::{EarlyStopping, Message, PartyKeys, Proposal, TrainConfig};
use he::{
    EncryptedBlocks, EncryptedVector, MaskedColumns, PackingKey, PublicKey, FORMAT_VERSION,
    N8192_Q192,
};

/// Shaped objects longer than this stay unpadded (and so fail their length check). A
/// one-level packing key (2.2 MB) fits; larger objects decode by the same code and would only
/// slow every execution (a 4-level key costs 88 transforms on decoding).
const MAX_SHAPED: usize = 1 << 22;

/// The he header: magic, version, kind, parameter set, key id.
const HEADER: usize = 4 + 1 + 1 + 1 + 16;

/// Wire kinds of the he objects, in `he/src/wire.rs` order.
pub const PUBLIC_KEY: u8 = 1;
/// See [`PUBLIC_KEY`].
pub const ENCRYPTED_VECTOR: u8 = 2;
/// See [`PUBLIC_KEY`].
pub const MASKED_COLUMNS: u8 = 3;
/// See [`PUBLIC_KEY`].
pub const PACKING_KEY: u8 = 4;

/// An he object described by its header fields.
#[derive(Arbitrary, Clone, Debug)]
pub struct HeShape {
    /// Object kind (taken modulo 4).
    pub kind: u8,
    /// Key id.
    pub key: [u8; 16],
    /// Values of an encrypted vector, results of masked columns.
    pub count: u32,
    /// An encrypted vector's value bound.
    pub bound: i128,
    /// Packing levels of masked columns or a packing key.
    pub levels: u8,
    /// Repeated over the coefficients (zeros when empty).
    pub filler: Vec<u8>,
    /// Bytes added to (or, if negative, cut from) the implied length.
    pub delta: i16,
    /// One header byte overwritten: (position, value).
    pub flaw: Option<(u8, u8)>,
}

impl HeShape {
    /// The encoding: header, the kind's fields, the filler to the implied length, then the
    /// length change and the header flaw.
    pub fn bytes(&self) -> Vec<u8> {
        let params = N8192_Q192;
        let n = params.poly_size;
        let block = 16 + 24 * n;
        let kind = 1 + self.kind % 4;
        let mut out = b"UNHE".to_vec();
        out.extend([FORMAT_VERSION, kind, params.id]);
        out.extend(self.key);
        let count = self.count as usize;
        let body = match kind {
            PUBLIC_KEY => Some(block),
            ENCRYPTED_VECTOR => {
                out.extend(u64::from(self.count).to_le_bytes());
                out.extend(self.bound.to_le_bytes());
                count
                    .div_ceil(n)
                    .checked_mul(block)
                    .and_then(|b| b.checked_add(24))
            }
            MASKED_COLUMNS => {
                out.extend(self.count.to_le_bytes());
                out.push(self.levels);
                let group = 1usize.checked_shl(self.levels.into()).unwrap_or(usize::MAX);
                count
                    .div_ceil(group)
                    .checked_mul(n)
                    .and_then(|c| c.checked_add(count))
                    .and_then(|c| c.checked_mul(params.released_bits as usize / 8))
                    .and_then(|c| c.checked_add(5))
            }
            _ => {
                out.push(self.levels);
                let blocks = usize::from(self.levels) * params.ks_digits as usize;
                blocks.checked_mul(block).and_then(|b| b.checked_add(1))
            }
        };
        let target = body.map_or(0, |b| HEADER + b);
        if target <= MAX_SHAPED {
            let filler = if self.filler.is_empty() {
                &[0u8][..]
            } else {
                &self.filler
            };
            let fill = target.saturating_sub(out.len());
            out.extend(filler.iter().cycle().take(fill));
        }
        let len = out.len().saturating_add_signed(self.delta.into());
        out.resize(len, 0);
        if let Some((at, value)) = self.flaw {
            if let Some(byte) = out.get_mut(usize::from(at) % HEADER) {
                *byte = value;
            }
        }
        out
    }

    /// The same shape of kind `kind`, moved into the valid ranges and kept small (at most 8
    /// ciphertexts, one packing level): it decodes. Key ids come from four values, so that
    /// objects injected apart (a public key in `keys`, a packing key in `packing`) often
    /// belong together.
    pub fn valid(&self, kind: u8) -> HeShape {
        let params = N8192_Q192;
        let max_levels = params.max_pack_levels as u8 + 1;
        HeShape {
            kind: kind - 1,
            count: match kind {
                ENCRYPTED_VECTOR => 1 + self.count % (2 * params.poly_size as u32),
                _ => 1 + self.count % 8,
            },
            bound: self.bound.rem_euclid(params.max_message_abs() + 1),
            levels: match kind {
                PACKING_KEY => self.levels % 2,
                _ => self.levels % max_levels,
            },
            key: [self.key[0] & 3; 16],
            delta: 0,
            flaw: None,
            ..self.clone()
        }
    }

    /// A public key of this shape, made valid.
    pub fn public_key(&self) -> Option<PublicKey> {
        PublicKey::from_bytes(&self.valid(PUBLIC_KEY).bytes()).ok()
    }

    /// An encrypted vector of this shape, made valid.
    pub fn encrypted_vector(&self) -> Option<EncryptedVector> {
        EncryptedVector::from_bytes(&self.valid(ENCRYPTED_VECTOR).bytes()).ok()
    }

    /// Masked columns of this shape, made valid.
    pub fn masked_columns(&self) -> Option<MaskedColumns> {
        MaskedColumns::from_bytes(&self.valid(MASKED_COLUMNS).bytes()).ok()
    }

    /// A packing key of this shape, made valid, with the key id `key`.
    pub fn packing_key(&self, key: [u8; 16]) -> Option<PackingKey> {
        let shape = HeShape {
            key,
            ..self.valid(PACKING_KEY)
        };
        PackingKey::from_bytes(&shape.bytes()).ok()
    }
}

/// Decodes `bytes` as every he object; whatever decodes must re-encode to exactly `bytes`
/// (the encoding is canonical) and decode again to an equal object.
pub fn he_round_trips(bytes: &[u8]) {
    fn check<T: PartialEq + std::fmt::Debug>(
        bytes: &[u8],
        decode: impl Fn(&[u8]) -> Result<T, he::HeError>,
        encode: impl Fn(&T) -> Vec<u8>,
    ) {
        if let Ok(object) = decode(bytes) {
            let again = encode(&object);
            assert!(again == bytes, "re-encoding differs from the input");
            assert_eq!(decode(&again).as_ref(), Ok(&object));
        }
    }
    check(bytes, PublicKey::from_bytes, PublicKey::to_bytes);
    check(
        bytes,
        EncryptedVector::from_bytes,
        EncryptedVector::to_bytes,
    );
    check(bytes, MaskedColumns::from_bytes, MaskedColumns::to_bytes);
    check(bytes, PackingKey::from_bytes, PackingKey::to_bytes);
    check(
        bytes,
        EncryptedBlocks::from_bytes,
        EncryptedBlocks::to_bytes,
    );
}

/// Decodes `bytes` as a message; whatever decodes must re-encode to bytes that decode to an
/// equal message. The encoding is canonical except for the settings JSON of a proposal,
/// which must be stable after one round.
pub fn message_round_trips(bytes: &[u8]) {
    let Ok(message) = Message::from_bytes(bytes) else {
        return;
    };
    let again = message.to_bytes();
    let decoded = Message::from_bytes(&again).expect("a re-encoded message decodes");
    assert_eq!(decoded, message);
    if matches!(message, Message::Propose(_)) {
        assert!(decoded.to_bytes() == again, "settings JSON is not stable");
    } else {
        assert!(again == bytes, "re-encoding differs from the input");
    }
}

/// A change to encoded bytes; positions wrap around the length.
#[derive(Arbitrary, Debug)]
pub enum Edit {
    /// Overwrite a byte.
    Set { at: u32, value: u8 },
    /// Cut everything from a position.
    Truncate { at: u32 },
    /// Insert bytes at a position.
    Insert { at: u32, bytes: Vec<u8> },
    /// Remove up to 255 bytes at a position.
    Remove { at: u32, len: u8 },
}

/// Applies `edits` in order.
pub fn apply_edits(bytes: &mut Vec<u8>, edits: &[Edit]) {
    for edit in edits {
        let at = |at: u32| at as usize % (bytes.len() + 1);
        match edit {
            Edit::Set { at: i, value } => {
                let i = at(*i);
                if let Some(byte) = bytes.get_mut(i) {
                    *byte = *value;
                }
            }
            Edit::Truncate { at: i } => bytes.truncate(at(*i)),
            Edit::Insert { at: i, bytes: new } => {
                let i = at(*i);
                bytes.splice(i..i, new.iter().copied());
            }
            Edit::Remove { at: i, len } => {
                let i = at(*i);
                let end = (i + usize::from(*len)).min(bytes.len());
                bytes.drain(i..end);
            }
        }
    }
}

/// Training settings from fuzzed fields (any float, including NaN).
#[derive(Arbitrary, Debug)]
pub struct ArbConfig {
    max_epochs: u8,
    l2: f64,
    validation_fraction: f64,
    early_stopping: Option<(bool, u8, f64)>,
    seed: u64,
}

impl ArbConfig {
    /// The settings.
    pub fn config(&self) -> TrainConfig {
        TrainConfig {
            max_epochs: self.max_epochs.into(),
            l2: self.l2,
            validation_fraction: self.validation_fraction,
            early_stopping: self.early_stopping.map(|(loss, patience, value)| {
                if loss {
                    EarlyStopping::Loss {
                        patience: patience.into(),
                        min_delta: value,
                    }
                } else {
                    EarlyStopping::WeightChange { tolerance: value }
                }
            }),
            seed: self.seed,
        }
    }
}

/// A message from fuzzed parts; he objects come from [`HeShape::valid`].
#[derive(Arbitrary, Debug)]
#[allow(missing_docs)]
pub enum ArbMessage {
    Propose {
        job: [u8; 16],
        model_id: String,
        config: ArbConfig,
        rows: u64,
        hosts: Vec<String>,
        features: u32,
        resume: Option<u64>,
    },
    Keys {
        rows: u64,
        columns: u32,
        key: HeShape,
        mask_share: [u8; 32],
        frac_bits: u32,
    },
    /// A packing key (of the key id of an injected `keys` message, often).
    Packing {
        packing: HeShape,
    },
    SharedGram {
        releases: Vec<HeShape>,
    },
    CouplingVectors {
        vectors: Vec<Vec<HeShape>>,
    },
    StepVector {
        step: u64,
        vector: Vec<HeShape>,
    },
    StepRelease {
        step: u64,
        release: HeShape,
    },
    HandOver {
        step: u64,
        shares: Vec<u128>,
    },
    StepLossRelease {
        step: u64,
        release: HeShape,
    },
    LossShares {
        step: u64,
        shares: Vec<u128>,
    },
    WeightShares {
        shares: Vec<u128>,
    },
    EpochEnd {
        epoch: u64,
        best: bool,
        stop: bool,
    },
    FinalScores {
        masked: Vec<u64>,
    },
    Digest {
        hash: [u8; 32],
    },
    Abort {
        reason: String,
    },
}

impl ArbMessage {
    /// The message (`None` only if a shaped he object failed to decode).
    pub fn build(&self) -> Option<Message> {
        Some(match self {
            ArbMessage::Propose {
                job,
                model_id,
                config,
                rows,
                hosts,
                features,
                resume,
            } => Message::Propose(Box::new(Proposal {
                job: *job,
                model_id: model_id.clone(),
                config: config.config(),
                rows: *rows,
                hosts: hosts.clone(),
                features: *features,
                resume: *resume,
            })),
            ArbMessage::Keys {
                rows,
                columns,
                key,
                mask_share,
                frac_bits,
            } => Message::Keys(Box::new(PartyKeys {
                rows: *rows,
                columns: *columns,
                key: key.public_key()?,
                mask_share: *mask_share,
                frac_bits: *frac_bits,
            })),
            ArbMessage::Packing { packing } => {
                Message::Packing(Box::new(packing.packing_key([packing.key[0] & 3; 16])?))
            }
            ArbMessage::SharedGram { releases } => Message::SharedGram {
                releases: releases
                    .iter()
                    .map(HeShape::masked_columns)
                    .collect::<Option<_>>()?,
            },
            ArbMessage::CouplingVectors { vectors } => Message::CouplingVectors {
                vectors: vectors
                    .iter()
                    .map(|v| v.iter().map(HeShape::encrypted_vector).collect())
                    .collect::<Option<_>>()?,
            },
            ArbMessage::StepVector { step, vector } => Message::StepVector {
                step: *step,
                vector: vector
                    .iter()
                    .map(HeShape::encrypted_vector)
                    .collect::<Option<_>>()?,
            },
            ArbMessage::StepRelease { step, release } => Message::StepRelease {
                step: *step,
                release: release.masked_columns()?,
            },
            ArbMessage::HandOver { step, shares } => Message::HandOver {
                step: *step,
                shares: shares.clone(),
            },
            ArbMessage::StepLossRelease { step, release } => Message::StepLossRelease {
                step: *step,
                release: release.masked_columns()?,
            },
            ArbMessage::LossShares { step, shares } => Message::LossShares {
                step: *step,
                shares: shares.clone(),
            },
            ArbMessage::WeightShares { shares } => Message::WeightShares {
                shares: shares.clone(),
            },
            ArbMessage::EpochEnd { epoch, best, stop } => Message::EpochEnd {
                epoch: *epoch,
                best: *best,
                stop: *stop,
            },
            ArbMessage::FinalScores { masked } => Message::FinalScores {
                masked: masked.clone(),
            },
            ArbMessage::Digest { hash } => Message::Digest { hash: *hash },
            ArbMessage::Abort { reason } => Message::Abort {
                reason: reason.clone(),
            },
        })
    }
}

/// What the fuzzer does with the oldest message in flight, or a message of its own.
#[derive(Arbitrary, Debug)]
pub enum Move<A, I> {
    /// Deliver it.
    Deliver,
    /// Deliver it and up to this many more, in order.
    DeliverMany(u8),
    /// Lose it.
    Drop,
    /// Deliver it and keep it in flight (a retry).
    Repeat,
    /// Put it behind everything else in flight.
    Defer,
    /// Change it, then deliver it.
    Alter(A),
    /// Deliver it as if from and to other parties.
    Misroute { from: u8, to: u8 },
    /// Deliver a message of the fuzzer's.
    Inject { from: u8, to: u8, message: I },
}

/// Parties in memory whose messages the fuzzer moves ([`play`]). Parties are numbered; the
/// last sender number belongs to no party (a stranger).
pub trait Network {
    /// What travels.
    type Message: Clone;
    /// How the fuzzer changes a message.
    type Alteration: for<'a> Arbitrary<'a>;
    /// A message the fuzzer makes.
    type Injection: for<'a> Arbitrary<'a>;
    /// Parties that receive; one more number sends.
    const PARTIES: usize;

    /// Messages in flight, (from, to, message), oldest first.
    fn wire(&mut self) -> &mut VecDeque<(usize, usize, Self::Message)>;
    /// Hands a message to party `to`, as sent by `from`; what it sends goes on the wire.
    fn deliver(&mut self, from: usize, to: usize, message: Self::Message);
    /// The altered message, or `None` if it no longer exists (it is then lost).
    fn alter(message: Self::Message, alteration: Self::Alteration) -> Option<Self::Message>;
    /// The fuzzer's message, if it can be made.
    fn inject(injection: Self::Injection) -> Option<Self::Message>;
}

/// What [`play`] does once the fuzzer's moves are used up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Deliver in order until the wire is empty or the moves run out: every input plays a
    /// whole run (for cheap parties).
    DeliverAll,
    /// Stop: an input costs only as far as its moves go (for parties whose every step costs
    /// real cryptography; [`Move::DeliverMany`] goes deep in few bytes).
    Stop,
}

/// Moves messages as `u` says, at most `max_moves` times, then as `then` says.
pub fn play<N: Network>(
    network: &mut N,
    u: &mut arbitrary::Unstructured<'_>,
    max_moves: usize,
    then: Then,
) -> arbitrary::Result<()> {
    let from = |f: u8| usize::from(f) % (N::PARTIES + 1);
    let to = |t: u8| usize::from(t) % N::PARTIES;
    for _ in 0..max_moves {
        let action = match (u.is_empty(), then) {
            (false, _) => Move::<N::Alteration, N::Injection>::arbitrary(u)?,
            (true, Then::DeliverAll) => Move::Deliver,
            (true, Then::Stop) => break,
        };
        if let Move::Inject {
            from: f,
            to: t,
            message,
        } = action
        {
            if let Some(message) = N::inject(message) {
                network.deliver(from(f), to(t), message);
            }
            continue;
        }
        let Some((sender, receiver, message)) = network.wire().pop_front() else {
            break;
        };
        match action {
            Move::Deliver => network.deliver(sender, receiver, message),
            Move::DeliverMany(more) => {
                network.deliver(sender, receiver, message);
                for _ in 0..more {
                    let Some((sender, receiver, message)) = network.wire().pop_front() else {
                        break;
                    };
                    network.deliver(sender, receiver, message);
                }
            }
            Move::Drop => {}
            Move::Repeat => {
                network
                    .wire()
                    .push_front((sender, receiver, message.clone()));
                network.deliver(sender, receiver, message);
            }
            Move::Defer => network.wire().push_back((sender, receiver, message)),
            Move::Alter(alteration) => {
                if let Some(message) = N::alter(message, alteration) {
                    network.deliver(sender, receiver, message);
                }
            }
            Move::Misroute { from: f, to: t } => network.deliver(from(f), to(t), message),
            Move::Inject { .. } => unreachable!("handled above"),
        }
    }
    Ok(())
}

/// Plays one fuzz input: a setup `S`, from which `start` makes the parties, then moves.
pub fn play_input<S, N>(
    data: &[u8],
    start: impl FnOnce(&S) -> Option<N>,
    max_moves: usize,
    then: Then,
) where
    S: for<'a> Arbitrary<'a>,
    N: Network,
{
    let mut u = arbitrary::Unstructured::new(data);
    let Ok(setup) = S::arbitrary(&mut u) else {
        return;
    };
    if let Some(mut network) = start(&setup) {
        // Running out of fuzz bytes mid-move only ends the run.
        let _ = play(&mut network, &mut u, max_moves, then);
    }
}
