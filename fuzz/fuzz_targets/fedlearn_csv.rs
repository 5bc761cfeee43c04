//! `fedlearn::Table::read_csv` and `read_csv_rows` on raw bytes (the first picks the delimiter
//! and which columns are text): never a panic; a table read is rectangular, and the scoring
//! reader keeps every row the strict reader keeps.
#![no_main]

use fedlearn::{CsvFormat, Missing, Reading, Table};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, text)) = data.split_first() else {
        return;
    };
    let format = CsvFormat {
        delimiter: [b',', b';', b'\t', b'|'][usize::from(mode & 3)],
    };
    let missing = if mode & 4 == 0 {
        Missing::Reject
    } else {
        Missing::Mean
    };
    let reading = |name: &str| match name.len() % 4 {
        0 => Reading::Text,
        1 => Reading::Binned,
        2 if mode & 8 != 0 => Reading::Skip,
        _ => Reading::Number,
    };
    let label = (mode & 16 != 0).then_some("y");
    let strict = Table::read_csv("fuzz.csv", text, format, "id", label, missing, &reading);
    if let Ok(table) = &strict {
        assert_eq!(table.values().dim(), (table.rows(), table.features()));
    }
    if label.is_none() {
        if let Ok((table, bad)) =
            Table::read_csv_rows("fuzz.csv", text, format, "id", missing, &reading)
        {
            assert_eq!(table.values().dim(), (table.rows(), table.features()));
            if let Ok(strict) = &strict {
                assert_eq!(strict.digest(), table.digest());
                assert!(bad.is_empty());
            }
        }
    }
});
