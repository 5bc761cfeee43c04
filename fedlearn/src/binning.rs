//! Binning statistics across parties: per-bin row and event counts, WOE and IV of every
//! party's columns against the guest's labels.
//!
//! 1. The guest encrypts its 0/1 labels of the aligned rows under a fresh key and sends them,
//!    with its public and packing keys, to every host ([`Message::BinningLabels`]).
//! 2. Each host bins each of its columns on the aligned rows (its job preparation; 10 quantile
//!    bins where the preparation names none), merges bins holding fewer rows than its
//!    [`BinningLimits`] allow, and computes under HE, for every bin, the number of events in
//!    it: its 0/1 bin-indicator matrix times the encrypted labels. It masks and floods the
//!    products (the released ciphertexts then depend on its indicators only through the
//!    counts) and sends them with the masks, the bin sizes, and its column names or aliases
//!    ([`Message::BinningCounts`]).
//! 3. The guest decrypts, removes the masks and checks every count: 0 ≤ events ≤ rows per
//!    bin, and per column the bins hold all aligned rows and all its positives. It bins and
//!    counts its own columns in the clear.
//!
//! What each party learns. The guest: per host column, the sizes and event counts of the
//! host's bins, in the host's bin order — not their edges, not which row is in which bin (the
//! disclosure of FATE's hetero binning); nothing it decrypts goes back to a host. A host: the
//! number of aligned rows and the ciphertexts of the labels, nothing else. The counts are
//! exact by design, so a guest that encrypts something other than 0/1 labels (2^j for row j,
//! say) learns from each count which of those rows fall in the bin; hosts refuse a labels
//! ciphertext whose declared bound is not 1, but cannot see its contents, so against such a
//! guest only the number of binning jobs a host's policy allows bounds the loss.
//!
//! WOE and IV follow the credit convention ([`ColumnStats`]).

use std::collections::BTreeMap;

use he::{MaskedColumns, PackingKey, PreparedColumns, PreparedMatrix, PublicKey, SecretKey};
use serde::{Deserialize, Serialize};

use crate::data::Table;
use crate::error::FedError;
use crate::message::{ColumnSizes, Message};
use crate::party::job_nonce;
use crate::prep::{Bins, Fitted, KeptBins, Prep, RowBins};
use crate::protocol::{packing_levels, PARAMS};
use crate::woe::ColumnStats;
use he::signed_residue;

/// Host bins per HE product: bounds the host's memory (each bin holds its transformed
/// indicator column, 32 bytes per row) and sets the packing (32 results per ciphertext).
const BINS_PER_PRODUCT: usize = 32;

/// A host's policy on the bins it discloses: every bin it sends holds at least `min_rows`
/// rows and at least `min_share` of the aligned rows; smaller bins are merged first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BinningLimits {
    /// Fewest rows in a bin.
    pub min_rows: u64,
    /// Smallest share of the aligned rows in a bin.
    pub min_share: f64,
}

impl BinningLimits {
    /// The fewest rows a disclosed bin of `rows` aligned rows may hold.
    pub fn threshold(&self, rows: u64) -> u64 {
        self.min_rows
            .max((self.min_share * rows as f64).ceil() as u64)
            .max(1)
    }
}

/// The statistics of a binning job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BinningReport {
    /// Aligned rows.
    pub rows: u64,
    /// Events among them.
    pub events: u64,
    /// The guest's columns, then each host's, in job order.
    pub columns: Vec<ColumnStats>,
}

/// Per-bin counts of one party's columns on all of `table`'s rows, with its preparation (10
/// quantile bins where it names none).
fn bin_columns(party: &str, prep: &Prep, table: &Table) -> Result<Vec<RowBins>, FedError> {
    let all: Vec<usize> = (0..table.rows()).collect();
    Fitted::fit(party, &prep.binning_every_column(table), table, &all)?.row_bins(table)
}

/// The guest's side of a binning job.
pub struct BinningGuest {
    secret: SecretKey,
    rows: u64,
    events: u64,
    hosts: Vec<String>,
    own: Vec<ColumnStats>,
    kept: Vec<KeptBins>,
    received: BTreeMap<String, Vec<ColumnStats>>,
}

impl BinningGuest {
    /// Counts the guest's own columns and returns the message for every host: the labels of
    /// `table` (aligned, with labels), encrypted.
    pub fn new(
        party: &str,
        table: &Table,
        prep: &Prep,
        hosts: &[String],
    ) -> Result<(BinningGuest, Message), FedError> {
        let labels = table
            .labels()
            .ok_or_else(|| FedError::config("labels", "the guest's table has no label column"))?;
        let rows = table.rows() as u64;
        let events = labels.iter().filter(|&&y| y == 1.0).count() as u64;
        let (mut own, mut kept) = (Vec::new(), Vec::new());
        for column in bin_columns(party, prep, table)? {
            let mut counts = vec![(0u64, 0u64); column.labels.len()];
            for (&bin, &y) in column.of_row.iter().zip(labels) {
                counts[bin].0 += 1;
                counts[bin].1 += u64::from(y == 1.0);
            }
            let missing = column.bins.value_bins();
            let categorical = matches!(column.bins, Bins::Categories { .. });
            kept.push(KeptBins {
                name: column.name.clone(),
                reported: column.name.clone(),
                transform: column.transform,
                bins: column.bins,
                // The report shows the non-empty bins.
                groups: (0..counts.len())
                    .filter(|&b| counts[b].0 > 0)
                    .map(|b| vec![b])
                    .collect(),
            });
            let bins = column
                .labels
                .into_iter()
                .zip(counts)
                .enumerate()
                .map(|(b, (label, (n, e)))| (label, n, e, b == missing))
                .collect();
            own.push(ColumnStats::new(
                party,
                (column.name, categorical),
                bins,
                rows,
                events,
            ));
        }
        let (secret, public) = SecretKey::generate(&PARAMS);
        let packing = secret
            .packing_key(packing_levels(BINS_PER_PRODUCT))
            .map_err(FedError::he("making the packing key"))?;
        let values: Vec<i64> = labels.iter().map(|&y| y as i64).collect();
        let encrypted = secret
            .encrypt(&values, 1)
            .map_err(FedError::he("encrypting the labels"))?;
        let message = Message::BinningLabels {
            job: job_nonce()?,
            key: Box::new(public),
            packing: Box::new(packing),
            labels: encrypted,
        };
        Ok((
            BinningGuest {
                secret,
                rows,
                events,
                hosts: hosts.to_vec(),
                own,
                kept,
                received: BTreeMap::new(),
            },
            message,
        ))
    }

    /// Takes a host's counts, checking them.
    pub fn receive(&mut self, host: &str, message: Message) -> Result<(), FedError> {
        let wrong = |reason: String| FedError::protocol(host, reason);
        if !self.hosts.iter().any(|h| h == host) || self.received.contains_key(host) {
            return Err(wrong("binning counts from a host that owes none".into()));
        }
        let Message::BinningCounts {
            columns,
            products,
            shares,
        } = message
        else {
            return Err(wrong(format!(
                "expected binning counts, got {}",
                message.kind()
            )));
        };
        let bins: usize = columns.iter().map(|c| c.sizes.len()).sum();
        if products.len() != bins.div_ceil(BINS_PER_PRODUCT) || shares.len() != products.len() {
            return Err(wrong(format!(
                "{} products for {bins} bins",
                products.len()
            )));
        }
        let mut events = Vec::with_capacity(bins);
        for (product, shares) in products.iter().zip(&shares) {
            let decrypted = self
                .secret
                .decrypt_masked(product)
                .map_err(|e| wrong(format!("undecryptable counts: {e}")))?;
            if decrypted.len() != shares.len() || decrypted.len() > BINS_PER_PRODUCT {
                return Err(wrong("counts and masks differ in number".into()));
            }
            let modulus = (1u128 << product.modulus_bits()) - 1;
            events.extend(decrypted.iter().zip(shares).map(|(&d, &s)| {
                signed_residue(d.wrapping_add(s) & modulus, product.modulus_bits())
            }));
        }
        if events.len() != bins {
            return Err(wrong(format!("{} counts for {bins} bins", events.len())));
        }
        let mut at = 0;
        let mut stats = Vec::with_capacity(columns.len());
        for column in columns {
            let counts = &events[at..at + column.sizes.len()];
            at += column.sizes.len();
            let consistent = column.sizes.iter().sum::<u64>() == self.rows
                && counts.iter().sum::<i128>() == i128::from(self.events)
                && counts
                    .iter()
                    .zip(&column.sizes)
                    .all(|(&e, &n)| e >= 0 && e <= i128::from(n));
            if !consistent {
                return Err(wrong(format!(
                    "the counts of column {:?} are not counts of the aligned rows' labels",
                    column.name
                )));
            }
            let last = column.sizes.len() - 1;
            let bins = column
                .sizes
                .iter()
                .zip(counts)
                .enumerate()
                .map(|(b, (&n, &e))| {
                    let missing = column.missing_last && b == last;
                    let label = if missing {
                        "missing".into()
                    } else {
                        b.to_string()
                    };
                    (label, n, e as u64, missing)
                })
                .collect();
            stats.push(ColumnStats::new(
                host,
                (column.name, column.categorical),
                bins,
                self.rows,
                self.events,
            ));
        }
        self.received.insert(host.to_owned(), stats);
        Ok(())
    }

    /// The guest's own bins, to keep for a training job on them.
    pub fn kept_bins(&self) -> &[KeptBins] {
        &self.kept
    }

    /// The hosts that have not answered yet.
    pub fn waiting_for(&self) -> Vec<&str> {
        self.hosts
            .iter()
            .filter(|h| !self.received.contains_key(*h))
            .map(String::as_str)
            .collect()
    }

    /// The report, once every host has answered.
    pub fn finish(mut self) -> Result<BinningReport, FedError> {
        if let Some(host) = self.waiting_for().first() {
            return Err(FedError::protocol(host, "no binning counts"));
        }
        let mut columns = std::mem::take(&mut self.own);
        for host in &self.hosts {
            columns.extend(self.received.remove(host).unwrap_or_default());
        }
        Ok(BinningReport {
            rows: self.rows,
            events: self.events,
            columns,
        })
    }
}

/// What a host disclosed in a binning job (for its audit log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BinningDisclosure {
    /// Columns counted.
    pub columns: usize,
    /// Bins whose size and event count reached the guest.
    pub bins: usize,
    /// The fewest rows in any of them.
    pub smallest_bin: u64,
}

/// A host's answer to [`Message::BinningLabels`]: its columns binned on the aligned rows of
/// `table`, bins under `limits` merged, and the encrypted event count of every bin; with what
/// it disclosed and the bins it used, to keep for a training job on them. With
/// `publish_names`, the columns go by their names, otherwise as `party:1`, `party:2`, ….
pub fn answer_binning(
    party: &str,
    guest: &str,
    table: &Table,
    prep: &Prep,
    limits: &BinningLimits,
    publish_names: bool,
    request: Message,
) -> Result<(Message, BinningDisclosure, Vec<KeptBins>), FedError> {
    let Message::BinningLabels {
        key,
        packing,
        labels,
        ..
    } = request
    else {
        return Err(FedError::protocol(
            guest,
            format!("expected the binning labels, got {}", request.kind()),
        ));
    };
    let rows = table.rows();
    if labels.len() != rows {
        return Err(FedError::RowCount {
            party: party.to_owned(),
            expected: labels.len(),
            got: rows,
        });
    }
    if labels.value_bound() != 1 {
        return Err(FedError::protocol(
            guest,
            format!("labels declared within ±{}, not 0/1", labels.value_bound()),
        ));
    }
    let threshold = limits.threshold(rows as u64);
    let (mut columns, mut kept) = (Vec::new(), Vec::new());
    // Every merged bin to count, as (column, bin), and each column's merged bin of every row.
    let mut indicators: Vec<(usize, usize)> = Vec::new();
    let mut rows_of_bin: Vec<Vec<Vec<u32>>> = Vec::new();
    for (k, column) in bin_columns(party, prep, table)?.into_iter().enumerate() {
        let mut sizes = vec![0u64; column.labels.len()];
        for &bin in &column.of_row {
            sizes[bin] += 1;
        }
        let groups = merge_small(&sizes, threshold);
        let merged: Vec<u64> = groups
            .iter()
            .map(|g| g.iter().map(|&b| sizes[b]).sum())
            .collect();
        let mut of_bin = vec![0usize; sizes.len()];
        for (m, group) in groups.iter().enumerate() {
            for &b in group {
                of_bin[b] = m;
            }
        }
        indicators.extend((0..groups.len()).map(|m| (k, m)));
        let mut rows_of = vec![Vec::new(); groups.len()];
        for (row, &b) in column.of_row.iter().enumerate() {
            if let Some(merged) = rows_of.get_mut(of_bin[b]) {
                merged.push(row as u32);
            }
        }
        rows_of_bin.push(rows_of);
        let name = if publish_names {
            column.name.clone()
        } else {
            format!("{party}:{}", k + 1)
        };
        columns.push(ColumnSizes {
            name: name.clone(),
            sizes: merged,
            categorical: matches!(column.bins, Bins::Categories { .. }),
            missing_last: groups.last() == Some(&vec![column.bins.value_bins()]),
        });
        kept.push(KeptBins {
            name: column.name,
            reported: name,
            transform: column.transform,
            bins: column.bins,
            groups,
        });
    }
    // The labels are transformed once for all the products.
    let labels_bound = labels.value_bound();
    let labels = key
        .prepare_columns(&PARAMS, std::slice::from_ref(&labels))
        .map_err(FedError::he("preparing the labels"))?;
    let (mut products, mut shares) = (Vec::new(), Vec::new());
    for chunk in indicators.chunks(BINS_PER_PRODUCT) {
        let ones: Vec<&[u32]> = chunk
            .iter()
            .map(|&(k, m)| rows_of_bin[k][m].as_slice())
            .collect();
        let matrix = PreparedMatrix::indicators(&PARAMS, rows, &ones)
            .map_err(FedError::he("preparing the bin indicators"))?;
        let (masked, masks) = count_events(&key, &packing, (&labels, labels_bound), &matrix)?;
        products.push(masked);
        shares.push(masks);
    }
    let disclosure = BinningDisclosure {
        columns: columns.len(),
        bins: indicators.len(),
        smallest_bin: columns
            .iter()
            .flat_map(|c| c.sizes.iter().copied())
            .min()
            .unwrap_or(0),
    };
    Ok((
        Message::BinningCounts {
            columns,
            products,
            shares,
        },
        disclosure,
        kept,
    ))
}

/// Encrypted indicators^T·labels, masked and flooded, and the masks' shares.
fn count_events(
    key: &PublicKey,
    packing: &PackingKey,
    (labels, bound): (&PreparedColumns, i128),
    matrix: &PreparedMatrix,
) -> Result<(MaskedColumns, Vec<u128>), FedError> {
    let product = key
        .multiply_prepared(&PARAMS, labels, bound, matrix)
        .map_err(FedError::he("counting events per bin"))?;
    let (masked, masks) = key
        .mask_and_flood(&PARAMS, product, packing)
        .map_err(FedError::he("releasing the counts"))?;
    Ok((masked, masks.shares()))
}

/// Groups of adjacent bins (the missing bin, last, joins the smallest other group) such
/// that every non-empty group holds at least `threshold` rows, when the rows allow; empty bins
/// are left out.
fn merge_small(sizes: &[u64], threshold: u64) -> Vec<Vec<usize>> {
    let missing = sizes.len() - 1;
    let mut groups: Vec<Vec<usize>> = (0..sizes.len())
        .filter(|&b| sizes[b] > 0)
        .map(|b| vec![b])
        .collect();
    let size = |g: &Vec<usize>| g.iter().map(|&b| sizes[b]).sum::<u64>();
    while groups.len() > 1 {
        let Some((smallest, _)) = groups
            .iter()
            .enumerate()
            .filter(|(_, g)| size(g) < threshold)
            .min_by_key(|(_, g)| size(g))
        else {
            break;
        };
        let is_missing = |i: usize| groups[i] == [missing];
        let target = if is_missing(smallest) {
            // The smallest other group.
            (0..groups.len())
                .filter(|&i| i != smallest)
                .min_by_key(|&i| size(&groups[i]))
        } else {
            // The smaller neighbour that is not the missing bin.
            [smallest.checked_sub(1), Some(smallest + 1)]
                .into_iter()
                .flatten()
                .filter(|&i| i < groups.len() && !is_missing(i))
                .min_by_key(|&i| size(&groups[i]))
                .or_else(|| (0..groups.len()).find(|&i| i != smallest))
        };
        let Some(target) = target else { break };
        let moved = groups.remove(smallest);
        let target = if target > smallest {
            target - 1
        } else {
            target
        };
        groups[target].extend(moved);
        groups[target].sort_unstable();
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bins_merge_with_their_smaller_neighbour() {
        // Value bins of 50, 3, 40, 2 rows, an empty one, and 4 missing values: the 2 join the
        // 40 (the missing bin is no neighbour), the 3 joins those 42 rather than the 50, and
        // the missing bin the smallest group.
        let groups = merge_small(&[50, 3, 40, 2, 0, 4], 10);
        assert_eq!(groups, vec![vec![0], vec![1, 2, 3, 5]]);
        assert_eq!(
            merge_small(&[50, 3, 40, 30, 0, 40], 10),
            vec![vec![0], vec![1, 2], vec![3], vec![5]]
        );
        // Merging stops when one group is left, however small.
        assert_eq!(merge_small(&[3, 2, 1], 10), vec![vec![0, 1, 2]]);
        assert_eq!(merge_small(&[30, 30, 0], 10), vec![vec![0], vec![1]]);
    }

    #[test]
    fn limits_take_the_larger_of_count_and_share() {
        let limits = BinningLimits {
            min_rows: 50,
            min_share: 0.05,
        };
        assert_eq!(limits.threshold(100), 50);
        assert_eq!(limits.threshold(10_000), 500);
    }
}
