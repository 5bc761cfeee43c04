//! Peak memory and time of a node loading one dataset — 10^7 rows × 20 numeric columns by
//! default — from a Parquet file and from a CSV file, through the node's own loader (the one
//! jobs and scoring use). The f64 matrix alone is rows × columns × 8 bytes (1.6 GB here).
//!
//! ```sh
//! cargo run --release --example load_memory -- [--rows 10000000] [--columns 20] [--dir DIR]
//! ```
//!
//! The files are made once in DIR (default `target/load-memory`; about 1.9 GB of CSV and
//! 1.3 GB of Parquet at the default size) and kept for later runs; each load runs in a fresh
//! process, whose peak resident set (VmHWM) is reported.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray};

struct Args {
    rows: usize,
    columns: usize,
    dir: PathBuf,
    load: Option<String>,
}

fn args() -> Args {
    let mut args = Args {
        rows: 10_000_000,
        columns: 20,
        dir: PathBuf::from("target/load-memory"),
        load: None,
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value = given
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--rows" => args.rows = value.parse().expect("--rows: a number"),
            "--columns" => args.columns = value.parse().expect("--columns: a number"),
            "--dir" => args.dir = value.into(),
            "--load" => args.load = Some(value),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// The value of row `row`, column `column`: deterministic, two decimals, spread out.
fn value(row: usize, column: usize) -> f64 {
    let mut x = (row as u64) << 8 | column as u64;
    x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 29;
    (x % 10_000_000) as f64 / 100.0
}

fn names(columns: usize) -> Vec<String> {
    (0..columns).map(|c| format!("x{c}")).collect()
}

fn write_csv(path: &Path, rows: usize, columns: usize) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("csv"));
    writeln!(out, "id,{}", names(columns).join(",")).unwrap();
    for row in 0..rows {
        write!(out, "e{row:09}").unwrap();
        for column in 0..columns {
            write!(out, ",{}", value(row, column)).unwrap();
        }
        writeln!(out).unwrap();
    }
    out.flush().unwrap();
}

fn write_parquet(path: &Path, rows: usize, columns: usize) {
    let file = std::fs::File::create(path).expect("parquet");
    let mut fields = vec![arrow_schema::Field::new(
        "id",
        arrow_schema::DataType::Utf8,
        false,
    )];
    fields.extend(
        names(columns)
            .into_iter()
            .map(|n| arrow_schema::Field::new(n, arrow_schema::DataType::Float64, false)),
    );
    let schema = Arc::new(arrow_schema::Schema::new(fields));
    // As pyarrow writes by default: Snappy pages, row groups of up to 1 Mi rows.
    let properties = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_max_row_group_row_count(Some(1 << 20))
        .build();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(properties)).unwrap();
    let chunk = 100_000;
    for start in (0..rows).step_by(chunk) {
        let end = (start + chunk).min(rows);
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(
            (start..end)
                .map(|r| Some(format!("e{r:09}")))
                .collect::<StringArray>(),
        )];
        for column in 0..columns {
            arrays.push(Arc::new(
                (start..end)
                    .map(|r| value(r, column))
                    .collect::<Float64Array>(),
            ));
        }
        writer
            .write(&RecordBatch::try_new(schema.clone(), arrays).unwrap())
            .unwrap();
    }
    writer.close().unwrap();
}

/// Loads `file` as the node does (a configuration naming it as a dataset) and prints rows,
/// seconds and the process's peak resident set.
fn load(dir: &Path, file: &str) {
    let text = format!(
        "party = \"tax\"\nlisten = \"127.0.0.1:7002\"\ndata_dir = \"data\"\n\
         [tls]\ncert = \"node.crt\"\nkey = \"node.key\"\nca = \"ca.crt\"\n\
         [datasets.big]\npath = \"{file}\"\nid_column = \"id\"\n"
    );
    // The configuration's checks want the files it names to exist.
    for name in ["node.crt", "node.key", "ca.crt"] {
        std::fs::write(dir.join(name), "").unwrap();
    }
    let config = node::config::NodeConfig::parse(&dir.join("node.toml"), &text).unwrap();
    let started = Instant::now();
    let table = node::internal::load_table(&config, "big", false, &|_| fedlearn::Reading::Number)
        .unwrap_or_else(|e| panic!("{e}"));
    let seconds = started.elapsed().as_secs_f64();
    let matrix = (table.rows() * table.features() * 8) as f64 / (1 << 20) as f64;
    println!(
        "{file:<14} {} rows × {} columns in {seconds:.1} s; peak RSS {:.0} MiB (the f64 matrix: {matrix:.0} MiB)",
        table.rows(),
        table.features(),
        unseen::peak_rss_mib(),
    );
}

fn main() {
    let args = args();
    std::fs::create_dir_all(&args.dir).unwrap();
    if let Some(file) = &args.load {
        load(&args.dir, file);
        return;
    }
    let stem = format!("big-{}x{}", args.rows, args.columns);
    let files = [format!("{stem}.parquet"), format!("{stem}.csv")];
    for file in &files {
        let path = args.dir.join(file);
        if path.exists() {
            continue;
        }
        let started = Instant::now();
        if file.ends_with(".csv") {
            write_csv(&path, args.rows, args.columns);
        } else {
            write_parquet(&path, args.rows, args.columns);
        }
        let size = std::fs::metadata(&path).unwrap().len() as f64 / 1e9;
        eprintln!(
            "made {} ({size:.2} GB) in {:.0} s",
            path.display(),
            started.elapsed().as_secs_f64()
        );
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    println!(
        "{cpu}, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for file in &files {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--dir", &args.dir.display().to_string(), "--load", file])
            .status()
            .expect("a fresh process to load in");
        assert!(status.success(), "loading {file} failed");
    }
}
