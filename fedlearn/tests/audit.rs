//! Wire audit: every message of a three-party job is recorded and decoded; none may carry
//! another party's plaintext features, labels, residuals, gradients or partial scores.

mod common;

use common::{jobs, parties};
use fedlearn::*;
use std::collections::{BTreeMap, HashMap};

/// Every `window`-value run of `values`, each value encoded by `encode`, as byte patterns.
fn patterns<T: Copy>(values: &[T], window: usize, encode: impl Fn(T) -> Vec<u8>) -> Vec<Vec<u8>> {
    values
        .windows(window)
        .step_by(window)
        .map(|w| w.iter().flat_map(|&v| encode(v)).collect())
        .collect()
}

/// The secrets found in `bytes`: every window of every pattern length, looked up in a set.
fn leaks<'a>(bytes: &[u8], secrets: &'a [(&'a str, Vec<u8>)]) -> Vec<&'a str> {
    let mut by_len: BTreeMap<usize, HashMap<&[u8], &str>> = BTreeMap::new();
    for (owner, secret) in secrets {
        by_len
            .entry(secret.len())
            .or_default()
            .insert(secret, owner);
    }
    let mut found = Vec::new();
    for (len, set) in &by_len {
        for window in bytes.windows(*len) {
            if let Some(owner) = set.get(window) {
                found.push(*owner);
            }
        }
    }
    found
}

fn standardised_column(table: &Table, column: usize) -> Vec<f64> {
    let values: Vec<f64> = table.values().column(column).to_vec();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt();
    values.iter().map(|v| (v - mean) / std).collect()
}

#[test]
fn no_plaintext_crosses_the_wire() {
    let config = TrainConfig {
        max_epochs: 2,
        seed: 5,
        ..TrainConfig::default()
    };
    let (guest, hosts) = parties("breast", 2);
    let (guest_job, host_jobs) = jobs(guest.clone(), hosts.clone(), &config);
    let simulation = simulate(guest_job, host_jobs, true, &mut |_| {}).unwrap();

    // Decoding by type: every message decodes, and each kind travels only where the protocol
    // says (hosts never send the guest anything but ciphertexts and masked values).
    let host_names = ["host0", "host1"];
    let mut kinds = std::collections::BTreeSet::new();
    for record in &simulation.wire {
        let message = Message::from_bytes(&record.bytes).unwrap();
        assert_eq!(message.kind(), record.kind);
        kinds.insert(record.kind);
        let allowed = match (record.from.as_str(), record.to.as_str()) {
            ("bank", _) => &[
                "propose",
                "keys",
                "packing",
                "shared_columns",
                "shared_gram",
                "coupling_vectors",
                "coupling_releases",
                "step_vector",
                "step_release",
                "step_loss_vector",
                "step_loss_release",
                "epoch_end",
                "weight_shares",
            ][..],
            (_, "bank") => &[
                "keys",
                "packing",
                "shared_columns",
                "shared_gram",
                "coupling_vectors",
                "coupling_releases",
                "step_vector",
                "step_release",
                "hand_over",
                "step_loss_vector",
                "step_loss_release",
                "loss_shares",
                "weight_shares",
                "final_scores",
            ][..],
            _ => &[
                "keys",
                "digest",
                "packing",
                "shared_columns",
                "shared_gram",
                "coupling_vectors",
                "coupling_releases",
                "step_vector",
                "step_release",
                "hand_over",
                "loss_shares",
            ][..],
        };
        assert!(
            allowed.contains(&record.kind),
            "{} → {}: {}",
            record.from,
            record.to,
            record.kind
        );
    }
    assert_eq!(kinds.len(), 17, "{kinds:?}");
    // Exactly one per-row message of the hosts' scores reaches the guest per host: the final
    // reveal.
    for host in host_names {
        let reveals = simulation
            .wire
            .iter()
            .filter(|r| r.from == host && r.to == "bank" && r.kind == "final_scores")
            .count();
        assert_eq!(reveals, 1, "{host}");
    }

    // Plaintext patterns: raw and standardised features (f64, f32), labels (bytes, f64, and
    // the first residual 0.5 − y in the residual's fixed point), each as runs of values.
    let mut secrets: Vec<(&str, Vec<u8>)> = Vec::new();
    let labels = guest.labels().unwrap();
    for p in patterns(labels, 16, |y| vec![y as u8]) {
        secrets.push(("bank", p));
    }
    for p in patterns(labels, 4, |y: f64| y.to_le_bytes().to_vec()) {
        secrets.push(("bank", p));
    }
    for scale in [1024.0, 4096.0] {
        let residual: Vec<i64> = labels.iter().map(|y| ((0.5 - y) * scale) as i64).collect();
        for p in patterns(&residual, 4, |r: i64| r.to_le_bytes().to_vec()) {
            secrets.push(("bank", p));
        }
    }
    let all: Vec<(&str, &Table)> = std::iter::once(("bank", &guest))
        .chain(host_names.iter().copied().zip(&hosts))
        .collect();
    for (party, table) in &all {
        for p in patterns(table.values().as_slice().unwrap(), 4, |v: f64| {
            v.to_le_bytes().to_vec()
        }) {
            secrets.push((party, p));
        }
        for p in patterns(table.values().as_slice().unwrap(), 4, |v: f64| {
            (v as f32).to_le_bytes().to_vec()
        }) {
            secrets.push((party, p));
        }
        for column in 0..table.features() {
            let standardised = standardised_column(table, column);
            for p in patterns(&standardised, 4, |v: f64| v.to_le_bytes().to_vec()) {
                secrets.push((party, p));
            }
        }
    }
    // What the set-up multiplies, in the he plaintext: each host column's label term
    // Σ x̃·(1 − 2y) and its cross Gram entry with the guest's first column Σ x̃·x̃_G (all rows
    // train: no validation split), as i64 and i128; and every party's final weights in the
    // shares' fixed point (2^20) and as f64.
    let quantise = |values: &[f64], bits: u32| -> Vec<i64> {
        let scale = 2f64.powi(bits as i32);
        values.iter().map(|x| (x * scale).round() as i64).collect()
    };
    let guest_first = quantise(
        &standardised_column(&guest, 0),
        simulation.guest.feature_frac_bits,
    );
    for ((party, table), outcome) in all[1..].iter().zip(&simulation.hosts) {
        for column in 0..table.features() {
            let x = quantise(
                &standardised_column(table, column),
                outcome.feature_frac_bits,
            );
            let label: i64 = x
                .iter()
                .zip(labels)
                .map(|(x, y)| x * (1 - 2 * *y as i64))
                .sum();
            let gram: i64 = x.iter().zip(&guest_first).map(|(a, b)| a * b).sum();
            for value in [label, gram] {
                secrets.push((party, value.to_le_bytes().to_vec()));
                secrets.push((party, i128::from(value).to_le_bytes().to_vec()));
            }
        }
    }
    let parts =
        std::iter::once(&simulation.guest.model).chain(simulation.hosts.iter().map(|h| &h.model));
    for (part, (party, _)) in parts.zip(&all) {
        let weights = part.features.iter().map(|f| f.weight).chain(part.intercept);
        for w in weights {
            let fixed = (w * 2f64.powi(20)).round() as i128;
            secrets.push((
                party,
                (fixed as u128 & ((1 << 108) - 1)).to_le_bytes().to_vec(),
            ));
            secrets.push((party, w.to_le_bytes().to_vec()));
        }
    }
    assert!(secrets.len() > 1000);
    // The search finds a planted secret (so the audit below can fail).
    let mut planted = vec![7u8; 100];
    planted.extend_from_slice(&secrets[secrets.len() / 2].1);
    assert_eq!(leaks(&planted, &secrets).len(), 1);
    for record in &simulation.wire {
        let found = leaks(&record.bytes, &secrets);
        assert!(
            found.is_empty(),
            "{} → {} ({}) carries plaintext of {found:?}",
            record.from,
            record.to,
            record.kind
        );
    }

    // Secure aggregation of the one reveal: each host's final scores are masked (no value
    // equals the host's own fixed-point partial score) yet their sum is the sum of the partial
    // scores (no validation split: the reveal covers the training rows, here all rows).
    let mut sums = vec![0u64; guest.rows()];
    for (k, (_, table)) in all[1..].iter().enumerate() {
        let record = simulation
            .wire
            .iter()
            .find(|r| r.kind == "final_scores" && r.from == host_names[k])
            .unwrap();
        let Message::FinalScores { masked } = Message::from_bytes(&record.bytes).unwrap() else {
            panic!()
        };
        assert_eq!(masked.len(), guest.rows());
        let z = simulation.hosts[k].model.partial_scores(table).unwrap();
        for (i, z) in z.iter().enumerate() {
            let plain = (z * 2f64.powi(32)).round() as i64 as u64;
            assert_ne!(masked[i], plain, "host {k} row {i} score is in the clear");
        }
        for (s, m) in sums.iter_mut().zip(&masked) {
            *s = s.wrapping_add(*m);
        }
    }
    for (i, s) in sums.iter().enumerate() {
        let expected: f64 = all[1..]
            .iter()
            .zip(&simulation.hosts)
            .map(|((_, t), o)| o.model.partial_scores(t).unwrap()[i])
            .sum();
        let got = *s as i64 as f64 / 2f64.powi(32);
        assert!(
            (got - expected).abs() < 1e-6,
            "row {i}: {got} vs {expected}"
        );
    }
}
