//! The guest: holds the labels and the intercept, orchestrates the job, and learns aggregate
//! losses per epoch and the final model's joint scores on the validation rows once.

use crate::config::{EarlyStopping, TrainConfig};
use crate::data::Table;
use crate::error::FedError;
use crate::masks::Split;
use crate::message::{Message, Proposal, Transport};
use crate::metrics::evaluate;
use crate::model::ModelPart;
use crate::party::{job_nonce, signed, Core, LOSS_RELEASE_BITS};
use crate::protocol::{
    decode_score, encode_fixed, finish_with_error, receive, squared_distance, unexpected,
    EpochReport, Event, FinalEvaluation, GuestOutcome, RevealedRows, StopReason, LOSS_FRAC_BITS,
    SUM_FRAC_BITS,
};

/// Everything the guest brings to a job. `table` is already aligned (PSI order).
pub struct GuestJob {
    /// The guest's party name.
    pub party: String,
    /// Id of the model to train.
    pub model_id: String,
    /// Aligned rows with labels.
    pub table: Table,
    /// Host party names, in job order.
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

/// Slots of a host's loss report.
pub(crate) const REPORT_SLOTS: usize = 7;

/// The public bound of the loss vectors: |value| < 32 at 10 fraction bits.
pub(crate) const LOSS_BOUND: i64 = 1 << 15;

/// The loss vectors' largest |value|.
pub(crate) const LOSS_MAX: f64 = 32.0;

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
    // Both classes on the training rows, and on the validation rows if there are any: the
    // final reveal's AUC and KS need them, and finding out after training would lose the job.
    let validation = (!split.validation.is_empty()).then_some(&split.validation);
    for rows in std::iter::once(&split.train).chain(validation) {
        if let Some(class) = [0.0, 1.0]
            .into_iter()
            .find(|c| !rows.iter().any(|&r| labels[r] == *c))
        {
            return Err(FedError::SingleClass {
                class: u8::from(class == 0.0),
            });
        }
    }
    let nonce = job_nonce()?;
    let features = job.table.features();
    for host in &job.hosts {
        transport.send(
            host,
            Message::Propose(Box::new(Proposal {
                job: nonce,
                model_id: job.model_id.clone(),
                config: job.config.clone(),
                rows: rows as u64,
                hosts: job.hosts.clone(),
                features: features as u32,
            })),
        )?;
    }
    let mut core = Core::new(&job.party, job.table, job.config.clone(), true)?;
    core.send_keys(transport, &job.hosts)?;
    core.receive_keys(transport, &nonce, &job.hosts)?;
    core.send_columns(transport)?;
    core.receive_columns(transport)?;
    let mut guest = Guest {
        core,
        labels,
        model_id: job.model_id,
        hosts: job.hosts,
    };
    guest.epochs(transport, events, last_good)
}

struct Guest {
    core: Core,
    labels: Vec<f64>,
    model_id: String,
    hosts: Vec<String>,
}

impl Guest {
    fn epochs(
        &mut self,
        transport: &mut dyn Transport,
        events: &mut dyn FnMut(&Event),
        last_good: &mut Option<ModelPart>,
    ) -> Result<GuestOutcome, FedError> {
        let config = self.core.config.clone();
        let mut history = Vec::new();
        let (mut best_loss, mut best_epoch, mut since_best) = (f64::INFINITY, 0, 0);
        let mut best_weights: Option<Vec<f64>> = None;
        let mut stop = StopReason::MaxEpochs;
        for epoch in 1..=config.max_epochs {
            let start = self.core.weights.clone();
            let mut rate = config.learning_rate;
            for batch in Split::epoch_order(config.seed, epoch, self.core.batches.len()) {
                rate = config.rate(self.core.step, epoch);
                let rows = &self.core.batches[batch];
                let share: Vec<f64> = self
                    .core
                    .scores_with(&self.core.weights, rows)
                    .iter()
                    .zip(rows)
                    .map(|(z, &r)| 0.25 * z + 0.5 - self.labels[r])
                    .collect();
                self.core.step(transport, epoch, batch, &share, rate)?;
            }
            let own_change = squared_distance(&start, &self.core.weights);
            let (train_loss, validation_loss, host_change) = self.loss(transport, epoch)?;
            let weight_change = (own_change + host_change).max(0.0).sqrt();
            let loss = validation_loss.unwrap_or(train_loss);
            if !loss.is_finite() || !weight_change.is_finite() {
                return Err(FedError::Diverged {
                    epoch,
                    reason: format!("Taylor loss {loss}, weight change {weight_change}"),
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
                    (improved || best_weights.is_none(), since_best >= patience)
                }
                Some(EarlyStopping::WeightChange { tolerance }) => {
                    (true, weight_change < tolerance)
                }
                None => (true, false),
            };
            if best {
                best_loss = best_loss.min(loss);
                best_epoch = epoch;
                best_weights = Some(self.core.weights.clone());
            }
            let last = done || epoch == config.max_epochs;
            if done && epoch < config.max_epochs {
                stop = StopReason::EarlyStopping { epoch };
            }
            for host in &self.hosts {
                transport.send(
                    host,
                    Message::EpochEnd {
                        epoch: epoch as u64,
                        best,
                        stop: last,
                    },
                )?;
            }
            *last_good = Some(self.core.model(&self.model_id, &self.core.weights));
            let report = EpochReport {
                epoch,
                train_loss,
                validation_loss,
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
        let weights = best_weights.unwrap_or_else(|| self.core.weights.clone());
        let evaluation = self.final_evaluation(transport, &weights)?;
        Ok(GuestOutcome {
            model: self.core.model(&self.model_id, &weights),
            history,
            best_epoch,
            stop,
            feature_frac_bits: self.core.quantised.frac_bits,
            share_frac_bits: self.core.share_bits,
            evaluation,
        })
    }

    /// The aggregate Taylor losses of the epoch on the training and validation rows, and the
    /// hosts' summed squared weight change. Per split s, with z = z_G + Z_H and Z_H = Σ_k z_k:
    /// n_s·(L_s − log 2) = Σ (½ − y)·z_G + ⅛ Σ z_G² + Σ d_G·Z_H + ⅛ Σ Z_H², where
    /// d_G = ¼·z_G + ½ − y. The guest computes its own terms, the hosts' products of [[d_G]]
    /// with their scores come to it released, and the hosts' squares and pairwise products
    /// arrive summed under pairwise masks.
    fn loss(
        &self,
        transport: &mut dyn Transport,
        epoch: usize,
    ) -> Result<(f64, Option<f64>, f64), FedError> {
        let split = &self.core.split;
        let rows: Vec<usize> = split
            .train
            .iter()
            .chain(&split.validation)
            .copied()
            .collect();
        let z = self.core.scores_with(&self.core.weights, &rows);
        let residual: Vec<f64> = z
            .iter()
            .zip(&rows)
            .map(|(z, &r)| 0.25 * z + 0.5 - self.labels[r])
            .collect();
        let encoded = encode_fixed(
            &self.core.party,
            epoch,
            "residual share",
            &residual,
            LOSS_FRAC_BITS,
            LOSS_MAX,
        )?;
        let encrypted = self
            .core
            .secret
            .encrypt(&encoded, LOSS_BOUND)
            .map_err(FedError::he("encrypting the loss vector"))?;
        for host in &self.hosts {
            transport.send(
                host,
                Message::LossVector {
                    epoch: epoch as u64,
                    values: encrypted.clone(),
                },
            )?;
        }
        let mut cross = [0u64; 2];
        let mut report = [0u64; REPORT_SLOTS];
        for host in &self.hosts {
            let decrypted = self.core.receive_loss_product(transport, host, epoch)?;
            for (c, d) in cross.iter_mut().zip(decrypted) {
                *c = c.wrapping_add(d);
            }
        }
        for host in &self.hosts {
            match receive(transport, host)? {
                Message::LossReport { epoch: e, masked } if e == epoch as u64 => {
                    if masked.len() != REPORT_SLOTS {
                        return Err(FedError::protocol(
                            host,
                            format!("{} loss terms, expected {REPORT_SLOTS}", masked.len()),
                        ));
                    }
                    for (t, m) in report.iter_mut().zip(masked) {
                        *t = t.wrapping_add(m);
                    }
                }
                other => return Err(unexpected(host, "a loss report", &other)),
            }
        }
        let products = 2f64.powi(-2 * LOSS_FRAC_BITS as i32);
        let sums = 2f64.powi(-SUM_FRAC_BITS);
        let modulus = (1u64 << LOSS_RELEASE_BITS) - 1;
        let released = |v: u64| signed(v & modulus, LOSS_RELEASE_BITS) as f64 * products;
        let n_train = split.train.len();
        let mean = |range: std::ops::Range<usize>, s: usize| -> Option<f64> {
            let n = range.len();
            if n == 0 {
                return None;
            }
            let own: f64 = range
                .map(|i| {
                    let y = self.labels[rows[i]];
                    (0.5 - y) * z[i] + 0.125 * z[i] * z[i]
                })
                .sum();
            let cross = released(cross[s].wrapping_add(report[s]));
            let pairs = released(report[2 + s]);
            let squares = report[4 + s] as i64 as f64 * sums;
            Some(
                std::f64::consts::LN_2 + (own + cross + 0.125 * (squares + 2.0 * pairs)) / n as f64,
            )
        };
        let train = mean(0..n_train, 0).unwrap_or(f64::NAN);
        let validation = mean(n_train..rows.len(), 1);
        let host_change = report[6] as i64 as f64 * sums;
        Ok((train, validation, host_change))
    }

    /// The job's one reveal: the final model's joint scores on the validation rows (the
    /// training rows without a validation split), summed over the hosts under pairwise masks.
    fn final_evaluation(
        &self,
        transport: &mut dyn Transport,
        weights: &[f64],
    ) -> Result<FinalEvaluation, FedError> {
        let split = &self.core.split;
        let (which, rows) = if split.validation.is_empty() {
            (RevealedRows::Training, &split.train)
        } else {
            (RevealedRows::Validation, &split.validation)
        };
        let mut total = vec![0u64; rows.len()];
        for host in &self.hosts {
            match receive(transport, host)? {
                Message::FinalScores { masked } => {
                    if masked.len() != rows.len() {
                        return Err(FedError::protocol(
                            host,
                            format!("{} final scores, expected {}", masked.len(), rows.len()),
                        ));
                    }
                    for (t, m) in total.iter_mut().zip(masked) {
                        *t = t.wrapping_add(m);
                    }
                }
                other => return Err(unexpected(host, "the final scores", &other)),
            }
        }
        let own = self.core.scores_with(weights, rows);
        let probabilities: Vec<f64> = own
            .iter()
            .zip(&total)
            .map(|(z, &h)| crate::reference::sigmoid(z + decode_score(h)))
            .collect();
        let labels: Vec<f64> = rows.iter().map(|&r| self.labels[r]).collect();
        let metrics = evaluate(&probabilities, &labels)?;
        Ok(FinalEvaluation {
            rows: which,
            count: rows.len(),
            metrics,
        })
    }
}
