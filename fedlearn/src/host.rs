//! A host: holds features only; learns its own gradient and weights, and reveals the final
//! model's partial scores once, summed with the other hosts' under pairwise masks.

use he::PreparedMatrix;

use crate::data::Table;
use crate::error::FedError;
use crate::guest::{LOSS_BOUND, LOSS_MAX, REPORT_SLOTS};
use crate::masks::Split;
use crate::message::{Message, Proposal, Transport};
use crate::model::ModelPart;
use crate::party::Core;
use crate::protocol::{
    encode_fixed, encode_score, finish_with_error, receive, squared_distance, unexpected, Event,
    HostOutcome, LOSS_FRAC_BITS, PARAMS, SUM_FRAC_BITS,
};

/// Everything a host brings to a job. `table` is already aligned (PSI order).
pub struct HostJob {
    /// The host's party name.
    pub party: String,
    /// The guest's party name.
    pub guest: String,
    /// Aligned rows (no labels).
    pub table: Table,
}

/// Waits for the guest's proposal; the caller decides (by its policy) whether to run it.
pub fn receive_proposal(transport: &mut dyn Transport, guest: &str) -> Result<Proposal, FedError> {
    match receive(transport, guest)? {
        Message::Propose(proposal) => Ok(*proposal),
        other => Err(unexpected(guest, "a job proposal", &other)),
    }
}

/// Runs the host's side of a job the guest proposed, to the end.
pub fn run_host(
    job: HostJob,
    proposal: Proposal,
    transport: &mut dyn Transport,
    events: &mut dyn FnMut(&Event),
) -> Result<HostOutcome, FedError> {
    let mut peers: Vec<String> = vec![job.guest.clone()];
    peers.extend(proposal.hosts.iter().filter(|h| **h != job.party).cloned());
    let mut last_good = None;
    match train(job, proposal, transport, events, &mut last_good) {
        Ok(outcome) => Ok(outcome),
        Err(error) => Err(finish_with_error(transport, &peers, error, last_good)),
    }
}

fn train(
    job: HostJob,
    proposal: Proposal,
    transport: &mut dyn Transport,
    events: &mut dyn FnMut(&Event),
    last_good: &mut Option<ModelPart>,
) -> Result<HostOutcome, FedError> {
    let guest = job.guest.clone();
    proposal.config.validate()?;
    let position = proposal
        .hosts
        .iter()
        .position(|h| *h == job.party)
        .ok_or_else(|| {
            FedError::protocol(
                &guest,
                format!("{} is not among the job's hosts", job.party),
            )
        })?;
    let rows = job.table.rows();
    if proposal.rows != rows as u64 {
        return Err(FedError::RowCount {
            party: job.party.clone(),
            expected: proposal.rows as usize,
            got: rows,
        });
    }
    let mut peers: Vec<String> = vec![guest.clone()];
    peers.extend(proposal.hosts.iter().filter(|h| **h != job.party).cloned());
    let mut core = Core::new(&job.party, job.table, proposal.config.clone(), false)?;
    core.send_keys(transport, &peers)?;
    core.receive_keys(transport, &proposal.job, &peers)?;
    core.send_columns(transport)?;
    core.receive_columns(transport)?;
    let mut host = Host {
        core,
        guest,
        model_id: proposal.model_id,
        hosts: proposal.hosts,
        position,
    };
    host.epochs(transport, events, last_good)
}

struct Host {
    core: Core,
    guest: String,
    model_id: String,
    hosts: Vec<String>,
    position: usize,
}

impl Host {
    fn epochs(
        &mut self,
        transport: &mut dyn Transport,
        events: &mut dyn FnMut(&Event),
        last_good: &mut Option<ModelPart>,
    ) -> Result<HostOutcome, FedError> {
        let config = self.core.config.clone();
        let mut best_weights = None;
        let mut epochs = 0;
        for epoch in 1..=config.max_epochs {
            let start = self.core.weights.clone();
            for batch in Split::epoch_order(config.seed, epoch, self.core.batches.len()) {
                let rate = config.rate(self.core.step, epoch);
                let rows = &self.core.batches[batch];
                let share: Vec<f64> = self
                    .core
                    .scores_with(&self.core.weights, rows)
                    .iter()
                    .map(|z| 0.25 * z)
                    .collect();
                self.core.step(transport, epoch, batch, &share, rate)?;
            }
            let change = squared_distance(&start, &self.core.weights);
            self.loss(transport, epoch, change)?;
            match receive(transport, &self.guest)? {
                Message::EpochEnd {
                    epoch: e,
                    best,
                    stop,
                } if e == epoch as u64 => {
                    epochs = epoch;
                    if best {
                        best_weights = Some(self.core.weights.clone());
                    }
                    *last_good = Some(self.core.model(&self.model_id, &self.core.weights));
                    events(&Event::HostEpoch { epoch });
                    if stop {
                        break;
                    }
                }
                other => return Err(unexpected(&self.guest, "end of epoch", &other)),
            }
        }
        let weights = best_weights.unwrap_or_else(|| self.core.weights.clone());
        let revealed_rows = self.reveal(transport, &weights)?;
        Ok(HostOutcome {
            model: self.core.model(&self.model_id, &weights),
            epochs,
            feature_frac_bits: self.core.quantised.frac_bits,
            revealed_rows,
        })
    }

    /// This host's part of the epoch's aggregate loss (see the guest's `loss`): its products
    /// with the guest's [[d_G]] and with earlier hosts' [[z_j]] are released to their owners,
    /// later hosts' products with its own [[z_k]] come back released to it, and the report to
    /// the guest holds the sums of its shares, its squares and its squared weight change,
    /// blinded by pairwise masks among the hosts.
    fn loss(
        &self,
        transport: &mut dyn Transport,
        epoch: usize,
        change: f64,
    ) -> Result<(), FedError> {
        let split = &self.core.split;
        let rows: Vec<usize> = split
            .train
            .iter()
            .chain(&split.validation)
            .copied()
            .collect();
        let n_train = split.train.len();
        let z = self.core.scores_with(&self.core.weights, &rows);
        let encoded = encode_fixed(
            &self.core.party,
            epoch,
            "partial score",
            &z,
            LOSS_FRAC_BITS,
            LOSS_MAX,
        )?;
        let later = &self.hosts[self.position + 1..];
        if !later.is_empty() {
            let encrypted = self
                .core
                .secret
                .encrypt(&encoded, LOSS_BOUND)
                .map_err(FedError::he("encrypting the loss vector"))?;
            for host in later {
                transport.send(
                    host,
                    Message::LossVector {
                        epoch: epoch as u64,
                        values: encrypted.clone(),
                    },
                )?;
            }
        }
        // Two columns: the scores on the training rows, then on the validation rows.
        let mut columns = vec![0i64; 2 * rows.len()];
        columns[..n_train].copy_from_slice(&encoded[..n_train]);
        columns[rows.len() + n_train..].copy_from_slice(&encoded[n_train..]);
        let matrix = PreparedMatrix::new(&PARAMS, rows.len(), 2, &columns)
            .map_err(FedError::he("preparing the scores"))?;
        let mut report = [0u64; REPORT_SLOTS];
        let earlier = std::iter::once(&self.guest).chain(&self.hosts[..self.position]);
        for (index, owner) in earlier.enumerate() {
            let vector = match receive(transport, owner)? {
                Message::LossVector { epoch: e, values } if e == epoch as u64 => values,
                other => return Err(unexpected(owner, "a loss vector", &other)),
            };
            let peer = self
                .core
                .peers
                .iter()
                .find(|p| p.name == *owner)
                .ok_or_else(|| FedError::protocol(owner, "not a party of the job"))?;
            let product = peer
                .key
                .multiply(&PARAMS, &vector, &matrix)
                .map_err(FedError::he("multiplying a loss vector"))?;
            let (products, masks) = peer
                .key
                .mask_and_flood(&PARAMS, product, &peer.packing)
                .map_err(FedError::he("releasing a loss product"))?;
            transport.send(
                owner,
                Message::LossProduct {
                    epoch: epoch as u64,
                    products,
                },
            )?;
            let slot = if index == 0 { 0 } else { 2 };
            for (r, s) in report[slot..slot + 2].iter_mut().zip(masks.shares()) {
                *r = r.wrapping_add(s);
            }
        }
        for host in later {
            let decrypted = self.core.receive_loss_product(transport, host, epoch)?;
            for (r, d) in report[2..4].iter_mut().zip(decrypted) {
                *r = r.wrapping_add(d);
            }
        }
        let sums = 2f64.powi(SUM_FRAC_BITS);
        let squares =
            |range: std::ops::Range<usize>| -> f64 { z[range].iter().map(|z| z * z).sum() };
        report[4] = (squares(0..n_train) * sums).round() as i64 as u64;
        report[5] = (squares(n_train..rows.len()) * sums).round() as i64 as u64;
        report[6] = (change * sums).round() as i64 as u64;
        let mut context = b"loss ".to_vec();
        context.extend_from_slice(&(epoch as u64).to_le_bytes());
        self.masks()
            .apply_without(&self.guest, &context, &mut report);
        transport.send(
            &self.guest,
            Message::LossReport {
                epoch: epoch as u64,
                masked: report.to_vec(),
            },
        )
    }

    /// The job's one reveal: the final partial scores of the validation rows (the training
    /// rows without a validation split), blinded by pairwise masks among the hosts. Returns
    /// the number of rows revealed.
    fn reveal(&self, transport: &mut dyn Transport, weights: &[f64]) -> Result<usize, FedError> {
        let split = &self.core.split;
        let rows = if split.validation.is_empty() {
            &split.train
        } else {
            &split.validation
        };
        let mut masked = self
            .core
            .scores_with(weights, rows)
            .into_iter()
            .map(encode_score)
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| FedError::Diverged {
                epoch: 0,
                reason: format!(
                    "{}'s final scores left the fixed-point range",
                    self.core.party
                ),
                last_good: None,
            })?;
        self.masks()
            .apply_without(&self.guest, b"final scores", &mut masked);
        transport.send(&self.guest, Message::FinalScores { masked })?;
        Ok(rows.len())
    }

    fn masks(&self) -> &crate::masks::PairwiseMasks {
        self.core
            .masks
            .as_ref()
            .expect("keys are exchanged before training")
    }
}
