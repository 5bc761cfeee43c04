//! Models on bins: every party cuts its own columns into 10 training-quantile bins and trains
//! on their indicators. On the credit data with a fixed 70/30 stratified split, the federated
//! model's test AUC must reach 0.76 and come within 0.01 of a plaintext logistic regression
//! fitted to convergence on the same bins of the joined table.

mod common;

use common::{jobs, parties};
use fedlearn::*;

/// 70% of each class for training, by a fixed shuffle; the rest for testing.
fn stratified_split(labels: &[f64], seed: u64) -> (Vec<usize>, Vec<usize>) {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for class in [0.0, 1.0] {
        let mut rows: Vec<usize> = (0..labels.len()).filter(|&r| labels[r] == class).collect();
        // A multiplicative hash orders the rows; the order is fixed by `seed`.
        rows.sort_by_key(|&r| (r as u64 ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let cut = rows.len() * 7 / 10;
        train.extend_from_slice(&rows[..cut]);
        test.extend_from_slice(&rows[cut..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

fn quantile_bins(count: usize) -> Prep {
    Prep {
        default: ColumnPrep {
            bins: Some(Binning::Quantile { count }),
            ..ColumnPrep::default()
        },
        ..Prep::default()
    }
}

fn auc(scores: &[f64], labels: &[f64]) -> f64 {
    let probabilities: Vec<f64> = scores.iter().map(|&z| sigmoid(z)).collect();
    evaluate(&probabilities, labels).unwrap().auc
}

/// The AUC of the joint scores (every party's part on its own columns) of rows `test`.
fn joint_test_auc(
    run: &Simulation,
    (guest, hosts): (&Table, &[Table]),
    test: &[usize],
    labels: &[f64],
) -> f64 {
    let select = |table: &Table| table.select_rows(test).unwrap();
    let mut z = run.guest.model.partial_scores(&select(guest)).unwrap();
    for (part, host) in run.hosts.iter().zip(hosts) {
        for (z, s) in z
            .iter_mut()
            .zip(part.model.partial_scores(&select(host)).unwrap())
        {
            *z += s;
        }
    }
    auc(&z, labels)
}

#[test]
fn federated_model_on_bins_matches_plaintext_logistic_regression_on_the_same_bins() {
    let (guest, hosts) = parties("default_credit", 2);
    let labels = guest.labels().unwrap().to_vec();
    let (train, test) = stratified_split(&labels, 7);
    let prep = quantile_bins(10);
    let select = |table: &Table, rows: &[usize]| table.select_rows(rows).unwrap();

    // The defaults: they must be good enough as they come.
    let config = TrainConfig {
        seed: 11,
        ..TrainConfig::default()
    };
    let (mut guest_job, mut host_jobs) = jobs(
        select(&guest, &train),
        hosts.iter().map(|h| select(h, &train)).collect(),
        &config,
    );
    guest_job.prep = prep.clone();
    for job in &mut host_jobs {
        job.prep = prep.clone();
    }
    let run = simulate(guest_job, host_jobs, false, &mut |_| {}).unwrap();
    assert_eq!(run.guest.convergence, Convergence::Converged);
    assert!(run.guest.model.features.is_empty());
    assert_eq!(run.guest.model.binned.len(), guest.features());
    let test_labels: Vec<f64> = test.iter().map(|&r| labels[r]).collect();
    let federated = joint_test_auc(&run, (&guest, &hosts), &test, &test_labels);

    // The same bins (fitted on the training rows) on the joined table, in the clear.
    let designs: Vec<Table> = std::iter::once(&guest)
        .chain(&hosts)
        .map(|t| prep.design("party", t, &train).unwrap())
        .collect();
    let views: Vec<_> = designs.iter().map(Table::values).collect();
    let all = fedlearn::ndarray::concatenate(fedlearn::ndarray::Axis(1), &views).unwrap();
    let joined = |rows: &[usize]| all.select(fedlearn::ndarray::Axis(0), rows);
    let train_labels: Vec<f64> = train.iter().map(|&r| labels[r]).collect();
    let plain = train_reference(
        joined(&train).view(),
        &train_labels,
        &ReferenceConfig {
            epochs: 400,
            learning_rate: 0.05,
            l2: 0.0,
            residual: Residual::Sigmoid,
        },
    )
    .unwrap();
    let plaintext = auc(&plain.scores(joined(&test).view()), &test_labels);
    eprintln!("test AUC: federated {federated:.4}, plaintext on the same bins {plaintext:.4}");
    assert!(federated >= 0.76, "federated test AUC {federated:.4}");
    assert!(
        (federated - plaintext).abs() <= 0.01,
        "federated {federated:.4} vs plaintext {plaintext:.4}"
    );
}

/// Plaintext (rows, events) of every non-empty bin of every column of `table`, in order.
fn plaintext_counts(table: &Table, prep: &Prep, labels: &[f64]) -> Vec<Vec<(u64, u64)>> {
    let all: Vec<usize> = (0..table.rows()).collect();
    let design = prep.design("party", table, &all).unwrap();
    let mut columns: Vec<Vec<(u64, u64)>> = Vec::new();
    let mut last = None;
    for (c, name) in design.feature_names().iter().enumerate() {
        let column = name.split('=').next().unwrap().to_owned();
        if last.as_ref() != Some(&column) {
            columns.push(Vec::new());
            last = Some(column);
        }
        let (mut n, mut e) = (0, 0);
        for (r, &y) in labels.iter().enumerate() {
            if design.values()[[r, c]] == 1.0 {
                n += 1;
                e += u64::from(y == 1.0);
            }
        }
        columns.last_mut().unwrap().push((n, e));
    }
    columns
}

fn information_value(bins: &[(u64, u64)], rows: u64, events: u64) -> f64 {
    let share = |c: u64, t: u64| if c == 0 { 0.5 } else { c as f64 } / t as f64;
    bins.iter()
        .map(|&(n, e)| {
            let (good, bad) = (share(n - e, rows - events), share(e, events));
            (good - bad) * (good / bad).ln()
        })
        .sum()
}

#[test]
fn binning_statistics_across_parties_equal_the_plaintext_counts() {
    let (guest, hosts) = parties("default_credit", 2);
    let labels = guest.labels().unwrap().to_vec();
    let prep = quantile_bins(10);
    let names = vec!["tax".to_string(), "utilities".to_string()];
    let (mut binning, request) = BinningGuest::new("bank", &guest, &prep, &names).unwrap();
    let none = BinningLimits {
        min_rows: 1,
        min_share: 0.0,
    };
    for (name, host) in names.iter().zip(&hosts) {
        let (answer, disclosure, _) =
            answer_binning(name, "bank", host, &prep, &none, true, request.clone()).unwrap();
        assert_eq!(disclosure.columns, host.features());
        binning.receive(name, answer).unwrap();
    }
    let report = binning.finish().unwrap();
    let rows = guest.rows() as u64;
    let events = labels.iter().filter(|&&y| y == 1.0).count() as u64;
    assert_eq!((report.rows, report.events), (rows, events));
    let expected: Vec<(String, Vec<(u64, u64)>)> = std::iter::once(("bank", &guest))
        .chain(names.iter().map(String::as_str).zip(&hosts))
        .flat_map(|(party, table)| {
            plaintext_counts(table, &prep, &labels)
                .into_iter()
                .map(move |c| (party.to_owned(), c))
        })
        .collect();
    assert_eq!(report.columns.len(), expected.len());
    for (column, (party, counts)) in report.columns.iter().zip(&expected) {
        assert_eq!(&column.party, party);
        let got: Vec<(u64, u64)> = column.bins.iter().map(|b| (b.rows, b.events)).collect();
        assert_eq!(&got, counts, "{party} {}", column.name);
        let iv = information_value(counts, rows, events);
        assert!(
            (column.iv - iv).abs() < 1e-12,
            "{}: {} vs {iv}",
            column.name,
            column.iv
        );
    }
    // The credit data's repayment-status columns carry the most information.
    let best = report
        .columns
        .iter()
        .max_by(|a, b| a.iv.total_cmp(&b.iv))
        .unwrap();
    assert!(best.iv > 0.3, "{best:?}");
}

#[test]
fn hosts_disclose_only_bins_of_the_minimum_size_under_aliases() {
    let (guest, hosts) = parties("default_credit", 1);
    let prep = quantile_bins(10);
    let (mut binning, request) =
        BinningGuest::new("bank", &guest, &prep, &["tax".to_string()]).unwrap();
    let limits = BinningLimits {
        min_rows: 100,
        min_share: 0.15,
    };
    let (answer, disclosure, _) = answer_binning(
        "tax",
        "bank",
        &hosts[0],
        &prep,
        &limits,
        false,
        request.clone(),
    )
    .unwrap();
    // What crosses: decoded from its bytes.
    let bytes = answer.to_bytes();
    let Message::BinningCounts {
        columns,
        products,
        shares,
    } = Message::from_bytes(&bytes).unwrap()
    else {
        panic!("a binning answer")
    };
    let threshold = (0.15 * guest.rows() as f64).ceil() as u64;
    assert!(disclosure.smallest_bin >= threshold);
    for (k, column) in columns.iter().enumerate() {
        assert_eq!(column.name, format!("tax:{}", k + 1), "aliases, not names");
        assert!(column.sizes.iter().all(|&n| n >= threshold), "{column:?}");
        assert_eq!(column.sizes.iter().sum::<u64>(), guest.rows() as u64);
    }
    let bins: usize = columns.iter().map(|c| c.sizes.len()).sum();
    assert_eq!(disclosure.bins, bins);
    assert!(bins < 10 * hosts[0].features(), "bins were merged");
    assert_eq!(products.len(), bins.div_ceil(32));
    assert_eq!(shares.iter().map(Vec::len).sum::<usize>(), bins);
    // Its size grows with the bins, not with the rows: nothing per row leaves the host. The
    // same job on half the rows sends as many bytes per bin.
    let half: Vec<usize> = (0..guest.rows() / 2).collect();
    let (small_guest, small_host) = (
        guest.select_rows(&half).unwrap(),
        hosts[0].select_rows(&half).unwrap(),
    );
    let (_, small_request) =
        BinningGuest::new("bank", &small_guest, &prep, &["tax".to_string()]).unwrap();
    let (small, small_disclosure, _) = answer_binning(
        "tax",
        "bank",
        &small_host,
        &prep,
        &limits,
        false,
        small_request,
    )
    .unwrap();
    let per_bin = |bytes: usize, bins: usize| bytes as f64 / bins as f64;
    let (full, halved) = (
        per_bin(bytes.len(), bins),
        per_bin(small.to_bytes().len(), small_disclosure.bins),
    );
    assert!(
        (full / halved - 1.0).abs() < 0.1,
        "{full} vs {halved} bytes per bin"
    );
    binning.receive("tax", answer).unwrap();
    let report = binning.finish().unwrap();
    assert!(report.columns[guest.features()..]
        .iter()
        .all(|c| c.bins.iter().all(|b| b.rows >= threshold)));
}

#[test]
fn altered_counts_and_labels_that_are_not_zero_or_one_are_refused() {
    let (guest, hosts) = parties("default_credit", 1);
    let prep = quantile_bins(4);
    let tax = vec!["tax".to_string()];
    let (mut binning, request) = BinningGuest::new("bank", &guest, &prep, &tax).unwrap();
    let none = BinningLimits {
        min_rows: 1,
        min_share: 0.0,
    };
    let (answer, _, _) = answer_binning(
        "tax",
        "bank",
        &hosts[0],
        &prep,
        &none,
        false,
        request.clone(),
    )
    .unwrap();
    // One event more in one bin: the column's events no longer add up to the guest's.
    let Message::BinningCounts {
        columns,
        products,
        mut shares,
    } = answer
    else {
        panic!()
    };
    shares[0][0] = shares[0][0].wrapping_add(1);
    let err = binning
        .receive(
            "tax",
            Message::BinningCounts {
                columns,
                products,
                shares,
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("not counts"), "{err}");

    // A guest declaring labels beyond 0/1 is refused before anything is computed.
    let Message::BinningLabels { job, .. } = request else {
        panic!()
    };
    let (secret, public) = he::SecretKey::generate(&he::N8192_Q192);
    let values: Vec<i64> = (0..guest.rows() as i64).map(|r| r % 3).collect();
    let crafted = Message::BinningLabels {
        job,
        key: Box::new(public),
        packing: Box::new(secret.packing_key(5).unwrap()),
        labels: secret.encrypt(&values, 2).unwrap(),
    };
    let err = answer_binning("tax", "bank", &hosts[0], &prep, &none, false, crafted).unwrap_err();
    assert!(err.to_string().contains("not 0/1"), "{err}");
}

/// A modeller's day: binning statistics on the training rows, columns merged and chosen from
/// the counts, a model trained on exactly the bins the parties kept; the model parts hold the
/// chosen columns only, merged bins share their points, and the guest's scorecard shows the
/// merged bins with the counts the report gave.
#[test]
fn a_model_trains_on_the_bins_chosen_from_a_binning_job() {
    let (guest, hosts) = parties("default_credit", 2);
    let labels = guest.labels().unwrap().to_vec();
    let (train, test) = stratified_split(&labels, 7);
    let select = |table: &Table, rows: &[usize]| table.select_rows(rows).unwrap();
    let (guest_train, hosts_train): (Table, Vec<Table>) = (
        select(&guest, &train),
        hosts.iter().map(|h| select(h, &train)).collect(),
    );
    let names = vec!["tax".to_string(), "utilities".to_string()];
    let prep = quantile_bins(10);
    let (mut binning, request) = BinningGuest::new("bank", &guest_train, &prep, &names).unwrap();
    let limits = BinningLimits {
        min_rows: 100,
        min_share: 0.05,
    };
    let mut host_kept = Vec::new();
    for (name, host) in names.iter().zip(&hosts_train) {
        let (answer, _, kept) =
            answer_binning(name, "bank", host, &prep, &limits, false, request.clone()).unwrap();
        host_kept.push(kept);
        binning.receive(name, answer).unwrap();
    }
    let guest_kept = binning.kept_bins().to_vec();
    let report = binning.finish().unwrap();

    let selection = Selection {
        binning_job: "binning-1".into(),
        merge: Merge::Monotone,
        min_iv: 0.02,
        top_k: Some(6),
        columns: Default::default(),
    };
    let parties: Vec<String> = std::iter::once("bank".to_string())
        .chain(names.iter().cloned())
        .collect();
    let chosen = selection.choose(&report, &parties).unwrap();
    assert!(chosen.iter().all(|c| c.stats.iv >= 0.02));
    assert!(
        chosen.iter().any(|c| c.groups.iter().any(|g| g.len() > 1)),
        "monotone merging merges some bins of the credit data"
    );
    let config = TrainConfig {
        seed: 11,
        ..TrainConfig::default()
    };
    let (mut guest_job, mut host_jobs) = jobs(guest_train.clone(), hosts_train, &config);
    guest_job.prep = selection.prep("bank", &chosen);
    guest_job.prep.keep(guest_kept).unwrap();
    for ((job, kept), name) in host_jobs.iter_mut().zip(host_kept).zip(&names) {
        job.prep = selection.prep(name, &chosen);
        // The host's prep names its columns by their aliases; the host resolves them.
        assert!(job
            .prep
            .select
            .iter()
            .flatten()
            .all(|c| c.starts_with(name)));
        job.prep.keep(kept).unwrap();
    }
    let run = simulate(guest_job, host_jobs, false, &mut |_| {}).unwrap();
    for (party, part) in std::iter::once(("bank", &run.guest.model)).chain(
        names
            .iter()
            .map(String::as_str)
            .zip(run.hosts.iter().map(|h| &h.model)),
    ) {
        let wanted = chosen.iter().filter(|c| c.stats.party == party).count();
        assert_eq!(
            part.binned.len(),
            wanted,
            "{party} trains on its chosen columns"
        );
        assert!(part.features.is_empty());
        for b in &part.binned {
            for group in &b.merged {
                assert!(group.iter().all(|&bin| b.points[bin] == b.points[group[0]]));
            }
        }
        // The part reads only its columns when it scores.
        let model = ModelPart::from_json("part", &part.to_json()).unwrap();
        assert_eq!(&model, part);
    }
    // The guest's scorecard: the merged bins of the report, with their counts.
    let scorecard = run.guest.model.scorecard(&guest_train).unwrap();
    for column in &scorecard {
        let stats = &chosen
            .iter()
            .find(|c| c.stats.party == "bank" && c.stats.name == column.name)
            .unwrap()
            .stats;
        let card: Vec<(u64, u64)> = column.bins.iter().map(|b| (b.rows, b.events)).collect();
        let reported: Vec<(u64, u64)> = stats.bins.iter().map(|b| (b.rows, b.events)).collect();
        assert_eq!(card, reported, "{}", column.name);
        assert!((column.iv - stats.iv).abs() < 1e-9);
    }
    // Fewer, merged columns still rank well on the test rows.
    let test_labels: Vec<f64> = test.iter().map(|&r| labels[r]).collect();
    let auc = joint_test_auc(&run, (&guest, &hosts), &test, &test_labels);
    eprintln!("test AUC on {} chosen columns: {auc:.4}", chosen.len());
    assert!(auc >= 0.75, "test AUC {auc:.4}");
}
