//! Parquet files: datasets read into tables (only the columns a job reads, one record batch
//! at a time, so memory holds the table and one batch, not the file), ids read for batch
//! scoring, and score files written.
//!
//! Column types read: integers, floating-point numbers, booleans, decimals and text (plain
//! or dictionary-encoded); nulls are missing values. Other types (dates, binary, nested) are
//! refused, naming the column, unless the table does not read that column.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Decimal128Type, Decimal32Type, Decimal64Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, Float64Array, PrimitiveArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use fedlearn::{Cell, FedError, Missing, Reading, Table, TableBuilder};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};

/// Rows per record batch read.
const BATCH_ROWS: usize = 8192;

/// Whether `path` names a Parquet file (by its extension, `.parquet` or `.parq`).
pub(crate) fn is_parquet(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet") || e.eq_ignore_ascii_case("parq"))
}

/// How a table is read from a file: its columns, and whether a bad row fails it (training)
/// or is set aside with its id (scoring).
pub(crate) struct Layout<'a> {
    pub(crate) id_column: &'a str,
    pub(crate) label_column: Option<&'a str>,
    pub(crate) missing: Missing,
    pub(crate) reading: &'a dyn Fn(&str) -> Reading,
    pub(crate) keep_going: bool,
}

/// Reads a Parquet file into a table. Errors name the file, the data row (from 1) and the
/// column.
pub(crate) fn read_table(
    path: &Path,
    layout: &Layout<'_>,
    mut sink: Option<&mut dyn FnMut(fedlearn::Chunk) -> Result<(), FedError>>,
) -> Result<(Table, Vec<(String, FedError)>), String> {
    let source = path.display().to_string();
    let builder = open(path)?;
    let header: Vec<String> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut table = TableBuilder::new(
        &source,
        &header,
        layout.id_column,
        layout.label_column,
        layout.missing,
        layout.reading,
        layout.keep_going,
    )
    .map_err(|e| e.to_string())?;
    let read: Vec<usize> = (0..header.len()).filter(|&i| table.reads(i)).collect();
    let reader = project(builder.with_batch_size(BATCH_ROWS), &source, &read)?;
    for batch in reader {
        let batch = batch.map_err(|e| format!("{source}: {e}"))?;
        let columns = (batch.columns().iter().zip(&read))
            .map(|(array, &i)| {
                Column::of(array).map_err(|why| unsupported(&source, &header[i], why))
            })
            .collect::<Result<Vec<Column<'_>>, String>>()?;
        let mut cells = vec![Cell::Missing; header.len()];
        for row in 0..batch.num_rows() {
            for (column, &i) in columns.iter().zip(&read) {
                cells[i] = column.cell(row);
            }
            table.push(&cells).map_err(|e| e.to_string())?;
        }
        if let Some(sink) = sink
            .as_mut()
            .filter(|_| table.pending() >= fedlearn::CHUNK_ROWS)
        {
            sink(table.take_chunk()).map_err(|e| e.to_string())?;
        }
    }
    if let Some(sink) = sink.as_mut().filter(|_| table.pending() > 0) {
        sink(table.take_chunk()).map_err(|e| e.to_string())?;
    }
    table.finish().map_err(|e| e.to_string())
}

/// The ids of a Parquet file's column `column`, as text, in batches of about `batch` (the
/// last may be shorter; none once the file is read).
pub(crate) struct Ids {
    source: String,
    reader: ParquetRecordBatchReader,
    column: String,
    /// The data row (from 1) the next batch starts on.
    row: usize,
}

impl Ids {
    /// Opens `path` to read its column `column`.
    pub(crate) fn open(path: &Path, column: &str, batch: usize) -> Result<Ids, String> {
        let source = path.display().to_string();
        let builder = open(path)?;
        let names: Vec<&String> = builder.schema().fields().iter().map(|f| f.name()).collect();
        let at = names.iter().position(|n| *n == column).ok_or_else(|| {
            format!("{source}: no column {column:?} (--id-column); the file has {names:?}")
        })?;
        let reader = project(builder.with_batch_size(batch.max(1)), &source, &[at])?;
        Ok(Ids {
            source,
            reader,
            column: column.to_owned(),
            row: 1,
        })
    }

    /// The next batch of ids with the data row it starts on; a null id is refused, naming
    /// its row.
    pub(crate) fn next_batch(&mut self) -> Result<Option<(usize, Vec<String>)>, String> {
        let Some(batch) = self.reader.next() else {
            return Ok(None);
        };
        let batch = batch.map_err(|e| format!("{}: {e}", self.source))?;
        let column = Column::of(batch.column(0))
            .map_err(|why| unsupported(&self.source, &self.column, why))?;
        let first_row = self.row;
        self.row += batch.num_rows();
        (0..batch.num_rows())
            .map(|row| match column.cell(row) {
                Cell::Missing => Err(format!(
                    "{}, row {}, column {:?}: the id is missing",
                    self.source,
                    first_row + row,
                    self.column
                )),
                cell => Ok(cell.text().into_owned()),
            })
            .collect::<Result<Vec<String>, String>>()
            .map(|ids| Some((first_row, ids)))
    }
}

/// One row of a score file.
pub(crate) struct ScoreRow {
    pub(crate) id: String,
    pub(crate) probability: Option<f64>,
    pub(crate) points: Option<f64>,
    pub(crate) band: Option<String>,
    pub(crate) error: Option<String>,
}

/// A score file being written: `id, probability, points, band, error`, nulls where a row
/// has no value.
pub(crate) struct ScoreWriter {
    writer: ArrowWriter<File>,
    schema: Arc<Schema>,
}

impl ScoreWriter {
    /// Creates `path` (Snappy-compressed pages).
    pub(crate) fn create(path: &Path) -> Result<ScoreWriter, String> {
        let named = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("probability", DataType::Float64, true),
            Field::new("points", DataType::Float64, true),
            Field::new("band", DataType::Utf8, true),
            Field::new("error", DataType::Utf8, true),
        ]));
        let file = File::create(path).map_err(|e| named(&e))?;
        let properties = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build();
        let writer =
            ArrowWriter::try_new(file, schema.clone(), Some(properties)).map_err(|e| named(&e))?;
        Ok(ScoreWriter { writer, schema })
    }

    /// Appends rows.
    pub(crate) fn write(&mut self, rows: &[ScoreRow]) -> Result<(), String> {
        let text = |f: fn(&ScoreRow) -> Option<&str>| -> ArrayRef {
            Arc::new(rows.iter().map(f).collect::<StringArray>())
        };
        let number = |f: fn(&ScoreRow) -> Option<f64>| -> ArrayRef {
            Arc::new(rows.iter().map(f).collect::<Float64Array>())
        };
        let batch = RecordBatch::try_new(
            self.schema.clone(),
            vec![
                text(|r| Some(r.id.as_str())),
                number(|r| r.probability),
                number(|r| r.points),
                text(|r| r.band.as_deref()),
                text(|r| r.error.as_deref()),
            ],
        )
        .map_err(|e| e.to_string())?;
        self.writer.write(&batch).map_err(|e| e.to_string())
    }

    /// Writes the footer and closes the file.
    pub(crate) fn finish(self) -> Result<(), String> {
        self.writer.close().map(|_| ()).map_err(|e| e.to_string())
    }
}

fn open(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, String> {
    let source = path.display();
    let file = File::open(path).map_err(|e| format!("{source}: {e}"))?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| format!("{source}: not a Parquet file this node can read: {e}"))
}

/// A reader of the top-level columns `read` only.
fn project(
    builder: ParquetRecordBatchReaderBuilder<File>,
    source: &str,
    read: &[usize],
) -> Result<ParquetRecordBatchReader, String> {
    let mask = ProjectionMask::roots(builder.parquet_schema(), read.iter().copied());
    builder
        .with_projection(mask)
        .build()
        .map_err(|e| format!("{source}: {e}"))
}

fn unsupported(source: &str, column: &str, data_type: &DataType) -> String {
    format!(
        "{source}, column {column:?}: a {data_type} column cannot be read (numbers, booleans, \
         decimals and text can)"
    )
}

/// One column of a record batch, by the type it holds.
enum Column<'a> {
    Float(&'a dyn Array, Box<dyn Fn(usize) -> f64 + 'a>),
    Integer(&'a dyn Array, Box<dyn Fn(usize) -> i64 + 'a>),
    Text(&'a dyn Array, Box<dyn Fn(usize) -> &'a str + 'a>),
    /// Digits and a decimal scale: decimals, and unsigned integers beyond i64.
    Decimal(&'a dyn Array, Box<dyn Fn(usize) -> i128 + 'a>, i8),
    /// A dictionary-encoded column: per row, the index of its value.
    Dictionary(&'a dyn Array, Vec<usize>, Box<Column<'a>>),
}

impl<'a> Column<'a> {
    fn of(array: &'a ArrayRef) -> Result<Column<'a>, &'a DataType> {
        Column::of_dyn(array.as_ref())
    }

    fn of_dyn(array: &'a dyn Array) -> Result<Column<'a>, &'a DataType> {
        fn float<T>(a: &PrimitiveArray<T>) -> Box<dyn Fn(usize) -> f64 + '_>
        where
            T: arrow_array::ArrowPrimitiveType,
            T::Native: Into<f64>,
        {
            Box::new(move |row| a.value(row).into())
        }
        fn integer<T>(a: &PrimitiveArray<T>) -> Box<dyn Fn(usize) -> i64 + '_>
        where
            T: arrow_array::ArrowPrimitiveType,
            T::Native: Into<i64>,
        {
            Box::new(move |row| a.value(row).into())
        }
        Ok(match array.data_type() {
            DataType::Float64 => Column::Float(array, float(array.as_primitive::<Float64Type>())),
            DataType::Float32 => Column::Float(array, float(array.as_primitive::<Float32Type>())),
            DataType::Int64 => Column::Integer(array, integer(array.as_primitive::<Int64Type>())),
            DataType::Int32 => Column::Integer(array, integer(array.as_primitive::<Int32Type>())),
            DataType::Int16 => Column::Integer(array, integer(array.as_primitive::<Int16Type>())),
            DataType::Int8 => Column::Integer(array, integer(array.as_primitive::<Int8Type>())),
            DataType::UInt32 => Column::Integer(array, integer(array.as_primitive::<UInt32Type>())),
            DataType::UInt16 => Column::Integer(array, integer(array.as_primitive::<UInt16Type>())),
            DataType::UInt8 => Column::Integer(array, integer(array.as_primitive::<UInt8Type>())),
            DataType::UInt64 => {
                let a = array.as_primitive::<UInt64Type>();
                Column::Decimal(array, Box::new(move |row| i128::from(a.value(row))), 0)
            }
            DataType::Boolean => {
                let a = array.as_boolean();
                Column::Integer(array, Box::new(move |row| i64::from(a.value(row))))
            }
            DataType::Decimal32(_, scale) => {
                let a = array.as_primitive::<Decimal32Type>();
                Column::Decimal(array, Box::new(move |row| i128::from(a.value(row))), *scale)
            }
            DataType::Decimal64(_, scale) => {
                let a = array.as_primitive::<Decimal64Type>();
                Column::Decimal(array, Box::new(move |row| i128::from(a.value(row))), *scale)
            }
            DataType::Decimal128(_, scale) => {
                let a = array.as_primitive::<Decimal128Type>();
                Column::Decimal(array, Box::new(move |row| a.value(row)), *scale)
            }
            DataType::Utf8 => {
                let a = array.as_string::<i32>();
                Column::Text(array, Box::new(move |row| a.value(row)))
            }
            DataType::LargeUtf8 => {
                let a = array.as_string::<i64>();
                Column::Text(array, Box::new(move |row| a.value(row)))
            }
            DataType::Utf8View => {
                let a = array.as_string_view();
                Column::Text(array, Box::new(move |row| a.value(row)))
            }
            DataType::Dictionary(_, _) => {
                let dictionary = array.as_any_dictionary();
                let values = Column::of_dyn(dictionary.values().as_ref())?;
                // An all-null column may have no values to index.
                let keys = if dictionary.values().is_empty() {
                    vec![0; array.len()]
                } else {
                    dictionary.normalized_keys()
                };
                Column::Dictionary(array, keys, Box::new(values))
            }
            other => return Err(other),
        })
    }

    fn cell(&self, row: usize) -> Cell<'a> {
        match self {
            Column::Float(a, _)
            | Column::Integer(a, _)
            | Column::Text(a, _)
            | Column::Decimal(a, ..)
            | Column::Dictionary(a, ..)
                if a.is_null(row) =>
            {
                Cell::Missing
            }
            Column::Float(_, value) => Cell::Number(value(row)),
            Column::Integer(_, value) => Cell::Integer(value(row)),
            Column::Text(_, value) => Cell::Text(value(row)),
            Column::Decimal(_, digits, scale) => Cell::Decimal(digits(row), *scale),
            Column::Dictionary(_, keys, values) => values.cell(keys[row]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::types::Int32Type as Key;
    use arrow_array::{
        BooleanArray, Date32Array, Decimal128Array, DictionaryArray, Float32Array, Int64Array,
        UInt64Array,
    };

    fn write(path: &Path, columns: Vec<(&str, ArrayRef)>, rows_per_group: usize) {
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let properties = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
            .set_max_row_group_row_count(Some(rows_per_group))
            .build();
        let file = File::create(path).unwrap();
        let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(properties)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    fn layout<'a>(reading: &'a dyn Fn(&str) -> Reading, keep_going: bool) -> Layout<'a> {
        Layout {
            id_column: "id",
            label_column: (!keep_going).then_some("y"),
            missing: Missing::Reject,
            reading,
            keep_going,
        }
    }

    #[test]
    fn parquet_types_read_as_their_csv_does() {
        let dir = std::env::temp_dir().join(format!("unseen-columnar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("typed.parquet");
        let n = 20_000; // three row groups, three record batches
        let ids: Vec<i64> = (0..n).map(|i| 9_007_199_254_740_993 + i).collect();
        let kinds = ["retail", "farm", "mill"];
        let kind: DictionaryArray<Key> = (0..n).map(|i| kinds[i as usize % 3]).collect();
        let amount = Decimal128Array::from((0..n).map(|i| i128::from(i) * 25).collect::<Vec<_>>())
            .with_precision_and_scale(12, 2)
            .unwrap();
        write(
            &path,
            vec![
                ("id", Arc::new(Int64Array::from(ids.clone())) as ArrayRef),
                (
                    "y",
                    Arc::new((0..n).map(|i| Some(i % 7 == 0)).collect::<BooleanArray>()),
                ),
                (
                    "rate",
                    Arc::new(Float32Array::from(
                        (0..n).map(|i| i as f32 / 8.0).collect::<Vec<_>>(),
                    )),
                ),
                ("amount", Arc::new(amount)),
                ("kind", Arc::new(kind)),
                (
                    "opened",
                    Arc::new(Date32Array::from(vec![19_000; n as usize])),
                ),
            ],
            8000,
        );
        let mut csv = String::from("id,y,rate,amount,kind,opened\n");
        for i in 0..n {
            let y = u8::from(i % 7 == 0);
            let amount = i as f64 * 0.25;
            let rate = i as f32 / 8.0;
            csv.push_str(&format!(
                "{},{y},{rate},{amount},{},x\n",
                ids[i as usize],
                kinds[i as usize % 3]
            ));
        }
        let reading = |name: &str| match name {
            "kind" => Reading::Text,
            "opened" => Reading::Skip,
            _ => Reading::Number,
        };
        let (table, bad) = read_table(&path, &layout(&reading, false), None).unwrap();
        assert!(bad.is_empty());
        let from_csv = Table::parse_csv(
            "typed.csv",
            &csv,
            "id",
            Some("y"),
            Missing::Reject,
            &reading,
        )
        .unwrap();
        assert_eq!(
            &table.ids()[0],
            "9007199254740993",
            "integer ids keep every digit"
        );
        assert_eq!(table.digest(), from_csv.digest());

        // A column of a type it cannot read is refused by name, if the job reads it.
        let error = read_table(&path, &layout(&|_| Reading::Number, false), None).unwrap_err();
        assert!(
            error.contains("column \"opened\": a Date32 column cannot be read"),
            "{error}"
        );

        // A null where a number must be: the file, the row and the column; for scoring, that
        // row alone is set aside.
        let nulls = dir.join("nulls.parquet");
        let rate: Vec<Option<f64>> = (0..n)
            .map(|i| (i != 12_345).then_some(1.0 + i as f64))
            .collect();
        write(
            &nulls,
            vec![
                (
                    "id",
                    Arc::new(
                        (0..n)
                            .map(|i| Some(format!("c{i}")))
                            .collect::<StringArray>(),
                    ) as ArrayRef,
                ),
                ("y", Arc::new(Int64Array::from(vec![1; n as usize]))),
                ("rate", Arc::new(Float64Array::from(rate))),
            ],
            5000,
        );
        let error = read_table(&nulls, &layout(&|_| Reading::Number, false), None).unwrap_err();
        assert!(
            error.contains("nulls.parquet, row 12346, column \"rate\": missing value"),
            "{error}"
        );
        let (table, bad) = read_table(&nulls, &layout(&|_| Reading::Number, true), None).unwrap();
        assert_eq!(table.rows(), n as usize - 1);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, "c12345");

        // Unsigned ids beyond i64 and decimal ids keep every digit; decimals read as numbers.
        let wide = dir.join("wide.parquet");
        let big = Decimal128Array::from(vec![123_456_789_012_345_678_901_234_567_890_i128, -5, -5])
            .with_precision_and_scale(38, 0)
            .unwrap();
        let rate = Decimal128Array::from(vec![Some(1250_i128), Some(-5), None])
            .with_precision_and_scale(10, 2)
            .unwrap();
        write(
            &wide,
            vec![
                (
                    "id",
                    Arc::new(UInt64Array::from(vec![u64::MAX, 7, 8])) as ArrayRef,
                ),
                ("big", Arc::new(big)),
                ("rate", Arc::new(rate)),
            ],
            10,
        );
        let reading = |name: &str| match name {
            "big" => Reading::Text,
            _ => Reading::Number,
        };
        let mut scoring = layout(&reading, true);
        scoring.label_column = None;
        let (table, bad) = read_table(&wide, &scoring, None).unwrap();
        assert_eq!(bad.len(), 1, "a null decimal is missing");
        assert_eq!(bad[0].0, "8");
        assert_eq!(table.ids().to_vec(), ["18446744073709551615", "7"]);
        assert_eq!(
            table.dictionary(0).unwrap(),
            ["123456789012345678901234567890", "-5"]
        );
        assert_eq!(table.values().column(1).to_vec(), [12.5, -0.05]);

        // Ids for batch scoring, in batches, and a score file that reads back.
        let mut ids = Ids::open(&nulls, "id", 3000).unwrap();
        let mut count = 0;
        while let Some((row, batch)) = ids.next_batch().unwrap() {
            assert!(batch.len() <= 3000);
            assert_eq!(row, count + 1);
            assert_eq!(batch[0], format!("c{count}"));
            count += batch.len();
        }
        assert_eq!(count, n as usize);
        let error = Ids::open(&nulls, "ident", 10).err().unwrap();
        assert!(error.contains("no column \"ident\""), "{error}");
        // A configured column the file lacks is the schema's fault, not a row's.
        let reading = |_: &str| Reading::Number;
        let mut elsewhere = layout(&reading, true);
        elsewhere.id_column = "ident";
        let error = read_table(&nulls, &elsewhere, None).err().unwrap();
        assert!(
            error.contains(", column \"ident\": no such column") && !error.contains("row"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
