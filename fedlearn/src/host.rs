//! A host: holds features only; updates its own weights from its masked gradient.

use he::{PackingKey, PreparedMatrix, PublicKey, SecretKey};

use crate::config::{OptimizerState, TrainConfig};
use crate::data::Table;
use crate::error::FedError;
use crate::masks::{MaskSecret, PairwiseMasks, Split};
use crate::message::{Acceptance, Message, Proposal, Transport};
use crate::model::{ModelPart, Standardised};
use crate::protocol::{
    check_weights, encode_score, encode_share, finish_with_error, linear_scores, packing_levels,
    receive, squared_distance, unexpected, Event, HostOutcome, Quantised, PARAMS,
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

struct Host {
    job: HostJob,
    config: TrainConfig,
    model_id: String,
    hosts: Vec<String>,
    position: usize,
    guest_key: PublicKey,
    guest_packing: PackingKey,
    secret: SecretKey,
    masks: PairwiseMasks,
    split: Split,
    standardised: Standardised,
    quantised: Quantised,
    weights: Vec<f64>,
    optimizer: OptimizerState,
    full_batch: Option<PreparedMatrix>,
    step: u64,
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
    let split = Split::new(
        rows,
        proposal.config.seed,
        proposal.config.validation_fraction,
    );
    let standardised = Standardised::fit(&job.party, &job.table, &split.train)?;
    let width = job.table.features();
    let quantised = Quantised::new(&standardised.values, width, &split.train, false);
    let (secret, public) = SecretKey::generate(&PARAMS);
    // The guest's products for this host have one column per guest feature plus the intercept.
    let packing = secret
        .packing_key(packing_levels(proposal.features as usize + 1))
        .map_err(FedError::he("making the packing key"))?;
    transport.send(
        &guest,
        Message::Accept(Box::new(Acceptance {
            rows: rows as u64,
            features: width as u32,
            key: public,
            packing,
        })),
    )?;
    // Pairwise mask seeds with every other host (secure aggregation toward the guest).
    let mask_secret = MaskSecret::random()?;
    let others: Vec<String> = proposal
        .hosts
        .iter()
        .filter(|h| **h != job.party)
        .cloned()
        .collect();
    for other in &others {
        transport.send(other, Message::KeyShare(mask_secret.public()))?;
    }
    let mut shares = Vec::with_capacity(others.len());
    for other in &others {
        match receive(transport, other)? {
            Message::KeyShare(share) => shares.push((other.clone(), share)),
            message => return Err(unexpected(other, "a mask key share", &message)),
        }
    }
    let masks = PairwiseMasks::derive(&proposal.job, &job.party, &mask_secret, &shares)?;
    let guest_packing = match receive(transport, &guest)? {
        Message::PackingKey(key) if key.key_id() == proposal.guest_key.id() => *key,
        Message::PackingKey(_) => {
            return Err(FedError::protocol(
                &guest,
                "packing key of another key pair",
            ))
        }
        other => return Err(unexpected(&guest, "the guest's packing key", &other)),
    };
    let mut host = Host {
        config: proposal.config,
        model_id: proposal.model_id,
        hosts: proposal.hosts,
        position,
        guest_key: proposal.guest_key,
        guest_packing,
        secret,
        masks,
        split,
        standardised,
        quantised,
        weights: vec![0.0; width],
        optimizer: OptimizerState::new(width),
        full_batch: None,
        step: 0,
        job,
    };
    host.epochs(transport, events, last_good)
}

impl Host {
    fn model(&self) -> ModelPart {
        self.standardised.model(
            &self.model_id,
            &self.job.party,
            &self.job.table,
            &self.weights,
            None,
        )
    }

    fn epochs(
        &mut self,
        transport: &mut dyn Transport,
        events: &mut dyn FnMut(&Event),
        last_good: &mut Option<ModelPart>,
    ) -> Result<HostOutcome, FedError> {
        let guest = self.job.guest.clone();
        let mut best_model = None;
        let mut epochs = 0;
        for epoch in 1..=self.config.max_epochs {
            let start = self.weights.clone();
            for batch in self
                .split
                .batches(self.config.seed, epoch, self.config.batch_size)
            {
                let rate = self.config.rate(self.step, epoch);
                self.update(transport, epoch, &batch, rate)?;
                self.step += 1;
            }
            self.send_scores(transport, epoch, &start)?;
            match receive(transport, &guest)? {
                Message::EpochEnd {
                    epoch: e,
                    best,
                    stop,
                } if e == epoch as u64 => {
                    epochs = epoch;
                    let model = self.model();
                    if best {
                        best_model = Some(model.clone());
                    }
                    *last_good = Some(model);
                    events(&Event::HostEpoch { epoch });
                    if stop {
                        break;
                    }
                }
                other => return Err(unexpected(&guest, "end of epoch", &other)),
            }
        }
        Ok(HostOutcome {
            model: best_model.unwrap_or_else(|| self.model()),
            epochs,
            feature_frac_bits: self.quantised.frac_bits,
        })
    }

    fn update(
        &mut self,
        transport: &mut dyn Transport,
        epoch: usize,
        batch: &[usize],
        rate: f64,
    ) -> Result<(), FedError> {
        let step = self.step;
        let guest = self.job.guest.clone();
        let width = self.job.table.features();
        let z = linear_scores(&self.standardised.values, width, batch, &self.weights);
        let share: Vec<f64> = z.iter().map(|z| 0.25 * z).collect();
        let share = encode_share(&self.job.party, epoch, &share)?;
        // The residual travels guest → host 0 → host 1 → …; the last host completes [[d]] and
        // hands it to the others.
        let previous = if self.position == 0 {
            guest.clone()
        } else {
            self.hosts[self.position - 1].clone()
        };
        let mut residual = self.expect_residual(transport, &previous, step, batch.len())?;
        residual
            .add_plain(&PARAMS, &share)
            .map_err(FedError::he("adding the host's residual share"))?;
        let last = self.hosts.len() - 1;
        if self.position == last {
            for other in &self.hosts[..last] {
                transport.send(
                    other,
                    Message::Residual {
                        step,
                        residual: residual.clone(),
                    },
                )?;
            }
        } else {
            transport.send(
                &self.hosts[self.position + 1].clone(),
                Message::Residual { step, residual },
            )?;
            let from = self.hosts[last].clone();
            residual = self.expect_residual(transport, &from, step, batch.len())?;
        }
        let full = self.config.batch_size.is_none();
        let matrix = self
            .quantised
            .batch_matrix(&mut self.full_batch, full, batch)?;
        let product = self
            .guest_key
            .multiply(&PARAMS, &residual, &matrix)
            .map_err(FedError::he("multiplying the encrypted residual"))?;
        let (gradient, mask) = self
            .guest_key
            .mask_and_flood(&PARAMS, product, &self.guest_packing)
            .map_err(FedError::he("masking the host's gradient"))?;
        let scores = self
            .secret
            .encrypt(&share)
            .map_err(FedError::he("encrypting the host's residual share"))?;
        transport.send(
            &guest,
            Message::HostProducts {
                step,
                gradient,
                scores,
            },
        )?;
        let (decrypted_gradient, products) = match receive(transport, &guest)? {
            Message::GuestReply {
                step: s,
                gradient,
                products,
            } if s == step => (gradient, products),
            other => return Err(unexpected(&guest, "the guest's reply", &other)),
        };
        let product = mask
            .unmask(&decrypted_gradient)
            .map_err(FedError::he("unmasking the host's gradient"))?;
        let gradient = self.quantised.gradient(&product, batch.len());
        self.optimizer
            .step(&self.config, rate, &mut self.weights, &gradient, 0);
        check_weights(&self.job.party, epoch, &self.weights)?;
        let mut decrypted = self
            .secret
            .decrypt_masked(&products)
            .map_err(FedError::he("decrypting the guest's masked product"))?;
        let mut context = b"guest product ".to_vec();
        context.extend_from_slice(&step.to_le_bytes());
        self.masks.apply(&context, &mut decrypted);
        transport.send(
            &guest,
            Message::HostReply {
                step,
                products: decrypted,
            },
        )
    }

    fn expect_residual(
        &self,
        transport: &mut dyn Transport,
        from: &str,
        step: u64,
        rows: usize,
    ) -> Result<he::EncryptedVector, FedError> {
        match receive(transport, from)? {
            Message::Residual { step: s, residual } if s == step => {
                if residual.len() != rows {
                    return Err(FedError::protocol(from, "residual of the wrong length"));
                }
                Ok(residual)
            }
            other => Err(unexpected(from, "the encrypted residual", &other)),
        }
    }

    /// Secure aggregation of the partial scores of every training and validation row, and of
    /// the squared weight change of the epoch.
    fn send_scores(
        &self,
        transport: &mut dyn Transport,
        epoch: usize,
        start: &[f64],
    ) -> Result<(), FedError> {
        let width = self.job.table.features();
        let rows: Vec<usize> = self
            .split
            .train
            .iter()
            .chain(&self.split.validation)
            .copied()
            .collect();
        let change = squared_distance(start, &self.weights);
        let mut values = linear_scores(&self.standardised.values, width, &rows, &self.weights)
            .into_iter()
            .chain(std::iter::once(change))
            .map(encode_score)
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| FedError::Diverged {
                epoch,
                reason: format!(
                    "{}'s partial scores left the fixed-point range",
                    self.job.party
                ),
                last_good: None,
            })?;
        let mut context = b"epoch scores ".to_vec();
        context.extend_from_slice(&(epoch as u64).to_le_bytes());
        self.masks.apply(&context, &mut values);
        transport.send(
            &self.job.guest,
            Message::EpochScores {
                epoch: epoch as u64,
                masked: values,
            },
        )
    }
}
