//! Merging bins and selecting columns from a binning job's statistics, at the guest, before a
//! training job on the same bins.
//!
//! From the per-bin counts of a [`BinningReport`] the guest merges each column's bins —
//! monotone event rates (pool-adjacent-violators, in the direction with the higher IV) or
//! chi-merge — then keeps the columns whose merged IV reaches `min_iv`, at most `top_k` per
//! party, from the modeller's list when there is one. The result is each party's
//! [`Prep`]: the binning job, the columns and the merge groups, in bin numbers of the report.
//! A host learns from its own `Prep` which of its columns were chosen and which of its
//! (reported) bins share an indicator: the bank's choice on label statistics, one coarse bit
//! per pair of adjacent bins, and no more than a model trained on those bins would show it.
//! A missing bin stays a bin of its own; a categorical column's bins are put in order of
//! their event rates first, so merges group categories of similar risk.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::binning::BinningReport;
use crate::error::FedError;
use crate::prep::Prep;
use crate::woe::{BinCounts, ColumnStats};

/// The chi-square value of a 2×2 table at 5% significance (one degree of freedom): chi-merge
/// merges adjacent bins whose event rates differ less than this says is significant.
const CHI_SQUARE_5_PERCENT: f64 = 3.841;

/// How a training job chooses its columns and bins from a binning job: the job spec's
/// `[select]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// The guest's binning job whose bins and counts the training job uses.
    pub binning_job: String,
    /// How each column's bins are merged before its IV is compared.
    #[serde(default)]
    pub merge: Merge,
    /// Fewest IV a column needs (after merging); 0.02 by default, the usual "useless" line.
    #[serde(default = "default_min_iv")]
    pub min_iv: f64,
    /// Most columns kept per party, by IV.
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Per party, the columns to choose from (names or aliases as the report shows them);
    /// every column of the report when empty.
    #[serde(default)]
    pub columns: BTreeMap<String, Vec<String>>,
}

fn default_min_iv() -> f64 {
    0.02
}

/// How adjacent bins are merged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Merge {
    /// Until event rates are monotone over the bins (increasing or decreasing, whichever
    /// keeps more IV).
    #[default]
    Monotone,
    /// Chi-merge: the adjacent pair whose event rates differ least, while they differ less
    /// than significantly at 5%.
    Chi,
    /// Not at all.
    None,
}

/// A chosen column: its statistics after merging and its merge groups (bin numbers of the
/// report, from 0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChosenColumn {
    /// The merged bins' counts, WOE and IV.
    pub stats: ColumnStats,
    /// The report's bins in each merged bin.
    pub groups: Vec<Vec<usize>>,
}

impl Selection {
    /// Refuses settings that choose nothing sensible.
    pub fn validate(&self) -> Result<(), FedError> {
        let wrong = |reason: &str| Err(FedError::config("select", reason.to_owned()));
        if self.binning_job.is_empty() {
            return wrong("binning_job names the binning job to select from");
        }
        if !(0.0..10.0).contains(&self.min_iv) {
            return wrong("min_iv must be in 0 … 10");
        }
        if self.top_k == Some(0) {
            return wrong("top_k must be at least 1");
        }
        Ok(())
    }

    /// Merges and chooses the columns of `report`, whose parties are `parties` (the guest
    /// first). Every party keeps at least one column, or the choice is refused.
    pub fn choose(
        &self,
        report: &BinningReport,
        parties: &[String],
    ) -> Result<Vec<ChosenColumn>, FedError> {
        self.validate()?;
        let wrong = |reason: String| FedError::config("select", reason);
        for (party, names) in &self.columns {
            if !parties.contains(party) {
                return Err(wrong(format!(
                    "columns names {party:?}, not a party of the job"
                )));
            }
            if let Some(name) = names.iter().find(|n| {
                !report
                    .columns
                    .iter()
                    .any(|c| &c.party == party && &c.name == *n)
            }) {
                return Err(wrong(format!(
                    "{party} has no column {name:?} in binning job {:?}",
                    self.binning_job
                )));
            }
        }
        let mut chosen = Vec::new();
        for party in parties {
            let mut candidates: Vec<ChosenColumn> = report
                .columns
                .iter()
                .filter(|c| &c.party == party)
                .filter(|c| {
                    self.columns
                        .get(party)
                        .is_none_or(|names| names.contains(&c.name))
                })
                .map(|c| merged(c, self.merge, report))
                .filter(|c| c.stats.iv >= self.min_iv)
                .collect();
            if candidates.is_empty() {
                return Err(wrong(format!(
                    "no column of {party} reaches IV {} after merging: lower min_iv or \
                     leave {party} out",
                    self.min_iv
                )));
            }
            candidates.sort_by(|a, b| b.stats.iv.total_cmp(&a.stats.iv));
            candidates.truncate(self.top_k.unwrap_or(usize::MAX));
            chosen.extend(candidates);
        }
        Ok(chosen)
    }

    /// The preparation of `party` for the chosen columns: the binning job's bins, these
    /// columns, these merges.
    pub fn prep(&self, party: &str, chosen: &[ChosenColumn]) -> Prep {
        let own = chosen.iter().filter(|c| c.stats.party == party);
        Prep {
            binning_job: Some(self.binning_job.clone()),
            select: Some(own.clone().map(|c| c.stats.name.clone()).collect()),
            // In bin order: the order of event rates stays with the bank.
            merge: own
                .filter(|c| c.groups.iter().any(|g| g.len() > 1))
                .map(|c| {
                    let mut groups = c.groups.clone();
                    groups.sort_unstable();
                    (c.stats.name.clone(), groups)
                })
                .collect(),
            ..Prep::default()
        }
    }
}

/// `column`'s bins merged as `merge` says, with its new statistics.
fn merged(column: &ColumnStats, merge: Merge, report: &BinningReport) -> ChosenColumn {
    let bins = &column.bins;
    let rate = |b: usize| bins[b].events as f64 / bins[b].rows.max(1) as f64;
    let mut values: Vec<usize> = (0..bins.len()).filter(|&b| !bins[b].missing).collect();
    if column.categorical {
        values.sort_by(|&a, &b| rate(a).total_cmp(&rate(b)));
    }
    let counts = |b: usize| (bins[b].rows, bins[b].events);
    let runs = match merge {
        Merge::None => values.iter().map(|&b| vec![b]).collect(),
        Merge::Chi => chi_merge(&values, counts),
        Merge::Monotone => {
            let up = monotone(&values, counts, false);
            let down = monotone(&values, counts, true);
            let iv = |groups: &Vec<Vec<usize>>| statistics(column, groups, report).iv;
            if iv(&down) > iv(&up) {
                down
            } else {
                up
            }
        }
    };
    let mut groups: Vec<Vec<usize>> = runs;
    groups.extend(
        (0..bins.len())
            .filter(|&b| bins[b].missing)
            .map(|b| vec![b]),
    );
    for group in &mut groups {
        group.sort_unstable();
    }
    ChosenColumn {
        stats: statistics(column, &groups, report),
        groups,
    }
}

/// The statistics of `column` with its bins grouped.
fn statistics(column: &ColumnStats, groups: &[Vec<usize>], report: &BinningReport) -> ColumnStats {
    let bins: Vec<BinCounts> = groups
        .iter()
        .map(|group| {
            let label = group
                .iter()
                .map(|&b| column.bins[b].label.as_str())
                .collect::<Vec<_>>()
                .join(" | ");
            let rows = group.iter().map(|&b| column.bins[b].rows).sum();
            let events = group.iter().map(|&b| column.bins[b].events).sum();
            let missing = group.iter().all(|&b| column.bins[b].missing);
            (label, rows, events, missing)
        })
        .collect();
    ColumnStats::new(
        &column.party,
        (column.name.clone(), column.categorical),
        bins,
        report.rows,
        report.events,
    )
}

/// Runs of `order` whose event rates never decrease (or never increase, `decreasing`): the
/// pool-adjacent-violators algorithm, weighted by rows.
fn monotone(
    order: &[usize],
    counts: impl Fn(usize) -> (u64, u64),
    decreasing: bool,
) -> Vec<Vec<usize>> {
    // Each run: its bins, rows and events.
    let mut runs: Vec<(Vec<usize>, u64, u64)> = Vec::new();
    for &b in order {
        let (rows, events) = counts(b);
        runs.push((vec![b], rows, events));
        while runs.len() > 1 {
            let rate = |r: &(Vec<usize>, u64, u64)| r.2 as f64 / r.1.max(1) as f64;
            let (last, before) = (rate(&runs[runs.len() - 1]), rate(&runs[runs.len() - 2]));
            let violates = if decreasing {
                last > before
            } else {
                last < before
            };
            if !violates {
                break;
            }
            let (bins, rows, events) = runs.pop().expect("two runs");
            let into = runs.last_mut().expect("two runs");
            into.0.extend(bins);
            into.1 += rows;
            into.2 += events;
        }
    }
    runs.into_iter().map(|(bins, _, _)| bins).collect()
}

/// Chi-merge over `order`: merges the adjacent pair with the smallest chi-square statistic
/// while it is below the 5% critical value and more than two runs are left.
fn chi_merge(order: &[usize], counts: impl Fn(usize) -> (u64, u64)) -> Vec<Vec<usize>> {
    let mut runs: Vec<(Vec<usize>, u64, u64)> = order
        .iter()
        .map(|&b| {
            let (rows, events) = counts(b);
            (vec![b], rows, events)
        })
        .collect();
    while runs.len() > 2 {
        let (at, smallest) = runs
            .windows(2)
            .map(|w| chi_square((w[0].1, w[0].2), (w[1].1, w[1].2)))
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("three runs or more");
        if smallest >= CHI_SQUARE_5_PERCENT {
            break;
        }
        let (bins, rows, events) = runs.remove(at + 1);
        runs[at].0.extend(bins);
        runs[at].1 += rows;
        runs[at].2 += events;
    }
    runs.into_iter().map(|(bins, _, _)| bins).collect()
}

/// Pearson's chi-square statistic of two bins' (rows, events): 0 when their event rates are
/// equal (or a column of the table is empty).
fn chi_square(a: (u64, u64), b: (u64, u64)) -> f64 {
    let rows = (a.0 + b.0) as f64;
    let events = (a.1 + b.1) as f64;
    let non_events = rows - events;
    if events == 0.0 || non_events == 0.0 {
        return 0.0;
    }
    [a, b]
        .iter()
        .map(|&(n, e)| {
            let (n, e) = (n as f64, e as f64);
            let expected_events = n * events / rows;
            let expected_non = n * non_events / rows;
            (e - expected_events).powi(2) / expected_events
                + (n - e - expected_non).powi(2) / expected_non
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::woe::BinStats;

    fn column(party: &str, name: &str, categorical: bool, bins: &[(u64, u64)]) -> ColumnStats {
        let last = bins.len() - 1;
        ColumnStats::new(
            party,
            (name.into(), categorical),
            bins.iter()
                .enumerate()
                .map(|(b, &(n, e))| (b.to_string(), n, e, categorical && b == last))
                .collect(),
            bins.iter().map(|b| b.0).sum(),
            bins.iter().map(|b| b.1).sum(),
        )
    }

    fn report(columns: Vec<ColumnStats>) -> BinningReport {
        let first = &columns[0];
        BinningReport {
            rows: first.bins.iter().map(|b| b.rows).sum(),
            events: first.bins.iter().map(|b| b.events).sum(),
            columns,
        }
    }

    fn rates(stats: &ColumnStats) -> Vec<f64> {
        stats
            .bins
            .iter()
            .filter(|b: &&BinStats| !b.missing)
            .map(|b| b.events as f64 / b.rows as f64)
            .collect()
    }

    #[test]
    fn monotone_merging_pools_violators_in_the_better_direction() {
        // Rates 0.1, 0.3, 0.2, 0.4, 0.05·: rising but for bin 2 and the last one.
        let c = column(
            "bank",
            "x",
            false,
            &[(100, 10), (100, 30), (100, 20), (100, 40), (100, 5)],
        );
        let r = report(vec![c.clone()]);
        let chosen = merged(&c, Merge::Monotone, &r);
        let rates = rates(&chosen.stats);
        assert!(
            rates.windows(2).all(|w| w[0] <= w[1]) || rates.windows(2).all(|w| w[0] >= w[1]),
            "{rates:?}"
        );
        // Rising runs would be [0], [1, 2, 3, 4] (IV 0.137); falling ones [0, 1, 2, 3], [4]
        // keep more (IV 0.356).
        assert_eq!(chosen.groups, vec![vec![0, 1, 2, 3], vec![4]]);
        assert!(
            (chosen.stats.iv - 0.356).abs() < 1e-3,
            "{}",
            chosen.stats.iv
        );
        assert_eq!(chosen.stats.bins.iter().map(|b| b.rows).sum::<u64>(), 500);
        // Merging loses information: never more IV than the bins had.
        assert!(chosen.stats.iv <= c.iv + 1e-12);
        // Falling rates are kept as they are.
        let falling = column("bank", "y", false, &[(100, 40), (100, 30), (100, 10)]);
        let r = report(vec![falling.clone()]);
        assert_eq!(
            merged(&falling, Merge::Monotone, &r).groups,
            vec![vec![0], vec![1], vec![2]]
        );
    }

    #[test]
    fn chi_merge_joins_similar_neighbours_and_keeps_different_ones() {
        // Bins 0 and 1 have the same rate, 2 differs sharply.
        let c = column("tax", "tax:1", false, &[(500, 50), (500, 52), (500, 200)]);
        let r = report(vec![c.clone()]);
        let chosen = merged(&c, Merge::Chi, &r);
        assert_eq!(chosen.groups, vec![vec![0, 1], vec![2]]);
        assert!(chi_square((500, 50), (500, 52)) < CHI_SQUARE_5_PERCENT);
        assert!(chi_square((500, 50), (500, 200)) > CHI_SQUARE_5_PERCENT);
        assert_eq!(chi_square((10, 0), (10, 0)), 0.0);
    }

    #[test]
    fn categories_are_ordered_by_rate_and_the_missing_bin_stays_alone() {
        // Categories with rates 0.4, 0.1, 0.41, 0.11, then the missing bin.
        let c = column(
            "tax",
            "tax:2",
            true,
            &[(200, 80), (200, 20), (200, 82), (200, 22), (50, 25)],
        );
        assert!(c.bins[4].missing);
        let r = report(vec![c.clone()]);
        let chosen = merged(&c, Merge::Chi, &r);
        assert_eq!(chosen.groups, vec![vec![1, 3], vec![0, 2], vec![4]]);
        assert!(chosen.stats.bins[2].missing);
    }

    #[test]
    fn selection_keeps_strong_columns_per_party_and_names_what_is_wrong() {
        let strong = column("bank", "a", false, &[(500, 20), (500, 200)]);
        let weak = column("bank", "b", false, &[(500, 110), (500, 110)]);
        let host = column("tax", "tax:1", false, &[(500, 60), (500, 160)]);
        let host2 = column("tax", "tax:2", false, &[(500, 30), (500, 190)]);
        let r = report(vec![strong, weak, host, host2]);
        let parties = ["bank".to_string(), "tax".to_string()];
        let selection = Selection {
            binning_job: "job-1".into(),
            merge: Merge::None,
            min_iv: 0.02,
            top_k: Some(1),
            columns: BTreeMap::new(),
        };
        let chosen = selection.choose(&r, &parties).unwrap();
        let names: Vec<&str> = chosen.iter().map(|c| c.stats.name.as_str()).collect();
        assert_eq!(names, ["a", "tax:2"], "b is too weak, tax:2 beats tax:1");
        let prep = selection.prep("tax", &chosen);
        assert_eq!(prep.select, Some(vec!["tax:2".to_string()]));
        assert_eq!(prep.binning_job.as_deref(), Some("job-1"));
        // The modeller's list.
        let listed = Selection {
            columns: [("tax".to_string(), vec!["tax:1".to_string()])].into(),
            top_k: None,
            ..selection.clone()
        };
        let chosen = listed.choose(&r, &parties).unwrap();
        assert!(chosen.iter().any(|c| c.stats.name == "tax:1"));
        assert!(!chosen.iter().any(|c| c.stats.name == "tax:2"));
        // Nothing left for a party, or a name that is not there: clear errors.
        let strict = Selection {
            min_iv: 5.0,
            ..selection.clone()
        };
        let err = strict.choose(&r, &parties).unwrap_err().to_string();
        assert!(err.contains("no column of bank reaches IV 5"), "{err}");
        let unknown = Selection {
            columns: [("tax".to_string(), vec!["tax:9".to_string()])].into(),
            ..selection
        };
        let err = unknown.choose(&r, &parties).unwrap_err().to_string();
        assert!(err.contains("tax has no column \"tax:9\""), "{err}");
    }
}
