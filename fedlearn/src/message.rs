//! The protocol's messages, their versioned byte encoding, and the transport they travel on.

use he::{EncryptedBlocks, EncryptedVector, MaskedColumns, PackingKey, PublicKey};

use crate::config::TrainConfig;
use crate::error::FedError;

/// Protocol version carried by every message; a peer speaking another version is refused.
/// Version 2: features encrypted once under their owner's key, products released only to the
/// owner of the encrypted side, aggregate per-epoch losses, one final reveal. Version 3: the
/// binning job's messages. Version 5: a proposal may resume an interrupted job. Version 6:
/// he objects of format 3 (q = 2^192, 118-bit messages), and shares modulo 2^128 (products'
/// corrections, loss reports, binning shares). Version 7: the messages of secret-shared
/// training (`shared_*`, `step_*`, `hand_over`, `loss_shares`, `weight_shares`), and every
/// party's quantisation scale in its keys. Version 8: the packing key leaves `keys` for its own
/// message at the start of the set-up, of the levels the job's widths call for; `digest`
/// without its always-zero round. Version 9: the step size falls with the number of parties
/// from four on (`shared::rate`), so that the iteration converges whatever the data.
pub const PROTOCOL_VERSION: u16 = 9;

const MAGIC: &[u8; 4] = b"UNFL";

/// What the guest proposes to every host.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    /// Random job nonce (binds pairwise mask seeds to this job).
    pub job: [u8; 16],
    /// Id of the model being trained.
    pub model_id: String,
    /// Training settings.
    pub config: TrainConfig,
    /// Rows of the aligned intersection.
    pub rows: u64,
    /// The hosts, in job order.
    pub hosts: Vec<String>,
    /// Number of the guest's features (public: hosts' policies limit it, because the guest's
    /// columns are what its gradient projects the hosts' scores on).
    pub features: u32,
    /// The epoch an interrupted job resumes after (every party loads its checkpoint of that
    /// epoch); `None` for a job that starts from the beginning.
    pub resume: Option<u64>,
}

/// One host column's bin sizes in a [`Message::BinningCounts`].
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnSizes {
    /// The column's name or alias.
    pub name: String,
    /// Rows per (merged) bin.
    pub sizes: Vec<u64>,
    /// A text column: its bins are categories, in no order.
    pub categorical: bool,
    /// The last bin holds the rows with a missing value, and only them.
    pub missing_last: bool,
}

/// Every party's keys and shape, sent to every other party once per job.
#[derive(Clone, Debug, PartialEq)]
pub struct PartyKeys {
    /// Rows the party holds (must equal the proposal's).
    pub rows: u64,
    /// Columns the party encrypts: its features (and the guest's intercept).
    pub columns: u32,
    /// The party's public key: products of its encrypted columns are released under it.
    pub key: PublicKey,
    /// A Ristretto255 public share for pairwise mask seeds.
    pub mask_share: [u8; 32],
    /// Fraction bits of the party's quantised features (public in secret-shared training:
    /// the partner of a Gram share rescales it by them).
    pub frac_bits: u32,
}

/// One protocol message. Steps count from 0; the guest's verdict on step s is about epoch s
/// (the weights after s updates; step 0's verdict is about the starting weights).
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// guest → host: the job.
    Propose(Box<Proposal>),
    /// every party → every other party, once: keys and shape.
    Keys(Box<PartyKeys>),
    /// every party → every other party, once, when the set-up starts: the packing key for
    /// the releases under its public key, of as many levels as the job's widths call for
    /// (known to every party once the keys have come).
    Packing(Box<PackingKey>),
    /// guest → host: the epoch is done; whether it is the best so far and whether to stop.
    EpochEnd {
        /// Epoch.
        epoch: u64,
        /// Keep this epoch's weights as the model.
        best: bool,
        /// Training ends after this epoch.
        stop: bool,
    },
    /// host → guest, once, after the last epoch: the final model's partial scores of the
    /// validation rows (the training rows when there is no validation split), blinded by
    /// pairwise masks among the hosts.
    FinalScores {
        /// Masked fixed-point scores.
        masked: Vec<u64>,
    },
    /// host → every other host: a digest of what the guest broadcast (the proposal and its
    /// keys), so that hosts find out when the guest sent them different settings.
    Digest {
        /// SHA-256 of the guest's proposal and keys.
        hash: [u8; 32],
    },
    /// Secret-shared training, set-up 1, every party → every other: the party's quantised
    /// columns on the training rows (and on the validation rows, if any), encrypted under its
    /// own key in the block layout of the Gram products.
    SharedColumns {
        /// One per row set.
        blocks: Vec<EncryptedBlocks>,
    },
    /// Set-up 2, within a pair: the follower's products of the leader's columns with its own
    /// columns (the cross Gram), or the guest's product of a host's columns with 1 − 2y;
    /// released to the owner of the columns (none from a host that leads the pair).
    SharedGram {
        /// The releases, row set after row set.
        releases: Vec<MaskedColumns>,
    },
    /// Set-up 3, within a pair: the rows of the sender's Gram share (and the guest's share of
    /// a host's label term), gadget-encrypted under the sender's key.
    CouplingVectors {
        /// One gadget-encrypted vector (a list of ciphertexts) per row.
        vectors: Vec<Vec<EncryptedVector>>,
    },
    /// Set-up 3, within a pair: the receiver's preconditioner times each coupling vector,
    /// masked and released to the vectors' owner.
    CouplingReleases {
        /// One release per vector.
        releases: Vec<MaskedColumns>,
    },
    /// Per step, every party → every other: the sender's shares of the weight vectors it
    /// holds, gadget-encrypted under its key.
    StepVector {
        /// Step (0-based).
        step: u64,
        /// The ciphertexts.
        vector: Vec<EncryptedVector>,
    },
    /// Per step, the reply to a [`Message::StepVector`]: the sender's shares of the step's
    /// matrices times the vector, masked and released to the vector's owner.
    StepRelease {
        /// Step.
        step: u64,
        /// The release.
        release: MaskedColumns,
    },
    /// Per step: the sender's shares of the receiver's sums, masked with the stream the
    /// sender shares with the receiver's partner (who removes it from its own shares).
    HandOver {
        /// Step.
        step: u64,
        /// Shares modulo 2^108.
        shares: Vec<u128>,
    },
    /// Per step, guest → host: the guest's shares of a weight vector the two hold, its loss
    /// terms and velocity, gadget-encrypted, for the inner products of the Taylor losses (to
    /// host 1 the guest's own vector first, then host 1's).
    StepLossVector {
        /// Step.
        step: u64,
        /// The ciphertexts.
        vector: Vec<EncryptedVector>,
    },
    /// Per step, host → guest: the reply to a [`Message::StepLossVector`], masked and
    /// released (only the guest decrypts in the loss round).
    StepLossRelease {
        /// Step.
        step: u64,
        /// The release.
        release: MaskedColumns,
    },
    /// Per step: a host's shares of the loss sums (hosts after the first → host 1, host 1 →
    /// the guest, summed with theirs).
    LossShares {
        /// Step.
        step: u64,
        /// One share modulo 2^108 per row set, then one of the squared weight change.
        shares: Vec<u128>,
    },
    /// After the last step: the sender's share of the receiver's kept weights (the epoch the
    /// guest last named best), modulo 2^108.
    WeightShares {
        /// The shares.
        shares: Vec<u128>,
    },
    /// Any party → the others: the job stops.
    Abort {
        /// Why.
        reason: String,
    },
    /// guest → host, in a binning job: the guest's 0/1 labels of the aligned rows, encrypted
    /// under a key of the job, with that key and its packing key (see [`BinningGuest`](crate::BinningGuest)).
    BinningLabels {
        /// Random job nonce.
        job: [u8; 16],
        /// The guest's public key of the job.
        key: Box<PublicKey>,
        /// Its packing key.
        packing: Box<PackingKey>,
        /// The encrypted labels.
        labels: EncryptedVector,
    },
    /// host → guest, in a binning job: per column its bin sizes, and the encrypted event
    /// counts of all bins in order, masked, flooded and released, with the masks' shares.
    BinningCounts {
        /// Per column, its name or alias and bin sizes.
        columns: Vec<ColumnSizes>,
        /// Released event counts, up to 32 bins per product.
        products: Vec<MaskedColumns>,
        /// Per product, the shares that remove its masks.
        shares: Vec<Vec<u128>>,
    },
}

impl Message {
    /// Every kind [`Message::kind`] names, in protocol order.
    pub const KINDS: [&'static str; 20] = [
        "propose",
        "keys",
        "epoch_end",
        "final_scores",
        "digest",
        "abort",
        "binning_labels",
        "binning_counts",
        "packing",
        "shared_columns",
        "shared_gram",
        "coupling_vectors",
        "coupling_releases",
        "step_vector",
        "step_release",
        "hand_over",
        "step_loss_vector",
        "step_loss_release",
        "loss_shares",
        "weight_shares",
    ];

    /// The kinds sent at every training step (the same messages at every step); the others
    /// are sent once per job.
    pub const STEP_KINDS: [&'static str; 7] = [
        "step_vector",
        "step_release",
        "hand_over",
        "step_loss_vector",
        "step_loss_release",
        "loss_shares",
        "epoch_end",
    ];

    /// A short name of the message kind (for logs, metrics and audits).
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Propose(_) => "propose",
            Message::Keys(_) => "keys",
            Message::Packing(_) => "packing",
            Message::EpochEnd { .. } => "epoch_end",
            Message::FinalScores { .. } => "final_scores",
            Message::Digest { .. } => "digest",
            Message::Abort { .. } => "abort",
            Message::BinningLabels { .. } => "binning_labels",
            Message::BinningCounts { .. } => "binning_counts",
            Message::SharedColumns { .. } => "shared_columns",
            Message::SharedGram { .. } => "shared_gram",
            Message::CouplingVectors { .. } => "coupling_vectors",
            Message::CouplingReleases { .. } => "coupling_releases",
            Message::StepVector { .. } => "step_vector",
            Message::StepRelease { .. } => "step_release",
            Message::HandOver { .. } => "hand_over",
            Message::StepLossVector { .. } => "step_loss_vector",
            Message::StepLossRelease { .. } => "step_loss_release",
            Message::LossShares { .. } => "loss_shares",
            Message::WeightShares { .. } => "weight_shares",
        }
    }

    /// Versioned bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        let blob = |out: &mut Vec<u8>, bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(bytes);
        };
        let words = |out: &mut Vec<u8>, values: &[u64]| {
            out.extend_from_slice(&(values.len() as u64).to_le_bytes());
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
        };
        let wides = |out: &mut Vec<u8>, values: &[u128]| {
            out.extend_from_slice(&(values.len() as u64).to_le_bytes());
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
        };
        let blobs = |out: &mut Vec<u8>, items: Vec<Vec<u8>>| {
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                out.extend_from_slice(&(item.len() as u64).to_le_bytes());
                out.extend_from_slice(&item);
            }
        };
        match self {
            Message::Propose(p) => {
                out.push(0);
                out.extend_from_slice(&p.job);
                blob(&mut out, p.model_id.as_bytes());
                let config = serde_json::to_vec(&p.config).expect("config serialises");
                blob(&mut out, &config);
                out.extend_from_slice(&p.rows.to_le_bytes());
                out.extend_from_slice(&p.features.to_le_bytes());
                out.extend_from_slice(&(p.hosts.len() as u64).to_le_bytes());
                for host in &p.hosts {
                    blob(&mut out, host.as_bytes());
                }
                out.push(u8::from(p.resume.is_some()));
                out.extend_from_slice(&p.resume.unwrap_or(0).to_le_bytes());
            }
            Message::Keys(k) => {
                out.push(1);
                out.extend_from_slice(&k.rows.to_le_bytes());
                out.extend_from_slice(&k.columns.to_le_bytes());
                blob(&mut out, &k.key.to_bytes());
                out.extend_from_slice(&k.mask_share);
                out.extend_from_slice(&k.frac_bits.to_le_bytes());
            }
            Message::Packing(key) => {
                out.push(24);
                blob(&mut out, &key.to_bytes());
            }
            Message::EpochEnd { epoch, best, stop } => {
                out.push(7);
                out.extend_from_slice(&epoch.to_le_bytes());
                out.push(u8::from(*best));
                out.push(u8::from(*stop));
            }
            Message::FinalScores { masked } => {
                out.push(8);
                words(&mut out, masked);
            }
            Message::Abort { reason } => {
                out.push(9);
                blob(&mut out, reason.as_bytes());
            }
            Message::Digest { hash } => {
                out.push(10);
                out.extend_from_slice(hash);
            }
            Message::BinningLabels {
                job,
                key,
                packing,
                labels,
            } => {
                out.push(11);
                out.extend_from_slice(job);
                blob(&mut out, &key.to_bytes());
                blob(&mut out, &packing.to_bytes());
                blob(&mut out, &labels.to_bytes());
            }
            Message::SharedColumns { blocks } => {
                out.push(13);
                blobs(
                    &mut out,
                    blocks.iter().map(EncryptedBlocks::to_bytes).collect(),
                );
            }
            Message::SharedGram { releases } => {
                out.push(14);
                blobs(
                    &mut out,
                    releases.iter().map(MaskedColumns::to_bytes).collect(),
                );
            }
            Message::CouplingVectors { vectors } => {
                out.push(15);
                out.extend_from_slice(&(vectors.len() as u64).to_le_bytes());
                for vector in vectors {
                    blobs(
                        &mut out,
                        vector.iter().map(EncryptedVector::to_bytes).collect(),
                    );
                }
            }
            Message::CouplingReleases { releases } => {
                out.push(16);
                blobs(
                    &mut out,
                    releases.iter().map(MaskedColumns::to_bytes).collect(),
                );
            }
            Message::StepVector { step, vector } => {
                out.push(17);
                out.extend_from_slice(&step.to_le_bytes());
                blobs(
                    &mut out,
                    vector.iter().map(EncryptedVector::to_bytes).collect(),
                );
            }
            Message::StepRelease { step, release } => {
                out.push(18);
                out.extend_from_slice(&step.to_le_bytes());
                blob(&mut out, &release.to_bytes());
            }
            Message::HandOver { step, shares } => {
                out.push(19);
                out.extend_from_slice(&step.to_le_bytes());
                wides(&mut out, shares);
            }
            Message::StepLossVector { step, vector } => {
                out.push(20);
                out.extend_from_slice(&step.to_le_bytes());
                blobs(
                    &mut out,
                    vector.iter().map(EncryptedVector::to_bytes).collect(),
                );
            }
            Message::StepLossRelease { step, release } => {
                out.push(21);
                out.extend_from_slice(&step.to_le_bytes());
                blob(&mut out, &release.to_bytes());
            }
            Message::LossShares { step, shares } => {
                out.push(22);
                out.extend_from_slice(&step.to_le_bytes());
                wides(&mut out, shares);
            }
            Message::WeightShares { shares } => {
                out.push(23);
                wides(&mut out, shares);
            }
            Message::BinningCounts {
                columns,
                products,
                shares,
            } => {
                out.push(12);
                out.extend_from_slice(&(columns.len() as u64).to_le_bytes());
                for column in columns {
                    blob(&mut out, column.name.as_bytes());
                    words(&mut out, &column.sizes);
                    out.push(u8::from(column.categorical) | u8::from(column.missing_last) << 1);
                }
                out.extend_from_slice(&(products.len() as u64).to_le_bytes());
                for (product, shares) in products.iter().zip(shares) {
                    blob(&mut out, &product.to_bytes());
                    wides(&mut out, shares);
                }
            }
        }
        out
    }

    /// Decodes bytes from [`to_bytes`](Self::to_bytes), refusing other versions, unknown
    /// kinds, truncation, trailing bytes and lengths beyond the input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Message, FedError> {
        let mut r = Reader::new(bytes);
        r.header(MAGIC, "a fedlearn message", PROTOCOL_VERSION)?;
        let he = |e: he::HeError| FedError::Malformed(e.to_string());
        let message = match r.byte()? {
            0 => {
                let job = r.array()?;
                let model_id = r.string()?;
                let config = serde_json::from_slice(r.blob()?)
                    .map_err(|e| FedError::Malformed(format!("training settings: {e}")))?;
                let rows = r.u64()?;
                let features = u32::from_le_bytes(r.array()?);
                let count = r.u64()?;
                if count > r.remaining() as u64 / 8 {
                    return Err(FedError::Malformed("host count beyond the message".into()));
                }
                let hosts = (0..count).map(|_| r.string()).collect::<Result<_, _>>()?;
                let resume = r.flag()?;
                let epoch = r.u64()?;
                Message::Propose(Box::new(Proposal {
                    job,
                    model_id,
                    config,
                    rows,
                    hosts,
                    features,
                    resume: resume.then_some(epoch),
                }))
            }
            1 => Message::Keys(Box::new(PartyKeys {
                rows: r.u64()?,
                columns: u32::from_le_bytes(r.array()?),
                key: PublicKey::from_bytes(r.blob()?).map_err(he)?,
                mask_share: r.array()?,
                frac_bits: u32::from_le_bytes(r.array()?),
            })),
            24 => Message::Packing(Box::new(PackingKey::from_bytes(r.blob()?).map_err(he)?)),
            7 => Message::EpochEnd {
                epoch: r.u64()?,
                best: r.flag()?,
                stop: r.flag()?,
            },
            8 => Message::FinalScores { masked: r.words()? },
            9 => Message::Abort {
                reason: r.string()?,
            },
            10 => Message::Digest { hash: r.array()? },
            11 => Message::BinningLabels {
                job: r.array()?,
                key: Box::new(PublicKey::from_bytes(r.blob()?).map_err(he)?),
                packing: Box::new(PackingKey::from_bytes(r.blob()?).map_err(he)?),
                labels: EncryptedVector::from_bytes(r.blob()?).map_err(he)?,
            },
            12 => {
                // Every column and product takes at least 16 bytes (two lengths).
                let count = r.u64()?;
                if count > r.remaining() as u64 / 16 {
                    return Err(FedError::Malformed(
                        "column count beyond the message".into(),
                    ));
                }
                let columns = (0..count)
                    .map(|_| {
                        let (name, sizes, flags) = (r.string()?, r.words()?, r.byte()?);
                        if flags > 3 {
                            return Err(FedError::Malformed(format!(
                                "column flags {flags:#x} name no kind"
                            )));
                        }
                        Ok(ColumnSizes {
                            name,
                            sizes,
                            categorical: flags & 1 == 1,
                            missing_last: flags & 2 == 2,
                        })
                    })
                    .collect::<Result<_, FedError>>()?;
                let count = r.u64()?;
                if count > r.remaining() as u64 / 16 {
                    return Err(FedError::Malformed(
                        "product count beyond the message".into(),
                    ));
                }
                let (mut products, mut shares) = (Vec::new(), Vec::new());
                for _ in 0..count {
                    products.push(MaskedColumns::from_bytes(r.blob()?).map_err(he)?);
                    shares.push(r.wides()?);
                }
                Message::BinningCounts {
                    columns,
                    products,
                    shares,
                }
            }
            13 => Message::SharedColumns {
                blocks: r.list(|b| EncryptedBlocks::from_bytes(b).map_err(he))?,
            },
            14 => Message::SharedGram {
                releases: r.list(|b| MaskedColumns::from_bytes(b).map_err(he))?,
            },
            15 => {
                // Every vector takes at least its 8-byte count.
                let count = r.u64()?;
                if count > r.remaining() as u64 / 8 {
                    return Err(FedError::Malformed(
                        "vector count beyond the message".into(),
                    ));
                }
                let vectors = (0..count)
                    .map(|_| r.list(|b| EncryptedVector::from_bytes(b).map_err(he)))
                    .collect::<Result<_, _>>()?;
                Message::CouplingVectors { vectors }
            }
            16 => Message::CouplingReleases {
                releases: r.list(|b| MaskedColumns::from_bytes(b).map_err(he))?,
            },
            17 => Message::StepVector {
                step: r.u64()?,
                vector: r.list(|b| EncryptedVector::from_bytes(b).map_err(he))?,
            },
            18 => Message::StepRelease {
                step: r.u64()?,
                release: MaskedColumns::from_bytes(r.blob()?).map_err(he)?,
            },
            19 => Message::HandOver {
                step: r.u64()?,
                shares: r.wides()?,
            },
            20 => Message::StepLossVector {
                step: r.u64()?,
                vector: r.list(|b| EncryptedVector::from_bytes(b).map_err(he))?,
            },
            21 => Message::StepLossRelease {
                step: r.u64()?,
                release: MaskedColumns::from_bytes(r.blob()?).map_err(he)?,
            },
            22 => Message::LossShares {
                step: r.u64()?,
                shares: r.wides()?,
            },
            23 => Message::WeightShares { shares: r.wides()? },
            kind => return Err(FedError::Malformed(format!("unknown message kind {kind}"))),
        };
        if r.remaining() != 0 {
            return Err(FedError::Malformed(format!(
                "{} trailing bytes after a {} message",
                r.remaining(),
                message.kind()
            )));
        }
        Ok(message)
    }
}

pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    /// Reads a four-byte magic and a version, refusing bytes that are not `what` or are of
    /// another version than `version`.
    pub(crate) fn header(
        &mut self,
        magic: &[u8; 4],
        what: &str,
        version: u16,
    ) -> Result<(), FedError> {
        if self.take(4)? != magic {
            return Err(FedError::Malformed(format!("not {what}")));
        }
        let found = u16::from_le_bytes(self.array()?);
        if found != version {
            return Err(FedError::Malformed(format!(
                "{what} of version {found}; this build reads version {version}"
            )));
        }
        Ok(())
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    pub(crate) fn take(&mut self, len: usize) -> Result<&'a [u8], FedError> {
        if len > self.remaining() {
            return Err(FedError::Malformed(format!(
                "needs {len} more bytes, {} left",
                self.remaining()
            )));
        }
        self.at += len;
        Ok(&self.bytes[self.at - len..self.at])
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], FedError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn byte(&mut self) -> Result<u8, FedError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn flag(&mut self) -> Result<bool, FedError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(FedError::Malformed(format!("flag byte {other}"))),
        }
    }

    pub(crate) fn u64(&mut self) -> Result<u64, FedError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(crate) fn blob(&mut self) -> Result<&'a [u8], FedError> {
        let len = self.u64()?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.remaining())
            .ok_or_else(|| FedError::Malformed(format!("a length of {len} beyond the message")))?;
        self.take(len)
    }

    pub(crate) fn string(&mut self) -> Result<String, FedError> {
        String::from_utf8(self.blob()?.to_vec())
            .map_err(|_| FedError::Malformed("text that is not UTF-8".into()))
    }

    pub(crate) fn words(&mut self) -> Result<Vec<u64>, FedError> {
        let count = self.u64()?;
        if count > self.remaining() as u64 / 8 {
            return Err(FedError::Malformed(format!(
                "{count} values beyond the message"
            )));
        }
        (0..count).map(|_| self.u64()).collect()
    }

    /// A count, then that many length-prefixed items, each decoded by `decode`.
    pub(crate) fn list<T>(
        &mut self,
        decode: impl Fn(&[u8]) -> Result<T, FedError>,
    ) -> Result<Vec<T>, FedError> {
        let count = self.u64()?;
        if count > self.remaining() as u64 / 8 {
            return Err(FedError::Malformed(format!(
                "{count} items beyond the message"
            )));
        }
        (0..count).map(|_| decode(self.blob()?)).collect()
    }

    pub(crate) fn wides(&mut self) -> Result<Vec<u128>, FedError> {
        let count = self.u64()?;
        if count > self.remaining() as u64 / 16 {
            return Err(FedError::Malformed(format!(
                "{count} values beyond the message"
            )));
        }
        (0..count)
            .map(|_| Ok(u128::from_le_bytes(self.array()?)))
            .collect()
    }
}

/// Moves messages between named parties. `node` implements it over gRPC; the simulator over
/// in-process channels. `send` and `receive` block; `receive` returns the next message from
/// `from` (messages from one sender arrive in the order sent) or an error after the
/// transport's timeout.
///
/// A receiver may hold messages back: it keeps only so much unread (a node: a job's
/// `max_buffered_bytes`, all senders together), but always takes the next message it will
/// read from each sender. [`drive`](crate::drive) copes with that through
/// [`offer`](Self::offer) and [`wait`](Self::wait), so that no cycle of parties, each holding
/// back what the next one sends it while it waits for the one before, can form.
pub trait Transport {
    /// Sends a message to a party, waiting while the party holds it back.
    fn send(&mut self, to: &str, message: Message) -> Result<(), FedError>;
    /// Waits for the next message from a party.
    fn receive(&mut self, from: &str) -> Result<Message, FedError>;
    /// Sends a message unless the party holds it back now; then gives it back. A message given
    /// back is offered again, unchanged, before any other message to that party (so a
    /// transport may keep its encoding and its place in the sequence); one held back for the
    /// transport's timeout fails. The default sends at once.
    fn offer(&mut self, to: &str, message: Message) -> Result<Option<Message>, FedError> {
        self.send(to, message).map(|()| None)
    }
    /// Called while every message offered is held back: waits a little for room at the
    /// receivers, and passes what has arrived meanwhile, from any party, to `arrived`. The
    /// default has nothing to wait for.
    fn wait(
        &mut self,
        arrived: &mut dyn FnMut(&str, Message) -> Result<(), FedError>,
    ) -> Result<(), FedError> {
        let _ = arrived;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_kinds_are_kinds() {
        for kind in Message::STEP_KINDS {
            assert!(Message::KINDS.contains(&kind), "{kind}");
        }
    }

    #[test]
    fn every_truncation_and_a_wrong_version_are_refused() {
        let params = he::N8192_Q192;
        let (secret, public) = he::SecretKey::generate(&params);
        let messages = vec![
            Message::Propose(Box::new(Proposal {
                job: [3; 16],
                model_id: "m".into(),
                config: TrainConfig::default(),
                rows: 10,
                hosts: vec!["tax".into()],
                features: 3,
                resume: Some(4),
            })),
            Message::Keys(Box::new(PartyKeys {
                rows: 10,
                columns: 12,
                key: public.clone(),
                mask_share: [7; 32],
                frac_bits: 12,
            })),
            Message::Packing(Box::new(secret.packing_key(1).unwrap())),
            Message::EpochEnd {
                epoch: 2,
                best: true,
                stop: false,
            },
            Message::FinalScores { masked: vec![9, 8] },
            Message::Digest { hash: [5; 32] },
            Message::Abort {
                reason: "stop".into(),
            },
            Message::SharedColumns {
                blocks: vec![secret.encrypt_blocks(&[1, 2], 2, 1, 2, 1).unwrap()],
            },
            Message::CouplingVectors {
                vectors: vec![vec![secret.encrypt(&[1], 1).unwrap()]],
            },
            Message::HandOver {
                step: 2,
                shares: vec![3, 4],
            },
            Message::WeightShares { shares: vec![5] },
        ];
        for message in messages {
            let bytes = message.to_bytes();
            assert_eq!(Message::from_bytes(&bytes).unwrap(), message);
            for cut in [0, 5, 7, bytes.len() / 2, bytes.len() - 1] {
                assert!(
                    Message::from_bytes(&bytes[..cut]).is_err(),
                    "{}",
                    message.kind()
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Message::from_bytes(&longer).is_err());
            let mut other_version = bytes.clone();
            other_version[4] = 1;
            assert!(matches!(
                Message::from_bytes(&other_version),
                Err(FedError::Malformed(reason)) if reason.contains("version")
            ));
        }
    }
}
