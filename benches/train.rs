//! Secret-shared training speed and traffic, against the same iteration in plaintext (the
//! floor).
//!
//! `cargo bench --bench train` runs jobs (guest and one host) in the in-process simulator,
//! every message encoded and decoded: the credit data (30000 rows, guest 13 + host 10
//! features), the same on 10 quantile bins per column, and synthetic data of 10^5 rows × (30
//! guest + 300 host) features. It prints seconds per step (a full-batch epoch: products,
//! hand-overs, the loss round and the verdict; the mean between the epoch reports after the
//! first), the set-up (keys, encrypted columns, Gram and coupling products, and steps 0 and 1:
//! the time to the first report), the plaintext floor (`train_plain_vertical`, the same
//! iteration in f64), and bytes sent per sample: per step, once (set-up), at the end, and
//! everything over the job. `cargo bench --bench train -- credit` runs only the credit cases.

use fedlearn::ndarray::{s, Array2};
use std::time::Instant;

use fedlearn::{
    simulate, train_plain_vertical, Binning, ColumnPrep, Event, GuestJob, HostJob, Message,
    Missing, Prep, Reading, Table, TrainConfig,
};

const SETUP_KINDS: [&str; 8] = [
    "propose",
    "keys",
    "digest",
    "packing",
    "shared_columns",
    "shared_gram",
    "coupling_vectors",
    "coupling_releases",
];
const END_KINDS: [&str; 2] = ["weight_shares", "final_scores"];

fn load(name: &str, label: Option<&str>) -> Table {
    let path = format!("{}/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Table::parse_csv(&path, &text, "id", label, Missing::Reject, &|_| {
        Reading::Number
    })
    .expect("table")
}

/// Deterministic pseudo-random features and labels from a logistic model over all columns.
fn synthetic(rows: usize, guest_features: usize, host_features: usize) -> (Table, Table) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    let width = guest_features + host_features;
    let weights: Vec<f64> = (0..width).map(|_| next()).collect();
    let values: Vec<f64> = (0..rows * width).map(|_| next()).collect();
    let labels: Vec<f64> = values
        .chunks(width)
        .map(|row| {
            let z: f64 = row.iter().zip(&weights).map(|(x, w)| x * w).sum::<f64>() * 0.5;
            f64::from(next() * 0.5 + 0.5 < 1.0 / (1.0 + (-z).exp()))
        })
        .collect();
    let ids: Vec<String> = (0..rows).map(|i| format!("id{i}")).collect();
    let values = Array2::from_shape_vec((rows, width), values).expect("rows × width");
    let split = |range: std::ops::Range<usize>, prefix: &str| -> (Vec<String>, Array2<f64>) {
        let names = range.clone().map(|j| format!("{prefix}{j}")).collect();
        (names, values.slice(s![.., range]).to_owned())
    };
    let (guest_names, guest_values) = split(0..guest_features, "g");
    let (host_names, host_values) = split(guest_features..width, "h");
    (
        Table::new(
            ids.clone(),
            guest_names,
            guest_values,
            Some(labels),
            Missing::Reject,
        )
        .expect("guest table"),
        Table::new(ids, host_names, host_values, None, Missing::Reject).expect("host table"),
    )
}

fn case(name: &str, guest: Table, host: Table, config: TrainConfig, prep: Prep) {
    let rows = guest.rows();
    let start = Instant::now();
    let plain = train_plain_vertical(&guest, &[&host], &[prep.clone(), prep.clone()], &config)
        .expect("plaintext");
    let plain_step = start.elapsed().as_secs_f64() / config.max_epochs as f64;
    let job = GuestJob {
        party: "bank".into(),
        model_id: "bench".into(),
        table: guest,
        hosts: vec!["tax".into()],
        config: config.clone(),
        prep: prep.clone(),
        resume: None,
    };
    let hosts = vec![HostJob {
        party: "tax".into(),
        guest: "bank".into(),
        table: host,
        prep,
        checkpoints: Vec::new(),
    }];
    let mut marks = vec![Instant::now()];
    let simulation = simulate(job, hosts, false, &mut |event| {
        if let Event::Epoch(_) = event {
            marks.push(Instant::now());
        }
    })
    .expect("simulation");
    let total = marks[0].elapsed().as_secs_f64();
    let epochs = marks.len() - 1;
    let steady: Vec<f64> = marks[1..]
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    let first = (marks[1] - marks[0]).as_secs_f64();
    let step = steady.iter().sum::<f64>() / steady.len().max(1) as f64;
    let by_kind = simulation.bytes_by_kind();
    let sum = |kinds: &[&str]| -> usize { kinds.iter().filter_map(|k| by_kind.get(k)).sum() };
    // Every kind sent is counted in one of the three parts.
    for kind in by_kind.keys() {
        assert!(
            [&SETUP_KINDS[..], &Message::STEP_KINDS, &END_KINDS]
                .iter()
                .any(|part| part.contains(kind)),
            "{kind} is in no part of the figures"
        );
    }
    // Steps 0 … epochs: one more than the epochs reported.
    let steps = epochs + 1;
    let per_sample = |bytes: usize| bytes as f64 / rows as f64;
    println!(
        "{name}: {step:.3} s/step, set-up and steps 0–1 {first:.2} s, whole job {total:.2} s; \
         plaintext floor {plain_step:.4} s/step"
    );
    println!(
        "    B per sample: {:.1} per step, {:.1} once (set-up), {:.1} at the end, {:.1} per step all included over {steps} steps",
        per_sample(sum(&Message::STEP_KINDS)) / steps as f64,
        per_sample(sum(&SETUP_KINDS)),
        per_sample(sum(&END_KINDS)),
        per_sample(by_kind.values().sum()) / steps as f64,
    );
    println!(
        "    final model AUC {:.4} on the revealed rows (plaintext iteration {:.4}); Taylor loss {:.4} → {:.4}",
        simulation.guest.evaluation.metrics.auc,
        plain.history.last().expect("a step").auc,
        simulation.guest.history[0].train_loss,
        simulation.guest.history[epochs - 1].train_loss,
    );
    let mut kinds: Vec<String> = by_kind
        .iter()
        .map(|(k, b)| format!("{k} {:.1} MB", *b as f64 / 1e6))
        .collect();
    kinds.sort();
    println!("    bytes over {epochs} epochs: {}", kinds.join(", "));
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| filter.as_ref().is_none_or(|f| name.contains(f.as_str()));
    let credit = || {
        (
            load("default_credit_hetero_guest.csv", Some("y")),
            load("default_credit_hetero_host.csv", None),
        )
    };
    let config = |epochs| TrainConfig {
        max_epochs: epochs,
        seed: 1,
        // Every epoch runs: the figures are per step.
        early_stopping: None,
        ..TrainConfig::default()
    };
    let binned = Prep {
        default: ColumnPrep {
            bins: Some(Binning::Quantile { count: 10 }),
            ..ColumnPrep::default()
        },
        ..Prep::default()
    };
    if wanted("credit") {
        let (g, h) = credit();
        case("credit", g, h, config(10), Prep::default());
    }
    if wanted("credit 10 bins") {
        let (g, h) = credit();
        case("credit 10 bins", g, h, config(10), binned);
    }
    if wanted("1e5 x 330") {
        let (g, h) = synthetic(100_000, 30, 300);
        case("1e5 x 330", g, h, config(4), Prep::default());
    }
}
