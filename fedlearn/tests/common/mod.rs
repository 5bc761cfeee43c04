//! Test data: the FATE example tables in the repository's data/ folder.
#![allow(dead_code)] // each test binary uses a different subset of the helpers

use fedlearn::ndarray::{self, Array2, Axis};
use fedlearn::{GuestJob, HostJob, Missing, Reading, Table, TrainConfig};

pub fn load(name: &str, label: Option<&str>) -> Table {
    let path = format!("{}/../data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Table::parse_csv(&path, &text, "id", label, Missing::Reject, &|_| {
        Reading::Number
    })
    .unwrap()
}

/// The guest's table and the host tables: one host with every host column, or the host
/// columns split in two halves (a three-party federation).
pub fn parties(dataset: &str, hosts: usize) -> (Table, Vec<Table>) {
    let guest = load(&format!("{dataset}_hetero_guest.csv"), Some("y"));
    let host = load(&format!("{dataset}_hetero_host.csv"), None);
    assert_eq!(guest.ids(), host.ids(), "the FATE split keeps row order");
    let names: Vec<String> = host.feature_names().to_vec();
    let per = names.len().div_ceil(hosts);
    let tables = names
        .chunks(per)
        .map(|chunk| {
            let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
            host.select_columns(&chunk).unwrap()
        })
        .collect();
    (guest, tables)
}

pub fn jobs(guest: Table, hosts: Vec<Table>, config: &TrainConfig) -> (GuestJob, Vec<HostJob>) {
    let names: Vec<String> = (0..hosts.len()).map(|k| format!("host{k}")).collect();
    let host_jobs = hosts
        .into_iter()
        .zip(&names)
        .map(|(table, party)| HostJob {
            party: party.clone(),
            guest: "bank".into(),
            table,
            prep: Default::default(),
            checkpoints: Vec::new(),
        })
        .collect();
    (
        GuestJob {
            party: "bank".into(),
            model_id: "test-model".into(),
            table: guest,
            hosts: names,
            config: config.clone(),
            prep: Default::default(),
            resume: None,
        },
        host_jobs,
    )
}

/// The guest's and hosts' tables joined column-wise, each column standardised to mean 0 and
/// variance 1 over all rows, for plaintext references on the joined data.
pub fn joined_standardised(guest: &Table, hosts: &[Table]) -> Array2<f64> {
    let views: Vec<_> = std::iter::once(guest)
        .chain(hosts)
        .map(Table::values)
        .collect();
    let mut rows = ndarray::concatenate(Axis(1), &views).expect("tables of the same rows");
    let n = guest.rows() as f64;
    for mut column in rows.columns_mut() {
        let mean = column.iter().sum::<f64>() / n;
        let var = column.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        column.mapv_inplace(|x| (x - mean) / var.sqrt());
    }
    rows
}
