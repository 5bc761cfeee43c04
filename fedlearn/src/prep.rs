//! Each party's preparation of its own columns before training: winsorising at training
//! quantiles, a signed log1p, and binning into indicator columns (quantile, equal-width, given
//! cut points, or categories). A party fits its preparation on its own training rows; nothing
//! of it leaves the party. The fitted form is part of the party's model and applies again at
//! scoring.
//!
//! A binned column becomes one indicator column per bin that holds training rows, standardised
//! like any other column; the trained weights of a column's indicators fold into one number
//! per bin, its points (its share of the joint score), so the model part is a scorecard. A
//! missing value has a bin of its own; a value that falls in a bin without training rows (a
//! missing value when training had none, a category first seen at scoring when training had no
//! rare categories) scores the column's training average, 0 points.

use ndarray::Array2;
use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::{Reading, Table};
use crate::error::FedError;

/// Most bins a column may have (value bins, without the missing bin).
pub const MAX_BINS: usize = 100;

/// How a party prepares its columns: the job spec's `[prep]` for the guest, a host's `prep`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Prep {
    /// For every column without an entry in `columns`.
    pub default: ColumnPrep,
    /// Per column name, replacing `default` for that column.
    pub columns: BTreeMap<String, ColumnPrep>,
    /// Train on these columns only (every column when absent). A host may name its columns
    /// by the aliases of its binning report.
    pub select: Option<Vec<String>>,
    /// The binning job whose bins this party trains on: it kept them (transform, edges and
    /// merges) when it sent its counts; `default` and `columns` must then be empty.
    pub binning_job: Option<String>,
    /// Per column of a binning job, groups of its bins — numbered from 0 as in the job's
    /// report — that share one indicator (bins not named stay on their own).
    pub merge: BTreeMap<String, Vec<Vec<usize>>>,
    /// The bins of `binning_job`, by column: filled in by the party that kept them.
    #[serde(skip)]
    pub kept: BTreeMap<String, KeptBins>,
}

/// A column's bins as a binning job fitted them, kept by the party that owns the column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeptBins {
    /// The column.
    pub name: String,
    /// Its name in the binning report (the name itself or the host's alias).
    pub reported: String,
    /// The fitted transform.
    pub transform: Transform,
    /// The fitted bins.
    pub bins: Bins,
    /// The bins the report shows, in its order: each a group of `bins`' bins (a host merges
    /// bins under its minimum size; empty bins are in none).
    pub groups: Vec<Vec<usize>>,
}

/// How one column is prepared: winsorised, then log1p, then binned or standardised.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ColumnPrep {
    /// Clip to the training values at these two quantiles, e.g. `[0.01, 0.99]`.
    pub winsorise: Option<[f64; 2]>,
    /// Replace x by sign(x)·ln(1 + |x|).
    pub log1p: bool,
    /// Bin the column instead of standardising it.
    pub bins: Option<Binning>,
}

/// How a column is cut into bins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Binning {
    /// Cut points at the training quantiles k/count, k = 1 … count − 1 (tied values merge bins).
    Quantile {
        /// Bins (2 to [`MAX_BINS`]).
        count: usize,
    },
    /// `count` bins of equal width between the training minimum and maximum.
    EqualWidth {
        /// Bins (2 to [`MAX_BINS`]).
        count: usize,
    },
    /// Given cut points, increasing: bin i holds `cuts[i − 1] < x ≤ cuts[i]`.
    Cuts {
        /// The cut points.
        cuts: Vec<f64>,
    },
    /// A text column: one bin per category holding at least `min_share` of the training rows;
    /// rarer categories, and categories first seen at scoring, share an "other" bin.
    Categorical {
        /// Smallest share of the training rows a category needs for a bin of its own.
        #[serde(default = "default_min_share")]
        min_share: f64,
    },
}

fn default_min_share() -> f64 {
    0.01
}

impl Prep {
    /// How column `name` is prepared.
    pub fn column(&self, name: &str) -> &ColumnPrep {
        self.columns.get(name).unwrap_or(&self.default)
    }

    /// Whether the party trains on column `name`.
    pub fn selects(&self, name: &str) -> bool {
        self.select
            .as_ref()
            .is_none_or(|s| s.iter().any(|c| c == name))
    }

    /// How column `name` is read from a file: binned columns may hold missing values whatever
    /// the dataset's policy, categorical ones hold text.
    pub fn reading(&self, name: &str) -> Reading {
        if !self.selects(name) {
            return Reading::Skip;
        }
        if let Some(kept) = self.kept.get(name) {
            return match kept.bins {
                Bins::Categories { .. } => Reading::Text,
                Bins::Cuts { .. } => Reading::Binned,
            };
        }
        match &self.column(name).bins {
            None => Reading::Number,
            Some(Binning::Categorical { .. }) => Reading::Text,
            Some(_) => Reading::Binned,
        }
    }

    /// Refuses settings that cannot be fitted; errors name the column.
    pub fn validate(&self) -> Result<(), FedError> {
        let wrong = |reason: String| Err(FedError::config("prep", reason));
        if self.binning_job.is_some() {
            if self.default != ColumnPrep::default() || !self.columns.is_empty() {
                return wrong(
                    "a preparation from a binning job takes the job's bins: drop default and \
                     columns"
                        .into(),
                );
            }
        } else if !self.merge.is_empty() {
            return wrong("merge needs the binning job whose bins it groups".into());
        }
        for (name, groups) in &self.merge {
            let mut seen = std::collections::BTreeSet::new();
            if groups.iter().flatten().any(|&b| !seen.insert(b)) || groups.iter().any(Vec::is_empty)
            {
                return wrong(format!(
                    "merge of {name:?}: groups must be non-empty and disjoint"
                ));
            }
        }
        std::iter::once(("default", &self.default))
            .chain(self.columns.iter().map(|(n, c)| (n.as_str(), c)))
            .try_for_each(|(name, column)| {
                column
                    .validate()
                    .map_err(|reason| FedError::config("prep", format!("{name}: {reason}")))
            })
    }

    /// Takes the bins this party kept from `binning_job`, and names the columns of `select`
    /// and `merge` — given as the job's report names them — by their own names. (Only as
    /// reported: a host's real column names would otherwise answer a guest's guesses.)
    pub fn keep(&mut self, kept: Vec<KeptBins>) -> Result<(), FedError> {
        let job = self.binning_job.clone().unwrap_or_default();
        let name = |given: &String| {
            kept.iter()
                .find(|k| &k.reported == given)
                .map(|k| k.name.clone())
                .ok_or_else(|| {
                    FedError::config(
                        "prep",
                        format!("{given:?} is not a column of binning job {job:?}"),
                    )
                })
        };
        if let Some(select) = &self.select {
            self.select = Some(select.iter().map(name).collect::<Result<_, _>>()?);
        }
        self.merge = std::mem::take(&mut self.merge)
            .into_iter()
            .map(|(column, groups)| Ok((name(&column)?, groups)))
            .collect::<Result<_, FedError>>()?;
        self.kept = kept.into_iter().map(|k| (k.name.clone(), k)).collect();
        Ok(())
    }

    /// The most design columns this preparation can make of `table`, known before the
    /// training rows are: the guest announces it to the hosts, whose policies bound it.
    pub fn columns_bound(&self, table: &Table) -> usize {
        table
            .feature_names()
            .iter()
            .enumerate()
            .filter(|(_, name)| self.selects(name))
            .map(|(c, name)| match &self.column(name).bins {
                _ if self.kept.contains_key(name) => self.kept[name].bins.len(),
                None => 1,
                Some(Binning::Quantile { count } | Binning::EqualWidth { count }) => count + 1,
                Some(Binning::Cuts { cuts }) => cuts.len() + 2,
                Some(Binning::Categorical { .. }) => {
                    table
                        .dictionary(c)
                        .map_or(0, <[String]>::len)
                        .min(MAX_BINS - 1)
                        + 2
                }
            })
            .sum()
    }

    /// This preparation with every column it leaves unbinned cut into 10 quantile bins, as a
    /// binning job's statistics need.
    pub fn binning_every_column(&self, table: &Table) -> Prep {
        let mut prep = self.clone();
        for name in table.feature_names() {
            let column = self.column(name);
            if column.bins.is_none() {
                prep.columns.insert(
                    name.clone(),
                    ColumnPrep {
                        bins: Some(Binning::Quantile { count: 10 }),
                        ..column.clone()
                    },
                );
            }
        }
        prep
    }

    /// Fits this preparation on `table`'s training rows `train` and returns every row of
    /// `table` as the columns the party trains on (continuous columns transformed, binned
    /// columns as 0/1 indicators of the bins that hold training rows).
    pub fn design(&self, party: &str, table: &Table, train: &[usize]) -> Result<Table, FedError> {
        Fitted::fit(party, self, table, train)?.design(table)
    }
}

impl ColumnPrep {
    fn validate(&self) -> Result<(), String> {
        if let Some([low, high]) = self.winsorise {
            if !(0.0..=1.0).contains(&low) || !(0.0..=1.0).contains(&high) || low >= high {
                return Err(format!(
                    "winsorise = [{low}, {high}] needs 0 ≤ low < high ≤ 1"
                ));
            }
        }
        match &self.bins {
            None => Ok(()),
            Some(Binning::Quantile { count } | Binning::EqualWidth { count }) => {
                if (2..=MAX_BINS).contains(count) {
                    Ok(())
                } else {
                    Err(format!("bins.count = {count} is not in 2 … {MAX_BINS}"))
                }
            }
            Some(Binning::Cuts { cuts }) => {
                if cuts.is_empty() || cuts.len() >= MAX_BINS {
                    Err(format!("bins.cuts needs 1 to {} cut points", MAX_BINS - 1))
                } else if !finite_and_increasing(cuts) {
                    Err("bins.cuts must be finite and increasing".into())
                } else {
                    Ok(())
                }
            }
            Some(Binning::Categorical { min_share }) => {
                if self.winsorise.is_some() || self.log1p {
                    Err("a categorical column takes neither winsorise nor log1p".into())
                } else if !(0.0..=0.5).contains(min_share) {
                    Err(format!("bins.min_share = {min_share} is not in 0 … 0.5"))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// A column's fitted transform, before standardising or binning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transform {
    /// Clip to [low, high] (the training quantiles of `winsorise`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<[f64; 2]>,
    /// Then sign(x)·ln(1 + |x|).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub log1p: bool,
}

impl Transform {
    /// Whether the transform leaves values as they are.
    pub fn is_identity(&self) -> bool {
        self.clip.is_none() && !self.log1p
    }

    /// The transformed value (NaN stays NaN).
    pub fn apply(&self, x: f64) -> f64 {
        let x = match self.clip {
            Some([low, high]) => x.clamp(low, high),
            None => x,
        };
        if self.log1p {
            x.signum() * x.abs().ln_1p()
        } else {
            x
        }
    }

    /// Refuses a transform that is not a function of finite numbers.
    pub(crate) fn check(&self) -> Result<(), String> {
        match self.clip {
            Some([low, high]) if !(low.is_finite() && high.is_finite() && low <= high) => {
                Err(format!("clip [{low}, {high}] is not an interval"))
            }
            _ => Ok(()),
        }
    }
}

/// A binned column's bins. Bins are numbered: the value bins, then the missing bin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Bins {
    /// Bin i holds `cuts[i − 1] < x ≤ cuts[i]`; the last value bin everything above the last cut.
    Cuts {
        /// Increasing cut points.
        cuts: Vec<f64>,
    },
    /// One bin per category, then the "other" bin (rare categories and unseen ones).
    Categories {
        /// The categories with a bin of their own.
        categories: Vec<String>,
    },
}

/// One cell as binning sees it.
pub(crate) enum Cell<'a> {
    Missing,
    Number(f64),
    Text(&'a str),
}

impl Bins {
    /// Bins a present value can fall in.
    pub fn value_bins(&self) -> usize {
        match self {
            Bins::Cuts { cuts } => cuts.len() + 1,
            Bins::Categories { categories } => categories.len() + 1,
        }
    }

    /// All bins, the missing bin included.
    pub fn len(&self) -> usize {
        self.value_bins() + 1
    }

    /// Never: there is always a missing bin.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// A readable name of bin `bin`.
    pub fn label(&self, bin: usize) -> String {
        if bin == self.value_bins() {
            return "missing".into();
        }
        match self {
            Bins::Cuts { cuts } => range(cuts, bin, bin),
            Bins::Categories { categories } => categories
                .get(bin)
                .cloned()
                .unwrap_or_else(|| "other".into()),
        }
    }

    /// A readable name of a group of bins: a range for adjacent value bins of a numeric
    /// column, the bins' labels joined by " | " otherwise.
    pub fn group_label(&self, group: &[usize]) -> String {
        let adjacent = group.windows(2).all(|w| w[1] == w[0] + 1);
        match (self, group) {
            (_, [bin]) => self.label(*bin),
            (Bins::Cuts { cuts }, [first, .., last]) if adjacent && *last < self.value_bins() => {
                range(cuts, *first, *last)
            }
            _ => group
                .iter()
                .map(|&b| self.label(b))
                .collect::<Vec<_>>()
                .join(" | "),
        }
    }

    /// The bin of a (transformed) cell; a cell of the wrong kind is an error.
    pub(crate) fn bin(&self, cell: Cell<'_>) -> Result<usize, &'static str> {
        match (self, cell) {
            (_, Cell::Missing) => Ok(self.value_bins()),
            (Bins::Cuts { cuts }, Cell::Number(x)) => Ok(cuts.partition_point(|&c| c < x)),
            (Bins::Categories { categories }, Cell::Text(text)) => Ok(categories
                .binary_search_by(|c| c.as_str().cmp(text))
                .unwrap_or(categories.len())),
            (Bins::Cuts { .. }, Cell::Text(_)) => Err("holds text; the model bins it by number"),
            (Bins::Categories { .. }, Cell::Number(_)) => {
                Err("holds numbers; the model bins it by category")
            }
        }
    }

    /// Refuses bins that could not have been fitted.
    pub(crate) fn check(&self) -> Result<(), String> {
        match self {
            Bins::Cuts { cuts } => {
                if cuts.len() >= MAX_BINS || !finite_and_increasing(cuts) {
                    return Err("cuts must be finite, increasing and fewer than 100".into());
                }
            }
            Bins::Categories { categories } => {
                if categories.len() >= MAX_BINS || categories.windows(2).any(|w| w[0] >= w[1]) {
                    return Err("categories must be sorted, distinct and fewer than 100".into());
                }
            }
        }
        Ok(())
    }
}

/// The values value bins `first` to `last` hold.
fn range(cuts: &[f64], first: usize, last: usize) -> String {
    match (first.checked_sub(1).map(|i| cuts[i]), cuts.get(last)) {
        (None, Some(high)) => format!("≤ {high}"),
        (Some(low), Some(high)) => format!("({low}, {high}]"),
        (Some(low), None) => format!("> {low}"),
        (None, None) => "all".into(),
    }
}

/// The cell of column `column` whose stored value is `x` (a text column stores its code),
/// transformed.
pub(crate) fn cell<'a>(table: &'a Table, column: usize, x: f64, transform: &Transform) -> Cell<'a> {
    match table.dictionary(column) {
        _ if x.is_nan() => Cell::Missing,
        Some(dictionary) => Cell::Text(&dictionary[x as usize]),
        None => Cell::Number(transform.apply(x)),
    }
}

/// The cell at (row, column) of `table`, transformed.
pub(crate) fn cell_at<'a>(
    table: &'a Table,
    row: usize,
    column: usize,
    transform: &Transform,
) -> Cell<'a> {
    cell(table, column, table.values()[[row, column]], transform)
}

/// One column's fitted preparation.
pub(crate) struct FittedColumn {
    pub(crate) name: String,
    /// The column's position in the party's table.
    source: usize,
    pub(crate) transform: Transform,
    /// Binned: its bins and, per bin, its indicator column in the design (bins with
    /// training rows only).
    pub(crate) bins: Option<(Bins, Vec<Option<usize>>)>,
}

/// A binned column's bin of every row.
pub(crate) struct RowBins {
    pub(crate) name: String,
    pub(crate) transform: Transform,
    pub(crate) bins: Bins,
    /// Per bin (the missing bin last).
    pub(crate) labels: Vec<String>,
    pub(crate) of_row: Vec<usize>,
}

/// A party's preparation fitted on its training rows.
pub(crate) struct Fitted {
    pub(crate) columns: Vec<FittedColumn>,
    /// Names of the design columns.
    design_names: Vec<String>,
}

impl Fitted {
    pub(crate) fn fit(
        party: &str,
        prep: &Prep,
        table: &Table,
        train: &[usize],
    ) -> Result<Fitted, FedError> {
        prep.validate()?;
        if let Some(name) = prep
            .columns
            .keys()
            .chain(prep.select.iter().flatten())
            .chain(prep.merge.keys())
            .find(|n| !table.feature_names().contains(n))
        {
            return Err(FedError::config(
                "prep",
                format!("{party} has no column {name:?}"),
            ));
        }
        // Columns are fitted in parallel (each reads its own column of a row-major table),
        // then numbered in order.
        let sources: Vec<usize> = (0..table.features())
            .filter(|&c| prep.selects(&table.feature_names()[c]))
            .collect();
        let fitted = sources
            .par_iter()
            .zip(table.columns(&sources))
            .map(|(&source, values)| {
                let name = &table.feature_names()[source];
                fit_column(party, prep, (table, source, &values), train, name).map(|f| (source, f))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut columns = Vec::with_capacity(table.features());
        let mut design_names = Vec::new();
        for (source, (name, transform, bins)) in fitted {
            let bins = match bins {
                None => {
                    design_names.push(name.clone());
                    None
                }
                Some((bins, counts, of_bin)) => {
                    // One indicator per group of bins holding training rows, in the order
                    // of their first bins.
                    let mut design_of: BTreeMap<usize, Option<usize>> = BTreeMap::new();
                    let indicators = (0..bins.len())
                        .map(|bin| {
                            let group = of_bin[bin];
                            *design_of.entry(group).or_insert_with(|| {
                                let members: Vec<usize> =
                                    (0..bins.len()).filter(|&b| of_bin[b] == group).collect();
                                (members.iter().any(|&b| counts[b] > 0)).then(|| {
                                    design_names
                                        .push(format!("{name}={}", bins.group_label(&members)));
                                    design_names.len() - 1
                                })
                            })
                        })
                        .collect();
                    Some((bins, indicators))
                }
            };
            columns.push(FittedColumn {
                name,
                source,
                transform,
                bins,
            });
        }
        Ok(Fitted {
            columns,
            design_names,
        })
    }

    /// Every binned column's bin of every row of `table` (the table the preparation was
    /// fitted on), with the bins' labels.
    pub(crate) fn row_bins(&self, table: &Table) -> Result<Vec<RowBins>, FedError> {
        let binned: Vec<(&FittedColumn, &Bins)> = self
            .columns
            .iter()
            .filter_map(|column| column.bins.as_ref().map(|(bins, _)| (column, bins)))
            .collect();
        let sources: Vec<usize> = binned.iter().map(|(c, _)| c.source).collect();
        binned
            .into_par_iter()
            .zip(table.columns(&sources))
            .map(|((column, bins), values)| {
                let of_row = values
                    .iter()
                    .map(|&x| {
                        bins.bin(cell(table, column.source, x, &column.transform))
                            .map_err(|reason| {
                                FedError::config(
                                    "prep",
                                    format!("column {:?} {reason}", column.name),
                                )
                            })
                    })
                    .collect::<Result<_, _>>()?;
                Ok(RowBins {
                    name: column.name.clone(),
                    transform: column.transform,
                    bins: bins.clone(),
                    labels: (0..bins.len()).map(|b| bins.label(b)).collect(),
                    of_row,
                })
            })
            .collect()
    }

    /// Every row of `table` (the table the preparation was fitted on) as design columns.
    pub(crate) fn design(&self, table: &Table) -> Result<Table, FedError> {
        let mut values = Array2::zeros((table.rows(), self.design_names.len()));
        let raw = table.values();
        let mut at = 0;
        for column in &self.columns {
            match &column.bins {
                None => {
                    for row in 0..table.rows() {
                        values[[row, at]] = column.transform.apply(raw[[row, column.source]]);
                    }
                    at += 1;
                }
                Some((bins, indicators)) => {
                    for row in 0..table.rows() {
                        let bin = bins
                            .bin(cell_at(table, row, column.source, &column.transform))
                            .map_err(|reason| {
                                FedError::config(
                                    "prep",
                                    format!("column {:?} {reason}", column.name),
                                )
                            })?;
                        if let Some(design) = indicators[bin] {
                            values[[row, design]] = 1.0;
                        }
                    }
                    at += distinct(indicators).len();
                }
            }
        }
        Table::with_ids(
            table.ids().clone(),
            self.design_names.clone(),
            values,
            table.labels().map(<[f64]>::to_vec),
            table.missing(),
        )
    }
}

/// One column's transform and bins fitted on the training rows, with the training rows per
/// bin.
#[allow(clippy::type_complexity)]
fn fit_column(
    party: &str,
    prep: &Prep,
    (table, source, values): (&Table, usize, &[f64]),
    train: &[usize],
    name: &str,
) -> Result<(String, Transform, Option<(Bins, Vec<usize>, Vec<usize>)>), FedError> {
    let wrong =
        |reason: &str| FedError::config("prep", format!("{party}'s column {name:?} {reason}"));
    if let Some(kept) = prep.kept.get(name) {
        let of_bin = kept_groups(kept, prep.merge.get(name)).map_err(|e| wrong(&e))?;
        let counts = count_bins(
            &kept.bins,
            (table, source, values),
            train,
            &kept.transform,
            wrong,
        )?;
        return Ok((
            name.to_owned(),
            kept.transform,
            Some((kept.bins.clone(), counts, of_bin)),
        ));
    }
    if let Some(job) = &prep.binning_job {
        return Err(wrong(&format!("has no bins in binning job {job:?}")));
    }
    let column = prep.column(name);
    let categorical = matches!(column.bins, Some(Binning::Categorical { .. }));
    if categorical != table.is_text(source) {
        return Err(wrong(if categorical {
            "was read as numbers but is binned as categorical"
        } else {
            "holds text: bin it as categorical"
        }));
    }
    // The training values; winsorising and fitted cut points need some of their order
    // statistics (the transform is monotone, so it maps them to the transformed ones).
    let by_values = matches!(
        column.bins,
        Some(Binning::Quantile { .. } | Binning::EqualWidth { .. })
    );
    let mut ranked = Ranked(Vec::new());
    if column.winsorise.is_some() || by_values {
        ranked.0 = train
            .iter()
            .map(|&r| values[r])
            .filter(|x| !x.is_nan())
            .collect();
    }
    let n = ranked.0.len();
    let mut transform = Transform {
        clip: None,
        log1p: column.log1p,
    };
    if let (Some([low, high]), false) = (column.winsorise, n == 0) {
        let rank = |q: f64| ((n - 1) as f64 * q).round() as usize;
        let clip = ranked.at(&[rank(low), rank(high)]);
        transform.clip = Some([clip[0], clip[1]]);
    }
    let mut transformed = |ranks: &[usize]| -> Vec<f64> {
        ranked
            .at(ranks)
            .into_iter()
            .map(|x| transform.apply(x))
            .collect()
    };
    let bins = match &column.bins {
        None => None,
        Some(Binning::Categorical { min_share }) => {
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for &row in train {
                if let Cell::Text(text) = cell(table, source, values[row], &transform) {
                    *counts.entry(text).or_default() += 1;
                }
            }
            let least = (min_share * train.len() as f64).max(1.0);
            let categories: Vec<String> = counts
                .into_iter()
                .filter(|&(_, n)| n as f64 >= least)
                .map(|(c, _)| c.to_owned())
                .take(MAX_BINS - 1)
                .collect();
            Some(Bins::Categories { categories })
        }
        Some(Binning::Cuts { cuts }) => Some(Bins::Cuts { cuts: cuts.clone() }),
        Some(Binning::Quantile { count }) => {
            // Cut k at the ⌈k·n/count⌉-th smallest value, then the largest value.
            let mut ranks: Vec<usize> = (1..*count)
                .filter_map(|k| (k * n).div_ceil(*count).checked_sub(1))
                .collect();
            ranks.extend(n.checked_sub(1));
            let mut cuts = transformed(&ranks);
            let max = if n > 0 { cuts.pop() } else { None };
            Some(Bins::Cuts {
                cuts: distinct_below_max(cuts, max),
            })
        }
        Some(Binning::EqualWidth { count }) => {
            let ends = if n > 0 {
                transformed(&[0, n - 1])
            } else {
                Vec::new()
            };
            let cuts = match ends[..] {
                [low, high] => (1..*count)
                    .map(|k| low + (high - low) * k as f64 / *count as f64)
                    .collect(),
                _ => Vec::new(),
            };
            Some(Bins::Cuts {
                cuts: distinct_below_max(cuts, ends.last().copied()),
            })
        }
    };
    let bins = match bins {
        None => None,
        Some(bins) => {
            let counts = count_bins(&bins, (table, source, values), train, &transform, wrong)?;
            let of_bin = (0..bins.len()).collect();
            Some((bins, counts, of_bin))
        }
    };
    Ok((name.to_owned(), transform, bins))
}

/// The training rows in each bin.
fn count_bins(
    bins: &Bins,
    (table, source, values): (&Table, usize, &[f64]),
    train: &[usize],
    transform: &Transform,
    wrong: impl Fn(&str) -> FedError,
) -> Result<Vec<usize>, FedError> {
    let mut counts = vec![0usize; bins.len()];
    for &row in train {
        counts[bins
            .bin(cell(table, source, values[row], transform))
            .map_err(&wrong)?] += 1;
    }
    Ok(counts)
}

/// Each of a kept column's bins' group: the report's bins, merged as `merge` says (groups of
/// report bins); a bin in no report bin (empty in the binning job) is a group of its own.
fn kept_groups(kept: &KeptBins, merge: Option<&Vec<Vec<usize>>>) -> Result<Vec<usize>, String> {
    let reported = kept.groups.len();
    let mut of_reported: Vec<usize> = (0..reported).collect();
    for (g, group) in merge.into_iter().flatten().enumerate() {
        for &b in group {
            if b >= reported {
                return Err(format!(
                    "has {reported} bins in its binning report; merge names bin {b}"
                ));
            }
            of_reported[b] = reported + g;
        }
    }
    // The report bin that holds only missing values stays on its own.
    let missing = kept.bins.value_bins();
    if let Some(group) = merge.into_iter().flatten().find(|g| {
        g.len() > 1
            && g.iter()
                .any(|&r| kept.groups.get(r) == Some(&vec![missing]))
    }) {
        return Err(format!("merge {group:?} joins the missing bin to others"));
    }
    let mut of_bin: Vec<usize> = (0..kept.bins.len()).map(|b| usize::MAX - b).collect();
    for (r, group) in kept.groups.iter().enumerate() {
        for &b in group {
            if b >= of_bin.len() {
                return Err("has kept bins that do not fit it".into());
            }
            of_bin[b] = of_reported[r];
        }
    }
    Ok(of_bin)
}

/// The design columns a binned column's bins use, each once, in order.
pub(crate) fn distinct(indicators: &[Option<usize>]) -> Vec<usize> {
    let mut used: Vec<usize> = indicators.iter().flatten().copied().collect();
    used.sort_unstable();
    used.dedup();
    used
}

/// Whether cut points can delimit bins.
fn finite_and_increasing(cuts: &[f64]) -> bool {
    cuts.iter().all(|c| c.is_finite()) && cuts.windows(2).all(|w| w[0] < w[1])
}

/// A column's training values, whose order statistics are found by selection: a few ranks
/// of n values cost O(n·log ranks), not a sort.
struct Ranked(Vec<f64>);

impl Ranked {
    /// The values of ranks `ranks` (each below the number of values; 0 is the smallest), in
    /// the order asked.
    fn at(&mut self, ranks: &[usize]) -> Vec<f64> {
        let mut wanted: Vec<usize> = ranks.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let mut found = BTreeMap::new();
        select_ranks(&mut self.0, 0, &wanted, &mut found);
        ranks.iter().map(|r| found[r]).collect()
    }
}

/// Places the values of `ranks` (increasing, offset by `offset` in `values`) into `found`.
fn select_ranks(
    values: &mut [f64],
    offset: usize,
    ranks: &[usize],
    found: &mut BTreeMap<usize, f64>,
) {
    if ranks.is_empty() {
        return;
    }
    let middle = ranks.len() / 2;
    let rank = ranks[middle];
    let (below, &mut value, above) = values.select_nth_unstable_by(rank - offset, f64::total_cmp);
    found.insert(rank, value);
    select_ranks(below, offset, &ranks[..middle], found);
    select_ranks(above, rank + 1, &ranks[middle + 1..], found);
}

/// Cut points without repeats and below the largest value (a cut at or above it would leave
/// the last bin empty).
fn distinct_below_max(mut cuts: Vec<f64>, max: Option<f64>) -> Vec<f64> {
    cuts.dedup();
    cuts.retain(|&c| max.is_some_and(|m| c < m));
    cuts
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::Missing;

    pub(crate) fn numbers(values: &[f64]) -> Table {
        Table::new(
            (0..values.len()).map(|i| i.to_string()).collect(),
            vec!["a".into()],
            ndarray::Array2::from_shape_vec((values.len(), 1), values.to_vec()).unwrap(),
            None,
            Missing::Mean,
        )
        .unwrap()
    }

    pub(crate) fn binned(binning: Binning) -> Prep {
        Prep {
            default: ColumnPrep {
                bins: Some(binning),
                ..ColumnPrep::default()
            },
            ..Prep::default()
        }
    }

    fn cuts(prep: &Prep, table: &Table) -> Vec<f64> {
        let all: Vec<usize> = (0..table.rows()).collect();
        match &Fitted::fit("tax", prep, table, &all).unwrap().columns[0].bins {
            Some((Bins::Cuts { cuts }, _)) => cuts.clone(),
            other => panic!("{:?}", other.as_ref().map(|b| &b.0)),
        }
    }

    #[test]
    fn quantile_equal_width_and_given_cuts() {
        let t = numbers(&(1..=100).map(f64::from).collect::<Vec<_>>());
        assert_eq!(
            cuts(&binned(Binning::Quantile { count: 4 }), &t),
            [25.0, 50.0, 75.0]
        );
        assert_eq!(
            cuts(&binned(Binning::EqualWidth { count: 3 }), &t),
            [34.0, 67.0]
        );
        // Ties merge bins: 60% zeros leave one cut where the quintiles fall on 0.
        let mut skewed = vec![0.0; 60];
        skewed.extend((1..=40).map(f64::from));
        assert_eq!(
            cuts(&binned(Binning::Quantile { count: 5 }), &numbers(&skewed)),
            [0.0, 20.0]
        );
        let given = binned(Binning::Cuts {
            cuts: vec![10.0, 20.0],
        });
        assert_eq!(cuts(&given, &t), [10.0, 20.0]);
        let bins = Bins::Cuts {
            cuts: vec![10.0, 20.0],
        };
        let bin = |x| bins.bin(Cell::Number(x)).unwrap();
        assert_eq!(
            (bin(-5.0), bin(10.0), bin(10.5), bin(20.0), bin(99.0)),
            (0, 0, 1, 1, 2)
        );
        assert_eq!(bins.bin(Cell::Missing), Ok(3));
        assert_eq!(
            (bins.label(0), bins.label(1), bins.label(2), bins.label(3)),
            (
                "≤ 10".into(),
                "(10, 20]".into(),
                "> 20".into(),
                "missing".into()
            )
        );
    }

    #[test]
    fn winsorising_and_log1p_are_fitted_on_training_rows() {
        let mut values: Vec<f64> = (0..100).map(f64::from).collect();
        values[99] = 1e9;
        let t = numbers(&values);
        let prep = Prep {
            default: ColumnPrep {
                winsorise: Some([0.05, 0.95]),
                log1p: true,
                bins: None,
            },
            ..Prep::default()
        };
        let train: Vec<usize> = (0..100).collect();
        let design = prep.design("tax", &t, &train).unwrap();
        // Clipped to the nearest-rank 5% and 95% quantiles (5 and 94), then log1p.
        assert_eq!(design.values()[[0, 0]], 5f64.ln_1p());
        assert_eq!(design.values()[[99, 0]], 94f64.ln_1p());
        assert_eq!(design.values()[[50, 0]], 50f64.ln_1p());
        let negative = Transform {
            clip: None,
            log1p: true,
        };
        assert_eq!(negative.apply(-3.0), -(3f64.ln_1p()));
        assert!(negative.apply(f64::NAN).is_nan());
    }

    #[test]
    fn preparations_that_do_not_fit_the_data_are_named() {
        let t = numbers(&[1.0, 2.0, 3.0]);
        let fit = |prep: &Prep| match Fitted::fit("tax", prep, &t, &[0, 1, 2]) {
            Err(FedError::Config { reason, .. }) => reason,
            other => panic!("{:?}", other.map(|_| ())),
        };
        let mut unknown = Prep::default();
        unknown.columns.insert("b".into(), ColumnPrep::default());
        assert!(fit(&unknown).contains("tax has no column \"b\""));
        assert!(
            fit(&binned(Binning::Categorical { min_share: 0.01 })).contains("was read as numbers")
        );
        assert!(fit(&binned(Binning::Quantile { count: 1 })).contains("bins.count"));
        assert!(fit(&binned(Binning::Cuts {
            cuts: vec![2.0, 1.0]
        }))
        .contains("increasing"));
        let text = Table::parse_csv("t.csv", "id,a\n1,x\n", "id", None, Missing::Reject, &|_| {
            Reading::Text
        })
        .unwrap();
        assert!(matches!(
            Fitted::fit("tax", &Prep::default(), &text, &[0]),
            Err(FedError::Config { reason, .. }) if reason.contains("holds text")
        ));
        let bad: Result<Prep, _> =
            serde_json::from_str(r#"{"default": {"bins": {"kind": "quantile", "bins": 3}}}"#);
        assert!(bad.is_err(), "unknown fields are refused");
    }

    #[test]
    fn kept_bins_train_merged_and_unselected_columns_are_not_read() {
        // Cuts at 1, 2, 3: value bins ≤1, (1,2], (2,3], >3, then the missing bin. The report
        // showed them as four bins, the missing bin having been empty.
        let kept = KeptBins {
            name: "a".into(),
            reported: "tax:1".into(),
            transform: Transform::default(),
            bins: Bins::Cuts {
                cuts: vec![1.0, 2.0, 3.0],
            },
            groups: vec![vec![0], vec![1], vec![2], vec![3]],
        };
        let mut prep = Prep {
            binning_job: Some("b1".into()),
            select: Some(vec!["tax:1".into()]),
            merge: [("tax:1".to_string(), vec![vec![1, 2]])].into(),
            ..Prep::default()
        };
        prep.validate().unwrap();
        prep.keep(vec![kept.clone()]).unwrap();
        assert_eq!(prep.select, Some(vec!["a".to_string()]), "aliases resolve");
        assert_eq!(prep.reading("a"), Reading::Binned);
        assert_eq!(prep.reading("b"), Reading::Skip);
        let table = numbers(&[0.5, 1.5, 2.5, 3.5, 1.2, 2.2]);
        let all: Vec<usize> = (0..table.rows()).collect();
        let design = prep.design("tax", &table, &all).unwrap();
        // Bins 1 and 2 share one indicator; the empty missing bin has none.
        assert_eq!(design.feature_names(), ["a=≤ 1", "a=(1, 3]", "a=> 3"]);
        assert_eq!(design.values().row(1), ndarray::arr1(&[0.0, 1.0, 0.0]));
        // A merge naming a bin the report did not have, or a name the job did not bin.
        let mut wrong = Prep {
            binning_job: Some("b1".into()),
            merge: [("tax:1".to_string(), vec![vec![3, 4]])].into(),
            ..Prep::default()
        };
        wrong.keep(vec![kept.clone()]).unwrap();
        let err = wrong.design("tax", &table, &all).unwrap_err().to_string();
        assert!(err.contains("merge names bin 4"), "{err}");
        for guess in ["tax:2", "a"] {
            let mut unknown = Prep {
                binning_job: Some("b1".into()),
                select: Some(vec![guess.into()]),
                ..Prep::default()
            };
            let err = unknown.keep(vec![kept.clone()]).unwrap_err().to_string();
            assert!(
                err.contains("is not a column of binning job \"b1\""),
                "{err}"
            );
        }
        // The missing bin is not merged with value bins.
        let with_missing = KeptBins {
            groups: vec![vec![0], vec![1], vec![2], vec![3], vec![4]],
            ..kept.clone()
        };
        let err = kept_groups(&with_missing, Some(&vec![vec![3, 4]])).unwrap_err();
        assert!(err.contains("joins the missing bin"), "{err}");
        // A job's bins exclude a preparation of its own.
        let both = Prep {
            binning_job: Some("b1".into()),
            ..binned(Binning::Quantile { count: 4 })
        };
        assert!(both.validate().is_err());
    }

    #[test]
    fn order_statistics_by_selection_equal_those_of_a_sort() {
        let mut state = 7u64;
        let values: Vec<f64> = (0..1000)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) % 97) as f64 - 40.0
            })
            .collect();
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let ranks = [999, 0, 500, 500, 1, 998, 250, 731];
        let got = Ranked(values).at(&ranks);
        let want: Vec<f64> = ranks.iter().map(|&r| sorted[r]).collect();
        assert_eq!(got, want);
    }
}
