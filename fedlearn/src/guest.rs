//! The guest: holds the labels and the intercept, orchestrates the job, and learns aggregate
//! losses per epoch and the final model's joint scores on the validation rows once.

use crate::checkpoint::{Checkpoint, GuestProgress};
use crate::config::{EarlyStopping, TrainConfig};
use crate::data::Table;
use crate::error::FedError;
use crate::masks::Split;
use crate::message::{Message, Proposal, Transport};
use crate::metrics::{evaluate, reliability};
use crate::model::{Calibration, ModelPart};
use crate::party::{job_nonce, Core, LOSS_RELEASE_BITS};
use crate::prep::Prep;
use crate::protocol::{
    decode_score, encode_fixed, finish_with_error, unexpected, Convergence, EpochReport, Event,
    FinalEvaluation, GuestOutcome, RevealedRows, StopReason, Stopped, LOSS_FRAC_BITS,
    SUM_FRAC_BITS,
};
use crate::session::{drive, Mailbox, Session};
use he::signed_residue;

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
    /// How the guest prepares its columns.
    pub prep: Prep,
    /// The guest's checkpoint to resume an interrupted job from (every host resumes from
    /// its checkpoint of the same epoch); `None` starts from the beginning.
    pub resume: Option<Checkpoint>,
}

/// Runs the guest's side of a training job to the end over a blocking transport (see
/// [`GuestSession`] for the state machine underneath).
pub fn run_guest(
    job: GuestJob,
    transport: &mut dyn Transport,
    events: &mut dyn FnMut(&Event),
) -> Result<GuestOutcome, Stopped> {
    let hosts = job.hosts.clone();
    let mut session = None;
    let result = GuestSession::new(job).and_then(|s| {
        let session = session.insert(s);
        drive(session, transport, events)?;
        session.outcome.take().ok_or_else(|| {
            FedError::protocol(&hosts.join(", "), "the session ended without an outcome")
        })
    });
    match result {
        Ok(outcome) => Ok(outcome),
        Err(error) => {
            let last_good = session.and_then(|s| s.last_good);
            Err(finish_with_error(transport, &hosts, error, last_good))
        }
    }
}

/// The slots of a host's loss report.
pub(crate) const REPORT_SLOTS: usize = 7;

/// The public bound of the loss vectors: |value| < 32 at 10 fraction bits.
pub(crate) const LOSS_BOUND: i128 = 1 << 15;

/// The loss vectors' largest |value|.
pub(crate) const LOSS_MAX: f64 = 32.0;

/// What the guest waits for.
enum ExpectGuest {
    /// Every host's keys.
    Keys,
    /// Every host's encrypted columns.
    Columns,
    /// Every host's product for the current step.
    Products,
    /// Every host's loss product of the epoch.
    LossProducts,
    /// Every host's loss report of the epoch (with the decrypted loss products summed).
    LossReports { cross: [u128; 2] },
    /// Every host's final scores.
    FinalScores,
    /// Nothing: the job is over.
    Done,
}

/// The guest's side of a job as a sans-IO state machine (see [`Session`]).
pub struct GuestSession {
    core: Core,
    labels: Vec<f64>,
    model_id: String,
    hosts: Vec<String>,
    nonce: [u8; 16],
    mailbox: Mailbox,
    state: ExpectGuest,
    history: Vec<EpochReport>,
    best_loss: f64,
    best_epoch: usize,
    since_best: usize,
    best_weights: Option<Vec<f64>>,
    stop: StopReason,
    last_good: Option<ModelPart>,
    outcome: Option<GuestOutcome>,
    /// Digest of the job's settings, kept in every checkpoint.
    settings: [u8; 32],
    /// The epoch the job resumes after, and whether training had ended with it.
    resumed: Option<(usize, bool)>,
}

impl GuestSession {
    /// Checks the job and queues the proposal and the guest's keys.
    pub fn new(job: GuestJob) -> Result<GuestSession, FedError> {
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
        let mut core = Core::new(&job.party, &job.table, &job.prep, job.config.clone(), true)?;
        let nonce = job_nonce()?;
        let proposal = Proposal {
            job: nonce,
            model_id: job.model_id.clone(),
            config: job.config.clone(),
            rows: rows as u64,
            hosts: job.hosts.clone(),
            features: core.data.table.features() as u32,
            resume: job.resume.as_ref().map(|c| c.epoch as u64),
        };
        if let Some(checkpoint) = &job.resume {
            core.restore(&proposal, checkpoint)?;
        }
        let mut session = GuestSession {
            core,
            labels,
            model_id: job.model_id,
            hosts: job.hosts,
            nonce,
            mailbox: Mailbox::default(),
            state: ExpectGuest::Keys,
            history: Vec::new(),
            best_loss: f64::INFINITY,
            best_epoch: 0,
            since_best: 0,
            best_weights: None,
            stop: StopReason::MaxEpochs,
            last_good: None,
            outcome: None,
            settings: proposal.settings_digest(),
            resumed: None,
        };
        if let Some(checkpoint) = job.resume {
            let progress = checkpoint.guest.ok_or_else(|| FedError::Resume {
                party: session.core.data.party.clone(),
                reason: "its checkpoint is a host's".into(),
            })?;
            session.history = progress.history;
            session.best_loss = progress.best_loss;
            session.best_epoch = progress.best_epoch;
            session.since_best = progress.since_best;
            session.stop = progress.stop;
            session.best_weights = checkpoint.best_weights;
            session.last_good = Some(session.core.model(&session.model_id, &session.core.weights));
            session.resumed = Some((checkpoint.epoch, checkpoint.last));
        }
        let keys = session.core.keys();
        for host in &session.hosts {
            session
                .mailbox
                .send(host, Message::Propose(Box::new(proposal.clone())));
        }
        for host in &session.hosts {
            session
                .mailbox
                .send(host, Message::Keys(Box::new(keys.clone())));
        }
        Ok(session)
    }

    /// The guest's result, once the session is done.
    pub fn outcome(&self) -> Option<&GuestOutcome> {
        self.outcome.as_ref()
    }

    /// Moves through every state whose messages have all arrived.
    fn advance(&mut self) -> Result<(), FedError> {
        loop {
            let moved = match self.state {
                ExpectGuest::Keys => match self.mailbox.take_from_all(&self.hosts) {
                    Some(messages) => {
                        let keys =
                            self.hosts
                                .iter()
                                .zip(messages)
                                .map(|(host, message)| match message {
                                    Message::Keys(keys) => Ok((host.clone(), *keys)),
                                    other => Err(unexpected(host, "the party's keys", &other)),
                                });
                        let keys = keys.collect::<Result<Vec<_>, _>>()?;
                        self.core.accept_keys(&self.nonce, keys)?;
                        self.state = ExpectGuest::Columns;
                        true
                    }
                    None => false,
                },
                ExpectGuest::Columns => {
                    if self.core.take_columns(&mut self.mailbox)? {
                        self.state = match self.resumed {
                            // Training had ended: the hosts reveal again what they revealed.
                            Some((_, true)) => ExpectGuest::FinalScores,
                            Some((epoch, false)) => {
                                self.core.start_epoch(epoch + 1);
                                ExpectGuest::Products
                            }
                            None => {
                                self.core.start_epoch(1);
                                ExpectGuest::Products
                            }
                        };
                        true
                    } else {
                        false
                    }
                }
                // The next step starts in `poll_transmit`, once what is queued (an epoch's
                // end, say) has gone out: peers then work while this party computes.
                ExpectGuest::Products if self.core.step_due() => false,
                ExpectGuest::Products => match self.mailbox.take_from_all(&self.hosts) {
                    Some(products) => {
                        if !self.core.end_step(products)? {
                            self.start_loss()?;
                            self.state = ExpectGuest::LossProducts;
                        }
                        true
                    }
                    None => false,
                },
                ExpectGuest::LossProducts => match self.mailbox.take_from_all(&self.hosts) {
                    Some(messages) => {
                        let mut cross = [0u128; 2];
                        for (host, message) in self.hosts.iter().zip(messages) {
                            let epoch = self.core.epoch;
                            let decrypted = self.core.decrypt_loss_product(host, epoch, message)?;
                            for (c, d) in cross.iter_mut().zip(decrypted) {
                                *c = c.wrapping_add(d);
                            }
                        }
                        self.state = ExpectGuest::LossReports { cross };
                        true
                    }
                    None => false,
                },
                ExpectGuest::LossReports { cross } => match self.mailbox.take_from_all(&self.hosts)
                {
                    Some(reports) => {
                        self.end_epoch(cross, reports)?;
                        true
                    }
                    None => false,
                },
                ExpectGuest::FinalScores => match self.mailbox.take_from_all(&self.hosts) {
                    Some(scores) => {
                        self.finish(scores)?;
                        self.state = ExpectGuest::Done;
                        true
                    }
                    None => false,
                },
                ExpectGuest::Done => false,
            };
            if !moved {
                return Ok(());
            }
        }
    }

    /// The epoch's losses, early stopping, and the next epoch or the end.
    fn end_epoch(&mut self, cross: [u128; 2], reports: Vec<Message>) -> Result<(), FedError> {
        let epoch = self.core.epoch;
        let config = self.core.config.clone();
        let (train_loss, validation_loss, host_change) = self.losses(cross, reports)?;
        let weight_change = (self.core.epoch_change() + host_change).max(0.0).sqrt();
        let loss = validation_loss.unwrap_or(train_loss);
        if !loss.is_finite() || !weight_change.is_finite() {
            return Err(FedError::Diverged {
                epoch,
                reason: format!("Taylor loss {loss}, weight change {weight_change}"),
            });
        }
        let (best, done) = match config.early_stopping {
            Some(EarlyStopping::Loss {
                patience,
                min_delta,
            }) => {
                let improved = loss < self.best_loss - min_delta;
                self.since_best = if improved { 0 } else { self.since_best + 1 };
                (
                    improved || self.best_weights.is_none(),
                    self.since_best >= patience,
                )
            }
            Some(EarlyStopping::WeightChange { tolerance }) => (true, weight_change < tolerance),
            None => (true, false),
        };
        if best {
            self.best_loss = self.best_loss.min(loss);
            self.best_epoch = epoch;
            self.best_weights = Some(self.core.weights.clone());
        }
        let last = done || epoch == config.max_epochs;
        if done && epoch < config.max_epochs {
            self.stop = StopReason::EarlyStopping { epoch };
        }
        for host in &self.hosts {
            self.mailbox.send(
                host,
                Message::EpochEnd {
                    epoch: epoch as u64,
                    best,
                    stop: last,
                },
            );
        }
        self.last_good = Some(self.core.model(&self.model_id, &self.core.weights));
        let report = EpochReport {
            epoch,
            train_loss,
            validation_loss,
            weight_change,
            learning_rate: self.core.rate(),
            best,
        };
        self.mailbox.emit(Event::Epoch(report.clone()));
        self.history.push(report);
        let progress = GuestProgress {
            history: self.history.clone(),
            best_loss: self.best_loss,
            best_epoch: self.best_epoch,
            since_best: self.since_best,
            stop: self.stop,
        };
        let checkpoint = self.core.checkpoint(
            self.settings,
            self.best_weights.clone(),
            last,
            Some(progress),
        );
        self.mailbox.emit(Event::Checkpoint(Box::new(checkpoint)));
        if last {
            self.state = ExpectGuest::FinalScores;
        } else {
            self.core.start_epoch(epoch + 1);
            self.state = ExpectGuest::Products;
        }
        Ok(())
    }

    /// The training and validation rows, and the guest's scores and residual on them.
    fn loss_rows(&self) -> (Vec<usize>, Vec<f64>, Vec<f64>) {
        let split = &self.core.data.split;
        let rows: Vec<usize> = split
            .train
            .iter()
            .chain(&split.validation)
            .copied()
            .collect();
        let z = self.core.scores_with(&self.core.weights, &rows);
        let residual = residual(&z, &rows, &self.labels);
        (rows, z, residual)
    }

    /// Starts the epoch's loss round: [[d_G]] on the training and validation rows to every
    /// host.
    fn start_loss(&mut self) -> Result<(), FedError> {
        let epoch = self.core.epoch;
        let (_, _, residual) = self.loss_rows();
        let encoded = encode_fixed(
            &self.core.data.party,
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
            self.mailbox.send(
                host,
                Message::LossVector {
                    epoch: epoch as u64,
                    values: encrypted.clone(),
                },
            );
        }
        Ok(())
    }

    /// The aggregate Taylor losses of the epoch on the training and validation rows, and the
    /// hosts' summed squared weight change. Per split s, with z = z_G + Z_H and Z_H = Σ_k z_k:
    /// n_s·(L_s − log 2) = Σ (½ − y)·z_G + ⅛ Σ z_G² + Σ d_G·Z_H + ⅛ Σ Z_H², where
    /// d_G = ¼·z_G + ½ − y. The guest computes its own terms, the hosts' products of [[d_G]]
    /// with their scores came to it released (`cross`, decrypted), and the hosts' squares and
    /// pairwise products arrive summed under pairwise masks in their reports.
    fn losses(
        &self,
        cross: [u128; 2],
        reports: Vec<Message>,
    ) -> Result<(f64, Option<f64>, f64), FedError> {
        let epoch = self.core.epoch;
        let mut report = [0u128; REPORT_SLOTS];
        for (host, message) in self.hosts.iter().zip(reports) {
            match message {
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
        let (rows, z, _) = self.loss_rows();
        let products = 2f64.powi(-2 * LOSS_FRAC_BITS as i32);
        let sums = 2f64.powi(-SUM_FRAC_BITS);
        let modulus = (1u128 << LOSS_RELEASE_BITS) - 1;
        let released = |v: u128| signed_residue(v & modulus, LOSS_RELEASE_BITS) as f64 * products;
        let n_train = self.core.data.split.train.len();
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
            // Fixed-point sums wrap modulo 2^64 (the low word of the 128-bit report).
            let squares = report[4 + s] as u64 as i64 as f64 * sums;
            Some(
                std::f64::consts::LN_2 + (own + cross + 0.125 * (squares + 2.0 * pairs)) / n as f64,
            )
        };
        let train = mean(0..n_train, 0).unwrap_or(f64::NAN);
        let validation = mean(n_train..rows.len(), 1);
        let host_change = report[6] as u64 as i64 as f64 * sums;
        Ok((train, validation, host_change))
    }

    /// The job's one reveal: the final model's joint scores on the validation rows (the
    /// training rows without a validation split), summed over the hosts under pairwise masks;
    /// then the outcome.
    fn finish(&mut self, scores: Vec<Message>) -> Result<(), FedError> {
        let weights = self
            .best_weights
            .clone()
            .unwrap_or_else(|| self.core.weights.clone());
        let split = &self.core.data.split;
        let (which, rows) = if split.validation.is_empty() {
            (RevealedRows::Training, &split.train)
        } else {
            (RevealedRows::Validation, &split.validation)
        };
        let mut total = vec![0u64; rows.len()];
        for (host, message) in self.hosts.iter().zip(scores) {
            match message {
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
        let own = self.core.scores_with(&weights, rows);
        let joint: Vec<f64> = own
            .iter()
            .zip(&total)
            .map(|(z, &h)| z + decode_score(h))
            .collect();
        let labels: Vec<f64> = rows.iter().map(|&r| self.labels[r]).collect();
        let mut model = self.core.model(&self.model_id, &weights);
        model.calibration = Calibration::fit(&joint, &labels);
        let model_calibration = model.calibration;
        let probabilities: Vec<f64> = joint.iter().map(|&z| model.probability(z)).collect();
        let metrics = evaluate(&probabilities, &labels)?;
        let loss_rows = match which {
            RevealedRows::Validation => &self.core.data.split.validation,
            RevealedRows::Training => &self.core.data.split.train,
        };
        let base_rate =
            loss_rows.iter().map(|&r| self.labels[r]).sum::<f64>() / loss_rows.len().max(1) as f64;
        self.outcome = Some(GuestOutcome {
            model,
            convergence: Convergence::judge(&self.history, base_rate, self.stop),
            history: std::mem::take(&mut self.history),
            best_epoch: self.best_epoch,
            stop: self.stop,
            feature_frac_bits: self.core.data.quantised.frac_bits,
            share_frac_bits: self.core.share_bits,
            evaluation: FinalEvaluation {
                rows: which,
                count: rows.len(),
                metrics,
                calibration: model_calibration,
                reliability: reliability(&probabilities, &labels, 10),
                probabilities,
                labels,
            },
        });
        Ok(())
    }
}

impl Session for GuestSession {
    fn handle(&mut self, from: &str, message: Message) -> Result<(), FedError> {
        if !self.hosts.iter().any(|h| h == from) {
            return Err(FedError::protocol(from, "not a party of the job"));
        }
        self.mailbox.deliver(from, message)?;
        self.advance()
    }

    fn poll_transmit(&mut self) -> Result<Option<(String, Message)>, FedError> {
        let labels = &self.labels;
        let share = |core: &Core, rows: &[usize]| {
            residual(&core.scores_with(&core.weights, rows), rows, labels)
        };
        if self.core.before_transmit(&mut self.mailbox, share)? {
            self.advance()?;
        }
        Ok(self.mailbox.next_transmit())
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.mailbox.next_event()
    }

    fn awaiting(&self) -> Option<&str> {
        match self.state {
            ExpectGuest::Columns => self.core.awaiting_columns(&self.mailbox),
            ExpectGuest::Done => None,
            _ => self.mailbox.first_missing(&self.hosts),
        }
    }
}

/// The guest's share of the first-order residual, 0.25·z_G + 0.5 − y, on `rows` with scores z.
fn residual(z: &[f64], rows: &[usize], labels: &[f64]) -> Vec<f64> {
    z.iter()
        .zip(rows)
        .map(|(z, &r)| 0.25 * z + 0.5 - labels[r])
        .collect()
}
