//! A host's dataset in a Parquet file, and batch scoring from and to Parquet files.

use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray};

use crate::common::{load_tax, trains_as_from_csv, Federation};

/// Writes `columns` to `path` as Parquet: Zstandard pages, row groups of `rows_per_group`.
pub(crate) fn write_parquet(
    path: &std::path::Path,
    columns: Vec<(&str, ArrayRef)>,
    rows_per_group: usize,
) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let properties = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .set_max_row_group_row_count(Some(rows_per_group))
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(properties)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// The tax bureau's CSV as Parquet (ids as text, features as doubles), `null_at` (an id) with
/// its first feature null.
fn tax_as_parquet(federation: &Federation, null_at: Option<&str>) -> (Vec<String>, String) {
    let csv = std::fs::read_to_string(federation.dir.join("tax.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let mut columns: Vec<(&str, ArrayRef)> = vec![(
        "id",
        Arc::new(rows.iter().map(|r| Some(r[0])).collect::<StringArray>()),
    )];
    for (c, name) in header.iter().enumerate().skip(1) {
        let values: Float64Array = rows
            .iter()
            .map(|r| (c > 1 || null_at != Some(r[0])).then(|| r[c].parse::<f64>().unwrap()))
            .collect();
        columns.push((name, Arc::new(values)));
    }
    write_parquet(&federation.dir.join("tax.parquet"), columns, 4000);
    let ids = rows.iter().map(|r| r[0].to_owned()).collect();
    (ids, header[1].clone())
}

/// The tax bureau moves its dataset from its CSV into a Parquet file (configuration read
/// again, no restart): the same job trains the same model on it, bit for bit. A null where a
/// number must be is named by file, row and column, and makes that id alone unscorable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_dataset_in_parquet_trains_as_its_csv_does() {
    let federation = Federation::start("parquet", false).await;
    let (tax_ids, _) = tax_as_parquet(&federation, None);
    trains_as_from_csv(&federation, "[datasets.tax]\npath = \"tax.parquet\"\n").await;

    // A null in a column read as a number: named for the tax bureau's operator; scoring
    // leaves that id alone out.
    let ids: Vec<String> = federation
        .bank_ids(100)
        .into_iter()
        .filter(|id| tax_ids.contains(id))
        .take(2)
        .collect();
    let (_, column) = tax_as_parquet(&federation, Some(&ids[0]));
    let row = tax_ids.iter().position(|id| *id == ids[0]).unwrap() + 1;
    let config = (*federation.state("tax").config()).clone();
    let error = load_tax(config).await.unwrap_err();
    assert!(
        error.contains(&format!(
            "tax.parquet, row {row}, column \"{column}\": missing value"
        )),
        "{error}"
    );
    let (ok, scored, stderr) = federation.score("sme-credit", &["--json"], &ids).await;
    assert!(ok, "{stderr}");
    let scored: serde_json::Value = serde_json::from_str(&scored).unwrap();
    assert!(scored[0]["probability"].is_null(), "{scored}");
    assert_eq!(scored[0]["error"], "tax: cannot score", "{scored}");
    assert!(scored[1]["probability"].as_f64().is_some(), "{scored}");
    federation.stop().await;
}
