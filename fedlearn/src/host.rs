//! A host: holds features only; learns its own gradient and weights, and reveals the final
//! model's partial scores once, summed with the other hosts' under pairwise masks.

use he::PreparedMatrix;
use sha2::{Digest, Sha256};

use crate::checkpoint::Checkpoint;
use crate::data::Table;
use crate::error::FedError;
use crate::guest::{LOSS_BOUND, LOSS_MAX, REPORT_SLOTS};
use crate::message::{Message, Proposal, Transport};
use crate::model::ModelPart;
use crate::party::{Core, CHECK_COLUMNS};
use crate::prep::Prep;
use crate::protocol::{
    encode_fixed, encode_score, finish_with_error, receive, unexpected, Event, HostOutcome,
    Stopped, LOSS_FRAC_BITS, PARAMS, SUM_FRAC_BITS,
};
use crate::session::{drive, Mailbox, Session};

/// Everything a host brings to a job. `table` is already aligned (PSI order).
pub struct HostJob {
    /// The host's party name.
    pub party: String,
    /// The guest's party name.
    pub guest: String,
    /// Aligned rows (no labels).
    pub table: Table,
    /// How the host prepares its columns.
    pub prep: Prep,
    /// The host's checkpoints of an interrupted job (at most the last two): the proposal
    /// names the epoch to resume after, which must be among them.
    pub checkpoints: Vec<Checkpoint>,
}

/// Waits for the guest's proposal; the caller decides (by its policy) whether to run it.
pub fn receive_proposal(transport: &mut dyn Transport, guest: &str) -> Result<Proposal, FedError> {
    match receive(transport, guest)? {
        Message::Propose(proposal) => Ok(*proposal),
        other => Err(unexpected(guest, "a job proposal", &other)),
    }
}

/// Runs the host's side of a job the guest proposed, to the end, over a blocking transport
/// (see [`HostSession`] for the state machine underneath).
pub fn run_host(
    job: HostJob,
    proposal: Proposal,
    transport: &mut dyn Transport,
    events: &mut dyn FnMut(&Event),
) -> Result<HostOutcome, Stopped> {
    let mut peers: Vec<String> = vec![job.guest.clone()];
    peers.extend(proposal.hosts.iter().filter(|h| **h != job.party).cloned());
    let mut session = None;
    let result = HostSession::new(job, proposal).and_then(|s| {
        let session = session.insert(s);
        drive(session, transport, events)?;
        session
            .outcome
            .take()
            .ok_or_else(|| FedError::protocol(&peers[0], "the session ended without an outcome"))
    });
    match result {
        Ok(outcome) => Ok(outcome),
        Err(error) => {
            let last_good = session.and_then(|s| s.last_good);
            Err(finish_with_error(transport, &peers, error, last_good))
        }
    }
}

/// What a host waits for.
enum ExpectHost {
    /// Every other party's keys.
    Keys,
    /// Every other party's encrypted columns.
    Columns,
    /// Every other party's product for the current step.
    Products,
    /// The other hosts' digests of what the guest broadcast in `round` (0: the set-up; else
    /// the epoch, with the loss vectors waiting to be multiplied).
    Digests {
        round: u64,
        hash: [u8; 32],
        vectors: Option<Vec<Message>>,
    },
    /// The loss vectors of the guest and of the hosts before this one.
    LossVectors,
    /// The loss products of the hosts after this one (with this host's report so far).
    LaterLossProducts { report: [u128; REPORT_SLOTS] },
    /// The guest's verdict on the epoch.
    EpochEnd,
    /// Nothing: the job is over.
    Done,
}

/// A host's side of a job as a sans-IO state machine (see [`Session`]).
pub struct HostSession {
    core: Core,
    guest: String,
    model_id: String,
    hosts: Vec<String>,
    position: usize,
    nonce: [u8; 16],
    /// The guest's feature count, from the proposal.
    guest_features: usize,
    /// The guest, then the other hosts in job order.
    peers: Vec<String>,
    /// SHA-256 over what the guest broadcast at set-up: its proposal, keys and columns.
    setup_digest: Sha256,
    mailbox: Mailbox,
    state: ExpectHost,
    best_weights: Option<Vec<f64>>,
    epochs: usize,
    last_good: Option<ModelPart>,
    outcome: Option<HostOutcome>,
    /// Digest of the job's settings, kept in every checkpoint.
    settings: [u8; 32],
    /// The epoch the job resumes after, and whether training had ended with it.
    resumed: Option<(usize, bool)>,
}

impl HostSession {
    /// Checks the proposal against the host's table and queues the host's keys.
    pub fn new(job: HostJob, proposal: Proposal) -> Result<HostSession, FedError> {
        proposal.config.validate()?;
        let position = proposal
            .hosts
            .iter()
            .position(|h| *h == job.party)
            .ok_or_else(|| {
                FedError::protocol(
                    &job.guest,
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
        let mut peers: Vec<String> = vec![job.guest.clone()];
        peers.extend(proposal.hosts.iter().filter(|h| **h != job.party).cloned());
        let mut setup_digest = Sha256::new();
        setup_digest.update(Message::Propose(Box::new(proposal.clone())).to_bytes());
        let mut core = Core::new(
            &job.party,
            &job.table,
            &job.prep,
            proposal.config.clone(),
            false,
        )?;
        let mut resumed = None;
        let mut best_weights = None;
        // The final reveal is made once: after it, the job resumes only to make it again,
        // with the same weights (an earlier epoch would reveal other scores).
        if let Some(revealed) = job.checkpoints.iter().find(|c| c.last) {
            if proposal.resume != Some(revealed.epoch as u64) {
                return Err(FedError::Resume {
                    party: job.party.clone(),
                    reason: format!(
                        "it revealed the final scores after epoch {} already",
                        revealed.epoch
                    ),
                });
            }
        }
        if let Some(epoch) = proposal.resume {
            let checkpoint = job
                .checkpoints
                .into_iter()
                .find(|c| c.epoch as u64 == epoch)
                .ok_or_else(|| FedError::Resume {
                    party: job.party.clone(),
                    reason: format!("it holds no checkpoint of epoch {epoch}"),
                })?;
            core.restore(&proposal, &checkpoint)?;
            best_weights = checkpoint.best_weights;
            resumed = Some((checkpoint.epoch, checkpoint.last));
        }
        let mut mailbox = Mailbox::default();
        let keys = core.keys();
        for peer in &peers {
            mailbox.send(peer, Message::Keys(Box::new(keys.clone())));
        }
        let last_good = resumed.map(|_| core.model(&proposal.model_id, &core.weights));
        Ok(HostSession {
            settings: proposal.settings_digest(),
            resumed,
            epochs: resumed.map_or(0, |(epoch, _)| epoch),
            last_good,
            core,
            guest: job.guest,
            model_id: proposal.model_id,
            hosts: proposal.hosts,
            position,
            nonce: proposal.job,
            guest_features: proposal.features as usize,
            peers,
            setup_digest,
            mailbox,
            state: ExpectHost::Keys,
            best_weights,
            outcome: None,
        })
    }

    /// The host's result, once the session is done.
    pub fn outcome(&self) -> Option<&HostOutcome> {
        self.outcome.as_ref()
    }

    /// The parties whose loss vectors this host multiplies: the guest, then the hosts before it.
    fn loss_owners(&self) -> Vec<String> {
        std::iter::once(self.guest.clone())
            .chain(self.hosts[..self.position].iter().cloned())
            .collect()
    }

    /// The hosts after this one.
    fn later(&self) -> Vec<String> {
        self.hosts[self.position + 1..].to_vec()
    }

    /// Moves through every state whose messages have all arrived.
    fn advance(&mut self) -> Result<(), FedError> {
        loop {
            let moved = match self.state {
                ExpectHost::Keys => match self.mailbox.take_from_all(&self.peers) {
                    Some(messages) => {
                        let keys =
                            self.peers
                                .iter()
                                .zip(messages)
                                .map(|(peer, message)| match message {
                                    Message::Keys(keys) => Ok((peer.clone(), *keys)),
                                    other => Err(unexpected(peer, "the party's keys", &other)),
                                });
                        let keys = keys.collect::<Result<Vec<_>, _>>()?;
                        // The guest sends its features, its intercept and the check columns:
                        // exactly what the proposal (and this node's policy) allowed.
                        let expected = self.guest_features + 1 + CHECK_COLUMNS;
                        if keys[0].1.columns as usize != expected {
                            return Err(FedError::protocol(
                                &self.guest,
                                format!(
                                    "announces {} encrypted columns; its proposal implies {expected}",
                                    keys[0].1.columns
                                ),
                            ));
                        }
                        self.core.accept_keys(&self.nonce, keys)?;
                        self.state = ExpectHost::Columns;
                        true
                    }
                    None => false,
                },
                ExpectHost::Columns => {
                    if self.core.take_columns(&mut self.mailbox)? {
                        let hash = self.setup_digest.clone().finalize().into();
                        self.compare_digests(0, hash, None)?;
                        true
                    } else {
                        false
                    }
                }
                ExpectHost::Digests {
                    round,
                    hash,
                    ref mut vectors,
                } => {
                    let vectors = vectors.take();
                    let others = self.peers[1..].to_vec();
                    match self.mailbox.take_from_all(&others) {
                        Some(digests) => {
                            for (host, digest) in others.iter().zip(digests) {
                                match digest {
                                    Message::Digest { round: r, hash: h } if r == round => {
                                        if h != hash {
                                            return Err(FedError::protocol(
                                                &self.guest,
                                                format!(
                                                    "sent {host} something else than this host \
                                                     (digest of round {round})"
                                                ),
                                            ));
                                        }
                                    }
                                    other => return Err(unexpected(host, "a digest", &other)),
                                }
                            }
                            self.after_digests(vectors)?;
                            true
                        }
                        None => {
                            self.state = ExpectHost::Digests {
                                round,
                                hash,
                                vectors,
                            };
                            false
                        }
                    }
                }
                // The next step starts in `poll_transmit`, once what is queued (an epoch's
                // end, say) has gone out: peers then work while this party computes.
                ExpectHost::Products if self.core.step_due() => false,
                ExpectHost::Products => match self.mailbox.take_from_all(&self.peers) {
                    Some(products) => {
                        if !self.core.end_step(products)? {
                            self.start_loss()?;
                            self.state = ExpectHost::LossVectors;
                        }
                        true
                    }
                    None => false,
                },
                ExpectHost::LossVectors => match self.mailbox.take_from_all(&self.loss_owners()) {
                    Some(vectors) => {
                        // The guest's vector comes first; every host must have the same one.
                        let hash = Sha256::digest(vectors[0].to_bytes()).into();
                        let round = self.core.epoch as u64;
                        self.compare_digests(round, hash, Some(vectors))?;
                        true
                    }
                    None => false,
                },
                ExpectHost::LaterLossProducts { mut report } => {
                    let later = self.later();
                    match self.mailbox.take_from_all(&later) {
                        Some(products) => {
                            let epoch = self.core.epoch;
                            for (host, message) in later.iter().zip(products) {
                                let decrypted =
                                    self.core.decrypt_loss_product(host, epoch, message)?;
                                for (r, d) in report[2..4].iter_mut().zip(decrypted) {
                                    *r = r.wrapping_add(d);
                                }
                            }
                            self.send_report(report)?;
                            self.state = ExpectHost::EpochEnd;
                            true
                        }
                        None => false,
                    }
                }
                ExpectHost::EpochEnd => match self.mailbox.take(&self.guest) {
                    Some(message) => {
                        self.end_epoch(message)?;
                        true
                    }
                    None => false,
                },
                ExpectHost::Done => false,
            };
            if !moved {
                return Ok(());
            }
        }
    }

    /// Sends the other hosts this host's digest of the guest's broadcast of `round` and waits
    /// for theirs; with no other host, goes straight on.
    fn compare_digests(
        &mut self,
        round: u64,
        hash: [u8; 32],
        vectors: Option<Vec<Message>>,
    ) -> Result<(), FedError> {
        if self.peers.len() == 1 {
            return self.after_digests(vectors);
        }
        for host in &self.peers[1..] {
            self.mailbox.send(host, Message::Digest { round, hash });
        }
        self.state = ExpectHost::Digests {
            round,
            hash,
            vectors,
        };
        Ok(())
    }

    /// Once the hosts agree on what the guest sent: the first step, or the loss products.
    fn after_digests(&mut self, vectors: Option<Vec<Message>>) -> Result<(), FedError> {
        match vectors {
            None => match self.resumed {
                // Training had ended: reveal again what was revealed.
                Some((_, true)) => {
                    self.reveal()?;
                    self.state = ExpectHost::Done;
                }
                Some((epoch, false)) => {
                    self.core.start_epoch(epoch + 1);
                    self.state = ExpectHost::Products;
                }
                None => {
                    self.core.start_epoch(1);
                    self.state = ExpectHost::Products;
                }
            },
            Some(vectors) => {
                let report = self.loss_products(vectors)?;
                self.state = ExpectHost::LaterLossProducts { report };
            }
        }
        Ok(())
    }

    /// The host's partial scores on the training and validation rows, in loss fixed point.
    fn loss_scores(&self) -> Result<(Vec<f64>, Vec<i64>), FedError> {
        let split = &self.core.data.split;
        let rows: Vec<usize> = split
            .train
            .iter()
            .chain(&split.validation)
            .copied()
            .collect();
        let z = self.core.scores_with(&self.core.weights, &rows);
        let encoded = encode_fixed(
            &self.core.data.party,
            self.core.epoch,
            "partial score",
            &z,
            LOSS_FRAC_BITS,
            LOSS_MAX,
        )?;
        Ok((z, encoded))
    }

    /// Starts the epoch's loss round: [[z_k]] to the hosts after this one.
    fn start_loss(&mut self) -> Result<(), FedError> {
        let later = self.later();
        if later.is_empty() {
            return Ok(());
        }
        let (_, encoded) = self.loss_scores()?;
        let encrypted = self
            .core
            .secret
            .encrypt(&encoded, LOSS_BOUND)
            .map_err(FedError::he("encrypting the loss vector"))?;
        for host in &later {
            self.mailbox.send(
                host,
                Message::LossVector {
                    epoch: self.core.epoch as u64,
                    values: encrypted.clone(),
                },
            );
        }
        Ok(())
    }

    /// This host's products with the loss vectors of the guest ([[d_G]]) and of the hosts
    /// before it ([[z_j]]), released to their owners; returns the report with its shares.
    fn loss_products(&mut self, vectors: Vec<Message>) -> Result<[u128; REPORT_SLOTS], FedError> {
        let epoch = self.core.epoch;
        let n_train = self.core.data.split.train.len();
        let (_, encoded) = self.loss_scores()?;
        let rows = encoded.len();
        // Two columns: the scores on the training rows, then on the validation rows.
        let mut columns = vec![0i64; 2 * rows];
        columns[..n_train].copy_from_slice(&encoded[..n_train]);
        columns[rows + n_train..].copy_from_slice(&encoded[n_train..]);
        let matrix = PreparedMatrix::new(&PARAMS, rows, 2, &columns)
            .map_err(FedError::he("preparing the scores"))?;
        let mut report = [0u128; REPORT_SLOTS];
        for (index, (owner, message)) in self.loss_owners().iter().zip(vectors).enumerate() {
            let vector = match message {
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
            self.mailbox.send(
                owner,
                Message::LossProduct {
                    epoch: epoch as u64,
                    products,
                },
            );
            let slot = if index == 0 { 0 } else { 2 };
            for (r, s) in report[slot..slot + 2].iter_mut().zip(masks.shares()) {
                *r = r.wrapping_add(s);
            }
        }
        Ok(report)
    }

    /// Completes the report with the host's squares and weight change, blinds it with the
    /// pairwise masks among the hosts and queues it for the guest.
    fn send_report(&mut self, mut report: [u128; REPORT_SLOTS]) -> Result<(), FedError> {
        let epoch = self.core.epoch;
        let n_train = self.core.data.split.train.len();
        let (z, _) = self.loss_scores()?;
        let sums = 2f64.powi(SUM_FRAC_BITS);
        let squares =
            |range: std::ops::Range<usize>| -> f64 { z[range].iter().map(|z| z * z).sum() };
        // Fixed-point sums, read modulo 2^64 by the guest.
        report[4] = (squares(0..n_train) * sums).round() as i64 as u128;
        report[5] = (squares(n_train..z.len()) * sums).round() as i64 as u128;
        report[6] = (self.core.epoch_change() * sums).round() as i64 as u128;
        let mut context = b"loss ".to_vec();
        context.extend_from_slice(&(epoch as u64).to_le_bytes());
        self.core
            .masks()?
            .apply_without(&self.guest, &context, &mut report);
        self.mailbox.send(
            &self.guest,
            Message::LossReport {
                epoch: epoch as u64,
                masked: report.to_vec(),
            },
        );
        Ok(())
    }

    /// The guest's verdict: keep the weights if best, then the next epoch or the end.
    fn end_epoch(&mut self, message: Message) -> Result<(), FedError> {
        let epoch = self.core.epoch;
        let (best, stop) = match message {
            Message::EpochEnd {
                epoch: e,
                best,
                stop,
            } if e == epoch as u64 => (best, stop),
            other => return Err(unexpected(&self.guest, "end of epoch", &other)),
        };
        self.epochs = epoch;
        if best {
            self.best_weights = Some(self.core.weights.clone());
        }
        self.last_good = Some(self.core.model(&self.model_id, &self.core.weights));
        self.mailbox.emit(Event::HostEpoch { epoch });
        let last = stop || epoch == self.core.config.max_epochs;
        let checkpoint = self
            .core
            .checkpoint(self.settings, self.best_weights.clone(), last, None);
        self.mailbox.emit(Event::Checkpoint(Box::new(checkpoint)));
        if last {
            self.reveal()?;
            self.state = ExpectHost::Done;
        } else {
            self.core.start_epoch(epoch + 1);
            self.state = ExpectHost::Products;
        }
        Ok(())
    }

    /// The job's one reveal: the final partial scores of the validation rows (the training
    /// rows without a validation split), blinded by pairwise masks among the hosts.
    fn reveal(&mut self) -> Result<(), FedError> {
        let weights = self
            .best_weights
            .clone()
            .unwrap_or_else(|| self.core.weights.clone());
        let split = &self.core.data.split;
        let rows = if split.validation.is_empty() {
            &split.train
        } else {
            &split.validation
        };
        let mut masked = self
            .core
            .scores_with(&weights, rows)
            .into_iter()
            .map(encode_score)
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| FedError::Diverged {
                epoch: self.epochs,
                reason: format!(
                    "{}'s final scores left the fixed-point range",
                    self.core.data.party
                ),
            })?;
        let revealed_rows = rows.len();
        self.core
            .masks()?
            .apply_without(&self.guest, b"final scores", &mut masked);
        self.mailbox
            .send(&self.guest, Message::FinalScores { masked });
        self.outcome = Some(HostOutcome {
            model: self.core.model(&self.model_id, &weights),
            epochs: self.epochs,
            feature_frac_bits: self.core.data.quantised.frac_bits,
            revealed_rows,
        });
        Ok(())
    }
}

impl Session for HostSession {
    fn handle(&mut self, from: &str, message: Message) -> Result<(), FedError> {
        if !self.peers.iter().any(|p| p == from) {
            return Err(FedError::protocol(from, "not a party of the job"));
        }
        if from == self.guest && matches!(message, Message::Keys(_) | Message::Columns { .. }) {
            self.setup_digest.update(message.to_bytes());
        }
        self.mailbox.deliver(from, message)?;
        self.advance()
    }

    fn poll_transmit(&mut self) -> Result<Option<(String, Message)>, FedError> {
        let share = |core: &Core, rows: &[usize]| -> Vec<f64> {
            core.scores_with(&core.weights, rows)
                .iter()
                .map(|z| 0.25 * z)
                .collect()
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
        match &self.state {
            ExpectHost::Keys | ExpectHost::Products => self.mailbox.first_missing(&self.peers),
            ExpectHost::Columns => self.core.awaiting_columns(&self.mailbox),
            ExpectHost::LossVectors => {
                let owners = std::iter::once(&self.guest).chain(&self.hosts[..self.position]);
                owners.map(String::as_str).find(|p| !self.mailbox.has(p))
            }
            ExpectHost::LaterLossProducts { .. } => self.hosts[self.position + 1..]
                .iter()
                .map(String::as_str)
                .find(|p| !self.mailbox.has(p)),
            ExpectHost::Digests { .. } => self.mailbox.first_missing(&self.peers[1..]),
            ExpectHost::EpochEnd => Some(self.guest.as_str()),
            ExpectHost::Done => None,
        }
    }
}
