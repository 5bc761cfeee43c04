//! The plaintext reference on the credit data reproduces the published plaintext figures.

use fedlearn::*;

/// Reads a FATE hetero CSV: ids, optional label column `y`, then features.
fn read(path: &str) -> (Vec<String>, Option<Vec<f64>>, Vec<Vec<f64>>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let has_label = header.get(1) == Some(&"y");
    let (mut ids, mut labels, mut rows) = (Vec::new(), Vec::new(), Vec::new());
    for line in lines {
        let mut fields = line.split(',');
        ids.push(fields.next().expect("id").to_owned());
        if has_label {
            labels.push(
                fields
                    .next()
                    .expect("y")
                    .parse::<f64>()
                    .expect("numeric label"),
            );
        }
        rows.push(
            fields
                .map(|f| f.parse::<f64>().expect("numeric feature"))
                .collect(),
        );
    }
    (ids, has_label.then_some(labels), rows)
}

fn joined_credit() -> (fedlearn::ndarray::Array2<f64>, Vec<f64>) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/");
    let (guest_ids, labels, guest) = read(&format!("{root}default_credit_hetero_guest.csv"));
    let (host_ids, _, host) = read(&format!("{root}default_credit_hetero_host.csv"));
    assert_eq!(
        guest_ids, host_ids,
        "the FATE split keeps ids in the same order"
    );
    let features = guest[0].len() + host[0].len();
    let rows: Vec<f64> = guest
        .iter()
        .zip(&host)
        .flat_map(|(g, h)| g.iter().chain(h).copied().collect::<Vec<_>>())
        .collect();
    let rows = fedlearn::ndarray::Array2::from_shape_vec((guest.len(), features), rows)
        .expect("every row has every column");
    (rows, labels.expect("guest has labels"))
}

#[test]
fn plaintext_reference_matches_published_figures_on_credit_data() {
    let (rows, labels) = joined_credit();
    assert_eq!(rows.dim(), (30000, 23));
    let config = ReferenceConfig {
        epochs: 300,
        learning_rate: 0.05,
        l2: 0.0,
        residual: Residual::Sigmoid,
    };
    let model = train_reference(rows.view(), &labels, &config).unwrap();
    let exact = evaluate(&model.probabilities(rows.view()), &labels).unwrap();
    // Published plaintext logistic regression on the joined data: AUC 0.7242, KS 0.378.
    assert!((exact.auc - 0.7242).abs() < 0.003, "{exact:?}");
    assert!((exact.ks - 0.378).abs() < 0.01, "{exact:?}");
    let taylor = train_reference(
        rows.view(),
        &labels,
        &ReferenceConfig {
            residual: Residual::Taylor,
            ..config
        },
    )
    .unwrap();
    let approx = evaluate(&taylor.probabilities(rows.view()), &labels).unwrap();
    println!("sigmoid residual: {exact:?}\ntaylor residual: {approx:?}");
    assert!(exact.auc - approx.auc < 0.01, "{exact:?} vs {approx:?}");
}
