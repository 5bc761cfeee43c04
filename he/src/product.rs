//! Encrypted vector × plaintext matrix: X^T v for a host's [`PreparedMatrix`] X, and C^T v for
//! the key owner's [`PreparedColumns`] C. Products are exact in Z/2^192 (the NTT and CRT of
//! `ring`) and accumulate over blocks in the NTT domain.

use rayon::prelude::*;

use crate::entities::{
    Ciphertext, EncryptedBlocks, EncryptedColumns, EncryptedVector, PreparedBlocks,
    PreparedColumns, PreparedMatrix, PublicKey, SecretKey, Spread, SpreadMatrix,
};
use crate::error::HeError;
use crate::params::{check_params, Params};
use crate::ring::{ring_for, NttPoly, Ring, MAX_PRODUCT_BITS};
use crate::wide::U192;

impl PreparedMatrix {
    /// Prepares `columns` columns of `rows` integers each, column-major
    /// (`values[column * rows + row]`), every entry within ±`params.max_matrix_abs`.
    pub fn new(
        params: &Params,
        rows: usize,
        columns: usize,
        values: &[i64],
    ) -> Result<Self, HeError> {
        if values.len() != rows * columns {
            return Err(HeError::SizeMismatch {
                what: "matrix entries (rows × columns)",
                expected: rows * columns,
                got: values.len(),
            });
        }
        if rows == 0 || rows > params.max_rows {
            return Err(HeError::SizeMismatch {
                what: "matrix rows (1..=max_rows)",
                expected: params.max_rows,
                got: rows,
            });
        }
        check_entries(params, values, rows)?;
        let ring = ring_for(params);
        let n = params.poly_size;
        let blocks = rows.div_ceil(n);
        let column_l1 = values
            .chunks(rows)
            .map(|col| col.iter().map(|x| x.unsigned_abs()).sum())
            .collect();
        let ntt = (0..columns * blocks)
            .into_par_iter()
            .map(|index| {
                let (column, block) = (index / blocks, index % blocks);
                let start = column * rows + block * n;
                let end = column * rows + ((block + 1) * n).min(rows);
                // P(X) = x_0 − Σ_{i≥1} x_i X^(N−i): the constant coefficient of V·P is Σ v_i x_i.
                let mut poly = vec![0i64; n];
                for (i, &x) in values[start..end].iter().enumerate() {
                    if i == 0 {
                        poly[0] = x;
                    } else {
                        poly[n - i] = -x;
                    }
                }
                ring.forward_small(&poly)
            })
            .collect();
        Ok(PreparedMatrix {
            params_id: params.id,
            rows,
            columns,
            column_l1,
            ntt,
            ring,
        })
    }
}

impl PreparedMatrix {
    /// The 0/1 matrix of bin indicators: column j holds 1 in the rows `ones[j]` (increasing)
    /// and 0 elsewhere. Equal to [`PreparedMatrix::new`] on those values, without making
    /// them: a binning of many columns needs one indicator column per bin.
    pub fn indicators(params: &Params, rows: usize, ones: &[&[u32]]) -> Result<Self, HeError> {
        if rows == 0 || rows > params.max_rows {
            return Err(HeError::SizeMismatch {
                what: "matrix rows (1..=max_rows)",
                expected: params.max_rows,
                got: rows,
            });
        }
        if let Some(column) = ones.iter().find(|column| {
            column.windows(2).any(|w| w[0] >= w[1])
                || column.last().is_some_and(|&r| r as usize >= rows)
        }) {
            return Err(HeError::SizeMismatch {
                what: "indicator rows (increasing, below the matrix rows)",
                expected: rows,
                got: column.last().map_or(0, |&r| r as usize + 1),
            });
        }
        let ring = ring_for(params);
        let n = params.poly_size;
        let blocks = rows.div_ceil(n);
        let ntt = (0..ones.len() * blocks)
            .into_par_iter()
            .map(|index| {
                let (column, block) = (ones[index / blocks], index % blocks);
                let (start, end) = ((block * n) as u32, ((block + 1) * n) as u32);
                let within = &column[column.partition_point(|&r| r < start)..];
                let within = &within[..within.partition_point(|&r| r < end)];
                let positions: Vec<usize> = within.iter().map(|&r| (r - start) as usize).collect();
                ring.forward_reversed_ones(&positions)
            })
            .collect();
        Ok(PreparedMatrix {
            params_id: params.id,
            rows,
            columns: ones.len(),
            column_l1: ones.iter().map(|column| column.len() as u64).collect(),
            ntt,
            ring,
        })
    }
}

impl SpreadMatrix {
    /// Prepares M (`columns` results of `rows` inputs, `values[column * rows + row]`, every
    /// entry within ±`params.max_matrix_abs`) for [`PublicKey::multiply_spread`] with vectors
    /// encrypted in chunks of `chunk` values (a power of two, N/2^max_pack_levels ≤ chunk ≤ N),
    /// to be released to a key owner whose packing key packs `pack_levels` levels, with
    /// results the evaluator declares within ±`bound`.
    ///
    /// Each product ciphertext holds N/chunk results: result j of a ciphertext is
    /// Σ_t v_t·m_jt, the constant-coefficient trick of [`PreparedMatrix::new`] shifted to
    /// coefficient j·chunk; the shifted blocks of a polynomial occupy disjoint coefficient
    /// ranges, so no two results mix. The input count times the results per ciphertext must
    /// stay within `max_rows`, the size the flooding argument covers.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        params: &Params,
        rows: usize,
        columns: usize,
        values: &[i64],
        chunk: usize,
        pack_levels: u32,
        bound: i128,
    ) -> Result<Self, HeError> {
        let n = params.poly_size;
        if values.len() != rows * columns || rows == 0 || columns == 0 {
            return Err(HeError::SizeMismatch {
                what: "spread matrix entries (rows × columns, both positive)",
                expected: rows.max(1) * columns.max(1),
                got: values.len(),
            });
        }
        if !chunk.is_power_of_two() || chunk > n || chunk < n >> params.max_pack_levels {
            return Err(HeError::SizeMismatch {
                what: "spread chunk (a power of two within N/2^max_pack_levels ..= N)",
                expected: n,
                got: chunk,
            });
        }
        let per = n / chunk;
        if rows.saturating_mul(per) > params.max_rows {
            return Err(HeError::SizeMismatch {
                what: "spread matrix rows × results per ciphertext (at most max_rows)",
                expected: params.max_rows,
                got: rows.saturating_mul(per),
            });
        }
        check_entries(params, values, rows)?;
        check_declared_bound(params, bound)?;
        let base = per.trailing_zeros();
        let result_bits = 128 - (bound.max(1) as u128).leading_zeros();
        let fits = (params.message_bits - 1).saturating_sub(result_bits);
        let wanted = columns.next_power_of_two().trailing_zeros();
        let levels = base.max(pack_levels.min(wanted).min(fits));
        if levels > pack_levels || levels > fits {
            return Err(HeError::SizeMismatch {
                what: "spread levels (results per product ciphertext must fit the packing key \
                       and the bound)",
                expected: pack_levels.min(fits) as usize,
                got: levels as usize,
            });
        }
        let ring = ring_for(params);
        let chunks = rows.div_ceil(chunk);
        let group = 1usize << (levels - base);
        let items = columns.div_ceil(1 << levels) * group;
        let ntt = (0..items * chunks)
            .into_par_iter()
            .map(|index| {
                let (item, c) = (index / chunks, index % chunks);
                let (g, i) = (item / group, item % group);
                let mut poly = vec![0i64; n];
                for j in 0..per {
                    let result = (g << levels) + j * group + i;
                    if result >= columns {
                        continue;
                    }
                    let start = c * chunk;
                    let end = (start + chunk).min(rows);
                    for (t, &m) in values[result * rows + start..result * rows + end]
                        .iter()
                        .enumerate()
                    {
                        // X^(j·chunk − t): negacyclic below zero.
                        let position = (j * chunk) as isize - t as isize;
                        if position >= 0 {
                            poly[position as usize] = m;
                        } else {
                            poly[(n as isize + position) as usize] = -m;
                        }
                    }
                }
                ring.forward_small(&poly)
            })
            .collect();
        Ok(SpreadMatrix {
            params_id: params.id,
            rows,
            columns,
            chunk,
            spread: Spread {
                base,
                levels,
                results: columns,
            },
            bound,
            ntt,
            ring,
        })
    }
}

impl SecretKey {
    /// Encrypts `columns` columns of `rows` integers (column-major, |x| ≤ `bound`) in the
    /// layout of [`EncryptedBlocks`], for products released back under a packing key of
    /// `pack_levels` levels. The columns per ciphertext (2^k, k ≤ `pack_levels`) balance the
    /// evaluator's work: it transforms one plaintext polynomial per row chunk (N/2^k rows) and
    /// releases one ciphertext per group of 2^k columns.
    pub fn encrypt_blocks(
        &self,
        values: &[i64],
        rows: usize,
        columns: usize,
        bound: i128,
        pack_levels: u32,
    ) -> Result<EncryptedBlocks, HeError> {
        let n = self.params.poly_size;
        if values.len() != rows * columns || rows == 0 || columns == 0 {
            return Err(HeError::SizeMismatch {
                what: "block values (rows × columns, both positive)",
                expected: rows.max(1) * columns.max(1),
                got: values.len(),
            });
        }
        // A release costs about as much as 50 transforms: minimise transforms + 50 · releases.
        let levels = pack_levels.min(self.params.max_pack_levels);
        let k = (0..=levels)
            .min_by_key(|&k| (rows << k).div_ceil(n) + 50 * columns.div_ceil(1 << k))
            .unwrap_or(0);
        let (per, chunk) = (1usize << k, n >> k);
        let (groups, chunks) = (columns.div_ceil(per), rows.div_ceil(chunk));
        let blocks = (0..groups * chunks)
            .map(|index| {
                let (group, c) = (index / chunks, index % chunks);
                let mut poly = vec![0i64; n];
                for i in 0..per.min(columns - group * per) {
                    let column = group * per + i;
                    let start = c * chunk;
                    let end = (start + chunk).min(rows);
                    poly[i * chunk..i * chunk + end - start]
                        .copy_from_slice(&values[column * rows + start..column * rows + end]);
                }
                self.encrypt(&poly, bound)
            })
            .collect::<Result<_, _>>()?;
        Ok(EncryptedBlocks {
            rows,
            columns,
            chunk,
            blocks,
        })
    }
}

impl PublicKey {
    /// Encrypted X^T v: for every column j of `matrix`, Σ_i x_ij·v_i under the owner's key.
    /// Refuses products whose worst case (declared |v| bound × Σ_i |x_ij|) could wrap.
    pub fn multiply(
        &self,
        params: &Params,
        vector: &EncryptedVector,
        matrix: &PreparedMatrix,
    ) -> Result<EncryptedColumns, HeError> {
        check_params(params, self.params_id, "public key")?;
        check_params(params, vector.params_id, "encrypted vector")?;
        check_params(params, matrix.params_id, "prepared matrix")?;
        if vector.key != self.id {
            return Err(HeError::WrongKey {
                what: "encrypted vector",
            });
        }
        if vector.len != matrix.rows {
            return Err(HeError::SizeMismatch {
                what: "encrypted vector length vs matrix rows",
                expected: matrix.rows,
                got: vector.len,
            });
        }
        let ring = &matrix.ring;
        let n = params.poly_size;
        let transformed: Vec<(NttPoly, NttPoly)> = vector
            .blocks
            .par_iter()
            .map(|block| {
                let (a, b) = block.expand(n);
                (ring.forward_wide(&a), ring.forward_wide(&b))
            })
            .collect();
        self.matrix_product(params, &transformed, vector.value_bound, matrix)
    }

    /// [`multiply`](Self::multiply) with the encrypted vector already transformed, as a
    /// one-column [`PreparedColumns`] whose values the key owner declared within ±`bound`:
    /// for an evaluator that multiplies one vector by many matrices, the vector's transform
    /// is done once.
    pub fn multiply_prepared(
        &self,
        params: &Params,
        vector: &PreparedColumns,
        bound: i128,
        matrix: &PreparedMatrix,
    ) -> Result<EncryptedColumns, HeError> {
        check_params(params, self.params_id, "public key")?;
        check_params(params, vector.params_id, "prepared vector")?;
        check_params(params, matrix.params_id, "prepared matrix")?;
        if vector.key != self.id {
            return Err(HeError::WrongKey {
                what: "prepared vector",
            });
        }
        if vector.columns() != 1 || vector.rows != matrix.rows {
            return Err(HeError::SizeMismatch {
                what: "prepared vector (one column) length vs matrix rows",
                expected: matrix.rows,
                got: vector.rows * vector.columns(),
            });
        }
        self.matrix_product(params, &vector.ntt, bound, matrix)
    }

    /// X^T v from v's transformed blocks, refusing results that could wrap.
    fn matrix_product(
        &self,
        params: &Params,
        transformed: &[(NttPoly, NttPoly)],
        bound: i128,
        matrix: &PreparedMatrix,
    ) -> Result<EncryptedColumns, HeError> {
        let l1 = matrix.column_l1.iter().copied().max().unwrap_or(0);
        // Saturating: a worst case beyond i128 is refused like any other that does not fit.
        let worst = i128::from(l1).saturating_mul(bound.max(0));
        if worst > params.max_message_abs() {
            return Err(HeError::ProductTooLarge {
                bits: (worst as f64).log2(),
                message_bits: params.message_bits,
            });
        }
        let n = params.poly_size;
        let blocks = matrix.rows.div_ceil(n);
        // The exact integer accumulation must stay below the CRT range.
        debug_assert!(((blocks * n) as f64).log2() + 191.0 + 15.0 < f64::from(MAX_PRODUCT_BITS));
        let ring = &matrix.ring;
        let columns = (0..matrix.columns)
            .into_par_iter()
            .map(|column| {
                let x = &matrix.ntt[column * blocks..(column + 1) * blocks];
                accumulate(ring, n, transformed.iter().zip(x))
            })
            .collect();
        Ok(EncryptedColumns {
            params_id: params.id,
            key: self.id,
            bound: worst,
            columns,
            spread: None,
        })
    }

    /// M·v for a [`SpreadMatrix`] M and the key owner's vector v encrypted in chunks of
    /// [`SpreadMatrix::chunk`] values (the last chunk the rest), exact modulo 2^p with
    /// wrapping allowed (residues): many results per ciphertext product, so the release packs
    /// ciphertexts rather than results. The results are released by
    /// [`mask_and_flood`](Self::mask_and_flood) like any others.
    pub fn multiply_spread(
        &self,
        params: &Params,
        chunks: &[EncryptedVector],
        matrix: &SpreadMatrix,
    ) -> Result<EncryptedColumns, HeError> {
        check_params(params, self.params_id, "public key")?;
        check_params(params, matrix.params_id, "spread matrix")?;
        let count = matrix.rows.div_ceil(matrix.chunk);
        if chunks.len() != count {
            return Err(HeError::SizeMismatch {
                what: "encrypted chunks of the vector",
                expected: count,
                got: chunks.len(),
            });
        }
        for (c, vector) in chunks.iter().enumerate() {
            check_params(params, vector.params_id, "encrypted vector")?;
            if vector.key != self.id {
                return Err(HeError::WrongKey {
                    what: "encrypted vector",
                });
            }
            let expected = matrix.chunk.min(matrix.rows - c * matrix.chunk);
            if vector.len != expected {
                return Err(HeError::SizeMismatch {
                    what: "encrypted chunk length",
                    expected,
                    got: vector.len,
                });
            }
        }
        let ring = &matrix.ring;
        let n = params.poly_size;
        let transformed: Vec<(NttPoly, NttPoly)> = chunks
            .par_iter()
            .map(|vector| {
                let (a, b) = vector.blocks[0].expand(n);
                (ring.forward_wide(&a), ring.forward_wide(&b))
            })
            .collect();
        let base = matrix.spread.base;
        let columns = matrix
            .ntt
            .par_chunks(count)
            .map(|item| {
                let (a, b) = accumulate(ring, n, transformed.iter().zip(item));
                // Scale by 2^base: the layout of a ciphertext packed `base` levels.
                let scale = |poly: Vec<U192>| poly.into_iter().map(|x| x.shl(base)).collect();
                (scale(a), scale(b))
            })
            .collect();
        Ok(EncryptedColumns {
            params_id: params.id,
            key: self.id,
            bound: matrix.bound,
            columns,
            spread: Some(matrix.spread),
        })
    }

    /// Transforms the key owner's [`EncryptedBlocks`] for repeated products.
    pub fn prepare_blocks(
        &self,
        params: &Params,
        blocks: &EncryptedBlocks,
    ) -> Result<PreparedBlocks, HeError> {
        check_params(params, self.params_id, "public key")?;
        let n = params.poly_size;
        let (chunk, rows, columns) = (blocks.chunk, blocks.rows, blocks.columns);
        let per = n.checked_div(chunk).unwrap_or(0);
        let expected =
            if per == 0 || !chunk.is_power_of_two() || rows == 0 || rows > params.max_rows {
                usize::MAX
            } else {
                columns.div_ceil(per) * rows.div_ceil(chunk)
            };
        if blocks.blocks.len() != expected || per > 1 << params.max_pack_levels {
            return Err(HeError::SizeMismatch {
                what: "encrypted blocks (groups × row chunks)",
                expected,
                got: blocks.blocks.len(),
            });
        }
        for block in &blocks.blocks {
            check_params(params, block.params_id, "encrypted block")?;
            if block.key != self.id || block.blocks.len() != 1 {
                return Err(HeError::WrongKey {
                    what: "encrypted block",
                });
            }
        }
        let ring = ring_for(params);
        let ntt = blocks
            .blocks
            .par_iter()
            .map(|block| {
                let (a, b) = block.blocks[0].expand(n);
                (ring.forward_wide(&a), ring.forward_wide(&b))
            })
            .collect();
        Ok(PreparedBlocks {
            params_id: params.id,
            key: self.id,
            rows,
            columns,
            chunk,
            ntt,
            ring,
        })
    }

    /// Encrypted C^T v for the key owner's prepared blocks C and the evaluator's plaintext
    /// vector v (|v_i| ≤ `max_matrix_abs`): for every column j, Σ_i c_ij·v_i, exact modulo
    /// 2^p and, like [`multiply_columns`](Self::multiply_columns), never refused: `bound` is
    /// the bound the evaluator declares. Per row chunk the vector becomes one polynomial
    /// Y(X) = Σ_t v_t·X^(−t); coefficient i·chunk of C·Y is column i's product (the columns of
    /// a block occupy disjoint ranges), so one ciphertext carries a group's results, already
    /// in packed positions.
    pub fn multiply_blocks(
        &self,
        params: &Params,
        blocks: &PreparedBlocks,
        vector: &[i64],
        bound: i128,
    ) -> Result<EncryptedColumns, HeError> {
        check_params(params, self.params_id, "public key")?;
        check_params(params, blocks.params_id, "prepared blocks")?;
        if blocks.key != self.id {
            return Err(HeError::WrongKey {
                what: "prepared blocks",
            });
        }
        if vector.len() != blocks.rows {
            return Err(HeError::SizeMismatch {
                what: "plaintext vector rows vs encrypted block rows",
                expected: blocks.rows,
                got: vector.len(),
            });
        }
        check_entries(params, vector, vector.len())?;
        check_declared_bound(params, bound)?;
        let n = params.poly_size;
        let chunk = blocks.chunk;
        let chunks = blocks.rows.div_ceil(chunk);
        let ring = &blocks.ring;
        let plain: Vec<NttPoly> = vector
            .par_chunks(chunk)
            .map(|values| {
                let mut poly = vec![0i64; n];
                for (t, &v) in values.iter().enumerate() {
                    if t == 0 {
                        poly[0] = v;
                    } else {
                        poly[n - t] = -v;
                    }
                }
                ring.forward_small(&poly)
            })
            .collect();
        let base = (n / chunk).trailing_zeros();
        let columns = blocks
            .ntt
            .par_chunks(chunks)
            .map(|group| {
                let (a, b) = accumulate(ring, n, group.iter().zip(&plain));
                let scale = |poly: Vec<U192>| poly.into_iter().map(|x| x.shl(base)).collect();
                (scale(a), scale(b))
            })
            .collect();
        Ok(EncryptedColumns {
            params_id: params.id,
            key: self.id,
            bound,
            columns,
            spread: Some(Spread {
                base,
                levels: base,
                results: blocks.columns,
            }),
        })
    }

    /// Transforms the key owner's encrypted columns for repeated products (see
    /// [`PreparedColumns`]). Every column must be under this key and of the same length.
    pub fn prepare_columns(
        &self,
        params: &Params,
        columns: &[EncryptedVector],
    ) -> Result<PreparedColumns, HeError> {
        check_params(params, self.params_id, "public key")?;
        let rows = columns.first().map_or(0, EncryptedVector::len);
        if rows == 0 || rows > params.max_rows {
            return Err(HeError::SizeMismatch {
                what: "encrypted column rows (1..=max_rows)",
                expected: params.max_rows,
                got: rows,
            });
        }
        for column in columns {
            check_params(params, column.params_id, "encrypted vector")?;
            if column.key != self.id {
                return Err(HeError::WrongKey {
                    what: "encrypted column",
                });
            }
            if column.len != rows {
                return Err(HeError::SizeMismatch {
                    what: "encrypted column length",
                    expected: rows,
                    got: column.len,
                });
            }
        }
        let n = params.poly_size;
        let blocks = rows.div_ceil(n);
        let ring = ring_for(params);
        let ntt = columns
            .par_iter()
            .flat_map_iter(|column| column.blocks.iter())
            .map(|block| {
                let (a, b) = block.expand(n);
                (ring.forward_wide(&a), ring.forward_wide(&b))
            })
            .collect();
        Ok(PreparedColumns {
            params_id: params.id,
            key: self.id,
            rows,
            blocks,
            ntt,
            ring,
        })
    }

    /// Encrypted C^T v for the key owner's encrypted columns C and the evaluator's plaintext
    /// vector v (a one-column [`PreparedMatrix`]): for every column j, Σ_i c_ij·v_i under the
    /// owner's key, exact modulo 2^p.
    ///
    /// Unlike [`multiply`](Self::multiply) nothing is refused: the results may wrap modulo 2^p
    /// on purpose (a key owner may encrypt uniform residues, e.g. integrity-check columns).
    /// `bound` is the public bound the evaluator declares on the results it vouches for; it
    /// decides the packing level of [`mask_and_flood`](Self::mask_and_flood), so evaluators
    /// that declare the same bound release alike. The key owner, who knows its columns,
    /// checks what it decrypts.
    pub fn multiply_columns(
        &self,
        params: &Params,
        columns: &PreparedColumns,
        vector: &PreparedMatrix,
        bound: i128,
    ) -> Result<EncryptedColumns, HeError> {
        check_params(params, self.params_id, "public key")?;
        check_params(params, columns.params_id, "prepared columns")?;
        check_params(params, vector.params_id, "prepared vector")?;
        if columns.key != self.id {
            return Err(HeError::WrongKey {
                what: "prepared columns",
            });
        }
        if vector.columns != 1 || vector.rows != columns.rows {
            return Err(HeError::SizeMismatch {
                what: "plaintext vector rows vs encrypted column rows",
                expected: columns.rows,
                got: vector.rows * vector.columns,
            });
        }
        check_declared_bound(params, bound)?;
        let n = params.poly_size;
        let blocks = columns.blocks;
        let ring = &columns.ring;
        let results = (0..columns.columns())
            .into_par_iter()
            .map(|column| {
                let c = &columns.ntt[column * blocks..(column + 1) * blocks];
                accumulate(ring, n, c.iter().zip(&vector.ntt))
            })
            .collect();
        Ok(EncryptedColumns {
            params_id: params.id,
            key: self.id,
            bound,
            columns: results,
            spread: None,
        })
    }
}

/// Σ_b (a_b, b_b)·x_b over the blocks of one column, accumulated in the NTT domain: the
/// ciphertext of that column's inner product.
/// Refuses plaintext entries beyond ±`max_matrix_abs` (column-major, `rows` per column),
/// naming the first.
fn check_entries(params: &Params, values: &[i64], rows: usize) -> Result<(), HeError> {
    match values.iter().position(|x| x.abs() > params.max_matrix_abs) {
        Some(index) => Err(HeError::MatrixEntryOutOfRange {
            row: index % rows.max(1),
            column: index / rows.max(1),
            value: values[index],
            max: params.max_matrix_abs,
        }),
        None => Ok(()),
    }
}

/// Refuses a declared result bound outside the plaintext space.
fn check_declared_bound(params: &Params, bound: i128) -> Result<(), HeError> {
    if (0..=params.max_message_abs()).contains(&bound) {
        Ok(())
    } else {
        Err(HeError::MessageOutOfRange {
            index: 0,
            value: bound,
            max: params.max_message_abs(),
        })
    }
}

fn accumulate<'a>(
    ring: &Ring,
    n: usize,
    terms: impl Iterator<Item = (&'a (NttPoly, NttPoly), &'a NttPoly)>,
) -> Ciphertext {
    let mut acc_a = NttPoly::zero(n);
    let mut acc_b = NttPoly::zero(n);
    for ((a, b), x) in terms {
        ring.mul_accumulate(&mut acc_a, a, x);
        ring.mul_accumulate(&mut acc_b, b, x);
    }
    (ring.inverse(acc_a), ring.inverse(acc_b))
}
