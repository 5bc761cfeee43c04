//! A party's state at the end of an epoch, from which an interrupted job resumes.
//!
//! In secret-shared training no party knows any weights until the end: a checkpoint holds the
//! party's *shares* of the weight vectors it holds (its own and, for the guest, every host's;
//! for host 1, the guest's), their velocities and the kept model, modulo 2^108. Everything
//! else is derived again from the aligned table and the job's settings (preparation,
//! standardisation, split) or drawn fresh for the new attempt (keys, masks, and the shares of
//! the set-up's products, which the resumed job computes again): the shares of one epoch at
//! the two holders of a vector still add up to its weights, so the resumed job ends with the
//! model of an uninterrupted run.
//!
//! A checkpoint is written after every epoch's verdict, and every party holds the previous
//! one too. No party finishes epoch e + 1 before every party has finished epoch e (the guest
//! gives its verdict only with every host's loss shares, and a host starts the next step only
//! on the verdict), so at any moment the parties' latest epochs differ by at most one, and the
//! smallest of them is held by all.

use sha2::{Digest, Sha256};

use crate::error::FedError;
use crate::message::{Proposal, Reader, PROTOCOL_VERSION};
use crate::protocol::{EpochReport, StopReason};
use crate::shared::HeldShares;

const MAGIC: &[u8; 4] = b"UNCP";
/// Version 2: shares of the weights held (secret-shared training) instead of weights.
const VERSION: u16 = 2;

/// One party's state after an epoch (see the module documentation). Its bytes hold the
/// party's weight shares: the node keeps them sealed, like a model part.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The epoch it ends (1-based).
    pub epoch: usize,
    /// Digest of the job's settings (see [`Proposal::settings_digest`]): a job resumes only
    /// with the settings it started with.
    pub(crate) settings: [u8; 32],
    /// The party's shares of the weight vectors it holds.
    pub(crate) shares: Vec<HeldShares>,
    /// Training ended with this epoch: the final reveal comes next.
    pub(crate) last: bool,
    /// The guest's early-stopping state and training curve (empty on a host).
    pub(crate) guest: Option<GuestProgress>,
}

/// What only the guest keeps across epochs.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct GuestProgress {
    pub(crate) history: Vec<EpochReport>,
    pub(crate) best_loss: f64,
    pub(crate) best_epoch: usize,
    pub(crate) since_best: usize,
    pub(crate) stop: StopReason,
    /// ‖Δw‖² of the epoch's last step (reported with the next epoch).
    pub(crate) change: f64,
}

impl Proposal {
    /// SHA-256 of what a job is trained with: the protocol version, the model, settings, rows,
    /// hosts and the guest's features — not the attempt's nonce. A checkpoint of another
    /// protocol version (whose quantisation may differ) therefore does not resume.
    pub fn settings_digest(&self) -> [u8; 32] {
        let mut digest = Sha256::new();
        digest.update(b"unseen training settings v1");
        digest.update(PROTOCOL_VERSION.to_le_bytes());
        for part in [
            self.model_id.as_bytes(),
            &serde_json::to_vec(&self.config).expect("config serialises"),
        ] {
            digest.update((part.len() as u64).to_le_bytes());
            digest.update(part);
        }
        digest.update(self.rows.to_le_bytes());
        digest.update(self.features.to_le_bytes());
        for host in &self.hosts {
            digest.update((host.len() as u64).to_le_bytes());
            digest.update(host.as_bytes());
        }
        digest.finalize().into()
    }
}

impl Checkpoint {
    /// Versioned bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.epoch as u64).to_le_bytes());
        out.extend_from_slice(&self.settings);
        out.extend_from_slice(&(self.shares.len() as u64).to_le_bytes());
        for held in &self.shares {
            out.extend_from_slice(&(held.party as u64).to_le_bytes());
            for values in [&held.weights, &held.velocity, &held.kept] {
                out.extend_from_slice(&(values.len() as u64).to_le_bytes());
                for v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        out.push(u8::from(self.last));
        out.push(u8::from(self.guest.is_some()));
        if let Some(g) = &self.guest {
            out.extend_from_slice(&(g.history.len() as u64).to_le_bytes());
            for r in &g.history {
                out.extend_from_slice(&(r.epoch as u64).to_le_bytes());
                out.extend_from_slice(&r.train_loss.to_bits().to_le_bytes());
                out.push(u8::from(r.validation_loss.is_some()));
                out.extend_from_slice(&r.validation_loss.unwrap_or(0.0).to_bits().to_le_bytes());
                out.extend_from_slice(&r.weight_change.to_bits().to_le_bytes());
                out.extend_from_slice(&r.learning_rate.to_bits().to_le_bytes());
                out.push(u8::from(r.best));
            }
            out.extend_from_slice(&g.best_loss.to_bits().to_le_bytes());
            out.extend_from_slice(&(g.best_epoch as u64).to_le_bytes());
            out.extend_from_slice(&(g.since_best as u64).to_le_bytes());
            let stop = match g.stop {
                StopReason::MaxEpochs => 0,
                StopReason::EarlyStopping { epoch } => epoch as u64,
            };
            out.extend_from_slice(&stop.to_le_bytes());
            out.extend_from_slice(&g.change.to_bits().to_le_bytes());
        }
        out
    }

    /// Decodes bytes from [`to_bytes`](Self::to_bytes), refusing another version, truncation
    /// and trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint, FedError> {
        let mut r = Reader::new(bytes);
        r.header(MAGIC, "a training checkpoint", VERSION)?;
        let float = |r: &mut Reader<'_>| r.u64().map(f64::from_bits);
        let count = |r: &mut Reader<'_>| -> Result<usize, FedError> {
            usize::try_from(r.u64()?).map_err(|_| FedError::Malformed("a count too large".into()))
        };
        let epoch = count(&mut r)?;
        let settings = r.array()?;
        let held = count(&mut r)?;
        if held > r.remaining() / 8 {
            return Err(FedError::Malformed("shares beyond the checkpoint".into()));
        }
        let shares = (0..held)
            .map(|_| {
                Ok(HeldShares {
                    party: count(&mut r)?,
                    weights: r.wides()?,
                    velocity: r.wides()?,
                    kept: r.wides()?,
                })
            })
            .collect::<Result<Vec<_>, FedError>>()?;
        let last = r.flag()?;
        let guest = if r.flag()? {
            let reports = count(&mut r)?;
            if reports > r.remaining() {
                return Err(FedError::Malformed("epochs beyond the checkpoint".into()));
            }
            let mut history = Vec::with_capacity(reports);
            for _ in 0..reports {
                let epoch = count(&mut r)?;
                let train_loss = float(&mut r)?;
                let has_validation = r.flag()?;
                let validation = float(&mut r)?;
                history.push(EpochReport {
                    epoch,
                    train_loss,
                    validation_loss: has_validation.then_some(validation),
                    weight_change: float(&mut r)?,
                    learning_rate: float(&mut r)?,
                    best: r.flag()?,
                });
            }
            let best_loss = float(&mut r)?;
            let best_epoch = count(&mut r)?;
            let since_best = count(&mut r)?;
            let stop = match count(&mut r)? {
                0 => StopReason::MaxEpochs,
                epoch => StopReason::EarlyStopping { epoch },
            };
            Some(GuestProgress {
                history,
                best_loss,
                best_epoch,
                since_best,
                stop,
                change: float(&mut r)?,
            })
        } else {
            None
        };
        if r.remaining() != 0 {
            return Err(FedError::Malformed(format!(
                "{} bytes after the checkpoint",
                r.remaining()
            )));
        }
        Ok(Checkpoint {
            epoch,
            settings,
            shares,
            last,
            guest,
        })
    }

    /// Checks that this checkpoint can resume `proposal` as `party` (the shares are checked
    /// against the parties' widths once their keys have come).
    pub(crate) fn check(&self, party: &str, proposal: &Proposal) -> Result<(), FedError> {
        let refuse = |reason: String| FedError::Resume {
            party: party.to_owned(),
            reason,
        };
        if proposal.resume != Some(self.epoch as u64) {
            return Err(refuse(format!(
                "the job resumes from {}, this party's checkpoint ends epoch {}",
                match proposal.resume {
                    Some(e) => format!("epoch {e}"),
                    None => "the start".into(),
                },
                self.epoch
            )));
        }
        if proposal.settings_digest() != self.settings {
            return Err(refuse(
                "the job's settings are not those it started with".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_damage_is_refused() {
        let checkpoint = Checkpoint {
            epoch: 3,
            settings: [7; 32],
            shares: vec![
                HeldShares {
                    party: 0,
                    weights: vec![5, (1 << 108) - 1],
                    velocity: vec![0, 1],
                    kept: vec![2, 3],
                },
                HeldShares {
                    party: 2,
                    weights: vec![7],
                    velocity: vec![8],
                    kept: vec![9],
                },
            ],
            last: false,
            guest: Some(GuestProgress {
                history: vec![EpochReport {
                    epoch: 1,
                    train_loss: 0.69,
                    validation_loss: None,
                    weight_change: 0.1,
                    learning_rate: 0.05,
                    best: true,
                }],
                best_loss: f64::INFINITY,
                best_epoch: 1,
                since_best: 2,
                stop: StopReason::EarlyStopping { epoch: 3 },
                change: 0.125,
            }),
        };
        let bytes = checkpoint.to_bytes();
        assert_eq!(Checkpoint::from_bytes(&bytes).unwrap(), checkpoint);
        for cut in 0..bytes.len() {
            assert!(
                Checkpoint::from_bytes(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Checkpoint::from_bytes(&longer).is_err());
        let host = Checkpoint {
            guest: None,
            shares: Vec::new(),
            ..checkpoint
        };
        assert_eq!(Checkpoint::from_bytes(&host.to_bytes()).unwrap(), host);
    }
}
