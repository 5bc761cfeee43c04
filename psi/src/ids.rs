//! A party's id column: validated, compact, and checked for duplicates.
#![forbid(unsafe_code)]

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use rayon::prelude::*;

use crate::error::{DuplicateId, PsiError};

/// Longest id accepted, in bytes. Customer ids (tax numbers, account numbers) are far shorter;
/// the cap keeps a malformed column from turning into unbounded hashing work.
pub const MAX_ID_LEN: usize = 256;

/// Most rows one party may bring to one session (row indices are `u32` on the wire).
pub const MAX_ROWS: u64 = u32::MAX as u64;

/// How many duplicate examples an error lists.
const DUPLICATE_EXAMPLES: usize = 5;

/// What to do when a party's ids repeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DuplicatePolicy {
    /// Refuse the input with [`PsiError::DuplicateIds`] (the default: a repeated customer id is
    /// usually a data error the owner should see).
    #[default]
    Reject,
    /// Keep the first row of each id and ignore later rows.
    KeepFirst,
}

/// Ids by row, wherever a party keeps them: an [`IdColumn`], or (through a wrapper) the
/// table a node loaded, so that partitioned PSI reads them in place instead of copying them.
pub trait IdSource: Sync {
    /// Number of rows.
    fn len(&self) -> usize;

    /// Whether there are no rows.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id on `row` (`row < len()`).
    fn id(&self, row: usize) -> &[u8];
}

impl IdSource for IdColumn {
    fn len(&self) -> usize {
        self.ends.len()
    }

    fn id(&self, row: usize) -> &[u8] {
        self.get(row)
    }
}

/// Checks one id on `row`: non-empty UTF-8 of at most [`MAX_ID_LEN`] bytes.
pub(crate) fn check_id(row: u64, id: &[u8]) -> Result<(), PsiError> {
    if id.is_empty() {
        return Err(PsiError::IdEmpty { row });
    }
    if id.len() > MAX_ID_LEN {
        return Err(PsiError::IdTooLong {
            row,
            len: id.len(),
            max: MAX_ID_LEN,
        });
    }
    if std::str::from_utf8(id).is_err() {
        return Err(PsiError::IdNotUtf8 { row });
    }
    Ok(())
}

/// Checks every id of `ids` as [`IdColumn::push`] does, naming the first bad row.
pub(crate) fn check_ids<S: IdSource + ?Sized>(ids: &S) -> Result<(), PsiError> {
    if ids.is_empty() {
        return Err(PsiError::EmptyInput);
    }
    if ids.len() as u64 > MAX_ROWS {
        return Err(PsiError::InputTooLarge {
            what: "the number of rows",
            got: ids.len() as u64,
            max: MAX_ROWS,
        });
    }
    (0..ids.len()).try_for_each(|row| check_id(row as u64, ids.id(row)))
}

/// Every row among `rows` (ascending) whose id occurred on an earlier one of them, as (first
/// row, this row), sorted by this row. Sorts 16-byte (hash, row) pairs instead of hashing
/// whole ids into a map: a third of the memory of a `HashSet<&[u8]>` and parallel.
pub(crate) fn repeated_among<S: IdSource + ?Sized>(ids: &S, rows: &[u32]) -> Vec<(u32, u32)> {
    let hasher = RandomState::new();
    let mut keyed: Vec<(u64, u32)> = rows
        .par_iter()
        .map(|&row| (hasher.hash_one(ids.id(row as usize)), row))
        .collect();
    keyed.par_sort_unstable();
    let mut repeated = Vec::new();
    let mut group_start = 0;
    while group_start < keyed.len() {
        let hash = keyed[group_start].0;
        let mut group_end = group_start + 1;
        while group_end < keyed.len() && keyed[group_end].0 == hash {
            group_end += 1;
        }
        // Rows in a group share a 64-bit hash; compare the bytes to find real repeats. Rows
        // are ascending within a group, so the first row with given bytes is the original.
        let group = &keyed[group_start..group_end];
        for (i, &(_, row)) in group.iter().enumerate().skip(1) {
            let id = ids.id(row as usize);
            if let Some(&(_, first)) = group[..i]
                .iter()
                .find(|&&(_, earlier)| ids.id(earlier as usize) == id)
            {
                repeated.push((first, row));
            }
        }
        group_start = group_end;
    }
    repeated.sort_unstable_by_key(|&(_, row)| row);
    repeated
}

/// The error for `repeated` rows (sorted by the repeating row), with the first examples.
pub(crate) fn duplicates_error<S: IdSource + ?Sized>(ids: &S, repeated: &[(u32, u32)]) -> PsiError {
    PsiError::DuplicateIds {
        count: repeated.len() as u64,
        examples: repeated
            .iter()
            .take(DUPLICATE_EXAMPLES)
            .map(|&(first, later)| DuplicateId {
                id: String::from_utf8_lossy(ids.id(later as usize)).into_owned(),
                first_row: u64::from(first),
                repeated_row: u64::from(later),
            })
            .collect(),
    }
}

/// A column of ids stored in one byte arena (16 bytes per id less than `Vec<String>`, which
/// matters at 10^8 rows). Every id is non-empty UTF-8 of at most [`MAX_ID_LEN`] bytes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IdColumn {
    bytes: Vec<u8>,
    /// `ends[i]` is one past the last byte of id `i`.
    ends: Vec<u32>,
}

impl std::fmt::Debug for IdColumn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ids are personal data: never print them by accident.
        write!(f, "IdColumn({} ids)", self.len())
    }
}

impl IdColumn {
    /// An empty column with room for `rows` ids of `bytes` bytes in total.
    pub fn with_capacity(rows: usize, bytes: usize) -> Self {
        IdColumn {
            bytes: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(rows),
        }
    }

    /// Builds a column, validating every id.
    pub fn from_ids<I>(ids: I) -> Result<Self, PsiError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let mut column = IdColumn::default();
        for id in ids {
            column.push(id.as_ref())?;
        }
        Ok(column)
    }

    /// Appends one id, rejecting empty, over-long and non-UTF-8 ids.
    pub fn push(&mut self, id: &[u8]) -> Result<(), PsiError> {
        let row = self.ends.len() as u64;
        if row >= MAX_ROWS {
            return Err(PsiError::InputTooLarge {
                what: "the number of rows",
                got: row + 1,
                max: MAX_ROWS,
            });
        }
        check_id(row, id)?;
        let end = self.bytes.len() as u64 + id.len() as u64;
        if end > u64::from(u32::MAX) {
            return Err(PsiError::InputTooLarge {
                what: "the total size of the ids in bytes",
                got: end,
                max: u64::from(u32::MAX),
            });
        }
        self.bytes.extend_from_slice(id);
        self.ends.push(end as u32);
        Ok(())
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when there are no ids.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The id on `row`. Panics if `row >= len()`, like slice indexing.
    pub fn get(&self, row: usize) -> &[u8] {
        let start = if row == 0 {
            0
        } else {
            self.ends[row - 1] as usize
        };
        &self.bytes[start..self.ends[row] as usize]
    }

    /// The id on `row` as text (validated UTF-8 on push).
    pub fn get_str(&self, row: usize) -> &str {
        // Every id was checked by `push`; a failure here would be a bug in this module.
        std::str::from_utf8(self.get(row)).unwrap_or("<invalid utf-8>")
    }

    /// The rows that take part in PSI under `policy`, ascending: all rows, or the first row of
    /// each id. Errors on an empty column and, under [`DuplicatePolicy::Reject`], on repeats.
    pub(crate) fn distinct_rows(&self, policy: DuplicatePolicy) -> Result<Vec<u32>, PsiError> {
        if self.is_empty() {
            return Err(PsiError::EmptyInput);
        }
        let rows: Vec<u32> = (0..self.len() as u32).collect();
        drop_repeated(self, vec![rows], policy).map(|mut parts| parts.pop().unwrap_or_default())
    }
}

/// `groups` of rows (each ascending; an id's rows all in one group) without the rows whose id
/// occurred on an earlier row of its group, under `policy`: [`DuplicatePolicy::Reject`] refuses
/// any repeat, naming the first ones across all groups.
pub(crate) fn drop_repeated<S: IdSource + ?Sized>(
    ids: &S,
    mut groups: Vec<Vec<u32>>,
    policy: DuplicatePolicy,
) -> Result<Vec<Vec<u32>>, PsiError> {
    let repeated: Vec<Vec<(u32, u32)>> = groups
        .par_iter()
        .map(|rows| repeated_among(ids, rows))
        .collect();
    if repeated.iter().all(Vec::is_empty) {
        return Ok(groups);
    }
    match policy {
        DuplicatePolicy::Reject => {
            let mut all: Vec<(u32, u32)> = repeated.into_iter().flatten().collect();
            all.sort_unstable_by_key(|&(_, row)| row);
            Err(duplicates_error(ids, &all))
        }
        DuplicatePolicy::KeepFirst => {
            for (rows, repeated) in groups.iter_mut().zip(repeated) {
                let later: std::collections::HashSet<u32> =
                    repeated.into_iter().map(|(_, later)| later).collect();
                rows.retain(|row| !later.contains(row));
            }
            Ok(groups)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_ids_naming_the_row() {
        let mut column = IdColumn::default();
        column.push(b"a").unwrap();
        assert_eq!(column.push(b""), Err(PsiError::IdEmpty { row: 1 }));
        assert_eq!(
            column.push(&[0xff, 0xfe]),
            Err(PsiError::IdNotUtf8 { row: 1 })
        );
        let long = vec![b'x'; MAX_ID_LEN + 1];
        assert_eq!(
            column.push(&long),
            Err(PsiError::IdTooLong {
                row: 1,
                len: MAX_ID_LEN + 1,
                max: MAX_ID_LEN
            })
        );
        column.push(&long[..MAX_ID_LEN]).unwrap();
        assert_eq!(column.len(), 2);
        assert_eq!(column.get(1).len(), MAX_ID_LEN);
    }

    #[test]
    fn empty_column_is_an_error() {
        assert_eq!(
            IdColumn::default().distinct_rows(DuplicatePolicy::Reject),
            Err(PsiError::EmptyInput)
        );
    }

    #[test]
    fn duplicates_are_reported_with_count_and_first_examples() {
        let ids = ["a", "b", "a", "c", "b", "a", "d"];
        let column = IdColumn::from_ids(ids).unwrap();
        let err = column.distinct_rows(DuplicatePolicy::Reject).unwrap_err();
        let PsiError::DuplicateIds { count, examples } = &err else {
            panic!("expected DuplicateIds, got {err:?}");
        };
        assert_eq!(*count, 3);
        let found: Vec<(&str, u64, u64)> = examples
            .iter()
            .map(|d| (d.id.as_str(), d.first_row, d.repeated_row))
            .collect();
        assert_eq!(found, vec![("a", 0, 2), ("b", 1, 4), ("a", 0, 5)]);
        let text = err.to_string();
        assert!(text.starts_with("3 rows repeat an id"), "{text}");
        assert!(text.contains("\"b\" at rows 1 and 4"), "{text}");
    }

    #[test]
    fn keep_first_drops_later_rows() {
        let column = IdColumn::from_ids(["a", "b", "a", "c", "b"]).unwrap();
        assert_eq!(
            column.distinct_rows(DuplicatePolicy::KeepFirst).unwrap(),
            vec![0, 1, 3]
        );
    }

    #[test]
    fn debug_does_not_print_ids() {
        let column = IdColumn::from_ids(["secret-customer"]).unwrap();
        assert_eq!(format!("{column:?}"), "IdColumn(1 ids)");
    }
}
