//! A party's data: named numeric feature columns, optional 0/1 labels, read from CSV.
//!
//! Reading is pure: the caller opens the source and hands over a reader (a file, or text in
//! memory), and errors name the source the caller passed in, the line and the column.

use ndarray::{Array2, ArrayView2, Axis};

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

/// Rows of one party: ids, named feature columns (a rows × features array in row-major
/// layout, missing values are NaN) and, for the guest, 0/1 labels. A text column holds, per
/// row, the index of its value in the column's dictionary.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    ids: Ids,
    feature_names: Vec<String>,
    values: Array2<f64>,
    labels: Option<Vec<f64>>,
    missing: Missing,
    /// Per feature column: its dictionary if it is a text column.
    dictionaries: Vec<Option<Vec<String>>>,
}

/// A table's row ids, packed: their bytes end to end and where each ends (22 bytes for a
/// 14-byte id, against 56 as one `String` each: at ten million rows, the difference is a
/// third of a gigabyte).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ids {
    text: String,
    ends: Vec<u64>,
}

impl Ids {
    /// Appends an id.
    pub fn push(&mut self, id: &str) {
        self.text.push_str(id);
        self.ends.push(self.text.len() as u64);
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Id `row`, if there is one.
    pub fn get(&self, row: usize) -> Option<&str> {
        let end = *self.ends.get(row)? as usize;
        let start = row.checked_sub(1).map_or(0, |r| self.ends[r] as usize);
        Some(&self.text[start..end])
    }

    /// The ids in row order.
    pub fn iter(&self) -> IdsIter<'_> {
        IdsIter { ids: self, row: 0 }
    }

    /// The ids as strings of their own.
    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_owned).collect()
    }

    /// Ids from their text end to end and where each ends (as [`Ids::push`] keeps them), for a
    /// caller that places ids out of order; `None` unless `ends` ascend to the text's length on
    /// character boundaries.
    pub fn from_parts(text: String, ends: Vec<u64>) -> Option<Ids> {
        let mut start = 0u64;
        for &end in &ends {
            if end < start || end > text.len() as u64 || !text.is_char_boundary(end as usize) {
                return None;
            }
            start = end;
        }
        (start == text.len() as u64).then_some(Ids { text, ends })
    }
}

/// Rows read in chunks ([`Table::read_csv_chunks`], [`TableBuilder::take_chunk`]): what a
/// caller that keeps rows elsewhere than in memory (a node's disk) takes, chunk by chunk.
/// The table returned at the end holds the columns, with the text columns' dictionaries.
#[derive(Debug, Default)]
pub struct Chunk {
    /// The rows' ids.
    pub ids: Ids,
    /// The rows' feature values, row by row (features per row: the table's column count);
    /// a text column holds the index of the value in its dictionary.
    pub values: Vec<f64>,
    /// The rows' 0/1 labels (empty without a label column).
    pub labels: Vec<f64>,
}

/// Rows per chunk of [`Table::read_csv_chunks`].
pub const CHUNK_ROWS: usize = 1 << 16;

impl std::ops::Index<usize> for Ids {
    type Output = str;

    /// Id `row`; panics beyond the last, like a slice.
    fn index(&self, row: usize) -> &str {
        match self.get(row) {
            Some(id) => id,
            None => panic!("row {row} of {} ids", self.len()),
        }
    }
}

/// The ids of an [`Ids`] in row order.
#[derive(Clone, Debug)]
pub struct IdsIter<'a> {
    ids: &'a Ids,
    row: usize,
}

impl<'a> Iterator for IdsIter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let id = self.ids.get(self.row)?;
        self.row += 1;
        Some(id)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.ids.len() - self.row;
        (left, Some(left))
    }
}

impl ExactSizeIterator for IdsIter<'_> {}

impl<'a> IntoIterator for &'a Ids {
    type Item = &'a str;
    type IntoIter = IdsIter<'a>;

    fn into_iter(self) -> IdsIter<'a> {
        self.iter()
    }
}

impl<'a> FromIterator<&'a str> for Ids {
    fn from_iter<I: IntoIterator<Item = &'a str>>(iter: I) -> Ids {
        let mut ids = Ids::default();
        for id in iter {
            ids.push(id);
        }
        ids
    }
}

fn is_missing(field: &str) -> bool {
    field.is_empty()
        || ["na", "nan", "null"]
            .iter()
            .any(|m| field.eq_ignore_ascii_case(m))
}

/// `input` without a leading UTF-8 byte order mark (before the CSV reader sees it, so a quoted
/// first field after one is still read as quoted).
fn without_bom<R: std::io::Read>(
    mut input: R,
) -> std::io::Result<std::io::Chain<std::io::Cursor<Vec<u8>>, R>> {
    const BOM: &[u8] = b"\xef\xbb\xbf";
    let mut start = Vec::with_capacity(BOM.len());
    while start.len() < BOM.len() {
        let mut byte = [0u8];
        match input.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => start.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if !BOM.starts_with(&start) {
            break;
        }
    }
    if start == BOM {
        start.clear();
    }
    Ok(std::io::Read::chain(std::io::Cursor::new(start), input))
}

/// How a CSV file is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CsvFormat {
    /// The field delimiter (one ASCII byte: `,` by default, `;` or a tab are common).
    pub delimiter: u8,
}

impl Default for CsvFormat {
    fn default() -> Self {
        CsvFormat { delimiter: b',' }
    }
}

/// `values` in row-major layout (a table's rows are read whole, and contiguous).
fn row_major(values: Array2<f64>) -> Array2<f64> {
    if values.is_standard_layout() {
        values
    } else {
        values.as_standard_layout().into_owned()
    }
}

/// One cell of a typed source (a Parquet file, say), as a [`TableBuilder`] takes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cell<'a> {
    /// A null.
    Missing,
    /// An integer: an id or a category keeps its decimal digits exactly.
    Integer(i64),
    /// A floating-point number (NaN is missing).
    Number(f64),
    /// A decimal, `digits` × 10^−`scale` (a Parquet decimal, or an unsigned integer beyond
    /// i64): an id or a category keeps its exact decimal text.
    Decimal(i128, i8),
    /// Text, read as a CSV field is (empty, `NA`, `NaN` and `null` are missing).
    Text(&'a str),
}

impl Cell<'_> {
    fn is_missing(&self) -> bool {
        match self {
            Cell::Missing => true,
            Cell::Integer(_) | Cell::Decimal(..) => false,
            Cell::Number(v) => v.is_nan(),
            Cell::Text(t) => is_missing(t),
        }
    }

    /// The cell as text, as a category's key or an id: integers and decimals exactly.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Cell::Missing => "".into(),
            Cell::Integer(i) => i.to_string().into(),
            Cell::Number(v) => v.to_string().into(),
            Cell::Decimal(digits, scale) => decimal_text(*digits, *scale).into(),
            Cell::Text(t) => (*t).into(),
        }
    }

    /// The cell as a number, if it is one.
    fn number(&self) -> Option<f64> {
        match self {
            Cell::Missing => None,
            Cell::Integer(i) => Some(*i as f64),
            Cell::Number(v) => Some(*v),
            Cell::Decimal(digits, scale) => Some(match *scale {
                s if s >= 0 => *digits as f64 / 10f64.powi(i32::from(s)),
                s => *digits as f64 * 10f64.powi(-i32::from(s)),
            }),
            Cell::Text(field) => field.parse::<f64>().ok(),
        }
    }
}

/// `digits` × 10^−`scale` written out exactly: `12345, 2` → "123.45", `-5, 2` → "-0.05",
/// `7, -2` → "700".
fn decimal_text(digits: i128, scale: i8) -> String {
    let sign = if digits < 0 { "-" } else { "" };
    let magnitude = digits.unsigned_abs().to_string();
    if scale <= 0 {
        let zeros = if digits == 0 {
            0
        } else {
            usize::from(scale.unsigned_abs())
        };
        return format!("{sign}{magnitude}{}", "0".repeat(zeros));
    }
    let scale = usize::from(scale.unsigned_abs());
    let padded = format!("{magnitude:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    format!("{sign}{whole}.{fraction}")
}

/// Which columns a table is read from, and how.
struct Columns<'a> {
    id: &'a str,
    label: Option<&'a str>,
    missing: Missing,
    reading: &'a dyn Fn(&str) -> Reading,
}

/// A table being read row by row, from whatever source: the header's layout, then rows of
/// text fields. Errors come from the caller's `error(column, reason)`, which knows the source
/// and the row's position.
struct Rows {
    names: Vec<String>,
    id_at: usize,
    label_at: Option<usize>,
    feature_at: Vec<usize>,
    readings: Vec<Reading>,
    dictionaries: Vec<Option<Vec<String>>>,
    codes: Vec<std::collections::HashMap<String, usize>>,
    ids: Ids,
    values: Vec<f64>,
    labels: Vec<f64>,
    missing: Missing,
    /// Rows handed out in chunks so far.
    taken: usize,
}

type CellError<'e> = &'e dyn Fn(&str, String) -> FedError;

impl Rows {
    /// The layout of `header`: where the id, the label and the features read are.
    fn start(
        header: &[String],
        columns: &Columns<'_>,
        error: CellError<'_>,
    ) -> Result<Rows, FedError> {
        let find = |name: &str| {
            header
                .iter()
                .position(|h| h == name)
                .ok_or_else(|| error(name, format!("no such column; the header has {header:?}")))
        };
        let id_at = find(columns.id)?;
        let label_at = columns.label.map(find).transpose()?;
        for (i, name) in header.iter().enumerate() {
            if header[..i].contains(name) {
                return Err(error(name, "the column name appears twice".into()));
            }
        }
        let (feature_at, readings): (Vec<usize>, Vec<Reading>) = (0..header.len())
            .filter(|&i| i != id_at && Some(i) != label_at)
            .map(|i| (i, (columns.reading)(&header[i])))
            .filter(|(_, r)| *r != Reading::Skip)
            .unzip();
        Ok(Rows {
            names: header.to_vec(),
            id_at,
            label_at,
            dictionaries: readings
                .iter()
                .map(|r| (*r == Reading::Text).then(Vec::new))
                .collect(),
            codes: vec![Default::default(); feature_at.len()],
            feature_at,
            readings,
            ids: Ids::default(),
            values: Vec::new(),
            labels: Vec::new(),
            missing: columns.missing,
            taken: 0,
        })
    }

    /// The rows added since the last chunk, leaving the columns and dictionaries.
    fn take(&mut self) -> Chunk {
        self.taken += self.ids.len();
        Chunk {
            ids: std::mem::take(&mut self.ids),
            values: std::mem::take(&mut self.values),
            labels: std::mem::take(&mut self.labels),
        }
    }

    /// Whether no row was added at all.
    fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.taken == 0
    }

    /// Adds one row of cells; on an error, adds nothing.
    fn push(&mut self, cells: &[Cell<'_>], error: CellError<'_>) -> Result<(), FedError> {
        let (values, labels) = (self.values.len(), self.labels.len());
        let pushed = self.push_cells(cells, error);
        if pushed.is_err() {
            self.values.truncate(values);
            self.labels.truncate(labels);
        }
        pushed
    }

    fn push_cells(&mut self, cells: &[Cell<'_>], error: CellError<'_>) -> Result<(), FedError> {
        let names = &self.names;
        if cells.len() != names.len() {
            return Err(error(
                "",
                format!("{} fields, the header has {}", cells.len(), names.len()),
            ));
        }
        if let Some(at) = self.label_at {
            let label = match cells[at] {
                Cell::Text("0" | "0.0") => Some(0.0),
                Cell::Text("1" | "1.0") => Some(1.0),
                Cell::Text(_) => None,
                // -0.0 is 0.
                typed => typed
                    .number()
                    .filter(|y| *y == 0.0 || *y == 1.0)
                    .map(f64::abs),
            };
            let Some(label) = label else {
                let other = cells[at].text();
                return Err(error(&names[at], format!("label {other:?} is not 0 or 1")));
            };
            self.labels.push(label);
        }
        for (f, &at) in self.feature_at.iter().enumerate() {
            let cell = cells[at];
            let value = if cell.is_missing() {
                if self.missing == Missing::Reject && self.readings[f] == Reading::Number {
                    return Err(error(
                        &names[at],
                        "missing value (set missing = \"mean\" to impute)".into(),
                    ));
                }
                f64::NAN
            } else if let Some(dictionary) = &mut self.dictionaries[f] {
                let key = cell.text();
                let code = match self.codes[f].get(key.as_ref()) {
                    Some(code) => *code,
                    None => {
                        dictionary.push(key.clone().into_owned());
                        self.codes[f].insert(key.into_owned(), dictionary.len() - 1);
                        dictionary.len() - 1
                    }
                };
                code as f64
            } else {
                match cell.number() {
                    Some(v) if v.is_finite() => v,
                    _ => {
                        let field = cell.text();
                        return Err(error(
                            &names[at],
                            format!(
                                "{field:?} is not a finite number (bin a text column as \
                                 categorical)"
                            ),
                        ));
                    }
                }
            };
            self.values.push(value);
        }
        let id = cells[self.id_at];
        if id.is_missing() && !matches!(id, Cell::Text(_)) {
            return Err(error(&names[self.id_at], "the id is missing".into()));
        }
        self.ids.push(&id.text());
        Ok(())
    }

    /// The table of the rows added.
    fn finish(self) -> Result<Table, FedError> {
        let shape = (self.ids.len(), self.feature_at.len());
        let values =
            Array2::from_shape_vec(shape, self.values).map_err(|_| FedError::LengthMismatch {
                what: "table values (rows × features)",
                expected: shape.0 * shape.1,
                got: 0,
            })?;
        Ok(Table {
            ids: self.ids,
            feature_names: self
                .feature_at
                .iter()
                .map(|&i| self.names[i].clone())
                .collect(),
            values,
            labels: self.label_at.map(|_| self.labels),
            missing: self.missing,
            dictionaries: self.dictionaries,
        })
    }
}

/// A table built from a typed source (a Parquet file, say) row by row: the caller reads the
/// source and hands over each row's cells in the order of the header it started with. Errors
/// name `source`, the data row (from 1) and the column.
pub struct TableBuilder {
    rows: Rows,
    source: String,
    row: usize,
    keep_going: bool,
    bad_rows: Vec<(String, FedError)>,
}

impl TableBuilder {
    /// Starts a table whose rows have the columns of `header`: `id_column` the ids,
    /// `label_column` the 0/1 labels (guest only), every other column a feature read as
    /// `reading` says for its name. With `keep_going` (scoring), a row with a cell that
    /// cannot be read is left out and kept with its id and error; otherwise it fails the
    /// table.
    pub fn new(
        source: &str,
        header: &[String],
        id_column: &str,
        label_column: Option<&str>,
        missing: Missing,
        reading: &dyn Fn(&str) -> Reading,
        keep_going: bool,
    ) -> Result<TableBuilder, FedError> {
        let columns = Columns {
            id: id_column,
            label: label_column,
            missing,
            reading,
        };
        // The schema, not a row, is at fault.
        let error = |column: &str, reason: String| FedError::Columns {
            source_name: source.to_owned(),
            column: column.to_owned(),
            reason,
        };
        Ok(TableBuilder {
            rows: Rows::start(header, &columns, &error)?,
            source: source.to_owned(),
            row: 0,
            keep_going,
            bad_rows: Vec::new(),
        })
    }

    /// Whether the table reads column `index` of the header (the id, the label or a feature
    /// not skipped): a source need not read the others (give them as [`Cell::Missing`]).
    pub fn reads(&self, index: usize) -> bool {
        index == self.rows.id_at
            || Some(index) == self.rows.label_at
            || self.rows.feature_at.contains(&index)
    }

    /// Adds the next row.
    pub fn push(&mut self, cells: &[Cell<'_>]) -> Result<(), FedError> {
        self.row += 1;
        let (source, row) = (&self.source, self.row);
        let error = |column: &str, reason: String| FedError::Row {
            source_name: source.clone(),
            row,
            column: column.to_owned(),
            reason,
        };
        match self.rows.push(cells, &error) {
            Err(e) if self.keep_going => {
                let id = cells.get(self.rows.id_at).map(|c| c.text().into_owned());
                self.bad_rows.push((id.unwrap_or_default(), e));
                Ok(())
            }
            pushed => pushed,
        }
    }

    /// The rows pushed since the last chunk, to keep elsewhere; the table that
    /// [`TableBuilder::finish`] then returns holds only the rows pushed after the last chunk
    /// taken (the columns and dictionaries of all).
    pub fn take_chunk(&mut self) -> Chunk {
        self.rows.take()
    }

    /// The rows pushed since the last chunk taken.
    pub fn pending(&self) -> usize {
        self.rows.ids.len()
    }

    /// The table, and with `keep_going` the rows left out; refused without any row.
    pub fn finish(self) -> Result<(Table, Vec<(String, FedError)>), FedError> {
        if self.rows.is_empty() && self.bad_rows.is_empty() {
            return Err(FedError::Row {
                source_name: self.source,
                row: 1,
                column: String::new(),
                reason: "no data rows".into(),
            });
        }
        Ok((self.rows.finish()?, self.bad_rows))
    }
}

impl Table {
    /// Builds a table from a rows × features array; NaN marks a missing value and is refused
    /// unless `missing` is [`Missing::Mean`].
    pub fn new(
        ids: Vec<String>,
        feature_names: Vec<String>,
        values: Array2<f64>,
        labels: Option<Vec<f64>>,
        missing: Missing,
    ) -> Result<Table, FedError> {
        let ids = ids.iter().map(String::as_str).collect();
        Table::with_ids(ids, feature_names, values, labels, missing)
    }

    /// [`Table::new`] with packed ids (a table derived from another keeps its ids without
    /// a string per row).
    pub(crate) fn with_ids(
        ids: Ids,
        feature_names: Vec<String>,
        values: Array2<f64>,
        labels: Option<Vec<f64>>,
        missing: Missing,
    ) -> Result<Table, FedError> {
        let width = feature_names.len();
        if values.dim() != (ids.len(), width) {
            return Err(FedError::LengthMismatch {
                what: "table values (rows × features)",
                expected: ids.len() * width,
                got: values.len(),
            });
        }
        let values = row_major(values);
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
        for ((row, column), value) in values.indexed_iter() {
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

    /// Parses CSV text with a header row and comma delimiters (see [`Table::read_csv`]).
    pub fn parse_csv(
        source: &str,
        text: &str,
        id_column: &str,
        label_column: Option<&str>,
        missing: Missing,
        reading: &dyn Fn(&str) -> Reading,
    ) -> Result<Table, FedError> {
        let format = CsvFormat::default();
        let columns = Columns {
            id: id_column,
            label: label_column,
            missing,
            reading,
        };
        Table::read(source, text.as_bytes(), format, &columns, false, None).map(|(table, _)| table)
    }

    /// Reads CSV (RFC 4180: quoted fields may hold delimiters, quotes and line breaks; a
    /// UTF-8 byte order mark and CRLF line ends are accepted) with a header row, record by
    /// record: memory holds the table, not the file. `id_column` names the id column,
    /// `label_column` the 0/1 label (guest only); every other column is a feature, read as
    /// `reading` says for its name. Errors name `source`, the line a record starts on and the
    /// column.
    pub fn read_csv(
        source: &str,
        input: impl std::io::Read,
        format: CsvFormat,
        id_column: &str,
        label_column: Option<&str>,
        missing: Missing,
        reading: &dyn Fn(&str) -> Reading,
    ) -> Result<Table, FedError> {
        let columns = Columns {
            id: id_column,
            label: label_column,
            missing,
            reading,
        };
        Table::read(source, input, format, &columns, false, None).map(|(table, _)| table)
    }

    /// [`Table::read_csv`] handing the rows to `sink` in chunks of [`CHUNK_ROWS`] as they are
    /// read, so memory holds one chunk; returns the table of the columns (no rows), with the
    /// text columns' dictionaries of the whole input.
    #[allow(clippy::too_many_arguments)]
    pub fn read_csv_chunks(
        source: &str,
        input: impl std::io::Read,
        format: CsvFormat,
        id_column: &str,
        label_column: Option<&str>,
        missing: Missing,
        reading: &dyn Fn(&str) -> Reading,
        sink: &mut dyn FnMut(Chunk) -> Result<(), FedError>,
    ) -> Result<Table, FedError> {
        let columns = Columns {
            id: id_column,
            label: label_column,
            missing,
            reading,
        };
        Table::read(source, input, format, &columns, false, Some(sink)).map(|(table, _)| table)
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
        Table::read_csv_rows(
            source,
            text.as_bytes(),
            CsvFormat::default(),
            id_column,
            missing,
            reading,
        )
    }

    /// [`Table::read_csv`] for scoring, as [`Table::parse_csv_rows`] reads text.
    pub fn read_csv_rows(
        source: &str,
        input: impl std::io::Read,
        format: CsvFormat,
        id_column: &str,
        missing: Missing,
        reading: &dyn Fn(&str) -> Reading,
    ) -> Result<(Table, Vec<(String, FedError)>), FedError> {
        let columns = Columns {
            id: id_column,
            label: None,
            missing,
            reading,
        };
        Table::read(source, input, format, &columns, true, None)
    }

    fn read(
        source: &str,
        input: impl std::io::Read,
        format: CsvFormat,
        columns: &Columns<'_>,
        keep_going: bool,
        mut sink: Option<&mut dyn FnMut(Chunk) -> Result<(), FedError>>,
    ) -> Result<(Table, Vec<(String, FedError)>), FedError> {
        let error = |line: u64, column: &str, reason: String| FedError::Csv {
            source_name: source.to_owned(),
            line: line as usize,
            column: column.to_owned(),
            reason,
        };
        let input = without_bom(input).map_err(|e| error(1, "", format!("cannot be read: {e}")))?;
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(format.delimiter)
            .has_headers(false)
            // Rows of another width are this reader's error to name, by line.
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(input);
        let mut record = csv::ByteRecord::new();
        let mut next = |record: &mut csv::ByteRecord| -> Result<Option<u64>, FedError> {
            match reader.read_byte_record(record) {
                Ok(true) => Ok(Some(record.position().map_or(0, |p| p.line()))),
                Ok(false) => Ok(None),
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line());
                    Err(error(line, "", format!("cannot be read: {e}")))
                }
            }
        };
        if next(&mut record)?.is_none() {
            return Err(error(
                1,
                "",
                "the file is empty; expected a header row".into(),
            ));
        }
        let header = (record.iter().enumerate())
            .map(|(i, field)| {
                std::str::from_utf8(field)
                    .map(str::to_owned)
                    .map_err(|_| error(1, &format!("#{}", i + 1), "not UTF-8 text".into()))
            })
            .collect::<Result<Vec<String>, FedError>>()?;
        let mut rows = Rows::start(&header, columns, &|column, reason| error(1, column, reason))?;
        let mut bad_rows = Vec::new();
        while let Some(line) = next(&mut record)? {
            // A blank line holds no row.
            if record.len() == 1 && record[0].is_empty() {
                continue;
            }
            let cell = |column: &str, reason: String| error(line, column, reason);
            let fields = (record.iter().enumerate())
                .map(|(i, field)| match std::str::from_utf8(field) {
                    Ok(text) => Ok(Cell::Text(text)),
                    Err(_) => Err(cell(
                        header.get(i).map_or("", String::as_str),
                        "not UTF-8 text".into(),
                    )),
                })
                .collect::<Result<Vec<Cell<'_>>, FedError>>();
            if let Err(e) = fields.and_then(|fields| rows.push(&fields, &cell)) {
                if !keep_going {
                    return Err(e);
                }
                let id = (record.get(rows.id_at))
                    .and_then(|id| std::str::from_utf8(id).ok())
                    .unwrap_or("");
                bad_rows.push((id.to_owned(), e));
            }
            if let Some(sink) = sink.as_mut().filter(|_| rows.ids.len() >= CHUNK_ROWS) {
                sink(rows.take())?;
            }
        }
        if rows.is_empty() && bad_rows.is_empty() {
            return Err(error(2, "", "no data rows after the header".into()));
        }
        if let Some(sink) = sink.as_mut().filter(|_| !rows.ids.is_empty()) {
            sink(rows.take())?;
        }
        Ok((rows.finish()?, bad_rows))
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
        digest.update((self.ids.len() as u64).to_le_bytes());
        for id in &self.ids {
            text(&mut digest, id);
        }
        digest.update((self.feature_names.len() as u64).to_le_bytes());
        for name in &self.feature_names {
            text(&mut digest, name);
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
    pub fn ids(&self) -> &Ids {
        &self.ids
    }

    /// Feature column names.
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// The feature values, rows × features (NaN = missing).
    pub fn values(&self) -> ArrayView2<'_, f64> {
        self.values.view()
    }

    /// The 0/1 labels, if this table has them.
    pub fn labels(&self) -> Option<&[f64]> {
        self.labels.as_deref()
    }

    /// The text of a text column's cell: `None` for a missing cell, or when the column is
    /// numeric.
    pub fn text(&self, row: usize, column: usize) -> Option<&str> {
        let code = self.values[[row, column]];
        let dictionary = self.dictionaries[column].as_ref()?;
        (!code.is_nan()).then(|| dictionary[code as usize].as_str())
    }

    /// Feature columns `columns`, each copied out of the rows (in a row-major table a column
    /// is a strided read; this reads tiles of rows instead, once for all the columns).
    pub(crate) fn columns(&self, columns: &[usize]) -> Vec<Vec<f64>> {
        const TILE: usize = 256;
        let mut out: Vec<Vec<f64>> = columns
            .iter()
            .map(|_| Vec::with_capacity(self.rows()))
            .collect();
        for tile in self.values.axis_chunks_iter(Axis(0), TILE) {
            for (column, &c) in out.iter_mut().zip(columns) {
                column.extend(tile.column(c).iter());
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
        if let Some(&row) = rows.iter().find(|&&row| row >= self.rows()) {
            return Err(FedError::LengthMismatch {
                what: "selected row index vs table rows",
                expected: self.rows(),
                got: row,
            });
        }
        let ids = rows.iter().map(|&row| &self.ids[row]).collect();
        let values = row_major(self.values.select(Axis(0), rows));
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
        let values = row_major(self.values.select(Axis(1), &at));
        Ok(Table {
            ids: self.ids.clone(),
            feature_names: names.iter().map(|n| (*n).to_owned()).collect(),
            values,
            labels: self.labels.clone(),
            missing: self.missing,
            dictionaries: at.iter().map(|&c| self.dictionaries[c].clone()).collect(),
        })
    }

    /// A table of this one's columns (names, dictionaries, missing-value policy, whether it
    /// has labels) holding the rows of `chunk`: rows read in chunks and kept elsewhere come
    /// back as a table. Refused when the chunk's shape does not fit the columns.
    pub fn with_rows(&self, chunk: Chunk) -> Result<Table, FedError> {
        let (rows, width, got) = (chunk.ids.len(), self.features(), chunk.values.len());
        let values = Array2::from_shape_vec((rows, width), chunk.values).map_err(|_| {
            FedError::LengthMismatch {
                what: "chunk values (rows × features)",
                expected: rows * width,
                got,
            }
        })?;
        let labels = match (&self.labels, chunk.labels) {
            (None, labels) if labels.is_empty() => None,
            (Some(_), labels) if labels.len() == rows => {
                if let Some(row) = labels.iter().position(|&y| y != 0.0 && y != 1.0) {
                    return Err(FedError::BadLabel {
                        row,
                        value: labels[row],
                    });
                }
                Some(labels)
            }
            (_, labels) => {
                return Err(FedError::LengthMismatch {
                    what: "chunk labels",
                    expected: if self.labels.is_some() { rows } else { 0 },
                    got: labels.len(),
                })
            }
        };
        Ok(Table {
            ids: chunk.ids,
            feature_names: self.feature_names.clone(),
            values,
            labels,
            missing: self.missing,
            dictionaries: self.dictionaries.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows read in chunks, put back together, are the table read whole: the dictionaries of
    /// text columns span the chunks, labels and values keep their rows; a chunk of another
    /// shape is refused.
    #[test]
    fn chunks_make_the_table_read_whole() {
        let rows = 2 * CHUNK_ROWS + 17;
        let mut csv = String::from("id,y,amount,region\n");
        for i in 0..rows {
            let region = ["north", "south", "east"][(i * 7 / 5) % 3];
            let line = format!("c{i},{},{}.5,{region}\n", i % 2, i % 101);
            csv.push_str(&line);
        }
        let reading = |c: &str| {
            if c == "region" {
                Reading::Text
            } else {
                Reading::Number
            }
        };
        let read = |sink: Option<&mut dyn FnMut(Chunk) -> Result<(), FedError>>| {
            let columns = Columns {
                id: "id",
                label: Some("y"),
                missing: Missing::Reject,
                reading: &reading,
            };
            let format = CsvFormat::default();
            Table::read("t.csv", csv.as_bytes(), format, &columns, false, sink)
                .unwrap()
                .0
        };
        let whole = read(None);
        let mut all = Chunk::default();
        let mut sizes = Vec::new();
        let schema = read(Some(&mut |chunk: Chunk| {
            sizes.push(chunk.ids.len());
            chunk.ids.iter().for_each(|id| all.ids.push(id));
            all.values.extend(chunk.values);
            all.labels.extend(chunk.labels);
            Ok(())
        }));
        assert_eq!(sizes, [CHUNK_ROWS, CHUNK_ROWS, 17]);
        assert_eq!(schema.rows(), 0);
        assert_eq!(schema.dictionary(1).unwrap().len(), 3);
        assert_eq!(schema.with_rows(all).unwrap(), whole);
        let short = Chunk {
            ids: ["a"].into_iter().collect(),
            values: vec![1.0],
            labels: vec![0.0],
        };
        assert!(schema.with_rows(short).is_err());
    }

    #[test]
    fn packed_ids_give_back_each_id() {
        let given = ["a", "", "Zürich-7", "", "x,y", "長い"];
        let ids: Ids = given.iter().copied().collect();
        assert_eq!(ids.len(), given.len());
        assert_eq!(ids.iter().len(), given.len());
        for (row, id) in given.iter().enumerate() {
            assert_eq!(ids.get(row), Some(*id));
            assert_eq!(&ids[row], *id);
        }
        assert_eq!(ids.get(given.len()), None);
        assert_eq!(ids.to_vec(), given);
        assert!(Ids::default().is_empty() && Ids::default().iter().next().is_none());
        let table = Table::new(
            given.iter().map(|s| s.to_string()).collect(),
            vec![],
            Array2::zeros((6, 0)),
            None,
            Missing::Reject,
        )
        .unwrap();
        let picked = table.select_rows(&[5, 0, 2]).unwrap();
        assert_eq!(picked.ids().to_vec(), ["長い", "a", "Zürich-7"]);
    }

    #[test]
    fn decimals_keep_their_exact_digits() {
        let text = |digits, scale| Cell::Decimal(digits, scale).text().into_owned();
        assert_eq!(text(12345, 2), "123.45");
        assert_eq!(text(-5, 2), "-0.05");
        assert_eq!(text(7, -2), "700");
        assert_eq!(text(0, -2), "0");
        assert_eq!(text(i128::from(u64::MAX), 0), "18446744073709551615");
        assert_eq!(Cell::Decimal(-125, 2).number(), Some(-1.25));
        assert_eq!(Cell::Decimal(3, -1).number(), Some(30.0));
    }

    #[test]
    fn typed_cells_make_the_table_their_text_makes() {
        let text = "id,y,a,kind\n12345678901234567,1,0.25,7\nq,0,-3,x\n";
        let reading = |name: &str| match name {
            "kind" => Reading::Text,
            _ => Reading::Number,
        };
        let from_text =
            Table::parse_csv("f.csv", text, "id", Some("y"), Missing::Reject, &reading).unwrap();
        let header: Vec<String> = ["id", "y", "a", "kind"].map(String::from).to_vec();
        let start = |keep_going| {
            TableBuilder::new(
                "f.parquet",
                &header,
                "id",
                Some("y"),
                Missing::Reject,
                &reading,
                keep_going,
            )
            .unwrap()
        };
        let mut typed = start(false);
        assert!((0..4).all(|i| typed.reads(i)));
        use Cell::{Integer, Number, Text};
        const NULL: Cell<'static> = Cell::Missing;
        typed
            .push(&[
                Integer(12345678901234567),
                Integer(1),
                Number(0.25),
                Integer(7),
            ])
            .unwrap();
        typed
            .push(&[Text("q"), Number(0.0), Integer(-3), Text("x")])
            .unwrap();
        let (from_cells, bad) = typed.finish().unwrap();
        assert!(bad.is_empty());
        assert_eq!(
            from_cells.digest(),
            from_text.digest(),
            "same ids, values, labels, dictionaries"
        );

        // Errors name the source, the data row and the column; a null id is refused.
        let mut typed = start(false);
        typed
            .push(&[Text("a"), Integer(0), Number(1.0), NULL])
            .unwrap();
        let error = typed
            .push(&[Text("b"), Integer(2), Number(1.0), NULL])
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "f.parquet, row 2, column \"y\": label \"2\" is not 0 or 1"
        );
        let error = typed
            .push(&[NULL, Integer(0), Number(1.0), NULL])
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("row 3, column \"id\": the id is missing"),
            "{error}"
        );
        let error = typed
            .push(&[Text("c"), Integer(0), Number(f64::INFINITY), NULL])
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("column \"a\": \"inf\" is not a finite number"),
            "{error}"
        );
        let error = typed
            .push(&[Text("c"), Integer(0), NULL, NULL])
            .unwrap_err();
        assert!(error.to_string().contains("missing value"), "{error}");
        let (table, _) = typed.finish().unwrap();
        assert_eq!(table.ids().to_vec(), ["a"], "a refused row adds nothing");

        // For scoring, a bad row is set aside with its id.
        let mut scoring = start(true);
        scoring
            .push(&[Integer(5), Integer(0), Text("oops"), NULL])
            .unwrap();
        scoring
            .push(&[Integer(6), Integer(1), Number(2.0), Text("k")])
            .unwrap();
        let (table, bad) = scoring.finish().unwrap();
        assert_eq!(table.ids().to_vec(), ["6"]);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, "5");
        assert!(start(false).finish().is_err(), "no rows");
    }

    #[test]
    fn for_scoring_a_bad_row_is_set_aside_alone() {
        let text = "id,a,b\nx,1,2\ny,oops,3\nz,,4\nshort\nw,5,6\n";
        let (table, bad) =
            Table::parse_csv_rows("f.csv", text, "id", Missing::Reject, &|_| Reading::Number)
                .unwrap();
        assert_eq!(table.ids().to_vec(), ["x", "w"]);
        assert_eq!(table.values(), ndarray::arr2(&[[1.0, 2.0], [5.0, 6.0]]));
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
        assert_eq!(table.values(), ndarray::arr2(&[[0.5, 2.0], [-1.0, 30.0]]));
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
        assert!(imputed.values()[[0, 0]].is_nan());
    }

    /// RFC 4180 as spreadsheets and databases write it: quoted fields holding delimiters,
    /// quotes and line breaks, a byte order mark, CRLF line ends, another delimiter; errors
    /// name the line a record starts on.
    #[test]
    fn reads_csv_as_exported() {
        let number = |_: &str| Reading::Number;
        let text = "\u{feff}id,name,a\r\n\"Acme, Ltd.\",\"say \"\"hi\"\"\",1.5\r\n\r\n\
                    \"Two\nlines\",x,2\r\n";
        let text_name = |name: &str| match name {
            "name" => Reading::Text,
            _ => Reading::Number,
        };
        let table = Table::read_csv(
            "export.csv",
            text.as_bytes(),
            CsvFormat::default(),
            "id",
            None,
            Missing::Reject,
            &text_name,
        )
        .unwrap();
        assert_eq!(table.ids().to_vec(), ["Acme, Ltd.", "Two\nlines"]);
        assert_eq!(table.feature_names(), ["name", "a"]);
        assert_eq!(table.dictionary(0).unwrap(), ["say \"hi\"", "x"]);
        assert_eq!(table.values(), ndarray::arr2(&[[0.0, 1.5], [1.0, 2.0]]));

        // A byte order mark before a quoted header field (as R's write.csv writes it).
        let quoted = "\u{feff}\"id\",\"a\"\n\"x\",1\n";
        let table = Table::read_csv(
            "r.csv",
            quoted.as_bytes(),
            CsvFormat::default(),
            "id",
            None,
            Missing::Reject,
            &number,
        )
        .unwrap();
        assert_eq!(
            (table.ids().to_vec(), table.values()),
            (vec!["x".to_string()], ndarray::arr2(&[[1.0]]).view())
        );

        let semicolons = "id;a;b\nx;1,5;2\n";
        let european = CsvFormat { delimiter: b';' };
        let err = Table::read_csv(
            "eu.csv",
            semicolons.as_bytes(),
            european,
            "id",
            None,
            Missing::Reject,
            &number,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("eu.csv") && err.contains("line 2") && err.contains("\"a\""),
            "{err}"
        );
        let table = Table::read_csv(
            "eu.csv",
            "id;a\nx;2.5\n".as_bytes(),
            european,
            "id",
            None,
            Missing::Reject,
            &number,
        )
        .unwrap();
        assert_eq!(table.values(), ndarray::arr2(&[[2.5]]));

        // A record spanning lines 2–3 is followed by one on line 4.
        let FedError::Csv { line, column, .. } = Table::read_csv(
            "f.csv",
            "id,a\n\"x\ny\",1\nz,bad\n".as_bytes(),
            CsvFormat::default(),
            "id",
            None,
            Missing::Reject,
            &number,
        )
        .unwrap_err() else {
            panic!()
        };
        assert_eq!((line, column.as_str()), (4, "a"));

        // Bytes that are not UTF-8 are named by line and column; when scoring, that row alone.
        let latin1 = b"id,a\nx,1\ny,\xe9\nz,3\n";
        let FedError::Csv { line, column, .. } = Table::read_csv(
            "f.csv",
            &latin1[..],
            CsvFormat::default(),
            "id",
            None,
            Missing::Reject,
            &number,
        )
        .unwrap_err() else {
            panic!()
        };
        assert_eq!((line, column.as_str()), (3, "a"));
        let (table, bad) = Table::read_csv_rows(
            "f.csv",
            &latin1[..],
            CsvFormat::default(),
            "id",
            Missing::Reject,
            &number,
        )
        .unwrap();
        assert_eq!(table.ids().to_vec(), ["x", "z"]);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, "y");
    }
}
