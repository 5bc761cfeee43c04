//! Federated training speed and traffic, against the plaintext update rule (the floor).
//!
//! `cargo bench --bench train` runs, in the in-process simulator (every message encoded and
//! decoded), the credit data (30000 rows, guest 13 + host 10 features) with the full batch and
//! with batches of 4096, and synthetic data of 10^5 rows × (30 guest + 300 host) features.
//! It prints seconds per epoch (mean over the epochs after the first; the set-up — keys and
//! every party's encrypted columns — is timed apart), the same for `train_plain_vertical`
//! (same rule in f64 on the joined data), their ratio, and bytes sent per sample: per
//! iteration (the products), once per job (the set-up), per epoch (the aggregate loss), and
//! everything amortised over the iterations of the run. `cargo bench --bench train -- credit`
//! runs only the credit cases.

use fedlearn::ndarray::{s, Array2};
use std::time::Instant;

use fedlearn::internal::{simulate_shared, SharedParty};
use fedlearn::{
    simulate, train_plain_vertical, Binning, ColumnPrep, Event, GuestJob, HostJob, Missing, Prep,
    Reading, Table, TrainConfig,
};

const ITERATION_KINDS: [&str; 1] = ["product"];
const SETUP_KINDS: [&str; 3] = ["propose", "keys", "columns"];
const EPOCH_KINDS: [&str; 4] = ["loss_vector", "loss_product", "loss_report", "epoch_end"];

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
    let batches = config.batch_size.map_or(1, |b| (rows / b).max(1));
    let start = Instant::now();
    let plain = train_plain_vertical(&guest, &[&host], &[prep.clone(), prep.clone()], &config)
        .expect("plaintext");
    let plain_epoch = start.elapsed().as_secs_f64() / config.max_epochs as f64;
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
    let epochs = marks.len() - 1;
    let steady: Vec<f64> = marks[1..]
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    let first = (marks[1] - marks[0]).as_secs_f64();
    let epoch = if steady.is_empty() {
        first
    } else {
        steady.iter().sum::<f64>() / steady.len() as f64
    };
    let by_kind = simulation.bytes_by_kind();
    let sum = |kinds: &[&str]| -> usize { kinds.iter().filter_map(|k| by_kind.get(k)).sum() };
    let iteration_bytes = sum(&ITERATION_KINDS);
    let setup_bytes = sum(&SETUP_KINDS);
    let epoch_bytes = sum(&EPOCH_KINDS);
    let total_bytes: usize = by_kind.values().sum();
    let iterations = epochs * batches;
    let per_sample = |bytes: usize, times: usize| bytes as f64 / (times * rows) as f64;
    println!(
        "{name}: {epoch:.3} s/epoch (first epoch {first:.3} s), plaintext floor {plain_epoch:.4} s/epoch, ratio {:.1}×",
        epoch / plain_epoch
    );
    println!(
        "    B per sample: {:.1} per iteration (products), {:.1} once (set-up), {:.1} per epoch (loss), {:.1} per iteration all included over {iterations} iterations",
        per_sample(iteration_bytes, iterations) * batches as f64,
        per_sample(setup_bytes, 1),
        per_sample(epoch_bytes, epochs),
        per_sample(total_bytes, iterations) * batches as f64,
    );
    println!(
        "    final model AUC {:.4} on the revealed rows (plaintext rule {:.4}); share bits {}",
        simulation.guest.evaluation.metrics.auc,
        plain.history.last().expect("an epoch").auc,
        simulation.guest.share_frac_bits
    );
    let mut kinds: Vec<String> = by_kind
        .iter()
        .map(|(k, b)| format!("{k} {:.1} MB", *b as f64 / 1e6))
        .collect();
    kinds.sort();
    println!("    bytes over {epochs} epochs: {}", kinds.join(", "));
}

/// The secret-shared protocol's core (weights and gradients in shares, Gram form, block
/// Jacobi) on the same books, in one process: set-up, seconds and bytes per step (a step is
/// a full-batch epoch), the Taylor losses and the final model's AUC on the validation rows.
fn shared_case(name: &str, guest: Table, host: Table, config: TrainConfig, prep: Prep) {
    let parties = [
        SharedParty {
            name: "bank",
            table: &guest,
            prep: &prep,
        },
        SharedParty {
            name: "tax",
            table: &host,
            prep: &prep,
        },
    ];
    let run = simulate_shared(&parties, &config).expect("shared simulation");
    let steps = run.step_seconds.len();
    let steady = &run.step_seconds[1.min(steps - 1)..];
    let step = steady.iter().sum::<f64>() / steady.len() as f64;
    let bytes = run.step_bytes.iter().sum::<usize>() as f64 / (steps * run.rows) as f64;
    let first = run.losses.first().expect("a step");
    let last = run.losses.last().expect("a step");
    println!(
        "{name}, secret-shared: {step:.3} s/step (mean after the first), set-up {:.2} s",
        run.setup_seconds
    );
    println!(
        "    B per sample: {bytes:.1} per step, {:.1} once (set-up)",
        run.setup_bytes as f64 / run.rows as f64
    );
    println!(
        "    Taylor loss (train, validation) {first:.4?} → {last:.4?} over {steps} steps; validation AUC {:.4}",
        run.auc
    );
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
    let config = |epochs, batch_size| TrainConfig {
        max_epochs: epochs,
        batch_size,
        seed: 1,
        // Every epoch runs: the figures are per epoch.
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
    if wanted("credit full batch") {
        let (g, h) = credit();
        case("credit full batch", g, h, config(6, None), Prep::default());
    }
    if wanted("credit secret-shared") {
        let (g, h) = credit();
        shared_case(
            "credit secret-shared",
            g,
            h,
            config(10, None),
            Prep::default(),
        );
    }
    if wanted("credit 10 bins secret-shared") {
        let (g, h) = credit();
        shared_case(
            "credit 10 bins secret-shared",
            g,
            h,
            config(10, None),
            binned.clone(),
        );
    }
    if wanted("1e5 x 330 secret-shared") {
        let (g, h) = synthetic(100_000, 30, 300);
        shared_case(
            "1e5 x 330 secret-shared",
            g,
            h,
            config(4, None),
            Prep::default(),
        );
    }
    if wanted("credit 10 bins full batch") {
        let (g, h) = credit();
        case("credit 10 bins full batch", g, h, config(6, None), binned);
    }
    if wanted("credit batch 4096") {
        let (g, h) = credit();
        case(
            "credit batch 4096",
            g,
            h,
            config(4, Some(4096)),
            Prep::default(),
        );
    }
    if wanted("1e5 x 330 full batch") {
        let (g, h) = synthetic(100_000, 30, 300);
        case(
            "1e5 x 330 full batch",
            g,
            h,
            config(3, None),
            Prep::default(),
        );
    }
    if wanted("1e5 x 330 batch 4096") {
        let (g, h) = synthetic(100_000, 30, 300);
        case(
            "1e5 x 330 batch 4096",
            g,
            h,
            config(2, Some(4096)),
            Prep::default(),
        );
    }
}
