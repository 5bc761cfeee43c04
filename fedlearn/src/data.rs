//! A party's data: named numeric feature columns, optional 0/1 labels, parsed from CSV text.
//!
//! Parsing is pure (the caller reads the file), so errors name the source, line and column
//! the caller passed in.

use crate::error::FedError;

/// What to do with a missing feature value (an empty field, `NA`, `NaN` or `null`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missing {
    /// Refuse the table, naming the first missing cell.
    #[default]
    Reject,
    /// Replace by the training mean of the column (0 after standardisation); the model records
    /// the choice and applies it when scoring.
    Mean,
}

/// How a job reads one feature column of a CSV file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// A number; a missing cell follows the dataset's [`Missing`] policy.
    Number,
    /// A number or a missing cell, whatever the policy: the column is binned, and missing
    /// values have a bin of their own.
    Binned,
    /// Text or a missing cell: a categorical column.
    Text,
    /// Not read: the job or the model does not use the column.
    Skip,
}

/// Rows of one party: ids, named feature columns (row-major, missing values are NaN) and, for
/// the guest, 0/1 labels. A text column holds, per row, the index of its value in the
/// column's dictionary.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    ids: Vec<String>,
    feature_names: Vec<String>,
    values: Vec<f64>,
    labels: Option<Vec<f64>>,
    missing: Missing,
    /// Per feature column: its dictionary if it is a text column.
    dictionaries: Vec<Option<Vec<String>>>,
}

fn is_missing(field: &str) -> bool {
    field.is_empty()
        || ["na", "nan", "null"]
            .iter()
            .any(|m| field.eq_ignore_ascii_case(m))
}

impl Table {
    /// Builds a table from row-major values; NaN marks a missing value and is refused unless
    /// `missing` is [`Missing::Mean`].
    pub fn new(
        ids: Vec<String>,
        feature_names: Vec<String>,
        values: Vec<f64>,
        labels: Option<Vec<f64>>,
        missing: Missing,
    ) -> Result<Table, FedError> {
        let width = feature_names.len();
        if values.len() != ids.len() * width {
            return Err(FedError::LengthMismatch {
                what: "table values (rows × features)",
                expected: ids.len() * width,
                got: values.len(),
            });
        }
        if let Some(labels) = &labels {
            if labels.len() != ids.len() {
                return Err(FedError::LengthMismatch {
                    what: "labels",
                    expected: ids.len(),
                    got: labels.len(),
                });
            }
            if let Some(row) = labels.iter().position(|&y| y != 0.0 && y != 1.0) {
                return Err(FedError::BadLabel {
                    row,
                    value: labels[row],
                });
            }
        }
        for (index, value) in values.iter().enumerate() {
            let (row, column) = (index / width.max(1), index % width.max(1));
            if value.is_infinite() || (value.is_nan() && missing == Missing::Reject) {
                return Err(FedError::Csv {
                    source_name: "table".into(),
                    line: row + 2,
                    column: feature_names[column].clone(),
                    reason: format!("value {value} is not a finite number"),
                });
            }
        }
        let dictionaries = vec![None; width];
        Ok(Table {
            ids,
            feature_names,
            values,
            labels,
            missing,
            dictionaries,
        })
    }

    /// Parses CSV text with a header row. `id_column` names the id column, `label_column` the
    /// 0/1 label (guest only); every other column is a feature, read as `reading` says for
    /// its name. `source` names the file in errors.
    pub fn parse_csv(
        source: &str,
        text: &str,
        id_column: &str,
        label_column: Option<&str>,
        missing: Missing,
        reading: &dyn Fn(&str) -> Reading,
    ) -> Result<Table, FedError> {
        let parse = Table::parse(
            source,
            text,
            id_column,
            label_column,
            missing,
            reading,
            false,
        );
        parse.map(|(table, _)| table)
    }

    /// [`Table::parse_csv`] for scoring, where one bad row must not stop the others: a data
    /// row with a cell that cannot be read is left out of the table and returned with its id
    /// (empty when the row is too short to hold one) and its error. The header must be sound.
    pub fn parse_csv_rows(
        source: &str,
        text: &str,
        id_column: &str,
        missing: Missing,
        reading: &dyn Fn(&str) -> Reading,
    ) -> Result<(Table, Vec<(String, FedError)>), FedError> {
        Table::parse(source, text, id_column, None, missing, reading, true)
    }

    fn parse(
        source: &str,
        text: &str,
        id_column: &str,
        label_column: Option<&str>,
        missing: Missing,
        reading: &dyn Fn(&str) -> Reading,
        keep_going: bool,
    ) -> Result<(Table, Vec<(String, FedError)>), FedError> {
        let error = |line: usize, column: &str, reason: String| FedError::Csv {
            source_name: source.to_owned(),
            line,
            column: column.to_owned(),
            reason,
        };
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
        let Some((_, header)) = lines.next() else {
            return Err(error(
                1,
                "",
                "the file is empty; expected a header row".into(),
            ));
        };
        let header: Vec<&str> = header.split(',').map(str::trim).collect();
        let find = |name: &str| {
            header.iter().position(|h| *h == name).ok_or_else(|| {
                error(
                    1,
                    name,
                    format!("no such column; the header has {header:?}"),
                )
            })
        };
        let id_at = find(id_column)?;
        let label_at = label_column.map(find).transpose()?;
        for (i, name) in header.iter().enumerate() {
            if header[..i].contains(name) {
                return Err(error(1, name, "the column name appears twice".into()));
            }
        }
        let (feature_at, readings): (Vec<usize>, Vec<Reading>) = (0..header.len())
            .filter(|&i| i != id_at && Some(i) != label_at)
            .map(|i| (i, reading(header[i])))
            .filter(|(_, r)| *r != Reading::Skip)
            .unzip();
        let mut dictionaries: Vec<Option<Vec<String>>> = readings
            .iter()
            .map(|r| (*r == Reading::Text).then(Vec::new))
            .collect();
        let mut codes: Vec<std::collections::HashMap<String, usize>> =
            vec![Default::default(); feature_at.len()];
        let (mut ids, mut values, mut labels) = (Vec::new(), Vec::new(), Vec::new());
        let mut bad_rows = Vec::new();
        for (line, text) in lines {
            if text.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = text.split(',').map(str::trim).collect();
            let (width, labelled) = (values.len(), labels.len());
            let mut row = || -> Result<(), FedError> {
                if fields.len() != header.len() {
                    return Err(error(
                        line,
                        "",
                        format!("{} fields, the header has {}", fields.len(), header.len()),
                    ));
                }
                if let Some(at) = label_at {
                    let label = match fields[at] {
                        "0" | "0.0" => 0.0,
                        "1" | "1.0" => 1.0,
                        other => {
                            return Err(error(
                                line,
                                header[at],
                                format!("label {other:?} is not 0 or 1"),
                            ))
                        }
                    };
                    labels.push(label);
                }
                for (f, &at) in feature_at.iter().enumerate() {
                    let field = fields[at];
                    let value = if is_missing(field) {
                        if missing == Missing::Reject && readings[f] == Reading::Number {
                            return Err(error(
                                line,
                                header[at],
                                "missing value (set missing = \"mean\" to impute)".into(),
                            ));
                        }
                        f64::NAN
                    } else if let Some(dictionary) = &mut dictionaries[f] {
                        let code = *codes[f].entry(field.to_owned()).or_insert_with(|| {
                            dictionary.push(field.to_owned());
                            dictionary.len() - 1
                        });
                        code as f64
                    } else {
                        match field.parse::<f64>() {
                            Ok(v) if v.is_finite() => v,
                            _ => {
                                return Err(error(
                                    line,
                                    header[at],
                                    format!(
                                        "{field:?} is not a finite number (bin a text column \
                                         as categorical)"
                                    ),
                                ))
                            }
                        }
                    };
                    values.push(value);
                }
                Ok(())
            };
            match row() {
                Ok(()) => ids.push(fields[id_at].to_owned()),
                Err(e) if keep_going => {
                    values.truncate(width);
                    labels.truncate(labelled);
                    bad_rows.push((fields.get(id_at).copied().unwrap_or("").to_owned(), e));
                }
                Err(e) => return Err(e),
            }
        }
        if ids.is_empty() && bad_rows.is_empty() {
            return Err(error(2, "", "no data rows after the header".into()));
        }
        let table = Table {
            ids,
            feature_names: feature_at.iter().map(|&i| header[i].to_owned()).collect(),
            values,
            labels: label_at.map(|_| labels),
            missing,
            dictionaries,
        };
        Ok((table, bad_rows))
    }

    /// SHA-256 of everything the table holds (ids, column names, values, labels, text
    /// columns' dictionaries): equal digests mean the same table, bit for bit.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut digest = Sha256::new();
        let text = |digest: &mut Sha256, s: &str| {
            digest.update((s.len() as u64).to_le_bytes());
            digest.update(s.as_bytes());
        };
        digest.update(b"unseen table v1");
        for list in [&self.ids, &self.feature_names] {
            digest.update((list.len() as u64).to_le_bytes());
            for s in list {
                text(&mut digest, s);
            }
        }
        for v in self.values.iter().chain(self.labels.iter().flatten()) {
            digest.update(v.to_bits().to_le_bytes());
        }
        digest.update([u8::from(self.labels.is_some())]);
        for dictionary in &self.dictionaries {
            let words = dictionary.as_deref().unwrap_or_default();
            digest.update((words.len() as u64).to_le_bytes());
            for word in words {
                text(&mut digest, word);
            }
        }
        digest.finalize().into()
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    /// Number of feature columns.
    pub fn features(&self) -> usize {
        self.feature_names.len()
    }

    /// Row ids, in row order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Feature column names.
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// Row-major feature values (NaN = missing).
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// The 0/1 labels, if this table has them.
    pub fn labels(&self) -> Option<&[f64]> {
        self.labels.as_deref()
    }

    /// The text of a text column's cell: `None` for a missing cell, or when the column is
    /// numeric.
    pub fn text(&self, row: usize, column: usize) -> Option<&str> {
        let code = self.values[row * self.features() + column];
        let dictionary = self.dictionaries[column].as_ref()?;
        (!code.is_nan()).then(|| dictionary[code as usize].as_str())
    }

    /// Feature columns `columns`, each copied out of the rows (row-major tables make a column
    /// a strided read; this reads tiles of rows instead, once for all the columns).
    pub(crate) fn columns(&self, columns: &[usize]) -> Vec<Vec<f64>> {
        const TILE: usize = 256;
        let width = self.features();
        let mut out: Vec<Vec<f64>> = columns
            .iter()
            .map(|_| Vec::with_capacity(self.rows()))
            .collect();
        for tile in self.values.chunks(TILE * width.max(1)) {
            for (column, &c) in out.iter_mut().zip(columns) {
                column.extend(tile.chunks_exact(width).map(|row| row[c]));
            }
        }
        out
    }

    /// The distinct texts of a text column, `None` for a numeric column.
    pub fn dictionary(&self, column: usize) -> Option<&[String]> {
        self.dictionaries[column].as_deref()
    }

    /// Whether feature column `column` holds text.
    pub fn is_text(&self, column: usize) -> bool {
        self.dictionaries[column].is_some()
    }

    /// The missing-value policy the table was read with.
    pub fn missing(&self) -> Missing {
        self.missing
    }

    /// The rows at `rows`, in that order (e.g. the aligned order PSI produced).
    pub fn select_rows(&self, rows: &[usize]) -> Result<Table, FedError> {
        let width = self.features();
        let mut values = Vec::with_capacity(rows.len() * width);
        let mut ids = Vec::with_capacity(rows.len());
        for &row in rows {
            if row >= self.rows() {
                return Err(FedError::LengthMismatch {
                    what: "selected row index vs table rows",
                    expected: self.rows(),
                    got: row,
                });
            }
            ids.push(self.ids[row].clone());
            values.extend_from_slice(&self.values[row * width..(row + 1) * width]);
        }
        let labels = self
            .labels
            .as_ref()
            .map(|l| rows.iter().map(|&r| l[r]).collect());
        Ok(Table {
            ids,
            feature_names: self.feature_names.clone(),
            values,
            labels,
            missing: self.missing,
            dictionaries: self.dictionaries.clone(),
        })
    }

    /// The columns at `columns` (by name), for splitting one file between simulated parties.
    pub fn select_columns(&self, names: &[&str]) -> Result<Table, FedError> {
        let at: Vec<usize> = names
            .iter()
            .map(|name| {
                self.feature_names
                    .iter()
                    .position(|f| f == name)
                    .ok_or_else(|| FedError::Model {
                        source_name: "table".into(),
                        reason: format!("no feature column {name:?}"),
                    })
            })
            .collect::<Result<_, _>>()?;
        let width = self.features();
        let values = (0..self.rows())
            .flat_map(|row| at.iter().map(move |&c| self.values[row * width + c]))
            .collect();
        Ok(Table {
            ids: self.ids.clone(),
            feature_names: names.iter().map(|n| (*n).to_owned()).collect(),
            values,
            labels: self.labels.clone(),
            missing: self.missing,
            dictionaries: at.iter().map(|&c| self.dictionaries[c].clone()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn for_scoring_a_bad_row_is_set_aside_alone() {
        let text = "id,a,b\nx,1,2\ny,oops,3\nz,,4\nshort\nw,5,6\n";
        let (table, bad) =
            Table::parse_csv_rows("f.csv", text, "id", Missing::Reject, &|_| Reading::Number)
                .unwrap();
        assert_eq!(table.ids(), ["x", "w"]);
        assert_eq!(table.values(), [1.0, 2.0, 5.0, 6.0]);
        let bad: Vec<(String, String)> =
            bad.into_iter().map(|(id, e)| (id, e.to_string())).collect();
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert_eq!(bad[0].0, "y");
        assert!(
            bad[0].1.contains("line 3") && bad[0].1.contains("oops"),
            "{bad:?}"
        );
        assert_eq!(bad[1].0, "z");
        assert!(bad[1].1.contains("missing value"), "{bad:?}");
        assert_eq!(bad[2].0, "short");
        // The strict reader refuses the same text at its first bad cell.
        let strict = Table::parse_csv("f.csv", text, "id", None, Missing::Reject, &|_| {
            Reading::Number
        });
        assert!(strict.unwrap_err().to_string().contains("line 3"));
    }

    #[test]
    fn parses_and_names_bad_cells() {
        let table = Table::parse_csv(
            "bank.csv",
            "id,y,a,b\nx1,1,0.5,2\nx2,0,-1,3e1\n",
            "id",
            Some("y"),
            Missing::Reject,
            &|_| Reading::Number,
        )
        .unwrap();
        assert_eq!(table.rows(), 2);
        assert_eq!(table.feature_names(), ["a", "b"]);
        assert_eq!(table.values(), [0.5, 2.0, -1.0, 30.0]);
        assert_eq!(table.labels(), Some(&[1.0, 0.0][..]));

        let err = |text: &str, missing| {
            Table::parse_csv("bank.csv", text, "id", Some("y"), missing, &|_| {
                Reading::Number
            })
            .unwrap_err()
        };
        let FedError::Csv { line, column, .. } = err("id,y,a\nx,1,2\nz,1,abc\n", Missing::Reject)
        else {
            panic!()
        };
        assert_eq!((line, column.as_str()), (3, "a"));
        let FedError::Csv { line, column, .. } = err("id,y,a\nx,2,2\n", Missing::Reject) else {
            panic!()
        };
        assert_eq!((line, column.as_str()), (2, "y"));
        let FedError::Csv { line, column, .. } = err("id,y,a\nx,1,NA\n", Missing::Reject) else {
            panic!()
        };
        assert_eq!((line, column.as_str()), (2, "a"));
        assert!(matches!(
            err("id,y,a\nx,1\n", Missing::Reject),
            FedError::Csv { line: 2, .. }
        ));
        assert!(matches!(
            err("id,a\nx,1\n", Missing::Reject),
            FedError::Csv { line: 1, .. }
        ));
        assert!(matches!(
            err("", Missing::Reject),
            FedError::Csv { line: 1, .. }
        ));
        assert!(matches!(
            err("id,y,a\n", Missing::Reject),
            FedError::Csv { line: 2, .. }
        ));
        assert!(matches!(
            err("id,y,a\nx,1,inf\n", Missing::Mean),
            FedError::Csv { line: 2, .. }
        ));

        let imputed = Table::parse_csv(
            "t",
            "id,y,a\nx,1,\ny,0,2\n",
            "id",
            Some("y"),
            Missing::Mean,
            &|_| Reading::Number,
        )
        .unwrap();
        assert!(imputed.values()[0].is_nan());
    }
}
