//! Each party's part of the joint model (its features' scaler and weights; the guest's part
//! also holds the intercept), saved as versioned JSON, and joint scoring.

use serde::{Deserialize, Serialize};

use crate::data::{Missing, Reading, Table};
use crate::error::FedError;
use crate::prep::{cell_at, Bins, Fitted, Transform};
use crate::woe::ColumnStats;

/// Version of the model JSON this build writes. It also reads format 1, the parts written
/// before calibration existed (they score with the plain logistic function), and format 2,
/// the parts written before column preparation (no transforms, no binned columns).
pub const MODEL_FORMAT: u32 = 4;

/// Which side of the federation a model part belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Holds the labels and the intercept.
    Guest,
    /// Holds features only.
    Host,
}

/// One feature of a party: how to standardise it and its weight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureWeight {
    /// Column name.
    pub name: String,
    /// Training mean.
    pub mean: f64,
    /// Training standard deviation (population).
    pub std: f64,
    /// Weight on the standardised value.
    pub weight: f64,
    /// Applied to the raw value before standardising (format 3).
    #[serde(default, skip_serializing_if = "Transform::is_identity")]
    pub transform: Transform,
}

/// One binned feature of a party: its bins and each bin's points, the bin's share of the
/// joint score (the missing bin last; 0 for a bin without training rows).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinnedWeight {
    /// Column name.
    pub name: String,
    /// Applied to the raw value before binning.
    #[serde(default, skip_serializing_if = "Transform::is_identity")]
    pub transform: Transform,
    /// The bins.
    pub bins: Bins,
    /// Points per bin, [`Bins::len`] of them.
    pub points: Vec<f64>,
    /// Groups of bins merged into one (they share their points; format 4).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged: Vec<Vec<usize>>,
}

impl BinnedWeight {
    /// Every bin's group, merged bins together, in the order of their first bins.
    pub fn groups(&self) -> Vec<Vec<usize>> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for bin in 0..self.bins.len() {
            match self.merged.iter().find(|g| g.contains(&bin)) {
                Some(group) if group[0] != bin => {}
                Some(group) => groups.push(group.clone()),
                None => groups.push(vec![bin]),
            }
        }
        groups
    }
}

/// One bin of a scorecard: its rows among the guest's aligned rows, their events, the bin's
/// WOE and share of IV, and its points.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScorecardBin {
    /// The bin's label.
    pub label: String,
    /// Rows in it.
    pub rows: u64,
    /// Events among them.
    pub events: u64,
    /// Weight of evidence (as in the binning report).
    pub woe: f64,
    /// Its share of the column's IV.
    pub iv: f64,
    /// Its points: its share of the joint score.
    pub points: f64,
}

/// A binned column of the guest's model part as a scorecard (merged bins as one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScorecardColumn {
    /// The column.
    pub name: String,
    /// Its information value on these bins.
    pub iv: f64,
    /// Its bins that hold rows.
    pub bins: Vec<ScorecardBin>,
}

/// Platt scaling of the joint score: probability = σ(slope·z + offset).
///
/// Training optimises a Taylor approximation of the log-loss, whose optimum on imbalanced
/// labels is far from calibrated (the first-order residual 0.25·z + 0.5 − y makes z the
/// least-squares fit of 4y − 2). The guest fits these two numbers, by maximum likelihood with
/// Platt's smoothed targets, on the joint scores of the job's one reveal — scores it sees
/// anyway — so calibration discloses nothing new; the order of the scores, hence AUC and KS,
/// is unchanged when the slope is positive.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Multiplies the joint score.
    pub slope: f64,
    /// Added after.
    pub offset: f64,
}

impl Calibration {
    /// The calibrated probability of joint score `z`.
    pub fn probability(&self, z: f64) -> f64 {
        crate::math::sigmoid(self.slope * z + self.offset)
    }

    /// Fits slope and offset to joint scores and their 0/1 labels; `None` when the labels are
    /// all of one class or the fit does not converge to finite numbers.
    pub fn fit(scores: &[f64], labels: &[f64]) -> Option<Calibration> {
        let positives = labels.iter().filter(|&&y| y > 0.5).count() as f64;
        let negatives = labels.len() as f64 - positives;
        if positives == 0.0 || negatives == 0.0 || scores.len() != labels.len() {
            return None;
        }
        // Platt's targets keep the fit finite on separable scores.
        let (high, low) = (
            (positives + 1.0) / (positives + 2.0),
            1.0 / (negatives + 2.0),
        );
        let targets: Vec<f64> = labels
            .iter()
            .map(|&y| if y > 0.5 { high } else { low })
            .collect();
        let loss = |a: f64, b: f64| -> f64 {
            scores
                .iter()
                .zip(&targets)
                .map(|(&z, &t)| {
                    let u = a * z + b;
                    // −[t·log σ(u) + (1 − t)·log(1 − σ(u))], stable for large |u|.
                    u.max(0.0) - t * u + (-u.abs()).exp().ln_1p()
                })
                .sum()
        };
        let (mut a, mut b) = (1.0, 0.0);
        let mut current = loss(a, b);
        for _ in 0..100 {
            // Newton's step on the two parameters, halved until the loss decreases.
            let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 1e-12, 0.0, 1e-12);
            for (&z, &t) in scores.iter().zip(&targets) {
                let p = crate::math::sigmoid(a * z + b);
                let w = p * (1.0 - p);
                ga += (p - t) * z;
                gb += p - t;
                haa += w * z * z;
                hab += w * z;
                hbb += w;
            }
            let det = haa * hbb - hab * hab;
            if det <= 0.0 || !det.is_finite() {
                break;
            }
            let (da, db) = ((hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det);
            let mut step = 1.0;
            let mut improved = false;
            while step > 1e-10 {
                let next = loss(a - step * da, b - step * db);
                if next < current {
                    (a, b, current) = (a - step * da, b - step * db, next);
                    improved = true;
                    break;
                }
                step /= 2.0;
            }
            if !improved || (step * da).abs().max((step * db).abs()) < 1e-10 {
                break;
            }
        }
        (a.is_finite() && b.is_finite()).then_some(Calibration {
            slope: a,
            offset: b,
        })
    }
}

/// One party's part of a joint logistic-regression model: the joint score is
/// z = Σ_parties (Σ_j w_j·(t_j(x_j) − μ_j)/σ_j + Σ_binned points[bin(x)]) plus the intercept,
/// with t_j the feature's transform, and the probability σ(slope·z + offset) with the guest's
/// [`Calibration`] (σ(z) for a part without one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPart {
    /// [`MODEL_FORMAT`].
    pub format: u32,
    /// The joint model's id (the same in every party's part).
    pub model_id: String,
    /// The party holding this part.
    pub party: String,
    /// Guest or host.
    pub role: Role,
    /// Missing-value policy: with [`Missing::Mean`] a missing value scores as the mean.
    pub missing: Missing,
    /// The party's standardised features, in order.
    pub features: Vec<FeatureWeight>,
    /// The party's binned features, in order (format 3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub binned: Vec<BinnedWeight>,
    /// The intercept (guest only).
    pub intercept: Option<f64>,
    /// The guest's calibration of the joint score (guest only; absent in format 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
}

impl ModelPart {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a model part always serialises")
    }

    /// The probability of a joint score (the sum of every party's partial score), with this
    /// part's calibration if it has one: use the guest's part.
    pub fn probability(&self, joint_score: f64) -> f64 {
        match &self.calibration {
            Some(calibration) => calibration.probability(joint_score),
            None => crate::math::sigmoid(joint_score),
        }
    }

    /// Reads a model part, refusing other format versions; `source` names the file in errors.
    pub fn from_json(source: &str, text: &str) -> Result<ModelPart, FedError> {
        let error = |reason: String| FedError::Model {
            source_name: source.to_owned(),
            reason,
        };
        let model: ModelPart = serde_json::from_str(text).map_err(|e| error(e.to_string()))?;
        if !(1..=MODEL_FORMAT).contains(&model.format) {
            return Err(error(format!(
                "format {} (this build reads formats 1 to {MODEL_FORMAT})",
                model.format
            )));
        }
        if model.calibration.is_some() && (model.format < 2 || model.role != Role::Guest) {
            return Err(error(
                "a calibration belongs to the guest's part of format 2 or later".into(),
            ));
        }
        if (model.role == Role::Guest) != model.intercept.is_some() {
            return Err(error(
                "the intercept belongs to the guest's part only".into(),
            ));
        }
        if let Some(f) = model
            .features
            .iter()
            .find(|f| !(f.mean.is_finite() && f.std > 0.0 && f.weight.is_finite()))
        {
            return Err(error(format!(
                "feature {:?} has a non-finite or zero scale",
                f.name
            )));
        }
        let prepared = model.features.iter().any(|f| !f.transform.is_identity());
        if model.format < 3 && (prepared || !model.binned.is_empty()) {
            return Err(error(
                "transforms and binned features belong to format 3 or later".into(),
            ));
        }
        for (name, transform) in model
            .features
            .iter()
            .map(|f| (&f.name, &f.transform))
            .chain(model.binned.iter().map(|b| (&b.name, &b.transform)))
        {
            transform
                .check()
                .map_err(|reason| error(format!("feature {name:?}: {reason}")))?;
        }
        for b in &model.binned {
            b.bins
                .check()
                .map_err(|reason| error(format!("feature {:?}: {reason}", b.name)))?;
            if b.points.len() != b.bins.len() || b.points.iter().any(|p| !p.is_finite()) {
                return Err(error(format!(
                    "feature {:?} needs {} finite points, one per bin",
                    b.name,
                    b.bins.len()
                )));
            }
            let mut seen = vec![false; b.bins.len()];
            let merged_well = b.merged.iter().all(|g| {
                g.len() >= 2
                    && g.windows(2).all(|w| w[0] < w[1])
                    && g.iter().all(|&bin| {
                        bin < seen.len()
                            && !std::mem::replace(&mut seen[bin], true)
                            && b.points[bin] == b.points[g[0]]
                    })
            });
            if !merged_well || (model.format < 4 && !b.merged.is_empty()) {
                return Err(error(format!(
                    "feature {:?}: merged bins must be disjoint increasing groups of two or \
                     more bins with equal points (format 4 or later)",
                    b.name
                )));
            }
            if matches!(b.bins, Bins::Categories { .. }) && !b.transform.is_identity() {
                return Err(error(format!(
                    "feature {:?}: a categorical feature has no transform",
                    b.name
                )));
            }
        }
        Ok(model)
    }

    /// How scoring reads column `name` from a file: as [`Prep::reading`](crate::Prep::reading)
    /// did in training.
    /// A column the part does not use is not read.
    pub fn reading(&self, name: &str) -> Reading {
        match self.binned.iter().find(|b| b.name == name) {
            Some(b) if matches!(b.bins, Bins::Categories { .. }) => Reading::Text,
            Some(_) => Reading::Binned,
            None if self.features.iter().any(|f| f.name == name) => Reading::Number,
            None => Reading::Skip,
        }
    }

    /// The binned columns of this part as a scorecard over the rows of `table`, which holds
    /// the labels (the guest's aligned rows).
    pub fn scorecard(&self, table: &Table) -> Result<Vec<ScorecardColumn>, FedError> {
        let labels = table
            .labels()
            .ok_or_else(|| FedError::config("labels", "a scorecard needs the labels"))?;
        let (rows, events) = (
            labels.len() as u64,
            labels.iter().filter(|&&y| y == 1.0).count() as u64,
        );
        self.binned
            .iter()
            .map(|b| {
                let column = table
                    .feature_names()
                    .iter()
                    .position(|n| *n == b.name)
                    .ok_or_else(|| FedError::Model {
                        source_name: self.model_id.clone(),
                        reason: format!("the data has no column {:?}", b.name),
                    })?;
                let mut counts = vec![(0u64, 0u64); b.bins.len()];
                for (row, &y) in labels.iter().enumerate() {
                    let bin = b
                        .bins
                        .bin(cell_at(table, row, column, &b.transform))
                        .map_err(|reason| FedError::Model {
                            source_name: self.model_id.clone(),
                            reason: format!("column {:?} {reason}", b.name),
                        })?;
                    counts[bin].0 += 1;
                    counts[bin].1 += u64::from(y == 1.0);
                }
                let missing = b.bins.value_bins();
                let groups = b.groups();
                let sum = |g: &[usize]| {
                    g.iter().fold((0, 0), |(n, e), &bin| {
                        (n + counts[bin].0, e + counts[bin].1)
                    })
                };
                let stats = ColumnStats::new(
                    &self.party,
                    (b.name.clone(), matches!(b.bins, Bins::Categories { .. })),
                    groups
                        .iter()
                        .map(|g| {
                            let (n, e) = sum(g);
                            (b.bins.group_label(g), n, e, g == &[missing])
                        })
                        .collect(),
                    rows,
                    events,
                );
                // The groups with rows, in order, as the statistics list them.
                let points = groups
                    .iter()
                    .filter(|g| sum(g).0 > 0)
                    .map(|g| b.points[g[0]]);
                Ok(ScorecardColumn {
                    name: b.name.clone(),
                    iv: stats.iv,
                    bins: stats
                        .bins
                        .into_iter()
                        .zip(points)
                        .map(|(s, points)| ScorecardBin {
                            label: s.label,
                            rows: s.rows,
                            events: s.events,
                            woe: s.woe,
                            iv: s.iv,
                            points,
                        })
                        .collect(),
                })
            })
            .collect()
    }

    /// This party's share of z for every row of `table`, whose columns are matched by name.
    pub fn partial_scores(&self, table: &Table) -> Result<Vec<f64>, FedError> {
        self.row_scores(table)?.into_iter().collect()
    }

    /// Like [`ModelPart::partial_scores`], but a row that cannot be scored (a missing value
    /// under [`Missing::Reject`]) is an error of its own instead of failing every row. The
    /// outer error is a column the model needs and the table lacks.
    pub fn row_scores(&self, table: &Table) -> Result<Vec<Result<f64, FedError>>, FedError> {
        let find = |name: &String| {
            table
                .feature_names()
                .iter()
                .position(|n| n == name)
                .ok_or_else(|| FedError::Model {
                    source_name: self.model_id.clone(),
                    reason: format!("the data has no column {name:?}"),
                })
        };
        let at: Vec<usize> = self
            .features
            .iter()
            .map(|f| find(&f.name))
            .collect::<Result<_, _>>()?;
        let binned_at: Vec<usize> = self
            .binned
            .iter()
            .map(|b| find(&b.name))
            .collect::<Result<_, _>>()?;
        if let Some(f) = self
            .features
            .iter()
            .zip(&at)
            .find(|(_, &c)| table.is_text(c))
        {
            return Err(FedError::Model {
                source_name: self.model_id.clone(),
                reason: format!("column {:?} holds text; the model reads numbers", f.0.name),
            });
        }
        let values = table.values();
        let intercept = self.intercept.unwrap_or(0.0);
        let row_error = |row: usize, name: &str, reason: &str| FedError::Model {
            source_name: self.model_id.clone(),
            reason: format!("row {row} ({}): {name:?} {reason}", &table.ids()[row]),
        };
        Ok((0..table.rows())
            .map(|row| {
                let mut z = intercept;
                for (f, &column) in self.features.iter().zip(&at) {
                    let x = values[[row, column]];
                    if x.is_nan() {
                        if self.missing == Missing::Reject {
                            return Err(row_error(row, &f.name, "has no value"));
                        }
                        continue;
                    }
                    z += f.weight * (f.transform.apply(x) - f.mean) / f.std;
                }
                for (b, &column) in self.binned.iter().zip(&binned_at) {
                    let bin = b
                        .bins
                        .bin(cell_at(table, row, column, &b.transform))
                        .map_err(|reason| row_error(row, &b.name, reason))?;
                    z += b.points[bin];
                }
                Ok(z)
            })
            .collect())
    }
}

/// Uncalibrated probabilities σ(z) of the positive class from the guest's partial scores and the (securely
/// aggregated) sum of the hosts' partial scores.
pub fn joint_probabilities(guest: &[f64], hosts_sum: &[f64]) -> Result<Vec<f64>, FedError> {
    if guest.len() != hosts_sum.len() {
        return Err(FedError::LengthMismatch {
            what: "host score sums vs guest scores",
            expected: guest.len(),
            got: hosts_sum.len(),
        });
    }
    Ok(guest
        .iter()
        .zip(hosts_sum)
        .map(|(g, h)| crate::math::sigmoid(g + h))
        .collect())
}

/// A party's training data standardised on its training rows (rows × features, row-major;
/// missing → 0).
pub(crate) struct Standardised {
    pub(crate) means: Vec<f64>,
    pub(crate) stds: Vec<f64>,
    pub(crate) values: ndarray::Array2<f64>,
}

impl Standardised {
    pub(crate) fn fit(party: &str, table: &Table, train: &[usize]) -> Result<Self, FedError> {
        let width = table.features();
        let raw = table.values();
        let (mut means, mut stds) = (Vec::with_capacity(width), Vec::with_capacity(width));
        for column in 0..width {
            let (mut count, mut sum, mut sum_sq) = (0usize, 0.0f64, 0.0f64);
            let (mut first, mut constant) = (None, true);
            for &row in train {
                let x = raw[[row, column]];
                if x.is_nan() {
                    continue;
                }
                count += 1;
                sum += x;
                sum_sq += x * x;
                match first {
                    None => first = Some(x),
                    Some(v) => constant &= v == x,
                }
            }
            if constant {
                return Err(FedError::ConstantColumn {
                    party: party.to_owned(),
                    column: table.feature_names()[column].clone(),
                    value: first.unwrap_or(f64::NAN),
                });
            }
            let mean = sum / count as f64;
            let var = (sum_sq / count as f64 - mean * mean).max(0.0);
            means.push(mean);
            stds.push(var.sqrt());
        }
        let mut values = raw.to_owned();
        for mut row in values.rows_mut() {
            for (x, (m, s)) in row.iter_mut().zip(means.iter().zip(&stds)) {
                *x = if x.is_nan() { 0.0 } else { (*x - m) / s };
            }
        }
        Ok(Standardised {
            means,
            stds,
            values,
        })
    }

    /// The model part of a party with the given weights of its design columns.
    pub(crate) fn model(
        &self,
        fitted: &Fitted,
        model_id: &str,
        party: &str,
        missing: Missing,
        weights: &[f64],
        intercept: Option<f64>,
    ) -> ModelPart {
        let (features, binned) = model_columns(fitted, &self.means, &self.stds, weights);
        ModelPart {
            format: MODEL_FORMAT,
            model_id: model_id.to_owned(),
            party: party.to_owned(),
            role: if intercept.is_some() {
                Role::Guest
            } else {
                Role::Host
            },
            missing,
            features,
            binned,
            intercept,
            calibration: None,
        }
    }
}

/// The model's columns from the weights of the standardised design columns.
fn model_columns(
    fitted: &Fitted,
    means: &[f64],
    stds: &[f64],
    weights: &[f64],
) -> (Vec<FeatureWeight>, Vec<BinnedWeight>) {
    let (mut features, mut binned) = (Vec::new(), Vec::new());
    let mut at = 0;
    for column in &fitted.columns {
        match &column.bins {
            None => {
                features.push(FeatureWeight {
                    name: column.name.clone(),
                    mean: means[at],
                    std: stds[at],
                    weight: weights[at],
                    transform: column.transform,
                });
                at += 1;
            }
            Some((bins, indicators)) => {
                // The standardised indicators' contribution when every one is at its
                // mean is 0; a row in bin b moves indicator b from its mean to 1 and the
                // others from theirs to 0.
                let used = crate::prep::distinct(indicators);
                let at_zero: f64 = used.iter().map(|&d| -weights[d] * means[d] / stds[d]).sum();
                let points = indicators
                    .iter()
                    .map(|design| match design {
                        Some(d) => at_zero + weights[*d] / stds[*d],
                        None => 0.0,
                    })
                    .collect();
                let merged = used
                    .iter()
                    .map(|&d| {
                        (0..indicators.len())
                            .filter(|&bin| indicators[bin] == Some(d))
                            .collect::<Vec<_>>()
                    })
                    .filter(|g| g.len() > 1)
                    .collect();
                binned.push(BinnedWeight {
                    name: column.name.clone(),
                    transform: column.transform,
                    bins: bins.clone(),
                    points,
                    merged,
                });
                at += used.len();
            }
        }
    }
    (features, binned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prep::tests::{binned, numbers};
    use crate::prep::{Binning, Prep};

    fn table(values: Vec<f64>) -> Table {
        let rows = values.len() / 2;
        Table::new(
            (0..rows).map(|i| i.to_string()).collect(),
            vec!["a".into(), "b".into()],
            ndarray::Array2::from_shape_vec((rows, 2), values).unwrap(),
            None,
            Missing::Mean,
        )
        .unwrap()
    }

    #[test]
    fn standardises_scores_and_round_trips_json() {
        let t = table(vec![1.0, 10.0, 3.0, f64::NAN, 5.0, 30.0]);
        let s = Standardised::fit("tax", &t, &[0, 1, 2]).unwrap();
        let fitted = Fitted::fit("tax", &Prep::default(), &t, &[0, 1, 2]).unwrap();
        assert_eq!(s.means, vec![3.0, 20.0]);
        assert_eq!(s.values[[1, 1]], 0.0, "missing scores as the mean");
        let model = s.model(&fitted, "m1", "tax", t.missing(), &[1.0, 2.0], None);
        let back = ModelPart::from_json("tax.json", &model.to_json()).unwrap();
        assert_eq!(back, model);
        let z = back.partial_scores(&t).unwrap();
        let std_a = (8.0f64 / 3.0).sqrt();
        assert!((z[0] - (-2.0 / std_a - 2.0)).abs() < 1e-12);
        assert!((z[1] - 0.0).abs() < 1e-12);

        let mut wrong = model.clone();
        wrong.format = MODEL_FORMAT + 1;
        assert!(ModelPart::from_json("x", &wrong.to_json()).is_err());
        // Format 1 (before calibration) still reads; a calibration needs format 2 and the guest.
        let mut old = model.clone();
        old.format = 1;
        assert_eq!(ModelPart::from_json("x", &old.to_json()).unwrap(), old);
        let calibration = Some(Calibration {
            slope: 2.0,
            offset: -1.0,
        });
        wrong = model.clone();
        wrong.calibration = calibration;
        assert!(
            ModelPart::from_json("x", &wrong.to_json()).is_err(),
            "a host's part"
        );
        let mut guest = s.model(&fitted, "m1", "bank", t.missing(), &[1.0, 2.0], Some(0.5));
        guest.calibration = calibration;
        let back = ModelPart::from_json("bank.json", &guest.to_json()).unwrap();
        assert_eq!(back.probability(0.5), crate::math::sigmoid(0.0));
        guest.format = 1;
        assert!(
            ModelPart::from_json("x", &guest.to_json()).is_err(),
            "format 1"
        );
        wrong = model.clone();
        wrong.intercept = Some(1.0);
        assert!(ModelPart::from_json("x", &wrong.to_json()).is_err());
        assert!(ModelPart::from_json("x", "{").is_err());
    }

    #[test]
    fn constant_columns_are_named() {
        let t = table(vec![1.0, 2.0, 1.0, 3.0]);
        match Standardised::fit("tax", &t, &[0, 1]) {
            Err(FedError::ConstantColumn { column, value, .. }) => {
                assert_eq!((column.as_str(), value), ("a", 1.0))
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn categories_missing_values_and_points() {
        let csv = "id,y,industry\n\
                   1,0,retail\n2,1,retail\n3,0,farming\n4,0,farming\n5,1,farming\n\
                   6,0,mining\n7,1,\n8,0,retail\n9,0,farming\n10,1,retail\n";
        let prep = binned(Binning::Categorical { min_share: 0.15 });
        let table = Table::parse_csv("t.csv", csv, "id", Some("y"), Missing::Reject, &|c| {
            prep.reading(c)
        })
        .unwrap();
        let train: Vec<usize> = (0..10).collect();
        let fitted = Fitted::fit("bank", &prep, &table, &train).unwrap();
        let design = fitted.design(&table).unwrap();
        // mining (1 row of 10) is rare: "other"; the missing cell has its bin.
        assert_eq!(
            design.feature_names(),
            [
                "industry=farming",
                "industry=retail",
                "industry=other",
                "industry=missing"
            ]
        );
        assert_eq!(design.values().row(5), ndarray::arr1(&[0.0, 0.0, 1.0, 0.0]));
        assert_eq!(design.values().row(6), ndarray::arr1(&[0.0, 0.0, 0.0, 1.0]));

        // Points: the standardised indicators' weighted sum, bin by bin.
        let standardised = Standardised::fit("bank", &design, &train).unwrap();
        let weights = [0.5, -1.0, 2.0, 0.25];
        let part = standardised.model(&fitted, "m", "bank", Missing::Reject, &weights, Some(0.0));
        let back = ModelPart::from_json("m.json", &part.to_json()).unwrap();
        assert_eq!(back, part);
        let z = back.partial_scores(&table).unwrap();
        for (row, z) in z.iter().enumerate() {
            let expected: f64 = (0..4)
                .map(|c| weights[c] * standardised.values[[row, c]])
                .sum();
            assert!((z - expected).abs() < 1e-12, "row {row}: {z} vs {expected}");
        }
        // Over the training rows the points average to 0.
        assert!(z.iter().sum::<f64>().abs() < 1e-9);

        // At scoring: an unseen category scores in "other", like mining.
        let scoring = "id,industry\nA,quarrying\nB,mining\nC,\n";
        let new = Table::parse_csv("s.csv", scoring, "id", None, Missing::Reject, &|c| {
            back.reading(c)
        })
        .unwrap();
        let s = back.partial_scores(&new).unwrap();
        assert_eq!(s[0], s[1]);
        assert_eq!(s[2], z[6], "missing");
    }

    #[test]
    fn an_empty_bin_scores_the_columns_average() {
        // No missing value in training: the missing bin has no indicator and 0 points.
        let t = numbers(&[1.0, 2.0, 3.0, 4.0]);
        let prep = binned(Binning::Cuts { cuts: vec![2.0] });
        let train = [0, 1, 2, 3];
        let fitted = Fitted::fit("tax", &prep, &t, &train).unwrap();
        let design = fitted.design(&t).unwrap();
        assert_eq!(design.features(), 2);
        let standardised = Standardised::fit("tax", &design, &train).unwrap();
        let part = standardised.model(&fitted, "m", "tax", Missing::Reject, &[1.0, 3.0], None);
        assert_eq!(part.binned[0].points.len(), 3);
        assert_eq!(part.binned[0].points[2], 0.0);
        let z = part.partial_scores(&numbers(&[f64::NAN, 1.0])).unwrap();
        assert_eq!(z[0], 0.0);
        assert!(z[1] < 0.0, "the low bin has the lower weight");
    }
}
