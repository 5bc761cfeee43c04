//! What guest and hosts share in protocol v2: the party core (data, keys, weights), its
//! encrypted columns with their integrity checks, and the per-step exchange of products.
//!
//! Every party P holds its quantised features X̃_P (the guest's with a column of ones for the
//! intercept). Once per job it encrypts them under its own key, batch by batch, and sends them
//! to every other party, with [`CHECK_COLUMNS`] extra columns (X̃_P·ρ_c modulo 2^117 for secret
//! uniform ρ_c) at secret positions. Per step, every party Q computes its residual share v_Q
//! (the guest's 0.25·z_G + 0.5 − y, a host's 0.25·z_k) and, for every other party P, the
//! product [[X̃_P]]^T·ṽ_Q under P's key; it masks, floods and releases it to P with its masks
//! as additive shares, blinded by pairwise masks among the parties other than P. P decrypts
//! the releases, adds the corrections (the pairwise masks cancel), and holds
//! X̃_P^T·Σ_{Q≠P} ṽ_Q: with its own local term X_P^T·v_P, its gradient X_P^T·d.
//!
//! Nothing a party decrypts is ever sent back to the party that made the ciphertext: P keeps
//! what it decrypts. Before using it, P checks the check columns (they must equal ρ_c times
//! the real columns, modulo the plaintext modulus) and bounds every real result by what
//! honest shares allow; a product altered by one of the senders passes with probability at
//! most 2^-40 (see [`Core::gradient`]).

use he::{
    signed_residue, EncryptedVector, PackingKey, PreparedColumns, PreparedMatrix, PublicKey,
    SecretKey,
};

use crate::checkpoint::{Checkpoint, GuestProgress};
use crate::config::{OptimizerState, TrainConfig};
use crate::data::Table;
use crate::error::FedError;
use crate::masks::{random_bytes, MaskSecret, PairwiseMasks, Split};
use crate::message::{Message, PartyKeys, Proposal};
use crate::model::{ModelPart, Standardised};
use crate::prep::{Fitted, Prep};
use crate::protocol::{
    check_weights, encode_fixed, linear_scores, packing_levels, unexpected, Quantised, MAX_SHARE,
    PARAMS,
};
use crate::session::Mailbox;

/// Integrity-check columns each party appends to its encrypted columns.
pub(crate) const CHECK_COLUMNS: usize = 8;

/// The public bound on honest products is at most 2^-(CHECK_MARGIN_BITS + 1) of the plaintext
/// modulus, so each check column lets an altered product through with probability ≤ 2^-5,
/// all of them together with probability ≤ 2^-40.
const CHECK_MARGIN_BITS: u32 = 5;

/// Check columns are computed modulo 2^117: at most the modulus of any release (p − ℓ with
/// ℓ ≥ 1), and within the plaintext space as signed values.
const CHECK_BITS: u32 = 117;

/// Most encrypted columns a peer may announce (its features, and its check columns): every
/// column costs this party 2 × 262 KB of transformed ciphertext per 8192 rows.
const MAX_PEER_COLUMNS: usize = 1024 + CHECK_COLUMNS;

/// The loss round's modulus: two results per release, one packing level.
pub(crate) const LOSS_RELEASE_BITS: u32 = 117;

/// Most fraction bits of a residual share: |share| < 8 then fits a plaintext entry (2^15).
const MAX_SHARE_BITS: u32 = 12;

/// Fewest fraction bits of a residual share the protocol accepts.
const MIN_SHARE_BITS: u32 = 4;

/// Another party of the job, as this party sees it.
pub(crate) struct Peer {
    pub(crate) name: String,
    pub(crate) key: PublicKey,
    pub(crate) packing: PackingKey,
    /// Encrypted columns the peer sends (real and check).
    pub(crate) columns: usize,
    /// The peer's columns of the batch being received.
    received: Vec<EncryptedVector>,
    /// The peer's encrypted columns per batch, transformed for products.
    prepared: Vec<PreparedColumns>,
}

/// A party's secret integrity checks: where its real and check columns sit among the columns
/// it sends, and each check's coefficients.
struct Checks {
    /// Position of real column j.
    real: Vec<usize>,
    /// Position of check column c and its coefficients ρ_c (modulo 2^117).
    checks: Vec<(usize, Vec<u128>)>,
}

impl Checks {
    fn random(real_columns: usize) -> Result<Checks, FedError> {
        let total = real_columns + CHECK_COLUMNS;
        let mut bytes = vec![0u8; 16 * (total + CHECK_COLUMNS * real_columns)];
        random_bytes(&mut bytes)?;
        let mut words = bytes
            .chunks_exact(16)
            .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes")));
        // A uniform permutation of the positions (Fisher–Yates; the modulo bias of a 128-bit
        // draw over ≤ 2^16 positions is below 2^-112).
        let mut positions: Vec<usize> = (0..total).collect();
        for i in (1..total).rev() {
            let j = (words.next().unwrap_or(0) % (i as u128 + 1)) as usize;
            positions.swap(i, j);
        }
        let modulus = (1u128 << CHECK_BITS) - 1;
        let checks = (0..CHECK_COLUMNS)
            .map(|c| {
                let rho = (0..real_columns)
                    .map(|_| words.next().unwrap_or(0) & modulus)
                    .collect();
                (positions[real_columns + c], rho)
            })
            .collect();
        Ok(Checks {
            real: positions[..real_columns].to_vec(),
            checks,
        })
    }
}

/// A party's data in a job: its design columns prepared, standardised and quantised on the
/// training rows of the job's split.
pub(crate) struct Data {
    pub(crate) party: String,
    /// The party's design columns (its prepared columns, see [`crate::prep`]).
    pub(crate) table: Table,
    fitted: Fitted,
    pub(crate) split: Split,
    pub(crate) standardised: Standardised,
    pub(crate) quantised: Quantised,
    /// Whether the last weight is an intercept (the guest's).
    intercept: bool,
}

impl Data {
    /// Prepares, standardises and quantises the party's table on the training rows derived
    /// from the job's seed.
    pub(crate) fn new(
        party: &str,
        table: &Table,
        prep: &Prep,
        config: &TrainConfig,
        intercept: bool,
    ) -> Result<Data, FedError> {
        let split = Split::new(table.rows(), config.seed, config.validation_fraction);
        let fitted = Fitted::fit(party, prep, table, &split.train)?;
        let table = fitted.design(table)?;
        let standardised = Standardised::fit(party, &table, &split.train)?;
        let quantised = Quantised::new(standardised.values.view(), &split.train, intercept);
        Ok(Data {
            party: party.to_owned(),
            table,
            fitted,
            split,
            standardised,
            quantised,
            intercept,
        })
    }

    /// This party's partial scores on `rows` with `weights` (the intercept included).
    pub(crate) fn scores_with(&self, weights: &[f64], rows: &[usize]) -> Vec<f64> {
        let width = self.table.features();
        let mut z = linear_scores(self.standardised.values.view(), rows, &weights[..width]);
        if self.intercept {
            for z in &mut z {
                *z += weights[width];
            }
        }
        z
    }

    /// This party's model part with the given weights.
    pub(crate) fn model(&self, model_id: &str, weights: &[f64]) -> ModelPart {
        let width = self.table.features();
        self.standardised.model(
            &self.fitted,
            model_id,
            &self.party,
            self.table.missing(),
            &weights[..width],
            self.intercept.then(|| weights[width]),
        )
    }
}

/// One party's state over a job: the same for guest and hosts.
pub(crate) struct Core {
    pub(crate) data: Data,
    pub(crate) config: TrainConfig,
    /// The job's fixed partition of the training rows.
    pub(crate) batches: Vec<Vec<usize>>,
    pub(crate) secret: SecretKey,
    public: PublicKey,
    packing: PackingKey,
    mask_secret: MaskSecret,
    checks: Checks,
    /// Every other party, the guest first, then the hosts in job order.
    pub(crate) peers: Vec<Peer>,
    masks: Option<PairwiseMasks>,
    /// This party's weights (the intercept last, for the guest).
    pub(crate) weights: Vec<f64>,
    optimizer: OptimizerState,
    /// Fraction bits of the residual shares (public: derived from the job's shape).
    pub(crate) share_bits: u32,
    /// Update index.
    pub(crate) step: u64,
    /// The epoch being run (1-based; 0 before the first).
    pub(crate) epoch: usize,
    /// The epoch's batch order and the position in it.
    order: Vec<usize>,
    position: usize,
    /// The weights at the start of the epoch.
    epoch_start: Vec<f64>,
    /// This party's residual share on the current batch, and the step's learning rate.
    share: Vec<f64>,
    rate: f64,
    /// This party's encrypted columns queued so far (batches).
    columns_sent: usize,
    /// The current step's products are still to be computed (see `before_transmit`).
    step_due: bool,
}

impl Core {
    /// Prepares, standardises and quantises the party's table on the training rows derived
    /// from the job's seed, draws its keys and its integrity checks.
    pub(crate) fn new(
        party: &str,
        table: &Table,
        prep: &Prep,
        config: TrainConfig,
        intercept: bool,
    ) -> Result<Core, FedError> {
        let data = Data::new(party, table, prep, &config, intercept)?;
        let batches = data.split.partition(config.seed, config.batch_size);
        let (secret, public) = SecretKey::generate(&PARAMS);
        let columns = data.quantised.columns;
        let packing = secret
            .packing_key(packing_levels(columns + CHECK_COLUMNS))
            .map_err(FedError::he("making the packing key"))?;
        let checks = Checks::random(columns)?;
        Ok(Core {
            data,
            config,
            batches,
            secret,
            public,
            packing,
            mask_secret: MaskSecret::random()?,
            checks,
            peers: Vec::new(),
            masks: None,
            weights: vec![0.0; columns],
            optimizer: OptimizerState::new(columns),
            share_bits: 0,
            step: 0,
            epoch: 0,
            order: Vec::new(),
            position: 0,
            epoch_start: Vec::new(),
            share: Vec::new(),
            rate: 0.0,
            columns_sent: 0,
            step_due: false,
        })
    }

    /// Encrypted columns this party sends: its real columns and the check columns.
    pub(crate) fn sent_columns(&self) -> usize {
        self.data.quantised.columns + CHECK_COLUMNS
    }

    /// This party's keys and shape, for every peer.
    pub(crate) fn keys(&self) -> PartyKeys {
        PartyKeys {
            rows: self.data.table.rows() as u64,
            columns: self.sent_columns() as u32,
            key: self.public.clone(),
            packing: self.packing.clone(),
            mask_share: self.mask_secret.public(),
            frac_bits: self.data.quantised.frac_bits,
        }
    }

    /// Takes every peer's keys (in peer order), derives the pairwise masks and the
    /// residual-share format (from public quantities only, so every party derives the same).
    pub(crate) fn accept_keys(
        &mut self,
        job: &[u8; 16],
        peers: Vec<(String, PartyKeys)>,
    ) -> Result<(), FedError> {
        let rows = self.data.table.rows();
        let mut shares = Vec::with_capacity(peers.len());
        for (name, keys) in peers {
            if keys.rows != rows as u64 {
                return Err(FedError::RowCount {
                    party: name,
                    expected: rows,
                    got: keys.rows as usize,
                });
            }
            let columns = keys.columns as usize;
            if columns <= CHECK_COLUMNS || columns > MAX_PEER_COLUMNS {
                return Err(FedError::protocol(
                    &name,
                    format!("announces {columns} encrypted columns"),
                ));
            }
            if keys.packing.key_id() != keys.key.id() {
                return Err(FedError::protocol(&name, "packing key of another key pair"));
            }
            shares.push((name.clone(), keys.mask_share));
            self.peers.push(Peer {
                name,
                key: keys.key,
                packing: keys.packing,
                columns,
                received: Vec::new(),
                prepared: Vec::new(),
            });
        }
        self.masks = Some(PairwiseMasks::derive(
            job,
            &self.data.party,
            &self.mask_secret,
            &shares,
        )?);
        self.share_bits = self.choose_share_bits()?;
        Ok(())
    }

    /// The residual shares' fraction bits f: with ℓ the most packing levels of any party's
    /// release, E the evaluators per product (parties − 1) and b the largest batch, honest
    /// products are bounded by B = E·b·(2^13 − 1)·8·2^f; f is the largest value (at most 12)
    /// with 2·B ≤ 2^(p − ℓ − 5), which leaves the integrity checks their margin.
    fn choose_share_bits(&self) -> Result<u32, FedError> {
        let levels = self
            .peers
            .iter()
            .map(|p| p.columns)
            .chain(std::iter::once(self.sent_columns()))
            .map(packing_levels)
            .max()
            .unwrap_or(0);
        let evaluators = self.peers.len().max(1);
        let largest = self.batches.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let log2 = |x: usize| x.next_power_of_two().trailing_zeros() as i64;
        // log2(2·B) = log2 E + log2 b + 13 + 3 + f + 1 ≤ 118 − ℓ − 5.
        let room = i64::from(PARAMS.message_bits)
            - i64::from(CHECK_MARGIN_BITS)
            - i64::from(levels)
            - log2(evaluators)
            - log2(largest)
            - 17;
        if room < i64::from(MIN_SHARE_BITS) {
            return Err(FedError::config(
                "batch_size",
                format!(
                    "batches of {largest} rows with {} parties and {} packing levels leave \
                     {room} bits of precision for the residual (at least {MIN_SHARE_BITS} \
                     needed); use smaller batches",
                    evaluators + 1,
                    levels
                ),
            ));
        }
        Ok((room as u32).min(MAX_SHARE_BITS))
    }

    /// The public bound an evaluator declares on its products for a batch of `rows` rows.
    fn product_bound(&self, rows: usize) -> i128 {
        rows as i128 * i128::from(Quantised::MAX) * ((MAX_SHARE as i128) << self.share_bits)
    }

    /// This party's encrypted columns on batch `index` (in its secret order): sent to every
    /// peer, batch after batch.
    pub(crate) fn batch_columns(&self, index: usize) -> Result<Vec<EncryptedVector>, FedError> {
        let bound = PARAMS.max_message_abs();
        let modulus = (1u128 << CHECK_BITS) - 1;
        let batch = &self.batches[index];
        let real: Vec<Vec<i64>> = (0..self.data.quantised.columns)
            .map(|j| self.data.quantised.column(j, batch))
            .collect();
        let encrypt = |values: &[_]| {
            self.secret
                .encrypt(values, bound)
                .map_err(FedError::he("encrypting a column"))
        };
        let mut columns: Vec<Option<EncryptedVector>> = vec![None; self.sent_columns()];
        for (j, values) in real.iter().enumerate() {
            columns[self.checks.real[j]] = Some(encrypt(values)?);
        }
        for (position, rho) in &self.checks.checks {
            let check: Vec<i128> = (0..batch.len())
                .map(|i| {
                    let sum = real.iter().zip(rho).fold(0u128, |acc, (column, r)| {
                        acc.wrapping_add((column[i] as i128 as u128).wrapping_mul(*r))
                    });
                    signed_residue(sum & modulus, CHECK_BITS)
                })
                .collect();
            columns[*position] = Some(
                self.secret
                    .encrypt(&check, bound)
                    .map_err(FedError::he("encrypting a column"))?,
            );
        }
        Ok(columns
            .into_iter()
            .map(|c| c.expect("every position holds a real or a check column"))
            .collect())
    }

    /// Whether every peer's columns have all arrived.
    pub(crate) fn columns_complete(&self) -> bool {
        self.peers
            .iter()
            .all(|p| p.prepared.len() == self.batches.len())
    }

    /// The next column `peer` owes this party, as (batch, column), or `None` when all came.
    pub(crate) fn next_column(&self, peer: usize) -> Option<(usize, usize)> {
        let p = &self.peers[peer];
        (p.prepared.len() < self.batches.len()).then_some((p.prepared.len(), p.received.len()))
    }

    /// Takes one of `peer`'s encrypted columns; when a batch is complete, transforms it.
    pub(crate) fn accept_column(
        &mut self,
        peer: usize,
        batch: u32,
        column: u32,
        values: EncryptedVector,
    ) -> Result<(), FedError> {
        let name = self.peers[peer].name.clone();
        let Some((index, expected)) = self.next_column(peer) else {
            return Err(FedError::protocol(&name, "a column after all its columns"));
        };
        if batch as usize != index || column as usize != expected {
            return Err(FedError::protocol(
                &name,
                format!(
                    "expected encrypted column {expected} of batch {index}, got column \
                     {column} of batch {batch}"
                ),
            ));
        }
        let rows = self.batches[index].len();
        if values.len() != rows {
            return Err(FedError::protocol(
                &name,
                format!(
                    "column {column} of batch {index} holds {} values, the batch has {rows} rows",
                    values.len()
                ),
            ));
        }
        let p = &mut self.peers[peer];
        p.received.push(values);
        if p.received.len() == p.columns {
            let columns = std::mem::take(&mut p.received);
            let prepared = p
                .key
                .prepare_columns(&PARAMS, &columns)
                .map_err(FedError::he("preparing a party's encrypted columns"))?;
            p.prepared.push(prepared);
        }
        Ok(())
    }

    /// Queues this party's encrypted columns of the next batch for every peer; false once all
    /// are queued.
    pub(crate) fn queue_columns(&mut self, mailbox: &mut Mailbox) -> Result<bool, FedError> {
        // Peers are known once their keys arrived; nothing is sent before.
        if self.peers.is_empty() || self.columns_sent == self.batches.len() {
            return Ok(false);
        }
        let index = self.columns_sent;
        for (column, values) in self.batch_columns(index)?.into_iter().enumerate() {
            for peer in &self.peers {
                mailbox.send(
                    &peer.name,
                    Message::Columns {
                        batch: index as u32,
                        column: column as u32,
                        values: values.clone(),
                    },
                );
            }
        }
        self.columns_sent += 1;
        Ok(true)
    }

    /// Takes the peers' columns that have arrived; true once every column of every peer has
    /// arrived and this party has queued all of its own.
    pub(crate) fn take_columns(&mut self, mailbox: &mut Mailbox) -> Result<bool, FedError> {
        for p in 0..self.peers.len() {
            while self.next_column(p).is_some() {
                let name = self.peers[p].name.clone();
                let Some(message) = mailbox.take(&name) else {
                    break;
                };
                match message {
                    Message::Columns {
                        batch,
                        column,
                        values,
                    } => self.accept_column(p, batch, column, values)?,
                    other => return Err(unexpected(&name, "an encrypted column", &other)),
                }
            }
        }
        Ok(self.columns_complete() && self.columns_sent == self.batches.len())
    }

    /// The first peer whose columns are still due and not waiting in `mailbox`.
    pub(crate) fn awaiting_columns(&self, mailbox: &Mailbox) -> Option<&str> {
        self.peers
            .iter()
            .enumerate()
            .find(|(p, peer)| self.next_column(*p).is_some() && !mailbox.has(&peer.name))
            .map(|(_, peer)| peer.name.as_str())
    }

    /// Starts `epoch`: its batch order, the weights it starts from, and its first step.
    pub(crate) fn start_epoch(&mut self, epoch: usize) {
        self.epoch = epoch;
        self.order = Split::epoch_order(self.config.seed, epoch, self.batches.len());
        self.position = 0;
        self.epoch_start = self.weights.clone();
        self.step_due = true;
    }

    /// Whether the current step has yet to start: the peers' products for it must wait.
    pub(crate) fn step_due(&self) -> bool {
        self.step_due
    }

    /// What a session does before it transmits, once everything queued has gone out: queue
    /// its own next batch of columns (after its keys and before anything else, the order the
    /// peers read them in), else start a due step with `share`, this party's residual share
    /// on the step's batch. Starting steps only here lets an epoch's end reach the peers
    /// before this party computes. True when something was queued (the session then moves on).
    pub(crate) fn before_transmit(
        &mut self,
        mailbox: &mut Mailbox,
        share: impl FnOnce(&Core, &[usize]) -> Vec<f64>,
    ) -> Result<bool, FedError> {
        if !mailbox.outbox_is_empty() {
            return Ok(false);
        }
        if self.queue_columns(mailbox)? {
            return Ok(true);
        }
        if !self.step_due {
            return Ok(false);
        }
        self.step_due = false;
        let batch = self.order[self.position];
        let share = share(self, &self.batches[batch]);
        self.rate = self.config.rate(self.step, self.epoch);
        let messages = self.begin_step(self.epoch, batch, &share)?;
        self.share = share;
        mailbox.send_all(messages);
        Ok(true)
    }

    /// Ends the current step with the peers' products; true when the epoch has more batches
    /// (the next step is then due).
    pub(crate) fn end_step(&mut self, products: Vec<Message>) -> Result<bool, FedError> {
        let batch = self.order[self.position];
        let share = std::mem::take(&mut self.share);
        self.finish_step(self.epoch, batch, &share, products, self.rate)?;
        self.position += 1;
        self.step_due = self.position < self.order.len();
        Ok(self.step_due)
    }

    /// The learning rate of the epoch's last step.
    pub(crate) fn rate(&self) -> f64 {
        self.rate
    }

    /// ‖Δw‖² over the epoch so far.
    pub(crate) fn epoch_change(&self) -> f64 {
        crate::protocol::squared_distance(&self.epoch_start, &self.weights)
    }

    /// This party's partial scores on `rows` with `weights` (the intercept included).
    pub(crate) fn scores_with(&self, weights: &[f64], rows: &[usize]) -> Vec<f64> {
        self.data.scores_with(weights, rows)
    }

    /// Starts a mini-batch step: every peer's product with this party's residual share on
    /// the batch (`share`), released to that peer.
    pub(crate) fn begin_step(
        &self,
        epoch: usize,
        batch: usize,
        share: &[f64],
    ) -> Result<Vec<(String, Message)>, FedError> {
        let step = self.step;
        let rows = &self.batches[batch];
        let encoded = encode_fixed(
            &self.data.party,
            epoch,
            "residual share",
            share,
            self.share_bits,
            MAX_SHARE,
        )?;
        let vector = PreparedMatrix::new(&PARAMS, rows.len(), 1, &encoded)
            .map_err(FedError::he("preparing the residual share"))?;
        let bound = self.product_bound(rows.len());
        let masks = self.masks()?;
        self.peers
            .iter()
            .map(|peer| {
                let product = peer
                    .key
                    .multiply_columns(&PARAMS, &peer.prepared[batch], &vector, bound)
                    .map_err(FedError::he("multiplying a party's encrypted columns"))?;
                let (products, shares) = peer
                    .key
                    .mask_and_flood(&PARAMS, product, &peer.packing)
                    .map_err(FedError::he("releasing a product"))?;
                let mut correction = shares.shares();
                masks.apply_without(
                    &peer.name,
                    &product_context(step, &peer.name),
                    &mut correction,
                );
                Ok((
                    peer.name.clone(),
                    Message::Product {
                        step,
                        products,
                        correction,
                    },
                ))
            })
            .collect()
    }

    /// Ends the step: every peer's product (in peer order) is decrypted, summed, checked and,
    /// with this party's exact own term, turned into its gradient; the weights move.
    pub(crate) fn finish_step(
        &mut self,
        epoch: usize,
        batch: usize,
        share: &[f64],
        products: Vec<Message>,
        rate: f64,
    ) -> Result<(), FedError> {
        let step = self.step;
        let rows = &self.batches[batch];
        // This party's own term, exact: X_P^T v_P.
        let width = self.data.table.features();
        let mut local = vec![0.0; self.data.quantised.columns];
        for (&row, &v) in rows.iter().zip(share) {
            for (l, x) in local.iter_mut().zip(self.data.standardised.values.row(row)) {
                *l += x * v;
            }
            if self.data.intercept {
                local[width] += v;
            }
        }
        let (total, bits) = self.sum_products(step, products)?;
        let gradient = self.gradient(step, batch, &total, bits, &local)?;
        let unpenalised = usize::from(self.data.intercept);
        let config = self.config.clone();
        self.optimizer
            .step(&config, rate, &mut self.weights, &gradient, unpenalised);
        check_weights(&self.data.party, epoch, &self.weights)?;
        self.step += 1;
        Ok(())
    }

    /// Decrypts every peer's release for `step` and adds the corrections: Σ of the products,
    /// modulo 2^bits.
    fn sum_products(
        &self,
        step: u64,
        messages: Vec<Message>,
    ) -> Result<(Vec<u128>, u32), FedError> {
        let columns = self.sent_columns();
        let mut total = vec![0u128; columns];
        // Every evaluator declares the same public bound, so every release packs this party's
        // columns at the levels its packing key allows for them.
        let levels = packing_levels(columns).min(self.packing.levels());
        let expected_bits = PARAMS.message_bits - levels;
        for (peer, message) in self.peers.iter().zip(messages) {
            let (products, correction) = match message {
                Message::Product {
                    step: s,
                    products,
                    correction,
                } if s == step => (products, correction),
                other => return Err(unexpected(&peer.name, "a product", &other)),
            };
            if products.len() != columns || correction.len() != columns {
                return Err(FedError::protocol(
                    &peer.name,
                    format!(
                        "{} products and {} corrections, expected {columns}",
                        products.len(),
                        correction.len()
                    ),
                ));
            }
            if products.modulus_bits() != expected_bits {
                return Err(FedError::protocol(
                    &peer.name,
                    "a product released at another packing level than this party's key sets",
                ));
            }
            let decrypted = self
                .secret
                .decrypt_masked(&products)
                .map_err(FedError::he("decrypting a product"))?;
            for ((t, d), c) in total.iter_mut().zip(decrypted).zip(correction) {
                *t = t.wrapping_add(d).wrapping_add(c);
            }
        }
        let modulus = (1u128 << expected_bits) - 1;
        for t in &mut total {
            *t &= modulus;
        }
        Ok((total, expected_bits))
    }

    /// Checks the summed products and turns them into the mean gradient.
    ///
    /// Every check column must equal Σ_j ρ_cj·(real column j) modulo 2^bits, and every real
    /// result must lie within E·Σ_i|x̃_ij|·8·2^f. An alteration δ of the results that stays
    /// within those bounds has |δ| ≤ 2B ≤ 2^(bits − 5), so its lowest set bit is below
    /// bits − 5, and Σ_j ρ_cj·δ_j is uniform over at least 2^5 values for uniform secret ρ_c:
    /// each check column catches it with probability ≥ 1 − 2^-5, the eight together with
    /// ≥ 1 − 2^-40. Altering a check column alone is always caught.
    fn gradient(
        &self,
        step: u64,
        batch: usize,
        total: &[u128],
        bits: u32,
        local: &[f64],
    ) -> Result<Vec<f64>, FedError> {
        let modulus = (1u128 << bits) - 1;
        let senders = || {
            self.peers
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (position, rho) in &self.checks.checks {
            let combined = self
                .checks
                .real
                .iter()
                .zip(rho)
                .fold(0u128, |acc, (&p, &r)| {
                    acc.wrapping_add(total[p].wrapping_mul(r))
                });
            if total[*position].wrapping_sub(combined) & modulus != 0 {
                // The text is fixed: which check failed depends on secret coefficients and on
                // what the owner decrypted, and the error travels to the other parties.
                return Err(FedError::Integrity {
                    step,
                    senders: senders(),
                });
            }
        }
        let rows = &self.batches[batch];
        let l1 = self.data.quantised.column_l1(rows);
        let share_max = (MAX_SHARE as i128) << self.share_bits;
        let evaluators = self.peers.len() as i128;
        let scale = 2f64.powi(-((self.data.quantised.frac_bits + self.share_bits) as i32));
        self.checks
            .real
            .iter()
            .enumerate()
            .map(|(j, &position)| {
                let value = signed_residue(total[position], bits);
                if value.abs() > evaluators * i128::from(l1[j]) * share_max {
                    return Err(FedError::Integrity {
                        step,
                        senders: senders(),
                    });
                }
                Ok((local[j] + value as f64 * scale) / rows.len() as f64)
            })
            .collect()
    }

    /// Decrypts a loss product released to this party for `epoch` (two values modulo
    /// 2^117).
    pub(crate) fn decrypt_loss_product(
        &self,
        from: &str,
        epoch: usize,
        message: Message,
    ) -> Result<Vec<u128>, FedError> {
        match message {
            Message::LossProduct { epoch: e, products } if e == epoch as u64 => {
                if products.len() != 2 || products.modulus_bits() != LOSS_RELEASE_BITS {
                    return Err(FedError::protocol(
                        from,
                        "a loss product of the wrong shape",
                    ));
                }
                self.secret
                    .decrypt_masked(&products)
                    .map_err(FedError::he("decrypting a loss product"))
            }
            other => Err(unexpected(from, "a loss product", &other)),
        }
    }

    /// This party's checkpoint after the current epoch (see [`crate::checkpoint`]).
    pub(crate) fn checkpoint(
        &self,
        settings: [u8; 32],
        best_weights: Option<Vec<f64>>,
        last: bool,
        guest: Option<GuestProgress>,
    ) -> Checkpoint {
        Checkpoint {
            epoch: self.epoch,
            settings,
            step: self.step,
            weights: self.weights.clone(),
            optimizer: self.optimizer.clone(),
            best_weights,
            last,
            guest,
        }
    }

    /// Takes up the weights, optimiser state and update index of `checkpoint`, once it has
    /// been checked against the job's proposal.
    pub(crate) fn restore(
        &mut self,
        proposal: &Proposal,
        checkpoint: &Checkpoint,
    ) -> Result<(), FedError> {
        checkpoint.check(&self.data.party, proposal, self.data.quantised.columns)?;
        self.weights = checkpoint.weights.clone();
        self.optimizer = checkpoint.optimizer.clone();
        self.step = checkpoint.step;
        self.epoch = checkpoint.epoch;
        Ok(())
    }

    /// The pairwise masks (derived with the keys).
    pub(crate) fn masks(&self) -> Result<&PairwiseMasks, FedError> {
        self.masks.as_ref().ok_or_else(|| {
            FedError::protocol(&self.data.party, "no pairwise masks before the keys")
        })
    }

    /// This party's model part with the given weights.
    pub(crate) fn model(&self, model_id: &str, weights: &[f64]) -> ModelPart {
        self.data.model(model_id, weights)
    }
}

/// The pairwise-mask context of the products released to `owner` at `step`.
fn product_context(step: u64, owner: &str) -> Vec<u8> {
    let mut context = b"product ".to_vec();
    context.extend_from_slice(&step.to_le_bytes());
    context.extend_from_slice(owner.as_bytes());
    context
}

/// Draws a random 16-byte job nonce.
pub(crate) fn job_nonce() -> Result<[u8; 16], FedError> {
    let mut nonce = [0u8; 16];
    random_bytes(&mut nonce)?;
    Ok(nonce)
}
