//! The protocol's messages, their versioned byte encoding, and the transport they travel on.

use he::{EncryptedVector, MaskedColumns, PackingKey, PublicKey};

use crate::config::TrainConfig;
use crate::error::FedError;

/// Protocol version carried by every message; a peer speaking another version is refused.
pub const PROTOCOL_VERSION: u16 = 1;

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
    /// The hosts, in the order the encrypted residual travels.
    pub hosts: Vec<String>,
    /// Number of the guest's features (public: it sizes the messages).
    pub features: u32,
    /// The guest's public key (hosts mask and flood under it).
    pub guest_key: PublicKey,
}

/// A host's answer to the proposal.
#[derive(Clone, Debug, PartialEq)]
pub struct Acceptance {
    /// Rows the host holds (must equal the proposal's).
    pub rows: u64,
    /// Number of the host's features (public: it sizes the messages).
    pub features: u32,
    /// The host's public key (the guest masks and floods its products under it).
    pub key: PublicKey,
    /// The host's packing key (the guest packs its products for the host with it).
    pub packing: PackingKey,
}

/// One protocol message. Steps count mini-batch updates from 0; epochs count from 1.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// guest → host: the job.
    Propose(Box<Proposal>),
    /// host → guest: accepted, with the host's row count and key.
    Accept(Box<Acceptance>),
    /// host → host: a Ristretto255 public share for pairwise mask seeds.
    KeyShare([u8; 32]),
    /// guest → host: the guest's packing key (hosts pack their products for the guest with it).
    PackingKey(Box<PackingKey>),
    /// The encrypted residual under the guest's key: [[0.25·z_G + 0.5 − y]] from the guest to
    /// the first host, partial sums along the host chain, and the complete [[d]] from the last
    /// host to the others.
    Residual {
        /// Update index.
        step: u64,
        /// The ciphertext.
        residual: EncryptedVector,
    },
    /// host → guest: masked, flooded [[X_k^T d + r_k]] (guest key) and [[0.25·z_k]] (host key).
    HostProducts {
        /// Update index.
        step: u64,
        /// The host's masked gradient.
        gradient: MaskedColumns,
        /// The host's encrypted partial residual.
        scores: EncryptedVector,
    },
    /// guest → host: the decrypted masked gradient, and the guest's masked, flooded
    /// [[X_G^T (0.25·z_k) + r]] under the host's key.
    GuestReply {
        /// Update index.
        step: u64,
        /// (X_k^T d + r_k) mod 2^p.
        gradient: Vec<u64>,
        /// The guest's product for the host to decrypt.
        products: MaskedColumns,
    },
    /// host → guest: the decrypted product plus the host's pairwise masks.
    HostReply {
        /// Update index.
        step: u64,
        /// (X_G^T (0.25·z_k) + r + pairwise masks) mod 2^p.
        products: Vec<u64>,
    },
    /// host → guest: fixed-point partial scores of the training and validation rows and the
    /// squared weight change, each plus the host's pairwise masks.
    EpochScores {
        /// Epoch.
        epoch: u64,
        /// Masked values.
        masked: Vec<u64>,
    },
    /// guest → host: the epoch is done; whether it is the best so far and whether to stop.
    EpochEnd {
        /// Epoch.
        epoch: u64,
        /// Keep this epoch's weights as the model.
        best: bool,
        /// Training ends after this epoch.
        stop: bool,
    },
    /// Any party → the others: the job stops.
    Abort {
        /// Why.
        reason: String,
    },
}

impl Message {
    /// A short name of the message kind (for logs, metrics and audits).
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Propose(_) => "propose",
            Message::Accept(_) => "accept",
            Message::KeyShare(_) => "key_share",
            Message::PackingKey(_) => "packing_key",
            Message::Residual { .. } => "residual",
            Message::HostProducts { .. } => "host_products",
            Message::GuestReply { .. } => "guest_reply",
            Message::HostReply { .. } => "host_reply",
            Message::EpochScores { .. } => "epoch_scores",
            Message::EpochEnd { .. } => "epoch_end",
            Message::Abort { .. } => "abort",
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
                blob(&mut out, &p.guest_key.to_bytes());
            }
            Message::Accept(a) => {
                out.push(1);
                out.extend_from_slice(&a.rows.to_le_bytes());
                out.extend_from_slice(&a.features.to_le_bytes());
                blob(&mut out, &a.key.to_bytes());
                blob(&mut out, &a.packing.to_bytes());
            }
            Message::KeyShare(share) => {
                out.push(2);
                out.extend_from_slice(share);
            }
            Message::Residual { step, residual } => {
                out.push(3);
                out.extend_from_slice(&step.to_le_bytes());
                blob(&mut out, &residual.to_bytes());
            }
            Message::HostProducts {
                step,
                gradient,
                scores,
            } => {
                out.push(4);
                out.extend_from_slice(&step.to_le_bytes());
                blob(&mut out, &gradient.to_bytes());
                blob(&mut out, &scores.to_bytes());
            }
            Message::GuestReply {
                step,
                gradient,
                products,
            } => {
                out.push(5);
                out.extend_from_slice(&step.to_le_bytes());
                words(&mut out, gradient);
                blob(&mut out, &products.to_bytes());
            }
            Message::HostReply { step, products } => {
                out.push(6);
                out.extend_from_slice(&step.to_le_bytes());
                words(&mut out, products);
            }
            Message::EpochScores { epoch, masked } => {
                out.push(7);
                out.extend_from_slice(&epoch.to_le_bytes());
                words(&mut out, masked);
            }
            Message::EpochEnd { epoch, best, stop } => {
                out.push(8);
                out.extend_from_slice(&epoch.to_le_bytes());
                out.push(u8::from(*best));
                out.push(u8::from(*stop));
            }
            Message::Abort { reason } => {
                out.push(9);
                blob(&mut out, reason.as_bytes());
            }
            Message::PackingKey(key) => {
                out.push(10);
                blob(&mut out, &key.to_bytes());
            }
        }
        out
    }

    /// Decodes bytes from [`to_bytes`](Self::to_bytes), refusing other versions, unknown
    /// kinds, truncation, trailing bytes and lengths beyond the input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Message, FedError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4)? != MAGIC {
            return Err(FedError::Malformed("not a fedlearn message".into()));
        }
        let version = u16::from_le_bytes(r.array()?);
        if version != PROTOCOL_VERSION {
            return Err(FedError::Malformed(format!(
                "protocol version {version}, this build speaks {PROTOCOL_VERSION}"
            )));
        }
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
                let guest_key = PublicKey::from_bytes(r.blob()?).map_err(he)?;
                Message::Propose(Box::new(Proposal {
                    job,
                    model_id,
                    config,
                    rows,
                    hosts,
                    features,
                    guest_key,
                }))
            }
            1 => Message::Accept(Box::new(Acceptance {
                rows: r.u64()?,
                features: u32::from_le_bytes(r.array()?),
                key: PublicKey::from_bytes(r.blob()?).map_err(he)?,
                packing: PackingKey::from_bytes(r.blob()?).map_err(he)?,
            })),
            2 => Message::KeyShare(r.array()?),
            3 => Message::Residual {
                step: r.u64()?,
                residual: EncryptedVector::from_bytes(r.blob()?).map_err(he)?,
            },
            4 => Message::HostProducts {
                step: r.u64()?,
                gradient: MaskedColumns::from_bytes(r.blob()?).map_err(he)?,
                scores: EncryptedVector::from_bytes(r.blob()?).map_err(he)?,
            },
            5 => Message::GuestReply {
                step: r.u64()?,
                gradient: r.words()?,
                products: MaskedColumns::from_bytes(r.blob()?).map_err(he)?,
            },
            6 => Message::HostReply {
                step: r.u64()?,
                products: r.words()?,
            },
            7 => Message::EpochScores {
                epoch: r.u64()?,
                masked: r.words()?,
            },
            8 => Message::EpochEnd {
                epoch: r.u64()?,
                best: r.flag()?,
                stop: r.flag()?,
            },
            9 => Message::Abort {
                reason: r.string()?,
            },
            10 => Message::PackingKey(Box::new(PackingKey::from_bytes(r.blob()?).map_err(he)?)),
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

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], FedError> {
        if len > self.remaining() {
            return Err(FedError::Malformed(format!(
                "needs {len} more bytes, {} left",
                self.remaining()
            )));
        }
        self.at += len;
        Ok(&self.bytes[self.at - len..self.at])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FedError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, FedError> {
        Ok(self.take(1)?[0])
    }

    fn flag(&mut self) -> Result<bool, FedError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(FedError::Malformed(format!("flag byte {other}"))),
        }
    }

    fn u64(&mut self) -> Result<u64, FedError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn blob(&mut self) -> Result<&'a [u8], FedError> {
        let len = self.u64()?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.remaining())
            .ok_or_else(|| FedError::Malformed(format!("a length of {len} beyond the message")))?;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, FedError> {
        String::from_utf8(self.blob()?.to_vec())
            .map_err(|_| FedError::Malformed("text that is not UTF-8".into()))
    }

    fn words(&mut self) -> Result<Vec<u64>, FedError> {
        let count = self.u64()?;
        if count > self.remaining() as u64 / 8 {
            return Err(FedError::Malformed(format!(
                "{count} values beyond the message"
            )));
        }
        (0..count).map(|_| self.u64()).collect()
    }
}

/// Moves messages between named parties. `node` implements it over gRPC; the simulator over
/// in-process channels. Both calls block; `receive` returns the next message from `from`
/// (messages from one sender arrive in the order sent) or an error after the transport's
/// timeout.
pub trait Transport {
    /// Sends a message to a party.
    fn send(&mut self, to: &str, message: Message) -> Result<(), FedError>;
    /// Waits for the next message from a party.
    fn receive(&mut self, from: &str) -> Result<Message, FedError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_truncation_and_a_wrong_version_are_refused() {
        let params = he::N8192_Q128;
        let (secret, public) = he::SecretKey::generate(&params);
        let messages = vec![
            Message::Propose(Box::new(Proposal {
                job: [3; 16],
                model_id: "m".into(),
                config: TrainConfig::default(),
                rows: 10,
                hosts: vec!["tax".into()],
                features: 3,
                guest_key: public,
            })),
            Message::Residual {
                step: 4,
                residual: secret.encrypt(&[1, 2, 3]).unwrap(),
            },
            Message::GuestReply {
                step: 1,
                gradient: vec![5, 6],
                products: {
                    let (s, p) = he::SecretKey::generate(&params);
                    let v = s.encrypt(&[1]).unwrap();
                    let x = he::PreparedMatrix::new(&params, 1, 1, &[2]).unwrap();
                    let packing = s.packing_key(0).unwrap();
                    p.mask_and_flood(&params, p.multiply(&params, &v, &x).unwrap(), &packing)
                        .unwrap()
                        .0
                },
            },
            Message::PackingKey(Box::new(secret.packing_key(1).unwrap())),
            Message::EpochEnd {
                epoch: 2,
                best: true,
                stop: false,
            },
            Message::Abort {
                reason: "stop".into(),
            },
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
            other_version[4] = 2;
            assert!(matches!(
                Message::from_bytes(&other_version),
                Err(FedError::Malformed(reason)) if reason.contains("version")
            ));
        }
    }
}
