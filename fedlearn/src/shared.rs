//! Secret-shared training between two parties in Gram form (`docs/training.md`,
//! "Secret-shared weights").
//!
//! With the first-order residual d = ¼·z + ½ − y the objective is the quadratic
//! L(w) = log 2 + (1/n)·c·w + ½·wᵀHw with H = XᵀX/(4n) + λI′ (the intercept unpenalised) and
//! c = Xᵀ(½ − y). Party P preconditions its block of the gradient with the inverse of its own
//! diagonal block, M_P = H_PP^-1, a matrix only P needs and P computes in the clear:
//!
//!   M_P·∇_P L = w_P + k_P + K_PQ·w_Q,  k_P = M_P·c_P / n,  K_PQ = M_P·X_Pᵀ X_Q / (4n),
//!
//! and takes the step v ← μ·v − η·(w_P + k_P + K_PQ·w_Q), w ← w + v (block Jacobi with
//! momentum). Every quantity that depends on both parties' data — the cross Gram, K_PQ, k
//! of the host, both parties' weights and velocities — exists only as additive shares
//! modulo 2^108 (`shares`); a step is one share × share product each way, of the size of the
//! weight vectors, whatever the number of rows.
//!
//! Set-up, in order:
//! 1. Each party encrypts its quantised training columns under its own key for the other.
//! 2. The host multiplies the guest's encrypted columns by each of its columns (the cross
//!    Gram X_Gᵀ X_H, one release per host column) and the guest multiplies the host's by
//!    1 − 2y (2·c_H); each keeps its masks as its share, the other decrypts its own.
//!    Both scale their shares to `GRAM_BITS` fraction bits of X_Pᵀ X_Q / 2^t, 2^t ≥ 4n.
//! 3. Each party encrypts the rows of its Gram share (and the guest its share of c_H); the
//!    other multiplies them by its integer preconditioner N = round(M·2^t/(4n)·2^PRECOND_BITS),
//!    which gives both shares of K in both directions and of k_H.
//!
//! Per step each party sends its weight shares (gadget-encrypted) and returns the product
//! with its K shares; see [`Side::step_vector`].

// Small dense linear algebra reads best with indices.
#![allow(clippy::needless_range_loop)]
#![cfg_attr(not(test), allow(dead_code))]

use he::{EncryptedVector, MaskedColumns, PackingKey, Params, PreparedColumns, PreparedMatrix};
use he::{PublicKey, SecretKey};

use crate::error::FedError;
use crate::shares::{
    add, encrypt_vector, prepare_matrix, receive_product, release_product, rescale, residue, scale,
    signed, sub, truncate,
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

/// What a party brings to the pair.
pub(crate) struct SideInput {
    /// The party's name, for errors.
    pub(crate) name: String,
    /// The guest (it holds the labels and the intercept, and truncates "first").
    pub(crate) guest: bool,
    /// Quantised training columns, each over the same rows.
    pub(crate) columns: Vec<Vec<i64>>,
    /// Their fraction bits.
    pub(crate) frac_bits: u32,
    /// Labels of the training rows (the guest's only).
    pub(crate) labels: Option<Vec<f64>>,
    /// Index of the intercept column (not penalised), the guest's only.
    pub(crate) intercept: Option<usize>,
    /// L2 penalty λ.
    pub(crate) l2: f64,
    /// Step size η and momentum μ.
    pub(crate) rate: f64,
    pub(crate) momentum: f64,
}

/// What a party learns of its peer in the set-up (public to both).
pub(crate) struct PeerInfo {
    pub(crate) name: String,
    pub(crate) columns: usize,
    pub(crate) frac_bits: u32,
    pub(crate) public: PublicKey,
    pub(crate) packing: PackingKey,
}

/// One party's state in a two-party shared job.
pub(crate) struct Side {
    params: Params,
    input: SideInput,
    secret: SecretKey,
    peer: PeerInfo,
    rows: usize,
    /// ⌈log2 4n⌉.
    norm_bits: u32,
    /// The peer's columns under its key, transformed.
    peer_columns: Option<PreparedColumns>,
    /// Share of the scaled Gram X_meᵀ X_peer (m_me × m_peer, row-major).
    gram: Vec<u128>,
    /// Share of the host's scaled 2·c (the host's: m_H entries; the guest holds the other).
    label_term: Vec<u128>,
    /// N_me, row-major m_me × m_me.
    precond: Vec<i128>,
    /// Shares of K_{me,peer} (m_me × m_peer) and K_{peer,me} (m_peer × m_me).
    coupling_mine: Vec<u128>,
    coupling_peer: Vec<u128>,
    /// Shares of k_me and k_peer (WEIGHT_BITS).
    offset_mine: Vec<u128>,
    offset_peer: Vec<u128>,
    /// Shares of both parties' weights and velocities: (mine, peer's).
    weights: (Vec<u128>, Vec<u128>),
    velocity: (Vec<u128>, Vec<u128>),
    /// The step product prepared from the K shares.
    step_matrix: Option<PreparedMatrix>,
    /// This party's shares of (u_me, u_peer) from its own release, awaiting the peer's.
    pending: Option<Vec<u128>>,
}

impl Side {
    pub(crate) fn new(
        params: Params,
        input: SideInput,
        secret: SecretKey,
        peer: PeerInfo,
    ) -> Result<Side, FedError> {
        let rows = input.columns.first().map_or(0, Vec::len);
        if rows == 0 || input.columns.iter().any(|c| c.len() != rows) {
            return Err(FedError::LengthMismatch {
                what: "shared training columns",
                expected: rows.max(1),
                got: input.columns.iter().map(Vec::len).min().unwrap_or(0),
            });
        }
        if input.guest != input.labels.is_some() {
            return Err(FedError::Config {
                field: "labels",
                reason: "the guest, and only the guest, brings labels".into(),
            });
        }
        let norm_bits = ((4 * rows) as f64).log2().ceil() as u32;
        let precond = preconditioner(&input, rows, norm_bits)?;
        let m = input.columns.len();
        let peer_m = peer.columns;
        Ok(Side {
            params,
            secret,
            rows,
            norm_bits,
            peer_columns: None,
            gram: vec![0; m * peer_m],
            label_term: Vec::new(),
            precond,
            coupling_mine: Vec::new(),
            coupling_peer: Vec::new(),
            offset_mine: vec![0; m],
            offset_peer: vec![0; peer_m],
            weights: (vec![0; m], vec![0; peer_m]),
            velocity: (vec![0; m], vec![0; peer_m]),
            step_matrix: None,
            pending: None,
            input,
            peer,
        })
    }

    fn mine(&self) -> usize {
        self.input.columns.len()
    }

    fn he(context: &'static str) -> impl Fn(he::HeError) -> FedError {
        move |source| FedError::He { context, source }
    }

    /// Set-up 1: this party's columns under its own key.
    pub(crate) fn encrypted_columns(&self) -> Result<Vec<EncryptedVector>, FedError> {
        self.input
            .columns
            .iter()
            .map(|column| self.secret.encrypt(column, FEATURE_BOUND))
            .collect::<Result<_, _>>()
            .map_err(Self::he("encrypting training columns"))
    }

    /// Set-up 1, the other way: the peer's encrypted columns.
    pub(crate) fn accept_columns(&mut self, columns: &[EncryptedVector]) -> Result<(), FedError> {
        if columns.len() != self.peer.columns || columns.iter().any(|c| c.len() != self.rows) {
            return Err(self.protocol("its columns do not have the announced shape"));
        }
        let prepared = self
            .peer
            .public
            .prepare_columns(&self.params, columns)
            .map_err(Self::he("preparing the peer's columns"))?;
        self.peer_columns = Some(prepared);
        Ok(())
    }

    fn protocol(&self, reason: &str) -> FedError {
        FedError::Protocol {
            peer: self.peer.name.clone(),
            reason: reason.into(),
        }
    }

    fn peer_columns(&self) -> Result<&PreparedColumns, FedError> {
        self.peer_columns
            .as_ref()
            .ok_or_else(|| self.protocol("its columns have not arrived"))
    }

    /// Set-up 2 (the host): X_Gᵀ x_j for each own column j, released to the guest. The host
    /// keeps the masks: its share of the Gram, X_Hᵀ X_G row by row.
    /// Set-up 2 (the guest): X_Hᵀ (1 − 2y), released to the host.
    pub(crate) fn gram_releases(&mut self) -> Result<Vec<MaskedColumns>, FedError> {
        let peer_columns = self.peer_columns()?;
        let public = &self.peer.public;
        let vectors: Vec<Vec<i64>> = match &self.input.labels {
            Some(labels) => vec![labels.iter().map(|&y| 1 - 2 * y as i64).collect()],
            None => self.input.columns.clone(),
        };
        let mut releases = Vec::with_capacity(vectors.len());
        let mut shares = Vec::new();
        for vector in &vectors {
            let bound = FEATURE_BOUND * vector.iter().map(|x| i128::from(x.abs())).sum::<i128>();
            let plain = PreparedMatrix::new(&self.params, self.rows, 1, vector)
                .map_err(Self::he("preparing a column"))?;
            let product = public
                .multiply_columns(&self.params, peer_columns, &plain, bound)
                .map_err(Self::he("multiplying the peer's columns"))?;
            let (masked, masks) = public
                .mask_and_flood(&self.params, product, &self.peer.packing)
                .map_err(Self::he("releasing a Gram product"))?;
            shares.extend(masks.shares().into_iter().map(|s| residue(s as i128)));
            releases.push(masked);
        }
        if self.input.guest {
            // The guest's share of 2·c_H, in the host's columns.
            self.label_term = shares;
        } else {
            // Row j of the host's share is X_Gᵀ x_j: its share of X_Hᵀ X_G, row-major.
            self.gram = shares;
        }
        Ok(releases)
    }

    /// Set-up 2, receiving: the guest decrypts the Gram columns, the host its 2·c_H. Then both
    /// scale their shares.
    pub(crate) fn accept_gram(&mut self, releases: &[MaskedColumns]) -> Result<(), FedError> {
        let (m, peer_m) = (self.mine(), self.peer.columns);
        let expected = if self.input.guest { peer_m } else { 1 };
        if releases.len() != expected {
            return Err(self.protocol("wrong number of Gram releases"));
        }
        let mut decrypted = Vec::with_capacity(releases.len());
        for release in releases {
            let values = self
                .secret
                .decrypt_masked(release)
                .map_err(Self::he("decrypting a Gram release"))?;
            if values.len() != m || release.modulus_bits() < crate::shares::SHARE_BITS {
                return Err(self.protocol("a Gram release has the wrong shape"));
            }
            decrypted.push(values);
        }
        if self.input.guest {
            // Release j is column j of X_Gᵀ X_H.
            for (j, column) in decrypted.iter().enumerate() {
                for i in 0..m {
                    self.gram[i * peer_m + j] = residue(column[i] as i128);
                }
            }
        } else {
            self.label_term = decrypted[0].iter().map(|&x| residue(x as i128)).collect();
        }
        // Scale: the Gram is at 2^(f_me + f_peer), wanted at 2^GRAM_BITS of XᵀX / 2^t.
        let first = self.input.guest;
        let gram_shift =
            GRAM_BITS as i32 - (self.input.frac_bits + self.peer.frac_bits + self.norm_bits) as i32;
        for x in &mut self.gram {
            *x = rescale(*x, gram_shift, first);
        }
        // 2·c_H at 2^(f_H + 1) → c_H·4 / 2^t at 2^GRAM_BITS (see `preconditioner`).
        let host_frac = if self.input.guest {
            self.peer.frac_bits
        } else {
            self.input.frac_bits
        };
        let label_shift = GRAM_BITS as i32 + 1 - (host_frac + self.norm_bits) as i32;
        for x in &mut self.label_term {
            *x = rescale(*x, label_shift, first);
        }
        Ok(())
    }

    /// Set-up 3: the rows of this party's Gram share (and the guest's share of c_H), gadget
    /// encrypted, for the peer to multiply by its preconditioner.
    pub(crate) fn coupling_vectors(&self) -> Result<Vec<EncryptedVector>, FedError> {
        let peer_m = self.peer.columns;
        let mut out: Vec<EncryptedVector> = self
            .gram
            .chunks(peer_m)
            .map(|row| encrypt_vector(&self.secret, row))
            .collect::<Result<_, _>>()?;
        if self.input.guest {
            out.push(encrypt_vector(&self.secret, &self.label_term)?);
        }
        Ok(out)
    }

    /// Set-up 3, the peer's vectors: N_me times each (column i of K_{me,peer}, and the host
    /// also k_H), released to the peer. Keeps the masks and adds its local part N_me·gram.
    pub(crate) fn coupling_releases(
        &mut self,
        vectors: &[EncryptedVector],
    ) -> Result<Vec<MaskedColumns>, FedError> {
        let (m, peer_m) = (self.mine(), self.peer.columns);
        let expected = peer_m + usize::from(!self.input.guest);
        if vectors.len() != expected {
            return Err(self.protocol("wrong number of coupling vectors"));
        }
        let precond: Vec<u128> = self.precond.iter().map(|&x| residue(x)).collect();
        let matrix = prepare_matrix(&self.params, &precond, m, m)?;
        let mut releases = Vec::with_capacity(vectors.len());
        // K_{me,peer} = N·(my Gram share) + N·(the peer's, column by column).
        let mut coupling = matmul(&precond, &self.gram, m, m, peer_m);
        for (i, vector) in vectors.iter().enumerate() {
            let (masked, shares) = release_product(
                &self.params,
                &self.peer.public,
                &self.peer.packing,
                vector,
                &matrix,
            )?;
            if i < peer_m {
                for r in 0..m {
                    coupling[r * peer_m + i] = add(coupling[r * peer_m + i], shares[r]);
                }
            } else {
                // The host: k_H = N_H·(2c_H scaled), both shares.
                let local = matmul(&precond, &self.label_term, m, m, 1);
                self.offset_mine = local
                    .iter()
                    .zip(&shares)
                    .map(|(&a, &b)| add(a, b))
                    .collect();
            }
            releases.push(masked);
        }
        self.coupling_mine = coupling;
        Ok(releases)
    }

    /// Set-up 3, receiving: this party's shares of K_{peer,me} (and the guest's of k_H). Then
    /// both K shares are brought to COUPLING_BITS and k to WEIGHT_BITS; the guest adds its own
    /// k_G, computed in the clear.
    pub(crate) fn accept_coupling(&mut self, releases: &[MaskedColumns]) -> Result<(), FedError> {
        let (m, peer_m) = (self.mine(), self.peer.columns);
        let expected = m + usize::from(self.input.guest);
        if releases.len() != expected {
            return Err(self.protocol("wrong number of coupling releases"));
        }
        let mut coupling = vec![0u128; peer_m * m];
        for (i, release) in releases.iter().enumerate() {
            let shares = receive_product(&self.secret, release, peer_m, &self.peer.name)?;
            if i < m {
                for r in 0..peer_m {
                    coupling[r * m + i] = shares[r];
                }
            } else {
                self.offset_peer = shares;
            }
        }
        self.coupling_peer = coupling;
        let first = self.input.guest;
        let down = PRECOND_BITS + GRAM_BITS - COUPLING_BITS;
        for x in self.coupling_mine.iter_mut().chain(&mut self.coupling_peer) {
            *x = truncate(*x, down, first);
        }
        let down = PRECOND_BITS + GRAM_BITS - WEIGHT_BITS;
        for x in self.offset_mine.iter_mut().chain(&mut self.offset_peer) {
            *x = truncate(*x, down, first);
        }
        if self.input.guest {
            self.offset_mine = guest_offset(&self.input, self.rows)?;
        }
        // The step product: blockdiag(K_{me,peer} share, K_{peer,me} share) on the peer's
        // (own weights ‖ share of mine).
        let width = peer_m + m;
        let mut block = vec![0u128; width * width];
        for r in 0..m {
            for c in 0..peer_m {
                block[r * width + c] = self.coupling_mine[r * peer_m + c];
            }
        }
        for r in 0..peer_m {
            for c in 0..m {
                block[(m + r) * width + peer_m + c] = self.coupling_peer[r * m + c];
            }
        }
        self.step_matrix = Some(prepare_matrix(&self.params, &block, width, width)?);
        Ok(())
    }

    /// A step, 1: this party's shares of (its own weights ‖ the peer's), gadget-encrypted.
    pub(crate) fn step_vector(&self) -> Result<EncryptedVector, FedError> {
        let mut v = self.weights.0.clone();
        v.extend_from_slice(&self.weights.1);
        encrypt_vector(&self.secret, &v)
    }

    /// A step, 2: the product of the peer's step vector with this party's K shares, released
    /// to the peer; this party keeps the masks and adds its local terms.
    pub(crate) fn step_release(
        &mut self,
        vector: &EncryptedVector,
    ) -> Result<MaskedColumns, FedError> {
        let (m, peer_m) = (self.mine(), self.peer.columns);
        let matrix = self
            .step_matrix
            .as_ref()
            .ok_or_else(|| self.protocol("a step before the set-up finished"))?;
        let (masked, mut shares) = release_product(
            &self.params,
            &self.peer.public,
            &self.peer.packing,
            vector,
            matrix,
        )?;
        // Local terms: u_me += K_{me,peer}·(my share of w_peer); u_peer += K_{peer,me}·(my
        // share of w_me).
        let mine = matmul(&self.coupling_mine, &self.weights.1, m, peer_m, 1);
        let peers = matmul(&self.coupling_peer, &self.weights.0, peer_m, m, 1);
        for (s, l) in shares.iter_mut().zip(mine.iter().chain(&peers)) {
            *s = add(*s, *l);
        }
        self.pending = Some(shares);
        Ok(masked)
    }

    /// A step, 3: the peer's release of its product with this party's vector; completes the
    /// shares of u = K·w, truncates them and updates velocities and weights.
    pub(crate) fn finish_step(&mut self, release: &MaskedColumns) -> Result<(), FedError> {
        let (m, peer_m) = (self.mine(), self.peer.columns);
        let own = self
            .pending
            .take()
            .ok_or_else(|| self.protocol("a step result before this party's release"))?;
        let theirs = receive_product(&self.secret, release, m + peer_m, &self.peer.name)?;
        // Own release: (u_me, u_peer); the peer's: (u_peer, u_me).
        let first = self.input.guest;
        let u_me: Vec<u128> = (0..m)
            .map(|i| truncate(add(own[i], theirs[peer_m + i]), COUPLING_BITS, first))
            .collect();
        let u_peer: Vec<u128> = (0..peer_m)
            .map(|i| truncate(add(own[m + i], theirs[i]), COUPLING_BITS, first))
            .collect();
        let rate = (self.input.rate * f64::from(1u32 << RATE_BITS)).round() as i128;
        let momentum = (self.input.momentum * f64::from(1u32 << RATE_BITS)).round() as i128;
        let update = |w: &mut [u128], v: &mut [u128], k: &[u128], u: &[u128]| {
            for i in 0..w.len() {
                // Δ = −(w + k + u); v ← trunc(μ·v + η·Δ); w ← w + v.
                let delta = sub(0, add(add(w[i], k[i]), u[i]));
                let next = add(scale(v[i], momentum), scale(delta, rate));
                v[i] = truncate(next, RATE_BITS, first);
                w[i] = add(w[i], v[i]);
            }
        };
        update(
            &mut self.weights.0,
            &mut self.velocity.0,
            &self.offset_mine,
            &u_me,
        );
        update(
            &mut self.weights.1,
            &mut self.velocity.1,
            &self.offset_peer,
            &u_peer,
        );
        Ok(())
    }

    /// The end: this party's share of the peer's weights, for the peer.
    pub(crate) fn peer_weight_share(&self) -> Vec<u128> {
        self.weights.1.clone()
    }

    /// The end: this party's weights, from its share and the peer's, in real units.
    pub(crate) fn weights(&self, peer_share: &[u128]) -> Result<Vec<f64>, FedError> {
        if peer_share.len() != self.mine() {
            return Err(self.protocol("its share of this party's weights has the wrong length"));
        }
        let unit = f64::from(1u32 << WEIGHT_BITS);
        Ok(self
            .weights
            .0
            .iter()
            .zip(peer_share)
            .map(|(&a, &b)| signed(add(a, b)) as f64 / unit)
            .collect())
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
fn own_hessian(input: &SideInput, rows: usize) -> Vec<f64> {
    let m = input.columns.len();
    let unit = f64::from(1u32 << input.frac_bits);
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

/// N = round(H_PP^-1 · 2^t/(4n) · 2^PRECOND_BITS): with the Gram scaled to XᵀX/2^t at
/// GRAM_BITS, N·Ĝ = M·XᵀX/(4n) at PRECOND_BITS + GRAM_BITS, and N·(2c scaled) = 4·M·c·... /n
/// likewise (c scaled to 4c/2^t).
fn preconditioner(input: &SideInput, rows: usize, norm_bits: u32) -> Result<Vec<i128>, FedError> {
    let m = input.columns.len();
    let inverse = invert(&own_hessian(input, rows), m).ok_or_else(|| FedError::Config {
        field: "l2",
        reason: format!(
            "{}: the columns are linearly dependent on the training rows and λ = {} does not \
             make their Gram invertible",
            input.name, input.l2
        ),
    })?;
    let factor = 2f64.powi(norm_bits as i32) / (4.0 * rows as f64) * 2f64.powi(PRECOND_BITS as i32);
    Ok(inverse
        .iter()
        .map(|x| (x * factor).round() as i128)
        .collect())
}

/// The guest's k_G = M_G·c_G / n in the clear, as its share (the host's is zero).
fn guest_offset(input: &SideInput, rows: usize) -> Result<Vec<u128>, FedError> {
    let m = input.columns.len();
    let labels = input.labels.as_deref().unwrap_or(&[]);
    let unit = f64::from(1u32 << input.frac_bits);
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
    let inverse = invert(&own_hessian(input, rows), m).ok_or_else(|| FedError::Config {
        field: "l2",
        reason: format!("{}: singular Gram", input.name),
    })?;
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

    /// Guest columns (4 and the intercept) and host columns (6, each correlated with a guest
    /// column), quantised with 10 fraction bits, and labels from a logistic model.
    fn book(rows: usize) -> (Vec<Vec<i64>>, Vec<Vec<i64>>, Vec<f64>) {
        let mut draw = Draw(7);
        let q = |x: f64| (x.clamp(-7.9, 7.9) * 1024.0).round() as i64;
        let mut guest = vec![Vec::new(); 5];
        let mut host = vec![Vec::new(); 6];
        let mut labels = Vec::with_capacity(rows);
        for _ in 0..rows {
            let g: Vec<f64> = (0..4).map(|_| draw.normal()).collect();
            let h: Vec<f64> = (0..6)
                .map(|j| 0.6 * g[j % 4] + 0.8 * draw.normal())
                .collect();
            let z = 0.8 * g[0] - 0.5 * g[1] + 0.7 * h[2] - 0.9 * h[5] + 0.3 * h[0] - 1.5;
            let u = (draw.next() >> 11) as f64 / (1u64 << 53) as f64;
            labels.push(f64::from(u < 1.0 / (1.0 + (-z).exp())));
            for j in 0..4 {
                guest[j].push(q(g[j]));
            }
            guest[4].push(1024);
            for j in 0..6 {
                host[j].push(q(h[j]));
            }
        }
        (guest, host, labels)
    }

    /// The same iteration in floating point on the same quantised values.
    fn plain_jacobi(
        guest: &[Vec<i64>],
        host: &[Vec<i64>],
        labels: &[f64],
        l2: f64,
        (rate, momentum): (f64, f64),
        steps: usize,
    ) -> Vec<f64> {
        let columns: Vec<Vec<f64>> = guest
            .iter()
            .chain(host)
            .map(|c| c.iter().map(|&x| x as f64 / 1024.0).collect())
            .collect();
        let (m, n) = (columns.len(), labels.len() as f64);
        let blocks = [0..guest.len(), guest.len()..m];
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
                let k = b.len();
                let block: Vec<f64> = b
                    .clone()
                    .flat_map(|i| b.clone().map(move |j| (i, j)))
                    .map(|(i, j)| h[i * m + j])
                    .collect();
                invert(&block, k).unwrap()
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

    #[test]
    fn shared_steps_follow_the_plaintext_iteration() {
        let params = N8192_Q192;
        let rows = 3000;
        let (guest_columns, host_columns, labels) = book(rows);
        let (l2, rate, momentum, steps) = (1e-3, 0.7, 0.3, 12);
        let (guest_secret, guest_public) = SecretKey::generate(&params);
        let (host_secret, host_public) = SecretKey::generate(&params);
        let guest_packing = guest_secret.packing_key(params.max_pack_levels).unwrap();
        let host_packing = host_secret.packing_key(params.max_pack_levels).unwrap();
        let input = |name: &str, columns: &[Vec<i64>], labels: Option<Vec<f64>>| SideInput {
            name: name.into(),
            guest: labels.is_some(),
            columns: columns.to_vec(),
            frac_bits: 10,
            intercept: labels.as_ref().map(|_| 4),
            labels,
            l2,
            rate,
            momentum,
        };
        let mut guest = Side::new(
            params,
            input("guest", &guest_columns, Some(labels.clone())),
            guest_secret,
            PeerInfo {
                name: "host".into(),
                columns: 6,
                frac_bits: 10,
                public: host_public,
                packing: host_packing,
            },
        )
        .unwrap();
        let mut host = Side::new(
            params,
            input("host", &host_columns, None),
            host_secret,
            PeerInfo {
                name: "guest".into(),
                columns: 5,
                frac_bits: 10,
                public: guest_public,
                packing: guest_packing,
            },
        )
        .unwrap();
        let to_host = guest.encrypted_columns().unwrap();
        let to_guest = host.encrypted_columns().unwrap();
        host.accept_columns(&to_host).unwrap();
        guest.accept_columns(&to_guest).unwrap();
        let to_guest = host.gram_releases().unwrap();
        let to_host = guest.gram_releases().unwrap();
        guest.accept_gram(&to_guest).unwrap();
        host.accept_gram(&to_host).unwrap();
        let to_host = guest.coupling_vectors().unwrap();
        let to_guest = host.coupling_vectors().unwrap();
        let from_host = host.coupling_releases(&to_host).unwrap();
        let from_guest = guest.coupling_releases(&to_guest).unwrap();
        guest.accept_coupling(&from_host).unwrap();
        host.accept_coupling(&from_guest).unwrap();
        for _ in 0..steps {
            let to_host = guest.step_vector().unwrap();
            let to_guest = host.step_vector().unwrap();
            let from_host = host.step_release(&to_host).unwrap();
            let from_guest = guest.step_release(&to_guest).unwrap();
            guest.finish_step(&from_host).unwrap();
            host.finish_step(&from_guest).unwrap();
        }
        let guest_weights = guest.weights(&host.peer_weight_share()).unwrap();
        let host_weights = host.weights(&guest.peer_weight_share()).unwrap();
        let want = plain_jacobi(
            &guest_columns,
            &host_columns,
            &labels,
            l2,
            (rate, momentum),
            steps,
        );
        let got: Vec<f64> = guest_weights.iter().chain(&host_weights).copied().collect();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() < 1e-4,
                "weight {i}: shared {g}, plaintext {w}"
            );
        }
        // And the weights are a model: the signs of the generating model.
        assert!(got[0] > 0.1 && got[1] < -0.1 && got[4] < -0.5, "{got:?}");
    }
}
