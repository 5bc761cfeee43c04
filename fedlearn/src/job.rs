//! Secret-shared training as a job: one state machine for the guest and every host, over the
//! shared core ([`crate::shared`]).
//!
//! Every party runs the same rounds; what differs is who holds which shares (the core) and
//! what the guest decides (early stopping, the final evaluation). A round is a list, per
//! peer, of the messages that peer owes this party, in the order the peer sends them: a
//! message that is not the one owed next is a protocol error naming the peer, and a message
//! from a peer that owes nothing more in this round belongs to a later round and waits.
//!
//! Rounds, for a job of steps 0 … T (T = `max_epochs`):
//! 1. *Keys*: every party's public key, mask share, width and scale.
//! 2. *Digests* (hosts, with two or more): each host's digest of the proposal and the guest's
//!    keys, so that a guest that sends hosts different settings is caught before any data
//!    is encrypted.
//! 3. *Set-up*, with every peer: its packing key (of as many levels as the job's widths,
//!    now known to all, call for), encrypted columns, Gram releases, coupling vectors and
//!    releases (see [`crate::shared`]).
//! 4. Per step s: *products* (every party's weight-share vector to every other, and the
//!    releases back), *hand-overs*, the *loss* round with each party's partner, the *loss
//!    sums* to the guest, and the guest's *verdict* on epoch s (the weights after s updates:
//!    their Taylor losses are what step s computes, with ‖Δw‖² of step s − 1). The update
//!    step T computes is not used: T steps of updates and T + 1 loss evaluations.
//! 5. *End*: each party's partner hands it its share of the kept weights; the hosts reveal
//!    the final model's partial scores on the validation rows once, summed under pairwise
//!    masks, as in every version since 2.

use std::collections::VecDeque;

use he::{PublicKey, SecretKey};
use sha2::{Digest, Sha256};

use crate::checkpoint::{Checkpoint, GuestProgress};
use crate::config::{EarlyStopping, TrainConfig};
use crate::data::Table;
use crate::error::FedError;
use crate::masks::{MaskSecret, PairwiseMasks};
use crate::message::{Message, PartyKeys, Proposal};
use crate::metrics::{evaluate, reliability};
use crate::model::Calibration;
use crate::party::Data;
use crate::prep::Prep;
use crate::protocol::{
    decode_score, encode_score, unexpected, Convergence, EpochReport, Event, FinalEvaluation,
    GuestOutcome, HostOutcome, RevealedRows, StopReason, PARAMS,
};
use crate::session::Mailbox;
use crate::shared::{hand_over_context, partner, rate, Party, PartyInput, MOMENTUM};

/// Most columns a peer may announce: every column costs this party a share of every Gram
/// and coupling product.
const MAX_PEER_COLUMNS: usize = 1024;

/// Whether the guest and the hosts are all different parties (their names address messages).
fn distinct(guest: &str, hosts: &[String]) -> bool {
    let mut names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    names.push(guest);
    names.sort_unstable();
    names.windows(2).all(|pair| pair[0] != pair[1])
}

/// The rounds of a job (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Round {
    Keys,
    Digests,
    Setup,
    Products,
    HandOvers,
    Losses,
    LossSums,
    Verdict,
    End,
    Done,
}

/// A message a peer owes this party in the current round: its kind, and for the loss
/// round's vectors and releases the party whose weight vector they are about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Owed {
    kind: &'static str,
    about: usize,
}

impl Owed {
    fn of(kind: &'static str) -> Owed {
        Owed { kind, about: 0 }
    }

    fn about(kind: &'static str, about: usize) -> Owed {
        Owed { kind, about }
    }
}

/// What only the guest keeps.
pub(crate) struct GuestState {
    /// Labels of all aligned rows.
    labels: Vec<f64>,
    history: Vec<EpochReport>,
    best_loss: f64,
    best_epoch: usize,
    since_best: usize,
    stop: StopReason,
    /// ‖Δw‖² of the step before the current one.
    change: f64,
    /// The guest's kept weights, once its partner's share has arrived.
    weights: Option<Vec<f64>>,
    /// Each host's masked final scores.
    scores: Vec<Option<Vec<u64>>>,
    outcome: Option<GuestOutcome>,
}

/// What only a host keeps.
pub(crate) struct HostState {
    /// SHA-256 of the proposal and the guest's keys.
    digest: Sha256,
    hash: [u8; 32],
    outcome: Option<HostOutcome>,
}

/// A party's role.
pub(crate) enum Role {
    Guest(Box<GuestState>),
    Host(Box<HostState>),
}

/// One party of a secret-shared training job.
pub(crate) struct Trainer {
    data: Data,
    config: TrainConfig,
    model_id: String,
    /// Every party, the guest first, then the hosts in job order; this party's index.
    names: Vec<String>,
    me: usize,
    nonce: [u8; 16],
    /// This party's keys until the peers' keys arrive and the core takes them.
    keys: Option<(SecretKey, PublicKey)>,
    mask_secret: MaskSecret,
    masks: Option<PairwiseMasks>,
    peer_keys: Vec<Option<PartyKeys>>,
    core: Option<Party>,
    pub(crate) mailbox: Mailbox,
    round: Round,
    /// Per party, what it still owes in this round.
    owed: Vec<VecDeque<Owed>>,
    /// The current step (0-based).
    step: u64,
    /// The guest's feature count (its proposal's).
    guest_features: usize,
    /// A host's verdict from the guest: whether to stop after this step.
    stop: bool,
    /// Digest of the job's settings, kept in every checkpoint.
    settings: [u8; 32],
    /// The checkpoint to resume from, until the core takes its shares.
    resume: Option<Checkpoint>,
    role: Role,
}

impl Trainer {
    /// The guest of a job: checks the labels and queues the proposal and its keys.
    pub(crate) fn guest(
        party: &str,
        table: &Table,
        prep: &Prep,
        mut proposal: Proposal,
        resume: Option<Checkpoint>,
    ) -> Result<Trainer, FedError> {
        if !distinct(party, &proposal.hosts) {
            return Err(FedError::config(
                "hosts",
                "every host must be named once, and not by the guest's name",
            ));
        }
        let labels = table
            .labels()
            .ok_or_else(|| FedError::config("labels", "the guest's table has no label column"))?
            .to_vec();
        let mut state = GuestState {
            labels,
            history: Vec::new(),
            best_loss: f64::INFINITY,
            best_epoch: 0,
            since_best: 0,
            stop: StopReason::MaxEpochs,
            change: 0.0,
            weights: None,
            scores: vec![None; proposal.hosts.len()],
            outcome: None,
        };
        if let Some(checkpoint) = &resume {
            let progress = checkpoint.guest.clone().ok_or_else(|| FedError::Resume {
                party: party.to_owned(),
                reason: "its checkpoint is a host's".into(),
            })?;
            state.history = progress.history;
            state.best_loss = progress.best_loss;
            state.best_epoch = progress.best_epoch;
            state.since_best = progress.since_best;
            state.stop = progress.stop;
            state.change = progress.change;
        }
        let data = Data::new(party, table, prep, &proposal.config, true)?;
        // The proposal names the guest's feature count: hosts' policies limit it.
        proposal.features = data.table.features() as u32;
        let role = Role::Guest(Box::new(state));
        let mut trainer = Trainer::new(data, 0, &proposal, resume, role)?;
        let keys = trainer.own_keys();
        for host in &proposal.hosts {
            trainer
                .mailbox
                .send(host, Message::Propose(Box::new(proposal.clone())));
        }
        trainer.send_all(|_| Message::Keys(Box::new(keys.clone())));
        Ok(trainer)
    }

    /// A host of the job `proposal` describes, as `party`: queues its keys.
    pub(crate) fn host(
        party: &str,
        guest: &str,
        table: &Table,
        prep: &Prep,
        proposal: &Proposal,
        resume: Option<Checkpoint>,
    ) -> Result<Trainer, FedError> {
        let position = proposal
            .hosts
            .iter()
            .position(|h| h == party)
            .ok_or_else(|| {
                FedError::protocol(guest, format!("{party} is not among the job's hosts"))
            })?;
        if !distinct(guest, &proposal.hosts) {
            return Err(FedError::protocol(
                guest,
                "its proposal names a host twice, or itself among the hosts",
            ));
        }
        if proposal.rows != table.rows() as u64 {
            return Err(FedError::RowCount {
                party: party.to_owned(),
                expected: proposal.rows as usize,
                got: table.rows(),
            });
        }
        let mut digest = Sha256::new();
        digest.update(Message::Propose(Box::new(proposal.clone())).to_bytes());
        let state = HostState {
            digest,
            hash: [0; 32],
            outcome: None,
        };
        let data = Data::new(party, table, prep, &proposal.config, false)?;
        let role = Role::Host(Box::new(state));
        let mut trainer = Trainer::new(data, position + 1, proposal, resume, role)?;
        trainer.names[0] = guest.to_owned();
        let keys = trainer.own_keys();
        trainer.send_all(|_| Message::Keys(Box::new(keys.clone())));
        Ok(trainer)
    }

    fn new(
        data: Data,
        me: usize,
        proposal: &Proposal,
        resume: Option<Checkpoint>,
        role: Role,
    ) -> Result<Trainer, FedError> {
        let config = proposal.config.clone();
        config.validate()?;
        if let Some(checkpoint) = &resume {
            checkpoint.check(&data.party, proposal)?;
        }
        let (secret, public) = SecretKey::generate(&PARAMS);
        let mut names = vec![String::new()];
        names.extend(proposal.hosts.iter().cloned());
        names[me] = data.party.clone();
        let parties = names.len();
        let mut trainer = Trainer {
            data,
            config,
            model_id: proposal.model_id.clone(),
            names,
            me,
            nonce: proposal.job,
            keys: Some((secret, public)),
            mask_secret: MaskSecret::random()?,
            masks: None,
            peer_keys: (0..parties).map(|_| None).collect(),
            core: None,
            mailbox: Mailbox::default(),
            round: Round::Keys,
            owed: vec![VecDeque::new(); parties],
            step: 0,
            guest_features: proposal.features as usize,
            stop: false,
            settings: proposal.settings_digest(),
            resume,
            role,
        };
        trainer.owe_each(|_| vec![Owed::of("keys")]);
        Ok(trainer)
    }

    fn own_keys(&self) -> PartyKeys {
        let (_, public) = self.keys.as_ref().expect("keys before the core");
        PartyKeys {
            rows: self.data.table.rows() as u64,
            columns: self.data.quantised.columns as u32,
            key: public.clone(),
            mask_share: self.mask_secret.public(),
            frac_bits: self.data.quantised.frac_bits,
        }
    }

    fn parties(&self) -> usize {
        self.names.len()
    }

    fn peers(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.parties()).filter(move |&p| p != self.me)
    }

    fn send(&mut self, to: usize, message: Message) {
        let name = self.names[to].clone();
        self.mailbox.send(&name, message);
    }

    fn send_all(&mut self, mut message: impl FnMut(usize) -> Message) {
        for peer in self.peers().collect::<Vec<_>>() {
            let m = message(peer);
            self.send(peer, m);
        }
    }

    /// Sets what every peer owes in the round just entered.
    fn owe_each(&mut self, mut owed: impl FnMut(usize) -> Vec<Owed>) {
        for peer in self.peers().collect::<Vec<_>>() {
            self.owed[peer] = owed(peer).into();
        }
    }

    fn core(&mut self) -> Result<&mut Party, FedError> {
        let party = self.data.party.clone();
        self.core
            .as_mut()
            .ok_or_else(|| FedError::protocol(&party, "no shared core before the keys"))
    }

    fn guest_state(&mut self) -> &mut GuestState {
        match &mut self.role {
            Role::Guest(state) => state,
            Role::Host(_) => unreachable!("guest rounds run on the guest"),
        }
    }

    /// The guest's result, once the job is done.
    pub(crate) fn guest_outcome(&mut self) -> Option<GuestOutcome> {
        match &mut self.role {
            Role::Guest(state) => state.outcome.take(),
            Role::Host(_) => None,
        }
    }

    /// A host's result, once the job is done.
    pub(crate) fn host_outcome(&mut self) -> Option<HostOutcome> {
        match &mut self.role {
            Role::Host(state) => state.outcome.take(),
            Role::Guest(_) => None,
        }
    }

    /// Takes a message from `from`.
    pub(crate) fn handle(&mut self, from: &str, message: Message) -> Result<(), FedError> {
        if !self.peers().any(|p| self.names[p] == from) {
            return Err(FedError::protocol(from, "not a party of the job"));
        }
        if let Role::Host(state) = &mut self.role {
            if from == self.names[0] && matches!(message, Message::Keys(_)) {
                state.digest.update(message.to_bytes());
            }
        }
        self.mailbox.deliver(from, message)?;
        self.advance()
    }

    /// The first peer whose owed message has not arrived, or `None` once the job is done.
    pub(crate) fn awaiting(&self) -> Option<&str> {
        if self.round == Round::Done {
            return None;
        }
        self.peers()
            .find(|&p| !self.owed[p].is_empty() && !self.mailbox.has(&self.names[p]))
            .map(|p| self.names[p].as_str())
    }

    /// Handles every owed message that has arrived and enters every round whose messages
    /// have all come.
    fn advance(&mut self) -> Result<(), FedError> {
        loop {
            let mut moved = false;
            for peer in self.peers().collect::<Vec<_>>() {
                while let Some(&owed) = self.owed[peer].front() {
                    let name = self.names[peer].clone();
                    let Some(message) = self.mailbox.take(&name) else {
                        break;
                    };
                    if message.kind() != owed.kind {
                        return Err(unexpected(&name, owed.kind, &message));
                    }
                    self.owed[peer].pop_front();
                    self.take(peer, owed, message)?;
                    moved = true;
                }
            }
            if self.round != Round::Done && self.owed.iter().all(VecDeque::is_empty) {
                self.finish_round()?;
                moved = true;
            }
            if !moved {
                return Ok(());
            }
        }
    }

    /// A step-numbered message must be of the current step.
    fn check_step(&self, peer: usize, step: u64) -> Result<(), FedError> {
        if step == self.step {
            Ok(())
        } else {
            Err(FedError::protocol(
                &self.names[peer],
                format!("a message of step {step} in step {}", self.step),
            ))
        }
    }

    /// One owed message from `peer`.
    fn take(&mut self, peer: usize, owed: Owed, message: Message) -> Result<(), FedError> {
        match message {
            Message::Keys(keys) => self.peer_keys[peer] = Some(*keys),
            Message::Digest { hash } => {
                let Role::Host(state) = &self.role else {
                    unreachable!("only hosts compare digests")
                };
                if hash != state.hash {
                    return Err(FedError::protocol(
                        &self.names[0],
                        format!(
                            "sent {} something else than this host (the proposal or its keys)",
                            self.names[peer]
                        ),
                    ));
                }
            }
            Message::Packing(key) => self.core()?.accept_packing(peer, *key)?,
            Message::SharedColumns { blocks } => {
                let core = self.core()?;
                core.accept_columns(peer, &blocks)?;
                let releases = core.gram_releases(peer)?;
                self.send(peer, Message::SharedGram { releases });
            }
            Message::SharedGram { releases } => {
                let core = self.core()?;
                core.accept_gram(peer, &releases)?;
                let vectors = core.coupling_vectors(peer)?;
                self.send(peer, Message::CouplingVectors { vectors });
            }
            Message::CouplingVectors { vectors } => {
                let releases = self.core()?.coupling_releases(peer, &vectors)?;
                self.send(peer, Message::CouplingReleases { releases });
            }
            Message::CouplingReleases { releases } => {
                self.core()?.accept_coupling(peer, &releases)?;
            }
            Message::StepVector { step, vector } => {
                self.check_step(peer, step)?;
                let release = self.core()?.step_release(peer, &vector)?;
                self.send(peer, Message::StepRelease { step, release });
            }
            Message::StepRelease { step, release } => {
                self.check_step(peer, step)?;
                self.core()?.accept_step_release(peer, &release)?;
            }
            Message::HandOver { step, shares } => {
                self.check_step(peer, step)?;
                self.core()?.accept_hand_over(peer, &shares)?;
            }
            Message::StepLossVector { step, vector } => {
                self.check_step(peer, step)?;
                let release = self.core()?.loss_release(owed.about, &vector)?;
                self.send(peer, Message::StepLossRelease { step, release });
            }
            Message::StepLossRelease { step, release } => {
                self.check_step(peer, step)?;
                self.core()?
                    .accept_loss_release(peer, owed.about, &release)?;
            }
            Message::LossShares { step, shares } => {
                self.check_step(peer, step)?;
                self.core()?.accept_loss_shares(peer, &shares)?;
            }
            Message::EpochEnd { epoch, best, stop } => {
                self.check_step(peer, epoch)?;
                if best {
                    self.core()?.keep_best();
                }
                if self.step > 0 {
                    let epoch = self.step as usize;
                    self.mailbox.emit(Event::HostEpoch { epoch });
                    self.checkpoint(stop, None)?;
                }
                self.stop = stop;
            }
            Message::WeightShares { shares } => {
                let weights = self.core()?.weights(&shares)?;
                match &mut self.role {
                    Role::Guest(state) => state.weights = Some(weights),
                    Role::Host(_) => self.reveal(&weights)?,
                }
            }
            Message::FinalScores { masked } => {
                let rows = self.revealed_rows().1.len();
                if masked.len() != rows {
                    return Err(FedError::protocol(
                        &self.names[peer],
                        format!("{} final scores, expected {rows}", masked.len()),
                    ));
                }
                self.guest_state().scores[peer - 1] = Some(masked);
            }
            other => return Err(unexpected(&self.names[peer], owed.kind, &other)),
        }
        Ok(())
    }

    /// The round's messages have all come: its closing work, then the next round.
    fn finish_round(&mut self) -> Result<(), FedError> {
        match self.round {
            Round::Keys => {
                self.accept_keys()?;
                let hosts = self.parties() - 1;
                if self.me != 0 && hosts > 1 {
                    let Role::Host(state) = &mut self.role else {
                        unreachable!("a host")
                    };
                    state.hash = state.digest.clone().finalize().into();
                    let hash = state.hash;
                    let me = self.me;
                    for host in (1..self.parties()).filter(|&h| h != me) {
                        self.send(host, Message::Digest { hash });
                    }
                    self.owe_each(|p| {
                        if p == 0 {
                            vec![]
                        } else {
                            vec![Owed::of("digest")]
                        }
                    });
                    self.round = Round::Digests;
                } else {
                    self.start_setup()?;
                }
            }
            Round::Digests => self.start_setup()?,
            Round::Setup => {
                self.core()?.finish_setup()?;
                self.start_step()?;
            }
            Round::Products => {
                let step = self.step;
                let names = self.names.clone();
                let masks = self.masks.as_ref().ok_or_else(|| {
                    FedError::protocol(&self.data.party, "no pairwise masks before the keys")
                })?;
                let core = self
                    .core
                    .as_mut()
                    .expect("the core exists once the keys came");
                let handed = core.hand_over(&mut |peer, about, values| {
                    masks.apply_with(&names[peer], &hand_over_context(step, about), values);
                });
                for (to, shares) in handed {
                    self.send(to, Message::HandOver { step, shares });
                }
                let me = self.me;
                self.owe_each(|from| {
                    if from != partner(me) {
                        vec![Owed::of("hand_over")]
                    } else {
                        vec![]
                    }
                });
                self.round = Round::HandOvers;
            }
            Round::HandOvers => {
                let step = self.step;
                let core = self.core()?;
                core.finish_step();
                // The guest sends every host its shares of the vectors they hold together; each
                // host releases the loss terms back, the guest alone decrypting.
                for (to, _, vector) in core.loss_vectors()? {
                    self.send(to, Message::StepLossVector { step, vector });
                }
                let due = self.core()?.loss_releases_due();
                let parties = self.parties();
                let me = self.me;
                self.owe_each(|p| match me {
                    0 => {
                        let about: Vec<usize> = if p == 1 { vec![0, 1] } else { vec![p] };
                        about
                            .into_iter()
                            .filter(|&a| a < parties)
                            .map(|a| Owed::about("step_loss_release", a))
                            .collect()
                    }
                    _ if p == 0 => due
                        .iter()
                        .map(|&a| Owed::about("step_loss_vector", a))
                        .collect(),
                    _ => Vec::new(),
                });
                self.round = Round::Losses;
            }
            Round::Losses => {
                let me = self.me;
                if me >= 2 {
                    self.send_loss_shares()?;
                }
                let parties = self.parties();
                self.owe_each(|p| match me {
                    0 if p == 1 => vec![Owed::of("loss_shares")],
                    1 if p >= 2 && p < parties => vec![Owed::of("loss_shares")],
                    _ => vec![],
                });
                self.round = Round::LossSums;
            }
            Round::LossSums => match self.me {
                0 => self.verdict()?,
                me => {
                    if me == 1 {
                        self.send_loss_shares()?;
                    }
                    self.owe_each(|p| {
                        if p == 0 {
                            vec![Owed::of("epoch_end")]
                        } else {
                            vec![]
                        }
                    });
                    self.round = Round::Verdict;
                }
            },
            Round::Verdict if self.stop => self.start_end()?,
            Round::Verdict => {
                self.step += 1;
                self.start_step()?;
            }
            Round::End => {
                if self.me == 0 {
                    self.finish()?;
                }
                self.round = Round::Done;
            }
            Round::Done => {}
        }
        Ok(())
    }

    /// Checks the peers' keys and builds the shared core.
    fn accept_keys(&mut self) -> Result<(), FedError> {
        let rows = self.data.table.rows();
        let mut shares = Vec::new();
        let mut widths = vec![0; self.parties()];
        let mut frac_bits = vec![0; self.parties()];
        let mut peers = Vec::with_capacity(self.parties());
        widths[self.me] = self.data.quantised.columns;
        frac_bits[self.me] = self.data.quantised.frac_bits;
        for p in 0..self.parties() {
            let Some(keys) = self.peer_keys[p].take() else {
                peers.push(None);
                continue;
            };
            let name = &self.names[p];
            if keys.rows != rows as u64 {
                return Err(FedError::RowCount {
                    party: name.clone(),
                    expected: rows,
                    got: keys.rows as usize,
                });
            }
            let columns = keys.columns as usize;
            if columns == 0 || columns > MAX_PEER_COLUMNS {
                return Err(FedError::protocol(
                    name,
                    format!("announces {columns} encrypted columns"),
                ));
            }
            // The guest encrypts its features and its intercept: exactly what the proposal
            // (and this node's policy) allowed.
            let expected = self.guest_features + 1;
            if p == 0 && self.me != 0 && columns != expected {
                return Err(FedError::protocol(
                    name,
                    format!(
                        "announces {columns} encrypted columns; its proposal implies {expected}"
                    ),
                ));
            }
            if keys.frac_bits > 12 {
                return Err(FedError::protocol(
                    name,
                    format!("announces {} fraction bits (at most 12)", keys.frac_bits),
                ));
            }
            widths[p] = columns;
            frac_bits[p] = keys.frac_bits;
            shares.push((name.clone(), keys.mask_share));
            peers.push(Some(keys.key));
        }
        self.masks = Some(PairwiseMasks::derive(
            &self.nonce,
            &self.data.party,
            &self.mask_secret,
            &shares,
        )?);
        let split = &self.data.split;
        let columns = |rows: &[usize]| -> Vec<Vec<i64>> {
            (0..self.data.quantised.columns)
                .map(|j| self.data.quantised.column(j, rows))
                .collect()
        };
        let labels = match &self.role {
            Role::Guest(state) => {
                let pick = |rows: &[usize]| rows.iter().map(|&r| state.labels[r]).collect();
                Some((pick(&split.train), pick(&split.validation)))
            }
            Role::Host(_) => None,
        };
        let input = PartyInput {
            names: self.names.clone(),
            index: self.me,
            widths,
            frac_bits,
            train: columns(&split.train),
            validation: columns(&split.validation),
            labels,
            intercept: (self.me == 0).then(|| self.data.quantised.columns - 1),
            l2: self.config.l2,
            rate: rate(self.parties()),
            momentum: MOMENTUM,
        };
        let (secret, _) = self.keys.take().expect("keys before the core");
        let mut core = Party::new(PARAMS, input, secret, peers)?;
        if let Some(checkpoint) = &self.resume {
            core.restore(&checkpoint.shares)?;
            // The step after the epoch it ends; or, had training ended, that epoch.
            self.step = checkpoint.epoch as u64 + u64::from(!checkpoint.last);
        }
        self.core = Some(core);
        Ok(())
    }

    /// The set-up; or, for a job that had ended training before it was interrupted, the end
    /// at once (its kept weights are in the checkpoint).
    fn start_setup(&mut self) -> Result<(), FedError> {
        if self.resume.as_ref().is_some_and(|c| c.last) {
            return self.start_end();
        }
        let core = self.core()?;
        let packing = core.packing_key()?;
        let blocks = core.encrypted_columns()?;
        self.send_all(|_| Message::Packing(Box::new(packing.clone())));
        self.send_all(|_| Message::SharedColumns {
            blocks: blocks.clone(),
        });
        self.owe_each(|_| {
            [
                "packing",
                "shared_columns",
                "shared_gram",
                "coupling_vectors",
                "coupling_releases",
            ]
            .map(Owed::of)
            .to_vec()
        });
        self.round = Round::Setup;
        Ok(())
    }

    fn start_step(&mut self) -> Result<(), FedError> {
        let step = self.step;
        for (peer, vector) in self.core()?.begin_step()? {
            self.send(peer, Message::StepVector { step, vector });
        }
        self.owe_each(|_| ["step_vector", "step_release"].map(Owed::of).to_vec());
        self.round = Round::Products;
        Ok(())
    }

    fn send_loss_shares(&mut self) -> Result<(), FedError> {
        let step = self.step;
        if let Some((to, shares)) = self.core()?.send_loss_shares() {
            self.send(to, Message::LossShares { step, shares });
        }
        Ok(())
    }

    /// Emits this party's checkpoint of the current epoch (the current step).
    fn checkpoint(&mut self, last: bool, guest: Option<GuestProgress>) -> Result<(), FedError> {
        let checkpoint = Checkpoint {
            epoch: self.step as usize,
            settings: self.settings,
            shares: self.core()?.held(),
            last,
            guest,
        };
        self.mailbox.emit(Event::Checkpoint(Box::new(checkpoint)));
        Ok(())
    }

    /// The guest's verdict on epoch s = the current step: the weights after s updates, whose
    /// losses this step computed (step 0's are the starting weights', not an epoch).
    fn verdict(&mut self) -> Result<(), FedError> {
        let step = self.step as usize;
        let (losses, change) = self.core()?.losses()?;
        // A Taylor loss is at least log 2 − ½ (a row's minimum, at z = ±2; the loss carries no
        // penalty), and from log 2 at the starting weights a job that converges — as it does at
        // its step size (`shared::rate`) — stays far below 1000 (|z| near 90 on average): a
        // loss outside that range, or a negative squared change, is a share that wrapped or a
        // party that altered its loss terms, never a model to keep.
        let floor = std::f64::consts::LN_2 - 0.5 - 1e-4;
        if let Some(loss) = losses.iter().find(|l| !(floor..=1000.0).contains(*l)) {
            return Err(FedError::Diverged {
                epoch: self.step as usize,
                reason: format!("a Taylor loss of {loss}, outside what a converging job gives"),
            });
        }
        if change < -1e-6 {
            return Err(FedError::Diverged {
                epoch: self.step as usize,
                reason: format!("a squared weight change of {change}"),
            });
        }
        let config = self.config.clone();
        let step_size = rate(self.parties());
        let state = self.guest_state();
        let previous = std::mem::replace(&mut state.change, change);
        let (best, last) = if step == 0 {
            (false, false)
        } else {
            let train_loss = losses[0];
            let validation_loss = losses.get(1).copied();
            let weight_change = previous.max(0.0).sqrt();
            let loss = validation_loss.unwrap_or(train_loss);
            let (best, done) = match config.early_stopping {
                Some(EarlyStopping::Loss {
                    patience,
                    min_delta,
                }) => {
                    let improved = loss < state.best_loss - min_delta;
                    state.since_best = if improved { 0 } else { state.since_best + 1 };
                    (
                        improved || state.best_epoch == 0,
                        state.since_best >= patience,
                    )
                }
                Some(EarlyStopping::WeightChange { tolerance }) => {
                    (true, weight_change < tolerance)
                }
                None => (true, false),
            };
            if best {
                state.best_loss = state.best_loss.min(loss);
                state.best_epoch = step;
            }
            let last = done || step == config.max_epochs;
            if done && step < config.max_epochs {
                state.stop = StopReason::EarlyStopping { epoch: step };
            }
            let report = EpochReport {
                epoch: step,
                train_loss,
                validation_loss,
                weight_change,
                learning_rate: step_size,
                best,
            };
            state.history.push(report.clone());
            self.mailbox.emit(Event::Epoch(report));
            (best, last)
        };
        if best {
            self.core()?.keep_best();
        }
        if step > 0 {
            let state = self.guest_state();
            let progress = GuestProgress {
                history: state.history.clone(),
                best_loss: state.best_loss,
                best_epoch: state.best_epoch,
                since_best: state.since_best,
                stop: state.stop,
                change: state.change,
            };
            self.checkpoint(last, Some(progress))?;
        }
        let epoch = self.step;
        self.send_all(|_| Message::EpochEnd {
            epoch,
            best,
            stop: last,
        });
        if last {
            self.start_end()
        } else {
            self.step += 1;
            self.start_step()
        }
    }

    /// The end: shares of the kept weights to their owners; the guest waits for its own
    /// and for the hosts' final scores, a host for its own.
    fn start_end(&mut self) -> Result<(), FedError> {
        for (owner, shares) in self.core()?.weight_shares() {
            self.send(owner, Message::WeightShares { shares });
        }
        let me = self.me;
        self.owe_each(|p| {
            let mut owed = Vec::new();
            if p == partner(me) {
                owed.push(Owed::of("weight_shares"));
            }
            if me == 0 {
                owed.push(Owed::of("final_scores"));
            }
            owed
        });
        self.round = Round::End;
        Ok(())
    }

    /// The rows of the final reveal: the validation rows, or the training rows without a
    /// validation split.
    fn revealed_rows(&self) -> (RevealedRows, &[usize]) {
        let split = &self.data.split;
        if split.validation.is_empty() {
            (RevealedRows::Training, &split.train)
        } else {
            (RevealedRows::Validation, &split.validation)
        }
    }

    /// A host's part of the job's one reveal: its final partial scores on the revealed rows,
    /// blinded by the pairwise masks among the hosts.
    fn reveal(&mut self, weights: &[f64]) -> Result<(), FedError> {
        let rows = self.revealed_rows().1;
        let epochs = self.step as usize;
        let mut masked = self
            .data
            .scores_with(weights, rows)
            .into_iter()
            .map(encode_score)
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| FedError::Diverged {
                epoch: epochs,
                reason: format!(
                    "{}'s final scores left the fixed-point range",
                    self.data.party
                ),
            })?;
        let revealed_rows = rows.len();
        let guest = self.names[0].clone();
        self.masks
            .as_ref()
            .ok_or_else(|| FedError::protocol(&guest, "no pairwise masks before the keys"))?
            .apply_without(&guest, b"final scores", &mut masked);
        self.send(0, Message::FinalScores { masked });
        let outcome = HostOutcome {
            model: self.data.model(&self.model_id, weights),
            epochs,
            feature_frac_bits: self.data.quantised.frac_bits,
            revealed_rows,
        };
        if let Role::Host(state) = &mut self.role {
            state.outcome = Some(outcome);
        }
        Ok(())
    }

    /// The guest's end: the joint scores of the revealed rows, the calibration, the metrics.
    fn finish(&mut self) -> Result<(), FedError> {
        let (which, rows) = self.revealed_rows();
        let rows = rows.to_vec();
        let model_id = self.model_id.clone();
        let frac_bits = self.data.quantised.frac_bits;
        let Role::Guest(state) = &mut self.role else {
            unreachable!("the guest finishes")
        };
        let weights = state
            .weights
            .take()
            .ok_or_else(|| FedError::protocol(&self.names[1], "no share of the guest's weights"))?;
        let mut total = vec![0u64; rows.len()];
        for scores in state.scores.iter_mut() {
            let scores = scores.take().expect("every host's scores arrived");
            for (t, s) in total.iter_mut().zip(scores) {
                *t = t.wrapping_add(s);
            }
        }
        let own = self.data.scores_with(&weights, &rows);
        let joint: Vec<f64> = own
            .iter()
            .zip(&total)
            .map(|(z, &h)| z + decode_score(h))
            .collect();
        let labels: Vec<f64> = rows.iter().map(|&r| state.labels[r]).collect();
        let mut model = self.data.model(&model_id, &weights);
        model.calibration = Calibration::fit(&joint, &labels);
        let probabilities: Vec<f64> = joint.iter().map(|&z| model.probability(z)).collect();
        let metrics = evaluate(&probabilities, &labels)?;
        let base_rate = labels.iter().sum::<f64>() / labels.len().max(1) as f64;
        state.outcome = Some(GuestOutcome {
            convergence: Convergence::judge(&state.history, base_rate, state.stop),
            history: std::mem::take(&mut state.history),
            best_epoch: state.best_epoch,
            stop: state.stop,
            feature_frac_bits: frac_bits,
            share_frac_bits: crate::shared::WEIGHT_BITS,
            evaluation: FinalEvaluation {
                rows: which,
                count: rows.len(),
                metrics,
                calibration: model.calibration,
                reliability: reliability(&probabilities, &labels, 10),
                probabilities,
                labels,
            },
            model,
        });
        Ok(())
    }
}
