//! What a job keeps on disk under the node's `data_dir` while it runs: its dataset's rows
//! ([`crate::jobs::staged`]) and its ids split into PSI's parts ([`SpilledParts`]). PSI reads
//! one part at a time ([`psi::PartSource`]), so what it holds in memory is a part, not the
//! party's whole set and its index by part.
//!
//! Layout: `<data_dir>/spill/<digest of the job id>-<number>/` ([`JobDir`]: 0700, files 0600),
//! removed when the job's use of it ends, and at the node's start (a crashed job's next
//! attempt reads its dataset again). Every file is sealed under a key of the directory's,
//! kept in memory only ([`crate::jobs::sealed`]). PSI's parts: at most [`MAX_BUCKETS`]
//! files `bucket-NNN` (part p in bucket p mod buckets, so a node never holds more open files
//! than that), each a sequence of records (part: u32, row: u32, id length: u16, id bytes),
//! little-endian, in row order.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use psi::{DuplicatePolicy, PartIds, PartSource, PartitionKey, PsiError, MAX_ID_LEN, MAX_ROWS};
use sha2::{Digest, Sha256};

use crate::error::NodeError;
use crate::jobs::sealed::{FileKey, SealedReader, SealedWriter, Written};

/// Most bucket files per job.
const MAX_BUCKETS: u32 = 256;

/// Where jobs' files are kept under `data_dir`.
fn spill_root(data_dir: &Path) -> PathBuf {
    data_dir.join("spill")
}

/// Removes what jobs left under `data_dir` (at the node's start, before any job runs).
pub(crate) fn forget_spilled(data_dir: &Path) -> Result<(), NodeError> {
    let root = spill_root(data_dir);
    match std::fs::remove_dir_all(&root) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(NodeError::io(&root, e)),
        _ => Ok(()),
    }
}

/// A directory of one job under `<data_dir>/spill/`, private to this node's user (0700),
/// removed with everything in it when dropped. Named by a digest of the job id (which comes
/// from the guest: never a path) and a number of its own, so no two share files.
pub(crate) struct JobDir {
    path: PathBuf,
    key: FileKey,
    files: AtomicU32,
}

impl std::fmt::Debug for JobDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JobDir({})", self.path.display())
    }
}

impl JobDir {
    pub(crate) fn create(data_dir: &Path, job: &str) -> Result<JobDir, NodeError> {
        static DIRS: AtomicU64 = AtomicU64::new(0);
        let name: [u8; 32] = Sha256::new()
            .chain_update(b"unseen spill v1")
            .chain_update(job.as_bytes())
            .finalize()
            .into();
        let number = DIRS.fetch_add(1, Ordering::Relaxed);
        let dir = spill_root(data_dir).join(format!("{}-{number}", hex(&name[..12])));
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| NodeError::io(&dir, e))?;
        Ok(JobDir {
            path: dir,
            key: FileKey::random(),
            files: AtomicU32::new(0),
        })
    }

    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Creates file `name` in the directory, sealed, readable by this node's user only.
    pub(crate) fn create_file(&self, name: &str) -> Result<SealedWriter<'_>, NodeError> {
        let file = self.files.fetch_add(1, Ordering::Relaxed);
        self.key.create(self.path.join(name), file)
    }

    /// Reads back a file written whole by [`JobDir::create_file`].
    pub(crate) fn open_file(&self, written: &Written) -> std::io::Result<SealedReader<'_>> {
        self.key.open(written)
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %e, "cannot remove a job's files");
        }
    }
}

/// A dataset's ids, row by row, as a job reads them.
pub(crate) trait IdRows {
    /// Hands every (row, id) to `visit`, in row order.
    fn each_id(
        &self,
        visit: &mut dyn FnMut(u32, &str) -> Result<(), NodeError>,
    ) -> Result<(), NodeError>;
}

/// Ids in memory, row by row (tests).
#[cfg(test)]
impl IdRows for Vec<String> {
    fn each_id(
        &self,
        visit: &mut dyn FnMut(u32, &str) -> Result<(), NodeError>,
    ) -> Result<(), NodeError> {
        (self.iter().enumerate()).try_for_each(|(row, id)| visit(row as u32, id))
    }
}

/// What reading a bucket does with each record: (part, row, id).
type Take<'a> = dyn FnMut(u32, u32, &[u8]) -> Result<(), PsiError> + 'a;

/// A party's ids of one job, split into parts on disk.
#[derive(Debug)]
pub(crate) struct SpilledParts {
    dir: JobDir,
    /// Bucket b's file.
    files: Vec<Written>,
    buckets: u32,
    /// The number of parts.
    count: u32,
    sizes: Vec<u64>,
    policy: DuplicatePolicy,
}

impl SpilledParts {
    /// Splits `ids` into `count` parts under `key`, in a fresh directory for `job`, and
    /// counts each part's distinct ids under `policy`: repeats are refused or dropped here,
    /// before any size leaves the node, as [`psi::Split`] does in memory.
    pub(crate) fn split(
        data_dir: &Path,
        job: &str,
        ids: &dyn IdRows,
        key: &PartitionKey,
        count: u32,
        policy: DuplicatePolicy,
    ) -> Result<SpilledParts, NodeError> {
        let mut spilled = SpilledParts {
            dir: JobDir::create(data_dir, job)?,
            files: Vec::new(),
            buckets: count.clamp(1, MAX_BUCKETS),
            count,
            sizes: Vec::new(),
            policy,
        };
        spilled.files = spilled.write(ids, key)?;
        spilled.sizes = spilled.count_distinct()?;
        Ok(spilled)
    }

    fn write(&self, ids: &dyn IdRows, key: &PartitionKey) -> Result<Vec<Written>, NodeError> {
        // One split at a time per node: at most MAX_BUCKETS files open for it, whatever the
        // number of jobs (the descriptors' soft limit is often 1024).
        static SPLITTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = SPLITTING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut writers = Vec::with_capacity(self.buckets as usize);
        for bucket in 0..self.buckets {
            writers.push(self.dir.create_file(&format!("bucket-{bucket:03}"))?);
        }
        let mut rows = 0u64;
        ids.each_id(&mut |row, id| {
            if u64::from(row) >= MAX_ROWS {
                return Err(PsiError::InputTooLarge {
                    what: "the number of rows",
                    got: u64::from(row) + 1,
                    max: MAX_ROWS,
                }
                .into());
            }
            let id = id.as_bytes();
            if id.len() > MAX_ID_LEN {
                return Err(PsiError::IdTooLong {
                    row: u64::from(row),
                    len: id.len(),
                    max: MAX_ID_LEN,
                }
                .into());
            }
            let part = key.part_of(self.count, id);
            let writer = &mut writers[(part % self.buckets) as usize];
            let mut record = [0u8; 10];
            record[..4].copy_from_slice(&part.to_le_bytes());
            record[4..8].copy_from_slice(&row.to_le_bytes());
            record[8..].copy_from_slice(&(id.len() as u16).to_le_bytes());
            (writer
                .write_all(&record)
                .and_then(|()| writer.write_all(id)))
            .map_err(|e| NodeError::io(writer.path(), e))?;
            rows += 1;
            Ok(())
        })?;
        if rows == 0 {
            return Err(PsiError::EmptyInput.into());
        }
        writers.into_iter().map(SealedWriter::finish).collect()
    }

    /// Reads one bucket, handing every record (part, row, id) to `take`; errors name `part`.
    fn read_bucket(&self, bucket: u32, part: u32, take: &mut Take<'_>) -> Result<(), PsiError> {
        let written = &self.files[bucket as usize];
        let unreadable = |reason: String| PsiError::PartUnreadable {
            part,
            reason: format!("{}: {reason}", written.path.display()),
        };
        let mut input = (self.dir.open_file(written)).map_err(|e| unreadable(e.to_string()))?;
        let mut header = [0u8; 10];
        let mut id = Vec::with_capacity(MAX_ID_LEN);
        loop {
            // The file ends only between records (the reader checks it ends where written).
            match input.read(&mut header[..1]) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(unreadable(e.to_string())),
            }
            (input.read_exact(&mut header[1..])).map_err(|e| unreadable(e.to_string()))?;
            let record = u32::from_le_bytes(header[..4].try_into().expect("four bytes"));
            if record % self.buckets != bucket || record >= self.count {
                return Err(unreadable(format!(
                    "a record of part {record} in this file"
                )));
            }
            let row = u32::from_le_bytes(header[4..8].try_into().expect("four bytes"));
            let len = u16::from_le_bytes(header[8..].try_into().expect("two bytes"));
            id.resize(usize::from(len), 0);
            input
                .read_exact(&mut id)
                .map_err(|e| unreadable(format!("a record is cut short ({e})")))?;
            take(record, row, &id)?;
        }
    }

    /// Each part's number of distinct ids, reading every bucket once (a bucket's parts at a
    /// time in memory); under [`DuplicatePolicy::Reject`] every repeat of the set is
    /// counted and the first ones named, as in memory.
    fn count_distinct(&self) -> Result<Vec<u64>, PsiError> {
        let count = self.count;
        let mut sizes = vec![0u64; count as usize];
        let mut repeats = 0u64;
        let mut examples = Vec::new();
        for bucket in 0..self.buckets {
            let mut parts: Vec<PartIds> = (bucket..count)
                .step_by(self.buckets as usize)
                .map(|_| PartIds::default())
                .collect();
            self.read_bucket(bucket, bucket, &mut |part, row, id| {
                let at = ((part - bucket) / self.buckets) as usize;
                parts[at].push(row, id)
            })?;
            for (at, part) in parts.into_iter().enumerate() {
                match part.distinct(self.policy) {
                    Ok(part) => {
                        sizes[bucket as usize + at * self.buckets as usize] = part.rows.len() as u64
                    }
                    Err(PsiError::DuplicateIds {
                        count,
                        examples: some,
                    }) => {
                        repeats += count;
                        examples.extend(some);
                    }
                    Err(other) => return Err(other),
                }
            }
        }
        if repeats > 0 {
            examples.sort_unstable_by_key(|d| d.repeated_row);
            examples.truncate(5);
            return Err(PsiError::DuplicateIds {
                count: repeats,
                examples,
            });
        }
        Ok(sizes)
    }
}

impl PartSource for SpilledParts {
    fn sizes(&self) -> &[u64] {
        &self.sizes
    }

    fn part(&self, part: u32) -> Result<PartIds, PsiError> {
        let Some(&size) = self.sizes.get(part as usize) else {
            return Err(PsiError::PartUnreadable {
                part,
                reason: "no such part".into(),
            });
        };
        let mut ids = PartIds::default();
        self.read_bucket(part % self.buckets, part, &mut |p, row, id| {
            if p == part {
                ids.push(row, id)?;
            }
            Ok(())
        })?;
        let ids = ids.distinct(self.policy)?;
        if ids.rows.len() as u64 != size {
            return Err(PsiError::PartUnreadable {
                part,
                reason: format!(
                    "{} ids on disk, {size} when it was split: the files changed",
                    ids.rows.len()
                ),
            });
        }
        Ok(ids)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory of this test process (each test names its own).
    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("unseen-spill-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("sme-{}", i % 700)).collect()
    }

    /// Parts on disk are the parts in memory, id for id and row for row, with more parts
    /// than buckets; repeats are dropped or refused as in memory; the files go with the job.
    #[test]
    fn parts_on_disk_are_the_parts_in_memory() {
        let data = scratch("memory");
        let key = PartitionKey([7; 32]);
        let ids = ids(1000);
        let column = psi::IdColumn::from_ids(&ids).unwrap();
        for count in [1, 5, MAX_BUCKETS + 3] {
            let policy = DuplicatePolicy::KeepFirst;
            let memory = psi::Split::new(column.clone(), policy, &key, count).unwrap();
            let disk =
                SpilledParts::split(data.as_path(), "job-1", &ids, &key, count, policy).unwrap();
            assert_eq!(disk.sizes(), memory.sizes());
            assert_eq!(disk.sizes().iter().sum::<u64>(), 700);
            for part in 0..count {
                let (a, b) = (disk.part(part).unwrap(), memory.part(part).unwrap());
                assert_eq!(a.rows, b.rows, "part {part}");
                let texts = |p: &PartIds| {
                    (0..p.rows.len())
                        .map(|i| p.ids.get(i).to_vec())
                        .collect::<Vec<_>>()
                };
                assert_eq!(texts(&a), texts(&b), "part {part}");
            }
            let dir = disk.dir.path().to_owned();
            assert!(dir.starts_with(spill_root(data.as_path())));
            drop(disk);
            assert!(!dir.exists(), "the parts leave with the job");
        }
        let refused = SpilledParts::split(
            data.as_path(),
            "job-2",
            &ids,
            &key,
            MAX_BUCKETS + 3,
            DuplicatePolicy::Reject,
        )
        .unwrap_err();
        let in_memory = psi::Split::new(column, DuplicatePolicy::Reject, &key, 3).unwrap_err();
        assert_eq!(refused.to_string(), NodeError::from(in_memory).to_string());
        // A guest's job id names no directory.
        let odd = SpilledParts::split(
            data.as_path(),
            "../../outside",
            &vec!["a".to_owned(), "b".to_owned()],
            &key,
            1,
            DuplicatePolicy::Reject,
        )
        .unwrap();
        assert!(odd.dir.path().starts_with(spill_root(data.as_path())));
        assert!(!data.as_path().parent().unwrap().join("outside").exists());
        drop(odd);
        std::fs::remove_dir_all(&data).unwrap();
    }

    /// A part whose file changed after the split is refused, not run with other ids.
    #[test]
    fn a_changed_part_file_is_refused() {
        let data = scratch("changed");
        let ids = ids(300);
        let key = PartitionKey([1; 32]);
        let policy = DuplicatePolicy::KeepFirst;
        let disk = SpilledParts::split(data.as_path(), "j", &ids, &key, 2, policy).unwrap();
        let path = disk.files[1].path.clone();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(
            disk.part(1),
            Err(PsiError::PartUnreadable { part: 1, .. })
        ));
        assert!(disk.part(0).is_ok());
        drop(disk);
        std::fs::remove_dir_all(&data).unwrap();
    }
}
