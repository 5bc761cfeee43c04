//! Partitioned PSI: [`PartitionedGuest`] and [`PartitionedHost`].
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use rayon::prelude::*;

use crate::crypto::PartitionKey;
use crate::error::PsiError;
use crate::ids::{
    check_id, check_ids, drop_repeated, duplicates_error, repeated_among, DuplicatePolicy,
    IdColumn, IdSource, MAX_ROWS,
};
use crate::message::{
    check_version, Alignment, GuestHello, HostHello, PartitionPlan, PartitionSchedule,
    PartitionSizes, ResultMode, MAX_PARTITIONS, PROTOCOL_VERSION,
};
use crate::session::{
    check_guest_settings, GuestConfig, GuestOutput, HostOutput, PsiGuest, PsiHost,
};

/// Default number of distinct guest ids per part.
pub const DEFAULT_PARTITION_ROWS: u64 = 1 << 20;

/// Fewest ids per part, on average, that a party lets a plan split its set into (the nodes'
/// setting): with a thousand ids per part, a part size says next to nothing about which ids a
/// party holds, and no part of a real set is empty.
pub const MIN_PART_ROWS: u64 = 1024;

/// Pairs of ids compared over a job, per host, that 96-bit tags allow (2^-40 false-match
/// bound).
const MAX_COMPARED_PAIRS: u128 = 1 << 56;

/// One part of a party's ids: the ids, and the row of each in the party's whole id column,
/// ascending. What a [`PartSource`] hands a run, one part at a time.
#[derive(Debug, Default)]
pub struct PartIds {
    /// The part's ids, in row order.
    pub ids: IdColumn,
    /// `rows[i]` is the row of `ids` entry `i` in the party's whole column.
    pub rows: Vec<u32>,
}

impl PartIds {
    /// Appends the id on `row` (rows must come in ascending order).
    pub fn push(&mut self, row: u32, id: &[u8]) -> Result<(), PsiError> {
        check_id(u64::from(row), id)?;
        self.ids.push(id)?;
        self.rows.push(row);
        Ok(())
    }

    /// The part under `policy`: every id once, at its first row ([`DuplicatePolicy::KeepFirst`]),
    /// or refused with the repeats, named by their rows in the whole column
    /// ([`DuplicatePolicy::Reject`]).
    pub fn distinct(self, policy: DuplicatePolicy) -> Result<PartIds, PsiError> {
        let local: Vec<u32> = (0..self.rows.len() as u32).collect();
        let repeated = repeated_among(&self.ids, &local);
        if repeated.is_empty() {
            return Ok(self);
        }
        if policy == DuplicatePolicy::Reject {
            let global: Vec<(u32, u32)> = (repeated.iter())
                .map(|&(first, later)| (self.rows[first as usize], self.rows[later as usize]))
                .collect();
            return Err(duplicates_error(&AtRows(&self), &global));
        }
        let later: std::collections::HashSet<u32> = repeated.iter().map(|&(_, l)| l).collect();
        let mut kept = PartIds {
            ids: IdColumn::with_capacity(self.rows.len() - later.len(), 0),
            rows: Vec::with_capacity(self.rows.len() - later.len()),
        };
        for (i, &row) in self.rows.iter().enumerate() {
            if !later.contains(&(i as u32)) {
                kept.push(row, self.ids.get(i))?;
            }
        }
        Ok(kept)
    }
}

/// A part's ids addressed by their rows in the whole column (to name repeats).
struct AtRows<'a>(&'a PartIds);

impl IdSource for AtRows<'_> {
    fn len(&self) -> usize {
        self.0.rows.last().map_or(0, |&r| r as usize + 1)
    }

    fn id(&self, row: usize) -> &[u8] {
        let at = self.0.rows.binary_search(&(row as u32)).unwrap_or(0);
        self.0.ids.get(at)
    }
}

/// A party's ids split into the parts of a plan, read one part at a time: what
/// [`PartitionedGuest`] and [`PartitionedHost`] run on. [`Split`] holds the ids in memory; a
/// party with more ids than memory keeps its parts on disk (the node does).
pub trait PartSource {
    /// The number of distinct ids in each part (one entry per part of the plan).
    fn sizes(&self) -> &[u64];

    /// The distinct ids of `part` (under the party's duplicate policy), rows ascending.
    fn part(&self, part: u32) -> Result<PartIds, PsiError>;
}

/// The number of parts a guest with `ids` ids splits them into at `partition_rows` ids per
/// part: ⌈ids / partition_rows⌉, at least 1 and at most [`MAX_PARTITIONS`].
pub fn part_count(ids: u64, partition_rows: u64) -> u32 {
    ids.div_ceil(partition_rows.max(1))
        .clamp(1, u64::from(MAX_PARTITIONS)) as u32
}

/// Ids held in memory, split into parts: a party's distinct rows (under its duplicate
/// policy), by part, ascending within each.
#[derive(Debug)]
pub struct Split<I: IdSource = IdColumn> {
    ids: I,
    parts: Vec<Vec<u32>>,
    sizes: Vec<u64>,
}

impl<I: IdSource> Split<I> {
    /// The rows of `ids` by part, after checking every id; the rows of an id that occurred on
    /// an earlier row are refused or dropped as `policy` says (an id's rows share a part, so
    /// repeats are found part by part, in a part's memory).
    pub fn new(
        ids: I,
        policy: DuplicatePolicy,
        key: &PartitionKey,
        count: u32,
    ) -> Result<Split<I>, PsiError> {
        if count == 0 || count > MAX_PARTITIONS {
            return Err(PsiError::InvalidConfig {
                field: "parts",
                reason: format!("{count} parts is not in 1..={MAX_PARTITIONS}"),
            });
        }
        check_ids(&ids)?;
        let assigned: Vec<u32> = (0..ids.len())
            .into_par_iter()
            .map(|row| key.part_of(count, ids.id(row)))
            .collect();
        let mut sizes = vec![0usize; count as usize];
        for &part in &assigned {
            sizes[part as usize] += 1;
        }
        let mut parts: Vec<Vec<u32>> = sizes.into_iter().map(Vec::with_capacity).collect();
        for (row, &part) in assigned.iter().enumerate() {
            parts[part as usize].push(row as u32);
        }
        drop(assigned);
        let parts = drop_repeated(&ids, parts, policy)?;
        let sizes = parts.iter().map(|rows| rows.len() as u64).collect();
        Ok(Split { ids, parts, sizes })
    }
}

impl<I: IdSource> PartSource for Split<I> {
    fn sizes(&self) -> &[u64] {
        &self.sizes
    }

    fn part(&self, part: u32) -> Result<PartIds, PsiError> {
        let rows = self
            .parts
            .get(part as usize)
            .ok_or(PsiError::InvalidConfig {
                field: "part",
                reason: format!("part {part} does not exist"),
            })?;
        let bytes = rows.iter().map(|&r| self.ids.id(r as usize).len()).sum();
        let mut ids = IdColumn::with_capacity(rows.len(), bytes);
        for &row in rows {
            ids.push(self.ids.id(row as usize))?;
        }
        Ok(PartIds {
            ids,
            rows: rows.clone(),
        })
    }
}

/// Checks parts a party kept from an earlier run: each a part of this split, its rows
/// distinct rows of that part, and (guest) one pairwise size per host. Refused as a whole: a
/// kept result that does not fit the ids is from other data.
fn check_kept<S: PartSource + ?Sized>(
    parts: &S,
    kept: &[FinishedPart],
    pairwise: usize,
) -> Result<(), PsiError> {
    let invalid = |part: u32, reason: &str| PsiError::InvalidConfig {
        field: "kept parts",
        reason: format!("part {part}: {reason}"),
    };
    let mut seen = std::collections::BTreeSet::new();
    for result in kept {
        let part = result.part;
        let Some(&size) = parts.sizes().get(part as usize) else {
            return Err(invalid(part, "no such part in this plan"));
        };
        if !seen.insert(part) {
            return Err(invalid(part, "kept twice"));
        }
        if result.pairwise_sizes.len() != pairwise
            || (result.pairwise_sizes.iter()).any(|&s| s > size)
        {
            return Err(invalid(part, "pairwise sizes do not match the hosts"));
        }
        let rows = parts.part(part)?.rows;
        let mut distinct = std::collections::BTreeSet::new();
        for row in &result.rows {
            if rows.binary_search(row).is_err() || !distinct.insert(*row) {
                return Err(invalid(
                    part,
                    "its rows are not this party's ids of the part",
                ));
            }
        }
    }
    Ok(())
}

/// One part a party finished: its rows of the part's intersection, in the order every party
/// of the run holds them, and (guest) the part's pairwise intersection size with each host.
/// A party keeps these to resume a run: a later run under the same plan with the same ids
/// takes them instead of running the part again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishedPart {
    /// The part.
    pub part: u32,
    /// Rows of this party's id column, in the run's order.
    pub rows: Vec<u32>,
    /// Guest: ids of the part it holds in common with each host (in host order); a host:
    /// empty.
    pub pairwise_sizes: Vec<u64>,
}

impl FinishedPart {
    /// Bytes to keep: `part`, the number of pairwise sizes (u32 each), the sizes (u64 each),
    /// then the rows (u32 each), little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(8 + 8 * self.pairwise_sizes.len() + 4 * self.rows.len());
        bytes.extend_from_slice(&self.part.to_le_bytes());
        bytes.extend_from_slice(&(self.pairwise_sizes.len() as u32).to_le_bytes());
        for size in &self.pairwise_sizes {
            bytes.extend_from_slice(&size.to_le_bytes());
        }
        for row in &self.rows {
            bytes.extend_from_slice(&row.to_le_bytes());
        }
        bytes
    }

    /// A kept part from its bytes; `None` when they are not a part's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<FinishedPart> {
        let word = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
        };
        let part = word(0)?;
        let hosts = word(4)? as usize;
        let rows_at = hosts.checked_mul(8)?.checked_add(8)?;
        let rest = bytes.get(rows_at..)?;
        if rest.len() % 4 != 0 {
            return None;
        }
        let pairwise_sizes = bytes[8..rows_at]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("eight bytes")))
            .collect();
        let rows = rest
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("four bytes")))
            .collect();
        Some(FinishedPart {
            part,
            rows,
            pairwise_sizes,
        })
    }
}

/// Rows of the whole column for rows of part `part`'s column (`current`: the part whose
/// session ran, and its rows).
fn rows_of(
    current: Option<(u32, Vec<u32>)>,
    part: u32,
    local: &[u32],
) -> Result<Vec<u32>, PsiError> {
    let wrong = || PsiError::InvalidConfig {
        field: "part",
        reason: format!("part {part}'s session did not start here"),
    };
    let rows = match current {
        Some((running, rows)) if running == part => rows,
        _ => return Err(wrong()),
    };
    local
        .iter()
        .map(|&r| rows.get(r as usize).copied().ok_or_else(wrong))
        .collect()
}

/// Where a run is: the parts of the intersection, those still to run (in order), and the
/// results of the finished ones (kept from an earlier run or run now).
#[derive(Debug)]
struct Progress {
    partitions: Vec<u32>,
    pending: Vec<u32>,
    next: usize,
    results: BTreeMap<u32, FinishedPart>,
}

impl Progress {
    /// `partitions`, of which `finished` are taken from `kept` (which holds them all).
    fn new(partitions: Vec<u32>, finished: &[u32], kept: Vec<FinishedPart>) -> Progress {
        let results: BTreeMap<u32, FinishedPart> = kept
            .into_iter()
            .filter(|r| finished.binary_search(&r.part).is_ok())
            .map(|r| (r.part, r))
            .collect();
        let pending = partitions
            .iter()
            .copied()
            .filter(|p| !results.contains_key(p))
            .collect();
        Progress {
            partitions,
            pending,
            next: 0,
            results,
        }
    }

    /// The part whose session runs now.
    fn current(&self) -> Option<u32> {
        self.pending.get(self.next).copied()
    }

    fn record(&mut self, result: FinishedPart) {
        self.results.insert(result.part, result);
        self.next += 1;
    }

    fn is_done(&self) -> bool {
        self.next == self.pending.len()
    }

    /// The rows of the intersection, part by part in schedule order, and the pairwise sizes
    /// summed over the parts (`hosts` of them).
    fn finish(mut self, hosts: usize) -> Result<(Vec<u32>, Vec<u64>), PsiError> {
        if !self.is_done() {
            return Err(PsiError::Incomplete {
                missing: format!(
                    "{} of {} parts",
                    self.pending.len() - self.next,
                    self.partitions.len()
                ),
            });
        }
        let mut rows = Vec::new();
        let mut pairwise = vec![0u64; hosts];
        for part in &self.partitions {
            let result = self.results.remove(part).expect("every part finished");
            rows.extend(result.rows);
            for (total, size) in pairwise.iter_mut().zip(&result.pairwise_sizes) {
                *total += size;
            }
        }
        if rows.is_empty() {
            return Err(PsiError::EmptyIntersection);
        }
        Ok((rows, pairwise))
    }
}

fn no_schedule() -> PsiError {
    PsiError::Incomplete {
        missing: "the schedule of parts".into(),
    }
}

/// Part sizes announced by `peer`: one per part, each a possible set size.
fn check_sizes(
    peer: &str,
    field: &'static str,
    sizes: &[u64],
    count: usize,
) -> Result<(), PsiError> {
    let invalid = |reason: String| PsiError::InvalidField {
        peer: peer.to_owned(),
        field,
        reason,
    };
    if sizes.len() != count {
        return Err(invalid(format!("{} sizes for {count} parts", sizes.len())));
    }
    let total: u128 = sizes.iter().map(|&s| u128::from(s)).sum();
    if total > u128::from(MAX_ROWS) {
        return Err(invalid(format!(
            "{total} rows in all is more than {MAX_ROWS}"
        )));
    }
    Ok(())
}

/// Refuses parts for which a false tag match over the job would not be negligible: ids are
/// compared within a part only, so the bound is Σₚ guestₚ·hostₚ·2^-96 ≤ 2^-40.
fn check_compared_pairs(host: &str, guest: &[u64], sizes: &[u64]) -> Result<(), PsiError> {
    let compared: u128 = guest
        .iter()
        .zip(sizes)
        .map(|(&g, &h)| u128::from(g) * u128::from(h))
        .sum();
    if compared > MAX_COMPARED_PAIRS {
        return Err(PsiError::PartitionsTooCoarse {
            host: host.to_owned(),
            compared,
            max: MAX_COMPARED_PAIRS,
        });
    }
    Ok(())
}

/// Partitioned PSI: every party splits its ids into the same parts with a keyed hash agreed per
/// job, and an ordinary session runs on each part in turn. An id can only match an id of the
/// same part, so the result is the unpartitioned one; what changes is the scale:
///
/// - a party holds one part's session state at a time, not the whole job's;
/// - the false-match bound is a sum over parts, Σₚ guestₚ·hostₚ·2^-96, so 96-bit tags serve
///   sets whose product exceeds 2^56 once they are split finely enough (10^9 × 10^9 ids need
///   at least 14 parts; the default of 2^20 guest ids per part gives about 950);
/// - parts are the unit of resumption: a run interrupted after some parts resumes under the
///   same plan and runs only the parts some party did not finish.
///
/// # Flow
///
/// 1. the guest draws a fresh [`PartitionKey`] (or, resuming, takes the one it kept) and sends
///    each host a [`PartitionPlan`]: the key and its number of distinct ids per part (the
///    number of parts is their count);
/// 2. each host splits its ids with the key and answers with its [`PartitionSizes`] and the
///    parts it finished in an earlier run under the same plan;
/// 3. the guest sends every host the [`PartitionSchedule`]: the parts in which every party
///    holds ids, ascending (no other part can hold a common id), and those of them that every
///    party finished before;
/// 4. for each scheduled part not finished, in order, an ordinary session (hello, points,
///    tags, alignment) with a fresh blinding key and salt; an empty intersection within a part
///    is allowed;
/// 5. every party concatenates the parts' aligned rows in schedule order.
///
/// # What the parts disclose
///
/// Beyond the unpartitioned protocol: the guest learns every host's number of ids per part,
/// each host the guest's, and each host which parts the schedule skips (those where some other
/// host holds no id). The guest learns less than before: pairwise intersection sizes only over
/// the scheduled parts.
///
/// Part sizes are a histogram of a party's set under a key the guest chose, and the finer the
/// split the more it says (an empty part tells that the party holds none of the ids that hash
/// there). So the guest's parts hold `partition_rows` ids or about half that, a host refuses a
/// plan that would give its own parts fewer than `min_part_rows` ids on average (the nodes use
/// [`MIN_PART_ROWS`], 1024, at which a real set has no empty part), and the nodes refuse
/// `psi_partition_rows` below it. A run that resumes keeps the key, so it shows no new
/// histogram; a run under a new key (the guest lost its kept plan) shows each party one more.
/// A party whose ids changed must not split them again under the same key (the two histograms
/// would show in which parts ids came and went): the nodes end such a job. A part run again shows the same intersection again and nothing else.
/// Which parts a party finished says nothing about its ids. The key is known to all parties
/// of the job, so a part size is a function of the set that a party can evaluate on guesses: a
/// host that already knows the guest's set up to a few ids learns in which parts the unknown
/// ones lie (about log2(parts) bits each). The key is drawn after every party's set is fixed.
/// The final order is part by part, random within each part; since every party can compute
/// the part of its own ids, that order tells it nothing new.
///
/// This type is the guest's side: the plan, the schedule, and one [`PsiGuest`] per part that
/// runs, whose results it maps back to the guest's rows. Both-sides mode only (every party
/// ends with aligned rows).
#[derive(Debug)]
pub struct PartitionedGuest<S: PartSource = Split> {
    parts: S,
    hosts: Vec<String>,
    config: GuestConfig,
    key: PartitionKey,
    host_sizes: Vec<Option<Vec<u64>>>,
    host_finished: Vec<Vec<u32>>,
    /// Parts the guest finished in an earlier run under this plan, until the schedule.
    kept: Vec<FinishedPart>,
    progress: Option<Progress>,
    /// The part whose session runs, and its rows.
    current: Option<(u32, Vec<u32>)>,
}

impl<I: IdSource> PartitionedGuest<Split<I>> {
    /// Validates the ids and the settings, draws a fresh key and splits the ids into
    /// ⌈ids / `partition_rows`⌉ parts (at most [`MAX_PARTITIONS`]; rows dropped as repeats
    /// under [`DuplicatePolicy::KeepFirst`] count). The ids are read in place, a part at a
    /// time.
    pub fn new(
        ids: I,
        hosts: &[&str],
        config: GuestConfig,
        partition_rows: u64,
    ) -> Result<Self, PsiError> {
        Self::resume(
            ids,
            hosts,
            config,
            partition_rows,
            PartitionKey::random()?,
            Vec::new(),
        )
    }

    /// As [`PartitionedGuest::new`], under the `key` of an earlier run and with the parts
    /// the guest finished in it (`kept`, from [`PartitionedGuest::finish_session`]); refused
    /// when they do not fit these ids (the ids changed: start with a new key instead).
    pub fn resume(
        ids: I,
        hosts: &[&str],
        config: GuestConfig,
        partition_rows: u64,
        key: PartitionKey,
        kept: Vec<FinishedPart>,
    ) -> Result<Self, PsiError> {
        check_guest_config(&config, partition_rows)?;
        check_guest_settings(hosts, &config)?;
        let count = part_count(ids.len() as u64, partition_rows);
        let parts = Split::new(ids, config.duplicates, &key, count)?;
        PartitionedGuest::with_parts(parts, hosts, config, key, kept)
    }
}

/// Settings partitioned PSI needs of the guest.
fn check_guest_config(config: &GuestConfig, partition_rows: u64) -> Result<(), PsiError> {
    if config.result != ResultMode::BothSides {
        return Err(PsiError::InvalidConfig {
            field: "result",
            reason: "partitioned PSI aligns every party (both-sides mode)".into(),
        });
    }
    if partition_rows == 0 {
        return Err(PsiError::InvalidConfig {
            field: "partition_rows",
            reason: "a part needs at least one row".into(),
        });
    }
    Ok(())
}

impl<S: PartSource> PartitionedGuest<S> {
    /// The guest over ids it split itself under `key` (into [`part_count`] parts of its ids,
    /// at the `partition_rows` it runs with), with the parts it finished in an earlier run
    /// under the same key (`kept`), refused when they do not fit the parts.
    pub fn with_parts(
        parts: S,
        hosts: &[&str],
        config: GuestConfig,
        key: PartitionKey,
        kept: Vec<FinishedPart>,
    ) -> Result<Self, PsiError> {
        check_guest_config(&config, 1)?;
        check_guest_settings(hosts, &config)?;
        let count = parts.sizes().len();
        if count == 0 || count > MAX_PARTITIONS as usize {
            return Err(PsiError::InvalidConfig {
                field: "parts",
                reason: format!("{count} parts is not in 1..={MAX_PARTITIONS}"),
            });
        }
        check_kept(&parts, &kept, hosts.len())?;
        Ok(PartitionedGuest {
            parts,
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            config,
            key,
            host_sizes: vec![None; hosts.len()],
            host_finished: vec![Vec::new(); hosts.len()],
            kept,
            progress: None,
            current: None,
        })
    }

    /// The plan every host receives.
    pub fn plan(&self) -> PartitionPlan {
        PartitionPlan {
            version: PROTOCOL_VERSION,
            key: self.key,
            guest_sizes: self.parts.sizes().to_vec(),
        }
    }

    /// A host's part sizes and the parts it finished before. A repeat with the same sizes is
    /// ignored.
    pub fn receive_sizes(&mut self, host: &str, sizes: &PartitionSizes) -> Result<(), PsiError> {
        check_version(host, sizes.version)?;
        let index = self.host_index(host)?;
        let count = self.parts.sizes().len();
        check_sizes(host, "host_sizes", &sizes.host_sizes, count)?;
        check_part_list(host, "finished", &sizes.finished, count)?;
        match &self.host_sizes[index] {
            Some(known) if *known == sizes.host_sizes => Ok(()),
            Some(_) => Err(PsiError::UnexpectedMessage {
                peer: host.to_owned(),
                what: "second part sizes that differ from the first",
            }),
            None => {
                self.host_sizes[index] = Some(sizes.host_sizes.clone());
                self.host_finished[index] = sizes.finished.clone();
                Ok(())
            }
        }
    }

    fn host_index(&self, host: &str) -> Result<usize, PsiError> {
        self.hosts
            .iter()
            .position(|h| h == host)
            .ok_or_else(|| PsiError::UnexpectedMessage {
                peer: host.to_owned(),
                what: "message from a party that is not a host of this run",
            })
    }

    /// Once every host's sizes arrived: the parts every party holds ids in, checked against
    /// the false-match bound over the whole job, for every host, and those of them every
    /// party finished before.
    pub fn schedule(&mut self) -> Result<PartitionSchedule, PsiError> {
        if self.progress.is_some() {
            return Err(PsiError::InvalidConfig {
                field: "schedule",
                reason: "the schedule of parts was made already".into(),
            });
        }
        let mut all = Vec::with_capacity(self.hosts.len());
        for (host, sizes) in self.hosts.iter().zip(&self.host_sizes) {
            all.push(sizes.as_ref().ok_or_else(|| PsiError::Incomplete {
                missing: format!("part sizes of host {host}"),
            })?);
        }
        let guest = self.parts.sizes().to_vec();
        let partitions: Vec<u32> = (0..guest.len())
            .filter(|&p| guest[p] > 0 && all.iter().all(|sizes| sizes[p] > 0))
            .map(|p| p as u32)
            .collect();
        // Only scheduled parts are compared.
        let scheduled =
            |sizes: &[u64]| -> Vec<u64> { partitions.iter().map(|&p| sizes[p as usize]).collect() };
        for (host, sizes) in self.hosts.iter().zip(&all) {
            check_compared_pairs(host, &scheduled(&guest), &scheduled(sizes))?;
        }
        if partitions.is_empty() {
            return Err(PsiError::EmptyIntersection);
        }
        let kept: std::collections::BTreeSet<u32> = self.kept.iter().map(|r| r.part).collect();
        let finished: Vec<u32> = partitions
            .iter()
            .copied()
            .filter(|p| {
                kept.contains(p) && (self.host_finished.iter()).all(|f| f.binary_search(p).is_ok())
            })
            .collect();
        let kept = std::mem::take(&mut self.kept);
        self.progress = Some(Progress::new(partitions.clone(), &finished, kept));
        Ok(PartitionSchedule {
            version: PROTOCOL_VERSION,
            partitions,
            finished,
        })
    }

    /// The next part to run and a fresh session over its ids; `None` when all are done.
    pub fn next_session(&mut self) -> Result<Option<(u32, PsiGuest)>, PsiError> {
        let Some(part) = self.progress.as_ref().ok_or_else(no_schedule)?.current() else {
            return Ok(None);
        };
        let names: Vec<&str> = self.hosts.iter().map(String::as_str).collect();
        let PartIds { ids: column, rows } = self.parts.part(part)?;
        self.current = Some((part, rows));
        // The part's rows are distinct already.
        let config = GuestConfig {
            duplicates: DuplicatePolicy::Reject,
            ..self.config
        };
        let planned: Vec<u64> = self
            .host_sizes
            .iter()
            .map(|sizes| sizes.as_ref().map_or(0, |s| s[part as usize]))
            .collect();
        let session = PsiGuest::new(column, &names, config)?.within_partition(&planned);
        Ok(Some((part, session)))
    }

    /// Finishes the current part's session: the part's result (to keep for a resumption) and
    /// the alignments to send its hosts.
    pub fn finish_session(
        &mut self,
        part: u32,
        session: PsiGuest,
    ) -> Result<(FinishedPart, Vec<(String, Alignment)>), PsiError> {
        let progress = self.progress.as_mut().ok_or_else(no_schedule)?;
        if progress.current() != Some(part) {
            return Err(PsiError::InvalidConfig {
                field: "part",
                reason: format!("part {part} is not the next part to run"),
            });
        }
        let result = session.finish()?;
        let finished = FinishedPart {
            part,
            rows: rows_of(self.current.take(), part, &result.output.aligned_rows)?,
            pairwise_sizes: result.output.pairwise_sizes,
        };
        progress.record(finished.clone());
        Ok((finished, result.alignments))
    }

    /// The guest's rows of the final intersection, part by part in schedule order, and the
    /// pairwise intersection sizes over the scheduled parts (a part that some host lacks is not
    /// run, so matches with the other hosts there are not counted: the guest learns less).
    pub fn finish(self) -> Result<GuestOutput, PsiError> {
        let progress = self.progress.ok_or_else(no_schedule)?;
        let (aligned_rows, pairwise_sizes) = progress.finish(self.hosts.len())?;
        Ok(GuestOutput {
            aligned_rows,
            pairwise_sizes,
        })
    }
}

/// Part numbers from `peer`: strictly ascending, each below `count`.
fn check_part_list(
    peer: &str,
    field: &'static str,
    parts: &[u32],
    count: usize,
) -> Result<(), PsiError> {
    let invalid = |reason: String| PsiError::InvalidField {
        peer: peer.to_owned(),
        field,
        reason,
    };
    if parts.windows(2).any(|w| w[0] >= w[1]) {
        return Err(invalid("parts are not in ascending order".into()));
    }
    match parts.last() {
        Some(&last) if last as usize >= count => {
            Err(invalid(format!("part {last} does not exist")))
        }
        _ => Ok(()),
    }
}

/// A host's side of partitioned PSI with the guest.
#[derive(Debug)]
pub struct PartitionedHost<S: PartSource = Split> {
    guest: String,
    parts: S,
    guest_sizes: Vec<u64>,
    /// Parts this host finished in an earlier run under this plan, until the schedule.
    kept: Vec<FinishedPart>,
    progress: Option<Progress>,
    /// The part whose session runs, and its rows.
    current: Option<(u32, Vec<u32>)>,
}

impl<I: IdSource> PartitionedHost<Split<I>> {
    /// Checks the guest's plan and splits the ids with its key; returns the host and the sizes
    /// to send back. The host refuses a plan that would split its distinct ids into parts of
    /// fewer than `min_part_rows` on average (more parts would make its part sizes a finer
    /// picture of its set; the nodes use [`MIN_PART_ROWS`]; 0 sets no limit), and one whose
    /// parts compare more pairs of ids than 96-bit tags allow. `kept` are the parts this host
    /// finished in an earlier run under the same plan (from
    /// [`PartitionedHost::finish_session`]), refused when they do not fit these ids.
    pub fn new(
        guest: &str,
        ids: I,
        duplicates: DuplicatePolicy,
        plan: &PartitionPlan,
        min_part_rows: u64,
        kept: Vec<FinishedPart>,
    ) -> Result<(Self, PartitionSizes), PsiError> {
        let count = PartitionedHost::<Split<I>>::check_plan(guest, plan)?;
        let parts = Split::new(ids, duplicates, &plan.key, count)?;
        PartitionedHost::with_parts(guest, parts, plan, min_part_rows, kept)
    }
}

impl<S: PartSource> PartitionedHost<S> {
    /// Checks the guest's plan on its own (version, number of parts, sizes): the number of
    /// parts to split this host's ids into, before [`PartitionedHost::with_parts`].
    pub fn check_plan(guest: &str, plan: &PartitionPlan) -> Result<u32, PsiError> {
        check_version(guest, plan.version)?;
        let count = plan.guest_sizes.len();
        if count == 0 || count > MAX_PARTITIONS as usize {
            return Err(PsiError::InvalidField {
                peer: guest.to_owned(),
                field: "guest_sizes",
                reason: format!("{count} parts is not in 1..={MAX_PARTITIONS}"),
            });
        }
        check_sizes(guest, "guest_sizes", &plan.guest_sizes, count)?;
        Ok(count as u32)
    }

    /// As [`PartitionedHost::new`], over ids this host split itself with the plan's key into
    /// the plan's number of parts.
    pub fn with_parts(
        guest: &str,
        parts: S,
        plan: &PartitionPlan,
        min_part_rows: u64,
        kept: Vec<FinishedPart>,
    ) -> Result<(Self, PartitionSizes), PsiError> {
        let count = Self::check_plan(guest, plan)? as usize;
        if parts.sizes().len() != count {
            return Err(PsiError::InvalidConfig {
                field: "parts",
                reason: format!("{} parts, the plan has {count}", parts.sizes().len()),
            });
        }
        let rows: u64 = parts.sizes().iter().sum();
        let allowed = match min_part_rows {
            0 => u64::from(MAX_PARTITIONS),
            min => (rows / min).max(1),
        };
        if count as u64 > allowed {
            return Err(PsiError::InvalidField {
                peer: guest.to_owned(),
                field: "guest_sizes",
                reason: format!(
                    "{count} parts for this host's {rows} ids: at most {allowed} (parts of at \
                     least {min_part_rows} ids on average)"
                ),
            });
        }
        check_compared_pairs(guest, &plan.guest_sizes, parts.sizes())?;
        check_kept(&parts, &kept, 0)?;
        let mut finished: Vec<u32> = kept.iter().map(|r| r.part).collect();
        finished.sort_unstable();
        let reply = PartitionSizes {
            version: PROTOCOL_VERSION,
            host_sizes: parts.sizes().to_vec(),
            finished,
        };
        let host = PartitionedHost {
            guest: guest.to_owned(),
            parts,
            guest_sizes: plan.guest_sizes.clone(),
            kept,
            progress: None,
            current: None,
        };
        Ok((host, reply))
    }

    /// The guest's schedule: ascending parts in which both the guest and this host hold ids,
    /// and those of them finished before, which must be parts this host kept.
    pub fn receive_schedule(&mut self, schedule: &PartitionSchedule) -> Result<(), PsiError> {
        check_version(&self.guest, schedule.version)?;
        let invalid = |field: &'static str, reason: String| PsiError::InvalidField {
            peer: self.guest.clone(),
            field,
            reason,
        };
        if self.progress.is_some() {
            return Err(PsiError::UnexpectedMessage {
                peer: self.guest.clone(),
                what: "second schedule of parts",
            });
        }
        if schedule.partitions.is_empty() {
            return Err(invalid("partitions", "no part is scheduled".into()));
        }
        let count = self.guest_sizes.len();
        check_part_list(&self.guest, "partitions", &schedule.partitions, count)?;
        check_part_list(&self.guest, "finished", &schedule.finished, count)?;
        for &part in &schedule.partitions {
            let p = part as usize;
            if self.guest_sizes[p] == 0 || self.parts.sizes()[p] == 0 {
                return Err(invalid(
                    "partitions",
                    format!("part {part} is empty on one side"),
                ));
            }
        }
        let kept: std::collections::BTreeSet<u32> = self.kept.iter().map(|r| r.part).collect();
        for part in &schedule.finished {
            if schedule.partitions.binary_search(part).is_err() {
                return Err(invalid("finished", format!("part {part} is not scheduled")));
            }
            if !kept.contains(part) {
                return Err(invalid(
                    "finished",
                    format!("part {part} is not one this host finished"),
                ));
            }
        }
        let kept = std::mem::take(&mut self.kept);
        self.progress = Some(Progress::new(
            schedule.partitions.clone(),
            &schedule.finished,
            kept,
        ));
        Ok(())
    }

    /// Whether every scheduled part is finished (no further session runs).
    pub fn is_finished(&self) -> bool {
        self.progress.as_ref().is_some_and(Progress::is_done)
    }

    /// The session of the next part to run, from its guest hello (whose set size must be the
    /// planned one), and the hello to send back.
    pub fn next_session(&mut self, hello: &GuestHello) -> Result<(PsiHost, HostHello), PsiError> {
        let progress = self
            .progress
            .as_ref()
            .ok_or_else(|| PsiError::UnexpectedMessage {
                peer: self.guest.clone(),
                what: "a guest hello before the schedule of parts",
            })?;
        let Some(part) = progress.current() else {
            return Err(PsiError::UnexpectedMessage {
                peer: self.guest.clone(),
                what: "a guest hello after the last part",
            });
        };
        if hello.result != ResultMode::BothSides {
            return Err(PsiError::InvalidField {
                peer: self.guest.clone(),
                field: "result",
                reason: "partitioned PSI aligns every party (both-sides mode)".into(),
            });
        }
        let planned = self.guest_sizes[part as usize];
        if hello.guest_rows != planned {
            return Err(PsiError::InvalidField {
                peer: self.guest.clone(),
                field: "guest_rows",
                reason: format!(
                    "{} rows in part {part}, the plan said {planned}",
                    hello.guest_rows
                ),
            });
        }
        let PartIds { ids: column, rows } = self.parts.part(part)?;
        self.current = Some((part, rows));
        let (session, reply) = PsiHost::new(&self.guest, column, DuplicatePolicy::Reject, hello)?;
        Ok((session.within_partition(), reply))
    }

    /// Finishes the current part with its alignment from the guest: the part's result, to
    /// keep for a resumption.
    pub fn finish_session(
        &mut self,
        session: PsiHost,
        alignment: &Alignment,
    ) -> Result<FinishedPart, PsiError> {
        let guest = &self.guest;
        let progress = self.progress.as_mut().ok_or_else(no_schedule)?;
        let Some(part) = progress.current() else {
            return Err(PsiError::UnexpectedMessage {
                peer: guest.clone(),
                what: "an alignment after the last part",
            });
        };
        let output = session.receive_alignment(alignment)?;
        let finished = FinishedPart {
            part,
            rows: rows_of(self.current.take(), part, &output.aligned_rows)?,
            pairwise_sizes: Vec::new(),
        };
        progress.record(finished.clone());
        Ok(finished)
    }

    /// The host's rows of the final intersection, in the guest's order.
    pub fn finish(self) -> Result<HostOutput, PsiError> {
        let progress = self.progress.ok_or_else(no_schedule)?;
        let (aligned_rows, _) = progress.finish(0)?;
        Ok(HostOutput { aligned_rows })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A part read from elsewhere names repeats by their rows in the whole column, and keeps
    /// each id's first row.
    #[test]
    fn a_part_names_repeats_by_whole_column_rows() {
        let part = || {
            let mut part = PartIds::default();
            for (row, id) in [(3, "a"), (8, "b"), (11, "a"), (40, "c"), (41, "b")] {
                part.push(row, id.as_bytes()).unwrap();
            }
            part
        };
        let refused = part().distinct(DuplicatePolicy::Reject).unwrap_err();
        let PsiError::DuplicateIds { count, examples } = &refused else {
            panic!("{refused:?}");
        };
        assert_eq!(*count, 2);
        let named: Vec<(&str, u64, u64)> = (examples.iter())
            .map(|d| (d.id.as_str(), d.first_row, d.repeated_row))
            .collect();
        assert_eq!(named, [("a", 3, 11), ("b", 8, 41)]);
        let kept = part().distinct(DuplicatePolicy::KeepFirst).unwrap();
        assert_eq!(kept.rows, [3, 8, 40]);
        assert_eq!(kept.ids.get(2), b"c");
        // A bad id is named by its row in the whole column.
        assert_eq!(
            PartIds::default().push(17, b""),
            Err(PsiError::IdEmpty { row: 17 })
        );
    }

    /// 10^9 × 10^9 ids: refused as one part (2^59.8 pairs), accepted in 16 even parts.
    #[test]
    fn the_false_match_bound_is_summed_over_parts() {
        let billion = 1_000_000_000u64;
        let refused = check_compared_pairs("tax", &[billion], &[billion]);
        assert!(
            matches!(refused, Err(PsiError::PartitionsTooCoarse { compared, .. })
            if compared == u128::from(billion) * u128::from(billion))
        );
        let parts = vec![billion / 16; 16];
        assert!(check_compared_pairs("tax", &parts, &parts).is_ok());
        // The bound is per host and counts every part.
        let mut uneven = parts.clone();
        uneven[0] = billion;
        assert!(check_compared_pairs("tax", &uneven, &uneven).is_err());
    }
}
