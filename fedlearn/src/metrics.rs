//! Binary classification metrics computed by the guest from joint scores.

use serde::{Deserialize, Serialize};

use crate::error::FedError;

/// The metrics reported per epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metrics {
    /// Area under the ROC curve (ties count one half).
    pub auc: f64,
    /// Kolmogorov–Smirnov statistic: the largest gap between the true- and false-positive rates.
    pub ks: f64,
    /// Mean negative log-likelihood (natural log), probabilities clamped to [1e-15, 1 − 1e-15].
    pub log_loss: f64,
    /// Share of rows whose probability is on the label's side of 0.5.
    pub accuracy: f64,
}

/// The revealed rows in equal-count groups by predicted probability (a reliability chart):
/// how many rows, their mean predicted probability and their observed rate of positives.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    /// Rows in the group.
    pub count: usize,
    /// Mean predicted probability.
    pub mean_probability: f64,
    /// Share of positive labels.
    pub observed_rate: f64,
}

/// Up to `groups` equal-count groups of rows by predicted probability, lowest first.
pub fn reliability(probabilities: &[f64], labels: &[f64], groups: usize) -> Vec<ReliabilityBin> {
    let mut order: Vec<usize> = (0..probabilities.len().min(labels.len())).collect();
    order.sort_by(|&a, &b| probabilities[a].total_cmp(&probabilities[b]));
    let groups = groups.clamp(1, order.len().max(1));
    (0..groups)
        .map(|g| &order[g * order.len() / groups..(g + 1) * order.len() / groups])
        .filter(|rows| !rows.is_empty())
        .map(|rows| {
            let n = rows.len() as f64;
            ReliabilityBin {
                count: rows.len(),
                mean_probability: rows.iter().map(|&r| probabilities[r]).sum::<f64>() / n,
                observed_rate: rows.iter().map(|&r| labels[r]).sum::<f64>() / n,
            }
        })
        .collect()
}

/// The rows whose probability is at least `from` and below the next band's.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BandStats {
    /// The band's lowest probability.
    pub from: f64,
    /// Rows in the band.
    pub count: usize,
    /// Their mean predicted probability.
    pub mean_probability: f64,
    /// Their share of positive labels (0 in an empty band).
    pub observed_rate: f64,
}

/// The rows in bands of probability that begin at 0 and at each of `starts` (increasing).
pub fn bands(probabilities: &[f64], labels: &[f64], starts: &[f64]) -> Vec<BandStats> {
    let froms: Vec<f64> = std::iter::once(0.0).chain(starts.iter().copied()).collect();
    let mut sums = vec![(0usize, 0.0f64, 0.0f64); froms.len()];
    for (&p, &y) in probabilities.iter().zip(labels) {
        let band = froms.partition_point(|&f| f <= p).saturating_sub(1);
        sums[band].0 += 1;
        sums[band].1 += p;
        sums[band].2 += y;
    }
    froms
        .iter()
        .zip(sums)
        .map(|(&from, (count, p, y))| {
            let n = count.max(1) as f64;
            BandStats {
                from,
                count,
                mean_probability: p / n,
                observed_rate: y / n,
            }
        })
        .collect()
}

/// Points (false-positive rate, true-positive rate) of the ROC curve at `points` thresholds
/// spaced by rank, from (0, 0) to (1, 1).
pub fn roc_curve(probabilities: &[f64], labels: &[f64], points: usize) -> Vec<[f64; 2]> {
    let mut order: Vec<usize> = (0..probabilities.len().min(labels.len())).collect();
    order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
    let positives = order.iter().filter(|&&r| labels[r] == 1.0).count().max(1) as f64;
    let negatives = order.iter().filter(|&&r| labels[r] != 1.0).count().max(1) as f64;
    let points = points.clamp(1, order.len().max(1));
    let mut curve = vec![[0.0, 0.0]];
    let (mut tp, mut fp, mut at) = (0.0, 0.0, 0);
    for k in 1..=points {
        let mut end = k * order.len() / points;
        // A threshold does not split rows of equal probability.
        while end < order.len()
            && end > 0
            && probabilities[order[end]] == probabilities[order[end - 1]]
        {
            end += 1;
        }
        if end <= at {
            continue;
        }
        for &r in &order[at..end] {
            if labels[r] == 1.0 {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
        }
        at = end;
        curve.push([fp / negatives, tp / positives]);
    }
    curve
}

/// Computes the metrics of probabilities against 0/1 labels.
pub fn evaluate(probabilities: &[f64], labels: &[f64]) -> Result<Metrics, FedError> {
    if probabilities.len() != labels.len() {
        return Err(FedError::LengthMismatch {
            what: "probabilities vs labels",
            expected: labels.len(),
            got: probabilities.len(),
        });
    }
    for (row, &y) in labels.iter().enumerate() {
        if y != 0.0 && y != 1.0 {
            return Err(FedError::BadLabel { row, value: y });
        }
    }
    for (row, &p) in probabilities.iter().enumerate() {
        if !(0.0..=1.0).contains(&p) {
            return Err(FedError::BadScore { row, value: p });
        }
    }
    let positives = labels.iter().filter(|&&y| y == 1.0).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return Err(FedError::SingleClass {
            class: u8::from(positives > 0),
        });
    }
    // Descending by score; rows with equal scores form one group (one threshold).
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
    let (mut tp, mut fp) = (0usize, 0usize);
    let (mut auc_pairs, mut ks) = (0.0f64, 0.0f64);
    let mut start = 0;
    while start < order.len() {
        let score = probabilities[order[start]];
        let mut end = start;
        let (mut group_tp, mut group_fp) = (0usize, 0usize);
        while end < order.len() && probabilities[order[end]] == score {
            if labels[order[end]] == 1.0 {
                group_tp += 1;
            } else {
                group_fp += 1;
            }
            end += 1;
        }
        // Each negative in the group ranks below every positive seen before it and ties with
        // the positives of its own group.
        auc_pairs += group_fp as f64 * (tp as f64 + 0.5 * group_tp as f64);
        tp += group_tp;
        fp += group_fp;
        ks = ks.max((tp as f64 / positives as f64 - fp as f64 / negatives as f64).abs());
        start = end;
    }
    let n = labels.len() as f64;
    let log_loss = probabilities
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let p = p.clamp(1e-15, 1.0 - 1e-15);
            -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
        })
        .sum::<f64>()
        / n;
    let correct = probabilities
        .iter()
        .zip(labels)
        .filter(|(&p, &y)| (p >= 0.5) == (y == 1.0))
        .count();
    Ok(Metrics {
        auc: auc_pairs / (positives as f64 * negatives as f64),
        ks,
        log_loss,
        accuracy: correct as f64 / n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_and_roc_points_count_the_rows() {
        let p = [0.05, 0.1, 0.15, 0.25, 0.3, 0.5, 0.9, 0.95];
        let y = [0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0];
        let b = bands(&p, &y, &[0.2, 0.5]);
        assert_eq!(b.iter().map(|b| b.count).collect::<Vec<_>>(), [3, 2, 3]);
        assert_eq!(b[2].from, 0.5);
        assert!((b[0].observed_rate - 1.0 / 3.0).abs() < 1e-12);
        assert!((b[2].mean_probability - (0.5 + 0.9 + 0.95) / 3.0).abs() < 1e-12);
        let roc = roc_curve(&p, &y, 4);
        assert_eq!(roc.first(), Some(&[0.0, 0.0]));
        assert_eq!(roc.last(), Some(&[1.0, 1.0]));
        // The top two rows are both positive.
        assert_eq!(roc[1], [0.0, 0.5]);
        assert!(roc
            .windows(2)
            .all(|w| w[0][0] <= w[1][0] && w[0][1] <= w[1][1]));
    }

    #[test]
    fn small_known_cases() {
        let m = evaluate(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]).unwrap();
        assert_eq!(m.auc, 0.75);
        assert_eq!(m.ks, 0.5);
        assert_eq!(m.accuracy, 0.75);
        let expected = -(0.9f64.ln() + 0.6f64.ln() + 0.35f64.ln() + 0.8f64.ln()) / 4.0;
        assert!((m.log_loss - expected).abs() < 1e-12);
        // Ties count one half: every score equal gives AUC 0.5 and KS 0.
        let tied = evaluate(&[0.3; 4], &[0.0, 1.0, 0.0, 1.0]).unwrap();
        assert_eq!((tied.auc, tied.ks), (0.5, 0.0));
        // Perfect separation.
        let perfect = evaluate(&[0.9, 0.2, 0.7, 0.1], &[1.0, 0.0, 1.0, 0.0]).unwrap();
        assert_eq!((perfect.auc, perfect.ks, perfect.accuracy), (1.0, 1.0, 1.0));
    }

    #[test]
    fn bad_inputs_are_named() {
        assert_eq!(
            evaluate(&[0.5, 0.5], &[0.0, 2.0]),
            Err(FedError::BadLabel { row: 1, value: 2.0 })
        );
        assert!(matches!(
            evaluate(&[f64::NAN, 0.5], &[0.0, 1.0]),
            Err(FedError::BadScore { row: 0, .. })
        ));
        assert_eq!(
            evaluate(&[0.5], &[1.0]),
            Err(FedError::SingleClass { class: 1 })
        );
        assert!(matches!(
            evaluate(&[0.5], &[1.0, 0.0]),
            Err(FedError::LengthMismatch { .. })
        ));
    }
}
