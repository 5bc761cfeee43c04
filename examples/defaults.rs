//! How training's defaults were chosen: the federated update rule (first-order residual,
//! secret-shared block Jacobi: the number of steps and the L2 penalty are what a modeller
//! chooses), computed in the clear by `fedlearn::train_plain_vertical`, on several books — the two FATE data sets and synthetic
//! ones with rare defaults and heavy tails — raw and binned, each split 70/30 by class. Each
//! setting's test AUC is compared with a plaintext logistic regression fitted to convergence on
//! the same columns, and its calibrated test log-loss with that of the base rate.
//!
//! ```text
//! cargo run --release --example defaults
//! ```
//!
//! With `selection`, the defaults of a training job's `[select]` instead: on the same books,
//! binning statistics of the training rows (the HE protocol, in process), then each merge
//! rule and IV threshold, trained with the training defaults; test AUC and log-loss against
//! training on every bin.
//!
//! ```text
//! cargo run --release --example defaults -- selection
//! ```

use fedlearn::ndarray::{self, s, Array2, Axis};
use fedlearn::{
    answer_binning, evaluate, train_plain_vertical, train_reference, Binning, BinningGuest,
    BinningLimits, Calibration, ColumnPrep, Merge, Missing, Prep, Reading, ReferenceConfig,
    Residual, Selection, Table, TrainConfig,
};

struct Book {
    name: String,
    guest: Table,
    hosts: Vec<Table>,
    prep: Prep,
}

fn load(name: &str, label: Option<&str>) -> Table {
    let path = format!("{}/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Table::parse_csv(&path, &text, "id", label, Missing::Reject, &|_| {
        Reading::Number
    })
    .expect("table")
}

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// `rows` enterprises, `columns` heavy-tailed columns (log-normal amounts, Student-t-like
/// ratios, counts), split between a guest and a host; the log-odds of default are monotone
/// but non-linear in them, the intercept set for a default rate near `rate`.
fn synthetic(rows: usize, columns: usize, rate: f64, seed: u64) -> (Table, Table) {
    let mut rng = Rng(seed);
    let mut values = vec![0.0; rows * columns];
    let mut logit = vec![0.0; rows];
    for r in 0..rows {
        let firm = rng.normal();
        for c in 0..columns {
            let shared = 0.5 * firm + rng.normal();
            let (x, effect) = match c % 3 {
                0 => {
                    let amount = (2.0 + 1.5 * shared).exp();
                    (amount, -0.4 * (1.0 + amount).ln())
                }
                1 => {
                    let t = shared / (0.1 + rng.uniform()).sqrt();
                    (t, 0.3 * t.clamp(-3.0, 3.0))
                }
                _ => {
                    let count = (shared.max(0.0) * 3.0).floor();
                    (count, if count >= 3.0 { 0.6 } else { 0.0 })
                }
            };
            values[r * columns + c] = x;
            if c < 8 {
                logit[r] += effect;
            }
        }
    }
    let mut sorted = logit.clone();
    sorted.sort_by(f64::total_cmp);
    // Shift so that about `rate` of the rows default.
    let shift = -sorted[((1.0 - rate) * rows as f64) as usize] - 1.0;
    let labels: Vec<f64> = logit
        .iter()
        .map(|z| f64::from(rng.uniform() < 1.0 / (1.0 + (-(z + shift) * 2.0).exp())))
        .collect();
    let ids: Vec<String> = (0..rows).map(|r| r.to_string()).collect();
    let half = columns / 2;
    let values = Array2::from_shape_vec((rows, columns), values).expect("rows × columns");
    let pick = |from: usize, to: usize| values.slice(s![.., from..to]).to_owned();
    let names = |from: usize, to: usize| (from..to).map(|c| format!("x{c}")).collect();
    let guest = Table::new(
        ids.clone(),
        names(0, half),
        pick(0, half),
        Some(labels),
        Missing::Reject,
    )
    .expect("guest");
    let host = Table::new(
        ids,
        names(half, columns),
        pick(half, columns),
        None,
        Missing::Reject,
    )
    .expect("host");
    (guest, host)
}

/// Every non-default and every k-th default, so that `rate` of the rows default.
fn subsample(guest: &Table, host: &Table, rate: f64) -> (Table, Table) {
    let labels = guest.labels().expect("labels");
    let negatives = labels.iter().filter(|&&y| y < 0.5).count();
    let positives = labels.len() - negatives;
    let wanted = (negatives as f64 * rate / (1.0 - rate)).round() as usize;
    let mut seen = 0;
    let rows: Vec<usize> = (0..labels.len())
        .filter(|&r| {
            labels[r] < 0.5 || {
                seen += 1;
                seen * wanted / positives != (seen - 1) * wanted / positives
            }
        })
        .collect();
    (
        guest.select_rows(&rows).expect("rows"),
        host.select_rows(&rows).expect("rows"),
    )
}

fn stratified(labels: &[f64]) -> (Vec<usize>, Vec<usize>) {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for class in [0.0, 1.0] {
        let mut rows: Vec<usize> = (0..labels.len()).filter(|&r| labels[r] == class).collect();
        rows.sort_by_key(|&r| (r as u64 ^ 7).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let cut = rows.len() * 7 / 10;
        train.extend_from_slice(&rows[..cut]);
        test.extend_from_slice(&rows[cut..]);
    }
    (train, test)
}

fn prep(bins: Option<usize>, winsorise: bool) -> Prep {
    Prep {
        default: ColumnPrep {
            winsorise: winsorise.then_some([0.01, 0.99]),
            bins: bins.map(|count| Binning::Quantile { count }),
            ..ColumnPrep::default()
        },
        ..Prep::default()
    }
}

fn log_loss(p: &[f64], y: &[f64]) -> f64 {
    p.iter()
        .zip(y)
        .map(|(&p, &y)| {
            let p = p.clamp(1e-12, 1.0 - 1e-12);
            -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
        })
        .sum::<f64>()
        / y.len() as f64
}

#[derive(Clone)]
struct Outcome {
    auc: f64,
    loss: f64,
}

/// Trains with `config` on the training rows, calibrates on them (as the guest does on its
/// reveal) and scores the test rows.
fn federated_rule(
    book: &Book,
    (train, test): (&[usize], &[usize]),
    config: &TrainConfig,
    preps: &[Prep],
) -> Outcome {
    let select = |t: &Table, rows: &[usize]| t.select_rows(rows).expect("rows");
    let hosts: Vec<Table> = book.hosts.iter().map(|h| select(h, train)).collect();
    let refs: Vec<&Table> = hosts.iter().collect();
    let run =
        train_plain_vertical(&select(&book.guest, train), &refs, preps, config).expect("training");
    let scores = |rows: &[usize]| -> Vec<f64> {
        let mut z = run
            .guest
            .partial_scores(&select(&book.guest, rows))
            .expect("scores");
        for (part, host) in run.hosts.iter().zip(&book.hosts) {
            for (z, s) in z
                .iter_mut()
                .zip(part.partial_scores(&select(host, rows)).expect("scores"))
            {
                *z += s;
            }
        }
        z
    };
    let labels = book.guest.labels().expect("labels");
    let (train_labels, test_labels): (Vec<f64>, Vec<f64>) = (
        train.iter().map(|&r| labels[r]).collect(),
        test.iter().map(|&r| labels[r]).collect(),
    );
    let calibration = Calibration::fit(&scores(train), &train_labels).expect("calibration");
    let p: Vec<f64> = scores(test)
        .iter()
        .map(|&z| calibration.probability(z))
        .collect();
    Outcome {
        auc: evaluate(&p, &test_labels).expect("metrics").auc,
        loss: log_loss(&p, &test_labels),
    }
}

/// A logistic regression fitted to convergence on the same prepared columns.
fn reference(book: &Book, train: &[usize], test: &[usize], residual: Residual) -> Outcome {
    let designs: Vec<Table> = std::iter::once(&book.guest)
        .chain(&book.hosts)
        .map(|t| book.prep.design("party", t, train).expect("design"))
        .collect();
    let views: Vec<_> = designs.iter().map(Table::values).collect();
    let all = ndarray::concatenate(Axis(1), &views).expect("the same rows");
    let joined = |rows: &[usize]| all.select(Axis(0), rows);
    // Standardised on the training rows, as the parties do.
    let raw_train = joined(train);
    let stats: Vec<(f64, f64)> = raw_train
        .columns()
        .into_iter()
        .map(|column| {
            let mean = column.iter().sum::<f64>() / column.len() as f64;
            let var = column.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / column.len() as f64;
            (mean, var.sqrt().max(1e-12))
        })
        .collect();
    let standardise = |mut rows: Array2<f64>| -> Array2<f64> {
        for mut row in rows.rows_mut() {
            for (x, (m, s)) in row.iter_mut().zip(&stats) {
                *x = (*x - m) / s;
            }
        }
        rows
    };
    let labels = book.guest.labels().expect("labels");
    let train_labels: Vec<f64> = train.iter().map(|&r| labels[r]).collect();
    let test_labels: Vec<f64> = test.iter().map(|&r| labels[r]).collect();
    let model = train_reference(
        standardise(raw_train).view(),
        &train_labels,
        &ReferenceConfig {
            epochs: 600,
            learning_rate: 0.02,
            l2: 0.0,
            residual,
        },
    )
    .expect("reference");
    let z = model.scores(standardise(joined(test)).view());
    let calibration = Calibration::fit(
        &model.scores(standardise(joined(train)).view()),
        &train_labels,
    )
    .expect("fit");
    let p: Vec<f64> = z.iter().map(|&z| calibration.probability(z)).collect();
    Outcome {
        auc: evaluate(&p, &test_labels).expect("metrics").auc,
        loss: log_loss(&p, &test_labels),
    }
}

fn main() {
    let mut books = Vec::new();
    for (data, hosts) in [("default_credit", 1usize), ("breast", 1)] {
        let guest = load(&format!("{data}_hetero_guest.csv"), Some("y"));
        let host = load(&format!("{data}_hetero_host.csv"), None);
        for (suffix, p) in [
            ("raw", prep(None, false)),
            ("10 bins", prep(Some(10), false)),
        ] {
            if data == "breast" && suffix != "raw" {
                continue;
            }
            books.push(Book {
                name: format!("{data} {suffix}"),
                guest: guest.clone(),
                hosts: vec![host.clone(); hosts],
                prep: p,
            });
        }
        if data == "default_credit" {
            let (g, h) = subsample(&guest, &host, 0.07);
            books.push(Book {
                name: "credit 7% defaults, 10 bins".into(),
                guest: g,
                hosts: vec![h],
                prep: prep(Some(10), false),
            });
        }
    }
    for (rate, seed) in [(0.03, 1u64), (0.07, 2)] {
        let (guest, host) = synthetic(30_000, 20, rate, seed);
        for (suffix, p) in [
            ("winsorised", prep(None, true)),
            ("10 bins", prep(Some(10), false)),
        ] {
            books.push(Book {
                name: format!("synthetic {:.0}% {suffix}", rate * 100.0),
                guest: guest.clone(),
                hosts: vec![host.clone()],
                prep: p,
            });
        }
    }
    let mut settings = Vec::new();
    for epochs in [5, 10, 20, 40] {
        for l2 in [0.0, 1e-3, 1e-2] {
            settings.push(TrainConfig {
                max_epochs: epochs,
                l2,
                seed: 5,
                ..TrainConfig::default()
            });
        }
    }
    let splits: Vec<(Vec<usize>, Vec<usize>)> = books
        .iter()
        .map(|b| stratified(b.guest.labels().expect("labels")))
        .collect();
    if std::env::args().any(|a| a == "selection") {
        selection(&books, &splits);
        return;
    }
    let references: Vec<Outcome> = books
        .iter()
        .zip(&splits)
        .map(|(b, (train, test))| reference(b, train, test, Residual::Sigmoid))
        .collect();
    let taylor: Vec<Outcome> = books
        .iter()
        .zip(&splits)
        .map(|(b, (train, test))| reference(b, train, test, Residual::Taylor))
        .collect();
    println!("reference (LR to convergence): test AUC / log-loss; the Taylor residual's optimum");
    for ((b, r), t) in books.iter().zip(&references).zip(&taylor) {
        println!(
            "  {:<32} {:.4} / {:.4}   {:.4} / {:.4}",
            b.name, r.auc, r.loss, t.auc, t.loss
        );
    }
    println!("\nsetting: worst and mean AUC gap to the reference, worst log-loss excess");
    let mut rows = Vec::new();
    for config in &settings {
        let (mut worst, mut sum, mut loss) = (0.0f64, 0.0, 0.0f64);
        let mut gaps = Vec::new();
        for ((book, (train, test)), r) in books.iter().zip(&splits).zip(&references) {
            let preps = vec![book.prep.clone(); book.hosts.len() + 1];
            let o = federated_rule(book, (train, test), config, &preps);
            worst = worst.max(r.auc - o.auc);
            sum += r.auc - o.auc;
            loss = loss.max(o.loss - r.loss);
            gaps.push(r.auc - o.auc);
        }
        rows.push((worst, sum / books.len() as f64, loss, config.clone(), gaps));
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (worst, mean, loss, c, gaps) in rows {
        let gaps: Vec<String> = gaps.iter().map(|g| format!("{g:+.3}")).collect();
        println!(
            "  steps {:>3} l2 {:<6} worst {:+.4} mean {:+.4} loss {:+.4} [{}]",
            c.max_epochs,
            c.l2,
            worst,
            mean,
            loss,
            gaps.join(" ")
        );
    }
}

/// Every merge rule and IV threshold of `[select]` on every book, against training on every
/// bin of the binning job.
fn selection(books: &[Book], splits: &[(Vec<usize>, Vec<usize>)]) {
    let limits = BinningLimits {
        min_rows: 100,
        min_share: 0.05,
    };
    let config = TrainConfig::default();
    let mut rules = vec![("every bin".to_string(), Merge::None, 0.0)];
    for merge in [Merge::None, Merge::Monotone, Merge::Chi] {
        for min_iv in [0.02, 0.05] {
            rules.push((format!("{merge:?} min_iv {min_iv}"), merge, min_iv));
        }
    }
    rules.push(("Monotone min_iv 0".into(), Merge::Monotone, 0.0));
    rules.push(("Chi min_iv 0".into(), Merge::Chi, 0.0));
    // Per rule: per book (AUC, log-loss, columns) or None when a party keeps no column.
    let mut results: Vec<Vec<Option<(Outcome, usize)>>> = vec![Vec::new(); rules.len()];
    for (book, (train, test)) in books.iter().zip(splits) {
        let select = |t: &Table| t.select_rows(train).expect("rows");
        let hosts: Vec<Table> = book.hosts.iter().map(select).collect();
        let names: Vec<String> = (1..=hosts.len()).map(|k| format!("host{k}")).collect();
        let (mut binning, request) =
            BinningGuest::new("bank", &select(&book.guest), &book.prep, &names).expect("guest");
        let mut kept = vec![binning.kept_bins().to_vec()];
        for (name, host) in names.iter().zip(&hosts) {
            let (answer, _, host_kept) = answer_binning(
                name,
                "bank",
                host,
                &book.prep,
                &limits,
                false,
                request.clone(),
            )
            .expect("host");
            kept.push(host_kept);
            binning.receive(name, answer).expect("counts");
        }
        let report = binning.finish().expect("report");
        let parties: Vec<String> = std::iter::once("bank".to_string())
            .chain(names.iter().cloned())
            .collect();
        for ((_, merge, min_iv), results) in rules.iter().zip(&mut results) {
            let selection = Selection {
                binning_job: "b".into(),
                merge: *merge,
                min_iv: *min_iv,
                top_k: None,
                columns: Default::default(),
            };
            let Ok(chosen) = selection.choose(&report, &parties) else {
                results.push(None);
                continue;
            };
            let preps: Vec<Prep> = parties
                .iter()
                .zip(&kept)
                .map(|(party, kept)| {
                    let mut prep = selection.prep(party, &chosen);
                    prep.keep(kept.clone()).expect("kept bins");
                    prep
                })
                .collect();
            let outcome = federated_rule(book, (train, test), &config, &preps);
            results.push(Some((outcome, chosen.len())));
        }
    }
    println!(
        "[select] rules: test AUC / log-loss (columns) per book; mean AUC change against every bin"
    );
    for book in books {
        println!("  {}", book.name);
    }
    let every_bin: Vec<Option<f64>> = results[0]
        .iter()
        .map(|r| r.as_ref().map(|(o, _)| o.auc))
        .collect();
    for ((name, _, _), results) in rules.iter().zip(&results) {
        let cells: Vec<String> = results
            .iter()
            .map(|r| match r {
                Some((o, n)) => format!("{:.4}/{:.4}({n})", o.auc, o.loss),
                None => "-".into(),
            })
            .collect();
        let changes: Vec<f64> = results
            .iter()
            .zip(&every_bin)
            .filter_map(|(r, base)| Some(r.as_ref()?.0.auc - (*base)?))
            .collect();
        println!(
            "  {name:<22} mean {:+.4} worst {:+.4}  {}",
            changes.iter().sum::<f64>() / changes.len().max(1) as f64,
            changes.iter().copied().fold(f64::INFINITY, f64::min),
            cells.join(" ")
        );
    }
}
