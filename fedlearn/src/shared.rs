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
//! 1. Each party encrypts its quantised training columns under its own key for the other.
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
//! hands its share of u_P to P unless it is P or P's partner (its share is masked by the
//! partner's own release masks, which P never sees), and P and its partner truncate and
//! update.

// Small dense linear algebra reads best with indices.
#![allow(clippy::needless_range_loop)]
#![cfg_attr(not(test), allow(dead_code))]

use he::{EncryptedVector, MaskedColumns, PackingKey, Params, PreparedColumns, PreparedMatrix};
use he::{PublicKey, SecretKey};

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
const WEIGHT_BITS: u32 = 20;
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
    /// This party's quantised training columns, each over the same rows.
    pub(crate) columns: Vec<Vec<i64>>,
    /// Labels of the training rows (the guest's only).
    pub(crate) labels: Option<Vec<f64>>,
    /// Index of the intercept column (not penalised), the guest's only.
    pub(crate) intercept: Option<usize>,
    /// L2 penalty λ, step size η and momentum μ (public settings).
    pub(crate) l2: f64,
    pub(crate) rate: f64,
    pub(crate) momentum: f64,
}

/// A peer's keys.
pub(crate) struct PeerKeys {
    pub(crate) public: PublicKey,
    pub(crate) packing: PackingKey,
}

/// What one pair (this party and a peer) builds in the set-up.
struct Pair {
    keys: PeerKeys,
    /// The peer's columns under its key, transformed.
    columns: Option<PreparedColumns>,
    /// Share of the scaled Gram X_meᵀ X_peer (m_me × m_peer, row-major).
    gram: Vec<u128>,
    /// Guest–host pairs: share of the host's scaled 2·c.
    label_term: Vec<u128>,
    /// Shares of K_{me,peer} (m_me × m_peer) and K_{peer,me} (m_peer × m_me).
    coupling_mine: Vec<u128>,
    coupling_peer: Vec<u128>,
    /// Guest–host pairs: share of the host's k (WEIGHT_BITS).
    offset: Vec<u128>,
}

/// Shares of one party's weight vector, velocity and k.
struct Held {
    party: usize,
    weights: Vec<u128>,
    velocity: Vec<u128>,
    offset: Vec<u128>,
}

/// One party's state.
pub(crate) struct Party {
    params: Params,
    input: PartyInput,
    secret: SecretKey,
    rows: usize,
    /// ⌈log2 4n⌉.
    norm_bits: u32,
    /// N_me, row-major m_me × m_me.
    precond: Vec<i128>,
    pairs: Vec<Option<Pair>>,
    held: Vec<Held>,
    /// Per peer R: the step product for R's weight shares.
    step_matrices: Vec<Option<PreparedMatrix>>,
    /// This step's shares of u_P for every party P.
    sums: Vec<Vec<u128>>,
}

impl Party {
    pub(crate) fn new(
        params: Params,
        input: PartyInput,
        secret: SecretKey,
        peers: Vec<Option<PeerKeys>>,
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
        let rows = input.columns.first().map_or(0, Vec::len);
        if rows == 0
            || input.columns.len() != input.widths[me]
            || input.columns.iter().any(|c| c.len() != rows)
        {
            return Err(FedError::LengthMismatch {
                what: "shared training columns",
                expected: input.widths[me],
                got: input.columns.len(),
            });
        }
        if (me == 0) != input.labels.is_some() {
            return Err(FedError::Config {
                field: "labels",
                reason: "the guest, and only the guest, brings labels".into(),
            });
        }
        let norm_bits = ((4 * rows) as f64).log2().ceil() as u32;
        let precond = preconditioner(&input, rows, norm_bits)?;
        let pairs = peers
            .into_iter()
            .enumerate()
            .map(|(peer, keys)| {
                keys.map(|keys| Pair {
                    keys,
                    columns: None,
                    gram: vec![0; input.widths[me] * input.widths[peer]],
                    label_term: Vec::new(),
                    coupling_mine: Vec::new(),
                    coupling_peer: Vec::new(),
                    offset: Vec::new(),
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
            })
            .collect();
        Ok(Party {
            params,
            secret,
            rows,
            norm_bits,
            precond,
            pairs,
            held,
            step_matrices: (0..parties).map(|_| None).collect(),
            sums: Vec::new(),
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

    fn pair_mut(&mut self, peer: usize) -> Result<&mut Pair, FedError> {
        if self.pairs.get(peer).is_some_and(Option::is_some) {
            Ok(self.pairs[peer].as_mut().expect("checked"))
        } else {
            Err(self.protocol(peer, "not a peer of this job"))
        }
    }

    /// Set-up 1: this party's columns under its own key, for every peer.
    pub(crate) fn encrypted_columns(&self) -> Result<Vec<EncryptedVector>, FedError> {
        self.input
            .columns
            .iter()
            .map(|column| self.secret.encrypt(column, FEATURE_BOUND))
            .collect::<Result<_, _>>()
            .map_err(Self::he("encrypting training columns"))
    }

    /// Set-up 1, receiving a peer's encrypted columns.
    pub(crate) fn accept_columns(
        &mut self,
        peer: usize,
        columns: &[EncryptedVector],
    ) -> Result<(), FedError> {
        let (width, rows, params) = (self.width(peer), self.rows, self.params);
        if columns.len() != width || columns.iter().any(|c| c.len() != rows) {
            return Err(self.protocol(peer, "its columns do not have the announced shape"));
        }
        let pair = self.pair_mut(peer)?;
        let prepared = pair
            .keys
            .public
            .prepare_columns(&params, columns)
            .map_err(Self::he("preparing a peer's columns"))?;
        pair.columns = Some(prepared);
        Ok(())
    }

    /// Set-up 2, for a peer: the follower of the pair releases the cross Gram (one release
    /// per own column), the guest releases 2·c of a host; a host leading a host pair sends
    /// nothing.
    pub(crate) fn gram_releases(&mut self, peer: usize) -> Result<Vec<MaskedColumns>, FedError> {
        let me = self.me();
        let vectors: Vec<Vec<i64>> = match &self.input.labels {
            Some(labels) => vec![labels.iter().map(|&y| 1 - 2 * y as i64).collect()],
            None if me > peer => self.input.columns.clone(),
            None => return Ok(Vec::new()),
        };
        let (params, rows) = (self.params, self.rows);
        let pair = self.pair(peer)?;
        let columns = pair
            .columns
            .as_ref()
            .ok_or_else(|| self.protocol(peer, "its columns have not arrived"))?;
        let mut releases = Vec::with_capacity(vectors.len());
        let mut shares = Vec::new();
        for vector in &vectors {
            let bound = FEATURE_BOUND * vector.iter().map(|x| i128::from(x.abs())).sum::<i128>();
            let plain = PreparedMatrix::new(&params, rows, 1, vector)
                .map_err(Self::he("preparing a column"))?;
            let product = pair
                .keys
                .public
                .multiply_columns(&params, columns, &plain, bound)
                .map_err(Self::he("multiplying a peer's columns"))?;
            let (masked, masks) = pair
                .keys
                .public
                .mask_and_flood(&params, product, &pair.keys.packing)
                .map_err(Self::he("releasing a Gram product"))?;
            shares.extend(masks.shares().into_iter().map(|s| residue(s as i128)));
            releases.push(masked);
        }
        let pair = self.pair_mut(peer)?;
        if me == 0 {
            // The guest's share of the host's 2·c.
            pair.label_term = shares;
        } else {
            // Release j is X_peerᵀ x_j: row j of this party's share of X_meᵀ X_peer.
            pair.gram = shares;
        }
        Ok(releases)
    }

    /// Set-up 2, receiving a peer's releases; then both scale their shares.
    pub(crate) fn accept_gram(
        &mut self,
        peer: usize,
        releases: &[MaskedColumns],
    ) -> Result<(), FedError> {
        let me = self.me();
        let (m, peer_m) = (self.width(me), self.width(peer));
        let expected = if me < peer {
            peer_m
        } else if peer == 0 {
            1
        } else {
            0
        };
        if releases.len() != expected {
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
            decrypted.push(values);
        }
        let first = me < peer;
        let gram_shift = GRAM_BITS as i32
            - (self.input.frac_bits[me] + self.input.frac_bits[peer] + self.norm_bits) as i32;
        // 2·c_H at 2^(f_H + 1) → 4·c_H / 2^t at 2^GRAM_BITS (see `preconditioner`).
        let host = me.max(peer);
        let label_shift =
            GRAM_BITS as i32 + 1 - (self.input.frac_bits[host] + self.norm_bits) as i32;
        let pair = self.pair_mut(peer)?;
        if first {
            // Release j is column j of X_meᵀ X_peer.
            for (j, column) in decrypted.iter().enumerate() {
                for i in 0..m {
                    pair.gram[i * peer_m + j] = residue(column[i] as i128);
                }
            }
        } else if peer == 0 {
            pair.label_term = decrypted[0].iter().map(|&x| residue(x as i128)).collect();
        }
        for x in &mut pair.gram {
            *x = rescale(*x, gram_shift, first);
        }
        for x in &mut pair.label_term {
            *x = rescale(*x, label_shift, first);
        }
        Ok(())
    }

    /// Set-up 3, for a peer: the rows of this party's Gram share (and the guest's share of the
    /// host's 2·c), gadget-encrypted, for the peer to multiply by its preconditioner.
    pub(crate) fn coupling_vectors(&self, peer: usize) -> Result<Vec<EncryptedVector>, FedError> {
        let pair = self.pair(peer)?;
        let mut out: Vec<EncryptedVector> = pair
            .gram
            .chunks(self.width(peer))
            .map(|row| encrypt_vector(&self.secret, row))
            .collect::<Result<_, _>>()?;
        if self.me() == 0 {
            out.push(encrypt_vector(&self.secret, &pair.label_term)?);
        }
        Ok(out)
    }

    /// Set-up 3, a peer's vectors: N_me times each (column i of K_{me,peer}; a host also gets
    /// the guest's share of its 2·c, giving k), released to the peer. Keeps the masks and adds
    /// its local part N_me·(own share).
    pub(crate) fn coupling_releases(
        &mut self,
        peer: usize,
        vectors: &[EncryptedVector],
    ) -> Result<Vec<MaskedColumns>, FedError> {
        let me = self.me();
        let (m, peer_m) = (self.width(me), self.width(peer));
        let expected = peer_m + usize::from(peer == 0);
        if vectors.len() != expected {
            return Err(self.protocol(peer, "wrong number of coupling vectors"));
        }
        let precond: Vec<u128> = self.precond.iter().map(|&x| residue(x)).collect();
        let matrix = prepare_matrix(&self.params, &precond, m, m)?;
        let params = self.params;
        let pair = self.pair_mut(peer)?;
        let mut coupling = matmul(&precond, &pair.gram, m, m, peer_m);
        let mut releases = Vec::with_capacity(vectors.len());
        for (i, vector) in vectors.iter().enumerate() {
            let (masked, shares) = release_product(
                &params,
                &pair.keys.public,
                &pair.keys.packing,
                vector,
                &matrix,
            )?;
            if i < peer_m {
                for r in 0..m {
                    coupling[r * peer_m + i] = add(coupling[r * peer_m + i], shares[r]);
                }
            } else {
                let local = matmul(&precond, &pair.label_term, m, m, 1);
                pair.offset = local
                    .iter()
                    .zip(&shares)
                    .map(|(&a, &b)| add(a, b))
                    .collect();
            }
            releases.push(masked);
        }
        pair.coupling_mine = coupling;
        Ok(releases)
    }

    /// Set-up 3, receiving: this party's shares of K_{peer,me} (and the guest's of a host's
    /// k). Both K shares go to COUPLING_BITS and k to WEIGHT_BITS.
    pub(crate) fn accept_coupling(
        &mut self,
        peer: usize,
        releases: &[MaskedColumns],
    ) -> Result<(), FedError> {
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
        Ok(())
    }

    /// Set-up done with every peer: places the k shares and prepares the step products.
    pub(crate) fn finish_setup(&mut self) -> Result<(), FedError> {
        let me = self.me();
        for index in 0..self.held.len() {
            let party = self.held[index].party;
            let offset = if party == 0 && me == 0 {
                guest_offset(&self.input, self.rows)?
            } else if party == 0 {
                // The guest's k is its own; the partner's share is zero.
                vec![0; self.width(0)]
            } else {
                // A host's k is shared within its pair with the guest.
                let peer = if me == 0 { party } else { 0 };
                let offset = self.pair(peer)?.offset.clone();
                if offset.len() != self.width(party) {
                    return Err(self.protocol(peer, "the set-up did not finish"));
                }
                offset
            };
            self.held[index].offset = offset;
        }
        for peer in 0..self.parties() {
            if peer != me {
                self.step_matrices[peer] = Some(self.step_matrix(peer)?);
            }
        }
        Ok(())
    }

    /// The row ranges of u_P in a release by evaluator `evaluator` of `holder`'s weight
    /// shares: u_evaluator, then (when the holder is the evaluator's partner) u_P for every
    /// P ≠ evaluator, ascending.
    fn outputs(&self, evaluator: usize, holder: usize) -> Vec<usize> {
        let mut out = vec![evaluator];
        if partner(evaluator) == holder {
            out.extend((0..self.parties()).filter(|&p| p != evaluator));
        }
        out
    }

    /// The matrix this party applies to `holder`'s weight shares (see [`outputs`]).
    fn step_matrix(&self, holder: usize) -> Result<PreparedMatrix, FedError> {
        let me = self.me();
        let inputs = holdings(holder, self.parties());
        let outputs = self.outputs(me, holder);
        let width: usize = inputs.iter().map(|&q| self.width(q)).sum();
        let height: usize = outputs.iter().map(|&p| self.width(p)).sum();
        let mut matrix = vec![0u128; height * width];
        let mut column = 0;
        for &q in &inputs {
            let mut row = 0;
            for &p in &outputs {
                let block = if p == me && q != me {
                    Some((&self.pair(q)?.coupling_mine, self.width(q)))
                } else if q == me && p != me {
                    Some((&self.pair(p)?.coupling_peer, self.width(me)))
                } else {
                    None
                };
                if let Some((block, stride)) = block {
                    for r in 0..self.width(p) {
                        for c in 0..self.width(q) {
                            matrix[(row + r) * width + column + c] = block[r * stride + c];
                        }
                    }
                }
                row += self.width(p);
            }
            column += self.width(q);
        }
        prepare_matrix(&self.params, &matrix, height, width)
    }

    /// A step, 1: starts the sums of u with this party's products of its own shares, and
    /// returns its weight shares, gadget-encrypted, for every peer.
    pub(crate) fn begin_step(&mut self) -> Result<EncryptedVector, FedError> {
        let me = self.me();
        let mut sums: Vec<Vec<u128>> = (0..self.parties())
            .map(|p| vec![0; self.width(p)])
            .collect();
        for held in &self.held {
            let q = held.party;
            if q != me {
                // u_me += K_{me,q}·(share of w_q).
                let k = &self.pair(q)?.coupling_mine;
                let term = matmul(k, &held.weights, self.width(me), self.width(q), 1);
                accumulate(&mut sums[me], &term);
            } else {
                // u_p += K_{p,me}·(share of w_me), every p.
                for p in (0..self.parties()).filter(|&p| p != me) {
                    let k = &self.pair(p)?.coupling_peer;
                    let term = matmul(k, &held.weights, self.width(p), self.width(me), 1);
                    accumulate(&mut sums[p], &term);
                }
            }
        }
        self.sums = sums;
        let vector: Vec<u128> = self
            .held
            .iter()
            .flat_map(|h| h.weights.iter().copied())
            .collect();
        encrypt_vector(&self.secret, &vector)
    }

    /// A step, 2: the product of `holder`'s weight shares with this party's K shares,
    /// released to the holder; the masks join this party's sums.
    pub(crate) fn step_release(
        &mut self,
        holder: usize,
        vector: &EncryptedVector,
    ) -> Result<MaskedColumns, FedError> {
        let matrix = self
            .step_matrices
            .get(holder)
            .and_then(Option::as_ref)
            .ok_or_else(|| self.protocol(holder, "a step before the set-up finished"))?;
        let pair = self.pair(holder)?;
        let (masked, shares) = release_product(
            &self.params,
            &pair.keys.public,
            &pair.keys.packing,
            vector,
            matrix,
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
        let outputs = self.outputs(evaluator, self.me());
        let expected = outputs.iter().map(|&p| self.width(p)).sum();
        let name = self.input.names[evaluator].clone();
        let shares = receive_product(&self.secret, release, expected, &name)?;
        self.add_outputs(evaluator, self.me(), &shares);
        Ok(())
    }

    fn add_outputs(&mut self, evaluator: usize, holder: usize, shares: &[u128]) {
        let mut at = 0;
        for p in self.outputs(evaluator, holder) {
            let width = self.width(p);
            accumulate(&mut self.sums[p], &shares[at..at + width]);
            at += width;
        }
    }

    /// A step, 4: this party's shares of u_P for the parties P it neither is nor partners,
    /// to hand to P.
    pub(crate) fn hand_over(&self) -> Vec<(usize, Vec<u128>)> {
        let me = self.me();
        (0..self.parties())
            .filter(|&p| p != me && partner(p) != me)
            .map(|p| (p, self.sums[p].clone()))
            .collect()
    }

    /// A step, 5: a share of this party's u handed over by `from`.
    pub(crate) fn accept_hand_over(&mut self, from: usize, share: &[u128]) -> Result<(), FedError> {
        let me = self.me();
        if from == me || from == partner(me) || share.len() != self.width(me) {
            return Err(self.protocol(from, "a share of u it should not hold"));
        }
        accumulate(&mut self.sums[me], share);
        Ok(())
    }

    /// A step, 6: truncates the shares of u for the weight vectors this party holds and
    /// updates their velocities and weights.
    pub(crate) fn finish_step(&mut self) {
        let first = self.me() == 0;
        let rate = (self.input.rate * f64::from(1u32 << RATE_BITS)).round() as i128;
        let momentum = (self.input.momentum * f64::from(1u32 << RATE_BITS)).round() as i128;
        for held in &mut self.held {
            let u = &self.sums[held.party];
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

    /// The end: this party's shares of its partners' weights, for their owners.
    pub(crate) fn weight_shares(&self) -> Vec<(usize, Vec<u128>)> {
        self.held
            .iter()
            .filter(|h| h.party != self.me())
            .map(|h| (h.party, h.weights.clone()))
            .collect()
    }

    /// The end: this party's weights in real units, from its share and its partner's.
    pub(crate) fn weights(&self, partner_share: &[u128]) -> Result<Vec<f64>, FedError> {
        let me = self.me();
        let own = self
            .held
            .iter()
            .find(|h| h.party == me)
            .expect("every party holds a share of its own weights");
        if partner_share.len() != own.weights.len() {
            return Err(self.protocol(
                partner(me),
                "its share of this party's weights has the wrong length",
            ));
        }
        let unit = f64::from(1u32 << WEIGHT_BITS);
        Ok(own
            .weights
            .iter()
            .zip(partner_share)
            .map(|(&a, &b)| signed(add(a, b)) as f64 / unit)
            .collect())
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

/// The party's own block of H in real units: X̃ᵀX̃ / (4n·2^(2f)) + λ (not on the intercept).
fn own_hessian(input: &PartyInput, rows: usize) -> Vec<f64> {
    let m = input.columns.len();
    let unit = f64::from(1u32 << input.frac_bits[input.index]);
    let denominator = 4.0 * rows as f64 * unit * unit;
    let mut h = vec![0.0; m * m];
    for i in 0..m {
        for j in 0..=i {
            let dot: i128 = input.columns[i]
                .iter()
                .zip(&input.columns[j])
                .map(|(&a, &b)| i128::from(a * b))
                .sum();
            h[i * m + j] = dot as f64 / denominator;
            h[j * m + i] = h[i * m + j];
        }
        if Some(i) != input.intercept {
            h[i * m + i] += input.l2;
        }
    }
    h
}

fn own_inverse(input: &PartyInput, rows: usize) -> Result<Vec<f64>, FedError> {
    invert(&own_hessian(input, rows), input.columns.len()).ok_or_else(|| FedError::Config {
        field: "l2",
        reason: format!(
            "{}: its columns are linearly dependent on the training rows and λ = {} does not \
             make their Gram invertible",
            input.names[input.index], input.l2
        ),
    })
}

/// N = round(H_PP^-1 · 2^t/(4n) · 2^PRECOND_BITS): with the Gram scaled to XᵀX/2^t at
/// GRAM_BITS, N·Ĝ = M·XᵀX/(4n) at PRECOND_BITS + GRAM_BITS; with 2·c scaled to 4c/2^t,
/// N·ĉ = M·c/n likewise.
fn preconditioner(input: &PartyInput, rows: usize, norm_bits: u32) -> Result<Vec<i128>, FedError> {
    let factor = 2f64.powi(norm_bits as i32) / (4.0 * rows as f64) * 2f64.powi(PRECOND_BITS as i32);
    Ok(own_inverse(input, rows)?
        .iter()
        .map(|x| (x * factor).round() as i128)
        .collect())
}

/// The guest's k_G = M_G·c_G / n in the clear, as its share.
fn guest_offset(input: &PartyInput, rows: usize) -> Result<Vec<u128>, FedError> {
    let m = input.columns.len();
    let labels = input.labels.as_deref().unwrap_or(&[]);
    let unit = f64::from(1u32 << input.frac_bits[input.index]);
    let c: Vec<f64> = input
        .columns
        .iter()
        .map(|column| {
            column
                .iter()
                .zip(labels)
                .map(|(&x, &y)| x as f64 / unit * (0.5 - y))
                .sum::<f64>()
                / rows as f64
        })
        .collect();
    let inverse = own_inverse(input, rows)?;
    let weight_unit = f64::from(1u32 << WEIGHT_BITS);
    Ok((0..m)
        .map(|i| {
            let k: f64 = (0..m).map(|j| inverse[i * m + j] * c[j]).sum();
            residue((k * weight_unit).round() as i128)
        })
        .collect())
}

/// The inverse of a symmetric positive-definite matrix (Gauss–Jordan with partial pivoting),
/// or None when it is numerically singular.
fn invert(a: &[f64], m: usize) -> Option<Vec<f64>> {
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
    use he::N8192_Q192;

    /// splitmix64 for reproducible synthetic data (a test fixture, not key material).
    struct Draw(u64);

    impl Draw {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn normal(&mut self) -> f64 {
            let u = ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let v = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        }
    }

    /// Guest columns (4 and the intercept, last) and host columns (`hosts[h]` each, column j
    /// correlated with guest column j mod 4), quantised with 10 fraction bits, and labels from
    /// a logistic model that uses columns of every party.
    fn book(rows: usize, hosts: &[usize]) -> (Vec<Vec<Vec<i64>>>, Vec<f64>) {
        let mut draw = Draw(7);
        let q = |x: f64| (x.clamp(-7.9, 7.9) * 1024.0).round() as i64;
        let mut parties: Vec<Vec<Vec<i64>>> = std::iter::once(5)
            .chain(hosts.iter().copied())
            .map(|m| vec![Vec::new(); m])
            .collect();
        let mut labels = Vec::with_capacity(rows);
        for _ in 0..rows {
            let g: Vec<f64> = (0..4).map(|_| draw.normal()).collect();
            let mut z = 0.8 * g[0] - 0.5 * g[1] - 1.5;
            for (h, &m) in hosts.iter().enumerate() {
                for j in 0..m {
                    let x = 0.6 * g[j % 4] + 0.8 * draw.normal();
                    z += [0.7, -0.9, 0.3][(h + j) % 3] * x / m as f64;
                    parties[h + 1][j].push(q(x));
                }
            }
            let u = (draw.next() >> 11) as f64 / (1u64 << 53) as f64;
            labels.push(f64::from(u < 1.0 / (1.0 + (-z).exp())));
            for j in 0..4 {
                parties[0][j].push(q(g[j]));
            }
            parties[0][4].push(1024);
        }
        (parties, labels)
    }

    /// The same iteration in floating point on the same quantised values.
    fn plain_jacobi(
        parties: &[Vec<Vec<i64>>],
        labels: &[f64],
        l2: f64,
        (rate, momentum): (f64, f64),
        steps: usize,
    ) -> Vec<f64> {
        let columns: Vec<Vec<f64>> = parties
            .iter()
            .flatten()
            .map(|c| c.iter().map(|&x| x as f64 / 1024.0).collect())
            .collect();
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
        let inverses: Vec<Vec<f64>> = blocks
            .iter()
            .map(|b| {
                let block: Vec<f64> = b
                    .clone()
                    .flat_map(|i| b.clone().map(move |j| (i, j)))
                    .map(|(i, j)| h[i * m + j])
                    .collect();
                invert(&block, b.len()).unwrap()
            })
            .collect();
        let (mut w, mut v) = (vec![0.0; m], vec![0.0; m]);
        for _ in 0..steps {
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
        }
        w
    }

    /// Runs a shared job in one process, moving every message by hand; returns each party's
    /// final weights.
    fn run_shared(
        parties: &[Vec<Vec<i64>>],
        labels: &[f64],
        l2: f64,
        (rate, momentum): (f64, f64),
        steps: usize,
    ) -> Vec<Vec<f64>> {
        let params = N8192_Q192;
        let count = parties.len();
        let (secrets, publics): (Vec<SecretKey>, Vec<PublicKey>) =
            (0..count).map(|_| SecretKey::generate(&params)).unzip();
        let packing: Vec<PackingKey> = secrets
            .iter()
            .map(|s| s.packing_key(params.max_pack_levels).unwrap())
            .collect();
        let names: Vec<String> = (0..count)
            .map(|p| {
                if p == 0 {
                    "guest".into()
                } else {
                    format!("host{p}")
                }
            })
            .collect();
        let mut nodes: Vec<Party> = secrets
            .into_iter()
            .enumerate()
            .map(|(me, secret)| {
                let input = PartyInput {
                    names: names.clone(),
                    index: me,
                    widths: parties.iter().map(Vec::len).collect(),
                    frac_bits: vec![10; count],
                    columns: parties[me].clone(),
                    labels: (me == 0).then(|| labels.to_vec()),
                    intercept: (me == 0).then_some(4),
                    l2,
                    rate,
                    momentum,
                };
                let peers = (0..count)
                    .map(|p| {
                        (p != me).then(|| PeerKeys {
                            public: publics[p].clone(),
                            packing: packing[p].clone(),
                        })
                    })
                    .collect();
                Party::new(params, input, secret, peers).unwrap()
            })
            .collect();
        let pairs: Vec<(usize, usize)> = (0..count)
            .flat_map(|a| (0..count).filter(move |&b| b != a).map(move |b| (a, b)))
            .collect();
        let columns: Vec<_> = nodes
            .iter()
            .map(|n| n.encrypted_columns().unwrap())
            .collect();
        for &(a, b) in &pairs {
            nodes[b].accept_columns(a, &columns[a]).unwrap();
        }
        let grams: Vec<_> = pairs
            .iter()
            .map(|&(a, b)| nodes[a].gram_releases(b).unwrap())
            .collect();
        for (&(a, b), releases) in pairs.iter().zip(&grams) {
            nodes[b].accept_gram(a, releases).unwrap();
        }
        let vectors: Vec<_> = pairs
            .iter()
            .map(|&(a, b)| nodes[a].coupling_vectors(b).unwrap())
            .collect();
        let releases: Vec<_> = pairs
            .iter()
            .zip(&vectors)
            .map(|(&(a, b), v)| nodes[b].coupling_releases(a, v).unwrap())
            .collect();
        for (&(a, b), r) in pairs.iter().zip(&releases) {
            nodes[a].accept_coupling(b, r).unwrap();
        }
        for node in &mut nodes {
            node.finish_setup().unwrap();
        }
        for _ in 0..steps {
            let vectors: Vec<_> = nodes.iter_mut().map(|n| n.begin_step().unwrap()).collect();
            let releases: Vec<_> = pairs
                .iter()
                .map(|&(a, b)| nodes[b].step_release(a, &vectors[a]).unwrap())
                .collect();
            for (&(a, b), r) in pairs.iter().zip(&releases) {
                nodes[a].accept_step_release(b, r).unwrap();
            }
            let handed: Vec<_> = nodes.iter().map(Party::hand_over).collect();
            for (from, shares) in handed.iter().enumerate() {
                for (to, share) in shares {
                    nodes[*to].accept_hand_over(from, share).unwrap();
                }
            }
            for node in &mut nodes {
                node.finish_step();
            }
        }
        let mut received: Vec<Vec<u128>> = vec![Vec::new(); count];
        for node in &nodes {
            for (owner, share) in node.weight_shares() {
                received[owner] = share;
            }
        }
        nodes
            .iter()
            .zip(&received)
            .map(|(n, share)| n.weights(share).unwrap())
            .collect()
    }

    fn check(hosts: &[usize]) {
        let (parties, labels) = book(3000, hosts);
        let (l2, schedule, steps) = (1e-3, (0.7, 0.3), 12);
        let got: Vec<f64> = run_shared(&parties, &labels, l2, schedule, steps)
            .into_iter()
            .flatten()
            .collect();
        let want = plain_jacobi(&parties, &labels, l2, schedule, steps);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() < 1e-5,
                "weight {i}: shared {g}, plaintext {w}"
            );
        }
        // And the weights are a model: the signs of the generating model.
        assert!(got[0] > 0.1 && got[1] < -0.1 && got[4] < -0.5, "{got:?}");
    }

    #[test]
    fn two_parties_follow_the_plaintext_iteration() {
        check(&[6]);
    }

    #[test]
    fn three_parties_follow_the_plaintext_iteration() {
        check(&[6, 3]);
    }

    #[test]
    fn four_parties_follow_the_plaintext_iteration() {
        check(&[2, 3, 4]);
    }
}
