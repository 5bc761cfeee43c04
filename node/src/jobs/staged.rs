//! A job's dataset read once from its source (CSV, Parquet, PostgreSQL) into a file of the
//! job's own under `data_dir` ([`crate::jobs::spill::JobDir`]), chunk by chunk: what the job
//! holds in memory is the dataset's columns (with the text columns' dictionaries), not its
//! rows. PSI reads the ids from the file, and the aligned rows come back as a table in the
//! job's order ([`Staged::select`]), two passes over the file with memory for those rows only.
//!
//! The file is one record per row, little-endian: id length (u16), the id, the label (f64,
//! the guest's only) and every column read (f64 each; a text column holds its value's index
//! in the dictionary). Reading the source once also means the rows cannot change between
//! PSI and training, whatever the source does meanwhile.

use std::io::{Read, Write};

use fedlearn::{Chunk, FedError, Ids, Reading, Table};
use sha2::{Digest, Sha256};

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::jobs::sealed::Written;
use crate::jobs::spill::{IdRows, JobDir};

/// A job's dataset, its rows on disk.
#[derive(Debug)]
pub(crate) struct Staged {
    dir: JobDir,
    file: Written,
    name: String,
    /// The columns the job uses (the dataset's `features`, when it names them), no rows.
    schema: Table,
    /// For each column of `schema`, its place among the values of a record.
    columns: Vec<usize>,
    /// Values per record.
    width: usize,
    labels: bool,
    rows: usize,
    ids_digest: [u8; 32],
}

impl Staged {
    /// Reads dataset `name` (with its labels if `with_labels`, each column as `reading`
    /// says) into a fresh file for `job`.
    pub(crate) fn load(
        config: &NodeConfig,
        name: &str,
        with_labels: bool,
        reading: &dyn Fn(&str) -> Reading,
        job: &str,
    ) -> Result<Staged, NodeError> {
        let dir = JobDir::create(&config.data_dir, job)?;
        let mut output = dir.create_file("rows")?;
        let mut rows = 0usize;
        let mut digest = Sha256::new();
        digest.update(IDS_DOMAIN);
        let mut written: Result<(), std::io::Error> = Ok(());
        let mut sink = |chunk: Chunk| -> Result<(), FedError> {
            let width = chunk.values.len() / chunk.ids.len().max(1);
            let labelled = !chunk.labels.is_empty();
            for (row, id) in chunk.ids.iter().enumerate() {
                digest.update((id.len() as u64).to_le_bytes());
                digest.update(id.as_bytes());
                let Ok(len) = u16::try_from(id.len()) else {
                    return Err(FedError::Row {
                        source_name: name.to_owned(),
                        row: rows + 1,
                        column: String::new(),
                        reason: format!("an id of {} bytes is longer than PSI allows", id.len()),
                    });
                };
                let mut record = Vec::with_capacity(2 + id.len() + 8 * (width + 1));
                record.extend_from_slice(&len.to_le_bytes());
                record.extend_from_slice(id.as_bytes());
                if labelled {
                    record.extend_from_slice(&chunk.labels[row].to_le_bytes());
                }
                for value in &chunk.values[row * width..(row + 1) * width] {
                    record.extend_from_slice(&value.to_le_bytes());
                }
                if let Err(e) = output.write_all(&record) {
                    // Stops the read (a database's COPY too); the error said is this one.
                    written = Err(e);
                    return Err(FedError::Row {
                        source_name: name.to_owned(),
                        row: rows + 1,
                        column: String::new(),
                        reason: "the job's copy of the dataset cannot be written".into(),
                    });
                }
                rows += 1;
            }
            Ok(())
        };
        let read = crate::datasets::read_chunks(config, name, with_labels, reading, &mut sink);
        written.map_err(|e| NodeError::io(output.path(), e))?;
        let (read, features) = read?;
        let file = output.finish()?;
        let schema = crate::datasets::with_features(name, read.clone(), features.as_deref())?;
        let columns = (schema.feature_names().iter())
            .map(|f| {
                (read.feature_names().iter())
                    .position(|r| r == f)
                    .ok_or_else(|| NodeError::Dataset {
                        name: name.to_owned(),
                        reason: format!("no column {f:?} was read"),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Staged {
            dir,
            file,
            name: name.to_owned(),
            schema,
            columns,
            width: read.features(),
            labels: read.labels().is_some(),
            rows,
            ids_digest: digest.finalize().into(),
        })
    }

    /// The columns the job uses (no rows).
    pub(crate) fn schema(&self) -> &Table {
        &self.schema
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// The dataset's name in this node's configuration.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// SHA-256 of the ids in row order (each length-prefixed), as PSI's kept plan names
    /// the ids it split.
    pub(crate) fn ids_digest(&self) -> [u8; 32] {
        self.ids_digest
    }

    /// Reads every record in order, handing (row, id, record) to `visit`, which decodes the
    /// values it needs with [`Record`].
    fn each_record(
        &self,
        visit: &mut dyn FnMut(u32, &str, Record<'_>) -> Result<(), NodeError>,
    ) -> Result<(), NodeError> {
        let path = &self.file.path;
        let mut input = (self.dir.open_file(&self.file)).map_err(|e| NodeError::io(path, e))?;
        let fixed = 8 * (self.width + usize::from(self.labels));
        let mut id = Vec::with_capacity(256);
        let mut values = vec![0u8; fixed];
        let damaged = |e: std::io::Error| NodeError::io(path, e);
        for row in 0..self.rows {
            let mut len = [0u8; 2];
            input.read_exact(&mut len).map_err(damaged)?;
            id.resize(usize::from(u16::from_le_bytes(len)), 0);
            input.read_exact(&mut id).map_err(damaged)?;
            input.read_exact(&mut values).map_err(damaged)?;
            let text = std::str::from_utf8(&id).map_err(|_| NodeError::Dataset {
                name: self.name.clone(),
                reason: format!("the job's copy of row {} is damaged", row + 1),
            })?;
            let record = Record {
                bytes: &values,
                labels: self.labels,
            };
            visit(row as u32, text, record)?;
        }
        Ok(())
    }

    /// The rows at `positions` (distinct rows of the dataset), in that order, as a table of
    /// the job's columns. Two passes over the file: the ids' lengths, then every selected
    /// row put in its place; memory holds the result and 10 bytes per selected row.
    pub(crate) fn select(&self, positions: &[u32]) -> Result<Table, NodeError> {
        let wrong = |reason: &str| NodeError::Dataset {
            name: self.name.clone(),
            reason: format!("the job's rows do not fit it: {reason}"),
        };
        let mut by_row: Vec<(u32, u32)> = (positions.iter().enumerate())
            .map(|(rank, &row)| (row, rank as u32))
            .collect();
        by_row.sort_unstable();
        if by_row.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(wrong("a row is selected twice"));
        }
        if by_row
            .last()
            .is_some_and(|&(row, _)| row as usize >= self.rows)
        {
            return Err(wrong("a row beyond the last"));
        }
        let mut lengths = vec![0u16; positions.len()];
        let mut next = 0;
        self.each_record(&mut |row, id, _| {
            if by_row.get(next).is_some_and(|&(r, _)| r == row) {
                lengths[by_row[next].1 as usize] = id.len() as u16;
                next += 1;
            }
            Ok(())
        })?;
        let mut ends = Vec::with_capacity(positions.len());
        let mut end = 0u64;
        for length in lengths {
            end += u64::from(length);
            ends.push(end);
        }
        let width = self.schema.features();
        let mut text = vec![0u8; end as usize];
        let mut values = vec![0f64; positions.len() * width];
        let mut labels = vec![0f64; if self.labels { positions.len() } else { 0 }];
        let mut next = 0;
        self.each_record(&mut |row, id, record| {
            let Some(&(_, rank)) = by_row.get(next).filter(|&&(r, _)| r == row) else {
                return Ok(());
            };
            next += 1;
            let rank = rank as usize;
            let start = rank.checked_sub(1).map_or(0, |r| ends[r] as usize);
            let slot = &mut text[start..ends[rank] as usize];
            if slot.len() != id.len() {
                return Err(wrong("its file changed between two reads"));
            }
            slot.copy_from_slice(id.as_bytes());
            for (j, &column) in self.columns.iter().enumerate() {
                values[rank * width + j] = record.value(column);
            }
            if self.labels {
                labels[rank] = record.label();
            }
            Ok(())
        })?;
        let text = String::from_utf8(text).map_err(|_| wrong("an id is not UTF-8"))?;
        let ids = Ids::from_parts(text, ends).ok_or_else(|| wrong("the ids do not fit"))?;
        let chunk = Chunk {
            ids,
            values,
            labels,
        };
        self.schema
            .with_rows(chunk)
            .map_err(|e| wrong(&e.to_string()))
    }
}

/// Domain of the ids digest (the same as PSI's kept plan used before datasets were staged).
const IDS_DOMAIN: &[u8] = b"unseen psi ids v1";

/// One record's label and values, decoded on demand.
#[derive(Clone, Copy)]
struct Record<'a> {
    bytes: &'a [u8],
    labels: bool,
}

impl Record<'_> {
    fn at(&self, index: usize) -> f64 {
        f64::from_le_bytes(
            self.bytes[8 * index..8 * index + 8]
                .try_into()
                .expect("8 bytes"),
        )
    }

    fn label(&self) -> f64 {
        self.at(0)
    }

    fn value(&self, column: usize) -> f64 {
        self.at(column + usize::from(self.labels))
    }
}

impl IdRows for Staged {
    fn each_id(
        &self,
        visit: &mut dyn FnMut(u32, &str) -> Result<(), NodeError>,
    ) -> Result<(), NodeError> {
        self.each_record(&mut |row, id, _| visit(row, id))
    }
}

/// The digest [`Staged::ids_digest`] gives, of ids in memory.
#[cfg(test)]
pub(crate) fn ids_digest<'a>(ids: impl Iterator<Item = &'a str>) -> [u8; 32] {
    let mut digest = Sha256::new();
    digest.update(IDS_DOMAIN);
    for id in ids {
        digest.update((id.len() as u64).to_le_bytes());
        digest.update(id.as_bytes());
    }
    digest.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows staged on disk come back as the in-memory table's rows, in any order and across
    /// chunks, with the dataset's feature selection (reordered columns, a text column and its
    /// dictionary) and labels; the file goes with the job; wrong selections are refused.
    #[test]
    fn staged_rows_come_back_as_the_table_selects_them() {
        let dir = std::env::temp_dir().join(format!("unseen-staged-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let rows = fedlearn::CHUNK_ROWS + 300;
        let mut csv = String::from("id,y,a,kind,b\n");
        for i in 0..rows {
            let kind = ["shop", "farm", "mill"][i % 3];
            csv.push_str(&format!(
                "sme-{i},{},{}.25,{kind},{}\n",
                i % 2,
                i % 97,
                i % 13
            ));
        }
        std::fs::write(dir.join("bank.csv"), csv).unwrap();
        let text = format!(
            r#"
            party = "bank"
            listen = "127.0.0.1:7001"
            data_dir = "{data}"
            operators = ["bank-operator"]
            [tls]
            cert = "node.crt"
            key = "node.key"
            ca = "ca.crt"
            [datasets.loans]
            path = "{csv}"
            id_column = "id"
            label_column = "y"
            features = ["b", "kind"]
            "#,
            data = dir.join("data").display(),
            csv = dir.join("bank.csv").display(),
        );
        // Validation wants the files it names to exist.
        for file in ["node.crt", "node.key", "ca.crt"] {
            std::fs::write(dir.join(file), "").unwrap();
        }
        let config = NodeConfig::parse(&dir.join("node.toml"), &text).unwrap();
        let reading = |c: &str| {
            if c == "kind" {
                Reading::Text
            } else {
                Reading::Number
            }
        };
        let whole = crate::datasets::load_table(&config, "loans", true, &reading).unwrap();
        let staged = Staged::load(&config, "loans", true, &reading, "job-7").unwrap();
        assert_eq!(staged.rows(), rows);
        assert_eq!(staged.schema().feature_names(), ["b", "kind"]);
        assert_eq!(staged.ids_digest(), ids_digest(whole.ids().iter()));
        let positions: Vec<u32> = (0..rows as u32).rev().step_by(7).chain([3, 1]).collect();
        let rows_at: Vec<usize> = positions.iter().map(|&p| p as usize).collect();
        assert_eq!(
            staged.select(&positions).unwrap(),
            whole.select_rows(&rows_at).unwrap()
        );
        assert!(staged.select(&[1, 1]).is_err());
        assert!(staged.select(&[rows as u32]).is_err());
        let file = staged.file.path.clone();
        assert!(file.exists());
        let disk = std::fs::read(&file).unwrap();
        assert!(!disk.windows(8).any(|w| w == b"sme-1234"), "sealed on disk");
        drop(staged);
        assert!(!file.exists(), "the job's copy goes with it");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
