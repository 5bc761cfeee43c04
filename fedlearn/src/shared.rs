//! Secret-shared training in Gram form, for the guest and any number of hosts
//! (`docs/training.md`, "Secret-shared weights").
//!
//! With the first-order residual d = ¼·z + ½ − y the objective is the quadratic
//! L(w) = log 2 + (1/n)·c·w + ½·wᵀHw with H = XᵀX/(4n) + λI′ (the intercept unpenalised) and
//! c = Xᵀ(½ − y). Party P preconditions its block of the gradient with the inverse of its own
//! diagonal block, M_P = H_PP^-1, which only P needs and P computes in the clear:
//!
//!   M_P·∇_P L = w_P + k_P + Σ_{Q≠P} K_PQ·w_Q,  k_P = M_P·c_P / n,  K_PQ = M_P·X_Pᵀ X_Q / (4n),
//!
//! and takes the step v ← μ·v − η·(w_P + k_P + Σ K_PQ·w_Q), w ← w + v (block Jacobi with
//! momentum). Nothing that depends on two parties' data exists in the clear:
//!
//! - K_PQ and K_QP are shared between P and Q (every pair, hosts among themselves too);
//! - a host's k and its weights and velocity are shared between the host and the guest; the
//!   guest's between the guest and the first host (the guest's *partner* is host 1, every
//!   host's is the guest). The guest's k_G depends on its data alone and is its own.
//!
//! Shares are residues modulo 2^108 (`shares`). A step costs one share × share product
//! between every ordered pair of parties, of the size of the weight vectors whatever the
//! number of rows, and a hand-over of the shares that landed elsewhere.
//!
//! **Set-up, per pair (P, Q), P the leader (the lower index; the guest leads every pair).**
//! 1. Each party sends the other its packing key ([`packing_levels`] levels, the same for
//!    every party of the job) and encrypts its quantised columns under its own key for it.
//! 2. Q multiplies P's encrypted columns by each of its own columns (the cross Gram, one
//!    release per column of Q); when P is the guest it multiplies Q's columns by 1 − 2y
//!    (2·c_Q). The evaluator keeps its masks as its share; the other decrypts its own. Both
//!    scale their shares to `GRAM_BITS` fraction bits of XᵀX / 2^t, 2^t ≥ 4n.
//! 3. Each encrypts the rows of its Gram share (the guest also its share of 2·c_Q); the other
//!    multiplies them by its integer preconditioner N = round(M·2^t/(4n)·2^PRECOND_BITS), which
//!    gives both shares of K_PQ, K_QP and k_Q.
//!
//! **A step.** Every party R sends every other party its shares of the weight vectors it
//! holds, gadget-encrypted (`shares`). Evaluator E multiplies them by its K shares: for each
//! weight vector w_Q in R's hands (Q ≠ E) its share of K_EQ, giving u_E; if R holds a share of
//! E's own weights (R is E's partner), its shares of K_PE for every P, giving u_P. E keeps the
//! masks, R decrypts; E also adds its products with its own weight shares. Then each party
//! that is neither P nor P's partner hands its share of u_P to P, masked with a stream it
//! shares with P's partner, who removes it (see [`Party::hand_over`]); P and its partner
//! truncate and update.

// Small dense linear algebra reads best with indices.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;

use he::{EncryptedBlocks, EncryptedVector, MaskedColumns, PackingKey, Params, PreparedBlocks};
use he::{PublicKey, SecretKey, SpreadMatrix};

use crate::error::FedError;
use crate::shares::{
    add, encrypt_vector, prepare_matrix, receive_product, release_product, rescale, residue, scale,
    signed, sub, truncate, SHARE_BITS,
};

/// Fraction bits of the scaled Gram shares.
const GRAM_BITS: u32 = 24;
/// Fraction bits of the integer preconditioner.
const PRECOND_BITS: u32 = 24;
/// Fraction bits of K.
const COUPLING_BITS: u32 = 20;
/// Fraction bits of weights, velocities and k.
pub(crate) const WEIGHT_BITS: u32 = 20;
/// Fraction bits of the public step size and momentum.
const RATE_BITS: u32 = 16;
/// Public bound on |quantised feature| (the `Quantised` format).
const FEATURE_BOUND: i128 = 1 << 13;

/// The party that holds the other share of P's weights: host 1 for the guest (party 0), the
/// guest for every host.
pub(crate) fn partner(party: usize) -> usize {
    usize::from(party == 0)
}

/// The weight vectors party R holds a share of, ascending: its own and those of the parties
/// whose partner it is.
fn holdings(party: usize, parties: usize) -> Vec<usize> {
    (0..parties)
        .filter(|&q| q == party || partner(q) == party)
        .collect()
}

/// What a party brings to the job.
pub(crate) struct PartyInput {
    /// Names of all parties, the guest first; this party's index into them.
    pub(crate) names: Vec<String>,
    pub(crate) index: usize,
    /// Column count and quantisation fraction bits of every party (public).
    pub(crate) widths: Vec<usize>,
    pub(crate) frac_bits: Vec<u32>,
    /// This party's quantised columns on the training rows, and on the validation rows
    /// (columns of length zero when the job has no validation rows).
    pub(crate) train: Vec<Vec<i64>>,
    pub(crate) validation: Vec<Vec<i64>>,
    /// Labels of the training and validation rows (the guest's only).
    pub(crate) labels: Option<(Vec<f64>, Vec<f64>)>,
    /// Index of the intercept column (not penalised), the guest's only.
    pub(crate) intercept: Option<usize>,
    /// L2 penalty λ, step size η and momentum μ (public settings).
    pub(crate) l2: f64,
    pub(crate) rate: f64,
    pub(crate) momentum: f64,
}

impl PartyInput {
    /// The party's columns and labels on a row set (0: training, 1: validation).
    fn set(&self, set: usize) -> (&[Vec<i64>], Option<&[f64]>) {
        match set {
            0 => (&self.train, self.labels.as_ref().map(|l| l.0.as_slice())),
            _ => (
                &self.validation,
                self.labels.as_ref().map(|l| l.1.as_slice()),
            ),
        }
    }
}

/// Packing levels of every party's packing key in a job of these widths and row sets: enough
/// to pack the most results any release holds, within the parameters. Share products (step,
/// coupling and loss releases) hold at most every party's width once per kind of matrix, and
/// their 108-bit results pack at most `message_bits − 1 − 108` levels; a Gram release holds
/// one result per column of the key owner. Public, so every party knows the level count of
/// every key it receives.
pub(crate) fn packing_levels(params: &Params, widths: &[usize], sets: usize) -> u32 {
    let levels = |results: usize| results.max(2).next_power_of_two().trailing_zeros();
    let share_fits = params.message_bits - 1 - SHARE_BITS;
    let shares = levels(widths.iter().sum::<usize>() * (1 + sets)).min(share_fits);
    let gram = levels(widths.iter().copied().max().unwrap_or(0));
    shares.max(gram).min(params.max_pack_levels)
}

/// What one pair (this party and a peer) builds in the set-up.
struct Pair {
    /// The peer's public key, and its packing key once it has come (the first message of
    /// the set-up).
    public: PublicKey,
    packing: Option<PackingKey>,
    /// The peer's columns under its key, transformed, per row set.
    columns: Vec<Option<PreparedBlocks>>,
    /// Per row set, share of the scaled Gram X_meᵀ X_peer (m_me × m_peer, row-major).
    gram: Vec<Vec<u128>>,
    /// Guest–host pairs, per row set: share of the host's scaled 2·c.
    label_term: Vec<Vec<u128>>,
    /// Shares of K_{me,peer} (m_me × m_peer) and K_{peer,me} (m_peer × m_me).
    coupling_mine: Vec<u128>,
    coupling_peer: Vec<u128>,
    /// Guest–host pairs: share of the host's k (WEIGHT_BITS).
    offset: Vec<u128>,
    /// Set-up phases done with this peer: its Gram releases, its coupling releases.
    gram_done: bool,
    coupling_done: bool,
}

/// What a party knows in the clear about one row set.
struct RowSet {
    rows: usize,
    /// ⌈log2 4n⌉: Grams are scaled to XᵀX / 2^t.
    norm_bits: u32,
    /// The party's own scaled Gram X_meᵀ X_me / 2^t at GRAM_BITS.
    own_gram: Vec<u128>,
    /// The guest's 4·c_G / 2^t at WEIGHT_BITS (empty for a host).
    own_label: Vec<u128>,
}

/// Shares of one party's weight vector, velocity and k, and of its loss terms.
struct Held {
    party: usize,
    weights: Vec<u128>,
    velocity: Vec<u128>,
    offset: Vec<u128>,
    /// Per row set, the share of 4·c_q / 2^t at WEIGHT_BITS.
    label: Vec<Vec<u128>>,
    /// The weights the last step started from, and per row set the share of
    /// s_q = 4·c_q/2^t + ½·Σ_P X_qᵀX_P w_P / 2^t at those weights.
    loss_weights: Vec<u128>,
    loss_terms: Vec<Vec<u128>>,
    /// The weights kept as the model (see [`Party::keep_best`]).
    kept: Vec<u128>,
}

/// One party's shares of a weight vector it holds, as a checkpoint keeps them.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HeldShares {
    /// Whose weights.
    pub(crate) party: usize,
    pub(crate) weights: Vec<u128>,
    pub(crate) velocity: Vec<u128>,
    /// The weights kept as the model so far.
    pub(crate) kept: Vec<u128>,
}

/// The products a step computes, per output party: u (with K) and, per row set, y (with
/// the scaled Grams).
#[derive(Clone, Copy)]
enum Kind {
    Coupling,
    Gram(usize),
}

/// One party's state.
pub(crate) struct Party {
    params: Params,
    input: PartyInput,
    secret: SecretKey,
    sets: Vec<RowSet>,
    /// N_me, row-major m_me × m_me.
    precond: Vec<i128>,
    /// −δ·M_me at COUPLING_BITS (empty when δ = 0).
    damping: Vec<u128>,
    /// The guest's k_G = M_G·c_G / n, its own (empty for a host).
    guest_offset: Vec<u128>,
    /// Packing levels of every key of the job ([`packing_levels`]).
    levels: u32,
    pairs: Vec<Option<Pair>>,
    held: Vec<Held>,
    /// Per peer R: the step product for R's weight shares.
    step_matrices: Vec<Option<SpreadMatrix>>,
    /// This step's shares, per kind and party P, of u_P and y_P.
    sums: Vec<Vec<Vec<u128>>>,
    /// This party's shares of the loss sums, per row set.
    loss: Vec<u128>,
    /// Between `begin_step` and `finish_step`.
    stepping: bool,
    /// Every value this party decrypted or was handed (tests audit that they are uniform).
    #[cfg(test)]
    seen: Vec<u128>,
}

impl Party {
    pub(crate) fn new(
        params: Params,
        input: PartyInput,
        secret: SecretKey,
        peers: Vec<Option<PublicKey>>,
    ) -> Result<Party, FedError> {
        let parties = input.names.len();
        let me = input.index;
        if parties < 2
            || input.widths.len() != parties
            || input.frac_bits.len() != parties
            || peers.len() != parties
            || me >= parties
            || peers
                .iter()
                .enumerate()
                .any(|(p, k)| k.is_some() == (p == me))
        {
            return Err(FedError::Config {
                field: "parties",
                reason: "every party needs a name, a width, fraction bits and keys".into(),
            });
        }
        if (me == 0) != input.labels.is_some() {
            return Err(FedError::Config {
                field: "labels",
                reason: "the guest, and only the guest, brings labels".into(),
            });
        }
        let mut sets = Vec::new();
        let mut train_dots = Vec::new();
        for set in 0..2 {
            let (columns, labels) = input.set(set);
            let rows = columns.first().map_or(0, Vec::len);
            if columns.len() != input.widths[me]
                || columns.iter().any(|c| c.len() != rows)
                || labels.is_some_and(|l| l.len() != rows)
            {
                return Err(FedError::LengthMismatch {
                    what: "shared training columns",
                    expected: rows,
                    got: columns.iter().map(Vec::len).min().unwrap_or(0),
                });
            }
            if rows == 0 {
                if set == 0 {
                    return Err(FedError::Config {
                        field: "rows",
                        reason: "a shared job needs training rows".into(),
                    });
                }
                continue;
            }
            let dots = gram_dots(columns);
            sets.push(row_set(&input, set, rows, &dots));
            if set == 0 {
                train_dots = dots;
            }
        }
        // M_P, from the same exact Gram of the training rows.
        let inverse = own_inverse(&input, &train_dots, sets[0].rows)?;
        let precond = preconditioner(&sets[0], &inverse);
        let damping = damping_block(&input, &inverse);
        let guest_offset = match me {
            0 => guest_offset(&input, &sets[0], &inverse),
            _ => Vec::new(),
        };
        let count = sets.len();
        let levels = packing_levels(&params, &input.widths, count);
        let pairs = peers
            .into_iter()
            .enumerate()
            .map(|(peer, keys)| {
                keys.map(|public| Pair {
                    public,
                    packing: None,
                    columns: (0..count).map(|_| None).collect(),
                    gram: vec![vec![0; input.widths[me] * input.widths[peer]]; count],
                    label_term: vec![Vec::new(); count],
                    coupling_mine: Vec::new(),
                    coupling_peer: Vec::new(),
                    offset: Vec::new(),
                    gram_done: false,
                    coupling_done: false,
                })
            })
            .collect();
        let held = holdings(me, parties)
            .into_iter()
            .map(|party| Held {
                party,
                weights: vec![0; input.widths[party]],
                velocity: vec![0; input.widths[party]],
                offset: vec![0; input.widths[party]],
                label: Vec::new(),
                loss_weights: Vec::new(),
                loss_terms: Vec::new(),
                kept: vec![0; input.widths[party]],
            })
            .collect();
        Ok(Party {
            params,
            secret,
            sets,
            precond,
            damping,
            guest_offset,
            levels,
            pairs,
            held,
            step_matrices: (0..parties).map(|_| None).collect(),
            sums: Vec::new(),
            loss: Vec::new(),
            stepping: false,
            #[cfg(test)]
            seen: Vec::new(),
            input,
        })
    }

    fn parties(&self) -> usize {
        self.input.names.len()
    }

    fn me(&self) -> usize {
        self.input.index
    }

    fn width(&self, party: usize) -> usize {
        self.input.widths[party]
    }

    fn kinds(&self) -> Vec<Kind> {
        std::iter::once(Kind::Coupling)
            .chain((0..self.sets.len()).map(Kind::Gram))
            .collect()
    }

    fn he(context: &'static str) -> impl Fn(he::HeError) -> FedError {
        move |source| FedError::He { context, source }
    }

    fn protocol(&self, peer: usize, reason: &str) -> FedError {
        FedError::Protocol {
            peer: self.input.names.get(peer).cloned().unwrap_or_default(),
            reason: reason.into(),
        }
    }

    fn pair(&self, peer: usize) -> Result<&Pair, FedError> {
        self.pairs
            .get(peer)
            .and_then(Option::as_ref)
            .ok_or_else(|| self.protocol(peer, "not a peer of this job"))
    }

    /// A peer's packing key; a set-up message before it is the peer's protocol error.
    fn packing(&self, peer: usize) -> Result<&PackingKey, FedError> {
        self.pair(peer)?
            .packing
            .as_ref()
            .ok_or_else(|| self.protocol(peer, "a set-up message before its packing key"))
    }

    /// This party's packing key, of the job's level count.
    pub(crate) fn packing_key(&self) -> Result<PackingKey, FedError> {
        self.secret
            .packing_key(self.levels)
            .map_err(Self::he("making the packing key"))
    }

    /// A peer's packing key: of the peer's key pair and of the job's level count, once.
    pub(crate) fn accept_packing(&mut self, peer: usize, key: PackingKey) -> Result<(), FedError> {
        let levels = self.levels;
        let pair = self.pair(peer)?;
        let problem = if key.key_id() != pair.public.id() {
            Some("a packing key of another key pair".to_owned())
        } else if key.levels() != levels {
            Some(format!(
                "a packing key of {} levels where the widths this party received call for \
                 {levels} (it miscounted, or a party announced different widths to different \
                 peers)",
                key.levels()
            ))
        } else if pair.packing.is_some() {
            Some("a second packing key".to_owned())
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(self.protocol(peer, &problem));
        }
        self.pair_mut(peer)?.packing = Some(key);
        Ok(())
    }

    fn pair_mut(&mut self, peer: usize) -> Result<&mut Pair, FedError> {
        if self.pairs.get(peer).is_some_and(Option::is_some) {
            Ok(self.pairs[peer].as_mut().expect("checked"))
        } else {
            Err(self.protocol(peer, "not a peer of this job"))
        }
    }

    /// Set-up 1: this party's columns under its own key, for every peer, per row set (the
    /// training rows, then the validation rows), in the block layout of the Gram products.
    pub(crate) fn encrypted_columns(&self) -> Result<Vec<EncryptedBlocks>, FedError> {
        (0..self.sets.len())
            .map(|set| {
                let columns = self.input.set(set).0;
                let values: Vec<i64> = columns.iter().flatten().copied().collect();
                self.secret.encrypt_blocks(
                    &values,
                    self.sets[set].rows,
                    columns.len(),
                    FEATURE_BOUND,
                    self.levels,
                )
            })
            .collect::<Result<_, _>>()
            .map_err(Self::he("encrypting columns"))
    }

    /// Set-up 1, receiving a peer's encrypted columns.
    pub(crate) fn accept_columns(
        &mut self,
        peer: usize,
        columns: &[EncryptedBlocks],
    ) -> Result<(), FedError> {
        self.pair(peer)?;
        let width = self.width(peer);
        if columns.len() != self.sets.len()
            || columns
                .iter()
                .zip(&self.sets)
                .any(|(c, set)| c.shape() != (set.rows, width))
        {
            return Err(self.protocol(peer, "its columns do not have the announced shape"));
        }
        // A Gram product releases a ciphertext's columns packed together: no more than the
        // job's packing keys pack.
        let least = self.params.poly_size >> self.levels;
        if columns.iter().any(|c| c.chunk() < least) {
            return Err(self.protocol(
                peer,
                "its columns share ciphertexts beyond its packing key's levels",
            ));
        }
        let params = self.params;
        let pair = self.pair_mut(peer)?;
        for (set, blocks) in columns.iter().enumerate() {
            let prepared = pair
                .public
                .prepare_blocks(&params, blocks)
                .map_err(Self::he("preparing a peer's columns"))?;
            pair.columns[set] = Some(prepared);
        }
        Ok(())
    }

    /// Set-up 2, for a peer, per row set: the follower of the pair releases the cross Gram
    /// (one release per own column), the guest releases 2·c of a host; a host leading a host
    /// pair sends nothing.
    pub(crate) fn gram_releases(&mut self, peer: usize) -> Result<Vec<MaskedColumns>, FedError> {
        self.pair(peer)?;
        let me = self.me();
        if me != 0 && me < peer {
            return Ok(Vec::new());
        }
        let params = self.params;
        let mut releases = Vec::new();
        let mut shares_per_set = Vec::new();
        for set in 0..self.sets.len() {
            let (columns, labels) = self.input.set(set);
            let vectors: Vec<Vec<i64>> = match labels {
                Some(labels) => vec![labels.iter().map(|&y| 1 - 2 * y as i64).collect()],
                None => columns.to_vec(),
            };
            let pair = self.pair(peer)?;
            let peer_columns = pair.columns[set]
                .as_ref()
                .ok_or_else(|| self.protocol(peer, "its columns have not arrived"))?;
            let mut shares = Vec::new();
            for vector in &vectors {
                // A public bound (never one read from the data): |x| ≤ 2^13 on both sides.
                let bound = FEATURE_BOUND * FEATURE_BOUND * self.sets[set].rows as i128;
                let product = pair
                    .public
                    .multiply_blocks(&params, peer_columns, vector, bound)
                    .map_err(Self::he("multiplying a peer's columns"))?;
                let (masked, masks) = pair
                    .public
                    .mask_and_flood(&params, product, self.packing(peer)?)
                    .map_err(Self::he("releasing a Gram product"))?;
                shares.extend(masks.shares().into_iter().map(|s| residue(s as i128)));
                releases.push(masked);
            }
            shares_per_set.push(shares);
        }
        let pair = self.pair_mut(peer)?;
        for (set, shares) in shares_per_set.into_iter().enumerate() {
            if me == 0 {
                // The guest's share of the host's 2·c.
                pair.label_term[set] = shares;
            } else {
                // Release j is X_peerᵀ x_j: row j of this party's share of X_meᵀ X_peer.
                pair.gram[set] = shares;
            }
        }
        Ok(releases)
    }

    /// Set-up 2, receiving a peer's releases; then both scale their shares.
    pub(crate) fn accept_gram(
        &mut self,
        peer: usize,
        releases: &[MaskedColumns],
    ) -> Result<(), FedError> {
        if self.pair(peer)?.gram_done {
            return Err(self.protocol(peer, "its Gram releases came twice"));
        }
        let me = self.me();
        let (m, peer_m) = (self.width(me), self.width(peer));
        let per_set = if me < peer {
            peer_m
        } else if peer == 0 {
            1
        } else {
            0
        };
        if releases.len() != per_set * self.sets.len() {
            return Err(self.protocol(peer, "wrong number of Gram releases"));
        }
        let mut decrypted = Vec::with_capacity(releases.len());
        for release in releases {
            let values = self
                .secret
                .decrypt_masked(release)
                .map_err(Self::he("decrypting a Gram release"))?;
            if values.len() != m || release.modulus_bits() < SHARE_BITS {
                return Err(self.protocol(peer, "a Gram release has the wrong shape"));
            }
            #[cfg(test)]
            self.seen.extend(values.iter().map(|&x| residue(x as i128)));
            decrypted.push(values);
        }
        let first = me < peer;
        let frac = &self.input.frac_bits;
        // 2·c_H at 2^(f_H + 1) → 4·c_H / 2^t at 2^GRAM_BITS (see `preconditioner`).
        let host = me.max(peer);
        let shifts: Vec<(i32, i32)> = self
            .sets
            .iter()
            .map(|set| {
                (
                    GRAM_BITS as i32 - (frac[me] + frac[peer] + set.norm_bits) as i32,
                    GRAM_BITS as i32 + 1 - (frac[host] + set.norm_bits) as i32,
                )
            })
            .collect();
        let pair = self.pair_mut(peer)?;
        for (set, &(gram_shift, label_shift)) in shifts.iter().enumerate() {
            let mine = &decrypted[set * per_set..(set + 1) * per_set];
            if first {
                // Release j is column j of X_meᵀ X_peer.
                for (j, column) in mine.iter().enumerate() {
                    for i in 0..m {
                        pair.gram[set][i * peer_m + j] = residue(column[i] as i128);
                    }
                }
            } else if peer == 0 {
                pair.label_term[set] = mine[0].iter().map(|&x| residue(x as i128)).collect();
            }
            for x in &mut pair.gram[set] {
                *x = rescale(*x, gram_shift, first);
            }
            for x in &mut pair.label_term[set] {
                *x = rescale(*x, label_shift, first);
            }
        }
        pair.gram_done = true;
        Ok(())
    }

    /// Set-up 3, for a peer: the rows of this party's training Gram share (and the guest's
    /// share of the host's 2·c), gadget-encrypted, for the peer to multiply by its
    /// preconditioner.
    pub(crate) fn coupling_vectors(
        &self,
        peer: usize,
    ) -> Result<Vec<Vec<EncryptedVector>>, FedError> {
        let pair = self.pair(peer)?;
        if !pair.gram_done {
            return Err(self.protocol(peer, "coupling before its Gram releases"));
        }
        let peer_m = self.width(peer);
        let encrypt =
            |v: &[u128]| encrypt_vector(&self.secret, &self.params, self.levels, v, peer_m);
        let mut out: Vec<Vec<EncryptedVector>> = pair.gram[0]
            .chunks(peer_m)
            .map(encrypt)
            .collect::<Result<_, _>>()?;
        if self.me() == 0 {
            out.push(encrypt(&pair.label_term[0])?);
        }
        Ok(out)
    }

    /// Set-up 3, a peer's vectors: N_me times each (column i of K_{me,peer}; a host also gets
    /// the guest's share of its 2·c, giving k), released to the peer. Keeps the masks and adds
    /// its local part N_me·(own share).
    pub(crate) fn coupling_releases(
        &mut self,
        peer: usize,
        vectors: &[Vec<EncryptedVector>],
    ) -> Result<Vec<MaskedColumns>, FedError> {
        if !self.pair(peer)?.gram_done {
            return Err(self.protocol(peer, "coupling before its Gram releases"));
        }
        let me = self.me();
        let (m, peer_m) = (self.width(me), self.width(peer));
        let expected = peer_m + usize::from(peer == 0);
        if vectors.len() != expected {
            return Err(self.protocol(peer, "wrong number of coupling vectors"));
        }
        let precond: Vec<u128> = self.precond.iter().map(|&x| residue(x)).collect();
        let matrix = prepare_matrix(&self.params, &precond, m, m, self.levels)?;
        let name = &self.input.names[peer];
        let (pair, packing) = (self.pair(peer)?, self.packing(peer)?);
        let mut coupling = matmul(&precond, &pair.gram[0], m, m, peer_m);
        let mut offset = Vec::new();
        let mut releases = Vec::with_capacity(vectors.len());
        for (i, vector) in vectors.iter().enumerate() {
            let (masked, shares) =
                release_product(&self.params, &pair.public, packing, vector, &matrix, name)?;
            if i < peer_m {
                for r in 0..m {
                    coupling[r * peer_m + i] = add(coupling[r * peer_m + i], shares[r]);
                }
            } else {
                let local = matmul(&precond, &pair.label_term[0], m, m, 1);
                offset = local
                    .iter()
                    .zip(&shares)
                    .map(|(&a, &b)| add(a, b))
                    .collect();
            }
            releases.push(masked);
        }
        let pair = self.pair_mut(peer)?;
        pair.coupling_mine = coupling;
        if !offset.is_empty() {
            pair.offset = offset;
        }
        Ok(releases)
    }

    /// Set-up 3, receiving: this party's shares of K_{peer,me} (and the guest's of a host's
    /// k). Both K shares go to COUPLING_BITS and k to WEIGHT_BITS.
    pub(crate) fn accept_coupling(
        &mut self,
        peer: usize,
        releases: &[MaskedColumns],
    ) -> Result<(), FedError> {
        let pair = self.pair(peer)?;
        if pair.coupling_done || pair.coupling_mine.is_empty() {
            return Err(self.protocol(peer, "its coupling releases came twice or too early"));
        }
        let me = self.me();
        let (m, peer_m) = (self.width(me), self.width(peer));
        let expected = m + usize::from(me == 0);
        if releases.len() != expected {
            return Err(self.protocol(peer, "wrong number of coupling releases"));
        }
        let name = self.input.names[peer].clone();
        let mut coupling = vec![0u128; peer_m * m];
        let mut offset = None;
        for (i, release) in releases.iter().enumerate() {
            let shares = receive_product(&self.secret, release, peer_m, &name)?;
            #[cfg(test)]
            self.seen.extend(&shares);
            if i < m {
                for r in 0..peer_m {
                    coupling[r * m + i] = shares[r];
                }
            } else {
                offset = Some(shares);
            }
        }
        let first = me < peer;
        let pair = self.pair_mut(peer)?;
        if let Some(offset) = offset {
            pair.offset = offset;
        }
        pair.coupling_peer = coupling;
        let down = PRECOND_BITS + GRAM_BITS - COUPLING_BITS;
        for x in pair.coupling_mine.iter_mut().chain(&mut pair.coupling_peer) {
            *x = truncate(*x, down, first);
        }
        let down = PRECOND_BITS + GRAM_BITS - WEIGHT_BITS;
        for x in &mut pair.offset {
            *x = truncate(*x, down, first);
        }
        pair.coupling_done = true;
        Ok(())
    }

    /// Set-up done with every peer: places the shares of k and of the loss terms' 4c/2^t and
    /// prepares the step products.
    pub(crate) fn finish_setup(&mut self) -> Result<(), FedError> {
        let me = self.me();
        if let Some(peer) = (0..self.parties())
            .find(|&p| p != me && self.pair(p).is_ok_and(|pair| !pair.coupling_done))
        {
            return Err(self.protocol(peer, "the set-up with it did not finish"));
        }
        let first = me == 0;
        for index in 0..self.held.len() {
            let party = self.held[index].party;
            let (offset, label) = if party == 0 && me == 0 {
                let labels = self.sets.iter().map(|s| s.own_label.clone()).collect();
                (self.guest_offset.clone(), labels)
            } else if party == 0 {
                // The guest's k and c are its own; the partner's shares are zero.
                let zero = vec![0; self.width(0)];
                (zero.clone(), vec![zero; self.sets.len()])
            } else {
                // A host's are shared within its pair with the guest.
                let peer = if me == 0 { party } else { 0 };
                let pair = self.pair(peer)?;
                if pair.offset.len() != self.width(party) {
                    return Err(self.protocol(peer, "the set-up did not finish"));
                }
                let down = GRAM_BITS - WEIGHT_BITS;
                let labels = pair
                    .label_term
                    .iter()
                    .map(|l| l.iter().map(|&x| truncate(x, down, first)).collect())
                    .collect();
                (pair.offset.clone(), labels)
            };
            self.held[index].offset = offset;
            self.held[index].label = label;
        }
        for peer in 0..self.parties() {
            if peer != me {
                self.step_matrices[peer] = Some(self.step_matrix(peer)?);
            }
        }
        Ok(())
    }

    /// The output parties of a release by `evaluator` of `holder`'s weight shares:
    /// the evaluator, then (when the holder is the evaluator's partner) every other party,
    /// ascending. Each output party's block holds every [`Kind`] in turn.
    fn outputs(&self, evaluator: usize, holder: usize) -> Vec<usize> {
        let mut out = vec![evaluator];
        if partner(evaluator) == holder {
            out.extend((0..self.parties()).filter(|&p| p != evaluator));
        }
        out
    }

    /// This party's share of the (p, q) block of a kind's matrix, entry (r, c), if it holds
    /// one: K_{me,q} or K_{p,me} for coupling (and its damping block −δ·M_me on its own
    /// weights); the scaled Gram for a row set (its own block
    /// in the clear).
    fn block(&self, kind: Kind, p: usize, q: usize) -> Result<Option<Block<'_>>, FedError> {
        let me = self.me();
        Ok(match kind {
            Kind::Coupling if p == me && q != me => {
                Some(Block::RowMajor(&self.pair(q)?.coupling_mine, self.width(q)))
            }
            Kind::Coupling if q == me && p != me => Some(Block::RowMajor(
                &self.pair(p)?.coupling_peer,
                self.width(me),
            )),
            Kind::Coupling if p == me && !self.damping.is_empty() => {
                Some(Block::RowMajor(&self.damping, self.width(me)))
            }
            Kind::Gram(set) if p == me && q != me => {
                Some(Block::RowMajor(&self.pair(q)?.gram[set], self.width(q)))
            }
            Kind::Gram(set) if q == me && p != me => {
                Some(Block::Transposed(&self.pair(p)?.gram[set], self.width(p)))
            }
            Kind::Gram(set) if p == me => {
                Some(Block::RowMajor(&self.sets[set].own_gram, self.width(me)))
            }
            _ => None,
        })
    }

    /// The matrix this party applies to `holder`'s weight shares.
    fn step_matrix(&self, holder: usize) -> Result<SpreadMatrix, FedError> {
        let me = self.me();
        let inputs = holdings(holder, self.parties());
        let outputs = self.outputs(me, holder);
        let kinds = self.kinds();
        let width: usize = inputs.iter().map(|&q| self.width(q)).sum();
        let height: usize = outputs.iter().map(|&p| self.width(p)).sum::<usize>() * kinds.len();
        let mut matrix = vec![0u128; height * width];
        let mut column = 0;
        for &q in &inputs {
            let mut row = 0;
            for &p in &outputs {
                for &kind in &kinds {
                    if let Some(block) = self.block(kind, p, q)? {
                        for r in 0..self.width(p) {
                            for c in 0..self.width(q) {
                                matrix[(row + r) * width + column + c] = block.at(r, c);
                            }
                        }
                    }
                    row += self.width(p);
                }
            }
            column += self.width(q);
        }
        prepare_matrix(&self.params, &matrix, height, width, self.levels)
    }

    /// A step, 1: starts the sums with this party's products of its own shares, and returns
    /// its weight shares, gadget-encrypted, for every peer.
    pub(crate) fn begin_step(&mut self) -> Result<Vec<(usize, Vec<EncryptedVector>)>, FedError> {
        let kinds = self.kinds();
        let mut sums: Vec<Vec<Vec<u128>>> = kinds
            .iter()
            .map(|_| {
                (0..self.parties())
                    .map(|p| vec![0; self.width(p)])
                    .collect()
            })
            .collect();
        for held in &self.held {
            let q = held.party;
            for p in 0..self.parties() {
                for (k, &kind) in kinds.iter().enumerate() {
                    if let Some(block) = self.block(kind, p, q)? {
                        for r in 0..self.width(p) {
                            let term = (0..self.width(q)).fold(0u128, |acc, c| {
                                add(acc, block.at(r, c).wrapping_mul(held.weights[c]))
                            });
                            sums[k][p][r] = add(sums[k][p][r], term);
                        }
                    }
                }
            }
        }
        self.sums = sums;
        self.stepping = true;
        let vector: Vec<u128> = self
            .held
            .iter()
            .flat_map(|h| h.weights.iter().copied())
            .collect();
        let me = self.me();
        let kinds = self.kinds().len();
        (0..self.parties())
            .filter(|&peer| peer != me)
            .map(|peer| {
                let outputs: usize = self.outputs(peer, me).iter().map(|&p| self.width(p)).sum();
                let encrypted = encrypt_vector(
                    &self.secret,
                    &self.params,
                    self.levels,
                    &vector,
                    outputs * kinds,
                )?;
                Ok((peer, encrypted))
            })
            .collect()
    }

    /// A step, 2: the product of `holder`'s weight shares with this party's shares, released
    /// to the holder; the masks join this party's sums.
    pub(crate) fn step_release(
        &mut self,
        holder: usize,
        vector: &[EncryptedVector],
    ) -> Result<MaskedColumns, FedError> {
        if !self.stepping {
            return Err(self.protocol(holder, "a step vector outside a step"));
        }
        let matrix = self
            .step_matrices
            .get(holder)
            .and_then(Option::as_ref)
            .ok_or_else(|| self.protocol(holder, "a step before the set-up finished"))?;
        let pair = self.pair(holder)?;
        let (masked, shares) = release_product(
            &self.params,
            &pair.public,
            self.packing(holder)?,
            vector,
            matrix,
            &self.input.names[holder],
        )?;
        self.add_outputs(self.me(), holder, &shares);
        Ok(masked)
    }

    /// A step, 3: `evaluator`'s release of its product with this party's weight shares.
    pub(crate) fn accept_step_release(
        &mut self,
        evaluator: usize,
        release: &MaskedColumns,
    ) -> Result<(), FedError> {
        self.pair(evaluator)?;
        if !self.stepping {
            return Err(self.protocol(evaluator, "a step release outside a step"));
        }
        let outputs = self.outputs(evaluator, self.me());
        let expected = outputs.iter().map(|&p| self.width(p)).sum::<usize>() * self.kinds().len();
        let name = self.input.names[evaluator].clone();
        let shares = receive_product(&self.secret, release, expected, &name)?;
        #[cfg(test)]
        self.seen.extend(&shares);
        self.add_outputs(evaluator, self.me(), &shares);
        Ok(())
    }

    fn add_outputs(&mut self, evaluator: usize, holder: usize, shares: &[u128]) {
        let mut at = 0;
        for p in self.outputs(evaluator, holder) {
            let width = self.width(p);
            for sums in &mut self.sums {
                accumulate(&mut sums[p], &shares[at..at + width]);
                at += width;
            }
        }
    }

    /// A step, 4: this party's shares of the sums of every party P it neither is nor partners,
    /// for P, each masked with the stream this party shares with P's partner; and, for the
    /// parties this party partners, the opposite streams of every other holder added to its
    /// own shares. The masks cancel between P and its partner, who hold P's weights, and what
    /// P receives is uniform: a share this party holds carries its decryptions of what other
    /// parties released to it, which must never return to them in the clear (a party that
    /// released a crafted ciphertext would read this party's decryption of it) and must not
    /// reach P bare either (P, when this party's partner is P, could cancel its masks).
    /// `mask(peer, about, values)` adds to `values` this party's stream with `peer` for the
    /// sums of `about` (pairwise streams: the two parties' cancel).
    /// Returns (P, shares of every kind in turn).
    pub(crate) fn hand_over(
        &mut self,
        mask: &mut dyn FnMut(usize, usize, &mut [u128]),
    ) -> Vec<(usize, Vec<u128>)> {
        let me = self.me();
        let parties = self.parties();
        let mut out = Vec::new();
        for p in (0..parties).filter(|&p| p != me) {
            let width = self.width(p);
            if partner(p) == me {
                for x in (0..parties).filter(|&x| x != me && x != p) {
                    let mut correction = vec![0u128; width * self.sums.len()];
                    mask(x, p, &mut correction);
                    for (sums, part) in self.sums.iter_mut().zip(correction.chunks(width)) {
                        let part: Vec<u128> = part.iter().map(|&v| residue(v as i128)).collect();
                        accumulate(&mut sums[p], &part);
                    }
                }
            } else {
                let mut shares: Vec<u128> = self.sums.iter().flat_map(|s| s[p].clone()).collect();
                mask(partner(p), p, &mut shares);
                for v in &mut shares {
                    *v = residue(*v as i128);
                }
                out.push((p, shares));
            }
        }
        out
    }

    /// A step, 5: `from`'s masked shares of this party's sums.
    pub(crate) fn accept_hand_over(&mut self, from: usize, share: &[u128]) -> Result<(), FedError> {
        let me = self.me();
        let about = me;
        if from >= self.parties()
            || from == me
            || from == partner(me)
            || share.len() != self.width(about) * self.sums.len()
        {
            return Err(self.protocol(from, "a share of sums it should not hand to this party"));
        }
        if !self.stepping {
            return Err(self.protocol(from, "a share of sums outside a step"));
        }
        #[cfg(test)]
        self.seen.extend(share);
        let width = self.width(about);
        for (sums, part) in self.sums.iter_mut().zip(share.chunks(width)) {
            accumulate(&mut sums[about], part);
        }
        Ok(())
    }

    /// A step, 6: truncates the shares for the weight vectors this party holds, keeps the loss
    /// terms of the weights the step started from, and updates velocities and weights.
    pub(crate) fn finish_step(&mut self) {
        self.stepping = false;
        let first = self.me() == 0;
        let rate = (self.input.rate * f64::from(1u32 << RATE_BITS)).round() as i128;
        let momentum = (self.input.momentum * f64::from(1u32 << RATE_BITS)).round() as i128;
        for held in &mut self.held {
            let q = held.party;
            // s = 4c/2^t + ½·y, y at GRAM_BITS + WEIGHT_BITS.
            held.loss_terms = held
                .label
                .iter()
                .enumerate()
                .map(|(set, label)| {
                    let y = &self.sums[1 + set][q];
                    label
                        .iter()
                        .zip(y)
                        .map(|(&l, &y)| add(l, truncate(y, GRAM_BITS + 1, first)))
                        .collect()
                })
                .collect();
            held.loss_weights = held.weights.clone();
            let u = &self.sums[0][q];
            for i in 0..held.weights.len() {
                // Δ = −(w + k + u); v ← trunc(μ·v + η·Δ); w ← w + v.
                let u = truncate(u[i], COUPLING_BITS, first);
                let delta = sub(0, add(add(held.weights[i], held.offset[i]), u));
                let next = add(scale(held.velocity[i], momentum), scale(delta, rate));
                held.velocity[i] = truncate(next, RATE_BITS, first);
                held.weights[i] = add(held.weights[i], held.velocity[i]);
            }
        }
    }

    /// Losses, 1 (the guest): for every weight vector it holds a share of — its own and every
    /// host's — its shares of the weights, loss terms (as of the last step's start) and
    /// velocity, gadget-encrypted, each for the other holder: (that holder, whose vector, the
    /// ciphertexts), the guest's own first. Only the guest decrypts in the loss round, and it
    /// keeps what it decrypts: no host ever decrypts a release of the guest whose decryption
    /// would come back to the guest in the loss sums.
    pub(crate) fn loss_vectors(
        &self,
    ) -> Result<Vec<(usize, usize, Vec<EncryptedVector>)>, FedError> {
        if self.me() != 0 {
            return Ok(Vec::new());
        }
        let outputs = self.sets.len() + 1;
        self.held
            .iter()
            .map(|held| {
                let vector: Vec<u128> = held
                    .loss_weights
                    .iter()
                    .chain(held.loss_terms.iter().flatten())
                    .chain(&held.velocity)
                    .copied()
                    .collect();
                let other = if held.party == 0 { 1 } else { held.party };
                let encrypted =
                    encrypt_vector(&self.secret, &self.params, self.levels, &vector, outputs)?;
                Ok((other, held.party, encrypted))
            })
            .collect()
    }

    fn own(&self) -> &Held {
        let me = self.me();
        self.held
            .iter()
            .find(|h| h.party == me)
            .expect("every party holds a share of its own weights")
    }

    /// The weight vectors whose loss terms this host releases to the guest, in the order the
    /// guest sends them: its own, and (host 1) the guest's first.
    pub(crate) fn loss_releases_due(&self) -> Vec<usize> {
        match self.me() {
            0 => Vec::new(),
            1 => vec![0, 1],
            me => vec![me],
        }
    }

    /// Losses, 2 (a host, for a vector `about` it holds a share of): w·s = a·d + c·b and ‖v‖²'s
    /// cross term 2·e·f per row set, where the guest holds (a, c, e) and this party (b, d, f);
    /// released to the guest, the masks kept (with this party's local terms, its share).
    pub(crate) fn loss_release(
        &mut self,
        about: usize,
        vector: &[EncryptedVector],
    ) -> Result<MaskedColumns, FedError> {
        if self.me() == 0 || !self.loss_releases_due().contains(&about) {
            return Err(self.protocol(0, "loss terms this party does not hold"));
        }
        let sets = self.sets.len();
        let m = self.width(about);
        let held = self
            .held
            .iter()
            .find(|h| h.party == about)
            .expect("a host holds the vectors it releases");
        if held.loss_terms.len() != sets {
            return Err(self.protocol(0, "loss terms before a step"));
        }
        // Row per set: (d, 0 …, b at the set's place, … 0) against (a, c_0, c_1 …, e); a last
        // row (0 …, 2·f) for the cross term of the step's change ‖e + f‖².
        let width = m * (2 + sets);
        let mut matrix = vec![0u128; (sets + 1) * width];
        for set in 0..sets {
            let row = &mut matrix[set * width..(set + 1) * width];
            row[..m].copy_from_slice(&held.loss_terms[set]);
            row[m * (1 + set)..m * (2 + set)].copy_from_slice(&held.loss_weights);
        }
        for (x, &f) in matrix[sets * width + m * (1 + sets)..]
            .iter_mut()
            .zip(&held.velocity)
        {
            *x = add(f, f);
        }
        let prepared = prepare_matrix(&self.params, &matrix, sets + 1, width, self.levels)?;
        let pair = self.pair(0)?;
        let (masked, shares) = release_product(
            &self.params,
            &pair.public,
            self.packing(0)?,
            vector,
            &prepared,
            &self.input.names[0],
        )?;
        let local = self.local_loss(about);
        self.add_loss(&shares, &local);
        Ok(masked)
    }

    /// Losses, 3 (the guest): `from`'s release of the loss terms of vector `about`.
    pub(crate) fn accept_loss_release(
        &mut self,
        from: usize,
        about: usize,
        release: &MaskedColumns,
    ) -> Result<(), FedError> {
        let expected = (about == 0 && from == 1) || (about == from && from != 0);
        if self.me() != 0 || !expected || from >= self.parties() {
            return Err(self.protocol(from, "a loss release this party does not expect"));
        }
        let held = self.held.iter().find(|h| h.party == about);
        if held.is_none_or(|h| h.loss_terms.len() != self.sets.len()) {
            return Err(self.protocol(from, "a loss release before a step"));
        }
        let name = self.input.names[from].clone();
        let shares = receive_product(&self.secret, release, self.sets.len() + 1, &name)?;
        #[cfg(test)]
        self.seen.extend(&shares);
        let local = self.local_loss(about);
        self.add_loss(&shares, &local);
        Ok(())
    }

    /// This party's share of w_q · s_q from its own shares of both, per row set, and of
    /// ‖v_q‖² (the square of its own velocity share).
    fn local_loss(&self, q: usize) -> Vec<u128> {
        let held = self.held.iter().find(|h| h.party == q).expect("held");
        let dot = |a: &[u128], b: &[u128]| {
            a.iter()
                .zip(b)
                .fold(0u128, |acc, (&x, &y)| add(acc, x.wrapping_mul(y)))
        };
        held.loss_terms
            .iter()
            .map(|s| dot(s, &held.loss_weights))
            .chain([dot(&held.velocity, &held.velocity)])
            .collect()
    }

    fn add_loss(&mut self, shares: &[u128], local: &[u128]) {
        if self.loss.len() != local.len() {
            self.loss = vec![0; local.len()];
        }
        for ((total, &a), &b) in self.loss.iter_mut().zip(shares).zip(local) {
            *total = add(*total, add(a, b));
        }
    }

    /// Losses, 4: this party's shares of Σ_P w_P·s_P per row set, and where they go: a host
    /// after the first sends them to host 1 (each is masked by the guest's release mask, which
    /// host 1 never sees); host 1, once it holds theirs, sends the sum to the guest, which so
    /// learns only the totals; the guest keeps its own (`None`).
    pub(crate) fn send_loss_shares(&mut self) -> Option<(usize, Vec<u128>)> {
        match self.me() {
            0 => None,
            1 => Some((0, std::mem::take(&mut self.loss))),
            _ => Some((1, std::mem::take(&mut self.loss))),
        }
    }

    /// Losses, 5: loss shares sent by `from` (hosts after the first to host 1, host 1 to the
    /// guest).
    pub(crate) fn accept_loss_shares(
        &mut self,
        from: usize,
        shares: &[u128],
    ) -> Result<(), FedError> {
        let me = self.me();
        let expected = (me == 1 && (2..self.parties()).contains(&from)) || (me == 0 && from == 1);
        if !expected || shares.len() != self.sets.len() + 1 || self.loss.len() != shares.len() {
            return Err(self.protocol(from, "loss shares this party does not collect"));
        }
        #[cfg(test)]
        self.seen.extend(shares);
        let zero = vec![0; shares.len()];
        self.add_loss(shares, &zero);
        Ok(())
    }

    /// Losses, 6 (the guest), once host 1's summed shares have arrived: the Taylor losses
    /// of the weights the last step started from, per row set, and the squared change of all
    /// parties' weights in that step, ‖Δw‖².
    pub(crate) fn losses(&mut self) -> Result<(Vec<f64>, f64), FedError> {
        if self.me() != 0 || self.loss.len() != self.sets.len() + 1 {
            return Err(self.protocol(1, "losses before the loss round finished"));
        }
        let total = std::mem::take(&mut self.loss);
        let unit = 2f64.powi(2 * WEIGHT_BITS as i32);
        let losses = total
            .iter()
            .zip(&self.sets)
            .map(|(&t, set)| {
                let rho = 2f64.powi(set.norm_bits as i32) / (4.0 * set.rows as f64);
                std::f64::consts::LN_2 + rho * signed(t) as f64 / unit
            })
            .collect();
        Ok((losses, signed(total[self.sets.len()]) as f64 / unit))
    }

    /// Keeps the weights the last step started from as the model (every party, for the
    /// vectors it holds, when the guest names that step's weights the best so far).
    pub(crate) fn keep_best(&mut self) {
        for held in &mut self.held {
            held.kept = held.loss_weights.clone();
        }
    }

    /// This party's shares of the weight vectors it holds, for its checkpoint.
    pub(crate) fn held(&self) -> Vec<HeldShares> {
        self.held
            .iter()
            .map(|h| HeldShares {
                party: h.party,
                weights: h.weights.clone(),
                velocity: h.velocity.clone(),
                kept: h.kept.clone(),
            })
            .collect()
    }

    /// Takes up the shares of a checkpoint: the vectors this party holds, of the widths the
    /// parties announced, as residues modulo 2^108.
    pub(crate) fn restore(&mut self, shares: &[HeldShares]) -> Result<(), FedError> {
        let me = self.me();
        let fits = shares.len() == self.held.len()
            && shares.iter().zip(&self.held).all(|(s, h)| {
                let width = self.input.widths[h.party];
                s.party == h.party
                    && [&s.weights, &s.velocity, &s.kept]
                        .iter()
                        .all(|v| v.len() == width && v.iter().all(|&x| x == residue(x as i128)))
            });
        if !fits {
            return Err(FedError::Resume {
                party: self.input.names[me].clone(),
                reason: "its checkpoint holds shares of other widths or parties: the data, its \
                         preparation or the job's parties changed"
                    .into(),
            });
        }
        for (held, s) in self.held.iter_mut().zip(shares) {
            held.weights = s.weights.clone();
            held.velocity = s.velocity.clone();
            held.kept = s.kept.clone();
        }
        Ok(())
    }

    /// Keeps the current weights as the model (the in-process driver's; a job keeps the
    /// epochs its verdicts call best).
    #[cfg(test)]
    pub(crate) fn keep_last(&mut self) {
        for held in &mut self.held {
            held.kept = held.weights.clone();
        }
    }

    /// The end: this party's shares of its partners' kept weights, for their owners.
    pub(crate) fn weight_shares(&self) -> Vec<(usize, Vec<u128>)> {
        self.held
            .iter()
            .filter(|h| h.party != self.me())
            .map(|h| (h.party, h.kept.clone()))
            .collect()
    }

    /// The end: this party's kept weights in real units, from its share and its partner's.
    pub(crate) fn weights(&self, partner_share: &[u128]) -> Result<Vec<f64>, FedError> {
        let own = self.own();
        if partner_share.len() != own.kept.len() {
            return Err(self.protocol(
                partner(self.me()),
                "its share of this party's weights has the wrong length",
            ));
        }
        let unit = f64::from(1u32 << WEIGHT_BITS);
        Ok(own
            .kept
            .iter()
            .zip(partner_share)
            .map(|(&a, &b)| signed(add(a, b)) as f64 / unit)
            .collect())
    }
}

/// Step size and momentum of the shared block-Jacobi iteration: the pair that took the fewest
/// steps over five books (`examples/shared_optimiser.rs`, `docs/training.md`); the step size
/// is [`rate`]'s for three parties or fewer.
const RATE: f64 = 0.7;
pub(crate) const MOMENTUM: f64 = 0.3;

/// The step size for a job of `parties` parties: [`RATE`], lowered for four parties or more so
/// that the iteration converges whatever the data. Preconditioned by its diagonal blocks (the
/// damped ones included), the Hessian's eigenvalues are at most the number of blocks, since
/// ‖Σ_P X_P·w_P‖² ≤ parties · Σ_P ‖X_P·w_P‖²; heavy-ball momentum converges while step ×
/// eigenvalue < 2(1 + momentum), and the step keeps that product within 90% of the limit.
/// At 0.7, five parties whose columns share one factor diverge (`tests/train.rs`).
///
/// The step is a multiple of 2^-16, the precision the shares apply it with, so that the
/// plaintext iteration (`train_plain_vertical`) takes exactly the same step.
pub(crate) fn rate(parties: usize) -> f64 {
    let step = RATE.min(0.9 * 2.0 * (1.0 + MOMENTUM) / parties as f64);
    let unit = f64::from(1u32 << RATE_BITS);
    (step * unit).round() / unit
}

/// The pairwise-mask context of the hand-overs of `about`'s sums at `step`.
pub(crate) fn hand_over_context(step: u64, about: usize) -> Vec<u8> {
    let mut context = b"hand-over ".to_vec();
    context.extend_from_slice(&step.to_le_bytes());
    context.extend_from_slice(&(about as u64).to_le_bytes());
    context
}

/// A share of a matrix block: row-major with the given row length, or the transpose of a
/// row-major matrix with the given row length.
enum Block<'a> {
    RowMajor(&'a [u128], usize),
    Transposed(&'a [u128], usize),
}

impl Block<'_> {
    fn at(&self, r: usize, c: usize) -> u128 {
        match *self {
            Block::RowMajor(values, stride) => values[r * stride + c],
            Block::Transposed(values, stride) => values[c * stride + r],
        }
    }
}

/// X̃ᵀX̃ of a party's quantised columns, exact (m × m, row-major); rows of it in parallel.
/// Quantised values are at most 2^13 in magnitude, so a sum of fewer than 2^37 products fits
/// an i64.
fn gram_dots(columns: &[Vec<i64>]) -> Vec<i128> {
    let m = columns.len();
    let lower: Vec<Vec<i128>> = (0..m)
        .into_par_iter()
        .map(|i| {
            (0..=i)
                .map(|j| {
                    let dot: i64 = columns[i]
                        .iter()
                        .zip(&columns[j])
                        .map(|(&a, &b)| a * b)
                        .sum();
                    i128::from(dot)
                })
                .collect()
        })
        .collect();
    let mut dots = vec![0i128; m * m];
    for (i, row) in lower.iter().enumerate() {
        for (j, &dot) in row.iter().enumerate() {
            dots[i * m + j] = dot;
            dots[j * m + i] = dot;
        }
    }
    dots
}

/// What a party computes in the clear about one of its row sets, from the exact Gram `dots`
/// of its columns on those rows.
fn row_set(input: &PartyInput, set: usize, rows: usize, dots: &[i128]) -> RowSet {
    let (columns, labels) = input.set(set);
    let norm_bits = ((4 * rows) as f64).log2().ceil() as u32;
    let f = input.frac_bits[input.index];
    let shift = GRAM_BITS as i32 - (2 * f + norm_bits) as i32;
    let own_gram = dots
        .iter()
        .map(|&dot| residue(shift_round(dot, shift)))
        .collect();
    let own_label = match labels {
        // 4·c / 2^t with c = Xᵀ(½ − y), at WEIGHT_BITS.
        Some(labels) => columns
            .iter()
            .map(|column| {
                let twice: i128 = column
                    .iter()
                    .zip(labels)
                    .map(|(&x, &y)| i128::from(x) * (1 - 2 * y as i128))
                    .sum();
                let shift = WEIGHT_BITS as i32 + 1 - (f + norm_bits) as i32;
                residue(shift_round(twice, shift))
            })
            .collect(),
        None => Vec::new(),
    };
    RowSet {
        rows,
        norm_bits,
        own_gram,
        own_label,
    }
}

/// x·2^shift, rounded to the nearest integer.
fn shift_round(x: i128, shift: i32) -> i128 {
    if shift >= 0 {
        x << shift
    } else {
        let k = shift.unsigned_abs();
        (x + (1 << (k - 1))) >> k
    }
}

fn accumulate(total: &mut [u128], term: &[u128]) {
    for (t, &x) in total.iter_mut().zip(term) {
        *t = add(*t, x);
    }
}

/// a·b for residue matrices (a: r × k, b: k × c, row-major), modulo 2^108.
fn matmul(a: &[u128], b: &[u128], r: usize, k: usize, c: usize) -> Vec<u128> {
    let mut out = vec![0u128; r * c];
    for i in 0..r {
        for l in 0..k {
            let x = a[i * k + l];
            if x == 0 {
                continue;
            }
            for j in 0..c {
                out[i * c + j] = add(out[i * c + j], x.wrapping_mul(b[l * c + j]));
            }
        }
    }
    out
}

/// The party's own block of H in real units: X̃ᵀX̃ / (4n·2^(2f)) + λ (not on the intercept),
/// from the exact Gram `dots` of its training rows.
fn own_hessian(input: &PartyInput, dots: &[i128], rows: usize) -> Vec<f64> {
    let m = input.train.len();
    let unit = f64::from(1u32 << input.frac_bits[input.index]);
    let denominator = 4.0 * rows as f64 * unit * unit;
    let mut h: Vec<f64> = dots.iter().map(|&dot| dot as f64 / denominator).collect();
    for i in (0..m).filter(|&i| Some(i) != input.intercept) {
        h[i * m + i] += input.l2;
    }
    h
}

/// The smallest diagonal the preconditioner inverts: its own block plus
/// δ = max(0, MIN_DAMPING − λ), so that collinear columns (bin indicators beside an intercept,
/// say) still give an invertible, bounded M. The step then carries −δ·M_P·w_P (the damping
/// block, see [`Party::block`]) and the fixed point — the optimum — does not change.
pub(crate) const MIN_DAMPING: f64 = 1e-3;

/// M_P = (H_PP + δ·I)^-1 in real units.
fn own_inverse(input: &PartyInput, dots: &[i128], rows: usize) -> Result<Vec<f64>, FedError> {
    let m = input.train.len();
    let mut h = own_hessian(input, dots, rows);
    let damping = (MIN_DAMPING - input.l2).max(0.0);
    for i in 0..m {
        h[i * m + i] += damping;
    }
    invert(&h, m).ok_or_else(|| FedError::Config {
        field: "l2",
        reason: format!(
            "{}: its columns' Gram on the training rows is numerically singular even with \
             λ = {}",
            input.names[input.index],
            input.l2.max(MIN_DAMPING)
        ),
    })
}

/// −δ·M_P at COUPLING_BITS (row-major), or nothing when δ = 0.
fn damping_block(input: &PartyInput, inverse: &[f64]) -> Vec<u128> {
    let damping = (MIN_DAMPING - input.l2).max(0.0);
    if damping == 0.0 {
        return Vec::new();
    }
    let unit = f64::from(1u32 << COUPLING_BITS);
    inverse
        .iter()
        .map(|x| residue((-damping * x * unit).round() as i128))
        .collect()
}

/// N = round(H_PP^-1 · 2^t/(4n) · 2^PRECOND_BITS): with the Gram scaled to XᵀX/2^t at
/// GRAM_BITS, N·Ĝ = M·XᵀX/(4n) at PRECOND_BITS + GRAM_BITS; with 2·c scaled to 4c/2^t,
/// N·ĉ = M·c/n likewise.
fn preconditioner(train: &RowSet, inverse: &[f64]) -> Vec<i128> {
    let factor = 2f64.powi(train.norm_bits as i32) / (4.0 * train.rows as f64)
        * 2f64.powi(PRECOND_BITS as i32);
    inverse
        .iter()
        .map(|x| (x * factor).round() as i128)
        .collect()
}

/// The guest's k_G = M_G·c_G / n in the clear, as its share.
fn guest_offset(input: &PartyInput, train: &RowSet, inverse: &[f64]) -> Vec<u128> {
    let m = input.train.len();
    let labels = input.labels.as_ref().map_or(&[][..], |l| l.0.as_slice());
    let unit = f64::from(1u32 << input.frac_bits[input.index]);
    let c: Vec<f64> = input
        .train
        .iter()
        .map(|column| {
            column
                .iter()
                .zip(labels)
                .map(|(&x, &y)| x as f64 / unit * (0.5 - y))
                .sum::<f64>()
                / train.rows as f64
        })
        .collect();
    let weight_unit = f64::from(1u32 << WEIGHT_BITS);
    (0..m)
        .map(|i| {
            let k: f64 = (0..m).map(|j| inverse[i * m + j] * c[j]).sum();
            residue((k * weight_unit).round() as i128)
        })
        .collect()
}

/// The inverse of a symmetric positive-definite matrix (Gauss–Jordan with partial pivoting),
/// or None when it is numerically singular.
pub(crate) fn invert(a: &[f64], m: usize) -> Option<Vec<f64>> {
    let mut work = a.to_vec();
    let mut inverse = vec![0.0; m * m];
    for i in 0..m {
        inverse[i * m + i] = 1.0;
    }
    let scale = (0..m).map(|i| a[i * m + i].abs()).fold(0.0, f64::max);
    for col in 0..m {
        let pivot = (col..m)
            .max_by(|&x, &y| work[x * m + col].abs().total_cmp(&work[y * m + col].abs()))?;
        if work[pivot * m + col].abs() <= 1e-12 * scale.max(f64::MIN_POSITIVE) {
            return None;
        }
        for j in 0..m {
            work.swap(col * m + j, pivot * m + j);
            inverse.swap(col * m + j, pivot * m + j);
        }
        let p = work[col * m + col];
        for j in 0..m {
            work[col * m + j] /= p;
            inverse[col * m + j] /= p;
        }
        for r in 0..m {
            if r != col {
                let f = work[r * m + col];
                if f != 0.0 {
                    for j in 0..m {
                        work[r * m + j] -= f * work[col * m + j];
                        inverse[r * m + j] -= f * inverse[col * m + j];
                    }
                }
            }
        }
    }
    Some(inverse)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::masks::{MaskSecret, PairwiseMasks};
    use he::N8192_Q192;
    use rand::RngExt;

    /// A standard normal draw (Box–Muller).
    fn normal(rng: &mut impl RngExt) -> f64 {
        let (u, v): (f64, f64) = (rng.random(), rng.random());
        (-2.0 * (1.0 - u).ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// Guest columns (4 and the intercept, last) and host columns (`hosts[h]` each, column j
    /// correlated with guest column j mod 4), quantised with 10 fraction bits, and labels from
    /// a logistic model that uses columns of every party.
    fn book(rows: usize, hosts: &[usize]) -> (Vec<Vec<Vec<i64>>>, Vec<f64>) {
        let mut draw = rand::rng();
        let q = |x: f64| (x.clamp(-7.9, 7.9) * 1024.0).round() as i64;
        let mut parties: Vec<Vec<Vec<i64>>> = std::iter::once(5)
            .chain(hosts.iter().copied())
            .map(|m| vec![Vec::new(); m])
            .collect();
        let mut labels = Vec::with_capacity(rows);
        for _ in 0..rows {
            let g: Vec<f64> = (0..4).map(|_| normal(&mut draw)).collect();
            let mut z = 0.8 * g[0] - 0.5 * g[1] - 1.5;
            for (h, &m) in hosts.iter().enumerate() {
                for j in 0..m {
                    let x = 0.6 * g[j % 4] + 0.8 * normal(&mut draw);
                    z += [0.7, -0.9, 0.3][(h + j) % 3] * x / m as f64;
                    parties[h + 1][j].push(q(x));
                }
            }
            let u: f64 = draw.random();
            labels.push(f64::from(u < 1.0 / (1.0 + (-z).exp())));
            for j in 0..4 {
                parties[0][j].push(q(g[j]));
            }
            parties[0][4].push(1024);
        }
        (parties, labels)
    }

    /// The Taylor loss log 2 + mean((½ − y)·z + z²/8) of weights on rows.
    fn taylor(
        columns: &[Vec<f64>],
        labels: &[f64],
        w: &[f64],
        rows: std::ops::Range<usize>,
    ) -> f64 {
        let n = rows.len() as f64;
        rows.map(|i| {
            let z: f64 = columns.iter().zip(w).map(|(c, w)| c[i] * w).sum();
            (0.5 - labels[i]) * z + z * z / 8.0
        })
        .sum::<f64>()
            / n
            + std::f64::consts::LN_2
    }

    /// The same iteration in floating point on the same quantised values (training rows
    /// first `train`), with the train and validation Taylor losses of the weights each step
    /// starts from.
    fn plain_jacobi(
        parties: &[Vec<Vec<i64>>],
        all_labels: &[f64],
        train: usize,
        l2: f64,
        (rate, momentum): (f64, f64),
        steps: usize,
    ) -> (Vec<f64>, Vec<[f64; 2]>, Vec<f64>) {
        let every: Vec<Vec<f64>> = parties
            .iter()
            .flatten()
            .map(|c| c.iter().map(|&x| x as f64 / 1024.0).collect())
            .collect();
        let columns: Vec<Vec<f64>> = every.iter().map(|c| c[..train].to_vec()).collect();
        let labels = &all_labels[..train];
        let (mut losses, mut changes) = (Vec::new(), Vec::new());
        let (m, n) = (columns.len(), labels.len() as f64);
        let mut blocks = Vec::new();
        let mut start = 0;
        for party in parties {
            blocks.push(start..start + party.len());
            start += party.len();
        }
        let mut h = vec![0.0; m * m];
        let mut c = vec![0.0; m];
        for i in 0..m {
            c[i] = columns[i]
                .iter()
                .zip(labels)
                .map(|(x, y)| x * (0.5 - y))
                .sum::<f64>()
                / n;
            for j in 0..m {
                h[i * m + j] = columns[i]
                    .iter()
                    .zip(&columns[j])
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
                    / (4.0 * n);
            }
            if i != 4 {
                h[i * m + i] += l2;
            }
        }
        let damping = (MIN_DAMPING - l2).max(0.0);
        let inverses: Vec<Vec<f64>> = blocks
            .iter()
            .map(|b| {
                let block: Vec<f64> = b
                    .clone()
                    .flat_map(|i| b.clone().map(move |j| (i, j)))
                    .map(|(i, j)| h[i * m + j] + if i == j { damping } else { 0.0 })
                    .collect();
                invert(&block, b.len()).unwrap()
            })
            .collect();
        let (mut w, mut v) = (vec![0.0; m], vec![0.0; m]);
        for _ in 0..steps {
            losses.push([
                taylor(&every, all_labels, &w, 0..train),
                taylor(&every, all_labels, &w, train..all_labels.len()),
            ]);
            let gradient: Vec<f64> = (0..m)
                .map(|i| c[i] + (0..m).map(|j| h[i * m + j] * w[j]).sum::<f64>())
                .collect();
            for (b, inverse) in blocks.iter().zip(&inverses) {
                let k = b.len();
                for (a, i) in b.clone().enumerate() {
                    let step: f64 = (0..k)
                        .map(|l| inverse[a * k + l] * gradient[b.start + l])
                        .sum();
                    v[i] = momentum * v[i] - rate * step;
                }
            }
            for i in 0..m {
                w[i] += v[i];
            }
            changes.push(v.iter().map(|v| v * v).sum());
        }
        (w, losses, changes)
    }

    /// What [`drive_in_process`] returns.
    struct Driven {
        weights: Vec<Vec<f64>>,
        losses: Vec<Vec<f64>>,
        /// ‖Δw‖² of every step, as the guest learns it.
        changes: Vec<f64>,
    }

    /// Runs the set-up and `steps` steps between parties built for one job (the guest first),
    /// moving every message by hand, and hands each party its weights.
    fn drive_in_process(nodes: &mut [Party], steps: usize) -> Result<Driven, FedError> {
        let count = nodes.len();
        let pairs: Vec<(usize, usize)> = (0..count)
            .flat_map(|a| (0..count).filter(move |&b| b != a).map(move |b| (a, b)))
            .collect();
        let packing: Vec<_> = nodes
            .iter()
            .map(Party::packing_key)
            .collect::<Result<_, _>>()?;
        for &(a, b) in &pairs {
            nodes[b].accept_packing(a, packing[a].clone())?;
        }
        let columns: Vec<_> = nodes
            .iter()
            .map(Party::encrypted_columns)
            .collect::<Result<_, _>>()?;
        for &(a, b) in &pairs {
            nodes[b].accept_columns(a, &columns[a])?;
        }
        drop(columns);
        let mut grams = Vec::with_capacity(pairs.len());
        for &(a, b) in &pairs {
            grams.push(nodes[a].gram_releases(b)?);
        }
        for (&(a, b), releases) in pairs.iter().zip(&grams) {
            nodes[b].accept_gram(a, releases)?;
        }
        let mut vectors = Vec::with_capacity(pairs.len());
        for &(a, b) in &pairs {
            vectors.push(nodes[a].coupling_vectors(b)?);
        }
        let mut releases = Vec::with_capacity(pairs.len());
        for (&(a, b), v) in pairs.iter().zip(&vectors) {
            releases.push(nodes[b].coupling_releases(a, v)?);
        }
        for (&(a, b), r) in pairs.iter().zip(&releases) {
            nodes[a].accept_coupling(b, r)?;
        }
        for node in nodes.iter_mut() {
            node.finish_setup()?;
        }
        let (mut losses, mut changes) = (Vec::new(), Vec::new());
        // The pairwise masks of the hand-overs, derived as a job derives them from its keys.
        let names: Vec<String> = nodes[0].input.names.clone();
        let secrets = (0..count)
            .map(|_| MaskSecret::random())
            .collect::<Result<Vec<_>, _>>()?;
        let mut job = [0u8; 16];
        crate::masks::random_bytes(&mut job)?;
        let masks = (0..count)
            .map(|me| {
                let peers: Vec<(String, [u8; 32])> = (0..count)
                    .filter(|&p| p != me)
                    .map(|p| (names[p].clone(), secrets[p].public()))
                    .collect();
                PairwiseMasks::derive(&job, &names[me], &secrets[me], &peers)
            })
            .collect::<Result<Vec<_>, _>>()?;
        for step_index in 0..steps {
            let mut vectors = Vec::with_capacity(count);
            for node in nodes.iter_mut() {
                vectors.push(node.begin_step()?);
            }
            let mut releases = Vec::with_capacity(pairs.len());
            for (holder, outgoing) in vectors.iter().enumerate() {
                for (evaluator, vector) in outgoing {
                    releases.push((
                        holder,
                        *evaluator,
                        nodes[*evaluator].step_release(holder, vector)?,
                    ));
                }
            }
            for (holder, evaluator, release) in &releases {
                nodes[*holder].accept_step_release(*evaluator, release)?;
            }
            let handed: Vec<_> = nodes
                .iter_mut()
                .enumerate()
                .map(|(me, node)| {
                    node.hand_over(&mut |peer, about, values| {
                        let context = hand_over_context(step_index as u64, about);
                        masks[me].apply_with(&names[peer], &context, values)
                    })
                })
                .collect();
            for (from, shares) in handed.iter().enumerate() {
                for (to, share) in shares {
                    nodes[*to].accept_hand_over(from, share)?;
                }
            }
            for node in nodes.iter_mut() {
                node.finish_step();
            }
            for (to, about, vector) in nodes[0].loss_vectors()? {
                let release = nodes[to].loss_release(about, &vector)?;
                nodes[0].accept_loss_release(to, about, &release)?;
            }
            // Hosts after the first to host 1, then host 1 to the guest.
            for from in (2..count).chain([1]) {
                if let Some((to, shares)) = nodes[from].send_loss_shares() {
                    nodes[to].accept_loss_shares(from, &shares)?;
                }
            }
            let (step_losses, change) = nodes[0].losses()?;
            losses.push(step_losses);
            changes.push(change);
        }
        let mut received: Vec<Vec<u128>> = vec![Vec::new(); count];
        for node in nodes.iter_mut() {
            node.keep_last();
        }
        for node in nodes.iter() {
            for (owner, share) in node.weight_shares() {
                received[owner] = share;
            }
        }
        let weights = nodes
            .iter()
            .zip(&received)
            .map(|(node, share)| node.weights(share))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Driven {
            weights,
            losses,
            changes,
        })
    }

    /// The parties of a shared job on `parties`' columns (the first `train` rows for training,
    /// the rest for validation), with fresh keys.
    fn build(
        parties: &[Vec<Vec<i64>>],
        labels: &[f64],
        train: usize,
        l2: f64,
        (rate, momentum): (f64, f64),
    ) -> Vec<Party> {
        let params = N8192_Q192;
        let count = parties.len();
        let (secrets, publics): (Vec<SecretKey>, Vec<PublicKey>) =
            (0..count).map(|_| SecretKey::generate(&params)).unzip();
        let names: Vec<String> = (0..count)
            .map(|p| {
                if p == 0 {
                    "guest".into()
                } else {
                    format!("host{p}")
                }
            })
            .collect();
        secrets
            .into_iter()
            .enumerate()
            .map(|(me, secret)| {
                let input = PartyInput {
                    names: names.clone(),
                    index: me,
                    widths: parties.iter().map(Vec::len).collect(),
                    frac_bits: vec![10; count],
                    train: parties[me].iter().map(|c| c[..train].to_vec()).collect(),
                    validation: parties[me].iter().map(|c| c[train..].to_vec()).collect(),
                    labels: (me == 0).then(|| (labels[..train].to_vec(), labels[train..].to_vec())),
                    intercept: (me == 0).then_some(4),
                    l2,
                    rate,
                    momentum,
                };
                let peers = (0..count)
                    .map(|p| (p != me).then(|| publics[p].clone()))
                    .collect();
                Party::new(params, input, secret, peers).unwrap()
            })
            .collect()
    }

    /// Runs a shared job in one process, moving every message by hand; returns what it
    /// measured and every value each party decrypted or was handed.
    fn run_shared(
        parties: &[Vec<Vec<i64>>],
        labels: &[f64],
        train: usize,
        l2: f64,
        schedule: (f64, f64),
        steps: usize,
    ) -> (Driven, Vec<Vec<u128>>) {
        let mut nodes = build(parties, labels, train, l2, schedule);
        let driven = drive_in_process(&mut nodes, steps).unwrap();
        let seen = nodes.into_iter().map(|n| n.seen).collect();
        (driven, seen)
    }

    /// A peer's packing key comes first, once, of the peer's key pair and the job's level
    /// count; a set-up message that needs it before it is the peer's protocol error.
    #[test]
    fn packing_keys_are_checked() {
        let (parties, labels) = book(400, &[2]);
        let mut nodes = build(&parties, &labels, 300, 1e-3, (rate(2), MOMENTUM));
        let refused = |result: Result<(), FedError>, text: &str| {
            matches!(&result, Err(FedError::Protocol { peer, reason })
                if peer == "host1" && reason.contains(text))
        };
        let columns = nodes[1].encrypted_columns().unwrap();
        nodes[0].accept_columns(1, &columns).unwrap();
        assert!(refused(
            nodes[0].gram_releases(1).map(drop),
            "before its packing key"
        ));
        let key = nodes[1].packing_key().unwrap();
        let levels = key.levels();
        assert_eq!(levels, packing_levels(&N8192_Q192, &[5, 2], 2));
        let (other, _) = SecretKey::generate(&N8192_Q192);
        let foreign = other.packing_key(levels).unwrap();
        assert!(refused(
            nodes[0].accept_packing(1, foreign),
            "another key pair"
        ));
        let fewer = nodes[1].secret.packing_key(levels - 1).unwrap();
        assert!(refused(nodes[0].accept_packing(1, fewer), "levels where"));
        nodes[0].accept_packing(1, key.clone()).unwrap();
        assert!(refused(
            nodes[0].accept_packing(1, key),
            "a second packing key"
        ));
        assert!(nodes[0].gram_releases(1).is_ok());
    }

    fn check(hosts: &[usize], l2: f64) {
        let (parties, labels) = book(4000, hosts);
        let (schedule, steps) = ((rate(hosts.len() + 1), MOMENTUM), 12);
        let (
            Driven {
                weights,
                losses,
                changes,
                ..
            },
            _,
        ) = run_shared(&parties, &labels, 3000, l2, schedule, steps);
        let got: Vec<f64> = weights.into_iter().flatten().collect();
        let (want, want_losses, want_changes) =
            plain_jacobi(&parties, &labels, 3000, l2, schedule, steps);
        for (step, (g, w)) in changes.iter().zip(&want_changes).enumerate() {
            assert!(
                (g - w).abs() < 1e-5 * (1.0 + w),
                "step {step}: shared ‖Δw‖² {g}, plaintext {w}"
            );
        }
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() < 1e-5,
                "weight {i}: shared {g}, plaintext {w}"
            );
        }
        for (step, (g, w)) in losses.iter().zip(&want_losses).enumerate() {
            for set in 0..2 {
                assert!(
                    (g[set] - w[set]).abs() < 1e-5,
                    "step {step}, set {set}: shared loss {}, plaintext {}",
                    g[set],
                    w[set]
                );
            }
        }
        // The losses fall: the iteration converges.
        assert!(losses[steps - 1][0] < losses[0][0] - 0.01, "{losses:?}");
        // And the weights are a model: the signs of the generating model.
        assert!(got[0] > 0.1 && got[1] < -0.1 && got[4] < -0.5, "{got:?}");
    }

    /// χ² of the top four bits of residues modulo 2^108 against the uniform distribution
    /// (15 degrees of freedom: above 50 with probability below 10^-5).
    fn top_bits_chi_square(values: &[u128]) -> f64 {
        let mut counts = [0f64; 16];
        for &x in values {
            counts[(x >> (SHARE_BITS - 4)) as usize & 15] += 1.0;
        }
        let expected = values.len() as f64 / 16.0;
        counts
            .iter()
            .map(|c| (c - expected).powi(2) / expected)
            .sum()
    }

    /// Wire audit of a three-party job: every value a party decrypts (Gram, coupling, step and
    /// loss releases) or is handed (shares of sums) is a uniform residue, whatever the data.
    /// The same statistic rejects data-sized values such as the quantised features.
    #[test]
    fn every_value_a_party_decrypts_or_is_handed_is_uniform() {
        let (parties, labels) = book(4000, &[6, 3]);
        let (_, seen) = run_shared(&parties, &labels, 3000, 1e-3, (rate(3), MOMENTUM), 6);
        for (party, values) in seen.iter().enumerate() {
            assert!(values.len() > 200, "party {party}: {} values", values.len());
            let chi = top_bits_chi_square(values);
            assert!(
                chi < 50.0,
                "party {party}: χ² {chi} over {} values",
                values.len()
            );
        }
        let features: Vec<u128> = parties[1]
            .iter()
            .flatten()
            .map(|&x| residue(x.into()))
            .collect();
        assert!(top_bits_chi_square(&features) > 1000.0);
    }

    /// Keys pack what the widest release needs: share products up to the share modulus's
    /// limit, Gram releases up to the widest party.
    #[test]
    fn packing_levels_follow_the_widths() {
        let params = N8192_Q192;
        // Credit: 14 + 10 columns, training rows only: 48 results → 6 levels.
        assert_eq!(packing_levels(&params, &[14, 10], 1), 6);
        // With validation rows, three kinds: 72 → 7.
        assert_eq!(packing_levels(&params, &[14, 10], 2), 7);
        // 31 + 300: share products stop at 9 levels; 300 Gram results need 9.
        assert_eq!(packing_levels(&params, &[31, 300], 1), 9);
        // 1000 columns: Gram releases of one party pack 10.
        assert_eq!(packing_levels(&params, &[2, 1000], 1), 10);
        assert_eq!(packing_levels(&params, &[2, 1], 1), 3);
    }

    #[test]
    fn two_parties_follow_the_plaintext_iteration() {
        check(&[6], 1e-3);
    }

    /// Without a penalty the preconditioner is damped (δ = 10^-3) and the step carries the
    /// damping block; the iteration is still the plaintext one.
    #[test]
    fn undamped_penalty_follows_the_plaintext_iteration() {
        check(&[6], 0.0);
    }

    #[test]
    fn three_parties_follow_the_plaintext_iteration() {
        check(&[6, 3], 1e-3);
    }

    #[test]
    fn four_parties_follow_the_plaintext_iteration() {
        check(&[2, 3, 4], 1e-3);
    }
}
