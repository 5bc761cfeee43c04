//! Calibrated probabilities on a book with rare defaults: the credit data subsampled to a 7%
//! default rate. Training optimises a Taylor approximation of the log-loss, whose optimum is
//! far from calibrated there; the guest's Platt scaling, fitted on the job's one reveal (the
//! validation rows), must bring the mean predicted probability on rows the job never saw to
//! within 10% of their observed default rate, without changing their order.

mod common;

use common::{jobs, parties};
use fedlearn::*;

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

#[test]
fn probabilities_on_unseen_rows_match_a_rare_default_rate() {
    let (guest, hosts) = parties("default_credit", 2);
    let labels = guest.labels().unwrap().to_vec();
    // Every non-default, and every k-th default so that 7% of the rows default.
    let negatives = labels.iter().filter(|&&y| y < 0.5).count();
    let wanted = (negatives as f64 * 0.07 / 0.93).round() as usize;
    let positives = labels.len() - negatives;
    let mut seen = 0;
    let rows: Vec<usize> = (0..labels.len())
        .filter(|&r| {
            labels[r] < 0.5 || {
                seen += 1;
                seen * wanted / positives != (seen - 1) * wanted / positives
            }
        })
        .collect();
    // 70% of the rows for the job (which keeps 30% of those for validation), 30% held out.
    let (job_rows, test_rows): (Vec<usize>, Vec<usize>) = rows.iter().partition(|&&r| r % 10 < 7);
    let select = |table: &Table, rows: &[usize]| table.select_rows(rows).unwrap();
    let config = TrainConfig {
        validation_fraction: 0.3,
        seed: 3,
        ..TrainConfig::default()
    };
    let (guest_job, host_jobs) = jobs(
        select(&guest, &job_rows),
        hosts.iter().map(|h| select(h, &job_rows)).collect(),
        &config,
    );
    let run = simulate(guest_job, host_jobs, false, &mut |_| {}).unwrap();
    let evaluation = &run.guest.evaluation;
    assert_eq!(evaluation.rows, RevealedRows::Validation);
    let calibration = evaluation
        .calibration
        .expect("both classes among the revealed rows");
    assert_eq!(run.guest.model.calibration, Some(calibration));
    assert_eq!(evaluation.reliability.len(), 10);

    // Joint scores of the held-out rows, in the clear (the test may; the parties may not).
    let mut z = run
        .guest
        .model
        .partial_scores(&select(&guest, &test_rows))
        .unwrap();
    for (part, table) in run.hosts.iter().map(|h| &h.model).zip(&hosts) {
        for (z, h) in z
            .iter_mut()
            .zip(part.partial_scores(&select(table, &test_rows)).unwrap())
        {
            *z += h;
        }
    }
    let observed = mean(&test_rows.iter().map(|&r| labels[r]).collect::<Vec<_>>());
    assert!((observed - 0.07).abs() < 0.005, "{observed}");
    let calibrated: Vec<f64> = z.iter().map(|&z| run.guest.model.probability(z)).collect();
    let raw: Vec<f64> = z.iter().map(|&z| sigmoid(z)).collect();
    let error = |p: &[f64]| (mean(p) - observed).abs() / observed;
    println!(
        "held-out rows {}: observed default rate {observed:.4}, mean PD calibrated {:.4}, \
         uncalibrated {:.4}; {calibration:?}",
        test_rows.len(),
        mean(&calibrated),
        mean(&raw)
    );
    assert!(
        error(&calibrated) < 0.10,
        "mean PD {} vs observed {observed} ({calibration:?})",
        mean(&calibrated)
    );
    // What calibration corrects: the Taylor optimum alone is far off on rare defaults.
    assert!(error(&raw) > 0.5, "uncalibrated mean PD {}", mean(&raw));
    // Monotone: the held-out AUC is the same with or without calibration.
    let test_labels: Vec<f64> = test_rows.iter().map(|&r| labels[r]).collect();
    let (a, b) = (
        evaluate(&calibrated, &test_labels).unwrap(),
        evaluate(&raw, &test_labels).unwrap(),
    );
    assert!(
        (a.auc - b.auc).abs() < 1e-12 && a.auc > 0.65,
        "{a:?} vs {b:?}"
    );
    assert!(a.log_loss < b.log_loss, "{a:?} vs {b:?}");
}

#[test]
fn platt_scaling_recovers_a_known_slope_and_offset() {
    // Labels drawn with P(y = 1 | z) = σ(2z − 3) on a fixed grid: the fit finds (2, −3).
    let mut scores = Vec::new();
    let mut labels = Vec::new();
    for i in 0..4000 {
        let z = -3.0 + 6.0 * (i as f64) / 4000.0;
        let p = sigmoid(2.0 * z - 3.0);
        // A low-discrepancy sequence in place of random draws, so the test is exact.
        let u = (i as f64 * 0.618_033_988_749_895).fract();
        scores.push(z);
        labels.push(if u < p { 1.0 } else { 0.0 });
    }
    let fit = Calibration::fit(&scores, &labels).unwrap();
    assert!((fit.slope - 2.0).abs() < 0.15, "{fit:?}");
    assert!((fit.offset + 3.0).abs() < 0.2, "{fit:?}");
    assert_eq!(Calibration::fit(&scores, &vec![0.0; scores.len()]), None);
}
