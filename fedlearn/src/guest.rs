//! The guest: holds the labels and the intercept, orchestrates the job.

use he::{Masks, PackingKey, PreparedMatrix, PublicKey, SecretKey};

use crate::config::{EarlyStopping, OptimizerState, TrainConfig};
use crate::data::Table;
use crate::error::FedError;
use crate::masks::{random_bytes, Split};
use crate::message::{Message, Proposal, Transport};
use crate::metrics::{evaluate, Metrics};
use crate::model::{ModelPart, Standardised};
use crate::protocol::{
    check_weights, decode_score, encode_share, finish_with_error, linear_scores, packing_levels,
    receive, squared_distance, unexpected, EpochReport, Event, GuestOutcome, Quantised, StopReason,
    PARAMS,
};

/// Everything the guest brings to a job. `table` is already aligned (PSI order).
pub struct GuestJob {
    /// The guest's party name.
    pub party: String,
    /// Id of the model to train.
    pub model_id: String,
    /// Aligned rows with labels.
    pub table: Table,
    /// Host party names; the encrypted residual visits them in this order.
    pub hosts: Vec<String>,
    /// Training settings.
    pub config: TrainConfig,
}

/// Runs the guest's side of a training job to the end.
pub fn run_guest(
    job: GuestJob,
    transport: &mut dyn Transport,
    events: &mut dyn FnMut(&Event),
) -> Result<GuestOutcome, FedError> {
    let hosts = job.hosts.clone();
    let mut last_good = None;
    match train(job, transport, events, &mut last_good) {
        Ok(outcome) => Ok(outcome),
        Err(error) => Err(finish_with_error(transport, &hosts, error, last_good)),
    }
}

struct Guest {
    job: GuestJob,
    labels: Vec<f64>,
    split: Split,
    standardised: Standardised,
    quantised: Quantised,
    secret: SecretKey,
    /// Each host's public and packing keys.
    host_keys: Vec<(PublicKey, PackingKey)>,
    /// The guest's weights, intercept last.
    weights: Vec<f64>,
    optimizer: OptimizerState,
    full_batch: Option<PreparedMatrix>,
    step: u64,
}

fn train(
    job: GuestJob,
    transport: &mut dyn Transport,
    events: &mut dyn FnMut(&Event),
    last_good: &mut Option<ModelPart>,
) -> Result<GuestOutcome, FedError> {
    job.config.validate()?;
    if job.hosts.is_empty() {
        return Err(FedError::config("hosts", "a job needs at least one host"));
    }
    let labels = job
        .table
        .labels()
        .ok_or_else(|| FedError::config("labels", "the guest's table has no label column"))?
        .to_vec();
    let rows = job.table.rows();
    let split = Split::new(rows, job.config.seed, job.config.validation_fraction);
    let train_labels: Vec<f64> = split.train.iter().map(|&r| labels[r]).collect();
    if let Some(class) = [0.0, 1.0].into_iter().find(|c| !train_labels.contains(c)) {
        return Err(FedError::SingleClass {
            class: u8::from(class == 0.0),
        });
    }
    let standardised = Standardised::fit(&job.party, &job.table, &split.train)?;
    let width = job.table.features();
    let quantised = Quantised::new(&standardised.values, width, &split.train, true);
    let (secret, public) = SecretKey::generate(&PARAMS);
    let mut job_nonce = [0u8; 16];
    random_bytes(&mut job_nonce)?;
    for host in &job.hosts {
        transport.send(
            host,
            Message::Propose(Box::new(Proposal {
                job: job_nonce,
                model_id: job.model_id.clone(),
                config: job.config.clone(),
                rows: rows as u64,
                hosts: job.hosts.clone(),
                features: width as u32,
                guest_key: public.clone(),
            })),
        )?;
    }
    let mut host_keys = Vec::with_capacity(job.hosts.len());
    let mut host_widths = Vec::with_capacity(job.hosts.len());
    for host in &job.hosts {
        match receive(transport, host)? {
            Message::Accept(accept) => {
                if accept.rows != rows as u64 {
                    return Err(FedError::RowCount {
                        party: host.clone(),
                        expected: rows,
                        got: accept.rows as usize,
                    });
                }
                host_widths.push(accept.features as usize);
                host_keys.push((accept.key, accept.packing));
            }
            other => return Err(unexpected(host, "accept", &other)),
        }
    }
    // Enough packing levels for the widest host's gradient in one ciphertext.
    let widest = host_widths.iter().copied().max().unwrap_or(1);
    let packing = secret
        .packing_key(packing_levels(widest))
        .map_err(FedError::he("making the packing key"))?;
    for host in &job.hosts {
        transport.send(host, Message::PackingKey(Box::new(packing.clone())))?;
    }
    let mut guest = Guest {
        labels,
        split,
        standardised,
        quantised,
        secret,
        host_keys,
        weights: vec![0.0; width + 1],
        optimizer: OptimizerState::new(width + 1),
        full_batch: None,
        step: 0,
        job,
    };
    guest.epochs(transport, events, last_good)
}

impl Guest {
    fn model(&self) -> ModelPart {
        let width = self.job.table.features();
        self.standardised.model(
            &self.job.model_id,
            &self.job.party,
            &self.job.table,
            &self.weights[..width],
            Some(self.weights[width]),
        )
    }

    fn epochs(
        &mut self,
        transport: &mut dyn Transport,
        events: &mut dyn FnMut(&Event),
        last_good: &mut Option<ModelPart>,
    ) -> Result<GuestOutcome, FedError> {
        let config = self.job.config.clone();
        let mut history = Vec::new();
        let (mut best_loss, mut best_epoch, mut since_best) = (f64::INFINITY, 0, 0);
        let mut best_model = None;
        let mut stop = StopReason::MaxEpochs;
        for epoch in 1..=config.max_epochs {
            let start = self.weights.clone();
            let mut rate = config.learning_rate;
            for batch in self.split.batches(config.seed, epoch, config.batch_size) {
                rate = config.rate(self.step, epoch);
                self.update(transport, epoch, &batch, rate)?;
                self.step += 1;
            }
            let own_change = squared_distance(&start, &self.weights);
            let (train, validation, host_change) = self.evaluate(transport, epoch)?;
            let weight_change = (own_change + host_change).max(0.0).sqrt();
            let loss = validation.map_or(train.log_loss, |v| v.log_loss);
            if !loss.is_finite() || !weight_change.is_finite() {
                return Err(FedError::Diverged {
                    epoch,
                    reason: format!("log-loss {loss}, weight change {weight_change}"),
                    last_good: None,
                });
            }
            let (best, done) = match config.early_stopping {
                Some(EarlyStopping::Loss {
                    patience,
                    min_delta,
                }) => {
                    let improved = loss < best_loss - min_delta;
                    since_best = if improved { 0 } else { since_best + 1 };
                    (improved || best_model.is_none(), since_best >= patience)
                }
                Some(EarlyStopping::WeightChange { tolerance }) => {
                    (true, weight_change < tolerance)
                }
                None => (true, false),
            };
            let model = self.model();
            if best {
                best_loss = best_loss.min(loss);
                best_epoch = epoch;
                best_model = Some(model.clone());
            }
            let last = done || epoch == config.max_epochs;
            if done && epoch < config.max_epochs {
                stop = StopReason::EarlyStopping { epoch };
            }
            for host in &self.job.hosts {
                transport.send(
                    host,
                    Message::EpochEnd {
                        epoch: epoch as u64,
                        best,
                        stop: last,
                    },
                )?;
            }
            *last_good = Some(model);
            let report = EpochReport {
                epoch,
                train,
                validation,
                weight_change,
                learning_rate: rate,
                best,
            };
            events(&Event::Epoch(report.clone()));
            history.push(report);
            if last {
                break;
            }
        }
        Ok(GuestOutcome {
            model: best_model.unwrap_or_else(|| self.model()),
            history,
            best_epoch,
            stop,
            feature_frac_bits: self.quantised.frac_bits,
        })
    }

    /// One mini-batch update of every party's weights.
    fn update(
        &mut self,
        transport: &mut dyn Transport,
        epoch: usize,
        batch: &[usize],
        rate: f64,
    ) -> Result<(), FedError> {
        let width = self.job.table.features();
        let step = self.step;
        let z = linear_scores(
            &self.standardised.values,
            width,
            batch,
            &self.weights[..width],
        );
        let share: Vec<f64> = z
            .iter()
            .zip(batch)
            .map(|(z, &r)| 0.25 * (z + self.weights[width]) + 0.5 - self.labels[r])
            .collect();
        let share = encode_share(&self.job.party, epoch, &share)?;
        let encrypted = self
            .secret
            .encrypt(&share)
            .map_err(FedError::he("encrypting the residual"))?;
        let hosts = &self.job.hosts;
        transport.send(
            &hosts[0],
            Message::Residual {
                step,
                residual: encrypted,
            },
        )?;
        let full = self.job.config.batch_size.is_none();
        let matrix = self
            .quantised
            .batch_matrix(&mut self.full_batch, full, batch)?;
        // All hosts' products first: their results are summed, so they are packed alike
        // under a common bound (the bound of the sum).
        let mut decrypted = Vec::with_capacity(hosts.len());
        let mut products = Vec::with_capacity(hosts.len());
        for (host, (key, _)) in hosts.iter().zip(&self.host_keys) {
            let (gradient, scores) = match receive(transport, host)? {
                Message::HostProducts {
                    step: s,
                    gradient,
                    scores,
                } if s == step => (gradient, scores),
                other => return Err(unexpected(host, "host products", &other)),
            };
            decrypted.push(
                self.secret
                    .decrypt_masked(&gradient)
                    .map_err(FedError::he("decrypting a host's masked gradient"))?,
            );
            products.push(
                key.multiply(&PARAMS, &scores, &matrix)
                    .map_err(FedError::he("multiplying a host's encrypted scores"))?,
            );
        }
        let bound = products
            .iter()
            .map(|p| p.bound())
            .fold(0i64, |a, b| a.saturating_add(b));
        let mut masks = Vec::with_capacity(hosts.len());
        for (((host, (key, packing)), mut product), gradient) in hosts
            .iter()
            .zip(&self.host_keys)
            .zip(products)
            .zip(decrypted)
        {
            product.widen_bound(bound);
            let (masked, mask) = key
                .mask_and_flood(&PARAMS, product, packing)
                .map_err(FedError::he("masking the guest's product"))?;
            transport.send(
                host,
                Message::GuestReply {
                    step,
                    gradient,
                    products: masked,
                },
            )?;
            masks.push(mask);
        }
        let columns = width + 1;
        let mut total = vec![0u64; columns];
        for host in hosts {
            match receive(transport, host)? {
                Message::HostReply { step: s, products } if s == step => {
                    if products.len() != columns {
                        return Err(FedError::protocol(
                            host,
                            format!("{} products, expected {columns}", products.len()),
                        ));
                    }
                    for (t, p) in total.iter_mut().zip(products) {
                        *t = t.wrapping_add(p);
                    }
                }
                other => return Err(unexpected(host, "host reply", &other)),
            }
        }
        let from_hosts = Masks::sum(&masks)
            .and_then(|m| m.unmask(&total))
            .map_err(FedError::he("unmasking the hosts' products"))?;
        // X̃_G^T d̃ = X̃_G^T ã (local) + Σ_k X̃_G^T q̃_k (from the hosts, summed).
        let product: Vec<i64> = (0..columns)
            .map(|c| {
                let own: i64 = batch
                    .iter()
                    .zip(&share)
                    .map(|(&r, &a)| self.quantised.at(r, c) * a)
                    .sum();
                own + from_hosts[c]
            })
            .collect();
        let gradient = self.quantised.gradient(&product, batch.len());
        self.optimizer
            .step(&self.job.config, rate, &mut self.weights, &gradient, 1);
        check_weights(&self.job.party, epoch, &self.weights)?;
        Ok(())
    }

    /// Joint scores through secure aggregation, metrics, and the hosts' summed weight change.
    fn evaluate(
        &mut self,
        transport: &mut dyn Transport,
        epoch: usize,
    ) -> Result<(Metrics, Option<Metrics>, f64), FedError> {
        let (train, validation) = (self.split.train.len(), self.split.validation.len());
        let expected = train + validation + 1;
        let mut total = vec![0u64; expected];
        for host in &self.job.hosts {
            match receive(transport, host)? {
                Message::EpochScores { epoch: e, masked } if e == epoch as u64 => {
                    if masked.len() != expected {
                        return Err(FedError::protocol(
                            host,
                            format!("{} scores, expected {expected}", masked.len()),
                        ));
                    }
                    for (t, m) in total.iter_mut().zip(masked) {
                        *t = t.wrapping_add(m);
                    }
                }
                other => return Err(unexpected(host, "epoch scores", &other)),
            }
        }
        let width = self.job.table.features();
        let intercept = self.weights[width];
        let metrics = |rows: &[usize], host_sums: &[u64]| -> Result<Metrics, FedError> {
            let own = linear_scores(
                &self.standardised.values,
                width,
                rows,
                &self.weights[..width],
            );
            let probabilities: Vec<f64> = own
                .iter()
                .zip(host_sums)
                .map(|(z, &h)| crate::reference::sigmoid(z + intercept + decode_score(h)))
                .collect();
            let labels: Vec<f64> = rows.iter().map(|&r| self.labels[r]).collect();
            evaluate(&probabilities, &labels).map_err(|e| FedError::Diverged {
                epoch,
                reason: format!("metrics: {e}"),
                last_good: None,
            })
        };
        let train_metrics = metrics(&self.split.train, &total[..train])?;
        let validation_metrics = if validation > 0 {
            Some(metrics(
                &self.split.validation,
                &total[train..train + validation],
            )?)
        } else {
            None
        };
        Ok((
            train_metrics,
            validation_metrics,
            decode_score(total[expected - 1]),
        ))
    }
}
